"""Tucker et al.'s horizon-aware value function in the PPO family."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_pgext import CVPG, PPOKL
from sb3_pgext.common.horizon import HorizonAwareValueHead, horizon_aware_value, horizon_weight

TINY = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), seed=0)
CVPG_TINY = dict(qf_net_arch=[16], qf_gradient_steps=2)


def make(model_class, env, **kwargs):
    extra = CVPG_TINY if model_class is CVPG else {}
    return model_class("MlpPolicy", env, **TINY, **extra, **kwargs)


@pytest.mark.parametrize("gamma", [0.9, 0.99, 1.0])
def test_the_horizon_weight_is_the_discounted_number_of_rewards_left(gamma):
    time_left = th.tensor([0.0, 1.0, 2.0, 7.0, 200.0], dtype=th.float64)
    expected = th.tensor([sum(gamma**i for i in range(int(n))) for n in time_left], dtype=th.float64)
    assert th.allclose(horizon_weight(time_left, gamma), expected, rtol=1e-12)
    rest, rate = th.tensor([0.5] * 5, dtype=th.float64), th.tensor([2.0] * 5, dtype=th.float64)
    assert th.allclose(horizon_aware_value(rest, rate, time_left, gamma), 2.0 * expected + 0.5)


@pytest.mark.parametrize("model_class", [PPOKL, CVPG])
def test_with_a_zero_reward_rate_it_is_the_plain_value_function(model_class):
    """
    The head starts with r̂ = 0 and V' = SB3's value_net, without touching the random streams: the first rollout
    is the plain model's (its experience bit for bit, its values to float precision: a 2-output layer rounds apart).
    """
    plain = make(model_class, "Pendulum-v1")  # each model seeds the global streams when it is built
    obs = th.randn(5, 3).to(plain.device)
    plain_values = plain.policy.predict_values(obs).flatten()
    plain.learn(64)
    aware = make(model_class, "Pendulum-v1", horizon_aware_value=True)
    assert isinstance(aware.policy.value_net, HorizonAwareValueHead)
    assert th.equal(aware.policy.value_net.linear.weight[1], th.zeros(16, device=aware.device))
    time_left = th.tensor([200.0, 150.0, 10.0, 1.0, 0.0], device=aware.device)
    assert th.allclose(aware.predict_horizon_values(obs, time_left), plain_values, atol=1e-6)
    th.randn(5, 3)
    aware.learn(64)
    for name in ("observations", "actions", "rewards"):
        assert np.array_equal(getattr(aware.rollout_buffer, name), getattr(plain.rollout_buffer, name))
    for name in ("values", "returns", "advantages"):  # recomputed in one batch: equal to float precision
        assert np.allclose(getattr(aware.rollout_buffer, name), getattr(plain.rollout_buffer, name), atol=1e-5)


def test_the_time_left_of_every_stored_observation_comes_from_the_time_limit():
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0, env_kwargs=dict(max_episode_steps=50))
    model = make(PPOKL, env, horizon_aware_value=True)
    model.learn(3 * 64 * 2)  # three rollouts of 64 steps: episodes of 50 end inside them
    buffer = model.rollout_buffer
    time_left = buffer.time_left.reshape(2, 64)  # flattened env by env, as get() indexes it
    steps = 2 * 64 + np.arange(64)  # the third rollout's steps since the first reset
    for env_index in range(2):
        assert np.array_equal(time_left[env_index], 50 - steps % 50)
    samples = next(buffer.get(32))
    assert np.array_equal(samples.time_left.cpu().numpy(), buffer.time_left[buffer.batch_inds].flatten())


@pytest.mark.parametrize("model_class", [PPOKL, CVPG])
def test_the_value_is_fitted_with_the_time_left_and_the_reward_rate_learns(model_class):
    model = make(model_class, "Pendulum-v1", horizon_aware_value=True)
    model.learn(256)
    head = model.policy.value_net
    assert head.linear.weight[1].abs().sum() > 0  # r̂ has been trained
    buffer = model.rollout_buffer
    obs = th.as_tensor(buffer.observations[:8], device=model.device)
    time_left = th.as_tensor(buffer.time_left[:8], device=model.device).flatten()
    values = model.policy.predict_values(obs).flatten()
    assert th.allclose(model.predict_horizon_values(obs, time_left), values + horizon_weight(time_left, model.gamma) * head.reward_rate)


@pytest.mark.parametrize("model_class", [PPOKL, CVPG])
def test_the_rollouts_mean_reward_rate_and_horizon_part_are_logged(model_class):
    model = make(model_class, "Pendulum-v1", horizon_aware_value=True)
    model.learn(256)
    model.recompute_horizon_aware_returns()  # as train() does with the last rollout, at the trained parameters
    logged = model.logger.name_to_value
    buffer = model.rollout_buffer
    obs = th.as_tensor(buffer.observations.reshape(-1, 3), device=model.device)
    time_left = th.as_tensor(buffer.time_left, device=model.device).flatten()
    with th.no_grad():
        model.policy.set_training_mode(False)
        rest = model.policy.predict_values(obs).flatten()
        rate = model.policy.value_net.reward_rate
    assert rate.abs().max() > 0  # r̂ has been trained, so the check below can fail
    assert logged["train/reward_rate"] == pytest.approx(rate.mean().item(), rel=1e-5)
    horizon = horizon_weight(time_left, model.gamma) * rate
    assert logged["train/horizon_value"] == pytest.approx(horizon.mean().item(), rel=1e-5)
    assert logged["train/value"] == pytest.approx((rest + horizon).mean().item(), rel=1e-5)
    assert logged["train/value"] == pytest.approx(buffer.values.mean(), rel=1e-5)


@pytest.mark.parametrize("model_class", [PPOKL, CVPG])
def test_saved_and_loaded_with_the_model(model_class, tmp_path):
    model = make(model_class, "Pendulum-v1", horizon_aware_value=True).learn(128)
    model.save(tmp_path / "model.zip")
    loaded = model_class.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.horizon_aware_value and isinstance(loaded.policy.value_net, HorizonAwareValueHead)
    obs, time_left = th.randn(4, 3, device=model.device), th.tensor([3.0, 50.0, 100.0, 200.0], device=model.device)
    assert th.equal(loaded.predict_horizon_values(obs, time_left), model.predict_horizon_values(obs, time_left))
    loaded.learn(64)  # and trains on


def test_an_env_without_a_time_limit_is_refused_before_training():
    with pytest.raises(ValueError, match="horizon_aware_value=True needs episodes with a time limit"):
        make(PPOKL, gym.make("Pendulum-v1").unwrapped, horizon_aware_value=True)


def test_a_buffer_class_without_the_time_left_is_refused():
    from stable_baselines3.common.buffers import RolloutBuffer

    class MyBuffer(RolloutBuffer):
        pass

    with pytest.raises(ValueError, match="rollout_buffer_class must subclass TimeLeftRolloutBuffer"):
        make(PPOKL, "Pendulum-v1", horizon_aware_value=True, rollout_buffer_class=MyBuffer)


def test_the_variance_decomposition_uses_the_value_with_the_time_left():
    from sb3_pgext.common.variance_decomposition import _Measurement

    model = make(PPOKL, "Pendulum-v1", horizon_aware_value=True).learn(256)
    measure = _Measurement(model, lambda: gym.make("Pendulum-v1"), None, horizon=5, n_actions=2, n_rollouts=2, seed=0)
    envs = measure.envs
    for steps, env in enumerate(envs):
        for _ in range(steps * 7):
            env.step(env.action_space.sample())
    obs = np.stack([env.unwrapped._get_obs() for env in envs])
    _, values = measure._act(obs, envs)
    time_left = th.tensor([200.0 - 7 * steps for steps in range(len(envs))], device=model.device)
    expected = model.predict_horizon_values(th.as_tensor(obs, device=model.device), time_left).detach().double().cpu().numpy()
    assert np.allclose(values, expected, atol=1e-6) and not np.allclose(values, values[0])
    measure.close()
