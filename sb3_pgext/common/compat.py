"""
Loading agents saved by older SB3 releases, such as the RL Zoo's trained agents on the Hugging Face Hub,
and files of another algorithm (a warm start from the SB3 peer, or a clear error).

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
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import cloudpickle
import gymnasium
import gymnasium.spaces  # noqa: F401  (imports every spaces submodule, the names old pickles refer to)
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.type_aliases import GymEnv

AlgorithmType = TypeVar("AlgorithmType", bound=BaseAlgorithm)

#: The file that :meth:`CheckedLoadMixin.load` is loading (None outside a load), for the messages of its checks
_LOADING: ContextVar[str | Path | io.BufferedIOBase | None] = ContextVar("_LOADING", default=None)


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


def saved_data(path: str | Path | io.BufferedIOBase) -> dict[str, Any]:
    """The ``data`` entry of an SB3 model zip as stored (JSON, objects still serialized); {} if unreadable."""
    if not isinstance(path, (str, Path)):
        return {}
    path = Path(path)
    if not path.is_file() and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}


def check_model_file(path: str | Path | io.BufferedIOBase, algo_name: str) -> None:
    """
    A ValueError naming ``path`` when it is not a whole model zip: not a zip archive, an archive without SB3's
    ``data`` entry (a truncated file: the nested ``policy.pth`` archive is then all that ``zipfile`` finds), or
    one whose entries fail their CRC check. Paths that do not exist, and file objects, are left to SB3.

    :param path: the model file, as ``load`` takes it (``.zip`` may be left out)
    :param algo_name: the class that loads it, for the message
    """
    if not isinstance(path, (str, Path)):
        return
    path = Path(path)
    if not path.is_file() and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    if not path.is_file():
        return
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                problem = "it has no 'data' entry"
            elif (damaged := archive.testzip()) is not None:
                problem = f"its entry {damaged!r} fails its CRC check"
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        problem = str(error)
    if problem is not None:
        raise ValueError(
            f"{path} is not a model file (not a zip archive, or a truncated one): {problem}. "
            f"{algo_name}.load reads the .zip that save() writes"
        )


def _deserialize(data: dict[str, Any], key: str) -> Any:
    """One serialized object of ``data`` (gym's classes read as gymnasium's); None if absent or unreadable."""
    try:
        with gym_as_gymnasium():
            return cloudpickle.loads(base64.b64decode(data[key][":serialized:"]))
    except (KeyError, ValueError, TypeError, AttributeError, ModuleNotFoundError, EOFError, ImportError):
        return None


def saved_spaces(data: dict[str, Any]) -> dict[str, spaces.Space]:
    """The observation and action spaces of a model zip's :func:`saved_data` (gym's read as gymnasium's); {} if unreadable."""
    found = {key: _deserialize(data, key) for key in ("observation_space", "action_space")}
    return found if all(isinstance(space, spaces.Space) for space in found.values()) else {}


def legacy_train_freq(data: dict[str, Any]) -> tuple[int, str] | None:
    """
    SB3 < 1.0 saved ``train_freq`` and ``n_episodes_rollout`` apart (``train_freq=-1, n_episodes_rollout=1``:
    one episode per rollout); today's SB3 reads ``train_freq`` alone, and -1 stops ``learn()`` with "Should at
    least collect one step or episode". The equivalent ``train_freq`` tuple, or None for a file of SB3 >= 1.0.
    """
    if "n_episodes_rollout" not in data:
        return None
    n_episodes, n_steps = data["n_episodes_rollout"], data.get("train_freq")
    if isinstance(n_episodes, int) and n_episodes > 0:
        return n_episodes, "episode"
    if isinstance(n_steps, int) and n_steps > 0:
        return n_steps, "step"
    return None


def legacy_space_objects(data: dict[str, Any], env: GymEnv | None) -> dict[str, spaces.Space]:
    """
    ``custom_objects`` that replace the saved spaces (of a model zip's :func:`saved_data`) with ``env``'s where
    they differ only by gym's finite stand-ins for unbounded limits (e.g. CartPole's ±3.4e38 vs ±inf), so that
    SB3's ``check_for_correct_spaces`` accepts the env an agent of gym's days was trained on.
    """
    if env is None:
        return {}
    objects = {}
    for key, saved in saved_spaces(data).items():
        current = getattr(env, key)
        if saved != current and same_space_up_to_legacy_bounds(saved, current):
            objects[key] = current
    return objects


def _with_legacy_objects(data: dict[str, Any], env: GymEnv | None, custom_objects: dict[str, Any] | None) -> dict[str, Any]:
    """
    The user's ``custom_objects`` over what an old file (its :func:`saved_data`) needs to load and train:
    :func:`legacy_space_objects` and the ``train_freq`` of :func:`legacy_train_freq`.
    """
    objects: dict[str, Any] = legacy_space_objects(data, env)
    train_freq = legacy_train_freq(data)
    if train_freq is not None:
        objects["train_freq"] = train_freq
    return {**objects, **(custom_objects or {})}


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
    unbounded limits are replaced by the env's (see :func:`legacy_space_objects`). Off-policy files of
    SB3 < 1.0 get today's form of their ``train_freq`` (see :func:`legacy_train_freq`), so that they train on.

    :param algo_class: the class to load into, e.g. ``PPO`` or ``sb3_pgext.PPOKL``
    :param path: the model zip
    :param env: the environment to continue training or evaluate on (None: none attached)
    :param custom_objects: replacements for saved attributes, as in ``BaseAlgorithm.load``
    :param kwargs: passed to ``algo_class.load`` (``device``, attributes to override, ...)
    :return: the loaded model
    """
    with gym_as_gymnasium():
        return algo_class.load(path, env=env, custom_objects=_with_legacy_objects(saved_data(path), env, custom_objects), **kwargs)


class CheckedLoadMixin:
    """
    ``load`` for this package's algorithms: it reads agents saved with ``gym`` and by SB3 < 1.0 (see
    :func:`load_model`), warm-starts from the files of the algorithm's SB3 peer (``PPOKL.load("ppo.zip")``,
    ``OffPAC.load("sac.zip")``), and refuses any other file with an error that says what the file holds
    and what the algorithm reads: by the file's policy class before anything is built, and by the file's state
    dicts (one the model does not have, such as CVPG's ``q_critic`` in a PPOKL) before any parameter is loaded.
    """

    #: the policy classes whose files the algorithm reads (its own, and its SB3 peer's)
    accepted_policy_classes: ClassVar[tuple[type, ...]] = ()
    #: the files it reads, in words, for the error messages
    accepted_files: ClassVar[str] = ""

    @classmethod
    def _policy_class_for(cls, saved: type) -> type | None:
        """
        The policy class to build for a file whose policy is ``saved`` (None: ``saved`` itself). Overridden
        where the SB3 peer's policy is not the algorithm's own (OffPAC reads SB3 SAC's).

        :param saved: the policy class stored in the file
        """
        return None

    @classmethod
    def _check_saved_policy(
        cls, path: str | Path | io.BufferedIOBase, data: dict[str, Any], custom_objects: dict[str, Any]
    ) -> dict[str, Any]:
        """
        ``custom_objects`` with the policy class to build for the file at ``path`` (its :func:`saved_data`
        ``data``); a ValueError if the file holds another kind of model. Files whose policy class cannot be
        read are left to SB3.
        """
        if "policy_class" in custom_objects:
            return custom_objects
        saved = _deserialize(data, "policy_class")
        if not isinstance(saved, type):
            return custom_objects
        ours = cls._policy_class_for(saved)
        if ours is None and not issubclass(saved, cls.accepted_policy_classes):
            raise ValueError(
                f"{path} holds a model whose policy is {saved.__module__}.{saved.__qualname__}: it was not saved by "
                f"an algorithm {cls.__name__} can load. {cls.__name__}.load reads {cls.accepted_files}"
            )
        return custom_objects if ours is None else {**custom_objects, "policy_class": ours}

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
        if isinstance(env, str):
            raise TypeError(
                f"env must be an environment (a gymnasium.Env or a VecEnv), got the string {env!r}: unlike the "
                f"constructor, {cls.__name__}.load does not make envs from their ids; pass env=gymnasium.make({env!r})"
            )
        check_model_file(path, cls.__name__)
        data = saved_data(path)  # read once: the legacy objects and the policy check both look at it
        objects = cls._check_saved_policy(path, data, _with_legacy_objects(data, env, custom_objects))
        token = _LOADING.set(path)
        try:
            with gym_as_gymnasium():
                return super().load(  # type: ignore[misc]
                    path, env=env, device=device, custom_objects=objects,
                    print_system_info=print_system_info, force_reset=force_reset, **kwargs,
                )
        finally:
            _LOADING.reset(token)

    def set_parameters(  # type: ignore[no-untyped-def]
        self,
        load_path_or_dict: str | Path | io.BufferedIOBase | dict[str, Any],
        exact_match: bool = True,
        device: Any = "auto",
    ):
        """
        SB3's ``set_parameters``. Within :meth:`load`, the saved objects (the file's state dicts: ``policy``,
        ``q_critic``, ...) are first checked against the model's: one it does not have means the file was saved by
        another algorithm whose policy class this one also uses (a CVPG file, with its Q critic, into PPOKL), and
        gives a ValueError that says so, before anything is loaded.
        """
        path = _LOADING.get()
        if path is not None and isinstance(load_path_or_dict, dict):
            for name in load_path_or_dict:
                if not _has_object(self, name):
                    raise ValueError(
                        f"{path} holds {name!r}, which {type(self).__name__} does not have: it was saved by another "
                        f"algorithm. {type(self).__name__}.load reads {self.accepted_files}"
                    )
        return super().set_parameters(load_path_or_dict, exact_match=exact_match, device=device)  # type: ignore[misc]


def _has_object(model: Any, name: str) -> bool:
    """Whether ``model`` has the object a saved state dict ``name`` (``"policy.optimizer"``) loads into, as SB3 finds it."""
    try:
        recursive_getattr(model, name)
    except Exception:  # what SB3's set_parameters catches there too (AttributeError, or anything a property raises)
        return False
    return True


#: the state dicts of CVPG's Q critic, and those of the critic of CVPG 0.1 (another layout, no longer loaded)
Q_CRITIC_STATE_DICTS, OLDER_Q_CRITIC_STATE_DICTS = {"q_critic", "q_critic.optimizer"}, {"q_net", "q_net_target", "q_optimizer"}


def parameters_without_q_critic(model: Any, params: dict[str, Any], exact_match: bool) -> tuple[dict[str, Any], bool]:
    """
    For CVPG's ``set_parameters``: the saved parameters to load into ``model`` and whether to match them exactly.
    A file of CVPG 0.1 loads without its critic (another layout), with a warning. A file with no Q critic (SB3's
    PPO, PPOKL, CVPG with ``control_variate="none"``) into a model with one warm-starts the policy and value
    function, strictly (same names and shapes, else a ValueError), and leaves the Q critic as it was built, with a
    warning.

    :param model: the CVPG model being loaded into
    :param params: the saved state dicts, by name
    :param exact_match: the caller's ``exact_match``
    """
    older_critic = OLDER_Q_CRITIC_STATE_DICTS & params.keys()
    if older_critic:
        warnings.warn(f"the checkpoint's critic {sorted(older_critic)} is of an older CVPG and is not loaded")
        params = {key: value for key, value in params.items() if key not in older_critic}
    if exact_match and model.q_critic is not None and not Q_CRITIC_STATE_DICTS & params.keys():
        expected = set(model._get_torch_save_params()[0]) - Q_CRITIC_STATE_DICTS
        if params.keys() != expected:
            raise ValueError(f"Names of parameters do not match agents' parameters: expected {expected}, got {set(params)}")
        shapes = {key: tuple(value.shape) for key, value in model.policy.state_dict().items()}
        if shapes != {key: tuple(value.shape) for key, value in params["policy"].items()}:
            raise ValueError(f"the checkpoint's policy does not match this {type(model).__name__}'s (another net_arch or policy_kwargs?)")
        warnings.warn("the checkpoint has no Q critic (a PPO agent?): its policy and value function are loaded, Q_w starts fresh")
        exact_match = False
    return params, exact_match
