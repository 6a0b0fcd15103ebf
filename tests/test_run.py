"""Generic suite: every algorithm of MODEL_LIST on every supported space and setting."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from tests.conftest import ACTION_SPACES, tiny

ACTION_SPACE_ENVS = {
    "Discrete": lambda: IdentityEnv(3),
    "Box": lambda: IdentityEnvBox(),
    "MultiDiscrete": lambda: IdentityEnvMultiDiscrete(2),
    "MultiBinary": lambda: IdentityEnvMultiBinary(3),
}


def params_of(model) -> th.Tensor:
    return th.cat([p.detach().flatten().cpu() for p in model.policy.parameters()])


@pytest.mark.parametrize("space", ACTION_SPACE_ENVS)
def test_action_spaces(model_class, space):
    if space not in ACTION_SPACES[model_class]:
        pytest.skip(f"{model_class.__name__} does not support {space} actions (tested in its own tests)")
    env = make_vec_env(ACTION_SPACE_ENVS[space], n_envs=2, seed=0)
    model = model_class("MlpPolicy", env, seed=0, **tiny(model_class))
    before = params_of(model)
    model.learn(256)
    assert model.num_timesteps == 256
    assert not th.equal(before, params_of(model)), "training must change the policy"
    action, _ = model.predict(env.observation_space.sample(), deterministic=True)
    assert env.action_space.contains(action)


def test_gsde(model_class):
    model = model_class("MlpPolicy", "Pendulum-v1", use_sde=True, sde_sample_freq=4, seed=0, **tiny(model_class))
    model.learn(128)
    assert model.num_timesteps == 128
    assert np.isfinite(params_of(model).numpy()).all()


def test_several_envs_with_time_limit(model_class):
    limit = 7
    env = make_vec_env(lambda: gym.wrappers.TimeLimit(IdentityEnvBox(ep_length=1000), limit), n_envs=3, seed=0)
    model = model_class("MlpPolicy", env, seed=0, **tiny(model_class))
    model.learn(3 * 32 * 2)
    lengths = [info["l"] for info in model.ep_info_buffer]
    assert lengths and set(lengths) == {limit}, "every episode is cut by the TimeLimit"
    at_limit = (np.arange(32, 64) + 1) % limit == 0  # global steps 32..63 of each env
    if isinstance(model, OnPolicyAlgorithm):
        # SB3 bootstraps a truncated episode: r + γ V(terminal obs) at the limit, the env's 0/1 reward elsewhere
        rewards = model.rollout_buffer.rewards  # (n_steps, n_envs), the last rollout: global steps 32..63
        assert not np.isin(rewards[at_limit], [0.0, 1.0]).any()
        assert np.isin(rewards[~at_limit], [0.0, 1.0]).all()
    else:
        # The replay buffer marks a truncation as a timeout, so the critic target bootstraps there
        buffer = model.replay_buffer
        assert (buffer.timeouts[32:64][at_limit] == 1).all() and (buffer.timeouts[32:64][~at_limit] == 0).all()
        sample = buffer.sample(512)
        assert sample.dones.sum() == 0, "a truncation is not a termination"


def test_same_seed_same_result(model_class):
    results = []
    for _ in range(2):
        model = model_class("MlpPolicy", "CartPole-v1", seed=3, **tiny(model_class))
        model.learn(128)
        results.append(params_of(model))
    assert th.equal(results[0], results[1])
    other = model_class("MlpPolicy", "CartPole-v1", seed=4, **tiny(model_class)).learn(128)
    assert not th.equal(results[0], params_of(other))


def test_save_load_round_trip(model_class, tmp_path):
    env = make_vec_env(lambda: IdentityEnvBox(), n_envs=2, seed=0)
    model = model_class("MlpPolicy", env, seed=0, **tiny(model_class))
    model.learn(128)
    observations = np.stack([env.observation_space.sample() for _ in range(16)])
    actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "model.zip")

    loaded = model_class.load(tmp_path / "model.zip", env=env)
    assert th.equal(params_of(model), params_of(loaded))
    loaded_actions, _ = loaded.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
    names = ("n_steps", "n_epochs") if isinstance(model, OnPolicyAlgorithm) else ("buffer_size", "tau", "learning_starts")
    for name in ("batch_size", "gamma", *names):
        assert getattr(loaded, name) == getattr(model, name)

    # learning continues from where it stopped
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 256
    assert not th.equal(params_of(model), params_of(loaded))


def test_dict_observations(model_class):
    env = make_vec_env(lambda: SimpleMultiObsEnv(random_start=False), n_envs=2, seed=0)
    assert isinstance(env.observation_space, spaces.Dict)
    model = model_class("MultiInputPolicy", env, seed=0, **tiny(model_class))
    before = params_of(model)
    model.learn(128)
    assert not th.equal(before, params_of(model))
    action, _ = model.predict(env.observation_space.sample(), deterministic=True)
    assert env.action_space.contains(action[0] if np.ndim(action) else action)


def test_image_observations(model_class):
    env = make_vec_env(lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), n_envs=1, seed=0)
    kwargs = tiny(model_class, policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16)))
    model = model_class("CnnPolicy", env, seed=0, **kwargs)
    before = params_of(model)
    model.learn(64)
    assert not th.equal(before, params_of(model))


def test_vec_normalize(model_class, tmp_path):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.9)
    model = model_class("MlpPolicy", env, seed=0, **tiny(model_class))
    model.learn(256)
    assert env.obs_rms.count > 256, "running statistics were updated during training"
    env.save(tmp_path / "vecnormalize.pkl")
    eval_env = VecNormalize.load(tmp_path / "vecnormalize.pkl", make_vec_env("Pendulum-v1", n_envs=1))
    eval_env.training, eval_env.norm_reward = False, False
    np.testing.assert_array_equal(eval_env.obs_rms.mean, env.obs_rms.mean)
    mean_reward, _ = evaluate_policy(model, eval_env, n_eval_episodes=1)
    assert np.isfinite(mean_reward)


IDENTITY_SETTINGS = {
    "PPOKL": dict(n_steps=64, batch_size=64, n_epochs=4, learning_rate=3e-3, policy_kwargs=dict(net_arch=[32])),
    "OffPAC": dict(learning_starts=100, batch_size=64, learning_rate=3e-3, gamma=0.5, policy_kwargs=dict(net_arch=[32])),
    "CVPG": dict(
        n_steps=64, batch_size=64, n_epochs=4, learning_rate=3e-3, qf_gradient_steps=16, qf_batch_size=64, qf_net_arch=[32],
        policy_kwargs=dict(net_arch=[32]),
    ),
}


def test_identity_env_is_learned(model_class):
    # IdentityEnv: reward 1 for repeating the observed digit, 100 steps an episode
    env = make_vec_env(lambda: IdentityEnv(4), n_envs=4, seed=0)
    model = model_class("MlpPolicy", env, seed=0, **IDENTITY_SETTINGS[model_class.__name__])
    model.learn(6_000)
    eval_env = make_vec_env(lambda: IdentityEnv(4), n_envs=1, seed=100)
    mean_reward, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    assert mean_reward >= 90, f"mean reward {mean_reward} on the identity task"
