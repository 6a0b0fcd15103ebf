"""
Can a Q critic predict the rollout's advantages at all? The cross-fitted share of Var(Â) that a critic Q_w(s, a)
explains, split into its state part and its action part, along training.

A control variate (or any baseline) can only remove the part of Â that is a function of (s, a) and that a
critic can learn from the data it may use. This measures that part directly, for CVPG's own critic design
(``qf_target="advantages"``: least squares of Q_w(s_t, a_t) onto Â_t, the value network's layers, Adam at 1e-3,
batches of 256, ``--passes`` shuffled passes per rollout), fitted beside training so that nothing in the run
changes (its random streams are isolated):

- two critics, one per fold of the rollout (the folds of :func:`sb3_pgext.common.estimators.rollout_folds`:
  half the envs, or the two halves of a single env's rollout), each fitted only on the other fold's samples of
  every rollout, so its predictions for its own fold never saw them;
- ``earlier``: the critic before it is fitted on the current rollout (it has seen earlier rollouts only, as
  CVPG's critic has when it builds Ā);
- ``same rollout``: the critic after it is fitted on the current rollout's other fold (Tucker et al.'s
  cross-fitting, on the freshest data there is).

Per rollout, with the state part c(s) = Q_w(s, m(s)) (m the mean of the executed action, as in CVPG's Taylor
expansion; Σ_a π(a|s) Q_w(s, a) for finite action sets) and the action part d(s, a) = Q_w(s, a) − c(s), the
explained share is R² = 1 − Var(Â − b − β·x) / Var(Â), with the least-squares b and β of each fold taken from
the other fold (x = c, d or both). Var(Â) is centred: the mean offset of Â is excluded (PPO's per-minibatch
advantage normalisation removes it anyway). A share near 0 says no critic of this design, however it is
weighted, cuts Â's variance: what the value function misses is not learnable from the rollout.

    python benchmarks/cvpg_predictability.py --env Pendulum-v1 --variant CVPG --seeds 0 1 2

Appends to ``benchmarks/results/cvpg_predictability.json``; ``python benchmarks/cvpg_benchmark.py report``
tabulates it (median over the rollouts of each third of training, then mean over seeds).
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from sb3_pgext.common.buffers import flat_actions, flat_array, flat_observations
from sb3_pgext.common.estimators import clipped_gaussian_mean, rollout_folds
from sb3_pgext.common.utils import isolated_random_streams
from sb3_pgext.cvpg.critic import QCritic, joint_action_probs
from variance_benchmark import BUDGETS, build

RESULTS = Path(__file__).parent / "results" / "cvpg_predictability.json"
SOURCES = ("earlier", "same rollout")
PARTS = ("state", "action", "both")


def crossfit_r2(targets: np.ndarray, features: np.ndarray, folds: np.ndarray) -> float:
    """1 − Var(residual) / Var(targets), each fold's least-squares intercept and slopes taken from the other folds."""
    residuals = np.empty_like(targets)
    for fold in np.unique(folds):
        inside, others = folds == fold, folds != fold
        design = np.c_[np.ones(others.sum()), features[others]]
        coefficients, *_ = np.linalg.lstsq(design, targets[others], rcond=None)
        residuals[inside] = targets[inside] - np.c_[np.ones(inside.sum()), features[inside]] @ coefficients
    return float(1 - residuals.var() / targets.var())


class Predictability(BaseCallback):
    """Fits the two fold critics at the end of each rollout (after GAE) and records the explained shares."""

    def __init__(self, passes: int, seed: int):
        super().__init__()
        self.passes, self.seed = passes, seed
        self.critics: list[QCritic] = []
        self.rows: list[dict[str, Any]] = []

    def _on_training_start(self) -> None:
        policy = self.model.policy
        net_arch = policy.net_arch
        layers = list(net_arch.get("vf", [])) if isinstance(net_arch, dict) else list(net_arch)
        with isolated_random_streams(self.seed):
            self.critics = [
                QCritic(self.model.observation_space, self.model.action_space, policy.make_features_extractor, layers, policy.normalize_images)
                for _ in range(2)
            ]

    def _on_step(self) -> bool:
        return True

    def _parts(self, critic: QCritic, obs: th.Tensor, actions: th.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The state part c(s) and the action part Q_w(s, a) − c(s)."""
        with th.no_grad():
            distribution = self.model.policy.get_distribution(obs)
            if critic.choices is None:
                normal = distribution.distribution
                state = critic(obs, clipped_gaussian_mean(normal.mean, normal.stddev, critic.action_low, critic.action_high))
            else:
                state = (joint_action_probs(distribution, critic.choices) * critic(obs)).sum(dim=1)
            taken = critic.q_taken(obs, actions)
        return state.numpy().astype(np.float64), (taken - state).numpy().astype(np.float64)

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        advantages = flat_array(buffer, "advantages").astype(np.float64)
        obs = th.as_tensor(flat_observations(buffer))
        actions = th.as_tensor(flat_actions(buffer))
        folds = rollout_folds(buffer.buffer_size, buffer.n_envs).numpy()
        targets = th.as_tensor(advantages, dtype=th.float32)
        parts = {source: (np.empty_like(advantages), np.empty_like(advantages)) for source in SOURCES}
        with isolated_random_streams(self.seed + self.num_timesteps):
            for fold, critic in enumerate(self.critics):
                inside, others = th.as_tensor(folds == fold), th.as_tensor(folds != fold)
                for source in SOURCES:
                    if source == "same rollout":
                        critic.gradient_steps = math.ceil(self.passes * int(others.sum()) / critic.batch_size)
                        critic.requires_grad_(True)
                        critic.fit_rollout(obs[others], actions[others], targets[others])
                        critic.requires_grad_(False)
                    state, action = self._parts(critic, obs[inside], actions[inside])
                    parts[source][0][inside.numpy()], parts[source][1][inside.numpy()] = state, action
        row: dict[str, Any] = dict(timesteps=self.num_timesteps)
        for source, (state, action) in parts.items():
            features = dict(state=state[:, None], action=action[:, None], both=np.c_[state, action])
            for part in PARTS:
                row[f"{source}/{part}"] = crossfit_r2(advantages, features[part], folds)
        self.rows.append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", choices=sorted(BUDGETS))
    parser.add_argument("--variant", default="CVPG", choices=["CVPG", "PPO"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="timesteps (default: the env's budget)")
    parser.add_argument("--passes", type=int, default=10, help="passes over the other fold per rollout")
    args = parser.parse_args()
    th.set_num_threads(1)
    for seed in args.seeds:
        start = time.perf_counter()
        model = build(args.variant, args.env, seed)
        if not isinstance(model.action_space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
            raise ValueError(f"unsupported action space {model.action_space}")
        callback = Predictability(args.passes, seed)
        model.learn(args.steps or BUDGETS[args.env], callback=callback)
        result = dict(
            env=args.env, variant=args.variant, seed=seed, steps=model.num_timesteps, passes=args.passes,
            settings=dict(centered_cv=model.centered_cv, qf_gradient_steps=model.q_critic.gradient_steps) if args.variant == "CVPG" else {},
            seconds=round(time.perf_counter() - start, 1), rows=callback.rows,
        )  # fmt: skip
        print(json.dumps({key: value for key, value in result.items() if key != "rows"}), flush=True)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []  # read now: other runs may have added theirs
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps([*results, result], indent=1))


if __name__ == "__main__":
    main()
