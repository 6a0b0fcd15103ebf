"""sb3_pgext.gradient_variance: exact statistics, a known linear-Gaussian case, and the train/grad_var logs."""

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.envs import IdentityEnvBox

from sb3_pgext import PPOKL, OffPAC, gradient_variance
from sb3_pgext.common.gradient_variance import minibatch_gradient_statistics


def test_statistics_of_known_rows():
    rows = th.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]], dtype=th.float64)
    stats = minibatch_gradient_statistics(rows)
    # column variances (unbiased): 4 and 4; mean (3, 2)
    assert stats["variance"] == pytest.approx(8.0)
    assert stats["mean_sq_norm"] == pytest.approx(13.0)
    with pytest.raises(ValueError, match="n_minibatches"):
        minibatch_gradient_statistics(rows[:1])


N_STEPS, BASELINE_VALUE = 2048, 2.0


def linear_gaussian_model() -> PPOKL:
    """π(a|s) = N(w s + b, σ²) with w = b = 0, σ = 1: a linear policy, no hidden layers."""
    model = PPOKL(
        "MlpPolicy",
        IdentityEnvBox(),
        n_steps=N_STEPS,
        batch_size=64,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), log_std_init=0.0),
        seed=0,
    )
    with th.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.zero_()
    return model


def fill_rollout(model: PPOKL, generator: np.random.Generator) -> None:
    """s ∼ N(0, 1), a ∼ π(·|s) = N(0, 1), advantage Â = a, value V(s) = 2 (so the return is a + 2)."""
    buffer = model.rollout_buffer
    buffer.reset()
    obs = generator.standard_normal((N_STEPS, 1, 1)).astype(np.float32)
    actions = generator.standard_normal((N_STEPS, 1, 1)).astype(np.float32)
    for t in range(N_STEPS):
        buffer.add(obs[t], actions[t], np.zeros(1), np.zeros(1), th.full((1,), BASELINE_VALUE), th.zeros(1))
    buffer.advantages = actions[:, :, 0].copy()
    buffer.returns = buffer.advantages + BASELINE_VALUE


def test_linear_gaussian_case():
    """
    Per-sample gradients of log N(a; w s + b, σ²) · f at w = b = 0, σ = 1 with z = a:
    ∇_b = z f, ∇_w = z s f, ∇_log σ = (z² − 1) f. With f = Â = z their variances are 2, 3 and 10 (trace 15);
    without the baseline, f = z + 2, they are 2 + c², 3 + c² and 10 + 2c² (trace 15 + 4c² = 31).
    A minibatch of B samples averages them: the estimator's variance is trace / B.
    """
    model = linear_gaussian_model()
    generator = np.random.default_rng(0)
    n_minibatches, repeats = 32, 24
    measured = {True: [], False: []}
    for _ in range(repeats):
        fill_rollout(model, generator)
        for control_variate in (True, False):
            stats = gradient_variance(model, n_minibatches=n_minibatches, control_variate=control_variate)
            assert stats["minibatch_size"] == N_STEPS // n_minibatches and stats["n_minibatches"] == n_minibatches
            measured[control_variate].append(stats["variance"])
    batch = N_STEPS // n_minibatches
    for control_variate, trace in ((True, 15.0), (False, 15.0 + 4 * BASELINE_VALUE**2)):
        values = np.array(measured[control_variate])
        standard_error = values.std(ddof=1) / math.sqrt(repeats)
        assert abs(values.mean() - trace / batch) < 4 * standard_error, (values.mean(), trace / batch, standard_error)
    # the baseline's reduction, 31/15, seen on the same data
    ratio = np.mean(measured[False]) / np.mean(measured[True])
    assert 1.6 < ratio < 2.6


def test_a_model_without_a_rollout_is_refused_and_left_as_it_was():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="has none"):
        gradient_variance(model, n_minibatches=4)
    assert model.num_timesteps == 0 and not model.rollout_buffer.full, "nothing was collected"
    model.learn(64)
    stats = gradient_variance(model, n_minibatches=4)
    assert stats["minibatch_size"] == 16 and stats["variance"] > 0 and stats["mean_sq_norm"] > 0
    assert model.num_timesteps == 64
    with pytest.raises(ValueError, match="n_minibatches"):
        gradient_variance(model, n_minibatches=1)
    with pytest.raises(ValueError, match="n_minibatches"):
        gradient_variance(model, n_minibatches=65)


@pytest.mark.parametrize(
    "model_class, kwargs",
    [
        (PPOKL, dict(n_steps=64, batch_size=32, n_epochs=2)),
        (OffPAC, dict(learning_starts=64, batch_size=32, actor_gradient="likelihood")),
    ],
)
def test_logging_grad_var_leaves_training_unchanged(model_class, kwargs):
    params = []
    for log_grad_var in (False, True):
        model = model_class("MlpPolicy", "Pendulum-v1", seed=0, log_grad_var=log_grad_var, policy_kwargs=dict(net_arch=[16]), **kwargs)
        model.learn(192)
        params.append(th.cat([p.detach().flatten() for p in model.policy.parameters()]))
        logged = "train/grad_var" in model.logger.name_to_value
        assert logged == log_grad_var
    assert model.logger.name_to_value["train/grad_var"] > 0
    assert th.equal(params[0], params[1]), "measuring the variance must not change the random streams or the update"


def test_offpac_leave_one_out_baseline_cuts_variance(monkeypatch):
    model = OffPAC("MlpPolicy", "Pendulum-v1", seed=0, learning_starts=64, batch_size=64, actor_gradient="likelihood",
                   ent_coef=0.0, policy_kwargs=dict(net_arch=[16]))
    with pytest.raises(ValueError, match="replay buffer is empty"):
        gradient_variance(model)
    model.learn(128)

    def critic(obs, actions):  # a Q with a large part shared by every action of a state
        q = 100.0 + obs[:, :1] - ((actions - 0.3) ** 2).sum(dim=1, keepdim=True)
        return q, q

    monkeypatch.setattr(model.critic, "forward", critic)
    with_baseline = gradient_variance(model, n_minibatches=16)["variance"]
    without = gradient_variance(model, n_minibatches=16, control_variate=False)["variance"]
    # the leave-one-out baseline removes the shared 100 + s; without it, it multiplies every score
    assert without > 100 * with_baseline


def test_offpac_expected_has_no_action_noise():
    """"expected" sums over the actions, so only the states' sampling moves its gradient: no baseline to drop."""
    model = OffPAC("MlpPolicy", "CartPole-v1", seed=0, learning_starts=64, batch_size=64, policy_kwargs=dict(net_arch=[16]))
    model.learn(256)
    stats = [gradient_variance(model, n_minibatches=8, control_variate=flag) for flag in (True, False)]
    assert stats[0]["variance"] == stats[1]["variance"] and th.equal(stats[0]["mean"], stats[1]["mean"])


def test_sb3_models_are_measured_by_their_family_and_others_refused():
    """SB3's PPO is measured as the on-policy family is: the same as PPOKL with the penalty off, trained the same."""
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=dict(net_arch=[16]))
    ppo = PPO("MlpPolicy", "CartPole-v1", **kwargs).learn(64)
    ppokl = PPOKL("MlpPolicy", "CartPole-v1", clip_range=0.2, kl_coef=0.0, adaptive_kl=False, **kwargs).learn(64)
    for control_variate in (True, False):
        ours, theirs = gradient_variance(ppokl, 4, control_variate), gradient_variance(ppo, 4, control_variate)
        assert ours["variance"] == theirs["variance"] > 0 and th.equal(ours["mean"], theirs["mean"])
    with pytest.raises(TypeError, match="not DQN"):
        gradient_variance(DQN("MlpPolicy", "CartPole-v1", learning_starts=0).learn(64))
