"""What the per-algorithm benchmark scripts share: resumable learning runs, alternating speed runs, tables."""

import argparse
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from sb3_pgext.train import evaluate

RESULTS = Path(__file__).parent / "results"
N_EVAL_EPISODES = 10

#: builds (model, training budget) for (variant, env_id, seed)
Builder = Callable[[str, str, int], tuple[BaseAlgorithm, int]]


class TrainLogTrace(BaseCallback):
    """Keeps the listed ``train/`` values of every update (read when the next rollout starts), with the step count."""

    def __init__(self, keys: tuple[str, ...]):
        super().__init__()
        self.keys = keys
        self.trace: dict[str, list[float]] = {"timesteps": [], **{key: [] for key in keys}}

    def _on_rollout_start(self) -> None:
        values = self.model.logger.name_to_value
        if self.keys and all(key in values for key in self.keys):
            self.trace["timesteps"].append(self.num_timesteps)
            for key in self.keys:
                self.trace[key].append(float(values[key]))

    def _on_step(self) -> bool:
        return True


def learning_run(build: Builder, variant: str, env_id: str, seed: int, trace_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train one (variant, env, seed) for its budget, then evaluate it deterministically."""
    th.set_num_threads(1)
    model, n_timesteps = build(variant, env_id, seed)
    trace = TrainLogTrace(trace_keys)
    start = time.perf_counter()
    model.learn(n_timesteps, callback=trace)
    seconds = time.perf_counter() - start
    mean, std = evaluate(model, env_id, seed, N_EVAL_EPISODES)
    result = dict(variant=variant, env=env_id, seed=seed, steps=n_timesteps, mean_return=mean, std_return=std)
    result.update(train_seconds=round(seconds, 1))
    if trace_keys:
        result["trace"] = trace.trace
    print(json.dumps(result), flush=True)
    return result


def run_learning_jobs(path: Path, worker: Callable[[tuple[str, str, int]], dict[str, Any]], jobs: Iterable[tuple[str, str, int]], workers: int) -> None:
    """Run the (variant, env, seed) jobs not in ``path`` yet, in worker processes; results are kept as they finish."""
    done = json.loads(path.read_text()) if path.exists() else []
    finished = {(r["variant"], r["env"], r["seed"]) for r in done}
    todo = [job for job in jobs if job not in finished]
    print(f"{len(todo)} runs to do, {len(finished)} already done", flush=True)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for result in pool.imap_unordered(worker, todo):
            done.append(result)
            path.write_text(json.dumps(done, indent=1))  # resumable: finished runs are kept


def alternating_speed(build: Builder, variants: tuple[str, ...], env_id: str, steps: int, repeats: int) -> dict[str, list[float]]:
    """Env steps per second of each variant, alternated within one process with the order rotated each repeat."""
    th.set_num_threads(1)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(repeats):
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            model, _ = build(variant, env_id, repeat)
            start = time.perf_counter()
            model.learn(steps)
            rates[variant].append(steps / (time.perf_counter() - start))
    return rates


def speed_summary(rates: dict[str, list[float]], reference: str) -> dict[str, dict[str, Any]]:
    """Median steps/s per variant and its ratio to ``reference``'s median."""
    base = float(np.median(rates[reference]))
    return {
        v: dict(steps_per_second=r, median=float(np.median(r)), ratio=float(np.median(r)) / base) for v, r in rates.items()
    }


def learning_table(runs: list[dict[str, Any]], variants: Iterable[str], thresholds: dict[str, float]) -> list[str]:
    """Markdown rows: per env and variant, mean ± std over seeds, per-seed returns, seeds at or above the bar."""
    lines = [
        "| env | variant | steps | seeds | mean ± std over seeds | per seed | seeds ≥ bar |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env_id in dict.fromkeys(r["env"] for r in runs):
        for variant in variants:
            cell = sorted((r for r in runs if r["env"] == env_id and r["variant"] == variant), key=lambda r: r["seed"])
            if not cell:
                continue
            returns = np.array([r["mean_return"] for r in cell])
            bar = thresholds.get(env_id)
            above = f"{int((returns >= bar).sum())}/{len(returns)} (bar {bar:g})" if bar is not None else ""
            per_seed = ", ".join(f"{x:.0f}" for x in returns)
            lines.append(
                f"| {env_id} | {variant} | {cell[0]['steps']:,} | {len(cell)} | {returns.mean():.1f} ± {returns.std():.1f} "
                f"| {per_seed} | {above} |"
            )
    return lines


def speed_table(results: dict[str, dict[str, dict[str, Any]]], reference: str) -> list[str]:
    lines = [f"| env | variant | median steps/s | ratio to {reference} |", "| --- | --- | --- | --- |"]
    for env_id, cells in results.items():
        for variant, cell in cells.items():
            lines.append(f"| {env_id} | {variant} | {cell['median']:.0f} | {cell['ratio']:.3f} |")
    return lines


@dataclass
class Benchmark:
    """
    One algorithm's benchmark: what :func:`main`'s ``learning``, ``speed`` and ``report`` commands run.

    :param name: the algorithm's zoo name; results go to ``results/<name>_{learning,speed}.json`` and ``<name>.md``
    :param title: heading of the report
    :param build: builds (model, budget) for (variant, env_id, seed); a module-level function (it is pickled)
    :param variants: every variant, in the report's order
    :param thresholds: the bar per env (reported as seeds at or above it)
    :param learning_envs: default envs of ``learning``
    :param learning_variants: default variants of ``learning``
    :param speed_envs: default envs of ``speed``
    :param speed_variants: the variants ``speed`` alternates
    :param reference: the variant speed ratios are taken to
    :param speed_steps: default steps of one speed run
    :param speed_repeats: default alternating repeats
    :param learning_note: what the report says under the learning heading
    :param speed_note: what the report says under the speed heading
    :param trace_keys: ``train/`` keys recorded at every update of a learning run (kept in the results)
    :param speed_build: the builder of the speed runs (None: ``build``)
    :param extra_report: more report lines made from the learning runs (e.g. from their traces)
    """

    name: str
    title: str
    build: Builder
    variants: tuple[str, ...]
    thresholds: dict[str, float]
    learning_envs: list[str]
    learning_variants: list[str]
    speed_envs: list[str]
    speed_variants: tuple[str, ...]
    reference: str
    speed_steps: int
    speed_repeats: int
    learning_note: str = ""
    speed_note: str = ""
    trace_keys: tuple[str, ...] = ()
    speed_build: Builder | None = None
    extra_report: Callable[[list[dict[str, Any]]], list[str]] | None = None


def run_learning(bench: Benchmark, args: argparse.Namespace) -> None:
    jobs = [(v, e, s) for e in args.envs for v in args.variants for s in args.seeds]
    worker = partial(_learning_worker, bench.build, bench.trace_keys)
    run_learning_jobs(RESULTS / f"{bench.name}_learning.json", worker, jobs, args.workers)


def _learning_worker(build: Builder, trace_keys: tuple[str, ...], job: tuple[str, str, int]) -> dict[str, Any]:
    return learning_run(build, *job, trace_keys=trace_keys)


def run_speed(bench: Benchmark, args: argparse.Namespace) -> None:
    """Measure the envs given; the other envs' figures already in the results file are kept if measured alike."""
    path = RESULTS / f"{bench.name}_speed.json"
    protocol = dict(steps=args.steps, repeats=args.repeats, torch_threads=1)
    previous = json.loads(path.read_text()) if path.exists() else {}
    results: dict[str, Any] = previous.get("results", {}) if all(previous.get(k) == v for k, v in protocol.items()) else {}
    for env_id in args.envs:
        rates = alternating_speed(bench.speed_build or bench.build, bench.speed_variants, env_id, args.steps, args.repeats)
        results[env_id] = speed_summary(rates, bench.reference)
        print(env_id, {v: round(c["ratio"], 3) for v, c in results[env_id].items()}, flush=True)
        path.write_text(json.dumps(dict(**protocol, results=results), indent=1))


def run_report(bench: Benchmark, _: argparse.Namespace) -> None:
    script = f"benchmarks/{bench.name}_benchmark.py"
    lines = [f"# {bench.title}", "", f"Generated by `python {script} report`; see the script for the commands.", ""]
    path = RESULTS / f"{bench.name}_learning.json"
    if path.exists():
        lines += [f"## Learning: final deterministic evaluation ({N_EVAL_EPISODES} episodes per seed)", ""]
        lines += [bench.learning_note, ""] if bench.learning_note else []
        runs = json.loads(path.read_text())
        lines += [*learning_table(runs, bench.variants, bench.thresholds), ""]
        if bench.extra_report is not None:
            lines += [*bench.extra_report(runs), ""]
    path = RESULTS / f"{bench.name}_speed.json"
    if path.exists():
        speed = json.loads(path.read_text())
        lines += [
            f"## Speed: env steps per second, side by side ({speed['steps']:,} steps a run, "
            f"{speed['repeats']} alternating repeats, torch threads {speed['torch_threads']}, CPU)",
            "",
        ]
        lines += [bench.speed_note, ""] if bench.speed_note else []
        lines += [*speed_table(speed["results"], bench.reference), ""]
    (RESULTS / f"{bench.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(bench: Benchmark, description: str) -> None:
    """The command line of a benchmark script: ``learning``, ``speed`` or ``report``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    learning = sub.add_parser("learning")
    learning.add_argument("--envs", nargs="+", default=bench.learning_envs)
    learning.add_argument("--variants", nargs="+", default=bench.learning_variants, choices=bench.variants)
    learning.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    learning.add_argument("--workers", type=int, default=2)
    speed = sub.add_parser("speed")
    speed.add_argument("--envs", nargs="+", default=bench.speed_envs)
    speed.add_argument("--steps", type=int, default=bench.speed_steps)
    speed.add_argument("--repeats", type=int, default=bench.speed_repeats)
    sub.add_parser("report")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    {"learning": run_learning, "speed": run_speed, "report": run_report}[args.command](bench, args)
