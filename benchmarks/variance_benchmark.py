"""
Where the policy gradient's variance comes from, along training: Tucker et al.'s decomposition
(:func:`sb3_pgext.variance_decomposition`) at the start, middle and end of training, and the horizon-aware
value function against SB3's PPO, with the hyperparameters of ``hyperparams/cvpg.yml`` (rl_zoo3's PPO
entries; the MuJoCo runs need ``pip install "gymnasium[mujoco]"``).

Variants, all with the same yml entry:
  - ``CVPG``: the entry as it is (PPO's clipped surrogate plus CVPG's control variate). Each checkpoint is
    decomposed three times with the same seed (paired draws): the estimator with the value baseline alone,
    with CVPG's control variate (its default, the critic's whole prediction of Â) and with the centred one
    (``centered_cv=True``, Q-Prop's); the first gives the ceiling of φ = the true Q;
  - ``PPO``: SB3's PPO, decomposed with its value baseline;
  - ``PPO-horizon``: PPOKL with the penalty off and PPO's clipping (PPO, bit for bit, tested) and the
    horizon-aware value function, decomposed with its value baseline.

Checkpoints: after the first update, at half the budget and at the end (the model's state when the next
rollout starts: the policy, value function and critic just updated). A run keeps its final deterministic
evaluation (10 episodes) and the decompositions; a finished run is written as soon as it ends, so an
interrupted ``decompose`` resumes where it stopped.

    python benchmarks/variance_benchmark.py decompose --envs Pendulum-v1 HalfCheetah-v5 Hopper-v5 --variants CVPG PPO PPO-horizon --seeds 0 1 2 3 4
    python benchmarks/variance_benchmark.py report

Results: ``benchmarks/results/variance_decomposition.json``, the report ``variance.md`` and its figure
``variance_decomposition.png``.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from bench_common import run_learning_jobs
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from sb3_pgext import CVPG, PPOKL
from sb3_pgext.common.callbacks import decompose_estimators
from sb3_pgext.common.hyperparams import load_hyperparams
from sb3_pgext.suite.decomposition import plot_terms
from sb3_pgext.train import build_model, evaluate

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "variance_decomposition.json"
BUDGETS = {"Pendulum-v1": 100_000, "HalfCheetah-v5": 200_000, "Hopper-v5": 200_000}
VARIANTS = ("CVPG", "PPO", "PPO-horizon")
#: the decomposition's sample sizes: I states, J actions per state, K continuations per action
SIZES = dict(n_states=48, n_actions=8, n_rollouts=8)
N_EVAL_EPISODES = 10


def build(variant: str, env_id: str, seed: int) -> BaseAlgorithm:
    """The model of ``variant`` on ``env_id`` with the cvpg.yml entry."""
    hyperparams = load_hyperparams("cvpg", env_id)
    if variant == "CVPG":
        return build_model(CVPG, env_id, hyperparams, seed, device="cpu")
    for key in [k for k in hyperparams.model_kwargs if k.startswith("qf_") or k in ("eta", "control_variate")]:
        del hyperparams.model_kwargs[key]
    if variant == "PPO":
        return build_model(PPO, env_id, hyperparams, seed, device="cpu")
    # PPOKL with the penalty off and PPO's clipping is SB3's PPO (tested bit for bit); plus the horizon-aware value
    hyperparams.model_kwargs.setdefault("clip_range", 0.2)
    hyperparams.model_kwargs.update(kl_coef=0.0, adaptive_kl=False)
    return build_model(PPOKL, env_id, hyperparams, seed, device="cpu", horizon_aware_value=True)


def decompose(model: BaseAlgorithm, seed: int) -> dict[str, Any]:
    """
    The decomposition(s) of one checkpoint (:func:`sb3_pgext.common.callbacks.decompose_estimators`): "value" (the
    value baseline) and, for CVPG, "control_variate" and "control_variate_centered".
    """
    start = time.perf_counter()
    estimators = decompose_estimators(model, seed, **SIZES)  # type: ignore[arg-type]
    names = {"value_baseline": "value", "control_variate": "control_variate", "centred_cv": "control_variate_centered"}
    terms = {name: estimators[key] for key, name in names.items() if key in estimators}
    return dict(timesteps=model.num_timesteps, seconds=round(time.perf_counter() - start, 1), **terms)


class Checkpoints(BaseCallback):
    """Decomposes the model when a rollout starts at or after each checkpoint (the last one is left to the caller)."""

    def __init__(self, checkpoints: list[int], seed: int):
        super().__init__()
        self.pending, self.seed = list(checkpoints), seed
        self.results: list[dict[str, Any]] = []

    def _on_rollout_start(self) -> None:
        if self.pending and self.num_timesteps >= self.pending[0]:
            self.pending.pop(0)
            self.results.append(decompose(self.model, self.seed))

    def _on_step(self) -> bool:
        return True


def run(job: tuple[str, str, int]) -> dict[str, Any]:
    """Train one (variant, env, seed) for its budget, decomposing at the checkpoints, then evaluate it."""
    th.set_num_threads(1)
    variant, env_id, seed = job
    model = build(variant, env_id, seed)
    budget = BUDGETS[env_id]
    first_update = model.n_steps * model.n_envs
    checkpoints = Checkpoints([first_update, budget // 2], seed)
    start = time.perf_counter()
    model.learn(budget, callback=checkpoints)
    checkpoints.results.append(decompose(model, seed))
    mean, std = evaluate(model, env_id, seed, N_EVAL_EPISODES)
    result = dict(variant=variant, env=env_id, seed=seed, steps=budget, mean_return=mean, std_return=std)
    result.update(seconds=round(time.perf_counter() - start, 1), sizes=SIZES, checkpoints=checkpoints.results)
    print(json.dumps({k: v for k, v in result.items() if k != "checkpoints"}), flush=True)
    return result


# ---------------------------------------------------------------------------------------------- report

STAGES = ("start", "middle", "end")
ROWS = (  # (label, variant, decomposition, reference φ: None for the estimator's own)
    ("PPO, value baseline", "PPO", "value", None),
    ("PPO, φ = true V", "PPO", "value", "true_value"),
    ("CVPG, value baseline", "CVPG", "value", None),
    ("CVPG, control variate", "CVPG", "control_variate", None),
    ("CVPG, centred control variate", "CVPG", "control_variate_centered", None),
    ("CVPG, φ = true V", "CVPG", "value", "true_value"),
    ("CVPG, φ = true Q (ceiling)", "CVPG", "value", "ceiling"),
    ("PPO-horizon, value baseline", "PPO-horizon", "value", None),
)


#: the plot's tick labels of ROWS
SHORT_LABELS = {
    "PPO, value baseline": "PPO\nV",
    "PPO, φ = true V": "PPO\ntrue V",
    "CVPG, value baseline": "CVPG\nV",
    "CVPG, control variate": "CVPG\nV + CV",
    "CVPG, centred control variate": "CVPG\ncentred",
    "CVPG, φ = true V": "CVPG\ntrue V",
    "CVPG, φ = true Q (ceiling)": "CVPG\ntrue Q",
    "PPO-horizon, value baseline": "PPO-hor.\nV",
}


def _terms(run_: dict[str, Any], stage: int, key: str, reference: str | None) -> dict[str, float] | None:
    checkpoint = run_["checkpoints"][stage]
    if key not in checkpoint:
        return None
    terms = checkpoint[key]
    return terms if reference is None else terms.get(reference)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over seeds (fixed resampling seed: the report is reproducible)."""
    resamples = np.random.default_rng(seed).choice(values, size=(n_resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(resamples, [2.5, 97.5])
    return float(low), float(high)


def report(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Where the policy gradient's variance comes from",
        "",
        "Generated by `python benchmarks/variance_benchmark.py report` from `results/variance_decomposition.json`; "
        "runs: `python benchmarks/variance_benchmark.py decompose` (see its docstring). Tucker et al. (2018) "
        "decomposition of the per-sample estimator's variance (trace of covariance, raw advantages) into the state, "
        "action and trajectory terms, measured by `sb3_pgext.variance_decomposition` with "
        f"{SIZES['n_states']} states × {SIZES['n_actions']} actions × {SIZES['n_rollouts']} continuations per "
        "checkpoint. Checkpoints: after the first update (start), at half the budget (middle), at the end. "
        "Each term: mean over seeds, with the mean of the decompositions' own standard errors in brackets "
        "(the sampling error of one decomposition, not the spread over seeds). "
        "Share: the term's part of the total. The CVPG rows are paired: the same states, actions and "
        "continuations without and with the control variate (default and centred), each weighted by Q-Prop's "
        "η* for the current critic, cross-fitted between two halves of the states. φ = true V (a perfect value function, its action "
        "term estimated without bias from the same draws) leaves the part of the action term due to the "
        "advantage itself, so the value baseline's action term minus it is what the value function's error "
        "costs; the ceiling (φ = the true Q of the λ-return) has an action term of 0. All rows of a run share "
        "its state and trajectory terms.",
        "",
    ]
    envs = list(dict.fromkeys(r["env"] for r in runs))
    for env_id in envs:
        lines += [f"## {env_id}", "", "| stage | estimator | seeds | state | action | trajectory | total | action share |"]
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for stage, stage_name in enumerate(STAGES):
            for label, variant, key, reference in ROWS:
                cell = [r for r in runs if r["env"] == env_id and r["variant"] == variant]
                terms = [t for t in (_terms(r, stage, key, reference) for r in cell) if t is not None]
                if not terms:
                    continue
                means = {name: np.mean([t[name] for t in terms]) for name in ("state", "action", "trajectory", "total")}
                errors = {name: np.mean([t[f"{name}_se"] for t in terms]) for name in ("state", "action", "trajectory", "total")}
                row = f"| {stage_name} | {label} | {len(terms)} |"
                for name in ("state", "action", "trajectory", "total"):
                    row += f" {means[name]:.3g} [±{errors[name]:.2g}] |"
                share = np.mean([t["action"] / t["total"] for t in terms if t["total"] > 0])
                lines.append(row + f" {share:.1%} |")
        lines.append("")
    lines += ["## Final return: the horizon-aware value function against SB3's PPO (and CVPG)", ""]
    lines += ["| env | variant | seeds | final return [95% CI] | end: trajectory term | end: total |", "| --- | --- | --- | --- | --- | --- |"]
    for env_id in envs:
        for variant in VARIANTS:
            cell = [r for r in runs if r["env"] == env_id and r["variant"] == variant]
            if not cell:
                continue
            returns = np.array([r["mean_return"] for r in cell])
            low, high = bootstrap_ci(returns) if len(returns) > 1 else (returns[0], returns[0])
            end = [r["checkpoints"][-1]["value"] for r in cell]
            lines.append(
                f"| {env_id} | {variant} | {len(cell)} | {returns.mean():.1f} [{low:.1f}, {high:.1f}] "
                f"| {np.median([t['trajectory'] for t in end]):.3g} | {np.median([t['total'] for t in end]):.3g} |"
            )
    lines += ["", "End terms: medians over seeds of the value-baseline decomposition at the end of training.", ""]
    lines += ["![The decomposition per env and stage](variance_decomposition.png)", ""]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """The figure of :func:`sb3_pgext.suite.decomposition.plot_terms` for ROWS, per env and stage."""
    bars = {}
    for env_id in dict.fromkeys(r["env"] for r in runs):
        bars[env_id] = []
        for label, variant, key, reference in ROWS:
            cell = [r for r in runs if r["env"] == env_id and r["variant"] == variant]
            per_stage = [[t for t in (_terms(r, stage, key, reference) for r in cell) if t is not None] for stage in range(len(STAGES))]
            bars[env_id].append((SHORT_LABELS[label], per_stage))
    plot_terms(bars, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runs_parser = commands.add_parser("decompose", help="train and decompose (resumable)")
    runs_parser.add_argument("--envs", nargs="+", default=list(BUDGETS))
    runs_parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    runs_parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    runs_parser.add_argument("--workers", type=int, default=2)
    commands.add_parser("report", help="write variance.md and its figure from the results")
    args = parser.parse_args()
    if args.command == "decompose":
        unknown = [env_id for env_id in args.envs if env_id not in BUDGETS]
        if unknown:
            parser.error(f"--envs: no budget for {unknown}; known: {list(BUDGETS)}")
        jobs = [(variant, env_id, seed) for seed in args.seeds for env_id in args.envs for variant in args.variants]
        run_learning_jobs(RUNS, run, jobs, args.workers)
    else:
        runs = json.loads(RUNS.read_text())
        (RESULTS / "variance.md").write_text(report(runs))
        plot(runs, RESULTS / "variance_decomposition.png")
        print(f"wrote {RESULTS / 'variance.md'}")


if __name__ == "__main__":
    main()
