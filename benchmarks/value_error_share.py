"""
How much of the action term Σ_a is the value function's error, and how much is the action dependence that
an action-dependent control variate could cut: one model, the action term of the per-sample estimator with
three state baselines on the same draws (see :mod:`sb3_pgext.common.variance_decomposition`):

  - V: the model's value function, as trained;
  - V^π: the true value of the state, estimated from the continuations of the *other* actions drawn at that
    state (leave-one-out, so that it does not depend on the action it is applied to). Its Monte-Carlo noise
    adds to the action term (by O(1/J)): what is left is an upper bound on the part no state baseline removes;
  - Q^π (the ceiling): the action term is 0.

A value function's error e(s) = V(s) − V^π(s) enters the action term as Var_a(∇log π(a|s)) e(s)²: it is a
state-dependent error that only a better value function removes, while CVPG's control variate, centred on
E_a, cannot. Σ_a(V) − Σ_a(V^π) is that part.

    python benchmarks/value_error_share.py --env HalfCheetah-v5 --steps 100000 --seeds 0 1

Results are appended to ``benchmarks/results/value_error_share.json``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch as th

from sb3_pgext.common.variance_decomposition import _env_factory, _Measurement
from sb3_pgext.common.utils import isolated_random_streams
from variance_benchmark import build

RESULTS = Path(__file__).parent / "results" / "value_error_share.json"


def action_terms(model, n_states: int, n_actions: int, n_rollouts: int, seed: int) -> dict[str, float]:
    """Mean over states of the action term with V and with V^π (leave-one-out), and the trajectory term."""
    make_env = _env_factory(model, None)
    gamma_lambda = model.gamma * model.gae_lambda
    horizon = max(1, int(np.ceil(np.log(1e-3) / np.log(gamma_lambda))))
    rows = []
    with isolated_random_streams(seed):
        measure = _Measurement(model, make_env, model.get_vec_normalize_env(), horizon, n_actions, n_rollouts, seed)
        try:
            for obs, saved in measure.visited_states(n_states, 20):
                obs_batch = measure._obs_tensor(np.stack([obs] * n_actions))
                measure._reset_noise(n_actions)
                with th.no_grad():
                    actions = measure.policy.get_distribution(obs_batch).get_actions()
                env_actions = np.repeat(measure._env_actions(actions), n_rollouts, axis=0)
                returns, state_value = measure._lambda_returns(obs, saved, env_actions)
                returns = returns.reshape(n_actions, n_rollouts)
                log_prob = measure.policy.get_distribution(obs_batch).log_prob(actions)
                scores = th.stack([measure._gradient(log_prob[j]) for j in range(n_actions)])
                sq_norms = (scores**2).sum(dim=1).numpy()
                mean_returns = returns.mean(axis=1)
                leave_one_out = (mean_returns.sum() - mean_returns) / (n_actions - 1)
                tau = float(np.mean(sq_norms * returns.var(axis=1, ddof=1)))
                row = {"trajectory": tau}
                for name, baseline in (("V", np.full(n_actions, state_value)), ("V_pi", leave_one_out)):
                    estimates = scores * th.as_tensor(mean_returns - baseline).unsqueeze(1)
                    row[name] = float(estimates.var(dim=0, unbiased=True).sum()) - tau / n_rollouts
                row["value_error"] = state_value - float(mean_returns.mean())
                rows.append(row)
        finally:
            measure.close()
    out = {key: float(np.mean([row[key] for row in rows])) for key in ("V", "V_pi", "trajectory")}
    out.update({f"{key}_se": float(np.std([row[key] for row in rows], ddof=1) / np.sqrt(len(rows))) for key in ("V", "V_pi")})
    out["rms_value_error"] = float(np.sqrt(np.mean([row["value_error"] ** 2 for row in rows])))
    return out


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
        terms = action_terms(model, args.states, 8, 8, seed)
        result = dict(env=args.env, variant=args.variant, steps=args.steps, seed=seed, **terms)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)
        results.append(result)
        RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
