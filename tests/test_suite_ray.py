"""The suite on Ray: a real local Ray instance of 2 CPUs runs tiny suite entries (skipped without Ray)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sb3_pgext.suite import load_suite, run_suite
from sb3_pgext.suite.runner import jobs_of

ray = pytest.importorskip("ray")

TINY_SUITE = """
description: tiny cells for the Ray backend
seeds: [0, 1]
eval_freq: 512
eval_episodes: 2
envs:
  CartPole-v1:
    n_timesteps: 1024
    threshold: 15
    algos: [ppokl, ppo]
    note: A budget for tests only.
"""


@pytest.fixture
def tiny_suite(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    return load_suite(path)


def evaluations(job, out):
    with np.load(job.log_dir(out) / "evaluations.npz") as data:
        return data["timesteps"].copy(), data["results"].copy()


def test_ray_runs_the_suite_as_the_local_runner_does_seed_for_seed(tiny_suite, tmp_path):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run_suite(tiny_suite, local, workers=2) == []
    assert run_suite(tiny_suite, on_ray, workers=2, backend="ray") == []
    for job in jobs_of(tiny_suite):
        result = json.loads((job.root(on_ray) / "result.json").read_text())
        folder = Path.cwd() / result["command"][result["command"].index("-f") + 1]  # relative to the working folder if in it
        assert result["backend"] == "ray" and folder == job.root(on_ray)  # the driver's folder, no path of the worker's
        (steps, returns), (local_steps, local_returns) = evaluations(job, on_ray), evaluations(job, local)
        assert list(steps) == [512, 1024] and np.array_equal(steps, local_steps)
        assert np.array_equal(returns, local_returns), job  # the same evaluations, seed for seed
        assert (job.log_dir(on_ray) / f"{job.env.env_id}.zip").is_file()


def test_a_failed_run_is_reported_with_its_log(tiny_suite, tmp_path, monkeypatch):
    out = tmp_path / "out"
    failed = run_suite(tiny_suite, out, workers=2, algos=["ppokl"], backend="ray", device="no-such-device")
    assert len(failed) == 2
    for job in failed:
        assert not (job.root(out) / "result.json").exists() and (job.root(out) / "train.log").stat().st_size > 0


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_suite_finishes(tiny_suite, tmp_path):
    """SIGKILL the first Ray worker that trains a run: Ray starts the run again and the suite finishes."""
    out = tmp_path / "out"
    killed = []

    def kill_a_worker():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            listing = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
            processes = {int(pid): (int(ppid), args) for pid, ppid, args in (line.split(None, 2) for line in listing.splitlines()[1:])}
            for ppid, args in processes.values():
                parent = processes.get(ppid, (0, ""))[1]
                # a run's training process under a Ray worker (ray::_train_in_temporary_folder): kill the worker
                if args.startswith(sys.executable) and "-m sb3_pgext.zoo train" in args and parent.startswith("ray::"):
                    os.kill(ppid, signal.SIGKILL)
                    killed.append(ppid)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    failed = run_suite(tiny_suite, out, workers=2, backend="ray")
    killer.join()
    assert killed and failed == []
    assert all((job.root(out) / "result.json").is_file() for job in jobs_of(tiny_suite))


@pytest.mark.slow
def test_an_interrupted_driver_trains_only_what_is_missing(tiny_suite, tmp_path):
    """Kill the driver once a run is written; started again, it trains only the runs without a result."""
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "sb3_pgext.suite", "run", str(tiny_suite.path), "--out", str(out), "--backend", "ray"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    jobs = jobs_of(tiny_suite)
    deadline = time.time() + 300
    while time.time() < deadline and not any((job.root(out) / "result.json").exists() for job in jobs):
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    driver.wait(timeout=120)
    done = {job: (job.root(out) / "result.json").stat().st_mtime_ns for job in jobs if (job.root(out) / "result.json").exists()}
    assert 1 <= len(done) < len(jobs)
    assert run_suite(tiny_suite, out, workers=2, backend="ray") == []
    for job in jobs:
        assert (job.root(out) / "result.json").is_file()
        if job in done:  # kept, not trained again
            assert (job.root(out) / "result.json").stat().st_mtime_ns == done[job]


def test_an_address_without_the_ray_backend_is_refused(tiny_suite, tmp_path):
    with pytest.raises(ValueError, match="pass backend='ray'"):
        run_suite(tiny_suite, tmp_path, address="auto")


@pytest.mark.slow  # 40 s of Ray start-up; the default run keeps the Ray runner's main test
def test_the_driver_leaves_a_run_another_runner_is_training_to_it(tiny_suite, tmp_path, hold_lock, capsys):
    """
    The driver takes each run's lock before submitting its task, as the local runner does: a run whose lock
    another runner holds is skipped and left untouched; once that runner is gone, the next driver trains it;
    a run another runner finished after this one listed its work is returned as it is.
    """
    from sb3_pgext.suite import runner

    out = tmp_path / "out"
    busy, free = jobs_of(tiny_suite, algos=["ppo"])
    busy.root(out).mkdir(parents=True)
    (busy.root(out) / "progress.csv").write_text("the other runner's run, in progress")
    holder = hold_lock(busy.root(out).with_name(f"{busy.root(out).name}.lock"))
    assert run_suite(tiny_suite, out, workers=2, algos=["ppo"], backend="ray") == []  # skipped is not failed
    printed = capsys.readouterr()
    assert "ppo on CartPole-v1, seed 0: skipped, another runner is training it" in printed.out + printed.err
    assert (busy.root(out) / "progress.csv").read_text() == "the other runner's run, in progress"
    assert not (busy.root(out) / "result.json").exists() and (free.root(out) / "result.json").is_file()
    holder.kill()
    holder.wait()
    assert run_suite(tiny_suite, out, workers=2, algos=["ppo"], backend="ray") == []  # the dead runner's lock is free
    assert (busy.root(out) / "result.json").is_file()
    # listed as to do, finished by another runner before the driver claimed it: its result, not a new run
    result = json.loads((free.root(out) / "result.json").read_text())
    outcomes = list(runner._ray_outcomes(tiny_suite, [free], out, "cpu", {"ppo": None}, 1, None))
    assert outcomes == [(free, result)] and json.loads((free.root(out) / "result.json").read_text()) == result


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_runs_on_a_ray_instance_without_a_gpu_are_refused(tiny_suite, tmp_path):
    """A task that asks for a GPU no node has would wait forever: refused before any run (on an H100, Ray found it)."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="device='cuda' asks a GPU for each run, but the Ray cluster has none"):
        run_suite(tiny_suite, out, workers=2, backend="ray", device="cuda")
    assert not any(job.root(out).exists() for job in jobs_of(tiny_suite))
    assert not ray.is_initialized()
