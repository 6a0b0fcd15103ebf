"""
Runs a suite through the RL Zoo: one ``python -m sb3_pgext.zoo train`` per (env, algorithm, seed),
resumable (a run with its ``result.json`` is skipped; an unfinished one is started again), with a progress
bar. Each run is locked while it trains (on Ray, by the driver while its task runs), so that two runners of
one folder (say, with other ``--envs``, or started twice, or one local and one on Ray) share the work instead
of training, or deleting, the same run. Two backends:
``"local"``, parallel worker processes on this machine, and ``"ray"``, one Ray task per run on a Ray cluster
(https://docs.ray.io), each training in a temporary folder of its node and sending its run folder back to the
driver, so that the nodes need no shared filesystem; Ray retries a run whose worker died.
"""

import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from tqdm import tqdm

from sb3_pgext.common.processes import PARENT_PID_VARIABLE
from sb3_pgext.common.save_util import write_text_atomically
from sb3_pgext.registry import ALGORITHMS as OUR_ALGOS
from sb3_pgext.suite.config import EnvSpec, Suite
from sb3_pgext.zoo.cli import python_literal
from sb3_pgext.zoo.derived import zoo_hyperparams_path

_FPS = re.compile(r"\|\s*fps\s*\|\s*([0-9.]+)\s*\|")
BACKENDS = ("local", "ray")
#: how many times Ray starts a run again when its worker process or node dies
RAY_MAX_RETRIES = 3


@dataclass(frozen=True)
class Job:
    """
    One training run of a suite.

    :param env: the env
    :param algo: the algorithm's name in the suite (a zoo name, or a variant's name)
    :param seed: the seed
    :param zoo_algo: the zoo algorithm it trains (a variant's algorithm; empty: ``algo``)
    """

    env: EnvSpec
    algo: str
    seed: int
    zoo_algo: str = ""

    @property
    def trained(self) -> str:
        """The zoo's ``--algo`` of this run."""
        return self.zoo_algo or self.algo

    def root(self, out: Path) -> Path:
        """The zoo's ``-f`` folder of this run; the zoo writes ``<root>/<zoo algo>/<env>_1/``."""
        return out / "runs" / self.env.env_id / self.algo / f"seed_{self.seed}"

    def log_dir(self, out: Path) -> Path:
        return self.root(out) / self.trained / f"{self.env.env_id}_1"


def jobs_of(suite: Suite, envs: list[str] | None = None, algos: list[str] | None = None, seeds: list[int] | None = None) -> list[Job]:
    """Every (env, algorithm, seed) of the suite, optionally restricted; seeds outermost so early results span cells."""
    return [
        Job(env, algo, seed, suite.zoo_algo(algo) if algo in suite.variants else "")
        for seed in suite.seeds
        if seeds is None or seed in seeds
        for env in suite.envs
        if envs is None or env.env_id in envs
        for algo in env.algos
        if algos is None or algo in algos
    ]


def read_result(job: Job, out: Path) -> dict[str, Any] | None:
    """
    The run's ``result.json``; None when it has none or a damaged one (empty, truncated, not a JSON object:
    :func:`damaged_result` says which), so that the run counts as unfinished and is trained again.
    """
    path = job.root(out) / "result.json"
    try:
        result = json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) else None


def damaged_result(job: Job, out: Path) -> Path | None:
    """The run's ``result.json`` when it exists but cannot be read as a result (see :func:`read_result`), else None."""
    path = job.root(out) / "result.json"
    return path if path.exists() and read_result(job, out) is None else None


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
    with open(zoo_hyperparams_path(algo)) as file:
        entries = yaml.safe_load(file)
    aliased = {new: entries[old] for new, old in suite.zoo_entry_aliases.items() if old in entries and new not in entries}
    if not aliased:
        return None
    path = out / "zoo_hyperparams" / f"{algo}.yml"
    write_text_atomically(path, yaml.safe_dump({**entries, **aliased}))
    return path


def train_command(suite: Suite, job: Job, out: Path, device: str, conf: Path | None = None) -> list[str]:
    """The zoo's train command of ``job``: a variant's overrides as ``-params key:value`` (values as Python literals)."""
    command = [
        sys.executable, "-m", "sb3_pgext.zoo", "train", "--algo", job.trained, "--env", job.env.env_id,
        "-n", str(job.env.n_timesteps), "--seed", str(job.seed), "-f", str(job.root(out)),
        "--eval-freq", str(suite.eval_freq), "--eval-episodes", str(suite.eval_episodes),
        "--num-threads", "1", "--device", device, "--verbose", "1", "--log-csv",
    ]  # fmt: skip
    overrides = suite.overrides(job.algo)
    if overrides:
        command += ["-params", *(f"{key}:{python_literal(value)}" for key, value in overrides.items())]
    return command + (["--conf-file", str(conf)] if conf else [])


def recorded_command(command: list[str]) -> list[str]:
    """
    ``command`` as ``result.json`` records it: ``python`` for this interpreter's path and paths inside the
    working folder relative to it, so that committed results say nothing of the machine that ran them.
    """
    cwd = Path.cwd()

    def portable(arg: str) -> str:
        path = Path(arg)
        return str(path.relative_to(cwd)) if path.is_absolute() and path.is_relative_to(cwd) else arg

    return ["python", *(portable(arg) for arg in command[1:])] if command and command[0] == sys.executable else command


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """The versions a run trains with, as ``result.json`` records them (and the report prints them)."""
    import stable_baselines3
    import torch

    import sb3_pgext

    return {
        "sb3_pgext": sb3_pgext.__version__,
        "SB3": stable_baselines3.__version__,
        "torch": torch.__version__,
        "Python": platform.python_version(),
    }


class RunFailed(RuntimeError):
    """A run whose training exited with an error; its log says why."""

    def __init__(self, job: Job, code: int, log: Path):
        super().__init__(f"{job.algo} on {job.env.env_id}, seed {job.seed} failed (exit {code}): see {log}")
        self.code = code


class RunBusy(RuntimeError):
    """A run that another runner (another ``suite run`` of the same folder) is training now."""

    def __init__(self, job: Job):
        super().__init__(f"{job.algo} on {job.env.env_id}, seed {job.seed}: skipped, another runner is training it")


@contextlib.contextmanager
def run_lock(job: Job, out: Path) -> Iterator[None]:
    """
    Hold the run's lock (``seed_<n>.lock`` beside its folder) while it trains, so that two runners of one folder
    never train, or delete, the same run; the operating system releases it if the runner dies.

    :raises RunBusy: when another runner holds it
    """
    root = job.root(out)
    lock_path = root.with_name(f"{root.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusy(job) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def claim_run(job: Job, out: Path) -> Iterator[dict[str, Any] | None]:
    """
    Hold the run's :func:`run_lock` and give its result when another runner finished it meanwhile (None when it
    is still to train): what every runner does before it trains a run.

    :raises RunBusy: when another runner is training it
    """
    with run_lock(job, out):
        yield read_result(job, out)


def run_job(suite: Suite, job: Job, out: Path, device: str, conf: Path | None = None) -> dict[str, Any]:
    """
    Train one run through the zoo, holding its :func:`run_lock`; write and return its ``result.json`` (steps/s,
    wall time). A run that another runner finished meanwhile is not trained again: its result is returned.

    :raises RunBusy: when another runner is training it
    :raises RunFailed: when its training exits with an error
    """
    with claim_run(job, out) as finished:
        return finished if finished is not None else _train(suite, job, out, device, conf)


def _train(suite: Suite, job: Job, out: Path, device: str, conf: Path | None) -> dict[str, Any]:
    """Train the run from scratch and write its ``result.json``."""
    root = job.root(out)
    if root.exists():  # an unfinished run: start again from scratch
        shutil.rmtree(root)
    root.mkdir(parents=True)
    command = train_command(suite, job, out, device, conf)
    start = time.perf_counter()
    # the training ends with this process, even when it is killed (see sb3_pgext.common.processes)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", PARENT_PID_VARIABLE: str(os.getpid())}
    with open(root / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise RunFailed(job, code, root / "train.log")
    fps = [float(value) for value in _FPS.findall((root / "train.log").read_text())]
    result = {
        "env": job.env.env_id, "algo": job.algo, "seed": job.seed, "n_timesteps": job.env.n_timesteps,
        "device": device, "wall_seconds": round(wall, 1), "fps": fps[-1] if fps else None,
        "command": recorded_command(command), "versions": versions(), "cpu": cpu_name(),
    }  # fmt: skip
    if job.zoo_algo:  # a variant: what it trains, and with which overrides
        result.update(variant_of=job.zoo_algo, hyperparams=suite.overrides(job.algo))
    write_text_atomically(root / "result.json", json.dumps(result, indent=1))
    return result


def run_suite(
    suite: Suite,
    out: Path,
    workers: int = 2,
    device: str = "cpu",
    envs: list[str] | None = None,
    algos: list[str] | None = None,
    backend: str = "local",
    address: str | None = None,
    seeds: list[int] | None = None,
) -> list[Job]:
    """
    Run the suite's unfinished jobs, with a progress bar; each finished run is written under ``out`` as soon
    as it ends (an interrupted call trains only what is missing when called again).

    :param suite: the suite
    :param out: the results folder
    :param workers: local: runs trained side by side; Ray: the CPUs of the local Ray instance started when
        ``address`` is None (a cluster's own resources decide how many of its runs go side by side)
    :param device: the torch device of every run (on Ray, a "cuda" run asks for one GPU; a local Ray instance
        without one is refused with a ValueError before any run, a cluster without one gets a warning)
    :param envs: only these envs of the suite
    :param algos: only these algorithms of the suite
    :param backend: "local" (worker processes on this machine) or "ray" (one Ray task per run)
    :param address: Ray: the cluster's address (``ray.init(address=...)``, e.g. "auto" on a cluster node or
        "ray://<head>:10001"); None starts a local Ray instance
    :param seeds: only these seeds of the suite (e.g. the first three of five, the rest in a later call)
    :return: the jobs that failed (their logs say why)
    """
    import rl_zoo3.utils

    from sb3_pgext.zoo import register

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if address is not None and backend != "ray":
        raise ValueError("address is the address of a Ray cluster: pass backend='ray' with it")
    register()
    known = set(rl_zoo3.utils.ALGOS)
    for variant in suite.variants.values():
        if variant.name in known or variant.algo not in known:
            what = f"has the name of the zoo algorithm {variant.name!r}" if variant.name in known else f"trains unknown algo {variant.algo!r}"
            raise ValueError(f"{suite.path}: variant {variant.name} {what}; zoo algos: {sorted(known)}")
    for env in suite.envs:
        unknown = set(env.algos) - known - set(suite.variants)
        if unknown:
            raise ValueError(
                f"{suite.path}: {env.env_id} lists unknown algos {sorted(unknown)}; known: {sorted(known)}, variants: {sorted(suite.variants)}"
            )
    for name, asked, allowed in (
        ("envs", envs, [env.env_id for env in suite.envs]),
        ("algos", algos, sorted({algo for env in suite.envs for algo in env.algos})),
        ("seeds", seeds, list(suite.seeds)),
    ):
        unknown = [value for value in asked or [] if value not in allowed]
        if unknown:
            raise ValueError(f"{suite.path}: {name} {unknown} are not in the suite; its {name}: {allowed}")
    jobs = jobs_of(suite, envs, algos, seeds)
    todo = [job for job in jobs if read_result(job, out) is None]
    for job in todo:
        damaged = damaged_result(job, out)
        if damaged is not None:
            print(f"{damaged}: damaged (not a readable result), so {job.algo} on {job.env.env_id}, seed {job.seed} is trained again")
    failed: list[Job] = []
    confs = {algo: zoo_conf_file(suite, algo, out) for algo in {job.trained for job in todo}}  # written once, before any run
    where = f"on {workers} workers" if backend == "local" else f"on Ray ({address or f'a local instance of {workers} CPUs'})"
    print(f"suite {suite.name}: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {len(todo)} to run {where}")
    if backend == "local":
        outcomes = _local_outcomes(suite, todo, out, device, confs, workers)
    else:
        outcomes = _ray_outcomes(suite, todo, out, device, confs, workers, address)
    with tqdm(total=len(todo), unit="run", dynamic_ncols=True) as bar:
        for job, outcome in outcomes:
            if isinstance(outcome, RunBusy):
                tqdm.write(str(outcome))
            elif isinstance(outcome, RunFailed):
                failed.append(job)
                tqdm.write(str(outcome))
            else:
                bar.set_postfix_str(f"{job.algo} {job.env.env_id} seed {job.seed}: {outcome['wall_seconds']:.0f} s")
            bar.update()
    return failed


Outcome = tuple[Job, dict[str, Any] | RunFailed | RunBusy]


def _local_outcomes(
    suite: Suite, todo: list[Job], out: Path, device: str, confs: dict[str, Path | None], workers: int
) -> Iterator[Outcome]:
    """Each job's result (or error) as it finishes, trained by ``workers`` parallel processes."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_job, suite, job, out, device, confs[job.trained]): job for job in todo}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except (RunFailed, RunBusy) as failure:
                yield futures[future], failure


def _ray_outcomes(
    suite: Suite, todo: list[Job], out: Path, device: str, confs: dict[str, Path | None], workers: int, address: str | None
) -> Iterator[Outcome]:
    """
    Each job's result (or error) as it finishes, trained by one Ray task per job; the driver unpacks the run
    folder each task sends back under ``out``. The driver holds each run's :func:`claim_run` from before its task
    is submitted until its folder is unpacked: a run another runner is training is skipped, one it finished
    meanwhile is returned as it is.
    """
    try:
        import ray
    except ImportError:
        raise ImportError('the Ray backend needs Ray: pip install "sb3-pgext[ray]"') from None
    started_here = not ray.is_initialized()
    if started_here:
        local = {"num_cpus": workers} if address is None else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    if device.startswith("cuda") and not ray.cluster_resources().get("GPU", 0):
        # a task that asks for a GPU no node has waits for one forever
        message = f"device={device!r} asks a GPU for each run, but the Ray cluster has none"
        if started_here:
            ray.shutdown()
            raise ValueError(f"{message} (a local instance of this machine): train on a machine with a GPU, or on the CPU")
        warnings.warn(f"{message} now: the runs wait until a node with a GPU joins it", stacklevel=2)
    train = ray.remote(_train_in_temporary_folder).options(
        num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0, max_retries=RAY_MAX_RETRIES
    )
    conf_texts = {algo: None if conf is None else conf.read_text() for algo, conf in confs.items()}
    claims: dict[Job, contextlib.ExitStack] = {}
    try:
        pending = {}
        for job in todo:
            claim = contextlib.ExitStack()
            try:
                finished = claim.enter_context(claim_run(job, out))
            except RunBusy as busy:
                yield job, busy
                continue
            if finished is not None:
                claim.close()
                yield job, finished
                continue
            claims[job] = claim
            pending[train.remote(suite, job, device, conf_texts[job.trained])] = job
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            exit_code, archive = ray.get(ready)
            root = job.root(out)
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            if exit_code is not None:
                claims.pop(job).close()
                yield job, RunFailed(job, exit_code, root / "train.log")
                continue
            # the command as it reads on the driver (the task ran it in a temporary folder of its node)
            result = json.loads((root / "result.json").read_text())
            result.update(command=recorded_command(train_command(suite, job, out, device, confs[job.trained])), backend="ray")
            write_text_atomically(root / "result.json", json.dumps(result, indent=1))
            claims.pop(job).close()
            yield job, result
    finally:
        for claim in claims.values():
            claim.close()
        if started_here:
            ray.shutdown()


def _train_in_temporary_folder(suite: Suite, job: Job, device: str, conf_text: str | None) -> tuple[int | None, bytes]:
    """
    A Ray task: train ``job`` in a temporary folder; return (None, or the exit code of a failed training, and
    the run folder as a gzipped tar, ``result.json`` included when it succeeded).
    """
    with tempfile.TemporaryDirectory(prefix="sb3_pgext_run_") as folder:
        out = Path(folder)
        conf = None
        if conf_text is not None:
            conf = out / "zoo_hyperparams" / f"{job.trained}.yml"
            conf.parent.mkdir(parents=True)
            conf.write_text(conf_text)
        exit_code = None
        try:
            _train(suite, job, out, device, conf)  # its own temporary folder: no other runner, nothing to lock
        except RunFailed as failure:
            exit_code = failure.code
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(job.root(out), arcname=".")
        return exit_code, buffer.getvalue()
