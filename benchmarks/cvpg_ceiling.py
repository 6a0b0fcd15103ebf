"""
The most an action-dependent control variate can remove on Pendulum-v1: corr(Â, A^π)², from Monte-Carlo
advantages (Tucker et al. 2018, https://arxiv.org/abs/1802.10031, measure the same kind of ceiling).

A control variate subtracts a function of (s, a) from the rollout's advantage estimate Â (GAE). The part of
Â that any such function can match is E[Â | s, a] ≈ A^π(s, a); the rest comes from what happened after the
action. So Var(Â − φ(s, a)) ≥ (1 − corr(Â, A^π)²) Var(Â): a perfect critic leaves 1 − corr² of Â's variance.

At checkpoints of CVPG's training with ``hyperparams/cvpg.yml``'s Pendulum-v1 entry, one rollout is collected
and prepared as ``train()`` prepares it (Â, and the critic's Ā). For ``--states`` of its samples, Q^π(s, a) and
V^π(s) are estimated by ``--rollouts`` continuations each, restarted from the sample's state (Pendulum's state
(θ, θ̇) is read from its observation (cos θ, sin θ, θ̇)) with the env's dynamics, vectorised, for ``--horizon``
steps of γ-discounted reward (γ^horizon is negligible), the first action the sample's (for Q) or drawn from π
(for V), then π's actions: A^π = Q^π − V^π. Continuations draw π's per-state Gaussian afresh at each step
(gSDE's noise, held for ``sde_sample_freq`` steps in training, is not). The Monte-Carlo noise of A^π is
corrected for: the continuations are split in two halves, and the correlations are divided by the square
root of the split-half reliability (Spearman–Brown), so they estimate the correlations with the exact A^π.

    python benchmarks/cvpg_ceiling.py --seeds 0 1 2 --checkpoints 20000 60000 100000

Writes ``benchmarks/results/cvpg_ceiling.json``; ``python benchmarks/cvpg_benchmark.py report`` tabulates it.
"""

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch as th
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from sb3_pgext import CVPG
from sb3_pgext.common.buffers import flat_actions, flat_observations
from sb3_pgext.common.hyperparams import load_hyperparams
from sb3_pgext.train import build_model

RESULTS = Path(__file__).parent / "results" / "cvpg_ceiling.json"
DYNAMICS = PendulumEnv()  # g, m, l, dt, max_speed, max_torque of the env


def pendulum_step(theta: th.Tensor, theta_dot: th.Tensor, u: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Pendulum-v1's ``step`` on tensors of states: (new θ, new θ̇, reward)."""
    env = DYNAMICS
    u = th.clamp(u, -env.max_torque, env.max_torque)
    normalized = ((theta + math.pi) % (2 * math.pi)) - math.pi
    reward = -(normalized**2 + 0.1 * theta_dot**2 + 0.001 * u**2)
    theta_dot = theta_dot + (3 * env.g / (2 * env.l) * th.sin(theta) + 3.0 / (env.m * env.l**2) * u) * env.dt
    theta_dot = th.clamp(theta_dot, -env.max_speed, env.max_speed)
    return theta + theta_dot * env.dt, theta_dot, reward


def check_dynamics() -> None:
    """The vectorised step equals the env's own on random states and actions."""
    env, generator = PendulumEnv(), np.random.default_rng(0)
    for _ in range(20):
        state, u = generator.uniform([-np.pi, -8], [np.pi, 8]), generator.uniform(-3, 3, size=1)
        env.state = state.copy()
        obs, reward, *_ = env.step(u.astype(np.float32))
        theta, theta_dot, ours = pendulum_step(th.tensor([state[0]]), th.tensor([state[1]]), th.tensor(u, dtype=th.float64))
        assert np.allclose([np.cos(theta.item()), np.sin(theta.item()), theta_dot.item()], obs, atol=1e-5)
        assert abs(ours.item() - reward) < 1e-5


@th.no_grad()
def discounted_returns(model: CVPG, theta: th.Tensor, theta_dot: th.Tensor, first: th.Tensor | None, horizon: int) -> th.Tensor:
    """One continuation per entry: Σ_t γ^t r_t from (θ, θ̇), first action ``first`` (None: from π), then π's."""
    total, discount = th.zeros_like(theta), 1.0
    for step in range(horizon):
        if step == 0 and first is not None:
            u = first
        else:
            obs = th.stack([th.cos(theta), th.sin(theta), theta_dot], dim=1).float()
            u = model.policy.get_distribution(obs).distribution.sample()[:, 0].double()
        theta, theta_dot, reward = pendulum_step(theta, theta_dot, u)
        total += discount * reward
        discount *= model.gamma
    return total


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def measure(model: CVPG, n_states: int, n_rollouts: int, horizon: int, generator: np.random.Generator) -> dict[str, float]:
    """One rollout prepared as train() prepares it; corr(Â, A^π), corr(Ā, A^π), corr(Â, Ā) on ``n_states`` of its samples."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None, reset_num_timesteps=False)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    model._train_logs = defaultdict(list)
    model._begin_update()
    buffer = model.rollout_buffer
    index = generator.choice(buffer.buffer_size * buffer.n_envs, size=n_states, replace=False)
    obs = th.as_tensor(flat_observations(buffer)[index])
    actions = th.as_tensor(flat_actions(buffer)[index])
    advantages = buffer.plain_advantages[index]
    cv, _ = model._control_variate(obs, model.policy.get_distribution(obs), actions)
    theta = th.atan2(obs[:, 1], obs[:, 0]).double().repeat_interleave(n_rollouts)
    theta_dot = obs[:, 2].double().repeat_interleave(n_rollouts)
    q = discounted_returns(model, theta, theta_dot, actions[:, 0].double().repeat_interleave(n_rollouts), horizon)
    v = discounted_returns(model, theta, theta_dot, None, horizon)
    halves = (q - v).reshape(n_states, 2, n_rollouts // 2).mean(dim=2).numpy()  # A^π from each half of the continuations
    split_half = correlation(halves[:, 0], halves[:, 1])
    reliability = 2 * split_half / (1 + split_half)  # of the mean over all continuations (Spearman–Brown)
    true_advantage = halves.mean(axis=1)
    corr_true = correlation(advantages, true_advantage) / math.sqrt(reliability)
    return dict(
        corr_adv_true=corr_true,
        ceiling_share=corr_true**2,
        corr_cv_true=correlation(cv.numpy(), true_advantage) / math.sqrt(reliability),
        corr_adv_cv=correlation(advantages, cv.numpy()),
        reliability=reliability,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--checkpoints", nargs="+", type=int, default=[20_000, 60_000, 100_000])
    parser.add_argument("--states", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=64, help="continuations per state for Q and for V (even)")
    parser.add_argument("--horizon", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    th.set_num_threads(1)
    check_dynamics()
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    for seed in args.seeds:
        if {r["timesteps"] for r in results if r["seed"] == seed} >= set(args.checkpoints):
            continue  # resumable by seed: a seed's checkpoints are measured along one training run
        results = [r for r in results if r["seed"] != seed]
        model = build_model(CVPG, "Pendulum-v1", load_hyperparams("cvpg", "Pendulum-v1"), seed, device="cpu")
        generator = np.random.default_rng(seed)
        for checkpoint in sorted(args.checkpoints):
            model.learn(checkpoint - model.num_timesteps, reset_num_timesteps=False)
            row = dict(seed=seed, timesteps=checkpoint, **measure(model, args.states, args.rollouts, args.horizon, generator))
            row.update(states=args.states, rollouts=args.rollouts, horizon=args.horizon)
            print(json.dumps(row), flush=True)
            results.append(row)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
