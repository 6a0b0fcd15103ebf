"""
Can a Q critic predict the rollout's advantages at all? The cross-fitted share of Var(Â) that a critic Q_w(s, a)
explains, split into its state part and its action part, along training.

A control variate (or any baseline) can only remove the part of Â that is a function of (s, a) and that a
critic can learn from the data it may use. This measures that part directly, for CVPG's own critic design
(``qf_target="advantages"``: least squares of Q_w(s_t, a_t) onto Â_t, the value network's layers, Adam at 1e-3,
batches of 256, ``--passes`` shuffled passes per rollout), fitted beside training so that nothing in the run
changes (its random streams are isolated; :class:`sb3_pgext.CriticPredictabilityCallback`, which any run can
log):

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
import time
from pathlib import Path

import torch as th
from gymnasium import spaces

from sb3_pgext import CriticPredictabilityCallback
from variance_benchmark import BUDGETS, build

RESULTS = Path(__file__).parent / "results" / "cvpg_predictability.json"
SOURCES = ("earlier", "same rollout")
PARTS = ("state", "action", "both")


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
        callback = CriticPredictabilityCallback(args.passes, seed)
        model.learn(args.steps or BUDGETS[args.env], callback=callback)
        rows = [{key.replace("same_rollout", "same rollout"): value for key, value in row.items()} for row in callback.history]
        result = dict(
            env=args.env, variant=args.variant, seed=seed, steps=model.num_timesteps, passes=args.passes,
            settings=dict(centered_cv=model.centered_cv, qf_gradient_steps=model.q_critic.gradient_steps) if args.variant == "CVPG" else {},
            seconds=round(time.perf_counter() - start, 1), rows=rows,
        )  # fmt: skip
        print(json.dumps({key: value for key, value in result.items() if key != "rows"}), flush=True)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []  # read now: other runs may have added theirs
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps([*results, result], indent=1))


if __name__ == "__main__":
    main()
