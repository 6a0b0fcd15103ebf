"""
Every entry of the package's hyperparameter files, the derived ones included, read by the RL Zoo and built into a
model on its own env (one env per model, a small replay buffer): the env packages of the zoo's families are test
dependencies. A few hundred steps of training for one env per family in the default run, for every env with
``-m slow``.
"""

import importlib

import gymnasium as gym
import pytest
import yaml

from sb3_pgext.common.hyperparams import hyperparams_path
from sb3_pgext.suite.speed import zoo_model

#: the packages that register the zoo's env families with gymnasium (the zoo's --gym-packages)
GYM_PACKAGES = ("ale_py", "minigrid", "pybullet_envs_gymnasium")
for package in GYM_PACKAGES:
    gym.register_envs(importlib.import_module(package))

#: the env the zoo reads the "atari" entry for
ATARI_ENV = "PongNoFrameskip-v4"
#: one env per family, trained a few hundred steps in the default run (the others with -m slow)
SAMPLE = {
    "ppokl": ("MountainCar-v0", "MiniGrid-DoorKey-5x5-v0", "Swimmer-v5"),
    "cvpg": ("BipedalWalker-v3", "atari", "HalfCheetahBulletEnv-v0"),
    "offpac": ("MountainCar-v0", "Walker2d-v5", "atari"),
}


def entries() -> list[tuple[str, str]]:
    found = []
    for algo in ("ppokl", "cvpg", "offpac"):
        with open(hyperparams_path(algo)) as file:
            found += [(algo, env_id) for env_id in yaml.safe_load(file)]
    return found


def build(algo: str, env_id: str, tmp_path):
    """The zoo's model for the entry, on one env of its own (OffPAC: a replay buffer of 1000, learning from step 100)."""
    overrides = {"n_envs": 1, **({"buffer_size": 1000, "learning_starts": 100} if algo == "offpac" else {})}
    return zoo_model(algo, ATARI_ENV if env_id == "atari" else env_id, "cpu", tmp_path, None, overrides)


def train_a_little(model) -> None:
    steps = 256
    model.learn(steps)
    assert model.num_timesteps >= steps and model._n_updates > 0
    model.get_env().close()


ENTRIES = entries()


@pytest.mark.parametrize("algo, env_id", ENTRIES, ids=[f"{algo}-{env_id}" for algo, env_id in ENTRIES])
def test_every_entry_builds_its_model_on_its_env(algo, env_id, tmp_path):
    model = build(algo, env_id, tmp_path)
    assert type(model).__name__.lower() == algo
    if env_id in SAMPLE[algo]:
        train_a_little(model)
    else:
        model.get_env().close()


OTHERS = [(algo, env_id) for algo, env_id in ENTRIES if env_id not in SAMPLE[algo]]


@pytest.mark.slow
@pytest.mark.parametrize("algo, env_id", OTHERS, ids=[f"{algo}-{env_id}" for algo, env_id in OTHERS])
def test_every_entry_trains_on_its_env(algo, env_id, tmp_path):
    train_a_little(build(algo, env_id, tmp_path))
