"""The shipped zoo hyperparameter files and the train entry point."""

import pytest
import yaml
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_pgext import PPOKL
from sb3_pgext.common.hyperparams import hyperparams_path, load_hyperparams
from sb3_pgext.train import main

with open(hyperparams_path("ppokl")) as file:
    PPOKL_ENTRIES = sorted(yaml.safe_load(file))

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
}


def test_ppokl_yml_has_the_required_entries():
    assert set(PPOKL_ENTRIES) == set(ACTION_SPACE)


@pytest.mark.parametrize("env_id", PPOKL_ENTRIES)
def test_every_ppokl_entry_builds_a_model(env_id):
    hyperparams = load_hyperparams("ppokl", env_id)
    assert hyperparams.n_timesteps > 0 and hyperparams.n_envs >= 1
    env = make_vec_env(STAND_IN[ACTION_SPACE[env_id]], n_envs=hyperparams.n_envs)
    model = PPOKL(hyperparams.policy, env, **hyperparams.model_kwargs)
    assert model.kl_coef == 1.0 and model.adaptive_kl


def test_unknown_env_is_a_clear_error():
    with pytest.raises(ValueError, match="MountainCar-v0"):
        load_hyperparams("ppokl", "MountainCar-v0")


def test_train_entry_point(capsys, tmp_path):
    mean = main(["--algo", "ppokl", "--env", "CartPole-v1", "-n", "512", "--eval-episodes", "2", "--save", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert "PPOKL on CartPole-v1: mean return" in out and f"{mean:.1f}" in out
    assert PPOKL.load(tmp_path / "m.zip").num_timesteps == 512
