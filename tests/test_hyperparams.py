"""The shipped zoo hyperparameter files, read and converted by the RL Zoo's own ExperimentManager."""

import argparse
from typing import Any

import pytest
import yaml
from gymnasium import spaces
from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.env_util import make_vec_env

from sb3_pgext import CVPG, PPOKL, OffPAC
from sb3_pgext.common.hyperparams import hyperparams_path
from sb3_pgext.zoo import register


def entries(algo: str) -> list[str]:
    with open(hyperparams_path(algo)) as file:
        return sorted(yaml.safe_load(file))


PPOKL_ENTRIES = entries("ppokl")
OFFPAC_ENTRIES = entries("offpac")
CVPG_ENTRIES = entries("cvpg")

# Envs whose simulators (box2d, mujoco) are not dependencies: their entries are built on a stand-in
# env with the same kind of action space, which checks every constructor argument
STAND_IN = {spaces.Discrete: "CartPole-v1", spaces.Box: "Pendulum-v1"}
ACTION_SPACE = {
    "CartPole-v1": spaces.Discrete,
    "Acrobot-v1": spaces.Discrete,
    "LunarLander-v3": spaces.Discrete,
    "Pendulum-v1": spaces.Box,
    "LunarLanderContinuous-v3": spaces.Box,
    "HalfCheetah-v5": spaces.Box,
    "Hopper-v5": spaces.Box,
    "MountainCarContinuous-v0": spaces.Box,
}


def zoo_entry(algo: str, env_id: str, tmp_path) -> tuple[int, int, dict[str, Any]]:
    """
    The zoo's reading of the package's entry for ``env_id``, as ``train`` makes it: n_envs, n_timesteps and the
    model's constructor arguments (schedules, policy_kwargs and the experiment keys converted by the zoo).
    """
    register()
    manager = ExperimentManager(
        argparse.Namespace(), algo, env_id, str(tmp_path), config=str(hyperparams_path(algo)), verbose=0
    )
    hyperparams, _ = manager.read_hyperparameters()
    hyperparams, env_wrapper, callbacks, vec_env_wrapper = manager._preprocess_hyperparams(hyperparams)
    assert env_wrapper is None and vec_env_wrapper is None and not callbacks  # our entries need no wrappers
    return manager.n_envs, manager.n_timesteps, hyperparams


def test_ppokl_yml_has_the_required_entries():
    assert set(PPOKL_ENTRIES) == set(ACTION_SPACE) - {"MountainCarContinuous-v0"}


def test_offpac_yml_has_the_required_entries():
    assert set(OFFPAC_ENTRIES) == set(ACTION_SPACE)


def test_cvpg_yml_has_the_envs_of_ppokl_yml():
    assert CVPG_ENTRIES == PPOKL_ENTRIES


@pytest.mark.parametrize("env_id", CVPG_ENTRIES)
def test_every_cvpg_entry_builds_a_model(env_id, tmp_path):
    n_envs, n_timesteps, hyperparams = zoo_entry("cvpg", env_id, tmp_path)
    assert n_timesteps > 0 and n_envs >= 1
    model = CVPG(env=make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=n_envs), **hyperparams)
    expected = "expected" if ACTION_SPACE[env_id] is spaces.Discrete else "taylor"
    assert model.control_variate == expected and model.surrogate == "clip" and model.q_critic is not None


@pytest.mark.parametrize("env_id", PPOKL_ENTRIES)
def test_every_ppokl_entry_builds_a_model(env_id, tmp_path):
    n_envs, n_timesteps, hyperparams = zoo_entry("ppokl", env_id, tmp_path)
    assert n_timesteps > 0 and n_envs >= 1
    model = PPOKL(env=make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=n_envs), **hyperparams)
    assert model.kl_coef == 1.0 and model.adaptive_kl


@pytest.mark.parametrize("env_id", OFFPAC_ENTRIES)
def test_every_offpac_entry_builds_a_model(env_id, tmp_path):
    n_envs, n_timesteps, hyperparams = zoo_entry("offpac", env_id, tmp_path)
    assert n_timesteps > 0 and n_envs >= 1
    model = OffPAC(env=make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=n_envs), **hyperparams)
    expected = "expected" if ACTION_SPACE[env_id] is spaces.Discrete else "reparameterization"
    assert model.actor_gradient == expected


def test_unknown_env_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="MountainCar-v0"):
        zoo_entry("ppokl", "MountainCar-v0", tmp_path)
