"""CVPG's own tests: PPO identity, unbiasedness and variance of the control variates, η, the Taylor term."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiDiscrete

from sb3_pgext import CVPG, gradient_variance
from sb3_pgext.common.estimators import qprop_eta
from sb3_pgext.common.gradient_variance import flatten_gradients

TINY = dict(n_steps=32, batch_size=32, n_epochs=2, qf_gradient_steps=2, qf_batch_size=16, qf_buffer_size=1_000,
            qf_net_arch=[16], policy_kwargs=dict(net_arch=[16]))


def flat_params(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_bit_identical_to_ppo(env_id):
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=3, seed=0, policy_kwargs=dict(net_arch=[16]))
    ppo = PPO("MlpPolicy", env_id, **kwargs).learn(256)
    cvpg = CVPG("MlpPolicy", env_id, control_variate="none", surrogate="clip", baseline="value", **kwargs).learn(256)
    assert th.equal(flat_params(ppo), flat_params(cvpg))
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/approx_kl", "train/clip_fraction"):
        assert ppo.logger.name_to_value[key] == cvpg.logger.name_to_value[key]
    assert cvpg.replay_buffer is None and cvpg.q_net is None


# --- bandits with a known gradient and a critic equal to the true Q ---------------------------------


class GaussianBandit(gym.Env):
    """One step: reward Q(a) = −(a − 2)², observation 0."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-10.0, 10.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(-((action[0] - 2.0) ** 2)), True, False, {}


Q_TABLE = th.tensor([-5.0, 0.0, 5.0])


class DiscreteBandit(gym.Env):
    """One step: reward Q(a) from Q_TABLE, observation 0."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(Q_TABLE[int(action)]), True, False, {}


class TrueGaussianQ(th.nn.Module):
    def forward(self, obs, actions):
        return (-((actions - 2.0) ** 2).sum(dim=1, keepdim=True),)


class TrueDiscreteQ(th.nn.Module):
    def forward(self, obs):
        return (Q_TABLE.expand(len(obs), 3),)


def exact_gradient(model) -> th.Tensor:
    """∇_θ J of the bandit in closed form, over the policy parameters gradient_variance uses."""
    params = model._pg_parameters()
    obs = th.zeros(1, 1)
    distribution = model.policy.get_distribution(obs).distribution
    if isinstance(model.action_space, spaces.Discrete):
        objective = (distribution.probs * Q_TABLE).sum()
    else:  # E[−(a − 2)²] = −(μ − 2)² − σ²
        objective = (-((distribution.mean - 2.0) ** 2) - distribution.variance).sum()
    grads = th.autograd.grad(objective, params, allow_unused=True)
    return flatten_gradients(grads, params).double()


@pytest.mark.parametrize(
    "env_class, control_variate, q_net",
    [
        (GaussianBandit, "taylor", TrueGaussianQ),
        (GaussianBandit, "reparameterization", TrueGaussianQ),
        (DiscreteBandit, "expected", TrueDiscreteQ),
    ],
)
def test_control_variate_is_unbiased_and_cuts_variance(env_class, control_variate, q_net):
    n_minibatches = 64
    model = CVPG(
        "MlpPolicy",
        env_class(),
        n_steps=4096,
        batch_size=64,
        control_variate=control_variate,
        eta="ones",
        qf_gradient_steps=0,  # the critic is the true Q below
        seed=0,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), log_std_init=math.log(0.3)),
    )
    model.q_net = q_net()
    with th.no_grad():  # the value baseline is exact too: V = E_π[Q] (−(μ − 2)² − σ² = −4.09, or 0)
        model.policy.value_net.bias.fill_(-4.0 - 0.09 if env_class is GaussianBandit else 0.0)
    with_cv = gradient_variance(model, n_minibatches=n_minibatches)
    plain = gradient_variance(model, n_minibatches=n_minibatches, control_variate=False)
    exact = exact_gradient(model)
    assert exact.norm() > 0.1
    # Unbiased: over K minibatches, E‖ḡ − ∇J‖² = variance / K for each estimator, and a bias would add
    # ‖bias‖² (‖∇J‖² ≈ 16 here, against variance / K below 0.1). The gradient lives in 2 dimensions (mean,
    # log σ), so ‖ḡ − ∇J‖² / (variance / K) is about χ²₂ / 2: above 9 once in 10^4 runs.
    for stats in (with_cv, plain):
        error = (stats["mean"] - exact).pow(2).sum().item()
        assert error < 9 * stats["variance"] / n_minibatches + 1e-8, (control_variate, error, stats["variance"])
    # with the true Q as critic the control variate leaves (almost) only the analytic term's noise
    assert with_cv["variance"] * 5 <= plain["variance"], (with_cv["variance"], plain["variance"])


# --- the pieces --------------------------------------------------------------------------------------


def test_eta_rules():
    advantages = th.tensor([1.0, 2.0, 3.0, 4.0])
    with_positive_cov, with_negative_cov = th.tensor([0.0, 1.0, 1.0, 2.0]), th.tensor([2.0, 1.0, 1.0, 0.0])
    assert qprop_eta(advantages, with_negative_cov, "ones") == 1
    assert qprop_eta(advantages, with_positive_cov, "conservative") == 1
    assert qprop_eta(advantages, with_negative_cov, "conservative") == 0
    assert qprop_eta(advantages, with_positive_cov, "aggressive") == 1
    assert qprop_eta(advantages, with_negative_cov, "aggressive") == -1


def test_eta_and_correlation_are_logged_and_applied():
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, eta="aggressive", **TINY).learn(96)
    logs = model.logger.name_to_value
    assert logs["train/eta_mean"] in (-1.0, 1.0)
    assert -1.0 <= logs["train/cv_corr"] <= 1.0 and np.isfinite(logs["train/qf_loss"])
    assert np.sign(logs["train/cv_corr"]) == logs["train/eta_mean"], "aggressive η is the sign of Cov(Â, Ā)"
    # the buffer holds Â − ηĀ: its difference to the plain advantages is η Ā, correlated with Ā as logged
    assert model.replay_buffer.size() == 96


def test_taylor_term_is_autograd_of_q_at_the_mean():
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, control_variate="taylor", **TINY)
    model.learn(32)  # one rollout: the critic exists and the constants are computed in train()
    model._begin_update()
    model.rollout_buffer.batch_inds = np.arange(32)
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(32, -1))
    params = model._pg_parameters()
    distribution = model.policy.get_distribution(obs)
    ours = th.autograd.grad(model._analytic_term(obs, distribution, th.arange(32)).mean(), params, allow_unused=True)
    # reference: ∇_θ mean_s Q_w(s, μ_θ(s)) with Q_w fixed
    reference = th.autograd.grad(model.q_net(obs, model.policy.get_distribution(obs).distribution.mean)[0].mean(), params, allow_unused=True)
    flat = [flatten_gradients(gs, params) for gs in (ours, reference)]
    assert flat[1].norm() > 1e-4
    assert th.allclose(flat[0], flat[1], atol=1e-6, rtol=1e-5)


def test_critic_sees_the_executed_action():
    """Q(s, a) = Q_w(s, clip(a)): beyond Pendulum's ±2 the value is the boundary's and its action gradient is 0."""
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, control_variate="taylor", **TINY)
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(3, 3)), dtype=th.float32)
    outside = th.tensor([[5.0], [-2.5], [100.0]], requires_grad=True)
    q_outside = model._q_values(model.q_net, obs, outside)
    assert th.equal(q_outside, model._q_values(model.q_net, obs, th.tensor([[2.0], [-2.0], [2.0]])))
    assert th.equal(th.autograd.grad(q_outside.sum(), outside)[0], th.zeros(3, 1))
    inside = th.full((3, 1), 0.5, requires_grad=True)
    assert th.autograd.grad(model._q_values(model.q_net, obs, inside).sum(), inside)[0].abs().sum() > 0


@pytest.mark.parametrize("control_variate", ["taylor", "reparameterization"])
def test_analytic_term_is_clipped_with_the_surrogate(control_variate):
    """
    With PPO's clip, a sample's analytic term counts only while its ratio is within [1 − ε, 1 + ε]. The ratio is
    passed as a constant here, so the clipped surrogate has no gradient and what remains is the analytic term's.
    """
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, control_variate=control_variate, eta="ones", use_sde=False, **TINY)
    model.learn(32)
    model._begin_update()
    data = next(model.rollout_buffer.get(32))
    params = model._pg_parameters()

    def gradient(ratio: th.Tensor, clip_range: float | None) -> th.Tensor:
        th.manual_seed(0)  # the same reparameterization noise in every call
        distribution = model.policy.get_distribution(data.observations)
        log_prob = distribution.log_prob(data.actions)
        loss = model._policy_loss(data, data.advantages, ratio, log_prob, distribution, clip_range)
        return flatten_gradients(th.autograd.grad(loss, params, allow_unused=True), params)

    inside, outside, half = th.ones(32), th.full((32,), 1.5), th.cat([th.ones(16), th.full((16,), 0.5)])
    assert gradient(inside, 0.2).norm() > 1e-6
    assert th.equal(gradient(outside, 0.2), th.zeros_like(gradient(inside, 0.2)))
    assert th.allclose(gradient(outside, None), gradient(inside, 0.2), atol=1e-7)  # no clipping: every sample counts
    # half the samples inside: the gradient of those samples' terms alone
    th.manual_seed(0)
    distribution = model.policy.get_distribution(data.observations)
    terms = model._analytic_term(data.observations, distribution, model._batch_inds())
    scale = 1.0 / (data.advantages.std() + 1e-8)
    reference = th.autograd.grad(-scale * (terms * (half == 1)).mean(), params, allow_unused=True)
    assert th.allclose(gradient(half, 0.2), flatten_gradients(reference, params), atol=1e-7)


def test_reward_to_go_baselines():
    advantages = {}
    for baseline in ("none", "mean", "value"):
        model = CVPG("MlpPolicy", "CartPole-v1", seed=0, baseline=baseline, control_variate="none", n_steps=64, batch_size=64,
                     n_epochs=1, policy_kwargs=dict(net_arch=[16]))
        model.learn(64)
        advantages[baseline] = model.rollout_buffer.advantages.reshape(-1).copy()
        if baseline == "none":
            buffer, (last_values, dones) = model.rollout_buffer, model._rollout_end
            rewards, starts = buffer.rewards.reshape(-1), buffer.episode_starts.reshape(-1)
            # discounted reward-to-go, cut at episode starts, bootstrapped with V after the rollout's last step
            expected, running = np.zeros(64), float(last_values.flatten()[0])
            for t in reversed(range(64)):
                next_non_terminal = 1.0 - (float(dones[0]) if t == 63 else starts[t + 1])
                running = rewards[t] + model.gamma * next_non_terminal * running
                expected[t] = running
            np.testing.assert_allclose(advantages["none"], expected, rtol=1e-5)
    np.testing.assert_allclose(advantages["mean"], advantages["none"] - advantages["none"].mean(), rtol=1e-5, atol=1e-4)
    assert not np.allclose(advantages["value"], advantages["none"])


def test_vanilla_is_one_step_on_the_whole_rollout():
    model = CVPG("MlpPolicy", "CartPole-v1", seed=0, surrogate="vanilla", n_steps=64, qf_gradient_steps=2, qf_batch_size=16)
    assert model.n_epochs == 1 and model.batch_size == 64 and model.clip_range is None
    model.learn(128)
    assert model._n_updates == 2


def test_kl_surrogate_adapts_beta():
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, surrogate="kl", **TINY).learn(96)
    assert model.clip_range is None and model.penalty_active
    assert "train/kl_coef" in model.logger.name_to_value and model.kl_coef != 1.0


def test_save_load_keeps_the_critic(tmp_path):
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, **TINY).learn(64)
    model.save(tmp_path / "cvpg")
    loaded = CVPG.load(tmp_path / "cvpg", env=gym.make("Pendulum-v1"))
    for a, b in zip(model.q_net.parameters(), loaded.q_net.parameters()):
        assert th.equal(a, b)
    assert loaded.control_variate == "taylor" and loaded.replay_buffer.size() == 0
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_cuda(env_id):
    model = CVPG("MlpPolicy", env_id, seed=0, device="cuda", **TINY)
    assert model.replay_buffer.sample(4).observations.device.type == "cuda"
    model.learn(96)
    assert all(p.device.type == "cuda" for p in model.q_net.parameters())
    assert np.isfinite(model.logger.name_to_value["train/qf_loss"])


@pytest.mark.parametrize(
    "env, kwargs, match",
    [
        (IdentityEnv(3), dict(control_variate="taylor"), "taylor"),
        (IdentityEnv(3), dict(control_variate="reparameterization"), "reparameterization"),
        (IdentityEnvBox(), dict(control_variate="expected"), "expected"),
        (IdentityEnvBox(), dict(control_variate="stein"), "control_variate"),
        (IdentityEnvBox(), dict(eta="sometimes"), "eta"),
        (IdentityEnvBox(), dict(surrogate="trpo"), "surrogate"),
        (IdentityEnvBox(), dict(baseline="median"), "baseline"),
        (IdentityEnvBox(), dict(qf_batch_size=0), "qf_batch_size"),
        (IdentityEnvBox(), dict(qf_tau=0.0), "qf_tau"),
        (IdentityEnvBox(), dict(surrogate="vanilla", n_epochs=5), "n_epochs"),
        (IdentityEnvBox(), dict(control_variate="reparameterization", use_sde=True), "use_sde"),
        (IdentityEnvMultiDiscrete(2), dict(), "Discrete and Box"),
    ],
)
def test_bad_input(env, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CVPG("MlpPolicy", env, **kwargs)
