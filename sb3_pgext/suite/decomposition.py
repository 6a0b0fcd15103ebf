"""
The report's "Where the variance comes from" section: the variance decompositions that
:class:`sb3_pgext.VarianceDecompositionCallback` logged into the runs' ``progress.csv``, read by stage, as tables
(beside the final returns) and a bar plot (:func:`~sb3_pgext.suite.plots.plot_terms`) in the style of Tucker et
al. (2018, https://arxiv.org/abs/1802.10031), Figure 1.
"""

from pathlib import Path
from textwrap import fill

import numpy as np

from sb3_pgext.common.callbacks import ESTIMATORS, STAGES
from sb3_pgext.common.variance_decomposition import TERMS
from sb3_pgext.suite.config import Suite, display
from sb3_pgext.suite.formatting import estimate
from sb3_pgext.suite.plots import plot_terms
from sb3_pgext.suite.results import Cell, read_progress
from sb3_pgext.suite.runner import jobs_of, read_result

PLOT = "variance_decomposition.png"
#: how each estimator is named in the table and (short) under the plot's bars
LABELS = {
    "value_baseline": ("value baseline", "V"),
    "control_variate": ("control variate", "V + CV"),
    "centred_cv": ("centred control variate", "centred"),
    "true_value": ("φ = true V", "true V"),
    "true_q": ("φ = true Q (ceiling)", "true Q"),
}

#: {stage: {estimator: {term (and term_se): value}}} of one run
Decompositions = dict[int, dict[str, dict[str, float]]]


def read_decompositions(progress: dict[str, np.ndarray]) -> Decompositions:
    """The decompositions one run logged (its :func:`~sb3_pgext.suite.results.read_progress` columns), by stage."""
    if "decomposition/stage" not in progress:
        return {}
    result: Decompositions = {}
    for row in np.flatnonzero(np.isfinite(progress["decomposition/stage"])):
        stage = int(progress["decomposition/stage"][row])
        result[stage] = {
            estimator: {
                name: float(progress[f"decomposition/{estimator}/{name}"][row])
                for term in TERMS
                for name in (term, f"{term}_se")
            }
            for estimator in ESTIMATORS
            if f"decomposition/{estimator}/total" in progress
            and np.isfinite(progress[f"decomposition/{estimator}/total"][row])
        }
    return result


def collect_decompositions(suite: Suite, out: Path) -> dict[tuple[str, str], list[Decompositions]]:
    """Per (env, algorithm), the decompositions of each finished run that logged some."""
    cells: dict[tuple[str, str], list[Decompositions]] = {}
    for job in jobs_of(suite):
        path = job.log_dir(out) / "progress.csv"
        if read_result(job, out) is None or not path.is_file():
            continue
        decompositions = read_decompositions(read_progress(path))
        if decompositions:
            cells.setdefault((job.env.env_id, job.algo), []).append(decompositions)
    return cells


#: one row of the section: (algorithm, estimator, per stage the terms of each run that measured it)
EstimatorTerms = tuple[str, str, list[list[dict[str, float]]]]


def _estimator_terms(suite: Suite, env_id: str, cells: dict[tuple[str, str], list[Decompositions]]) -> list[EstimatorTerms]:
    """The env's rows in table order (its algorithms, then :data:`ESTIMATORS`' order), those measured at all."""
    env = next(env for env in suite.envs if env.env_id == env_id)
    rows = []
    for algo in env.algos:
        runs = cells.get((env_id, algo), [])
        for estimator in ESTIMATORS:
            per_stage = [
                [run[stage][estimator] for run in runs if estimator in run.get(stage, {})] for stage in range(len(STAGES))
            ]
            if any(per_stage):
                rows.append((algo, estimator, per_stage))
    return rows


def decomposition_section(suite: Suite, out: Path, returns: dict[tuple[str, str], Cell]) -> list[str]:
    """
    The section (and its plot), or nothing when no finished run logged a decomposition; ``returns``: the report's
    cells (:func:`~sb3_pgext.suite.results.collect`), for the returns beside the variances.
    """
    cells = collect_decompositions(suite, out)
    if not cells:
        return []
    lines = [
        "## Where the variance comes from",
        "",
        (
            "Tucker et al. (2018)'s decomposition of the per-sample policy-gradient estimator's variance (trace of "
            "covariance, raw advantages) into the state, action and trajectory terms, logged by "
            "`sb3_pgext.VarianceDecompositionCallback` after the first update (start), at half the budget (middle) and "
            "at the end. Each term: mean over seeds, with the mean of the decompositions' own standard errors in "
            "brackets (the sampling error of one decomposition, not the spread over seeds); action share: the mean "
            "action term's part of the mean total (a ratio of means: a run's total can be near 0, or below it, since "
            "each term is an unbiased estimate), left blank where the mean total is within 2 standard errors of 0. "
            "A CVPG run's estimators are paired: the same states, actions "
            "and continuations without and with its control variate (default and centred), each weighted by Q-Prop's "
            "η* for the current critic. φ = true V (a perfect value function) leaves the part of the action term due "
            "to the advantage itself, so the value baseline's action term minus it is what the value function's error "
            "costs; φ = true Q, the ceiling of any action-dependent control variate, has an action term of 0. A run's "
            "estimators share its state and trajectory terms."
        ),
        "",
    ]
    by_env = {env.env_id: rows for env in suite.envs if (rows := _estimator_terms(suite, env.env_id, cells))}
    lines += return_beside_variance(suite, returns, by_env)
    for env_id, rows in by_env.items():
        lines += [
            f"### {env_id}",
            "",
            "| stage | algorithm | estimator | seeds | state | action | trajectory | total | action share |",
        ]
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for stage, stage_name in enumerate(STAGES):
            for algo, estimator, per_stage in rows:
                terms = per_stage[stage]
                if not terms:
                    continue
                row = f"| {stage_name} | {display(algo, suite)} | {LABELS[estimator][0]} | {len(terms)} |"
                for term in TERMS:
                    row += f" {np.mean([t[term] for t in terms]):.3g} [±{np.mean([t[f'{term}_se'] for t in terms]):.2g}] |"
                share = action_share(terms)
                lines.append(row + (f" {share:.1%} |" if share is not None else " |"))
        lines.append("")
    bars = {
        env_id: [(f"{fill(display(algo, suite), 14)}\n{LABELS[estimator][1]}", per_stage) for algo, estimator, per_stage in rows]
        for env_id, rows in by_env.items()
    }
    plot_terms(bars, out / PLOT)
    return lines + [f"![The decomposition per env and stage]({PLOT})", ""]


def action_share(terms: list[dict[str, float]]) -> float | None:
    """
    The mean action term's part of the mean total over runs, or ``None`` where the mean total is within 2 standard
    errors (of a mean over independent runs) of 0. A ratio of means, not a mean of ratios: one run's total can be
    near 0 (or below, each term being an unbiased estimate), which would make its own ratio meaningless.
    """
    total = float(np.mean([t["total"] for t in terms]))
    total_se = float(np.sqrt(np.sum([t["total_se"] ** 2 for t in terms]))) / len(terms)  # of the mean of independent runs
    if total <= 2 * total_se:
        return None  # not resolved from 0: a share of it would be noise
    return float(np.mean([t["action"] for t in terms])) / total


#: the estimator an algorithm trains with: its control variate where it has one, else its value baseline
OWN_ESTIMATORS = ("control_variate", "value_baseline")


def return_beside_variance(
    suite: Suite, returns: dict[tuple[str, str], Cell], by_env: dict[str, list[EstimatorTerms]]
) -> list[str]:
    """
    One row per env and algorithm: its final return (from ``returns``, the report's cells) beside the trajectory
    term and the total of the estimator it trains with, at each stage; the trajectory term is the part no baseline
    can remove.
    """
    lines = [
        "### Return beside variance",
        "",
        (
            "Per env and algorithm: the final return (as in the per-env table) beside the trajectory term and the "
            "total of the estimator the algorithm trains with (CVPG: its control variate; the others: their value "
            "baseline), mean over seeds at the start, middle and end of training. A value function that fits better "
            "cuts the value baseline's action term (the tables below); the trajectory term is the part no baseline "
            "can remove. Each algorithm is measured on the policy it has reached at that stage, so a comparison "
            "across algorithms mixes the estimator with the policy (one that falls at once has little variance "
            "left: see the returns)."
        ),
        "",
        (
            "| env | algorithm | estimator | seeds | final return: mean [95% CI] | trajectory term: start / middle / end "
            "| total: start / middle / end |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env_id, rows in by_env.items():
        measured = {(algo, estimator): per_stage for algo, estimator, per_stage in rows}
        for algo in dict.fromkeys(algo for algo, _, _ in rows):
            estimator = next(estimator for estimator in (*OWN_ESTIMATORS, *ESTIMATORS) if (algo, estimator) in measured)
            per_stage, cell = measured[(algo, estimator)], returns.get((env_id, algo))
            final = estimate(*cell.final_estimates["mean"], len(cell.seeds)) if cell is not None else ""
            by_stage = {
                term: " / ".join(f"{np.mean([t[term] for t in terms]):.3g}" if terms else "–" for terms in per_stage)
                for term in ("trajectory", "total")
            }
            lines.append(
                f"| {env_id} | {display(algo, suite)} | {LABELS[estimator][0]} | {max(len(terms) for terms in per_stage)} "
                f"| {final} | {by_stage['trajectory']} | {by_stage['total']} |"
            )
    return lines + [""]
