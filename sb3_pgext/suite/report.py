"""
The report of a suite: ``benchmark.md`` with PNG plots beside it.

Per env and algorithm: the final deterministic evaluation (the last of the zoo's periodic evaluations,
``evaluations.npz``, at the budget) as mean and IQM over seeds with 95% stratified-bootstrap CIs
(rliable), the env steps to reach the env's threshold, and env steps per second with its ratio to the
algorithm's SB3 peer. Per env, learning curves. Over envs, on scores normalised from a random agent (0)
to the RL Zoo's reference score (1) (:mod:`sb3_pgext.suite.scores`): IQM, mean and optimality gap
with CIs, and the probability that each of ours beats its peer. A list of every place where one of
ours trails its peer (final score, steps to threshold, env steps per second), and the updates per
second on CPU and GPU when :mod:`sb3_pgext.suite.speed` has measured them. The bootstrap is seeded,
so the same runs always give the same report.
"""

import json
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sb3_pgext.registry import ALGORITHMS as OUR_ALGOS
from sb3_pgext.suite.config import EnvSpec, Logged, Suite, display
from sb3_pgext.common.save_util import write_text_atomically
from sb3_pgext.suite.runner import Job, damaged_result, finished_results, jobs_of, read_result
from sb3_pgext.suite.scores import SCORE_RANGES, normalize
from sb3_pgext.suite.speed import SPEED_FILE, pinned_note

BOOTSTRAP_REPS = 2000
#: inches per algorithm of the aggregate plot (rliable's default)
AGGREGATE_ROW_HEIGHT = 0.37
#: joins "ours" and "peer" in the keys of the probability-of-improvement pairs (rliable splits them there): a
#: character no label has, where labels may hold commas (e.g. "CVPG (critic on the returns, default)")
PAIR_SEPARATOR = "\t"


def is_ours(algo: str, suite: Suite) -> bool:
    """Whether ``algo`` (a zoo name or a variant of the suite) is one of the package's algorithms."""
    return suite.zoo_algo(algo) in OUR_ALGOS


def row_peers(suite: Suite, per_env: dict[str, str]) -> dict[str, str]:
    """The peer on each env of one of :meth:`Suite.rows` (``{env: algorithm}``); empty for SB3's own rows."""
    if not is_ours(next(iter(per_env.values())), suite):
        return {}
    return {env.env_id: peer for env in suite.envs if env.env_id in per_env and (peer := suite.peer(per_env[env.env_id], env))}


def peers_name(suite: Suite, peers: dict[str, str]) -> str:
    """The report's name of a row's peers over envs (e.g. "DQN/SAC")."""
    return "/".join(dict.fromkeys(display(peer, suite) for peer in peers.values()))


def comparisons(suite: Suite) -> str:
    """The report's sentence on who is compared with whom, and what each variant trains."""
    rows = suite.rows()
    by_peer: dict[str, list[str]] = {}
    for name, per_env in rows.items():
        if peers := row_peers(suite, per_env):
            by_peer.setdefault(peers_name(suite, peers), []).append(name)
    text = "Each of ours is compared with its nearest SB3 peer, trained with the zoo's own hyperparameters." + "".join(
        f" Compared with {peer}: {'; '.join(names)}." for peer, names in by_peer.items()
    )
    for name, per_env in rows.items():
        variants = [suite.variants[algo] for algo in dict.fromkeys(per_env.values()) if algo in suite.variants]
        described = []
        for variant in variants:
            overrides = ", ".join(f"`{key}={value!r}`" for key, value in variant.hyperparams.items()) or "no overrides"
            where = [env_id for env_id, algo in per_env.items() if algo == variant.name]
            described.append(f"{display(variant.algo, suite)} with {overrides}" + (f" on {', '.join(where)}" if len(variants) > 1 else ""))
        if described:
            text += f" {name}: {'; '.join(described)}."
    return text


@dataclass
class Cell:
    """The finished runs of one algorithm on one env."""

    env: EnvSpec
    algo: str
    seeds: list[int]
    timesteps: np.ndarray  # (n_evals,), the evaluation points every run shares
    returns: np.ndarray  # (n_seeds, n_evals): mean return of each evaluation
    fps: list[float]
    wall_seconds: list[float] = field(default_factory=list)

    @property
    def finals(self) -> np.ndarray:
        return self.returns[:, -1]

    @cached_property
    def final_estimates(self) -> dict[str, tuple[float, float, float]]:
        """Mean and IQM of the final scores over seeds, each with its 95% bootstrap CI (computed once)."""
        return {statistic: _interval(self.finals[:, None], statistic) for statistic in ("mean", "iqm")}

    def steps_to_threshold(self) -> list[int | None]:
        reached = self.returns >= self.env.threshold
        return [int(self.timesteps[np.argmax(row)]) if row.any() else None for row in reached]

    @property
    def reached_steps(self) -> list[int]:
        """The steps to threshold of the seeds that reached it."""
        return [step for step in self.steps_to_threshold() if step is not None]


def read_evaluations(job: Job, out: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's evaluation steps and mean returns (the zoo's ``evaluations.npz``); None when missing or damaged."""
    try:
        with np.load(job.log_dir(out) / "evaluations.npz") as data:
            return data["timesteps"], data["results"].mean(axis=1)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def damaged_runs(suite: Suite, out: Path) -> list[str]:
    """
    The runs the report cannot read, each as its file and what to do: a damaged ``result.json`` (the next ``run``
    trains the run again), or a finished run whose ``evaluations.npz`` is missing or damaged (left out).
    """
    damaged = []
    for job in jobs_of(suite):
        result_path = damaged_result(job, out)
        if result_path is not None:
            damaged.append(f"`{result_path.relative_to(out)}` (unreadable: the next `run` trains it again)")
        elif read_result(job, out) is not None and read_evaluations(job, out) is None:
            path = (job.log_dir(out) / "evaluations.npz").relative_to(out)
            damaged.append(f"`{path}` (missing or unreadable: left out; delete the run's folder to train it again)")
    return damaged


def collect(suite: Suite, out: Path) -> dict[tuple[str, str], Cell]:
    """
    The finished runs of every cell (runs still missing are left out and counted in the report, damaged ones are
    left out and named: see :func:`damaged_runs`).
    """
    runs: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray, dict[str, Any]]]] = {}
    for job in jobs_of(suite):
        result = read_result(job, out)
        evaluations = None if result is None else read_evaluations(job, out)
        if result is None or evaluations is None:
            continue
        timesteps, returns = evaluations
        runs.setdefault((job.env.env_id, job.algo), []).append((job.seed, timesteps, returns, result))
    cells = {}
    envs = {env.env_id: env for env in suite.envs}
    for (env_id, algo), entries in runs.items():
        n_evals = min(len(timesteps) for _, timesteps, _, _ in entries)
        results = [result for *_, result in entries]
        cells[(env_id, algo)] = Cell(
            env=envs[env_id],
            algo=algo,
            seeds=[seed for seed, *_ in entries],
            timesteps=entries[0][1][:n_evals],
            returns=np.stack([returns[:n_evals] for _, _, returns, _ in entries]),
            fps=[result["fps"] for result in results if result["fps"] is not None],
            wall_seconds=[result["wall_seconds"] for result in results],
        )
    return cells


def bootstrap(scores: dict[str, Any], func: Callable[..., np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """
    rliable's point estimates and 95% stratified-bootstrap CIs, the same on every call: rliable draws its
    resampling indices from numpy's global RNG whatever ``random_state`` it is given, so that RNG is seeded
    here (and restored afterwards).
    """
    from rliable import library as rly

    state = np.random.get_state()
    np.random.seed(0)
    try:
        return rly.get_interval_estimates(scores, func, reps=BOOTSTRAP_REPS)
    finally:
        np.random.set_state(state)


def _interval(scores: np.ndarray, statistic: str) -> tuple[float, float, float]:
    """Point estimate and 95% stratified-bootstrap CI of ``statistic`` ("mean" / "iqm") of a (runs, tasks) matrix."""
    from rliable import metrics

    func = {"mean": metrics.aggregate_mean, "iqm": metrics.aggregate_iqm}[statistic]
    point, interval = bootstrap({"x": scores}, lambda x: np.array([func(x)]))
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


#: Fewer seeds than this get no confidence interval in the report: a bootstrap over one or two values is no CI
MIN_SEEDS_FOR_CI = 3


def _estimate(point: float, low: float, high: float, n_seeds: int) -> str:
    """"point [low, high]", or the point alone with the number of seeds when they are too few for a CI."""
    if n_seeds < MIN_SEEDS_FOR_CI:
        return f"{_fmt(point)} ({n_seeds} seed{'s' if n_seeds > 1 else ''}: no CI)"
    return f"{_fmt(point)} [{_fmt(low)}, {_fmt(high)}]"


def _reach(steps: list[int], n_seeds: int) -> str:
    return f"{len(steps)}/{n_seeds} seeds" + (f", median {int(np.median(steps)):,} steps" if steps else "")


def _median_fps(cell: Cell) -> float | None:
    return float(np.median(cell.fps)) if cell.fps else None


def env_table(suite: Suite, env: EnvSpec, cells: dict[tuple[str, str], Cell]) -> list[str]:
    n_seeds = len(suite.seeds)
    lines = [
        f"### {env.env_id}",
        "",
        f"Budget {env.n_timesteps:,} env steps; threshold {env.threshold:g}; final deterministic evaluation "
        f"({suite.eval_episodes} episodes at the budget).{' ' + env.note if env.note else ''}",
        "",
        "| algorithm | peer | seeds | final: mean [95% CI] | IQM [95% CI] | per seed | steps to threshold (median, reached) "
        "| env steps/s | ratio to peer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algo in env.algos:
        cell = cells.get((env.env_id, algo))
        peer = suite.peer(algo, env)
        if cell is None:
            lines.append(f"| {display(algo, suite)} | {display(peer, suite) if peer else ''} | 0/{n_seeds} | not run yet | | | | | |")
            continue
        mean, low, high = cell.final_estimates["mean"]
        iqm, iqm_low, iqm_high = cell.final_estimates["iqm"]
        reached = cell.reached_steps
        to_threshold = f"{int(np.median(reached)):,} ({len(reached)}/{len(cell.seeds)})" if reached else f"— (0/{len(cell.seeds)})"
        fps = _median_fps(cell)
        peer_cell = cells.get((env.env_id, peer)) if peer else None
        peer_fps = _median_fps(peer_cell) if peer_cell is not None else None
        ratio = f"{fps / peer_fps:.2f}" if fps and peer_fps else ""
        fps_text = f"{fps:.0f}" if fps else ""
        lines.append(
            f"| {display(algo, suite)} | {display(peer, suite) if peer else ''} | {len(cell.seeds)}/{n_seeds} "
            f"| {_estimate(mean, low, high, len(cell.seeds))} | {_estimate(iqm, iqm_low, iqm_high, len(cell.seeds))} "
            f"| {', '.join(_fmt(x) for x in cell.finals)} | {to_threshold} | {fps_text} | {ratio} |"
        )
    return lines + [""]


#: Below this ratio of env steps per second to its peer's, one of ours counts as slower: two runs of
#: the same computation (OffPAC and SAC on Box actions) differed by 3% in the quick suite
SLOWER_RATIO = 0.95


#: Why one of ours may train exactly as its peer, for the report's "same runs" sentence
SAME_BY_DESIGN = {
    ("offpac", "sac"): " (OffPAC's exact update, `fast_update=False`, is SAC bit for bit with its default estimator on "
    "Box actions: `tests/test_offpac.py::test_bit_identical_to_sac`)",
}


def trailing(suite: Suite, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """
    One plain sentence for every cell where one of ours trails its peer: a lower final mean, a threshold
    reached by fewer seeds or later (median), or fewer env steps per second. A cell whose evaluations equal
    its peer's seed for seed is said to be the same runs instead.
    """
    lines = []
    for env in suite.envs:
        for algo in env.algos:
            peer = suite.peer(algo, env)
            ours, theirs = cells.get((env.env_id, algo)), cells.get((env.env_id, peer)) if peer else None
            if ours is None or theirs is None:
                continue
            name, peer_name = display(algo, suite), display(peer, suite)  # type: ignore[arg-type]
            if ours.seeds == theirs.seeds and np.array_equal(ours.returns, theirs.returns):
                lines.append(
                    f"- **{name} and {peer_name} on {env.env_id} are the same runs**: their evaluations are equal seed "
                    f"for seed{SAME_BY_DESIGN.get((algo, peer), '')}, so this row compares only speed."  # type: ignore[arg-type]
                )
                continue
            ours_mean, ours_low, ours_high = ours.final_estimates["mean"]
            peer_mean, peer_low, peer_high = theirs.final_estimates["mean"]
            if ours_mean < peer_mean:
                if min(len(ours.seeds), len(theirs.seeds)) < MIN_SEEDS_FOR_CI:
                    overlap = f"too few seeds to tell: {len(ours.seeds)} and {len(theirs.seeds)}"
                else:
                    overlap = "the CIs overlap" if ours_high >= peer_low else "the CIs do not overlap"
                lines.append(
                    f"- **{name} trails {peer_name} on {env.env_id}**: final {_estimate(ours_mean, ours_low, ours_high, len(ours.seeds))} "
                    f"vs {_estimate(peer_mean, peer_low, peer_high, len(theirs.seeds))} ({overlap})."
                )
            ours_steps, peer_steps = ours.reached_steps, theirs.reached_steps
            # Fewer seeds reaching it is the finding (the median of those that did may even be earlier).
            if len(ours_steps) < len(peer_steps):
                reach = f"reaches {env.env_id}'s threshold {env.threshold:g} on fewer seeds than {peer_name}"
            elif ours_steps and len(ours_steps) == len(peer_steps) and np.median(ours_steps) > np.median(peer_steps):
                reach = f"reaches {env.env_id}'s threshold {env.threshold:g} later than {peer_name}"
            else:
                reach = ""
            if reach:
                lines.append(
                    f"- **{name} {reach}**: {_reach(ours_steps, len(ours.seeds))} vs {_reach(peer_steps, len(theirs.seeds))}."
                )
            ours_fps, peer_fps = _median_fps(ours), _median_fps(theirs)
            if ours_fps and peer_fps and ours_fps / peer_fps < SLOWER_RATIO:
                lines.append(
                    f"- **{name} is slower than {peer_name} on {env.env_id}**: {ours_fps:.0f} vs {peer_fps:.0f} env steps/s "
                    f"({ours_fps / peer_fps:.2f}×)."
                )
    return lines


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


def _normalized(envs: list[EnvSpec], cells: dict[tuple[str, str], Cell], per_env_algo: dict[str, str]) -> np.ndarray | None:
    """(seeds, envs) normalised final scores of the algorithm ``per_env_algo[env]`` on each of ``envs``; None if any is missing."""
    columns = []
    for env in envs:
        cell = cells.get((env.env_id, per_env_algo.get(env.env_id, "")))
        if cell is None or env.env_id not in SCORE_RANGES:
            return None
        columns.append(np.array([normalize(score, env.env_id) for score in cell.finals]))
    n_runs = min(len(column) for column in columns)
    return np.stack([column[:n_runs] for column in columns], axis=1)


def aggregates(suite: Suite, cells: dict[tuple[str, str], Cell], out: Path) -> list[str]:
    """IQM / mean / optimality gap over envs, and P(ours > peer), with rliable; their plots."""
    from rliable import metrics, plot_utils

    by_name = suite.rows()
    # a suite run in part (``--envs``) is aggregated over the envs that have runs, and says so
    envs = [env for env in suite.envs if any(env_id == env.env_id for env_id, _ in cells)]
    if not envs:
        return ["Aggregates appear once runs have finished.", ""]
    scores: dict[str, np.ndarray] = {}
    for name, per_env in by_name.items():
        matrix = _normalized(envs, cells, per_env)
        if matrix is not None:
            scores[name] = matrix
    pairs = {}
    for name, per_env in by_name.items():
        if not (peers := row_peers(suite, per_env)):
            continue
        peer_name = peers_name(suite, peers)
        ours, theirs = scores.get(name), _normalized(envs, cells, peers)  # None where a peer is missing on an env
        if ours is not None and theirs is not None:
            scores.setdefault(peer_name, theirs)
            pairs[f"{name}{PAIR_SEPARATOR}{peer_name}"] = (ours, theirs)
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
        lines.append(" | ".join([f"| {name}"] + [f"{p[i]:.2f} [{ci[0, i]:.2f}, {ci[1, i]:.2f}]" for i in range(3)]) + " |")
    # rliable puts its x label at a fixed fraction of the figure's height (one row per algorithm): below the axes'
    # bottom (matplotlib's 0.11) by half an inch, clear of the tick labels however many rows there are
    label_y = 0.11 - 0.5 / (AGGREGATE_ROW_HEIGHT * len(scores))
    plot_utils.plot_interval_estimates(
        points, intervals, metric_names=["IQM", "Mean", "Optimality gap"], algorithms=list(scores),
        row_height=AGGREGATE_ROW_HEIGHT, xlabel_y_coordinate=label_y, xlabel="normalised score",
    )  # fmt: skip
    _save(out / "aggregate.png")
    lines += ["", "![aggregate](aggregate.png)", ""]
    if pairs:
        probabilities, probability_cis = bootstrap(pairs, metrics.probability_of_improvement)
        lines += [
            "Probability of improvement P(ours > peer): the chance that a run of ours beats a run of its peer on a "
            "randomly drawn env (0.5: no difference).",
            "",
            "| ours | peer | P(ours > peer) [95% CI] |",
            "| --- | --- | --- |",
        ]
        for pair in pairs:
            probability, ci = float(np.ravel(probabilities[pair])[0]), np.ravel(probability_cis[pair])
            lines.append(f"| {pair.replace(PAIR_SEPARATOR, ' | ')} | {probability:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] |")
        plot_utils.plot_probability_of_improvement(probabilities, probability_cis, pair_separator=PAIR_SEPARATOR)
        _save(out / "probability_of_improvement.png")
        lines += ["", "![probability of improvement](probability_of_improvement.png)", ""]
    return lines


def learning_curves(suite: Suite, env: EnvSpec, cells: dict[tuple[str, str], Cell], out: Path) -> str | None:
    """Mean evaluation return over seeds along training, with a 95% t-interval band; the PNG's name."""
    import matplotlib.pyplot as plt
    from scipy import stats

    present = [cells[(env.env_id, algo)] for algo in env.algos if (env.env_id, algo) in cells]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for cell in present:
        mean = cell.returns.mean(axis=0)
        n = len(cell.returns)
        half = stats.t.ppf(0.975, n - 1) * cell.returns.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
        style = "-" if is_ours(cell.algo, suite) else "--"
        ax.plot(cell.timesteps, mean, style, label=f"{display(cell.algo, suite)} ({n})")
        ax.fill_between(cell.timesteps, mean - half, mean + half, alpha=0.15)
    ax.axhline(env.threshold, color="gray", linewidth=0.8, linestyle=":")
    ax.set(title=env.env_id, xlabel="env steps", ylabel="deterministic evaluation return")
    ax.legend(fontsize=8)
    name = f"curves_{env.env_id}.png"
    _save(out / name, fig)
    return name


def _save(path: Path, fig=None) -> None:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    figure = fig if fig is not None else plt.gcf()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def read_progress(path: Path) -> dict[str, np.ndarray]:
    """The columns of a run's ``progress.csv`` (SB3's CSV log), NaN where a row has no value."""
    import csv

    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    keys = list(rows[0]) if rows else []
    return {key: np.array([float(row[key]) if row.get(key) not in (None, "") else np.nan for row in rows]) for key in keys}


def logged_values(columns: dict[str, np.ndarray], entry: Logged) -> np.ndarray | None:
    """``entry``'s value at each logged update of one run (its :func:`read_progress` ``columns``; ``key / over`` for a
    ratio); None if it was not logged."""
    if entry.key not in columns or (entry.over is not None and entry.over not in columns):
        return None
    values = columns[entry.key] / columns[entry.over] if entry.over is not None else columns[entry.key]
    values = values[np.isfinite(values)]
    return values if values.size else None


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
        "median over the first, middle and last third of each run's updates (pooled over seeds).",
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
                cells.append(cell + f"; {len(runs)} runs, {pooled.size} updates)")
            if logged_any:
                rows.append(f"| {display(algo, suite)} | " + " | ".join(cells) + " |")
        if rows:
            found = True
            lines += [f"### {env.env_id}", "", "| algorithm | " + " | ".join(entry.name for entry in suite.logged) + " |"]
            lines += ["| --- |" + " --- |" * len(suite.logged)] + rows + [""]
    return lines if found else lines + ["No finished run has logged these values yet.", ""]


def provenance(results: list[dict[str, Any]]) -> str:
    """
    The versions and CPUs the runs recorded in their ``result.json`` (every distinct value), and how many trained
    on Ray, so that the report depends on the raw results alone, not on the environment that writes it.
    """
    recorded = [result for result in results if "versions" in result]
    if not recorded:
        return "The runs did not record their versions (they predate that field of `result.json`)."
    names = list(dict.fromkeys(name for result in recorded for name in result["versions"]))
    parts = [f"{name} {'/'.join(sorted({result['versions'][name] for result in recorded if name in result['versions']}))}" for name in names]
    cpus = sorted({result["cpu"] for result in recorded if result.get("cpu")})
    missing = len(results) - len(recorded)
    on_ray = sum(result.get("backend") == "ray" for result in results)
    return (
        "Trained with " + ", ".join(parts) + (f" on {' / '.join(cpus)}" if cpus else "")
        + (f" ({missing} older runs recorded none)" if missing else "") + "."
        + (f" {f'All {on_ray}' if on_ray == len(results) else f'{on_ray} of the {len(results)}'} runs trained as Ray tasks (`--backend ray`)." if on_ray else "")
    )  # fmt: skip


def selection_options(suite: Suite, cells: dict[tuple[str, str], Cell]) -> str:
    """
    The ``--envs`` / ``--algos`` / ``--seeds`` options that select exactly the finished runs (``cells``, from
    :func:`collect`), where they are a part of the suite that those options select (each of their envs with each
    of their algorithms and seeds); otherwise (none, all, or a part no options select) an empty string.
    """
    finished = {(env_id, algo, seed) for (env_id, algo), cell in cells.items() for seed in cell.seeds}
    runs = [(job.env.env_id, job.algo, job.seed) for job in jobs_of(suite)]
    done = [run for run in runs if run in finished]  # in the suite's order
    envs = list(dict.fromkeys(env for env, _, _ in done))
    algos = list(dict.fromkeys(algo for _, algo, _ in done))
    seeds = sorted({seed for _, _, seed in done})
    selected = {(job.env.env_id, job.algo, job.seed) for job in jobs_of(suite, envs, algos, seeds)}
    if not done or selected != finished or len(done) == len(runs):
        return ""
    options = ""
    if set(envs) != {env.env_id for env in suite.envs}:
        options += " --envs " + " ".join(envs)
    if set(algos) != {algo for env in suite.envs for algo in env.algos}:
        options += " --algos " + " ".join(algos)
    if seeds != sorted(suite.seeds):
        options += " --seeds " + " ".join(map(str, seeds))
    return options


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
    lines += aggregates(suite, cells, out)
    lines += logged_section(suite, out)
    from sb3_pgext.suite.decomposition import decomposition_section  # it reads runs with this module's helpers

    lines += decomposition_section(suite, out, cells)
    if (out / SPEED_FILE).is_file() or any("sac" in env.algos for env in suite.envs):  # what `speed` measures
        lines += speed_section(out, suite.name)
    lines += ["## Learning curves", "", "Mean over seeds with a 95% t-interval; ours solid, SB3's dashed; the dotted line is the threshold.", ""]
    lines += curves + [""]
    path = out / "benchmark.md"
    write_text_atomically(path, "\n".join(lines))
    return path
