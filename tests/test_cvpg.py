"""
CVPG's own tests: PPO identity; unbiasedness and variance of the control variates, of the cross-fitted η and
of the critic fitted on earlier rollouts, against exact gradients; the pieces; the defects fixed (VecNormalize in
the replay buffer, float64 actions, MultiDiscrete / MultiBinary).
"""

import copy
import itertools
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_pgext import CVPG, gradient_variance
from sb3_pgext.common.buffers import flat_actions, flat_array, flat_observations, policy_actions
from sb3_pgext.common.estimators import (
    centered_control_variate,
    GradientMoments,
    clipped_gaussian_mean,
    min_variance_eta,
    qprop_eta,
    rollout_folds,
    taylor_analytic_term,
    taylor_control_variate,
    weighted_analytic_term,
)
from sb3_pgext.common.gradient_variance import flatten_gradients
from sb3_pgext.cvpg.buffers import CVPGRolloutBufferSamples
from sb3_pgext.cvpg.per_sample import per_sample_gradients
from sb3_pgext.cvpg import q_critic as q_critic_module
from sb3_pgext.cvpg.q_critic import QCritic, joint_action_index, joint_action_probs, mlp_mse_gradients

DATA = Path(__file__).parent / "data"

TINY = dict(n_steps=32, batch_size=32, n_epochs=2, qf_gradient_steps=2, qf_batch_size=16, qf_buffer_size=1_000,
            qf_net_arch=[16], policy_kwargs=dict(net_arch=[16]))


def flat_params(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def collect(model: CVPG) -> None:
    """One rollout with the current policy and its control variate, as train() prepares it, without an update."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None, reset_num_timesteps=False)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    model.prepare_advantages()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_bit_identical_to_ppo(env_id):
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=3, seed=0, policy_kwargs=dict(net_arch=[16]))
    ppo = PPO("MlpPolicy", env_id, **kwargs).learn(256)
    cvpg = CVPG("MlpPolicy", env_id, control_variate="none", surrogate="clip", baseline="value", **kwargs).learn(256)
    assert th.equal(flat_params(ppo), flat_params(cvpg))
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/approx_kl", "train/clip_fraction"):
        assert ppo.logger.name_to_value[key] == cvpg.logger.name_to_value[key]
    assert cvpg.q_critic is None


# --- the estimator's pieces against exact gradients -----------------------------------------------------


def gaussian_bandit_gradients(folds: th.Tensor | None, n_rollouts: int, n_samples: int) -> tuple[th.Tensor, th.Tensor]:
    """
    Q-Prop's estimator, one per rollout, on the bandit r(a) = −(a − 2)², π = N(μ, σ²), with an imperfect critic
    Q_w(a) = −1.3 (a − 1.5)² (Taylor control variate at μ) and η = "adaptive" with the given folds.

    :return: the per-rollout gradients in (μ, log σ), shape (n_rollouts, 2), and the exact gradient of
        J = E[r] = −(μ − 2)² − σ²
    """
    mu0, log_std0 = 0.5, math.log(0.8)
    mu = th.full((n_rollouts, 1), mu0, requires_grad=True)  # one copy per rollout: autograd gives per-rollout gradients
    log_std = th.full((n_rollouts, 1), log_std0, requires_grad=True)
    actions = (mu + log_std.exp() * th.randn(n_rollouts, n_samples)).detach()
    log_prob = -0.5 * ((actions - mu) / log_std.exp()) ** 2 - log_std
    advantages = -((actions - 2.0) ** 2) - (-((mu0 - 2.0) ** 2) - math.exp(2 * log_std0))  # exact V baseline
    q_grad = th.full((n_rollouts * n_samples, 1), -2.6 * (mu0 - 1.5))  # ∇_a Q_w at the mean
    cv = taylor_control_variate(q_grad, actions.reshape(-1, 1), th.full((n_rollouts * n_samples, 1), mu0)).reshape(n_rollouts, -1)
    eta = th.stack([qprop_eta(advantages[r], cv[r], "adaptive", folds) for r in range(n_rollouts)])
    analytic = taylor_analytic_term(q_grad, mu.expand(-1, n_samples).reshape(-1, 1)).reshape(n_rollouts, -1)
    surrogate = (log_prob * (advantages - eta * cv)).mean(dim=1) + (eta * analytic).mean(dim=1)
    gradients = th.cat(th.autograd.grad(surrogate.sum(), [mu, log_std]), dim=1)
    return gradients, th.tensor([-2 * (mu0 - 2.0), -2 * math.exp(2 * log_std0)])


def test_cross_fitted_adaptive_eta_is_unbiased_and_in_sample_is_not():
    """
    Over independent rollouts of 8 samples, the mean of the estimator with the cross-fitted η* (each half's from the
    other half) is within 5 standard errors of the exact gradient in each coordinate; η* estimated on the samples it
    weights biases the log σ gradient by far more (the flaw Tucker et al. 2018 found), which shows the test can fail.
    """
    th.manual_seed(0)
    n_rollouts, n_samples = 3000, 8
    for folds, biased in ((rollout_folds(n_samples, 1), False), (None, True)):
        gradients, exact = gaussian_bandit_gradients(folds, n_rollouts, n_samples)
        z = (gradients.mean(dim=0) - exact) / (gradients.std(dim=0) / math.sqrt(n_rollouts))
        if biased:
            assert z.abs().max() > 10, z
        else:
            assert z.abs().max() < 5, z


def test_rollout_folds():
    # several envs: whole envs alternate (flat index = env · n_steps + step)
    assert rollout_folds(3, 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout_folds(2, 3).tolist() == [0, 0, 1, 1, 0, 0]
    # one env: the first and second halves of the rollout
    assert rollout_folds(4, 1).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("eta", ["adaptive", "min_variance"])
@pytest.mark.parametrize("n_envs, folds", [(3, [0, 0, 1, 1, 2, 2]), (1, [0, 0, 0, 1, 1, 1])])
def test_cvpg_cross_fits_eta_leaving_one_env_out(n_envs, folds, eta):
    """
    Each env's η comes from the rollout's other envs, a single env's halves from each other: recomputed from the
    buffer's named fields (and, for "min_variance", the per-sample gradients at the collecting policy) over the
    other folds only, each fold's η is the one stored.
    """
    model = CVPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0), seed=0, eta=eta,
                 **{**TINY, "n_steps": 6 // n_envs, "batch_size": 6})  # fmt: skip
    model.learn(6)  # a first rollout fits the critic
    collect(model)  # the next one's Ā and η, before any update
    buffer, folds = model.rollout_buffer, th.tensor(folds)
    advantages = th.as_tensor(flat_array(buffer, "advantages"), dtype=th.float64)
    control_variate = th.as_tensor(buffer.control_variate, dtype=th.float64)
    if eta == "min_variance":
        obs = th.as_tensor(flat_observations(buffer), device=model.device)
        actions = th.as_tensor(flat_actions(buffer), device=model.device)
        score, analytic = per_sample_gradients(model, obs, actions, th.as_tensor(buffer.analytic_term_constants, device=model.device))
        u = advantages[:, None] * score.double().cpu()
        v = control_variate[:, None] * score.double().cpu() - analytic.double().cpu()
    assert control_variate.abs().sum() > 0
    for fold in folds.unique():
        others = folds != fold
        if eta == "adaptive":
            a, c = advantages[others], control_variate[others] - control_variate[others].mean()
            expected = ((a - a.mean()) * c).mean() / c.pow(2).mean()
        else:
            u_, v_ = u[others] - u[others].mean(0), v[others] - v[others].mean(0)
            expected = (u_ * v_).sum() / v_.pow(2).sum()
        assert np.allclose(buffer.eta[(folds == fold).numpy()], expected.item(), rtol=1e-4, atol=1e-6)


def test_eta_rules_are_cross_fitted():
    # fold 0's η comes from fold 1's samples and vice versa
    folds = th.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    advantages = th.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])
    cv = th.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 1.0, 1.0, 2.0])  # fold 0: Cov < 0; fold 1: Cov > 0
    assert qprop_eta(advantages, cv, "ones", folds).tolist() == [1.0] * 8
    assert qprop_eta(advantages, cv, "conservative", folds).tolist() == [1.0] * 4 + [0.0] * 4
    assert qprop_eta(advantages, cv, "aggressive", folds).tolist() == [1.0] * 4 + [-1.0] * 4
    # η* = Ĉov / V̂ar: fold 1's Cov(Â, Ā) = 0.75, Var(Ā) = 0.5; fold 0's −1.25 / 1.25
    assert th.allclose(qprop_eta(advantages, cv, "adaptive", folds), th.tensor([1.5] * 4 + [-1.0] * 4))
    # in-sample, a perfect Ā = Â gets η* = 1 exactly
    assert th.allclose(qprop_eta(advantages, advantages, "adaptive"), th.ones(8))
    with pytest.raises(ValueError, match="eta"):
        qprop_eta(advantages, cv, "sometimes", folds)


# --- the whole algorithm on bandits with a known gradient -------------------------------------------------


class GaussianBandit(gym.Env):
    """One step: reward Q(a) = −(a − 2)², observation 0."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-10.0, 10.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(-((action[0] - 2.0) ** 2)), True, False, {}


Q_TABLE = th.tensor([-5.0, 0.0, 5.0, 1.0])


class FiniteBandit(gym.Env):
    """One step: reward Q(a) from Q_TABLE for Discrete(4), MultiDiscrete([2, 2]) or MultiBinary(2) actions."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, action_space: spaces.Space):
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        index = int(action) if isinstance(self.action_space, spaces.Discrete) else 2 * int(action[0]) + int(action[1])
        return np.zeros(1, np.float32), float(Q_TABLE[index]), True, False, {}


class TrueGaussianQ(th.nn.Module):
    def forward(self, obs, actions):
        return (-((actions - 2.0) ** 2).sum(dim=1, keepdim=True),)


class TrueFiniteQ(th.nn.Module):
    def forward(self, obs):
        return (Q_TABLE.to(obs.device).expand(len(obs), 4),)


def exact_gradient(model) -> th.Tensor:
    """∇_θ J of the bandit in closed form, over the policy parameters gradient_variance uses."""
    params = [param for param in model.policy.parameters() if param.requires_grad]
    distribution = model.policy.get_distribution(th.zeros(1, 1, device=model.device))
    if isinstance(model.action_space, spaces.Box):  # E[−(a − 2)²] = −(μ − 2)² − σ²
        normal = distribution.distribution
        objective = (-((normal.mean - 2.0) ** 2) - normal.variance).sum()
    else:
        joint_probs = joint_action_probs(distribution, [4] if isinstance(model.action_space, spaces.Discrete) else [2, 2])
        objective = (joint_probs * Q_TABLE.to(model.device)).sum()
    grads = th.autograd.grad(objective, params, allow_unused=True)
    return flatten_gradients(grads, params).double().cpu()  # as gradient_variance returns its mean


def assert_unbiased(stats: dict, exact: th.Tensor, n_minibatches: int) -> None:
    """
    Over K minibatches, E‖ḡ − ∇J‖² = variance / K for an unbiased estimator, and a bias adds ‖bias‖² (‖∇J‖² is of
    order 1–16 here, against variance / K below 0.1). The gradient lives in a few dimensions, so
    ‖ḡ − ∇J‖² / (variance / K) is about χ²_d / d: above 9 less than once in 10^4 runs.
    """
    error = (stats["mean"] - exact).pow(2).sum().item()
    assert error < 9 * stats["variance"] / n_minibatches + 1e-8, (error, stats["variance"])


BANDITS = [
    (lambda: GaussianBandit(), "taylor", TrueGaussianQ),
    (lambda: GaussianBandit(), "reparameterization", TrueGaussianQ),
    (lambda: FiniteBandit(spaces.Discrete(4)), "expected", TrueFiniteQ),
    (lambda: FiniteBandit(spaces.MultiDiscrete([2, 2])), "expected", TrueFiniteQ),
    (lambda: FiniteBandit(spaces.MultiBinary(2)), "expected", TrueFiniteQ),
]


@pytest.mark.parametrize(
    "eta, centered_cv", [("ones", True), ("ones", False), ("adaptive", True), ("adaptive", False), ("min_variance", False)]
)
@pytest.mark.parametrize("make_env, control_variate, q_net", BANDITS)
def test_control_variate_with_the_true_q_is_unbiased_and_cuts_variance(make_env, control_variate, q_net, eta, centered_cv):
    """
    The critic is the true Q: centred, Ā is its action-dependent part; uncentred, with qf_target="returns" (Q_w
    tracks Q^π), Ā also keeps its state part minus V(s), 0 here but for the Taylor term's curvature.
    """
    n_minibatches = 64
    model = CVPG(
        "MlpPolicy",
        make_vec_env(make_env, n_envs=2, seed=0),
        n_steps=2048,
        control_variate=control_variate,
        eta=eta,
        centered_cv=centered_cv,
                qf_target="advantages" if centered_cv else "returns",
        seed=0,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), log_std_init=math.log(0.3)) if control_variate != "expected" else
        dict(net_arch=dict(pi=[], vf=[])),
    )
    model.q_critic.q_net = q_net()
    with th.no_grad():  # the value baseline is exact too: V = E_π[Q] (−(μ − 2)² − σ² = −4.09, or 1/4 Σ Q_TABLE)
        model.policy.value_net.bias.fill_(-4.0 - 0.09 if control_variate != "expected" else Q_TABLE.mean().item())
    collect(model)
    with_cv = gradient_variance(model, n_minibatches=n_minibatches)
    plain = gradient_variance(model, n_minibatches=n_minibatches, control_variate=False)
    exact = exact_gradient(model)
    assert exact.norm() > 0.1
    for stats in (with_cv, plain):
        assert_unbiased(stats, exact, n_minibatches)
    # with the true Q as critic the control variate leaves (almost) only the analytic term's noise; η* ≈ 1 finds it
    assert with_cv["variance"] * 5 <= plain["variance"], (with_cv["variance"], plain["variance"])
    if eta != "ones":  # with the true Q, the variance left is the analytic term's noise, and both rules find η ≈ 1
        assert abs(model.logger.name_to_value["train/eta_mean"] - 1) < 0.2


class WrongValueGaussianQ(th.nn.Module):
    """Q_w fitted onto Â where V is off by WRONG_VALUE: it predicts Â = Q(a) − V(s) exactly."""

    def forward(self, obs, actions):
        return (-((actions - 2.0) ** 2).sum(dim=1, keepdim=True) - (-4.09 + WRONG_VALUE),)


WRONG_VALUE = 3.0


@pytest.mark.parametrize("centered_cv", [True, False])
def test_state_part_corrects_a_wrong_value_baseline_without_bias(centered_cv):
    """
    V is off by 3 at the bandit's one state. A critic that predicts Â (as qf_target="advantages" fits it) keeps
    its state part by default, which removes V's error from the estimator: the variance falls far below the
    centred control variate's, which only removes the action-dependent part; both stay unbiased.
    """
    n_minibatches = 64
    model = CVPG("MlpPolicy", make_vec_env(GaussianBandit, n_envs=2, seed=0), n_steps=2048, centered_cv=centered_cv, seed=0,
                 qf_target="advantages", policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), log_std_init=math.log(0.3)))
    model.q_critic.q_net = WrongValueGaussianQ()
    with th.no_grad():
        model.policy.value_net.bias.fill_(-4.09 + WRONG_VALUE)
    collect(model)
    with_cv = gradient_variance(model, n_minibatches=n_minibatches)
    plain = gradient_variance(model, n_minibatches=n_minibatches, control_variate=False)
    exact = exact_gradient(model)
    for stats in (with_cv, plain):
        assert_unbiased(stats, exact, n_minibatches)
    if centered_cv:  # the Taylor term removes the linear part, V's error stays: about 9 / (9 + 1.44) of the variance
        assert 0.5 * plain["variance"] < with_cv["variance"] < plain["variance"]
    else:  # nothing is left but the Taylor term's curvature
        assert with_cv["variance"] * 20 < plain["variance"]


@pytest.mark.parametrize("baseline", ["mean", "none"])
def test_state_part_subtracts_the_reward_to_go_baseline(baseline):
    """
    With reward-to-go advantages and a critic that tracks Q^π (qf_target="returns", here the true Q), the state
    part is Q_w(s, m(s)) minus what Â subtracted: the batch mean ("mean") or nothing ("none"). Ā then predicts Â
    up to the Taylor term's curvature, and the control variate cuts the variance; a constant left in Ā (the
    batch mean, −4.09 here) would leave −η × that constant in Â − ηĀ and most of the variance with it.
    """
    n_minibatches = 64
    model = CVPG("MlpPolicy", make_vec_env(GaussianBandit, n_envs=2, seed=0), n_steps=2048, baseline=baseline, qf_target="returns",
                 seed=0, policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), log_std_init=math.log(0.3)))
    model.q_critic.q_net = TrueGaussianQ()
    collect(model)
    buffer = model.rollout_buffer
    corrected = flat_array(buffer, "advantages") - buffer.eta * buffer.control_variate
    assert abs(corrected.mean()) < 0.5  # Â − ηĀ: the curvature's −σ² = −0.09 is left, not a constant ≈ 4
    with_cv = gradient_variance(model, n_minibatches=n_minibatches)
    plain = gradient_variance(model, n_minibatches=n_minibatches, control_variate=False)
    exact = exact_gradient(model)
    for stats in (with_cv, plain):
        assert_unbiased(stats, exact, n_minibatches)
    assert with_cv["variance"] * 5 <= plain["variance"], (with_cv["variance"], plain["variance"])


@pytest.mark.parametrize(
    "qf_target, qf_rollouts, eta, qf_optimizer",
    [("advantages", 1, "adaptive", "adam"), ("returns", 1, "adaptive", "adam"), ("td", 1, "adaptive", "adam"),
     ("advantages", 4, "adaptive", "adam"), ("returns", 1, "min_variance", "adam"), ("returns", 1, "adaptive", "lbfgs"),
     ("returns", 4, "min_variance", "lbfgs")],
)
def test_learned_critic_gives_an_unbiased_estimator(qf_target, qf_rollouts, eta, qf_optimizer):
    """
    The critic is fitted after each update on what came before, never on the rollout it builds Ā for: with the
    policy held fixed (learning rate 0), each rollout's estimate is unbiased given the past, so the mean over
    rollouts is within 5 standard errors of the exact gradient (per coordinate), while the critic keeps changing.
    """
    model = CVPG("MlpPolicy", make_vec_env(GaussianBandit, n_envs=2, seed=0), n_steps=128, n_epochs=1, batch_size=256,
                 learning_rate=0.0, seed=0, qf_target=qf_target, qf_rollouts=qf_rollouts, eta=eta, qf_optimizer=qf_optimizer,
                 qf_gradient_steps=10, qf_batch_size=128, qf_net_arch=[16],
                 policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), log_std_init=math.log(0.5)))
    estimates, critics = [], []
    original_prepare = model.prepare_advantages

    def prepare_advantages():  # after Ā and η are prepared: this rollout's estimate and the critic that made it
        original_prepare()
        estimates.append(gradient_variance(model, n_minibatches=4)["mean"])
        critics.append(th.cat([p.detach().flatten() for p in model.q_critic.state_dict().values()]))

    model.prepare_advantages = prepare_advantages
    model.learn(40 * 256)
    estimates_ = th.stack(estimates[8:])  # once the critic has seen a few rollouts
    policy_coordinates = estimates_.std(dim=0) > 0  # the value network's are 0 in every estimate
    assert policy_coordinates.sum() == 2  # μ and log σ
    error = (estimates_.mean(dim=0) - exact_gradient(model))[policy_coordinates]
    z = error / (estimates_.std(dim=0)[policy_coordinates] / math.sqrt(len(estimates_)))
    assert z.abs().max() < 5, z
    assert not th.equal(critics[10], critics[-1]), "the critic is fitted along the way"
    assert model.logger.name_to_value["train/cv_corr"] > 0.5, "the fitted critic tracks the bandit's Q"


def test_critic_that_builds_a_rollouts_control_variate_never_saw_it():
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, **TINY)
    seen = []
    original_prepare, original_fit = model.prepare_control_variate, model.q_critic.fit_rollout

    def prepare():
        seen.append(("prepare", th.cat([p.detach().flatten().clone() for p in model.q_critic.parameters()])))
        original_prepare()

    def fit(*args):
        seen.append(("fit", None))
        return original_fit(*args)

    model.prepare_control_variate, model.q_critic.fit_rollout = prepare, fit
    model.learn(96)
    assert [event for event, _ in seen] == ["prepare", "fit"] * 3, "per rollout: Ā first, the critic's fit after the update"


def test_critic_regresses_on_the_last_qf_rollouts_rollouts():
    """qf_rollouts=3: each fit regresses on this rollout's samples and those of the two before it, nothing older."""
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, qf_rollouts=3, **TINY)
    given, fitted = [], []
    original_fit_rollout = model.q_critic.fit_rollout

    def fit_rollout(observations, actions, targets):
        given.append(targets.clone())
        original_randperm = th.randperm
        th.randperm = lambda n, **kwargs: fitted.append(n) or original_randperm(n, **kwargs)
        try:
            return original_fit_rollout(observations, actions, targets)
        finally:
            th.randperm = original_randperm

    model.q_critic.fit_rollout = fit_rollout
    model.learn(5 * 32)
    assert len(given) == 5 and [len(t) for t in given] == [32] * 5
    assert fitted[0] == 32 and set(fitted) == {32, 64, 96} and fitted[-1] == 96  # 1, 2, then 3 rollouts of samples
    kept = [targets for _, _, targets in model.q_critic.recent_rollouts]
    assert len(kept) == 3 and all(th.equal(a, b) for a, b in zip(kept, given[-3:], strict=True))


# --- the pieces --------------------------------------------------------------------------------------


def test_joint_actions_of_finite_spaces():
    actions = th.tensor([[0, 0], [0, 2], [1, 1], [1, 2]])
    assert joint_action_index(actions, [2, 3]).tolist() == [0, 2, 4, 5]  # as np.ravel_multi_index
    assert joint_action_index(th.tensor([3.0, 1.0]), [4]).tolist() == [3, 1]
    model = CVPG("MlpPolicy", IdentityEnvMultiDiscrete(3), seed=0, **TINY)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(5)]), dtype=th.float32, device=model.device)
    distribution = model.policy.get_distribution(obs)
    probs = joint_action_probs(distribution, [3, 3])
    assert probs.shape == (5, 9) and th.allclose(probs.sum(dim=1), th.ones(5, device=model.device))
    choices = th.arange(3, device=model.device)
    every = th.cartesian_prod(choices, choices)  # all joint actions, row-major as the index
    for state in range(5):
        log_prob = sum(component.logits[state].log_softmax(0)[every[:, i]] for i, component in enumerate(distribution.distribution))
        assert th.allclose(probs[state], log_prob.exp(), atol=1e-6)


def test_centered_control_variate():
    assert th.equal(centered_control_variate(th.tensor([3.0, 1.0]), th.tensor([2.0, 2.0])), th.tensor([1.0, -1.0]))


def test_eta_and_correlation_are_logged_and_applied():
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, eta="aggressive", **TINY).learn(96)
    logs = model.logger.name_to_value
    assert logs["train/eta_mean"] in (-1.0, 0.0, 1.0)
    assert -1.0 <= logs["train/cv_corr"] <= 1.0 and np.isfinite(logs["train/qf_loss"])
    buffer = model.rollout_buffer
    # the buffer keeps Â, and Ā and η travel as named fields of its samples
    advantages = flat_array(buffer, "advantages").copy()
    sample = next(buffer.get(32))
    assert isinstance(sample, CVPGRolloutBufferSamples)
    assert set(sample.eta.tolist()) <= {-1.0, 1.0} and sample.analytic_term_constants.shape == (32, 1)
    assert sample.control_variate.abs().sum() > 0
    np.testing.assert_array_equal(sample.advantages.cpu().numpy(), advantages[buffer.batch_inds])


def test_taylor_term_is_autograd_of_q_at_the_executed_mean():
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, control_variate="taylor", **TINY)
    model.learn(64)  # the critic has been fitted once
    collect(model)
    data = next(model.rollout_buffer.get(32))
    params = [param for param in model.policy.parameters() if param.requires_grad]
    distribution = model.policy.get_distribution(data.observations)
    ours = th.autograd.grad(model.analytic_term(data.observations, data.analytic_term_constants, distribution).mean(), params, allow_unused=True)
    # reference: ∇_θ mean_s Q_w(s, m_θ(s)) with Q_w fixed, m_θ(s) = E_π[clip(a)]
    normal = model.policy.get_distribution(data.observations).distribution
    low, high = th.tensor([-2.0], device=model.device), th.tensor([2.0], device=model.device)
    executed_mean = clipped_gaussian_mean(normal.mean, normal.stddev, low, high)
    reference = th.autograd.grad(model.q_critic(data.observations, executed_mean).mean(), params, allow_unused=True)
    flat = [flatten_gradients(gs, params) for gs in (ours, reference)]
    assert flat[1].norm() > 1e-4
    assert th.allclose(flat[0], flat[1], atol=1e-6, rtol=1e-5)


def test_clipped_gaussian_mean():
    """E[clip(a)] in closed form against 10^6 samples (5 standard errors); no bounds: the mean itself."""
    mean, std = th.tensor([[0.5, -1.5, 3.0, 0.2]]), th.tensor([[1.0, 2.0, 0.5, 0.7]])
    low, high = th.tensor([-1.0, -2.0, -math.inf, -math.inf]), th.tensor([1.0, 2.0, 2.0, math.inf])
    generator = th.Generator().manual_seed(0)
    samples = th.clamp(mean + std * th.randn(1_000_000, 4, generator=generator), low, high)
    standard_error = samples.std(dim=0) / 1000
    closed_form = clipped_gaussian_mean(mean, std, low, high)[0]
    assert ((closed_form - samples.mean(dim=0)).abs() < 5 * standard_error).all(), (closed_form, samples.mean(dim=0))
    assert closed_form[3] == 0.2
    # without clipping in reach it is μ, and the Taylor control variate is Q-Prop's
    assert th.allclose(clipped_gaussian_mean(mean, std * 1e-3, low * 100, high * 100), mean, atol=1e-6)
    # its hand-written derivatives in μ and σ against finite differences (float64)
    inputs = (mean.double().requires_grad_(True), std.double().requires_grad_(True), low.double(), high.double())
    assert th.autograd.gradcheck(clipped_gaussian_mean, inputs)


def test_critic_sees_the_executed_action():
    """Q(s, a) = Q_w(s, clip(a)): beyond Pendulum's ±2 the value is the boundary's and its action gradient is 0."""
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, control_variate="taylor", **TINY)
    device = model.device
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(3, 3)), dtype=th.float32, device=device)
    outside = th.tensor([[5.0], [-2.5], [100.0]], device=device, requires_grad=True)
    q_outside = model.q_critic(obs, outside)
    assert th.equal(q_outside, model.q_critic(obs, th.tensor([[2.0], [-2.0], [2.0]], device=device)))
    assert th.equal(th.autograd.grad(q_outside.sum(), outside)[0], th.zeros(3, 1, device=device))
    inside = th.full((3, 1), 0.5, device=device, requires_grad=True)
    assert th.autograd.grad(model.q_critic(obs, inside).sum(), inside)[0].abs().sum() > 0


@pytest.mark.parametrize("control_variate", ["taylor", "reparameterization"])
def test_analytic_term_is_clipped_with_the_surrogate(control_variate):
    """
    With PPO's clip, a sample's analytic term counts only while its ratio is within [1 − ε, 1 + ε]: the term CVPG's
    loss adds, −(1/σ) mean[η c(r) S], on a rollout's minibatch, with the ratio r given as a constant.
    """
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, control_variate=control_variate, eta="ones", use_sde=False, **TINY)
    model.learn(32)
    collect(model)
    data = next(model.rollout_buffer.get(32))
    params = [param for param in model.policy.parameters() if param.requires_grad]
    scale = 1.0 / ((data.advantages - data.eta * data.control_variate).std() + 1e-8)  # the normalized Â − ηĀ's

    def gradient(ratio: th.Tensor, clip_range: float | None) -> th.Tensor:
        th.manual_seed(0)  # the same reparameterization noise in every call
        distribution = model.policy.get_distribution(data.observations)
        analytic = model.analytic_term(data.observations, data.analytic_term_constants, distribution)
        loss = -scale * weighted_analytic_term(data.eta, analytic, ratio, clip_range)
        return flatten_gradients(th.autograd.grad(loss, params, allow_unused=True), params)

    inside, outside = th.ones(32, device=model.device), th.full((32,), 1.5, device=model.device)
    half = th.cat([th.ones(16), th.full((16,), 0.5)]).to(model.device)
    assert gradient(inside, 0.2).norm() > 1e-6
    assert th.equal(gradient(outside, 0.2), th.zeros_like(gradient(inside, 0.2)))
    assert th.allclose(gradient(outside, None), gradient(inside, 0.2), atol=1e-7)  # no clipping: every sample counts
    # half the samples inside: the gradient of those samples' terms alone
    th.manual_seed(0)
    distribution = model.policy.get_distribution(data.observations)
    terms = model.analytic_term(data.observations, data.analytic_term_constants, distribution)
    reference = th.autograd.grad(-scale * (data.eta * terms * (half == 1)).mean(), params, allow_unused=True)
    assert th.allclose(gradient(half, 0.2), flatten_gradients(reference, params), atol=1e-7)


def test_reward_to_go_baselines():
    advantages = {}
    for baseline in ("none", "mean", "value"):
        model = CVPG("MlpPolicy", "CartPole-v1", seed=0, baseline=baseline, control_variate="none", n_steps=64, batch_size=64,
                     n_epochs=1, policy_kwargs=dict(net_arch=[16]))
        model.learn(64)
        advantages[baseline] = model.rollout_buffer.advantages.reshape(-1).copy()
        if baseline == "none":
            buffer, (last_values, dones) = model.rollout_buffer, model._rollout_bootstrap
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


def test_default_critic_steps_and_architecture():
    model = CVPG("MlpPolicy", "Pendulum-v1", n_steps=256, qf_batch_size=64, policy_kwargs=dict(net_arch=dict(pi=[8], vf=[24, 12])))
    assert model.q_critic.gradient_steps == 100 * 256 // 64  # 100 passes over the rollout
    assert [m.out_features for m in model.q_critic.q_net.qf0 if isinstance(m, th.nn.Linear)] == [24, 12, 1]  # V's layers
    assert CVPG("MlpPolicy", "Pendulum-v1", qf_target="td").q_critic.gradient_steps == 100


@pytest.mark.parametrize("hidden", [[], [7], [9, 5]])
def test_hand_written_critic_gradient_is_autograds(hidden):
    th.manual_seed(0)
    sizes = [4, *hidden, 1]
    modules = []
    for n_in, n_out in itertools.pairwise(sizes):
        modules += [th.nn.Linear(n_in, n_out), th.nn.ReLU()]
    network = th.nn.Sequential(*modules[:-1])
    inputs, targets = th.randn(33, 4), th.randn(33)
    loss = th.nn.functional.mse_loss(network(inputs).flatten(), targets)
    expected = th.autograd.grad(loss, list(network.parameters()))
    layers = [m for m in network if isinstance(m, th.nn.Linear)]
    assert th.allclose(mlp_mse_gradients(layers, inputs, targets), loss.detach())
    by_hand = [g for layer in layers for g in (layer.weight.grad, layer.bias.grad)]
    assert all(th.allclose(a, b, atol=1e-6) for a, b in zip(by_hand, expected))


def test_critic_fit_by_hand_takes_autograds_steps():
    """The MLP critic's hand-written fit and autograd's take the same minibatches and steps (100 samples, batch 16)."""
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, **TINY)
    by_hand, by_autograd = model.q_critic, copy.deepcopy(model.q_critic)
    assert by_hand.hand_written_layers() is not None
    by_autograd.hand_written_layers = lambda: None  # type: ignore[method-assign]
    by_hand.gradient_steps = by_autograd.gradient_steps = 40  # passes that end mid-batch
    obs, actions, targets = th.randn(100, 3), 3 * th.randn(100, 1), th.randn(100)
    initial = [p.clone() for p in by_hand.parameters()]
    losses = []
    for critic in (by_hand, by_autograd):
        th.manual_seed(1)
        critic.requires_grad_(True)
        losses.append(critic.fit_rollout(obs, actions, targets))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert all(th.allclose(a, b, atol=1e-5) for a, b in zip(by_hand.parameters(), by_autograd.parameters()))
    assert not any(th.equal(a, b) for a, b in zip(by_hand.parameters(), initial)), "every weight was fitted"
    assert all(group["fused"] for group in by_hand.optimizer.param_groups)


def test_lbfgs_critic_fit_by_hand_and_by_autograd_agree_and_fit():
    """
    qf_optimizer="lbfgs": the hand-written gradient and autograd's (in chunks of 30 of the 100 samples) take the same
    10 iterations; on targets the critic can represent (another critic's outputs), 50 more leave under 5% of their
    variance unexplained, and the returned loss is the mean squared error after the fit.
    """
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, qf_optimizer="lbfgs", **{**TINY, "qf_net_arch": [16, 16]})
    assert CVPG("MlpPolicy", "Pendulum-v1", qf_optimizer="lbfgs").q_critic.gradient_steps == 50  # the default
    by_hand, by_autograd = model.q_critic, copy.deepcopy(model.q_critic)
    by_autograd.hand_written_layers = lambda: None  # type: ignore[method-assign]
    by_hand.gradient_steps = by_autograd.gradient_steps = 10
    th.manual_seed(1)
    obs, actions = th.randn(100, 3), th.randn(100, 1)
    teacher = CVPG("MlpPolicy", "Pendulum-v1", seed=1, **{**TINY, "qf_net_arch": [16, 16]}).q_critic
    with th.no_grad():
        targets = teacher(obs, actions)
    losses = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(q_critic_module, "LBFGS_CHUNK", 30)
        for critic in (by_hand, by_autograd):
            critic.requires_grad_(True)
            losses.append(critic.fit_rollout(obs, actions, targets))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert all(th.allclose(a, b, atol=1e-5) for a, b in zip(by_hand.parameters(), by_autograd.parameters()))
    by_hand.gradient_steps = 50
    loss = by_hand.fit_rollout(obs, actions, targets)
    with th.no_grad():
        error = th.nn.functional.mse_loss(by_hand(obs, actions), targets).item()
    assert loss == pytest.approx(error, rel=1e-5)
    assert error < 0.05 * targets.var(unbiased=False).item(), (error, targets.var().item())


def test_lbfgs_fits_a_discrete_critic():
    """The finite-action critic (autograd's gradient): L-BFGS lowers the squared error on the fit's samples."""
    model = CVPG("MlpPolicy", "CartPole-v1", seed=0, qf_optimizer="lbfgs", **{**TINY, "qf_gradient_steps": 20})
    critic = model.q_critic
    obs, actions, targets = th.randn(64, 4), th.randint(0, 2, (64,)), th.randn(64)
    with th.no_grad():
        before = th.nn.functional.mse_loss(critic.q_taken(obs, actions), targets).item()
    critic.requires_grad_(True)
    after = critic.fit_rollout(obs, actions, targets)
    assert after < 0.8 * before, (before, after)


# --- the defects --------------------------------------------------------------------------------------


def test_replay_buffer_stores_the_envs_original_observations_and_rewards():
    """With VecNormalize the TD critic's replay keeps the originals (on Pendulum cos² + sin² = 1) and normalises when sampled."""
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.9)
    model = CVPG("MlpPolicy", env, seed=0, **{**TINY, "qf_target": "td"}).learn(128)
    buffer = model.q_critic.replay_buffer
    stored = buffer.observations[: buffer.size()].reshape(-1, 3)
    np.testing.assert_allclose(stored[:, 0] ** 2 + stored[:, 1] ** 2, 1.0, atol=1e-5)
    next_stored = buffer.next_observations[: buffer.size()].reshape(-1, 3)
    np.testing.assert_allclose(next_stored[:, 0] ** 2 + next_stored[:, 1] ** 2, 1.0, atol=1e-5)
    rewards = buffer.rewards[: buffer.size()]
    assert rewards.max() <= 0 and rewards.min() >= -16.3, "Pendulum's own rewards, in [−16.27, 0]"
    # consecutive steps chain: the next observation of step t is the observation of step t + 1
    np.testing.assert_allclose(buffer.next_observations[:10], buffer.observations[1:11], atol=1e-6)
    # sampled with the env, they are normalised with its current statistics
    th.manual_seed(0)
    np.random.seed(0)
    normalised = buffer.sample(64, env=env)
    np.random.seed(0)
    raw = buffer.sample(64)
    normalised_obs, raw_obs = normalised.observations.cpu().numpy(), raw.observations.cpu().numpy()
    np.testing.assert_allclose(normalised_obs, env.normalize_obs(raw_obs), atol=1e-5)
    np.testing.assert_allclose(normalised.rewards.cpu().numpy(), env.normalize_reward(raw.rewards.cpu().numpy()), atol=1e-5)


def test_float64_box_actions():
    env = make_vec_env(lambda: IdentityEnvBox(), n_envs=2, seed=0)
    float64_env = make_vec_env(lambda: gym.wrappers.TransformAction(
        IdentityEnvBox(), lambda a: a.astype(np.float32), spaces.Box(-1, 1, (1,), np.float64)), n_envs=2, seed=0)
    for venv in (env, float64_env):
        model = CVPG("MlpPolicy", venv, seed=0, log_grad_var=True, **TINY).learn(128)
        assert np.isfinite(model.logger.name_to_value["train/cv_corr"])
    assert float64_env.action_space.dtype == np.float64


@pytest.mark.parametrize("make_env", [lambda: IdentityEnvMultiDiscrete(3), lambda: IdentityEnvMultiBinary(3)], ids=["MultiDiscrete", "MultiBinary"])
def test_identity_env_is_learned_on_multi_actions(make_env):
    env = make_vec_env(make_env, n_envs=4, seed=0)
    # a learning check at one seed: on the CPU, where the seed fixes the outcome (CUDA draws other actions)
    model = CVPG("MlpPolicy", env, seed=0, n_steps=64, batch_size=64, n_epochs=4, learning_rate=3e-3, qf_net_arch=[32],
                 policy_kwargs=dict(net_arch=[32]), device="cpu")
    assert model.control_variate == "expected"
    model.learn(10_000)
    mean_reward, _ = evaluate_policy(model, make_vec_env(make_env, n_envs=1, seed=100), n_eval_episodes=10)
    assert mean_reward >= 90, f"mean reward {mean_reward} on the identity task"


def test_gradient_variance_changes_nothing():
    model = CVPG("MlpPolicy", VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0)), seed=0, **{**TINY, "qf_target": "td"})
    with pytest.raises(ValueError, match="has none"):
        gradient_variance(model)
    assert model.num_timesteps == 0 and model.q_critic.replay_buffer.size() == 0 and not model.rollout_buffer.full
    model.learn(64)
    model.policy.set_training_mode(False)

    def state():
        buffer = model.rollout_buffer
        return dict(
            arrays={k: v.copy() for k, v in vars(buffer).items() if isinstance(v, np.ndarray)},
            flags=(buffer.generator_ready, buffer.pos, buffer.full, None if buffer.batch_inds is None else buffer.batch_inds.copy()),
            replay=(model.q_critic.replay_buffer.pos, model.q_critic.replay_buffer.observations.copy()),
            policy={k: v.clone() for k, v in model.policy.state_dict().items()},
            critic={k: v.clone() for k, v in model.q_critic.state_dict().items()},
            optimizers=(repr(model.policy.optimizer.state_dict()), repr(model.q_critic.optimizer.state_dict())),
            counters=(model.num_timesteps, model._n_updates, model.policy.training, model._last_obs.copy()),
            random=(np.random.get_state()[1].copy(), th.random.get_rng_state().clone(),
                    th.cuda.get_rng_state_all() if th.cuda.is_available() else None),
        )

    def equal(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        if isinstance(a, (tuple, list)):
            return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
        if isinstance(a, np.ndarray):
            return np.array_equal(a, b)
        if isinstance(a, th.Tensor):
            return th.equal(a, b)
        return a == b

    before = state()
    for control_variate in (True, False):
        assert gradient_variance(model, n_minibatches=4, control_variate=control_variate)["variance"] > 0
    assert equal(before, state())


def test_save_load_keeps_the_critic(tmp_path):
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, **TINY).learn(64)
    model.save(tmp_path / "cvpg")
    loaded = CVPG.load(tmp_path / "cvpg", env=gym.make("Pendulum-v1"))
    saved, restored = model.q_critic.state_dict(), loaded.q_critic.state_dict()
    assert saved.keys() == restored.keys() and all(th.equal(saved[key], restored[key]) for key in saved)
    assert any(value.abs().sum() > 0 for value in restored.values()), "a fitted critic"
    assert loaded.control_variate == "taylor" and loaded.qf_target == "returns" and loaded.eta == "adaptive"
    assert loaded.qf_optimizer == loaded.q_critic.optimizer_name == "adam"
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128
    CVPG("MlpPolicy", "Pendulum-v1", seed=0, qf_optimizer="lbfgs", **TINY).save(tmp_path / "lbfgs")
    assert CVPG.load(tmp_path / "lbfgs").q_critic.optimizer_name == "lbfgs"


def test_older_cvpg_parameters_warm_start_the_policy():
    """Files of CVPG before its QCritic stored q_net / q_net_target / q_optimizer: the policy loads, the critic starts fresh."""
    model = CVPG("MlpPolicy", "Pendulum-v1", seed=0, **TINY)
    other = CVPG("MlpPolicy", "Pendulum-v1", seed=1, **TINY)
    params = other.get_parameters()
    older = {"policy": params["policy"], "policy.optimizer": params["policy.optimizer"], "q_net": {}, "q_net_target": {},
             "q_optimizer": {}}
    critic = {k: v.clone() for k, v in model.q_critic.state_dict().items()}
    with pytest.warns(UserWarning, match="older CVPG"):
        model.set_parameters(older)
    assert all(th.equal(a, b) for a, b in zip(model.policy.state_dict().values(), other.policy.state_dict().values()))
    assert all(th.equal(v, model.q_critic.state_dict()[k]) for k, v in critic.items())


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("qf_target", ["advantages", "td"])
def test_cuda(env_id, qf_target):
    model = CVPG("MlpPolicy", env_id, seed=0, device="cuda", log_grad_var=True, **{**TINY, "qf_target": qf_target})
    model.learn(96)
    assert all(p.device.type == "cuda" for p in model.q_critic.parameters())
    assert np.isfinite(model.logger.name_to_value["train/qf_loss"])
    # measuring the variance leaves CUDA's random stream as it was
    cuda_state = th.cuda.get_rng_state_all()
    gradient_variance(model)
    assert all(th.equal(a, b) for a, b in zip(cuda_state, th.cuda.get_rng_state_all()))


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
        (IdentityEnvBox(), dict(qf_target="mc"), "qf_target"),
        (IdentityEnvBox(), dict(qf_optimizer="sgd"), "qf_optimizer"),
        (IdentityEnvBox(), dict(qf_optimizer="lbfgs", qf_target="td"), "qf_optimizer.*td"),
        (IdentityEnvBox(), dict(qf_batch_size=0), "qf_batch_size"),
        (IdentityEnvBox(), dict(qf_gradient_steps=-1), "qf_gradient_steps"),
        (IdentityEnvBox(), dict(qf_rollouts=0), "qf_rollouts"),
        (IdentityEnvBox(), dict(qf_tau=0.0), "qf_tau"),
        (IdentityEnvBox(), dict(surrogate="vanilla", n_epochs=5), "n_epochs"),
        (IdentityEnvMultiDiscrete(40), dict(control_variate="expected"), "at most 1024"),
        (IdentityEnvBox(), dict(rollout_buffer_class=type("MyBuffer", (RolloutBuffer,), {})), "rollout_buffer_class"),
    ],
)
def test_bad_input(env, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CVPG("MlpPolicy", env, **kwargs)


def test_squashed_policy_runs_without_a_control_variate():
    with pytest.warns(UserWarning, match="squash"):
        model = CVPG("MlpPolicy", "Pendulum-v1", use_sde=True, policy_kwargs=dict(squash_output=True), seed=0, n_steps=64)
    assert model.control_variate == "none"
    model.learn(64)


def test_large_joint_action_set_runs_without_a_control_variate():
    with pytest.warns(UserWarning, match="joint actions"):
        model = CVPG("MlpPolicy", IdentityEnvMultiDiscrete(40), seed=0, **TINY)
    assert model.control_variate == "none" and model.q_critic is None
    model.learn(64)


# --- η against the variance of the whole gradient ------------------------------------------------------------


def test_min_variance_eta_cuts_the_variance_eta_star_leaves_when_the_analytic_term_varies():
    """
    A toy with an exact answer. States s ~ N(0, 1), policy a = θs + ε (ε ~ N(0, 1), one parameter θ), Â = k ε + ν
    with k = 1 and noise ν ~ N(0, 1/4); the critic's slope is wrong where |s| is large, k_w(s) = 1 + s², so
    Ā = k_w ε and the analytic term's gradient ∇S = k_w s varies with s. Per sample, u = Â ε s and
    v = k_w s (ε² − 1), so Var(u − ηv) = 3.25 − 16η + 44η² (moments of normals): minimised at η = 2/11, where
    it is 1.795, while Q-Prop's η* = Cov(Â, Ā) / Var(Ā) = E[k k_w] / E[k_w²] = 1/3 leaves 2.806. The cross-fitted
    estimate is within 5 of its standard errors (delta method, from the sample) of 2/11, and cuts the variance
    below η*'s.
    """
    generator = th.Generator().manual_seed(0)
    n = 40_000
    s, eps, nu = (th.randn(n, generator=generator, dtype=th.float64) for _ in range(3))
    k_w = 1 + s**2
    advantages, control_variate = eps + 0.5 * nu, k_w * eps
    score = (eps * s)[:, None]  # ∇_θ log π(a|s)
    analytic = (k_w * s)[:, None]  # ∇_θ S = ∇_θ k_w(s) θs
    u, v = advantages[:, None] * score, control_variate[:, None] * score - analytic
    folds = rollout_folds(n, 1)
    moments = GradientMoments.of_samples(score, analytic, advantages, control_variate, folds, 2)
    eta = min_variance_eta(moments)
    eta_star = qprop_eta(advantages, control_variate, "adaptive", folds)

    def variance(eta: float) -> float:
        return 3.25 - 16 * eta + 44 * eta**2

    for fold in (0, 1):
        others = folds != fold  # fold f's η comes from the other fold: its standard error from those samples
        u_, v_ = u[others, 0] - u[others, 0].mean(), v[others, 0] - v[others, 0].mean()
        influence = (u_ - eta[fold] * v_) * v_ / v_.pow(2).mean()
        standard_error = influence.std() / math.sqrt(others.sum())
        assert abs(eta[fold] - 2 / 11) < 5 * standard_error, (eta[fold], standard_error)
        assert standard_error < 0.05  # the check is tight enough to tell 2/11 from 1/3
        assert abs(eta_star[folds == fold][0] - 1 / 3) < 0.05
        assert variance(eta[fold].item()) < variance(eta_star[folds == fold][0].item()) - 0.5


def test_min_variance_eta_moments_add_up():
    """The moments of u = Â ∇log π and v = Ā ∇log π − ∇S, from the per-sample gradients, are the sums over u and v."""
    generator = th.Generator().manual_seed(1)
    score, analytic = th.randn(10, 3, generator=generator, dtype=th.float64), th.randn(10, 3, generator=generator, dtype=th.float64)
    advantages, control_variate = th.randn(10, generator=generator, dtype=th.float64), th.randn(10, generator=generator, dtype=th.float64)
    u, v = advantages[:, None] * score, control_variate[:, None] * score - analytic
    groups = th.tensor([0, 1, 0, 0, 1, 1, 0, 1, 1, 0])
    for group, moments in enumerate(GradientMoments.of_samples(score, analytic, advantages, control_variate, groups, 2)):
        u_, v_ = u[groups == group], v[groups == group]
        expected = (5.0, u_.sum(0), v_.sum(0), (u_ * v_).sum(), (v_ * v_).sum())
        assert all(th.allclose(th.as_tensor(value, dtype=th.float64), other) for value, other in zip(expected, moments))
    whole = GradientMoments.of_samples(score, analytic, advantages, control_variate)[0]
    parts = GradientMoments.of_samples(score, analytic, advantages, control_variate, groups, 2)
    assert all(th.allclose(a, b) for a, b in zip(whole, parts[0] + parts[1]))
    # one fold: in-sample, the least-squares coefficient of u on v (centred), over all coordinates together
    uc, vc = u - u.mean(0), v - v.mean(0)
    assert th.allclose(min_variance_eta([whole])[0], (uc * vc).sum() / vc.pow(2).sum())


@pytest.mark.parametrize("env_id, kwargs", [("Pendulum-v1", dict(use_sde=True)), ("Pendulum-v1", {}), ("CartPole-v1", {})])
def test_per_sample_gradients_follow_get_distribution(env_id, kwargs):
    """
    per_sample_gradients goes from the features to the distribution through SB3's private _get_action_dist_from_latent,
    as ActorCriticPolicy.get_distribution does: each row equals autograd's gradient of that sample alone through the
    public get_distribution, so this fails when SB3 changes the path.
    """
    model = CVPG("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=0), seed=0, **{**TINY, **kwargs})
    model.learn(64)
    collect(model)
    buffer = model.rollout_buffer
    obs = th.as_tensor(flat_observations(buffer)[:5], device=model.device)
    actions = policy_actions(th.as_tensor(flat_actions(buffer)[:5], device=model.device), model.action_space)
    constants = th.as_tensor(buffer.analytic_term_constants[:5], device=model.device)
    score, analytic = per_sample_gradients(model, obs, actions, constants)
    names = {id(p): name for name, p in model.policy.named_parameters()}
    params = [p for p in model.policy.parameters() if "value" not in names[id(p)] and p.requires_grad]
    for i in range(5):
        distribution = model.policy.get_distribution(obs[i : i + 1])
        log_prob = distribution.log_prob(actions[i : i + 1]).sum()
        term = model.analytic_term(obs[i : i + 1], constants[i : i + 1], distribution).sum()
        for value, row in ((log_prob, score[i]), (term, analytic[i])):
            expected = flatten_gradients(th.autograd.grad(value, params, allow_unused=True, retain_graph=True), params)
            assert th.allclose(row, expected, atol=1e-6), (row, expected)


@pytest.mark.parametrize("name", ["cvpg_box_v0_1", "cvpg_discrete_v0_1"])
def test_old_saved_models_load_and_train(name):
    """Files saved with the earlier defaults (η = "adaptive", the critic's 100 passes) keep their η and their critic."""
    expected = json.loads((DATA / "cvpg_v0_1.json").read_text())[name]
    model = CVPG.load(DATA / f"{name}.zip")
    assert model.eta == "adaptive" and isinstance(model.q_critic, QCritic)
    assert model.qf_optimizer == model.q_critic.optimizer_name == "adam", "saved before qf_optimizer existed: Adam's fit"
    assert all(group["fused"] for group in model.q_critic.optimizer.param_groups), "saved by Adam's default; loads into the fused one"
    obs = th.tensor(expected["obs"], device=model.device)
    with th.no_grad():
        q = model.q_critic(obs) if "actions" not in expected else model.q_critic(obs, th.tensor(expected["actions"], device=model.device))
    assert th.allclose(q, th.tensor(expected["q"], device=model.device), atol=1e-5)
    np.testing.assert_allclose(model.predict(np.array(expected["obs"], dtype=np.float32), deterministic=True)[0], expected["predict"], atol=1e-5)
    model.set_env(make_vec_env("Pendulum-v1" if name == "cvpg_box_v0_1" else "CartPole-v1", n_envs=2, seed=0))
    model.learn(64, reset_num_timesteps=False)
    assert model._n_updates > expected["n_updates"]
