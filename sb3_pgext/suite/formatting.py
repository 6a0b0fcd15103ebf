"""
The report's text from the collected runs: numbers with their confidence intervals, the algorithms' names and
peers, the per-env tables, the sentences on where ours trail their peers, the runs' provenance, and the options
of the Reproduce command that select the finished part of a suite.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from sb3_pgext.suite.config import EnvSpec, Suite, display, is_ours
from sb3_pgext.suite.plots import PAIR_SEPARATOR
from sb3_pgext.suite.results import Cell, bootstrap, normalized_scores
from sb3_pgext.suite.runner import jobs_of


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


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


#: Fewer seeds than this get no confidence interval in the report: a bootstrap over one or two values is no CI
MIN_SEEDS_FOR_CI = 3


def estimate(point: float, low: float, high: float, n_seeds: int) -> str:
    """"point [low, high]", or the point alone with the number of seeds when they are too few for a CI."""
    if n_seeds < MIN_SEEDS_FOR_CI:
        return f"{_fmt(point)} ({n_seeds} seed{'s' if n_seeds > 1 else ''}: no CI)"
    return f"{_fmt(point)} [{_fmt(low)}, {_fmt(high)}]"


def _reach(steps: list[int], n_seeds: int) -> str:
    return f"{len(steps)}/{n_seeds} seeds" + (f", median {int(np.median(steps)):,} steps" if steps else "")


def _median_fps(cell: Cell) -> float | None:
    return float(np.median(cell.fps)) if cell.fps else None


def env_table(suite: Suite, env: EnvSpec, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """The env's heading and table: per algorithm its final scores, steps to threshold and env steps per second."""
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
            f"| {estimate(mean, low, high, len(cell.seeds))} | {estimate(iqm, iqm_low, iqm_high, len(cell.seeds))} "
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


def finished_pairs(suite: Suite, cells: dict[tuple[str, str], Cell]) -> Iterator[tuple[EnvSpec, str, str, Cell, Cell]]:
    """(env, ours, its peer, our cell, the peer's cell) for every one of ours that has finished runs beside its peer's."""
    for env in suite.envs:
        for algo in env.algos:
            peer = suite.peer(algo, env)
            ours, theirs = cells.get((env.env_id, algo)), cells.get((env.env_id, peer)) if peer else None
            if peer is not None and ours is not None and theirs is not None:
                yield env, algo, peer, ours, theirs


def trailing(suite: Suite, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """
    One plain sentence for every cell where one of ours trails its peer: a lower final mean, a threshold
    reached by a smaller share of the seeds run or later (median), or fewer env steps per second. A cell whose
    evaluations equal its peer's seed for seed is said to be the same runs instead.
    """
    lines = []
    for env, algo, peer, ours, theirs in finished_pairs(suite, cells):
        name, peer_name = display(algo, suite), display(peer, suite)
        if ours.seeds == theirs.seeds and np.array_equal(ours.returns, theirs.returns):
            lines.append(
                f"- **{name} and {peer_name} on {env.env_id} are the same runs**: their evaluations are equal seed "
                f"for seed{SAME_BY_DESIGN.get((algo, peer), '')}, so this row compares only speed."
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
                f"- **{name} trails {peer_name} on {env.env_id}**: final {estimate(ours_mean, ours_low, ours_high, len(ours.seeds))} "
                f"vs {estimate(peer_mean, peer_low, peer_high, len(theirs.seeds))} ({overlap})."
            )
        ours_steps, peer_steps = ours.reached_steps, theirs.reached_steps
        # A smaller share of the seeds run reaching it is the finding (the median of those that did may even be earlier);
        # shares, not counts, so that a cell with some of its seeds finished compares with a complete one.
        ours_share, peer_share = len(ours_steps) * len(theirs.seeds), len(peer_steps) * len(ours.seeds)
        if ours_share < peer_share:
            fewer = "on fewer seeds" if len(ours.seeds) == len(theirs.seeds) else "on a smaller share of its seeds"
            reach = f"reaches {env.env_id}'s threshold {env.threshold:g} {fewer} than {peer_name}"
        elif ours_steps and ours_share == peer_share and np.median(ours_steps) > np.median(peer_steps):
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


def _median_steps(steps: list[int | None]) -> float:
    """The median over seeds of the steps to a return, a seed that never reaches it counted as never (infinity)."""
    return float(np.median([np.inf if step is None else step for step in steps]))


def _steps_and_share(steps: list[int | None], budget: int) -> str:
    median = _median_steps(steps)
    reached = sum(step is not None for step in steps)
    if not np.isfinite(median):
        return f"not by the median seed | | {reached}/{len(steps)}"
    return f"{median:,.0f} | {median / budget:.2f} | {reached}/{len(steps)}"


def sample_efficiency(suite: Suite, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """
    The report's section on sample efficiency, over the suite's ``sample_efficiency`` envs: for each of ours and its
    peer on an env, the env steps each takes to reach the peer's mean final return (over the peer's seeds), the median
    over seeds, and that as a share of the budget; then, for each of ours run beside its peer on all of those envs,
    the probability that a run of ours ends above a run of its peer on one of them. The peer's own steps are the
    reference (its seeds that end above their mean reach it by the budget, those below may never); a share well
    below the peer's says ours gets there with fewer samples.
    """
    envs = [env for env in suite.envs if env.env_id in suite.sample_efficiency]
    rows = []
    for env, algo, peer, ours, theirs in finished_pairs(suite, cells):
        if env not in envs:
            continue
        target = float(np.mean(theirs.finals))
        rows.append(
            f"| {env.env_id} | {display(algo, suite)} | {display(peer, suite)} | {_fmt(target)} "
            f"| {_steps_and_share(ours.steps_to(target), env.n_timesteps)} "
            f"| {_steps_and_share(theirs.steps_to(target), env.n_timesteps)} |"
        )
    lines = [
        "## Sample efficiency: steps to the peer's final return",
        "",
        (
            f"On {', '.join(env.env_id for env in envs)}, for each of ours and its peer: the env steps until an "
            "evaluation first reaches the peer's mean final return (over its seeds), the median over seeds (a seed that "
            "never reaches it counts as never), that median as a share of the budget, and the seeds that reach it. "
            f"Evaluations every {suite.eval_freq:,} env steps: the steps are multiples of that."
        ),
        "",
    ]
    if not rows:
        return lines + ["No env has finished runs of one of ours and its peer yet.", ""]
    lines += [
        "| env | ours | peer | peer's final mean | ours: steps | share of budget | seeds | peer: steps | share of budget | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    pairs = peer_pairs(suite, cells, envs)
    if not pairs:
        return lines + [
            f"P(ours > peer) over these envs appears once one of ours and its peer have runs on all {len(envs)}.",
            "",
        ]
    table, _, _ = probability_rows(pairs)
    return lines + [
        "Over these envs, P(ours > peer): the chance that a run of ours ends above a run of its peer on one of them, "
        "drawn at random (scores normalised as in the aggregate below; 0.5: no difference).",
        "",
        *table,
        "",
    ]


def peer_pairs(
    suite: Suite, cells: dict[tuple[str, str], Cell], envs: list[EnvSpec]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """
    For each of ours with finished runs beside its peer's on every one of ``envs``, keyed
    ``"<ours><PAIR_SEPARATOR><its peers' name over envs>"``: its normalised final scores over ``envs`` and the peer's
    (:func:`~sb3_pgext.suite.results.normalized_scores`).
    """
    pairs = {}
    for name, per_env in suite.rows().items():
        per_env = {env.env_id: per_env[env.env_id] for env in envs if env.env_id in per_env}
        if len(per_env) < len(envs) or not (peers := row_peers(suite, per_env)):
            continue
        ours, theirs = normalized_scores(envs, cells, per_env), normalized_scores(envs, cells, peers)
        if ours is not None and theirs is not None:
            pairs[f"{name}{PAIR_SEPARATOR}{peers_name(suite, peers)}"] = (ours, theirs)
    return pairs


def probability_rows(
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """
    P(ours > peer) of each of :func:`peer_pairs`, with its 95% stratified-bootstrap CI: the report's table (header and
    rows), and rliable's point estimates and intervals (for the plot).
    """
    from rliable import metrics

    probabilities, intervals = bootstrap(pairs, metrics.probability_of_improvement)
    lines = ["| ours | peer | P(ours > peer) [95% CI] |", "| --- | --- | --- |"]
    for pair in pairs:
        probability, ci = float(np.ravel(probabilities[pair])[0]), np.ravel(intervals[pair])
        lines.append(f"| {pair.replace(PAIR_SEPARATOR, ' | ')} | {probability:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] |")
    return lines, probabilities, intervals


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
