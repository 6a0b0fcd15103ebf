"""Agents saved with ``gym`` (SB3 1.x, the hub's sb3/* agents) and warm starts from PPO checkpoints."""

import subprocess
import sys
import warnings
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.utils import check_for_correct_spaces

from sb3_pgext import CVPG, PPOKL
from sb3_pgext.common.compat import gym_as_gymnasium, load_model, same_space_up_to_legacy_bounds

if __import__("importlib").util.find_spec("gym") is not None:  # pragma: no cover
    pytest.skip("the legacy gym package is installed: nothing to map", allow_module_level=True)


@contextmanager
def pickled_as_gym():
    """Save with gymnasium's space classes named as gym's, as SB3 1.x did."""
    classes = (spaces.Box, spaces.Discrete)
    modules = {cls: cls.__module__ for cls in classes}
    with gym_as_gymnasium():
        for cls in classes:
            cls.__module__ = modules[cls].replace("gymnasium", "gym", 1)
        try:
            yield
        finally:
            for cls in classes:
                cls.__module__ = modules[cls]


def legacy_cartpole_spaces() -> tuple[spaces.Box, spaces.Discrete]:
    """CartPole's spaces as gym < 0.26 wrote them: unbounded limits as ±float32 max."""
    high = np.array([4.8, np.finfo(np.float32).max, 0.41887903, np.finfo(np.float32).max], dtype=np.float32)
    return spaces.Box(-high, high, dtype=np.float32), spaces.Discrete(2)


@pytest.fixture(scope="module")
def legacy_ppo(tmp_path_factory):
    """A tiny PPO saved with gym-named spaces and gym's CartPole bounds, and the observations/actions it gives."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[8]), seed=0)
    model.learn(64)
    model.observation_space, model.action_space = legacy_cartpole_spaces()
    path = tmp_path_factory.mktemp("legacy") / "ppo-CartPole-v1.zip"
    with pickled_as_gym():
        model.save(path)
    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    return path, observations, model.predict(observations, deterministic=True)[0], model


def test_fixture_is_a_real_legacy_file(legacy_ppo):
    """Run apart from this process's imports: plain SB3 cannot read it, as with the hub's sb3/* agents."""
    path = legacy_ppo[0]
    code = f"from stable_baselines3 import PPO; PPO.load({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "No module named 'gym'" in result.stderr


def test_load_model_reads_gym_pickles(legacy_ppo):
    path, observations, actions, _ = legacy_ppo
    model = load_model(PPO, path)
    assert isinstance(model.observation_space, spaces.Box) and type(model.action_space) is spaces.Discrete
    np.testing.assert_array_equal(model.predict(observations, deterministic=True)[0], actions)
    assert "gym" not in sys.modules  # the mapping is gone after loading


def test_legacy_bounds_match_the_gymnasium_env():
    env = gym.make("CartPole-v1")
    legacy_observations, legacy_actions = legacy_cartpole_spaces()
    assert legacy_observations != env.observation_space
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        check_for_correct_spaces(env, legacy_observations, legacy_actions)
    assert same_space_up_to_legacy_bounds(legacy_observations, env.observation_space)
    assert not same_space_up_to_legacy_bounds(spaces.Box(-1, 1, (4,)), env.observation_space)
    assert not same_space_up_to_legacy_bounds(legacy_observations, spaces.Box(-np.inf, np.inf, (4,), dtype=np.float64))


@pytest.mark.parametrize("algo_class", [PPO, PPOKL])
def test_warm_start_from_legacy_ppo(legacy_ppo, algo_class):
    """A gym-era PPO agent continues training as PPO or PPOKL on today's env, starting from its policy."""
    path, observations, actions, original = legacy_ppo
    env = gym.make("CartPole-v1")
    model = load_model(algo_class, path, env=env, n_steps=32, batch_size=32)
    assert type(model) is algo_class and model.observation_space == env.observation_space
    for name, tensor in original.policy.state_dict().items():
        th.testing.assert_close(model.policy.state_dict()[name], tensor, rtol=0, atol=0)
    np.testing.assert_array_equal(model.predict(observations, deterministic=True)[0], actions)
    model.learn(64, reset_num_timesteps=False)
    assert model.num_timesteps >= 64 + original.num_timesteps
    assert not th.equal(model.policy.action_net.weight, original.policy.action_net.weight)  # it trained on


def test_ppokl_load_reads_legacy_files_itself(legacy_ppo):
    path = legacy_ppo[0]
    model = PPOKL.load(path, env=gym.make("CartPole-v1"))
    assert isinstance(model, PPOKL) and model.kl_target == 0.01  # PPOKL's defaults for what PPO never saved


def test_cvpg_warm_start_keeps_policy_and_trains_a_fresh_critic(tmp_path):
    ppo = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[8]), seed=0)
    ppo.learn(64)
    ppo.save(tmp_path / "ppo")
    with pytest.warns(UserWarning, match="no Q critic"):
        model = CVPG.load(tmp_path / "ppo", env=gym.make("Pendulum-v1"), qf_gradient_steps=2, qf_net_arch=[8])
    assert model.control_variate == "taylor"
    for name, tensor in ppo.policy.state_dict().items():
        th.testing.assert_close(model.policy.state_dict()[name], tensor, rtol=0, atol=0)
    fresh_critic = [p.clone() for p in model.q_critic.parameters()]
    model.learn(128)
    assert not all(th.equal(a, b) for a, b in zip(fresh_critic, model.q_critic.parameters())), "the critic trains"
    # a CVPG checkpoint with its critic loads exactly, without the warning
    model.save(tmp_path / "cvpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        again = CVPG.load(tmp_path / "cvpg")
    th.testing.assert_close(again.q_critic.state_dict(), model.q_critic.state_dict())


def test_cvpg_warm_start_rejects_another_architecture(tmp_path):
    ppo = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[8]), seed=0)
    ppo.save(tmp_path / "ppo")
    cvpg = CVPG("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[16]), qf_net_arch=[8])
    with pytest.raises(ValueError, match="does not match"):
        cvpg.set_parameters(str(tmp_path / "ppo.zip"))
