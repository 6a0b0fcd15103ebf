"""OffPAC's own tests: SAC identity, the critic target, the three actor-gradient estimators, HER, bad input."""

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC, HerReplayBuffer
from stable_baselines3.common.buffers import NStepReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, IdentityEnv, IdentityEnvBox, IdentityEnvMultiDiscrete
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_pgext import OffPAC
from sb3_pgext.common.estimators import leave_one_out_baseline, likelihood_ratio_loss
from sb3_pgext.common.gradient_variance import flatten_gradients

TINY = dict(learning_starts=32, batch_size=32, buffer_size=2_000, policy_kwargs=dict(net_arch=[16]))


def flat_params(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def flat_grad(module: th.nn.Module) -> th.Tensor:
    parameters = list(module.parameters())
    return flatten_gradients(tuple(p.grad for p in parameters), parameters)


# --- with the extension off, OffPAC is SAC ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(ent_coef=0.1, n_steps=3),
        dict(use_sde=True, sde_sample_freq=4, target_update_interval=2),
    ],
    ids=["auto-entropy", "fixed-entropy-3-step", "gSDE"],
)
def test_bit_identical_to_sac(kwargs):
    """Box actions, "reparameterization", one sample: parameters, optimizers and logs equal SAC's exactly."""
    models = []
    for model_class in (SAC, OffPAC):
        model = model_class("MlpPolicy", "Pendulum-v1", seed=1, gradient_steps=2, **TINY, **kwargs)
        model.learn(300)
        models.append(model)
    sac, offpac = models
    assert offpac.actor_gradient == "reparameterization" and offpac.n_action_samples == 1
    assert th.equal(flat_params(sac), flat_params(offpac))
    for name in ("actor", "critic"):
        sac_state = getattr(sac, name).optimizer.state_dict()["state"]
        offpac_state = getattr(offpac, name).optimizer.state_dict()["state"]
        for key in sac_state:
            assert th.equal(sac_state[key]["exp_avg_sq"], offpac_state[key]["exp_avg_sq"])
    for key in ("train/actor_loss", "train/critic_loss", "train/ent_coef"):
        assert sac.logger.name_to_value[key] == offpac.logger.name_to_value[key]
    if kwargs.get("n_steps", 1) > 1:
        assert isinstance(offpac.replay_buffer, NStepReplayBuffer)


# --- the critic target: fresh actions from the current policy ---------------------------------------


def fixed_batch(model, actions: th.Tensor, batch_size: int = 64) -> ReplayBufferSamples:
    """A batch with random observations, the given buffer actions, reward 1 and no terminations."""
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(batch_size)]), dtype=th.float32)
    next_obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(batch_size)]), dtype=th.float32)
    return ReplayBufferSamples(obs, actions, next_obs, th.zeros(batch_size, 1), th.ones(batch_size, 1))


def test_critic_target_uses_current_policy_box(monkeypatch):
    model = OffPAC("MlpPolicy", IdentityEnvBox(), seed=0, ent_coef=0.0, gamma=0.9, **TINY)
    # A near-deterministic actor whose squashed action is 0.9 everywhere; the buffer says -0.9
    with th.no_grad():
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.fill_(math.atanh(0.9))
        model.actor.log_std.weight.zero_()
        model.actor.log_std.bias.fill_(-15.0)
    seen = []

    def q_target(obs, actions):  # Q̄(s, a) = 10 a, and remember the actions it was asked about
        seen.append(actions.clone())
        return (10 * actions, 10 * actions + 1)

    monkeypatch.setattr(model.critic_target, "forward", q_target)
    batch = fixed_batch(model, actions=th.full((64, 1), -0.9))
    target = batch.rewards + model.gamma * model._soft_state_value(batch.next_observations, th.tensor(0.0))
    assert th.allclose(th.cat(seen), th.full((64, 1), 0.9), atol=1e-4)
    # r + γ min_j Q̄j(s', π(s')) = 1 + 0.9 · 9, whatever the buffer's actions were
    assert th.allclose(target, th.full((64, 1), 1 + 0.9 * 9.0), atol=1e-3)


def test_critic_target_uses_current_policy_discrete(monkeypatch):
    model = OffPAC("MlpPolicy", IdentityEnv(2), seed=0, ent_coef=0.0, gamma=0.9, **TINY)
    monkeypatch.setattr(model.critic_target, "forward", lambda obs: (th.tensor([[0.0, 10.0]]).expand(len(obs), 2),) * 2)
    batch = fixed_batch(model, actions=th.zeros(64, 1, dtype=th.long))  # the buffer always took action 0
    with th.no_grad():
        model.actor.action_net.weight.zero_()
        model.actor.action_net.bias.copy_(th.tensor([0.0, 0.0]))  # uniform policy: E[Q̄] = 5
        uniform = model._soft_state_value(batch.next_observations, th.tensor(0.0))
        model.actor.action_net.bias.copy_(th.tensor([-30.0, 30.0]))  # action 1 always: E[Q̄] = 10
        greedy = model._soft_state_value(batch.next_observations, th.tensor(0.0))
        entropy_bonus = model._soft_state_value(batch.next_observations, th.tensor(2.0))
    assert th.allclose(uniform, th.full((64, 1), 5.0))
    assert th.allclose(greedy, th.full((64, 1), 10.0))
    model.actor.action_net.bias.data.copy_(th.tensor([0.0, 0.0]))
    with th.no_grad():
        soft = model._soft_state_value(batch.next_observations, th.tensor(2.0))
    # uniform policy: E[Q̄ − α log π] = 5 + α log 2
    assert th.allclose(soft, th.full((64, 1), 5.0 + 2.0 * math.log(2)), atol=1e-5)
    assert th.allclose(entropy_bonus, greedy, atol=1e-4), "a deterministic policy has no entropy to add"


# --- the actor-gradient estimators ---------------------------------------------------------------


@pytest.mark.parametrize("ent_coef", [0.0, 0.3])
def test_expected_gradient_is_autograd_of_expected_q(monkeypatch, ent_coef):
    """"expected": the actor's gradient is ∇_θ mean_s [Σ_a π(a|s) Q(s, a) + α H(π(·|s))] for a fixed Q."""
    model = OffPAC("MlpPolicy", IdentityEnv(4), seed=0, ent_coef=ent_coef, **TINY)
    assert model.actor_gradient == "expected"
    q_table = th.randn(1, 4)
    monkeypatch.setattr(model.critic, "forward", lambda obs: (q_table.expand(len(obs), 4), q_table.expand(len(obs), 4) + 1))
    obs = th.randint(0, 4, (32,))  # Discrete observations: SB3 one-hot encodes them
    loss = model._actor_loss(obs, model._sample_policy(obs), th.tensor(ent_coef))
    model.actor.zero_grad()
    loss.backward()
    ours = flat_grad(model.actor)

    model.actor.zero_grad()
    features = model.actor.extract_features(obs, model.actor.features_extractor)
    distribution = th.distributions.Categorical(logits=model.actor.action_net(model.actor.latent_pi(features)))
    objective = (distribution.probs * q_table).sum(dim=1) + ent_coef * distribution.entropy()
    (-objective.mean()).backward()
    reference = flat_grad(model.actor)
    assert reference.norm() > 1e-3
    assert th.allclose(ours, reference, atol=1e-6, rtol=1e-5)


def test_leave_one_out_baseline():
    values = th.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    expected = th.tensor([[4.0, 6.5], [3.0, 5.5], [2.0, 3.0]])
    assert th.allclose(leave_one_out_baseline(values), expected)
    assert th.equal(leave_one_out_baseline(values[:1]), th.zeros(1, 2))


def gaussian_score_estimates(n_draws: int, n_samples: int, seed: int = 0) -> tuple[th.Tensor, th.Tensor]:
    """
    ``n_draws`` independent estimates of ∇_(μ, log σ) E_{a∼N(μ, σ²)}[Q(a)], Q(a) = −‖a − c‖², from
    :func:`likelihood_ratio_loss` with ``n_samples`` actions each, and the exact gradient.
    """
    generator = th.Generator().manual_seed(seed)
    mu0, log_std0, c = th.tensor([0.5, -1.0]), th.tensor([0.0, -0.5]), th.tensor([1.5, 0.5])
    # One copy of the parameters per draw: the gradient of the mean loss w.r.t. copy i is draw i / n_draws
    mu = mu0.repeat(n_draws, 1).requires_grad_(True)
    log_std = log_std0.repeat(n_draws, 1).requires_grad_(True)
    noise = th.randn(n_samples, n_draws, 2, generator=generator)
    actions = (mu + log_std.exp() * noise).detach()
    log_prob = th.distributions.Normal(mu, log_std.exp()).log_prob(actions).sum(-1)  # (K, n_draws)
    values = -((actions - c) ** 2).sum(-1)
    loss = likelihood_ratio_loss(log_prob, values)
    grad_mu, grad_log_std = th.autograd.grad(-loss * n_draws, (mu, log_std))
    estimates = th.cat([grad_mu, grad_log_std], dim=1)
    # J = −‖μ − c‖² − Σ σ²: ∇_μ J = −2 (μ − c), ∇_{log σ} J = −2 σ²
    exact = th.cat([-2 * (mu0 - c), -2 * (2 * log_std0).exp()])
    return estimates, exact


@pytest.mark.parametrize("n_samples", [1, 2, 8])
def test_likelihood_estimator_is_unbiased(n_samples):
    n_draws = 20_000
    estimates, exact = gaussian_score_estimates(n_draws, n_samples)
    standard_error = estimates.std(dim=0) / math.sqrt(n_draws)
    # 4 coordinates, each within 4.5 standard errors (a false alarm about once in 30,000 runs)
    assert ((estimates.mean(dim=0) - exact).abs() < 4.5 * standard_error).all(), (estimates.mean(dim=0), exact)


def test_likelihood_variance_falls_with_more_samples():
    variances = [gaussian_score_estimates(20_000, k)[0].var(dim=0).sum().item() for k in (1, 2, 4, 16)]
    # Without a baseline (K = 1) Q's own spread drives the variance; the leave-one-out baseline removes
    # it and averaging K samples divides the remainder by about K. Sampling error at 20,000 draws is ~2%.
    assert variances[1] < 0.5 * variances[0]
    assert variances[2] < 0.6 * variances[1]
    assert variances[3] < 0.35 * variances[2]


def quadratic_critic(obs, actions):
    q = -((actions - 0.3) ** 2).sum(dim=1, keepdim=True)
    return q, q


def model_gradient_draws(model, n_repeats: int, n_states: int) -> th.Tensor:
    """Actor gradients of ``model._actor_loss`` on ``n_states`` copies of one state, ``n_repeats`` times."""
    obs = th.zeros(n_states, *model.observation_space.shape)
    draws = []
    for _ in range(n_repeats):
        loss = model._actor_loss(obs, model._sample_policy(obs), th.tensor(0.0))
        model.actor.zero_grad()
        loss.backward()
        draws.append(flat_grad(model.actor))
    return th.stack(draws)


def test_likelihood_matches_reparameterization_on_the_squashed_policy(monkeypatch):
    """Both estimators are unbiased for the same ∇_θ E[Q(s, a)] of OffPAC's tanh-Gaussian actor."""
    means, errors = [], []
    for actor_gradient in ("likelihood", "reparameterization"):
        th.manual_seed(0)
        model = OffPAC("MlpPolicy", IdentityEnvBox(), seed=0, actor_gradient=actor_gradient, n_action_samples=4, **TINY)
        with th.no_grad():
            model.actor.log_std.bias.fill_(-0.5)
        monkeypatch.setattr(model.critic, "forward", quadratic_critic)
        draws = model_gradient_draws(model, n_repeats=200, n_states=256)
        means.append(draws.mean(dim=0))
        errors.append(draws.std(dim=0) / math.sqrt(len(draws)))
    tolerance = 5 * th.sqrt(errors[0] ** 2 + errors[1] ** 2) + 1e-6
    assert means[1].norm() > 1e-2
    assert ((means[0] - means[1]).abs() < tolerance).all()


def test_discrete_likelihood_matches_expected(monkeypatch):
    """On Discrete actions the score-function estimator averages to the exact all-action gradient."""
    q_table = th.tensor([[1.0, -0.5, 2.0]])
    gradients = {}
    for actor_gradient in ("likelihood", "expected"):
        model = OffPAC("MlpPolicy", IdentityEnv(3), seed=0, actor_gradient=actor_gradient, n_action_samples=4, **TINY)
        monkeypatch.setattr(model.critic, "forward", lambda obs: (q_table.expand(len(obs), 3),) * 2)
        gradients[actor_gradient] = model_gradient_draws(model, n_repeats=100 if actor_gradient == "likelihood" else 1, n_states=256)
    draws = gradients["likelihood"]
    tolerance = 5 * draws.std(dim=0) / math.sqrt(len(draws)) + 1e-6
    assert gradients["expected"][0].norm() > 1e-2
    assert ((draws.mean(dim=0) - gradients["expected"][0]).abs() < tolerance).all()


# --- spaces, buffers, logging, save / load ---------------------------------------------------------


@pytest.mark.parametrize("actor_gradient", ["likelihood", "expected"])
def test_discrete_actions(actor_gradient):
    model = OffPAC("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, actor_gradient=actor_gradient, **TINY)
    model.learn(200)
    assert model.target_entropy == pytest.approx(0.5 * math.log(2))
    logs = model.logger.name_to_value
    for key in ("train/actor_loss", "train/critic_loss", "train/ent_coef", "train/entropy", "train/q_mean"):
        assert np.isfinite(logs[key]), key
    assert 0 < logs["train/entropy"] <= math.log(2) + 1e-6


def test_entropy_regularisation_off():
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, ent_coef=0.0, **TINY).learn(100)
    assert model.ent_coef_optimizer is None and model.logger.name_to_value["train/ent_coef"] == 0.0


def test_auto_ent_coef_initial_value():
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, ent_coef="auto_0.1", **TINY)
    assert model.log_ent_coef.exp().item() == pytest.approx(0.1)
    assert model.target_entropy == -1.0


@pytest.mark.parametrize("continuous", [False, True], ids=["Discrete", "Box"])
def test_her_replay_buffer(continuous):
    env = BitFlippingEnv(n_bits=4, continuous=continuous, max_steps=4)
    model = OffPAC(
        "MultiInputPolicy",
        env,
        seed=0,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs=dict(n_sampled_goal=4, goal_selection_strategy="future"),
        **TINY,
    )
    model.learn(400)
    assert isinstance(model.replay_buffer, HerReplayBuffer)
    # BitFlippingEnv pays 0 at the goal and -1 elsewhere: random play rarely reaches the desired goal,
    # relabelling with achieved goals makes 0-reward transitions common in the sampled batches
    stored = model.replay_buffer.rewards[: model.replay_buffer.pos]
    sampled = model.replay_buffer.sample(1024).rewards
    assert (sampled == 0).float().mean() > (stored == 0).mean() + 0.2


def test_save_and_load_replay_buffer(tmp_path):
    model = OffPAC("MlpPolicy", IdentityEnv(3), seed=0, ent_coef="auto", **TINY).learn(200)
    model.save(tmp_path / "offpac")
    model.save_replay_buffer(tmp_path / "buffer")
    loaded = OffPAC.load(tmp_path / "offpac", env=IdentityEnv(3))
    loaded.load_replay_buffer(tmp_path / "buffer")
    assert loaded.replay_buffer.pos == model.replay_buffer.pos == 200
    np.testing.assert_array_equal(loaded.replay_buffer.actions, model.replay_buffer.actions)
    assert loaded.log_ent_coef.item() == model.log_ent_coef.item()
    assert loaded.actor_gradient == "expected" and loaded.target_entropy == model.target_entropy
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.replay_buffer.pos == 300


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_cuda(env_id):
    model = OffPAC("MlpPolicy", env_id, seed=0, device="cuda", **TINY)
    assert model.replay_buffer.device.type == "cuda"
    assert model.replay_buffer.sample(8).observations.device.type == "cuda"
    model.learn(200)
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, kwargs, match",
    [
        (IdentityEnv(3), dict(actor_gradient="reparameterization"), "reparameterization"),
        (IdentityEnvBox(), dict(actor_gradient="expected"), "expected"),
        (IdentityEnvBox(), dict(actor_gradient="pathwise"), "actor_gradient"),
        (IdentityEnvBox(), dict(n_action_samples=0), "n_action_samples"),
        (IdentityEnvBox(), dict(policy_kwargs=dict(n_critics=0)), "n_critics"),
        (IdentityEnvBox(), dict(ent_coef=-0.1), "ent_coef"),
        (IdentityEnvBox(), dict(ent_coef="automatic"), "ent_coef"),
        (IdentityEnvBox(), dict(ent_coef="auto_-1"), "ent_coef"),
        (IdentityEnvBox(), dict(target_entropy="high"), "target_entropy"),
        (IdentityEnvMultiDiscrete(2), dict(), "Discrete and Box"),
        ("Pendulum-v1", dict(use_sde=True, actor_gradient="likelihood", n_action_samples=4), "n_action_samples"),
    ],
)
def test_bad_input(env, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OffPAC("MlpPolicy", env, **kwargs)


def test_unsupported_space_error_lists_the_supported_ones():
    env = IdentityEnvMultiDiscrete(2)
    assert isinstance(env.action_space, spaces.MultiDiscrete)
    with pytest.raises(ValueError, match="supports Discrete and Box action spaces, not MultiDiscrete"):
        OffPAC("MlpPolicy", env)
