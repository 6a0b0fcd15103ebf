"""
The report's figures (matplotlib, written as PNG files beside ``benchmark.md``): the learning curves of an env,
rliable's aggregate and probability-of-improvement plots, and the bars of the variance decompositions.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sb3_pgext.common.callbacks import STAGES
from sb3_pgext.suite.config import EnvSpec, Suite, display, is_ours
from sb3_pgext.suite.results import Cell

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: inches per algorithm of the aggregate plot (rliable's default)
AGGREGATE_ROW_HEIGHT = 0.37
#: joins "ours" and "peer" in the keys of the probability-of-improvement pairs (rliable splits them there): a
#: character no label has, where labels may hold commas (e.g. "CVPG (critic on the returns, default)")
PAIR_SEPARATOR = "\t"


def _save(path: Path, fig: "Figure | None" = None) -> None:
    """Write ``fig`` (None: pyplot's current figure) to ``path`` at the report's resolution, and close it."""
    import matplotlib.pyplot as plt

    figure = fig if fig is not None else plt.gcf()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_aggregates(
    points: dict[str, np.ndarray], intervals: dict[str, np.ndarray], algorithms: list[str], path: Path
) -> None:
    """
    rliable's interval plot of the IQM, mean and optimality gap of each row over envs.

    :param points: per row, its three point estimates (:func:`~sb3_pgext.suite.results.bootstrap`)
    :param intervals: per row, their 95% CIs (a (2, 3) array)
    :param algorithms: the rows, top to bottom
    :param path: the figure's file
    """
    from rliable import plot_utils

    # rliable puts its x label at a fixed fraction of the figure's height (one row per algorithm): below the axes'
    # bottom (matplotlib's 0.11) by half an inch, clear of the tick labels however many rows there are
    label_y = 0.11 - 0.5 / (AGGREGATE_ROW_HEIGHT * len(algorithms))
    plot_utils.plot_interval_estimates(
        points, intervals, metric_names=["IQM", "Mean", "Optimality gap"], algorithms=algorithms,
        row_height=AGGREGATE_ROW_HEIGHT, xlabel_y_coordinate=label_y, xlabel="normalised score",
    )  # fmt: skip
    _save(path)


def plot_probability_of_improvement(
    probabilities: dict[str, np.ndarray], intervals: dict[str, np.ndarray], path: Path
) -> None:
    """
    rliable's plot of P(ours > peer) for each pair.

    :param probabilities: per pair (``"<ours><PAIR_SEPARATOR><peer>"``), the probability of improvement
    :param intervals: per pair, its 95% CI
    :param path: the figure's file
    """
    from rliable import plot_utils

    plot_utils.plot_probability_of_improvement(probabilities, intervals, pair_separator=PAIR_SEPARATOR)
    _save(path)


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


def plot_terms(bars: dict[str, list[tuple[str, list[list[dict[str, float]]]]]], path: Path) -> None:
    """
    Bars of the state, action and trajectory terms (mean over runs) per estimator, env and stage, in the style of
    Tucker et al.'s Figure 1 (log scale; a term estimated at or below zero, within its noise, or exactly zero as
    the ceiling's action term, has no bar).

    :param bars: per env (a row of panels), its estimators in order: the tick label and, per stage, the terms of
        each run (dicts with ``state``, ``action``, ``trajectory``)
    :param path: the figure's file
    """
    import matplotlib.pyplot as plt

    panel_width = max(6.0, 0.75 * max(len(estimators) for estimators in bars.values()))  # room for every tick label
    fig, axes = plt.subplots(len(bars), len(STAGES), figsize=(panel_width * len(STAGES), 3.4 * len(bars)), squeeze=False)
    colours = {"state": "tab:blue", "action": "tab:orange", "trajectory": "tab:green"}
    for row, (env_id, estimators) in enumerate(bars.items()):
        for stage, stage_name in enumerate(STAGES):
            ax, largest, labelled = axes[row][stage], 0.0, set()
            for index, (_, per_stage) in enumerate(estimators):
                terms = per_stage[stage]
                for offset, term in zip((-0.27, 0.0, 0.27), ("state", "action", "trajectory")):
                    value = float(np.mean([t[term] for t in terms])) if terms else np.nan
                    largest = max(largest, value if np.isfinite(value) else 0.0)
                    if value > 0:
                        ax.bar(
                            index + offset, value, width=0.27, color=colours[term], label=None if term in labelled else term
                        )
                        labelled.add(term)
            ax.set_yscale("log")
            if largest > 0:
                ax.set_ylim(bottom=largest * 1e-3)
            ax.set_xticks(range(len(estimators)), [label for label, _ in estimators], fontsize=6)
            ax.set_title(f"{env_id}, {stage_name}", fontsize=9)
            if row == 0 and stage == 0:
                ax.legend(fontsize=7)
    fig.suptitle(
        "Variance of the per-sample policy gradient: state, action and trajectory terms (mean over seeds)", fontsize=10
    )
    fig.tight_layout()
    _save(path, fig)
