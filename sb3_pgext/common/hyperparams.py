"""The package's RL Zoo hyperparameter files (``hyperparams/<algo>.yml``), read outside the zoo."""

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch as th
import yaml
from rl_zoo3.exp_manager import ExperimentManager

# Zoo keys that configure the experiment rather than the algorithm
_EXPERIMENT_KEYS = ("n_envs", "n_timesteps", "normalize", "policy")
# Zoo keys this reader does not turn into an environment: train those entries through the zoo
_ZOO_ONLY_KEYS = ("env_wrapper", "frame_stack", "callback", "vec_env_wrapper", "normalize_kwargs")


def hyperparams_path(algo: str) -> Path:
    """
    Path of the package's zoo hyperparameter file for ``algo``, from a regular or an editable install.

    :param algo: the zoo name of the algorithm, the lowercased class name (e.g. "ppokl")
    :return: path of ``<algo>.yml``
    """
    path = Path(str(resources.files("sb3_pgext.hyperparams").joinpath(f"{algo}.yml")))
    if not path.is_file():
        raise ValueError(f"no hyperparameter file for algo={algo!r} at {path}")
    return path


@dataclass
class ZooHyperparams:
    """
    One entry of a zoo hyperparameter file, split into experiment settings and algorithm kwargs.

    :param policy: the policy alias ("MlpPolicy", ...)
    :param n_envs: number of parallel environments
    :param n_timesteps: the training budget
    :param normalize: whether to wrap the environment in VecNormalize
    :param normalize_kwargs: VecNormalize keyword arguments when ``normalize`` is a dict
    :param model_kwargs: the algorithm's constructor arguments (schedules and policy_kwargs converted)
    """

    policy: str
    n_envs: int = 1
    n_timesteps: int = 0
    normalize: bool = False
    normalize_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def load_hyperparams(algo: str, env_id: str, path: str | Path | None = None) -> ZooHyperparams:
    """
    Read the entry for ``env_id`` of a zoo hyperparameter file and convert it as the zoo does
    (``lin_<x>`` schedules, ``policy_kwargs`` strings evaluated with ``nn`` = ``torch.nn``).

    :param algo: the zoo name of the algorithm (e.g. "ppokl")
    :param env_id: the Gymnasium environment id
    :param path: the file to read (default: the package's ``hyperparams/<algo>.yml``)
    :return: the converted entry
    """
    path = hyperparams_path(algo) if path is None else Path(path)
    with open(path) as file:
        entries = yaml.safe_load(file)
    if env_id not in entries:
        raise ValueError(f"env_id={env_id!r} has no entry in {path}; entries: {sorted(entries)}")
    entry = dict(entries[env_id])
    unsupported = [key for key in _ZOO_ONLY_KEYS if key in entry]
    if unsupported:
        raise ValueError(f"{path} [{env_id}] uses {unsupported}: train this entry through the RL Zoo")

    normalize = entry.pop("normalize", False)
    normalize_kwargs: dict[str, Any] = {}
    if isinstance(normalize, str):
        normalize = eval(normalize)  # the zoo's format: a string such as "dict(norm_reward=False)"
    if isinstance(normalize, dict):
        normalize_kwargs, normalize = normalize, True
    hyperparams = ZooHyperparams(
        policy=entry.pop("policy"),
        n_envs=int(entry.pop("n_envs", 1)),
        n_timesteps=int(entry.pop("n_timesteps", 0)),
        normalize=bool(normalize),
        normalize_kwargs=normalize_kwargs,
    )
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = eval(entry["policy_kwargs"], {"nn": th.nn})
    hyperparams.model_kwargs = ExperimentManager._preprocess_schedules(entry)
    return hyperparams
