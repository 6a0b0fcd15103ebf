"""
Runs a suite through the RL Zoo: one ``python -m sb3_pgext.zoo train`` per (env, algorithm, seed), in
parallel worker processes, resumable (a run with its ``result.json`` is skipped; an unfinished one is
started again), with a progress bar.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from sb3_pgext.suite.config import EnvSpec, Suite
from sb3_pgext.zoo import ALGOS as OUR_ALGOS

_FPS = re.compile(r"\|\s*fps\s*\|\s*([0-9.]+)\s*\|")


@dataclass(frozen=True)
class Job:
    """One training run of a suite."""

    env: EnvSpec
    algo: str
    seed: int

    def root(self, out: Path) -> Path:
        """The zoo's ``-f`` folder of this run; the zoo writes ``<root>/<algo>/<env>_1/``."""
        return out / "runs" / self.env.env_id / self.algo / f"seed_{self.seed}"

    def log_dir(self, out: Path) -> Path:
        return self.root(out) / self.algo / f"{self.env.env_id}_1"


def jobs_of(suite: Suite, envs: list[str] | None = None, algos: list[str] | None = None) -> list[Job]:
    """Every (env, algorithm, seed) of the suite, optionally restricted; seeds outermost so early results span cells."""
    return [
        Job(env, algo, seed)
        for seed in suite.seeds
        for env in suite.envs
        if envs is None or env.env_id in envs
        for algo in env.algos
        if algos is None or algo in algos
    ]


def read_result(job: Job, out: Path) -> dict[str, Any] | None:
    path = job.root(out) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def finished_results(suite: Suite, out: Path) -> list[dict[str, Any]]:
    """The ``result.json`` of every finished run of the suite."""
    return [result for result in (read_result(job, out) for job in jobs_of(suite)) if result is not None]


def zoo_conf_file(suite: Suite, algo: str, out: Path) -> Path | None:
    """
    For SB3's algorithms on envs the zoo has no entry for (e.g. HalfCheetah-v5), a copy of the zoo's file
    with the aliased entries (e.g. HalfCheetah-v4's) under the new ids, passed as ``--conf-file``.
    """
    if algo in OUR_ALGOS or not suite.zoo_entry_aliases:
        return None
    import rl_zoo3

    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml") as file:
        entries = yaml.safe_load(file)
    aliased = {new: entries[old] for new, old in suite.zoo_entry_aliases.items() if old in entries and new not in entries}
    if not aliased:
        return None
    path = out / "zoo_hyperparams" / f"{algo}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**entries, **aliased}))
    return path


def train_command(suite: Suite, job: Job, out: Path, device: str, conf: Path | None = None) -> list[str]:
    command = [
        sys.executable, "-m", "sb3_pgext.zoo", "train", "--algo", job.algo, "--env", job.env.env_id,
        "-n", str(job.env.n_timesteps), "--seed", str(job.seed), "-f", str(job.root(out)),
        "--eval-freq", str(suite.eval_freq), "--eval-episodes", str(suite.eval_episodes),
        "--num-threads", "1", "--device", device, "--verbose", "1",
    ]  # fmt: skip
    return command + (["--conf-file", str(conf)] if conf else [])


def run_job(suite: Suite, job: Job, out: Path, device: str, conf: Path | None = None) -> dict[str, Any]:
    """Train one run through the zoo; write and return its ``result.json`` (steps/s, wall time)."""
    root = job.root(out)
    if root.exists():  # an unfinished run: start again from scratch
        shutil.rmtree(root)
    root.mkdir(parents=True)
    command = train_command(suite, job, out, device, conf)
    start = time.perf_counter()
    with open(root / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{job.algo} on {job.env.env_id}, seed {job.seed} failed (exit {code}): see {root / 'train.log'}")
    fps = [float(value) for value in _FPS.findall((root / "train.log").read_text())]
    result = {
        "env": job.env.env_id, "algo": job.algo, "seed": job.seed, "n_timesteps": job.env.n_timesteps,
        "device": device, "wall_seconds": round(wall, 1), "fps": fps[-1] if fps else None, "command": command,
    }  # fmt: skip
    (root / "result.json").write_text(json.dumps(result, indent=1))
    return result


def run_suite(
    suite: Suite, out: Path, workers: int = 2, device: str = "cpu", envs: list[str] | None = None, algos: list[str] | None = None
) -> list[Job]:
    """
    Run the suite's unfinished jobs in ``workers`` parallel processes, with a progress bar.

    :return: the jobs that failed (their logs say why)
    """
    import rl_zoo3.utils

    from sb3_pgext.zoo import register

    register()
    known = set(rl_zoo3.utils.ALGOS)
    for env in suite.envs:
        unknown = set(env.algos) - known
        if unknown:
            raise ValueError(f"{suite.path}: {env.env_id} lists unknown algos {sorted(unknown)}; known: {sorted(known)}")
    jobs = jobs_of(suite, envs, algos)
    todo = [job for job in jobs if read_result(job, out) is None]
    failed: list[Job] = []
    confs = {algo: zoo_conf_file(suite, algo, out) for algo in {job.algo for job in todo}}  # written once, before any run
    print(f"suite {suite.name}: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {len(todo)} to run on {workers} workers")
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(todo), unit="run", dynamic_ncols=True) as bar:
        futures = {pool.submit(run_job, suite, job, out, device, confs[job.algo]): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
                bar.set_postfix_str(f"{job.algo} {job.env.env_id} seed {job.seed}: {result['wall_seconds']:.0f} s")
            except RuntimeError as error:
                failed.append(job)
                tqdm.write(str(error))
            bar.update()
    return failed
