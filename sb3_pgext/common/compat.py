"""
Loading agents saved by older SB3 releases, such as the RL Zoo's trained agents on the Hugging Face Hub.

SB3 1.x (and 2.0 with ``gym``) pickled ``gym.spaces`` objects into the model zip and into
``vecnormalize.pkl``; with only gymnasium installed, unpickling them fails with
``No module named 'gym'``. gymnasium's spaces are the same classes under a new name and read
the old pickled state (their ``__setstate__`` fills the attributes gym lacked), so mapping the
``gym`` modules to ``gymnasium``'s while loading is enough.
"""

import base64
import importlib.util
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import gymnasium
import gymnasium.spaces  # noqa: F401  (imports every spaces submodule, the names old pickles refer to)
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.type_aliases import GymEnv

AlgorithmType = TypeVar("AlgorithmType", bound=BaseAlgorithm)


def gym_installed() -> bool:
    """Whether the legacy ``gym`` package itself is installed (then nothing needs mapping)."""
    module = sys.modules.get("gym")
    if module is not None:
        return module is not gymnasium
    return importlib.util.find_spec("gym") is not None


@contextmanager
def gym_as_gymnasium() -> Iterator[None]:
    """
    Within the block, ``import gym.X`` gives ``gymnasium.X`` (for every imported gymnasium module), so
    that pickles of gym objects load as their gymnasium equivalents. Does nothing when gym is installed;
    the mapping is removed on exit.
    """
    if gym_installed():
        yield
        return
    aliases = {
        "gym" + name[len("gymnasium") :]: module
        for name, module in list(sys.modules.items())
        if module is not None and (name == "gymnasium" or name.startswith("gymnasium."))
    }
    added = [name for name in aliases if name not in sys.modules]
    sys.modules.update({name: aliases[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _unbounded_as_inf(bound: np.ndarray) -> np.ndarray:
    """gym < 0.26 wrote unbounded Box limits as ±finfo(dtype).max where gymnasium writes ±inf."""
    bound = np.asarray(bound, dtype=np.float64)
    big = np.finfo(np.float32).max
    return np.where(np.abs(bound) >= big, np.sign(bound) * np.inf, bound)


def same_space_up_to_legacy_bounds(saved: spaces.Space, current: spaces.Space) -> bool:
    """Whether ``saved`` is ``current`` with gym's finite stand-ins for unbounded Box limits."""
    if isinstance(saved, spaces.Box) and isinstance(current, spaces.Box):
        return (
            saved.shape == current.shape
            and saved.dtype == current.dtype
            and np.array_equal(_unbounded_as_inf(saved.low), _unbounded_as_inf(current.low))
            and np.array_equal(_unbounded_as_inf(saved.high), _unbounded_as_inf(current.high))
        )
    if isinstance(saved, spaces.Dict) and isinstance(current, spaces.Dict):
        return saved.spaces.keys() == current.spaces.keys() and all(
            same_space_up_to_legacy_bounds(saved[key], current[key]) for key in saved.spaces
        )
    return saved == current


def saved_spaces(path: str | Path | io.BufferedIOBase) -> dict[str, spaces.Space]:
    """The observation and action spaces stored in an SB3 model zip (gym's read as gymnasium's); {} if unreadable."""
    if not isinstance(path, (str, Path)):
        return {}
    path = Path(path)
    if not path.is_file() and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        with gym_as_gymnasium():
            return {
                key: cloudpickle.loads(base64.b64decode(data[key][":serialized:"]))
                for key in ("observation_space", "action_space")
            }
    except (OSError, KeyError, ValueError, TypeError, AttributeError, ModuleNotFoundError, zipfile.BadZipFile):
        return {}


def legacy_space_objects(path: str | Path | io.BufferedIOBase, env: GymEnv | None) -> dict[str, spaces.Space]:
    """
    ``custom_objects`` that replace the saved spaces with ``env``'s where they differ only by gym's
    finite stand-ins for unbounded limits (e.g. CartPole's ±3.4e38 vs ±inf), so that SB3's
    ``check_for_correct_spaces`` accepts the env an agent of gym's days was trained on.
    """
    if env is None:
        return {}
    objects = {}
    for key, saved in saved_spaces(path).items():
        current = getattr(env, key)
        if saved != current and same_space_up_to_legacy_bounds(saved, current):
            objects[key] = current
    return objects


def _with_legacy_spaces(
    path: str | Path | io.BufferedIOBase, env: GymEnv | None, custom_objects: dict[str, Any] | None
) -> dict[str, Any]:
    """The user's ``custom_objects`` over :func:`legacy_space_objects`: what both loaders pass to SB3."""
    return {**legacy_space_objects(path, env), **(custom_objects or {})}


def load_model(
    algo_class: type[AlgorithmType],
    path: str | Path,
    env: GymEnv | None = None,
    custom_objects: dict[str, Any] | None = None,
    **kwargs: Any,
) -> AlgorithmType:
    """
    ``algo_class.load(path, ...)`` that also reads models saved by SB3 1.x–2.x with ``gym`` (e.g. the
    hub's ``sb3/*`` agents), for SB3's algorithms, sb3-contrib's and this package's.

    Schedules pickled by another Python version (``learning_rate``, ``lr_schedule``, ``clip_range``)
    cannot be read: SB3 warns and keeps the class's defaults. They only matter to continue training;
    pass the values to train with in ``custom_objects`` (the RL Zoo's ``-i`` does, from its yml).

    With ``env`` given, saved spaces that differ from the env's only by gym's finite stand-ins for
    unbounded limits are replaced by the env's (see :func:`legacy_space_objects`).

    :param algo_class: the class to load into, e.g. ``PPO`` or ``sb3_pgext.PPOKL``
    :param path: the model zip
    :param env: the environment to continue training or evaluate on (None: none attached)
    :param custom_objects: replacements for saved attributes, as in ``BaseAlgorithm.load``
    :param kwargs: passed to ``algo_class.load`` (``device``, attributes to override, ...)
    :return: the loaded model
    """
    with gym_as_gymnasium():
        return algo_class.load(path, env=env, custom_objects=_with_legacy_spaces(path, env, custom_objects), **kwargs)


class LegacyLoadMixin:
    """
    ``load`` reads agents saved with ``gym`` (see :func:`load_model`): mixed into this package's
    algorithms, so that ``PPOKL.load("ppo-CartPole-v1.zip", env=env)`` warm-starts from a hub agent.
    """

    @classmethod
    def load(  # type: ignore[no-untyped-def]
        cls,
        path: str | Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: Any = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ):
        with gym_as_gymnasium():
            return super().load(  # type: ignore[misc]
                path, env=env, device=device, custom_objects=_with_legacy_spaces(path, env, custom_objects),
                print_system_info=print_system_info, force_reset=force_reset, **kwargs,
            )
