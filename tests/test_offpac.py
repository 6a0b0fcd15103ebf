"""OffPAC's own tests: SAC identity, the fast update, the critic target, the three actor-gradient estimators, HER, bad input."""

import json
import math
from pathlib import Path

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
from sb3_pgext.common.utils import isolated_random_streams

TINY = dict(learning_starts=32, batch_size=32, buffer_size=2_000, policy_kwargs=dict(net_arch=[16]))
DATA = Path(__file__).parent / "data"


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
    """Box actions, "reparameterization", one sample, exact update: parameters, optimizers and logs equal SAC's exactly."""
    models = []
    for model_class in (SAC, OffPAC):
        exact = dict(fast_update=False) if model_class is OffPAC else {}
        model = model_class("MlpPolicy", "Pendulum-v1", seed=1, gradient_steps=2, **TINY, **kwargs, **exact)
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


# --- the fast update: the exact update's arithmetic within float rounding ---------------------------


def assert_fast_update_equals_exact_update(env_id: str, n_critics: int, device: str, gradient_steps: int) -> None:
    """From the same start, ``gradient_steps`` of the fast update give the exact update's parameters within float tolerance."""
    models = {}
    for fast_update in (False, True):
        model = OffPAC(
            "MlpPolicy", env_id, seed=3, fast_update=fast_update, learning_starts=32, batch_size=32, buffer_size=2_000,
            policy_kwargs=dict(net_arch=[32, 32], n_critics=n_critics), device=device, cuda_graph=False,
        )  # fmt: skip
        models[fast_update] = (model, {key: value.clone() for key, value in model.policy.state_dict().items()})
        model.learn(32 + gradient_steps)
    (exact, exact_start), (fast, fast_start) = models[False], models[True]
    assert fast.critic.q_net.n_nets == n_critics and not hasattr(exact.critic, "q_net")
    assert fast.critic.optimizer.param_groups[0]["fused"] and not exact.critic.optimizer.param_groups[0]["fused"]
    assert exact_start.keys() == fast_start.keys() and all(th.equal(exact_start[key], fast_start[key]) for key in exact_start)
    assert fast._n_updates == exact._n_updates == gradient_steps
    exact_state, fast_state = exact.policy.state_dict(), fast.policy.state_dict()
    for key, value in exact_state.items():
        assert not th.equal(value, exact_start[key]), f"{key} did not train"
        assert th.allclose(fast_state[key], value, rtol=1e-4, atol=1e-5), key
    for key in ("train/actor_loss", "train/critic_loss", "train/ent_coef", "train/entropy", "train/q_mean", "train/ent_coef_loss"):
        assert fast.logger.name_to_value[key] == pytest.approx(exact.logger.name_to_value[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("n_critics", [2, 5])
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"], ids=["Box", "Discrete"])
def test_fast_update_equals_exact_update(env_id, n_critics):
    """300 gradient steps on the CPU (CUDA: test_cuda_fast_update_equals_exact_update)."""
    assert_fast_update_equals_exact_update(env_id, n_critics, "cpu", gradient_steps=300)


@pytest.mark.parametrize("deterministic", [False, True])
def test_fast_predict_is_sacs_action_bit_for_bit(deterministic):
    """The fast update's predict (no distribution objects) gives SB3's Actor's actions from the same random stream."""
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, **TINY)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(16)]))
    with isolated_random_streams(seed=1):
        fast = model.policy._predict(obs, deterministic=deterministic)
    with isolated_random_streams(seed=1):
        sac = model.actor(obs, deterministic=deterministic)  # SB3's Actor.forward, through the distribution
    assert th.equal(fast, sac)
    model.policy.set_training_mode(False)
    assert not model.actor.training and not model.critic.training
    model.policy.set_training_mode(True)
    assert model.actor.training and model.critic.training and model.policy.training


def test_fast_update_logs_once_per_train_call(monkeypatch):
    """The logged values are read from the device once per train() call, not once per gradient step."""
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, **TINY).learn(64)
    reads = []
    original = th.Tensor.item
    monkeypatch.setattr(th.Tensor, "item", lambda tensor: reads.append(tensor.shape) or original(tensor))
    model.train(gradient_steps=16, batch_size=32)
    assert reads == []
    th.ones(()).item()
    assert reads == [th.Size([])], "the patch sees reads"
    assert model.logger.name_to_value["train/n_updates"] == model._n_updates


@pytest.mark.parametrize("fast_update", [True, False], ids=["fast", "exact"])
@pytest.mark.parametrize("flushing_before", [False, True])
def test_fast_update_flushes_subnormal_floats_inside_train_only(fast_update, flushing_before):
    """The fast update flushes subnormal floats to zero during its gradient steps on the CPU and restores the mode."""
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, fast_update=fast_update, **TINY).learn(64)
    seen = []
    model.critic.optimizer.register_step_pre_hook(lambda *args: seen.append(np.float32(2.0**-126) / np.float32(2.0)))
    th.set_flush_denormal(flushing_before)
    try:
        model.train(gradient_steps=2, batch_size=32)
        after = np.float32(2.0**-126) / np.float32(2.0)
    finally:
        th.set_flush_denormal(False)
    assert len(seen) == 2
    assert all((value == 0) == (fast_update or flushing_before) for value in seen)
    assert (after == 0) == flushing_before


@pytest.mark.parametrize("name", ["offpac_box_v0_1", "offpac_discrete_v0_1"])
@pytest.mark.parametrize("fast_update", [True, False], ids=["fast", "exact"])
def test_old_saved_models_load(name, fast_update, tmp_path):
    """Files saved before the batched critics load into both updates, with their critics, optimizers and α."""
    expected = json.loads((DATA / "offpac_v0_1.json").read_text())[name]
    model = OffPAC.load(DATA / f"{name}.zip", fast_update=fast_update)
    assert model.fast_update is fast_update and model._n_updates == expected["n_updates"]
    obs = th.tensor(expected["obs"], device=model.device)
    with th.no_grad():
        inputs = (obs,) if model.policy.is_discrete else (obs, th.tensor(expected["actions"], device=model.device))
        for critic, key in ((model.critic, "q"), (model.critic_target, "q_target")):
            values = critic(*inputs)
            assert len(values) == len(expected[key]) == model.policy.critic_kwargs["n_critics"]
            for value, reference in zip(values, expected[key]):
                assert th.allclose(value, th.tensor(reference, device=model.device), atol=1e-6), key
    # to the tolerance of the critics' values: the matrix products of one CPU and another may differ in the last bit
    predicted = model.predict(np.array(expected["obs"]), deterministic=True)[0]
    np.testing.assert_allclose(predicted, expected["predict"], rtol=0, atol=1e-6)
    assert model.log_ent_coef.item() == expected["log_ent_coef"]
    assert model.critic.optimizer.state, "the critic optimizer's moments were restored"
    # the moments of the separate critics, stacked or not, are those saved
    exact = OffPAC.load(DATA / f"{name}.zip", fast_update=False)
    exact_moments = [exact.critic.optimizer.state[param]["exp_avg"] for param in exact.critic.parameters()]
    moments = th.cat([model.critic.optimizer.state[param]["exp_avg"].flatten() for param in model.critic.parameters()])
    assert th.equal(th.sort(moments).values, th.sort(th.cat([moment.flatten() for moment in exact_moments])).values)
    model.set_env(make_vec_env("Pendulum-v1" if name == "offpac_box_v0_1" else "CartPole-v1", n_envs=1, seed=0))
    model.learn(64, reset_num_timesteps=False)
    assert model._n_updates > expected["n_updates"]


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_saved_files_do_not_depend_on_the_update(env_id, tmp_path):
    """A fast model's file has the separate critics' layout: loaded into the exact update, it is the same model."""
    fast = OffPAC("MlpPolicy", env_id, seed=0, **{**TINY, "policy_kwargs": dict(net_arch=[16], n_critics=3)}).learn(100)
    fast.save(tmp_path / "fast")
    exact = OffPAC.load(tmp_path / "fast", fast_update=False)
    assert isinstance(exact.critic.qf2, th.nn.Sequential)
    fast_state, exact_state = fast.policy.state_dict(), exact.policy.state_dict()
    assert fast_state.keys() == exact_state.keys() and all(th.equal(fast_state[key], exact_state[key]) for key in fast_state)
    assert not exact.critic.optimizer.param_groups[0]["fused"], "the exact update keeps SB3's Adam whatever the file had"
    for index, param in enumerate(exact.critic.parameters()):
        net, rest = divmod(index, len(list(exact.critic.qf0.parameters())))
        stacked = list(fast.critic.q_net.weights) + list(fast.critic.q_net.biases)
        layer, kind = divmod(rest, 2)
        source = stacked[kind * len(fast.critic.q_net.weights) + layer]
        assert th.equal(exact.critic.optimizer.state[param]["exp_avg_sq"], fast.critic.optimizer.state[source]["exp_avg_sq"][net])
    exact.save(tmp_path / "exact")
    again = OffPAC.load(tmp_path / "exact")
    assert again.fast_update is False  # the saved setting, unless overridden
    again = OffPAC.load(tmp_path / "exact", fast_update=True)
    assert all(th.equal(again.policy.state_dict()[key], fast_state[key]) for key in fast_state)
    assert again.critic.optimizer.param_groups[0]["fused"]


# --- the critic target: fresh actions from the current policy ---------------------------------------


def fixed_batch(model, actions: th.Tensor, batch_size: int = 64) -> ReplayBufferSamples:
    """A batch with random observations, the given buffer actions, reward 1 and no terminations."""
    def observations() -> th.Tensor:
        return th.as_tensor(np.stack([model.observation_space.sample() for _ in range(batch_size)]), dtype=th.float32)

    device = model.device
    obs, next_obs = observations().to(device), observations().to(device)
    zeros, ones = th.zeros(batch_size, 1, device=device), th.ones(batch_size, 1, device=device)
    return ReplayBufferSamples(obs, actions.to(device), next_obs, zeros, ones)


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
    no_entropy = th.tensor(0.0, device=model.device)
    target = batch.rewards + model.gamma * model._soft_state_value(batch.next_observations, no_entropy)
    assert th.allclose(th.cat(seen), th.full((64, 1), 0.9, device=model.device), atol=1e-4)
    # r + γ min_j Q̄j(s', π(s')) = 1 + 0.9 · 9, whatever the buffer's actions were
    assert th.allclose(target, th.full((64, 1), 1 + 0.9 * 9.0, device=model.device), atol=1e-3)


def test_critic_target_uses_current_policy_discrete(monkeypatch):
    model = OffPAC("MlpPolicy", IdentityEnv(2), seed=0, ent_coef=0.0, gamma=0.9, **TINY)
    device = model.device
    q_values = th.tensor([[0.0, 10.0]], device=device)
    monkeypatch.setattr(model.critic_target, "forward", lambda obs: (q_values.expand(len(obs), 2),) * 2)
    batch = fixed_batch(model, actions=th.zeros(64, 1, dtype=th.long))  # the buffer always took action 0
    with th.no_grad():
        model.actor.action_net.weight.zero_()
        model.actor.action_net.bias.copy_(th.tensor([0.0, 0.0], device=device))  # uniform policy: E[Q̄] = 5
        uniform = model._soft_state_value(batch.next_observations, th.tensor(0.0, device=device))
        model.actor.action_net.bias.copy_(th.tensor([-30.0, 30.0], device=device))  # action 1 always: E[Q̄] = 10
        greedy = model._soft_state_value(batch.next_observations, th.tensor(0.0, device=device))
        entropy_bonus = model._soft_state_value(batch.next_observations, th.tensor(2.0, device=device))
    assert th.allclose(uniform, th.full((64, 1), 5.0, device=device))
    assert th.allclose(greedy, th.full((64, 1), 10.0, device=device))
    model.actor.action_net.bias.data.copy_(th.tensor([0.0, 0.0], device=device))
    with th.no_grad():
        soft = model._soft_state_value(batch.next_observations, th.tensor(2.0, device=device))
    # uniform policy: E[Q̄ − α log π] = 5 + α log 2
    assert th.allclose(soft, th.full((64, 1), 5.0 + 2.0 * math.log(2), device=device), atol=1e-5)
    assert th.allclose(entropy_bonus, greedy, atol=1e-4), "a deterministic policy has no entropy to add"


# --- the actor-gradient estimators ---------------------------------------------------------------


@pytest.mark.parametrize("ent_coef", [0.0, 0.3])
def test_expected_gradient_is_autograd_of_expected_q(monkeypatch, ent_coef):
    """"expected": the actor's gradient is ∇_θ mean_s [Σ_a π(a|s) Q(s, a) + α H(π(·|s))] for a fixed Q."""
    model = OffPAC("MlpPolicy", IdentityEnv(4), seed=0, ent_coef=ent_coef, **TINY)
    assert model.actor_gradient == "expected"
    q_table = th.randn(1, 4).to(model.device)
    monkeypatch.setattr(model.critic, "forward", lambda obs: (q_table.expand(len(obs), 4), q_table.expand(len(obs), 4) + 1))
    obs = th.randint(0, 4, (32,)).to(model.device)  # Discrete observations: SB3 one-hot encodes them
    loss = model._actor_loss(obs, model._sample_policy(obs), th.tensor(ent_coef, device=model.device))
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
    obs = th.zeros(n_states, *model.observation_space.shape, device=model.device)
    draws = []
    for _ in range(n_repeats):
        loss = model._actor_loss(obs, model._sample_policy(obs), th.tensor(0.0, device=model.device))
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
        monkeypatch.setattr(model.critic, "forward", lambda obs: (q_table.to(obs.device).expand(len(obs), 3),) * 2)
        gradients[actor_gradient] = model_gradient_draws(model, n_repeats=100 if actor_gradient == "likelihood" else 1, n_states=256)
    draws = gradients["likelihood"]
    tolerance = 5 * draws.std(dim=0) / math.sqrt(len(draws)) + 1e-6
    assert gradients["expected"][0].norm() > 1e-2
    assert ((draws.mean(dim=0) - gradients["expected"][0]).abs() < tolerance).all()


def test_discrete_policy_sample_is_torch_categoricals():
    """The Discrete actor's log π(·|s), π(·|s) and K actions equal those of torch's Categorical, seed for seed."""
    model = OffPAC("MlpPolicy", IdentityEnv(5), seed=0, actor_gradient="likelihood", n_action_samples=3, **TINY)
    obs = model.policy.obs_to_tensor(np.arange(64) % 5)[0]
    categorical = model.actor.distribution(obs).distribution
    log_probs, probs = model.actor.log_probs_and_probs(obs)
    assert th.equal(log_probs, categorical.logits) and th.equal(probs, categorical.probs)
    th.manual_seed(1)
    sample = model._sample_policy(obs)
    th.manual_seed(1)
    actions = categorical.sample((3,))
    assert th.equal(sample.actions, actions.reshape(-1)) and th.equal(sample.log_prob, categorical.log_prob(actions).reshape(-1))


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
@pytest.mark.parametrize("fast_update", [True, False], ids=["fast", "exact"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_cuda(env_id, fast_update, tmp_path):
    model = OffPAC("MlpPolicy", env_id, seed=0, device="cuda", fast_update=fast_update, **TINY)
    assert model.replay_buffer.device.type == "cuda"
    model.learn(200)
    assert model.replay_buffer.sample(8).observations.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])
    # a file of the other update, and an old one, continue training on the GPU (fused Adam's steps move there)
    model.save(tmp_path / "model")
    other = OffPAC.load(tmp_path / "model", env=model.get_env(), device="cuda", fast_update=not fast_update)
    other.learn(64, reset_num_timesteps=False)
    old = "offpac_discrete_v0_1" if env_id == "CartPole-v1" else "offpac_box_v0_1"
    loaded = OffPAC.load(DATA / f"{old}.zip", device="cuda", fast_update=fast_update)
    loaded.set_env(make_vec_env(env_id, n_envs=1, seed=0))
    loaded.learn(64, reset_num_timesteps=False)
    assert np.isfinite(loaded.logger.name_to_value["train/critic_loss"])


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"], ids=["Box", "Discrete"])
def test_cuda_fast_update_equals_exact_update(env_id):
    """
    On CUDA the fast and exact updates run other kernels (batched against separate matrix products, fused Adam),
    whose rounding grows apart over training: on an H100 the largest difference was 0.13 of the tolerance after
    100 steps, 16 times it after 300 (0.04 after 300 on the CPU).
    """
    assert_fast_update_equals_exact_update(env_id, 2, "cuda", gradient_steps=100)


# --- the captured (CUDA graph) update ------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA GPU")
GRAPH_MODEL = dict(learning_starts=256, batch_size=64, buffer_size=2_000, policy_kwargs=dict(net_arch=[32, 32]))


def test_batch_slice_is_the_rows_of_one_minibatch():
    """All of a train() call's minibatches are sampled at once; the i-th is rows i*B to (i+1)*B of every field."""
    from sb3_pgext.offpac.cuda_graph import batch_slice

    model = OffPAC("MultiInputPolicy", BitFlippingEnv(n_bits=4, continuous=True), learning_starts=64, seed=0)
    model.learn(64)
    batches = model.replay_buffer.sample(3 * 8)
    second = batch_slice(batches, 1, 8)
    assert second.discounts is None and set(second.observations) == set(batches.observations)
    for key, value in second.observations.items():
        assert th.equal(value, batches.observations[key][8:16])
    assert th.equal(second.actions, batches.actions[8:16]) and th.equal(second.rewards, batches.rewards[8:16])


@pytest.mark.parametrize("her", [False, True], ids=["ReplayBuffer", "HerReplayBuffer"])
def test_minibatches_are_sampled_together_only_where_rows_are_independent(her, monkeypatch):
    """SB3's plain buffers: one sample per SAMPLED_STEPS minibatches; HER (relabelled rows last): one per minibatch."""
    from sb3_pgext.offpac import cuda_graph

    her_kwargs = dict(replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=dict(n_sampled_goal=4)) if her else {}
    model = OffPAC("MultiInputPolicy", BitFlippingEnv(n_bits=4, continuous=True, max_steps=4), seed=0, **her_kwargs, **TINY)
    model.learn(64)
    sizes = []
    sample = model.replay_buffer.sample
    monkeypatch.setattr(model.replay_buffer, "sample", lambda n, env=None: sizes.append(n) or sample(n, env=env))
    monkeypatch.setattr(cuda_graph, "SAMPLED_STEPS", 2)
    batches = list(cuda_graph.minibatches(model.replay_buffer, 3, 8, None))
    assert len(batches) == 3 and all(batch.actions.shape[0] == 8 for batch in batches)
    assert sizes == ([8, 8, 8] if her else [16, 8])


def test_torch_keeps_the_default_of_distribution_checks_where_the_capture_reads_it():
    """The capture turns torch.distributions' argument checks off and restores the default it read from a private name."""
    original = th.distributions.Distribution._validate_args
    try:
        th.distributions.Distribution.set_default_validate_args(not original)
        assert th.distributions.Distribution._validate_args is (not original)
    finally:
        th.distributions.Distribution.set_default_validate_args(original)


def test_cuda_graph_is_off_on_the_cpu():
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", **TINY).learn(64)
    assert model.cuda_graph is None and model._cuda_graph_step is None


def graph_models(env_id: str, **kwargs) -> dict[bool, OffPAC]:
    """An eager and a captured model on CUDA from the same seed, their buffers filled, not trained yet."""
    models = {}
    for cuda_graph in (False, True):
        model = OffPAC("MlpPolicy", env_id, seed=3, device="cuda", cuda_graph=cuda_graph, **GRAPH_MODEL, **kwargs)
        models[cuda_graph] = model.learn(256)
        assert model._n_updates == 0
    return models


@needs_cuda
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"], ids=["Box", "Discrete"])
def test_cuda_graph_equals_eager_update(env_id):
    """
    100 gradient steps from the same state: the captured update runs the eager one's kernels on the same minibatches
    (numpy draws the rows of one sample of 100 minibatches as it draws 100 samples) and the same random stream (the
    graph advances the CUDA generator's offset as the eager kernels do): the parameters agree within float tolerance.
    """
    models = graph_models(env_id)
    streams = {}
    for cuda_graph, model in models.items():
        with isolated_random_streams(seed=0):  # both start from the same numpy and CUDA streams
            model.train(gradient_steps=100, batch_size=64)
            streams[cuda_graph] = (np.random.get_state()[1].copy(), th.cuda.get_rng_state())
    eager, captured = models[False], models[True]
    assert np.array_equal(streams[False][0], streams[True][0]), "the same rows drawn"
    assert th.equal(streams[False][1], streams[True][1]), "the CUDA generator advanced by as much"
    assert eager._cuda_graph_step is None and captured._cuda_graph_step.graph is not None
    assert captured._n_updates == eager._n_updates == 100
    eager_state, captured_state = eager.policy.state_dict(), captured.policy.state_dict()
    for key, value in eager_state.items():
        assert th.allclose(captured_state[key], value, rtol=1e-4, atol=1e-5), key
    for key in ("train/actor_loss", "train/critic_loss", "train/ent_coef", "train/entropy", "train/q_mean"):
        assert captured.logger.name_to_value[key] == pytest.approx(eager.logger.name_to_value[key], rel=1e-4, abs=1e-5), key


@needs_cuda
def test_cuda_graph_replays_draw_fresh_noise():
    """Two replays on the same minibatch with a learning rate of 0 (nothing changes) draw other actions (TorchRL #3002)."""
    model = graph_models("Pendulum-v1", learning_rate=0.0)[True]
    batch = model.replay_buffer.sample(64)
    step = model._captured_step(64)
    entropies = [step(batch)["entropy"].item() for _ in range(6)]  # 3 eager warm-up steps, a capture, replays
    assert step.graph is not None
    assert len(set(entropies[3:])) == 3, "each replay's sampled −log π differs"


@needs_cuda
def test_cuda_graph_learning_rate_schedule_without_recapture():
    """A schedule's rate reaches the graph through its tensor: rate 0 leaves the networks, the rate back trains them."""
    model = graph_models("Pendulum-v1")[True]
    model.train(gradient_steps=8, batch_size=64)
    graph = model._cuda_graph_step.graph
    networks = lambda: [p.detach().clone() for p in [*model.actor.parameters(), *model.critic.parameters()]]  # noqa: E731
    model.lr_schedule = lambda _: 0.0
    before = networks()
    model.train(gradient_steps=4, batch_size=64)
    assert all(th.equal(a, b) for a, b in zip(before, networks()))
    assert model.logger.name_to_value["train/learning_rate"] == 0.0
    model.lr_schedule = lambda _: 1e-3
    model.train(gradient_steps=4, batch_size=64)
    assert not all(th.equal(a, b) for a, b in zip(before, networks()))
    assert model._cuda_graph_step.graph is graph


@needs_cuda
@pytest.mark.parametrize("gradient_steps", [1, 4, 64])
def test_cuda_graph_gradient_steps(gradient_steps, tmp_path):
    """Training with 1, 4 and 64 gradient steps per call, then save, load and train on: captured, finite losses."""
    model = OffPAC(
        "MlpPolicy", "Pendulum-v1", seed=0, device="cuda", train_freq=gradient_steps, gradient_steps=gradient_steps, **GRAPH_MODEL
    ).learn(256 + 8 * gradient_steps)
    assert model._cuda_graph_step is not None and model._cuda_graph_step.graph is not None
    assert model._n_updates >= 4
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])
    model.save(tmp_path / "model")
    loaded = OffPAC.load(tmp_path / "model", env=model.get_env(), device="cuda")
    assert loaded._cuda_graph_step is None
    loaded.learn(8 * gradient_steps, reset_num_timesteps=False)
    assert loaded._cuda_graph_step.graph is not None and np.isfinite(loaded.logger.name_to_value["train/actor_loss"])
    assert all(isinstance(group["lr"], float) and not group["capturable"] for group in _saved_param_groups(tmp_path / "model.zip"))


def _saved_param_groups(path: Path) -> list[dict]:
    from stable_baselines3.common.save_util import load_from_zip_file

    _, params, _ = load_from_zip_file(path, device="cpu", load_data=False)
    return [group for name, state in params.items() if name.endswith("optimizer") for group in state["param_groups"]]


@needs_cuda
def test_cuda_graph_failed_capture_falls_back_with_one_warning(monkeypatch):
    """A capture that fails warns once, with the reason, and the model trains eagerly with float learning rates."""

    def fail(*args, **kwargs):
        raise RuntimeError("capture refused by the test")

    monkeypatch.setattr(th.cuda.CUDAGraph, "capture_begin", fail)
    model = graph_models("Pendulum-v1")[True]
    with pytest.warns(RuntimeWarning, match="capture refused by the test") as record:
        model.train(gradient_steps=8, batch_size=64)
        model.train(gradient_steps=8, batch_size=64)
    assert len([warning for warning in record if "CUDA graph" in str(warning.message)]) == 1
    assert model._cuda_graph_failed and model._captured_step(64) is None and model._n_updates == 16
    assert all(isinstance(group["lr"], float) and not group["capturable"] for opt in model._optimizers() for group in opt.param_groups)
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
        ("Pendulum-v1", dict(cuda_graph="yes"), "cuda_graph"),
        ("Pendulum-v1", dict(cuda_graph=True, device="cpu"), "cuda_graph=True needs a CUDA device"),
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
