"""
CVPG benchmark: learning (final deterministic evaluation over seeds), the measured gradient variance
with / without the control variate along training, and speed side by side with SB3 PPO, with the
hyperparameters of ``hyperparams/cvpg.yml`` (rl_zoo3's PPO entries plus the Q critic's settings).

Variants, all with the same yml entry:
  - ``CVPG``: the entry as it is (CVPG's defaults for what it does not set);
  - ``CVPG-<control variate>-<η rule>``: the same with that control variate and η rule, the critic fitted
    onto the advantages (the comparisons that chose the defaults);
  - ``PPO``: SB3's PPO with the entry: the zoo's PPO, and also CVPG with control_variate="none"
    (bit-identical to PPO, tested), so that variant is not run twice.

Every CVPG learning run logs, at each update and on the same rollout, the variance of its policy-gradient
estimator with and without the control variate (``train/grad_var``, ``train/grad_var_no_cv``; 16
minibatches, see ``sb3_pgext.gradient_variance``), corr(Â, Ā) and η. The MuJoCo runs need
``pip install "gymnasium[mujoco]"``.

    python benchmarks/cvpg_benchmark.py learning --envs Pendulum-v1 HalfCheetah-v5 Hopper-v5 --variants CVPG PPO
    python benchmarks/cvpg_benchmark.py speed --envs Pendulum-v1 HalfCheetah-v5 --steps 20000 --repeats 5
    python benchmarks/cvpg_ceiling.py --seeds 0 1 2     (the Monte-Carlo ceiling on Pendulum-v1)
    python benchmarks/cvpg_predictability.py --env Pendulum-v1 --seeds 0 1 2     (what a critic can learn of Â)
    python benchmarks/cvpg_benchmark.py report

Results are written under ``benchmarks/results/`` (JSON, and the report ``cvpg.md``); a finished run is
kept as soon as it ends, so an interrupted ``learning`` command resumes where it stopped.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO

from bench_common import Benchmark, main
from sb3_pgext import CVPG
from sb3_pgext.common.hyperparams import load_hyperparams
from sb3_pgext.train import build_model

BUDGETS = {"Pendulum-v1": 100_000, "HalfCheetah-v5": 200_000, "Hopper-v5": 200_000}
TRACE_KEYS = ("train/grad_var", "train/grad_var_no_cv", "train/cv_corr", "train/eta_mean")
#: each variant's overrides of the yml entry (None: SB3's PPO)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "CVPG": {},
    **{
        f"CVPG-{cv}-{eta}": dict(control_variate=cv, eta=eta, qf_target="advantages")
        for cv in ("taylor", "reparameterization")
        for eta in ("adaptive", "conservative")
    },
    "PPO": None,
}


def _build(variant: str, env_id: str, seed: int, log_grad_var: bool):
    hyperparams = load_hyperparams("cvpg", env_id)
    overrides = VARIANTS[variant]
    if overrides is None:
        for key in [k for k in hyperparams.model_kwargs if k.startswith("qf_") or k in ("eta", "control_variate")]:
            del hyperparams.model_kwargs[key]
        model = build_model(PPO, env_id, hyperparams, seed, device="cpu")
    else:
        hyperparams.model_kwargs.update(overrides)
        model = build_model(CVPG, env_id, hyperparams, seed, device="cpu", log_grad_var=log_grad_var)
    return model, BUDGETS.get(env_id, hyperparams.n_timesteps)


def build(variant: str, env_id: str, seed: int):
    """The model of ``variant`` on ``env_id`` with the cvpg.yml entry (variance logged), and its budget."""
    return _build(variant, env_id, seed, log_grad_var=True)


def build_for_speed(variant: str, env_id: str, seed: int):
    """As :func:`build`, without the variance measurement (it costs two extra passes per update)."""
    return _build(variant, env_id, seed, log_grad_var=False)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over seeds (a fixed resampling seed: the report is reproducible)."""
    resamples = np.random.default_rng(seed).choice(values, size=(n_resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(resamples, [2.5, 97.5])
    return float(low), float(high)


def variance_report(runs: list[dict[str, Any]]) -> list[str]:
    """
    Per env and CVPG variant: the final return's mean with its 95% CI beside PPO's; the ratio var(with CV) /
    var(without) over all updates of all seeds; corr(Â, Ā) and η.
    """
    lines = [
        "## Final return with 95% CIs, and the gradient variance with / without the control variate",
        "",
        "Final return: mean over seeds of the deterministic evaluation, with a 95% percentile-bootstrap interval. "
        "Variance: at every update, on the same rollout, tr Cov of the 16 minibatch policy-gradient estimates with "
        "the control variate over the same without it; updates of all seeds pooled (median, first / last third of "
        "training, share of updates below 1). corr(Â, Ā): the correlation of the rollout's advantages with the "
        "critic's control variate; 1 − corr²: the share of Â's variance that Â − η*Ā keeps with the best η for the "
        "rollout, the most this critic's Ā can remove from the advantages; η: its mean weight; medians over updates.",
        "",
        "| env | variant | seeds | final return [95% CI] | updates | median ratio | first third | last third | ratio < 1 "
        "| corr(Â, Ā) | 1 − corr² | η |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env_id in dict.fromkeys(r["env"] for r in runs):
        for variant in VARIANTS:
            cell = [r for r in runs if r["env"] == env_id and r["variant"] == variant]
            if not cell:
                continue
            returns = np.array([r["mean_return"] for r in cell])
            low, high = bootstrap_ci(returns)
            row = f"| {env_id} | {variant} | {len(cell)} | {returns.mean():.1f} [{low:.1f}, {high:.1f}] |"
            ratios, early, late, corr, eta = [], [], [], [], []
            for run in (r for r in cell if "trace" in r and r["trace"].get("train/grad_var")):
                trace = run["trace"]
                ratio = np.array(trace["train/grad_var"]) / np.array(trace["train/grad_var_no_cv"])
                third = max(len(ratio) // 3, 1)
                ratios += list(ratio)
                early += list(ratio[:third])
                late += list(ratio[-third:])
                corr += trace.get("train/cv_corr", [])
                eta += trace.get("train/eta_mean", [])
            if ratios:
                row += (
                    f" {len(ratios)} | {np.median(ratios):.3f} | {np.median(early):.3f} | {np.median(late):.3f} "
                    f"| {np.mean(np.array(ratios) < 1):.0%} | {np.median(corr):.3f} | {np.median(1 - np.square(corr)):.3f} "
                    f"| {np.median(eta):.2f} |"
                )
            else:
                row += " | | | | | | | |"
            lines.append(row)
    return lines


def ceiling_report() -> list[str]:
    """The Monte-Carlo ceiling of ``cvpg_ceiling.py`` per checkpoint, mean over its seeds (nothing if not measured)."""
    path = Path(__file__).parent / "results" / "cvpg_ceiling.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    lines = [
        "## Pendulum-v1: the most any action-dependent control variate can remove (`cvpg_ceiling.py`)",
        "",
        f"Monte-Carlo advantages A^π at {rows[0]['states']} samples of one rollout per checkpoint, {rows[0]['rollouts']} "
        f"continuations each for Q^π and V^π over {rows[0]['horizon']} steps, correlations corrected for the "
        "Monte-Carlo noise (split-half reliability). A perfect critic leaves 1 − corr(Â, A^π)² of Â's variance; "
        "corr(Ā, A^π) is how well CVPG's Ā tracks A^π. Mean over seeds.",
        "",
        "| steps | seeds | corr(Â, A^π) | share a perfect critic removes, corr(Â, A^π)² | corr(Ā, A^π) | corr(Â, Ā) | reliability |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for steps in sorted({r["timesteps"] for r in rows}):
        cell = [r for r in rows if r["timesteps"] == steps]
        mean = {key: float(np.mean([r[key] for r in cell])) for key in ("corr_adv_true", "ceiling_share", "corr_cv_true", "corr_adv_cv", "reliability")}
        lines.append(
            f"| {steps:,} | {len(cell)} | {mean['corr_adv_true']:.2f} | {mean['ceiling_share']:.2f} | {mean['corr_cv_true']:.2f} "
            f"| {mean['corr_adv_cv']:.2f} | {mean['reliability']:.2f} |"
        )
    return [*lines, ""]


def predictability_report() -> list[str]:
    """The cross-fitted shares of ``cvpg_predictability.py``: median per third of training, mean over seeds."""
    path = Path(__file__).parent / "results" / "cvpg_predictability.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    lines = [
        "## What a critic can learn of Â (`cvpg_predictability.py`)",
        "",
        "The share of Var(Â) (centred) that a critic of CVPG's design explains, cross-fitted: two critics, each "
        "fitted onto Â of one fold of every rollout (the given passes over it) and applied to the other; "
        "\"earlier\": before it sees the current rollout (as CVPG's critic builds Ā), \"same rollout\": after "
        "fitting the current rollout's other fold. State part: Q_w(s, m(s)); action part: Q_w(s, a) − Q_w(s, m(s)). "
        "Each fold's least-squares weights come from the other fold. Median over the rollouts of each third of "
        "training, then mean over seeds; 0 means no weighting of the critic cuts Â's variance at all. \"trained "
        "with\": the settings of the CVPG policy that trained (its defaults when the run was measured).",
        "",
        "| env | variant | trained with | passes | seeds | third | earlier: state | action | both | same rollout: state | action | both |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = [f"{source}/{part}" for source in ("earlier", "same rollout") for part in ("state", "action", "both")]

    def trained_with(run: dict[str, Any]) -> str:
        return ", ".join(f"{key}={value}" for key, value in sorted(run.get("settings", {}).items()))

    for env, variant, settings, passes in sorted({(r["env"], r["variant"], trained_with(r), r["passes"]) for r in runs}):
        cell = [r for r in runs if (r["env"], r["variant"], trained_with(r), r["passes"]) == (env, variant, settings, passes)]
        for third, name in enumerate(("first", "second", "last")):
            medians = [
                {key: float(np.median([row[key] for row in np.array_split(np.array(run["rows"], dtype=object), 3)[third]])) for key in keys}
                for run in cell
            ]
            values = " | ".join(f"{np.mean([m[key] for m in medians]):.3f}" for key in keys)
            lines.append(f"| {env} | {variant} | {settings} | {passes} | {len(cell)} | {name} | {values} |")
    return [*lines, ""]


def report(runs: list[dict[str, Any]]) -> list[str]:
    return [*variance_report(runs), "", *ceiling_report(), *predictability_report()]


BENCHMARK = Benchmark(
    name="cvpg",
    title="CVPG benchmark",
    build=build,
    variants=tuple(VARIANTS),
    thresholds={},
    learning_envs=list(BUDGETS),
    learning_variants=["CVPG", "PPO"],
    speed_envs=["Pendulum-v1"],
    speed_variants=("CVPG", "PPO"),
    reference="PPO",
    speed_steps=20_000,
    speed_repeats=5,
    learning_note=(
        "Measured with CVPG's earlier defaults (centered_cv=True, 10 critic passes per rollout); the current "
        "defaults are measured by the `cvpg-variance` suite (benchmark/cvpg-variance/benchmark.md). "
        "Hyperparameters: `hyperparams/cvpg.yml` (rl_zoo3's PPO entries plus the Q critic's settings); budgets: "
        "Pendulum-v1 100k, HalfCheetah-v5 and Hopper-v5 200k steps. PPO is also CVPG with control_variate=\"none\" "
        "(bit-identical, tested)."
    ),
    speed_note="Whole `learn()` runs, without the variance measurement, CVPG with its current defaults; its Q critic's updates are included.",
    trace_keys=TRACE_KEYS,
    speed_build=build_for_speed,
    extra_report=report,
)

if __name__ == "__main__":
    main(BENCHMARK, __doc__)
