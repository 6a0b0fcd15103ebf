"""
How much of the action term Σ_a is the value function's error, and how much is the advantage itself, for
one model trained for ``--steps``: :func:`sb3_pgext.variance_decomposition` with the model's value baseline,
and its ``true_value`` row (φ = V^π, the true value, its action term estimated without bias from the same
draws). A value function's error e(s) = V(s) − V^π(s) enters the action term through Var_a(∇ log π(a|s)) e(s)²
and cross terms: a state-dependent error that only a better value function removes and that CVPG's control
variate, centred on E_a, cannot. What is left with V^π, E_s tr Var_a(∇ log π A^π), is the part an
action-dependent φ can cut.

    python benchmarks/value_error_share.py --env HalfCheetah-v5 --steps 100000 --seeds 0

Results are appended to ``benchmarks/results/value_error_share.json``.
"""

import argparse
import json
import time
from pathlib import Path

import torch as th

from sb3_pgext import variance_decomposition
from variance_benchmark import build

RESULTS = Path(__file__).parent / "results" / "value_error_share.json"


def action_terms(model, n_states: int, seed: int) -> dict[str, float]:
    """The action term with the model's V and with V^π (same draws), the trajectory and state terms."""
    terms = variance_decomposition(model, n_states=n_states, n_actions=8, n_rollouts=8, seed=seed)
    true_value = terms["true_value"]
    return {
        "V": terms["action"], "V_se": terms["action_se"], "V_pi": true_value["action"], "V_pi_se": true_value["action_se"],
        "trajectory": terms["trajectory"], "state": terms["state"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--variant", default="PPO", choices=["PPO", "CVPG", "PPO-horizon"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--states", type=int, default=48)
    args = parser.parse_args()
    th.set_num_threads(1)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    for seed in args.seeds:
        start = time.perf_counter()
        model = build(args.variant, args.env, seed)
        model.learn(args.steps)
        terms = action_terms(model, args.states, seed)
        result = dict(env=args.env, variant=args.variant, steps=args.steps, seed=seed, **terms)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)
        results.append(result)
        RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
