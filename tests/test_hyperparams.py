"""The shipped zoo hyperparameter files and the train entry point."""

import pytest
import yaml
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_pgext import CVPG, PPOKL, OffPAC
from sb3_pgext.common.hyperparams import hyperparams_path, load_hyperparams
from sb3_pgext.train import ALGOS, main


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


def test_ppokl_yml_has_the_required_entries():
    assert set(PPOKL_ENTRIES) == set(ACTION_SPACE) - {"MountainCarContinuous-v0"}


def test_offpac_yml_has_the_required_entries():
    assert set(OFFPAC_ENTRIES) == set(ACTION_SPACE)


def test_cvpg_yml_has_the_envs_of_ppokl_yml():
    assert CVPG_ENTRIES == PPOKL_ENTRIES


def test_every_algorithm_is_trainable():
    assert ALGOS == {"ppokl": PPOKL, "offpac": OffPAC, "cvpg": CVPG}


@pytest.mark.parametrize("env_id", CVPG_ENTRIES)
def test_every_cvpg_entry_builds_a_model(env_id):
    hyperparams = load_hyperparams("cvpg", env_id)
    env = make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=hyperparams.n_envs)
    model = CVPG(hyperparams.policy, env, **hyperparams.model_kwargs)
    expected = "expected" if ACTION_SPACE[env_id] is spaces.Discrete else "taylor"
    assert model.control_variate == expected and model.surrogate == "clip" and model.q_critic is not None


@pytest.mark.parametrize("env_id", PPOKL_ENTRIES)
def test_every_ppokl_entry_builds_a_model(env_id):
    hyperparams = load_hyperparams("ppokl", env_id)
    assert hyperparams.n_timesteps > 0 and hyperparams.n_envs >= 1
    env = make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=hyperparams.n_envs)
    model = PPOKL(hyperparams.policy, env, **hyperparams.model_kwargs)
    assert model.kl_coef == 1.0 and model.adaptive_kl


@pytest.mark.parametrize("env_id", OFFPAC_ENTRIES)
def test_every_offpac_entry_builds_a_model(env_id):
    hyperparams = load_hyperparams("offpac", env_id)
    assert hyperparams.n_timesteps > 0
    env = make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=hyperparams.n_envs)
    model = OffPAC(hyperparams.policy, env, **hyperparams.model_kwargs)
    expected = "expected" if ACTION_SPACE[env_id] is spaces.Discrete else "reparameterization"
    assert model.actor_gradient == expected


def test_unknown_env_is_a_clear_error():
    with pytest.raises(ValueError, match="MountainCar-v0"):
        load_hyperparams("ppokl", "MountainCar-v0")


@pytest.mark.parametrize("algo, n_timesteps", [("ppokl", 512), ("offpac", 1_200), ("cvpg", 512)])
def test_train_entry_point(capsys, tmp_path, algo, n_timesteps):
    argv = ["--algo", algo, "--env", "CartPole-v1", "-n", str(n_timesteps), "--eval-episodes", "2", "--save", str(tmp_path / "m")]
    mean = main(argv)
    out = capsys.readouterr().out
    name = ALGOS[algo].__name__
    assert f"{name} on CartPole-v1: mean return" in out and f"{mean:.1f}" in out
    loaded = ALGOS[algo].load(tmp_path / "m.zip")
    assert loaded.num_timesteps == n_timesteps and loaded._n_updates > 0
