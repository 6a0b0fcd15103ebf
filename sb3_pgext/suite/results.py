"""
The finished runs of a suite as the report reads them, and the statistics over them.

A run's ``result.json`` (through :mod:`sb3_pgext.suite.runner`), its evaluations (the zoo's ``evaluations.npz``)
and its logged values (SB3's ``progress.csv``); the runs of each (env, algorithm) gathered into a :class:`Cell`;
the final scores normalised per env (:mod:`sb3_pgext.suite.scores`); and rliable's stratified bootstrap, seeded,
so that the same runs always give the same estimates.
"""

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from sb3_pgext.suite.config import EnvSpec, Logged, Suite
from sb3_pgext.suite.runner import Job, damaged_result, jobs_of, read_result
from sb3_pgext.suite.scores import SCORE_RANGES, normalize

BOOTSTRAP_REPS = 2000


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
        return self.steps_to(self.env.threshold)

    def steps_to(self, target: float) -> list[int | None]:
        """Per seed, the env steps of the first evaluation whose mean return is at least ``target`` (None: none is)."""
        reached = self.returns >= target
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


def normalized_scores(
    envs: list[EnvSpec], cells: dict[tuple[str, str], Cell], per_env_algo: dict[str, str]
) -> np.ndarray | None:
    """
    The normalised final scores of one row of the report over ``envs``.

    :param envs: the envs aggregated over
    :param cells: the report's cells (:func:`collect`)
    :param per_env_algo: the algorithm of the row on each env (``{env_id: algorithm}``)
    :return: a (seeds, envs) matrix, as many seeds as the env with fewest; None if a cell is missing or an env has no
        normalisation range
    """
    columns = []
    for env in envs:
        cell = cells.get((env.env_id, per_env_algo.get(env.env_id, "")))
        if cell is None or env.env_id not in SCORE_RANGES:
            return None
        columns.append(np.array([normalize(score, env.env_id) for score in cell.finals]))
    n_runs = min(len(column) for column in columns)
    return np.stack([column[:n_runs] for column in columns], axis=1)


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
