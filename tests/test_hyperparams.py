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
from sb3_pgext.zoo.derived import (
    NOT_COVERED,
    NOT_ENVS,
    RENAMED,
    SOURCES,
    regenerate,
    split,
    unknown_envs,
    written_envs,
    zoo_hyperparams,
)


def entries(algo: str) -> list[str]:
    with open(hyperparams_path(algo)) as file:
        return sorted(yaml.safe_load(file))


def written(algo: str) -> set[str]:
    """The env ids of the entries written for the algorithm (above the derived part)."""
    return written_envs(split(hyperparams_path(algo).read_text())[0])


# The entries written for each algorithm, built on stand-in envs below; every entry, derived ones included, is
# built on its own env by tests/test_zoo_envs.py
PPOKL_ENTRIES = sorted(written("ppokl"))
OFFPAC_ENTRIES = sorted(written("offpac"))
CVPG_ENTRIES = sorted(written("cvpg"))

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


def test_the_written_entries_are_the_ones_measured():
    assert written("ppokl") == set(ACTION_SPACE) - {"MountainCarContinuous-v0"}
    assert written("offpac") == set(ACTION_SPACE)
    assert written("cvpg") == written("ppokl")


@pytest.mark.parametrize("algo", sorted(SOURCES))
def test_the_derived_entries_are_what_the_installed_zoo_gives(algo):
    """No drift: the part below the marker is what `python -m sb3_pgext.zoo.derived` writes from rl_zoo3's files."""
    path = hyperparams_path(algo)
    assert regenerate(path, algo) == path.read_text(), f"run python -m sb3_pgext.zoo.derived: {path.name} differs from rl_zoo3's files"


@pytest.mark.parametrize("algo, peers", [("ppokl", ("ppo",)), ("cvpg", ("ppo",)), ("offpac", ("sac", "dqn"))])
def test_every_env_of_the_peers_zoo_files_has_an_entry_or_a_reason(algo, peers):
    ours = set(entries(algo))
    for peer in peers:
        for zoo_id in zoo_hyperparams(peer):
            if zoo_id in NOT_ENVS or (peer, zoo_id) in NOT_COVERED:
                continue
            assert RENAMED.get(zoo_id, zoo_id) in ours, f"{algo}.yml has no entry for {peer}.yml's {zoo_id}"
    assert unknown_envs(algo) == []


def test_an_entry_for_an_env_the_zoo_does_not_know_is_reported_by_name(tmp_path):
    path = tmp_path / "ppokl.yml"
    path.write_text(hyperparams_path("ppokl").read_text().replace("CartPole-v1:", "CartPol-v1:", 1))
    assert unknown_envs("ppokl", path) == ["CartPol-v1"]


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
    # every entry runs the adaptive penalty, from PPOKL's initial β unless the entry was tuned with its own
    assert model.adaptive_kl and model.kl_coef == hyperparams.get("kl_coef", 1.0)


@pytest.mark.parametrize("env_id", OFFPAC_ENTRIES)
def test_every_offpac_entry_builds_a_model(env_id, tmp_path):
    n_envs, n_timesteps, hyperparams = zoo_entry("offpac", env_id, tmp_path)
    assert n_timesteps > 0 and n_envs >= 1
    model = OffPAC(env=make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=n_envs), **hyperparams)
    expected = "expected" if ACTION_SPACE[env_id] is spaces.Discrete else "reparameterization"
    assert model.actor_gradient == expected


def test_unknown_env_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Hyperparameters not found for ppokl-CartPole-v0"):
        zoo_entry("ppokl", "CartPole-v0", tmp_path)
