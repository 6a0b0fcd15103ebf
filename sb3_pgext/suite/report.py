"""
The report of a suite: ``benchmark.md`` with PNG plots beside it, assembled from the runs
(:mod:`~sb3_pgext.suite.results`), their text (:mod:`~sb3_pgext.suite.formatting`) and figures
(:mod:`~sb3_pgext.suite.plots`), and the variance decompositions (:mod:`~sb3_pgext.suite.decomposition`).

Per env and algorithm: the final deterministic evaluation (the last of the zoo's periodic evaluations,
``evaluations.npz``, at the budget) as mean and IQM over seeds with 95% stratified-bootstrap CIs
(rliable), the env steps to reach the env's threshold, and env steps per second with its ratio to the
algorithm's SB3 peer. Per env, learning curves. Over envs, on scores normalised from a random agent (0)
to the RL Zoo's reference score (1) (:mod:`sb3_pgext.suite.scores`): IQM, mean and optimality gap
with CIs, and the probability that each of ours beats its peer. A list of every place where one of
ours trails its peer (final score, steps to threshold, env steps per second), for a suite that asks for it
the steps each of ours takes to reach its peer's final return, the values the runs logged along training,
and the updates per second on CPU and GPU when :mod:`sb3_pgext.suite.speed` has measured them. The bootstrap is seeded, so the same runs always give the same report.
"""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sb3_pgext.common.save_util import write_text_atomically
from sb3_pgext.suite.config import EnvSpec, Suite, display
from sb3_pgext.suite.decomposition import decomposition_section
from sb3_pgext.suite.formatting import (
    comparisons,
    env_table,
    peer_pairs,
    probability_rows,
    provenance,
    sample_efficiency,
    selection_options,
    trailing,
)
from sb3_pgext.suite.plots import PAIR_SEPARATOR, learning_curves, plot_aggregates, plot_probability_of_improvement
from sb3_pgext.suite.results import (
    BOOTSTRAP_REPS,
    Cell,
    bootstrap,
    collect,
    damaged_runs,
    logged_values,
    normalized_scores,
    read_progress,
)
from sb3_pgext.suite.runner import finished_results, jobs_of, read_result
from sb3_pgext.suite.scores import SCORE_RANGES
from sb3_pgext.suite.speed import SPEED_FILE, pinned_note


def speed_section(out: Path, suite_name: str) -> list[str]:
    """The "Updates per second" section, from ``speed.json`` when :mod:`sb3_pgext.suite.speed` has written one."""
    gpu_command = f"python -m sb3_pgext.suite speed {suite_name} --device cuda"
    lines = ["## Updates per second: CPU and GPU", ""]
    path = out / SPEED_FILE
    if not path.is_file():
        return lines + [f"Not measured yet: `{gpu_command}` measures it and adds it here.", ""]
    data = json.loads(path.read_text())
    gpu = next((device for device in data["devices"] if device != "cpu"), None)
    command = f"python -m sb3_pgext.suite speed {suite_name}" + (f" --device {gpu}" if gpu else "")
    rate = {(row["env"], row["algo"], row["device"]): row for row in data["rows"]}
    header = "| env | algorithm | updates per train() | CPU updates/s | ratio to SAC (CPU) |"
    if gpu:
        header += f" {gpu} updates/s | {gpu} / CPU | ratio to SAC ({gpu}) |"
    lines += [
        f"`{command} --threads {data['torch_threads']} --repeats {data['repeats']}`"
        + ("" if gpu else " (CPU only)"),
        "",
        "An update is one minibatch gradient step of the actor: for OffPAC and SAC one step of actor and critics, for "
        "CVPG one PPO minibatch step, its Q critic's steps of that rollout included in the time. Median of "
        f"{data['repeats']} timed `train()` calls after a warm-up call, env stepping left out; models built by the zoo "
        f"from the same hyperparameter files as the runs"
        + (" (SBX SAC, the JAX port of SB3, with SB3 SAC's)" if any(row["algo"] == "sbx" for row in data["rows"]) else "")
        + f". Measured on: CPU {data['cpu']}, {data['torch_threads']} torch thread(s){pinned_note(data)}; "
        + (f"GPU: {data['device_name']}; " if gpu else "")
        + f"torch {data['torch']}.",
        "",
        header,
        "|" + " --- |" * (header.count("|") - 1),
    ]
    for (env_id, algo, device), row in rate.items():
        if device != "cpu":
            continue
        sac = rate.get((env_id, "sac", "cpu"))
        cells = [env_id, display(algo), str(row["updates_per_call"]), f"{row['updates_per_s']:.0f}"]
        cells.append(f"{row['updates_per_s'] / sac['updates_per_s']:.2f}" if sac else "")
        if gpu:
            on_gpu, sac_gpu = rate.get((env_id, algo, gpu)), rate.get((env_id, "sac", gpu))
            cells += [
                f"{on_gpu['updates_per_s']:.0f}" if on_gpu else "",
                f"{on_gpu['updates_per_s'] / row['updates_per_s']:.2f}" if on_gpu else "",
                f"{on_gpu['updates_per_s'] / sac_gpu['updates_per_s']:.2f}" if on_gpu and sac_gpu else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if not gpu:
        lines += ["", f"No GPU was measured: the machine that ran `speed` had none. `{gpu_command}` adds the GPU columns."]
    return lines + [""]


def aggregates(suite: Suite, cells: dict[tuple[str, str], Cell], out: Path) -> list[str]:
    """IQM / mean / optimality gap over envs, and P(ours > peer), with rliable; their plots."""
    from rliable import metrics

    by_name = suite.rows()
    # a suite run in part (``--envs``) is aggregated over the envs that have runs, and says so
    envs = [env for env in suite.envs if any(env_id == env.env_id for env_id, _ in cells)]
    if not envs:
        return ["Aggregates appear once runs have finished.", ""]
    scores: dict[str, np.ndarray] = {}
    for name, per_env in by_name.items():
        matrix = normalized_scores(envs, cells, per_env)
        if matrix is not None:
            scores[name] = matrix
    pairs = peer_pairs(suite, cells, envs)
    for pair, (_, theirs) in pairs.items():
        scores.setdefault(pair.split(PAIR_SEPARATOR)[1], theirs)
    if not scores:
        return ["Aggregates appear once an algorithm has finished runs on every env that has runs.", ""]

    def estimates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_optimality_gap(x)])

    points, intervals = bootstrap(scores, estimates)
    ranges = ", ".join(f"{env} [{r.random:g}, {r.reference:g}]" for env, r in SCORE_RANGES.items() if env in {e.env_id for e in envs})
    unrun = [env.env_id for env in suite.envs if env not in envs]
    part = (
        f"Over the envs that have finished runs ({', '.join(env.env_id for env in envs)}) alone: "
        f"{', '.join(unrun)} {'has' if len(unrun) == 1 else 'have'} none yet. " if unrun else ""
    )
    lines = [
        "## Aggregate over envs",
        "",
        f"{part}Final scores normalised per env from a random agent (0) to the RL Zoo's reference (1): {ranges} "
        "(sources: `sb3_pgext/suite/scores.py`). 95% stratified-bootstrap CIs over seeds (rliable, "
        f"{BOOTSTRAP_REPS} resamples). Optimality gap: mean shortfall below 1 (lower is better).",
        "",
        "| algorithm | IQM [95% CI] | mean [95% CI] | optimality gap [95% CI] |",
        "| --- | --- | --- | --- |",
    ]
    for name in scores:
        p, ci = points[name], intervals[name]
        lines.append(" | ".join([f"| {name}"] + [_with_ci(p, ci, i) for i in range(3)]) + " |")
    plot_aggregates(points, intervals, list(scores), out / "aggregate.png")
    lines += ["", "![aggregate](aggregate.png)", ""]
    lines += partial_aggregates(suite, by_name, cells, envs, set(scores), estimates)
    if pairs:
        table, probabilities, probability_cis = probability_rows(pairs)
        lines += [
            "Probability of improvement P(ours > peer): the chance that a run of ours beats a run of its peer on a "
            "randomly drawn env (0.5: no difference).",
            "",
            *table,
        ]
        plot_probability_of_improvement(probabilities, probability_cis, out / "probability_of_improvement.png")
        lines += ["", "![probability of improvement](probability_of_improvement.png)", ""]
    return lines


def partial_aggregates(
    suite: Suite,
    by_name: dict[str, dict[str, str]],
    cells: dict[tuple[str, str], Cell],
    envs: list[EnvSpec],
    aggregated: set[str],
    estimates: Callable[[np.ndarray], np.ndarray],
) -> list[str]:
    """
    The rows left out of the aggregate over every env (an algorithm for one action space, or cells not run yet), each
    over the envs where all of its seeds have finished, beside its peer over the same envs where the peer's seeds have
    all finished there too.
    """
    table = []
    for name, per_env in by_name.items():
        if name in aggregated:
            continue
        own = [env for env in envs if _complete(cells.get((env.env_id, per_env.get(env.env_id, ""))), suite)]
        matrix = normalized_scores(own, cells, per_env) if own else None
        if matrix is None:
            continue
        points, intervals = bootstrap({name: matrix}, estimates)
        row = [name, ", ".join(env.env_id for env in own), *(_with_ci(points[name], intervals[name], i) for i in range(2))]
        table.append("| " + " | ".join(row + _peer_over(suite, cells, own, per_env, estimates)) + " |")
    if not table:
        return []
    return [
        "Each row left out above (one that runs on some of the envs only, or whose other cells have not all finished), "
        "over the envs where all its seeds have finished. Rows over different envs do not compare with each other: "
        "read a row beside its peer's IQM over the same envs.",
        "",
        "| algorithm | envs | IQM [95% CI] | mean [95% CI] | peer | peer's IQM over the same envs [95% CI] |",
        "| --- | --- | --- | --- | --- | --- |",
        *table,
        "",
    ]


def _peer_over(
    suite: Suite,
    cells: dict[tuple[str, str], Cell],
    envs: list[EnvSpec],
    per_env: dict[str, str],
    estimates: Callable[[np.ndarray], np.ndarray],
) -> list[str]:
    """A row's peer and the peer's IQM over ``envs``: "—" where the row has no peer, or not the same one, on each."""
    peer_of = {env.env_id: peer for env in envs if (peer := suite.peer(per_env[env.env_id], env)) is not None}
    names = {display(peer, suite) for peer in peer_of.values()}
    if len(peer_of) != len(envs) or len(names) != 1:
        return ["—", "—"]
    peer_name = names.pop()
    complete = all(_complete(cells.get(key), suite) for key in peer_of.items())
    matrix = normalized_scores(envs, cells, peer_of) if complete else None
    if matrix is None:
        return [peer_name, "not all seeds run"]
    points, intervals = bootstrap({peer_name: matrix}, estimates)
    return [peer_name, _with_ci(points[peer_name], intervals[peer_name], 0)]


def _complete(cell: Cell | None, suite: Suite) -> bool:
    return cell is not None and len(cell.seeds) == len(suite.seeds)


def _with_ci(points: np.ndarray, intervals: np.ndarray, index: int) -> str:
    """Estimate ``index`` of rliable's point estimates and their 95% CIs, as "point [low, high]"."""
    return f"{points[index]:.2f} [{intervals[0, index]:.2f}, {intervals[1, index]:.2f}]"


def logged_section(suite: Suite, out: Path) -> list[str]:
    """
    Per env, for each algorithm whose finished runs logged the suite's ``logged`` values: the median over every
    logged update of every run, the range of the runs' own medians, for a ratio the share of updates below 1, and
    the median over each third of training (a value that drifts as training goes on).
    """
    if not suite.logged:
        return []
    lines = [
        "## Logged along training",
        "",
        "From each finished run's `progress.csv` (every logger dump, full precision): the median over all logged "
        "updates of all seeds, the range of the seeds' own medians, for a ratio the share of updates below 1, and the "
        "median over the first, middle and last third of each run's updates (pooled over seeds; for a ratio also the "
        "range of the seeds' own last-third medians).",
        "",
    ]
    found = False
    for env in suite.envs:
        rows = []
        for algo in env.algos:
            jobs = [job for job in jobs_of(suite, [env.env_id], [algo]) if read_result(job, out) is not None]
            progress = [job.log_dir(out) / "progress.csv" for job in jobs]
            columns = [read_progress(path) for path in progress if path.is_file()]  # each run's file read once
            cells, logged_any = [], False
            for entry in suite.logged:
                runs = [values for values in (logged_values(run, entry) for run in columns) if values is not None]
                if not runs:
                    cells.append("–")
                    continue
                logged_any = True
                pooled, medians = np.concatenate(runs), [float(np.median(values)) for values in runs]
                cell = f"{np.median(pooled):.4g} (seeds {min(medians):.4g} to {max(medians):.4g}"
                cell += f"; {np.mean(pooled < 1):.0%} below 1" if entry.over is not None else ""
                if all(values.size >= 3 for values in runs):  # each run's updates split in three, in order, pooled by third
                    splits = [np.array_split(values, 3) for values in runs]
                    thirds = [np.median(np.concatenate([split[third] for split in splits])) for third in range(3)]
                    cell += f"; by third of training {' / '.join(f'{value:.3g}' for value in thirds)}"
                    if entry.over is not None:  # a ratio that rises above 1 late in some run shows here
                        last = [float(np.median(split[2])) for split in splits]
                        cell += f", the seeds' last thirds {min(last):.3g} to {max(last):.3g}"
                cells.append(cell + f"; {len(runs)} runs, {pooled.size} updates)")
            if logged_any:
                rows.append(f"| {display(algo, suite)} | " + " | ".join(cells) + " |")
        if rows:
            found = True
            lines += [f"### {env.env_id}", "", "| algorithm | " + " | ".join(entry.name for entry in suite.logged) + " |"]
            lines += ["| --- |" + " --- |" * len(suite.logged)] + rows + [""]
    return lines if found else lines + ["No finished run has logged these values yet.", ""]


def write_report(suite: Suite, out: Path, command: str) -> Path:
    """Write ``out/benchmark.md`` and its plots from the finished runs; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")

    cells = collect(suite, out)
    jobs = jobs_of(suite)
    done = sum(len(cell.seeds) for cell in cells.values())
    fps_note = (
        "Env steps per second: SB3's `time/fps` at the end of each run (median over seeds), evaluations included, "
        "one torch thread per run and `workers` runs side by side on the same machine; the ratio compares each of "
        "ours with its peer measured in the same suite run."
    )
    lines = [
        f"# Benchmark: the {suite.name} suite",
        "",
        f"{suite.description}. Seeds {', '.join(map(str, suite.seeds))}; evaluation every {suite.eval_freq:,} env "
        f"steps, {suite.eval_episodes} deterministic episodes. {done}/{len(jobs)} runs finished, "
        f"{sum(sum(cell.wall_seconds) for cell in cells.values()) / 3600:.1f} run-hours of training in all.",
        "",
        *([f"Damaged runs, not in this report: {', '.join(damaged)}.", ""] if (damaged := damaged_runs(suite, out)) else []),
        "Reproduce:",
        "",
        "```bash",
        command + selection_options(suite, cells),  # the part of the suite that has run, where it is one
        "```",
        "",
        f"{provenance(finished_results(suite, out))} {fps_note}",
        "",
        comparisons(suite),
        "",
        "## Per env",
        "",
    ]
    curves = []
    for env in suite.envs:
        lines += env_table(suite, env, cells)
        name = learning_curves(suite, env, cells, out)
        if name:
            curves.append(f"![{env.env_id}]({name})")
    trails = trailing(suite, cells)
    lines += ["## Where ours trail their peers", ""] + (trails or ["Nowhere in the finished runs."]) + [""]
    if suite.sample_efficiency:
        lines += sample_efficiency(suite, cells)
    lines += aggregates(suite, cells, out)
    lines += logged_section(suite, out)
    lines += decomposition_section(suite, out, cells)
    if (out / SPEED_FILE).is_file() or any("sac" in env.algos for env in suite.envs):  # what `speed` measures
        lines += speed_section(out, suite.name)
    lines += ["## Learning curves", "", "Mean over seeds with a 95% t-interval; ours solid, SB3's dashed; the dotted line is the threshold.", ""]
    lines += curves + [""]
    path = out / "benchmark.md"
    write_text_atomically(path, "\n".join(lines))
    return path
