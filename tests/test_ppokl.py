"""PPOKL's own tests: the adaptive rule, the KL estimators, bit-identity with SB3 PPO, bad input."""

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from sb3_pgext import PPOKL
from sb3_pgext.common import kl as kl_module
from sb3_pgext.common.kl import DistributionParams, adapt_kl_coef, analytic_kl, mean_kl_from_fixed, sampled_kl
from sb3_pgext.ppokl.ppokl import kl_penalty

N_MC = 200_000  # Monte-Carlo samples: the tolerance below is 5 standard errors of the mean


def params_of(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def assert_close_to_mean(samples: th.Tensor, exact: float) -> None:
    """``samples`` are iid with mean ``exact``: their mean is within 5 standard errors of it."""
    standard_error = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - exact) < 5 * standard_error + 1e-7, (samples.mean().item(), exact, standard_error)


# ---------------------------------------------------------------- the adaptive rule


@pytest.mark.parametrize(
    "kl, expected",
    [(0.001, 0.5), (0.01 / 1.5 - 1e-6, 0.5), (0.01 / 1.5 + 1e-6, 1.0), (0.01, 1.0), (0.015 - 1e-6, 1.0), (0.015 + 1e-6, 2.0)],
)
def test_adaptive_rule(kl, expected):
    assert adapt_kl_coef(1.0, kl, kl_target=0.01, bounds=(1e-4, 1e4)) == expected


def test_adaptive_rule_bounds():
    assert adapt_kl_coef(0.3, 1.0, kl_target=0.01, bounds=(0.1, 0.5)) == 0.5
    assert adapt_kl_coef(0.15, 0.0, kl_target=0.01, bounds=(0.1, 0.5)) == 0.1
    beta = 1.0
    for _ in range(50):
        beta = adapt_kl_coef(beta, 0.0, 0.01, (1e-3, 10.0))
    assert beta == 1e-3
    for _ in range(50):
        beta = adapt_kl_coef(beta, 1.0, 0.01, (1e-3, 10.0))
    assert beta == 10.0


def one_rollout_model(**kwargs) -> PPOKL:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    settings = dict(n_steps=32, batch_size=32, n_epochs=2, seed=0, policy_kwargs=dict(net_arch=[16]))
    return PPOKL("MlpPolicy", env, **{**settings, **kwargs})


@pytest.mark.parametrize("kl_target", [1e-12, 1e-3, 1e3])
def test_beta_follows_the_rule_on_the_logged_kl(kl_target):
    model = one_rollout_model(kl_target=kl_target).learn(64)
    logged_kl = model.logger.name_to_value["train/kl"]
    assert logged_kl > 0
    assert model.kl_coef == adapt_kl_coef(1.0, logged_kl, kl_target, (1e-4, 1e4))
    assert model.logger.name_to_value["train/kl_coef"] == model.kl_coef


def test_beta_per_rollout_halves_doubles_and_respects_bounds():
    assert one_rollout_model(kl_target=1e3).learn(64).kl_coef == 0.5  # d ≪ d_targ: halved once
    assert one_rollout_model(kl_target=1e3).learn(128).kl_coef == 0.25  # twice
    assert one_rollout_model(kl_target=1e-12).learn(64).kl_coef == 2.0  # d ≫ d_targ: doubled
    assert one_rollout_model(kl_target=1e-12, kl_coef_bounds=(0.4, 1.5)).learn(64).kl_coef == 1.5
    assert one_rollout_model(kl_target=1e3, kl_coef_bounds=(0.4, 1.5)).learn(128).kl_coef == 0.4


def test_beta_per_minibatch():
    # 64 samples, batch 16, 2 epochs: 8 gradient steps, each adapting β on its minibatch KL, measured
    # before the step. The first minibatch's KL is exactly 0 (π_θ = π_old): halved once, doubled 7 times.
    assert one_rollout_model(kl_target=1e-12, batch_size=16, kl_update="minibatch").learn(64).kl_coef == 2.0**6
    assert one_rollout_model(kl_target=1e3, batch_size=16, kl_update="minibatch").learn(64).kl_coef == 2.0**-8


def test_fixed_beta():
    model = one_rollout_model(kl_target=1e-12, adaptive_kl=False, kl_coef=0.7).learn(128)
    assert model.kl_coef == 0.7


def test_beta_is_saved_and_restored(tmp_path):
    model = one_rollout_model(kl_target=1e-12).learn(64)
    assert model.kl_coef == 2.0
    model.save(tmp_path / "ppokl.zip")
    loaded = PPOKL.load(tmp_path / "ppokl.zip", env=make_vec_env("CartPole-v1", n_envs=2, seed=1))
    assert loaded.kl_coef == 2.0 and loaded.kl_target == 1e-12
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.kl_coef == 4.0  # resumed from the adapted β, not from the initial 1.0


# ---------------------------------------------------------------- the KL estimators


def _gaussian(dist: DiagGaussianDistribution, seed: int) -> Callable[[int], Distribution]:
    gen = th.Generator().manual_seed(seed)
    mean, log_std = th.randn(1, 3, generator=gen), 0.5 * th.randn(3, generator=gen)
    return lambda n: dist.proba_distribution(mean.expand(n, -1), log_std)


def _logits(dist, width: int, seed: int) -> Callable[[int], Distribution]:
    logits = th.randn(1, width, generator=th.Generator().manual_seed(seed))
    return lambda n: dist.proba_distribution(logits.expand(n, -1))


def _gsde(squash: bool, seed: int) -> Callable[[int], Distribution]:
    # one state's latent features; a fresh exploration matrix per sample gives iid draws from its marginal
    gen = th.Generator().manual_seed(seed)
    latent, mean, log_std = th.randn(1, 4, generator=gen), 0.3 * th.randn(1, 2, generator=gen), -0.5 + 0.3 * th.randn(4, 2, generator=gen)
    dist = StateDependentNoiseDistribution(2, squash_output=squash)
    dist.latent_sde_dim = 4

    def build(n: int) -> Distribution:
        dist.sample_weights(log_std, batch_size=n)
        return dist.proba_distribution(mean.expand(n, -1), log_std, latent.expand(n, -1))

    return build


DISTRIBUTIONS = {
    "DiagGaussian": lambda seed: _gaussian(DiagGaussianDistribution(3), seed),
    "SquashedDiagGaussian": lambda seed: _gaussian(SquashedDiagGaussianDistribution(3), seed),
    "Categorical": lambda seed: _logits(CategoricalDistribution(5), 5, seed),
    "MultiCategorical": lambda seed: _logits(MultiCategoricalDistribution([3, 4]), 7, seed),
    "Bernoulli": lambda seed: _logits(BernoulliDistribution(4), 4, seed),
    "StateDependentNoise": lambda seed: _gsde(False, seed),
    "StateDependentNoise-squashed": lambda seed: _gsde(True, seed),
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_analytic_kl_matches_monte_carlo(name):
    """Closed-form KL(p ‖ q) = E_{a∼p}[log p(a) − log q(a)], with SB3's own sampling and log_prob."""
    th.manual_seed(0)
    build_p, build_q = DISTRIBUTIONS[name](1), DISTRIBUTIONS[name](2)
    p = build_p(N_MC)
    actions = p.sample()
    log_p = p.log_prob(actions)
    params_p = DistributionParams.capture(p)
    q = build_q(N_MC)
    log_q = q.log_prob(actions)
    params_q = DistributionParams.capture(q)
    assert params_p is not None and params_q is not None
    exact = analytic_kl(params_p[:1], params_q[:1]).item()
    assert exact > 0.01
    assert_close_to_mean(log_p - log_q, exact)


def _factors(dist: Distribution) -> list[th.distributions.Distribution]:
    return dist.distribution if isinstance(dist.distribution, list) else [dist.distribution]


@pytest.mark.parametrize("name", ["DiagGaussian", "Categorical", "MultiCategorical", "Bernoulli"])
def test_analytic_kl_equals_torch(name):
    p = DISTRIBUTIONS[name](1)(1)
    p_params, p_factors = DistributionParams.capture(p), list(_factors(p))
    q = DISTRIBUTIONS[name](2)(1)
    q_params, q_factors = DistributionParams.capture(q), _factors(q)
    expected = sum(th.distributions.kl_divergence(fp, fq).reshape(1, -1).sum(-1) for fp, fq in zip(p_factors, q_factors))
    th.testing.assert_close(analytic_kl(p_params, q_params), expected, rtol=1e-5, atol=1e-6)


def test_fused_gaussian_kl_gradcheck():
    gen = th.Generator().manual_seed(0)
    loc_p, scale_p = th.randn(6, 3, generator=gen, dtype=th.double), th.rand(6, 3, generator=gen, dtype=th.double) + 0.3
    loc_q = th.randn(6, 3, generator=gen, dtype=th.double, requires_grad=True)
    scale_q = (th.rand(6, 3, generator=gen, dtype=th.double) + 0.3).requires_grad_()
    old = DistributionParams([("normal", (loc_p, scale_p))])
    assert th.autograd.gradcheck(lambda mu, sigma: mean_kl_from_fixed(old, DistributionParams([("normal", (mu, sigma))])), (loc_q, scale_q))


@pytest.mark.parametrize("name", ["DiagGaussian", "StateDependentNoise", "MultiCategorical", "Bernoulli"])
def test_mean_kl_from_fixed_equals_autograd_formula(name):
    """The penalty's mean KL (fused for Gaussians) has the value and gradient of analytic_kl(...).mean()."""
    old = DistributionParams.capture(DISTRIBUTIONS[name](1)(8))
    new_params = DistributionParams.capture(DISTRIBUTIONS[name](2)(8))
    leaves = [tuple(t.detach().clone().requires_grad_() for t in tensors) for _, tensors in new_params.components]
    values, grads = [], []
    for kl_fn in (mean_kl_from_fixed, lambda p, q: analytic_kl(p, q).mean()):
        new = DistributionParams([(kind, leaf) for (kind, _), leaf in zip(new_params.components, leaves)])
        flat = [t for leaf in leaves for t in leaf]
        value = kl_fn(old, new)
        values.append(value)
        grads.append(th.autograd.grad(value, flat))
    th.testing.assert_close(values[0], values[1])
    for fused, reference in zip(*grads):
        th.testing.assert_close(fused, reference)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_sampled_estimators_are_unbiased(estimator, direction):
    """k1 and k3 on actions a ∼ π_old estimate KL(old ‖ new) (forward) or KL(new ‖ old) (reverse)."""
    th.manual_seed(0)
    old = th.distributions.Normal(th.tensor([0.0, 0.5]), th.tensor([1.0, 0.7]))
    new = th.distributions.Normal(th.tensor([0.3, 0.2]), th.tensor([0.8, 0.9]))
    actions = old.sample((N_MC,))
    log_ratio = (new.log_prob(actions) - old.log_prob(actions)).sum(-1)
    pair = (old, new) if direction == "forward" else (new, old)
    exact = th.distributions.kl_divergence(*pair).sum().item()
    samples = sampled_kl(log_ratio, estimator, direction)
    assert_close_to_mean(samples, exact)
    if estimator == "k3":
        assert (samples >= -1e-6).all(), "k3 is never negative"


@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
@pytest.mark.parametrize("kl_direction", ["forward", "reverse"])
def test_training_with_each_estimator(kl_estimator, kl_direction):
    model = one_rollout_model(kl_estimator=kl_estimator, kl_direction=kl_direction).learn(64)
    assert model._old_params is None, "a sampled estimator needs no snapshot of π_old"
    assert np.isfinite(model.logger.name_to_value["train/kl"])


def test_reverse_analytic_kl_differs_from_forward():
    kls = {
        direction: one_rollout_model(kl_direction=direction, learning_rate=3e-2).learn(64).logger.name_to_value["train/kl"]
        for direction in ("forward", "reverse")
    }
    assert kls["forward"] > 0 and kls["reverse"] > 0 and kls["forward"] != kls["reverse"]


def test_fallback_to_sampled_estimator(monkeypatch):
    monkeypatch.setattr(kl_module.DistributionParams, "capture", classmethod(lambda cls, dist, detach=True: None))
    with pytest.warns(UserWarning, match="falls back to the sampled 'k3' estimator"):
        model = one_rollout_model().learn(64)
    assert model._old_params is None
    assert model.logger.name_to_value["train/kl"] >= 0


def test_kl_penalty_and_hinge():
    """β · KL, plus hinge · max(0, KL − 2 d_targ)² beyond twice the target; the hinge is off at 0 and below 2 d_targ."""
    kl = th.tensor(0.05, requires_grad=True)
    th.testing.assert_close(kl_penalty(kl, kl_coef=0.5, kl_hinge_coef=0.0, kl_target=0.01), 0.5 * kl)
    th.testing.assert_close(kl_penalty(kl, kl_coef=0.5, kl_hinge_coef=100.0, kl_target=0.01), 0.5 * kl + 100.0 * (kl - 0.02) ** 2)
    th.testing.assert_close(kl_penalty(kl, kl_coef=0.5, kl_hinge_coef=100.0, kl_target=0.03), 0.5 * kl)
    (gradient,) = th.autograd.grad(kl_penalty(kl, 0.5, 100.0, 0.01), kl)
    th.testing.assert_close(gradient, th.tensor(0.5 + 200.0 * (0.05 - 0.02)))


def test_penalty_enters_the_loss():
    """With a fixed β and the sampled k1 estimator, the logged loss changes with β (the penalty takes part in it)."""
    losses = []
    for kl_coef in (0.0, 5.0):
        model = one_rollout_model(kl_estimator="k1", kl_coef=kl_coef, adaptive_kl=False, clip_range=0.2).learn(64)
        losses.append(model.logger.name_to_value["train/loss"])
    assert losses[0] != losses[1]


# ---------------------------------------------------------------- bit-identity with SB3 PPO

BIT_IDENTITY_CASES = {
    "CartPole": ("CartPole-v1", dict(n_steps=32, batch_size=64, n_epochs=4, gae_lambda=0.8, gamma=0.98)),
    "CartPole-schedules-target_kl": (
        "CartPole-v1",
        dict(n_steps=32, batch_size=16, learning_rate=LinearSchedule(1e-3, 0.0, 1.0), target_kl=0.005, ent_coef=0.01),
    ),
    "Pendulum": ("Pendulum-v1", dict(n_steps=64, batch_size=32, n_epochs=3, gamma=0.9, clip_range_vf=0.5)),
    "Pendulum-gSDE": ("Pendulum-v1", dict(n_steps=64, batch_size=32, n_epochs=3, use_sde=True, sde_sample_freq=4)),
}


@pytest.mark.parametrize("case", BIT_IDENTITY_CASES)
def test_penalty_off_is_bit_identical_to_ppo(case):
    env_id, kwargs = BIT_IDENTITY_CASES[case]
    models = []
    for algo, extra in ((PPO, {}), (PPOKL, dict(clip_range=0.2, kl_coef=0.0, adaptive_kl=False))):
        env = make_vec_env(env_id, n_envs=2, seed=0)
        models.append(algo("MlpPolicy", env, seed=0, policy_kwargs=dict(net_arch=[32, 32]), **kwargs, **extra).learn(512))
    ppo, ppokl = models
    assert th.equal(params_of(ppo), params_of(ppokl))
    for state_ppo, state_ppokl in zip(ppo.policy.optimizer.state.values(), ppokl.policy.optimizer.state.values()):
        assert th.equal(state_ppo["exp_avg_sq"], state_ppokl["exp_avg_sq"])
    logged_ppo, logged_ppokl = ppo.logger.name_to_value, ppokl.logger.name_to_value
    assert set(logged_ppo) <= set(logged_ppokl)
    for key, value in logged_ppo.items():
        assert logged_ppokl[key] == value, key
    assert {"train/kl", "train/kl_coef"} <= set(logged_ppokl)


def test_penalty_on_changes_training():
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=4, seed=0)
    ppo = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), **kwargs).learn(256)
    ppokl = PPOKL("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), clip_range=0.2, **kwargs).learn(256)
    assert not th.equal(params_of(ppo), params_of(ppokl))


def test_penalty_only_logs():
    model = one_rollout_model().learn(64)
    logged = model.logger.name_to_value
    expected = {"train/entropy_loss", "train/policy_gradient_loss", "train/value_loss", "train/approx_kl", "train/loss"}
    expected |= {"train/explained_variance", "train/n_updates", "train/kl", "train/kl_coef"}
    assert expected <= set(logged)
    assert "train/clip_fraction" not in logged and "train/clip_range" not in logged  # nothing is clipped


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kl_target=0.0), "kl_target"),
        (dict(kl_target=-0.01), "kl_target"),
        (dict(kl_coef=-1.0), "kl_coef"),
        (dict(kl_coef_bounds=(1.0, 0.1)), "kl_coef_bounds"),
        (dict(kl_coef_bounds=(-1.0, 1.0)), "kl_coef_bounds"),
        (dict(kl_coef_bounds=(0.1,)), "kl_coef_bounds"),
        (dict(kl_coef=100.0, kl_coef_bounds=(0.1, 10.0)), "kl_coef"),
        (dict(kl_estimator="k2"), "kl_estimator.*analytic.*k1.*k3"),
        (dict(kl_direction="backward"), "kl_direction.*forward.*reverse"),
        (dict(kl_update="epoch"), "kl_update.*rollout.*minibatch"),
        (dict(kl_hinge_coef=-1.0), "kl_hinge_coef"),
        (dict(clip_range=None, kl_coef=0.0, adaptive_kl=False), "clip_range=None"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPOKL("MlpPolicy", "CartPole-v1", **kwargs)


def test_no_trust_region_needs_clip_or_penalty():
    # each of these keeps a trust region, so none raises
    PPOKL("MlpPolicy", "CartPole-v1", clip_range=0.2, kl_coef=0.0, adaptive_kl=False)
    PPOKL("MlpPolicy", "CartPole-v1", clip_range=None, kl_coef=0.5, adaptive_kl=False)
    PPOKL("MlpPolicy", "CartPole-v1", clip_range=None, kl_coef=0.0, adaptive_kl=False, kl_hinge_coef=10.0)
