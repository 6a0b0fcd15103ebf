"""
The torch thread count for the zoo commands' default: env steps per second of ``python -m sb3_pgext.zoo train``
with one torch thread (``--num-threads 1``) and with torch's default (``--num-threads -1``: one thread per core),

- on an idle machine (one training at a time),
- on a busy one (a busy loop holds one core meanwhile, as another job would),
- with two trainings at once (as the suite's ``--workers 2``, ``-optimize --n-jobs 2`` or two terminals).

Each figure is SB3's last ``time/fps`` of a run, the median over the repeats; the runs of a case alternate their
order. Models: PPOKL on CartPole-v1 and OffPAC on Pendulum-v1 with the package's yml (``-n`` below the yml's
budget: the speed of the first steps, not a learning result)::

    python benchmark/threads/measure.py --repeats 3 > benchmark/threads/results.md
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

FPS = re.compile(r"\|\s*fps\s*\|\s*([0-9.]+)\s*\|")
#: (algo, env, steps): enough for several of SB3's log lines past the first updates
RUNS = (("ppokl", "CartPole-v1", 20_000), ("offpac", "Pendulum-v1", 1_000))
BUSY_LOOP = "while True: pass"


def command(algo: str, env_id: str, steps: int, threads: int, folder: str) -> list[str]:
    """The zoo's train command; OffPAC starts learning after 500 steps, so that most of the run trains."""
    return [
        sys.executable, "-m", "sb3_pgext.zoo", "train", "--algo", algo, "--env", env_id, "-n", str(steps),
        "--num-threads", str(threads), "-f", folder, "--eval-freq", "-1", "--verbose", "1", "--seed", "0",
        *(["-params", "learning_starts:500"] if algo == "offpac" else []),
    ]  # fmt: skip


def fps_of(output: str) -> float:
    values = FPS.findall(output)
    if not values:
        raise RuntimeError(f"no fps in the training's output:\n{output[-2000:]}")
    return float(values[-1])


def train(jobs: list[list[str]]) -> list[float]:
    """Start the commands at once; their fps."""
    environment = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    processes = [subprocess.Popen(job, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment) for job in jobs]
    return [fps_of(process.communicate()[0]) for process in processes]


@contextmanager
def busy_core(busy: bool) -> Iterator[None]:
    """A busy loop on one core during the block (when ``busy``)."""
    loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        yield
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = (("idle, one training", False, 1), ("one core busy, one training", True, 1), ("idle, two trainings at once", False, 2))
    print(f"{os.cpu_count()} cores; env steps/s (SB3's time/fps at the end of the run), median over {args.repeats} runs.\n")
    print("| model | case | 1 thread | torch's default | 1 thread / default |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for algo, env_id, steps in RUNS:
            for case, busy, n_jobs in cases:
                rates: dict[int, list[float]] = {1: [], -1: []}
                for repeat in range(args.repeats):
                    for threads in ((1, -1) if repeat % 2 == 0 else (-1, 1)):
                        with busy_core(busy):
                            jobs = [command(algo, env_id, steps, threads, os.path.join(folder, f"{algo}-{job}")) for job in range(n_jobs)]
                            rates[threads] += train(jobs)
                one, default = statistics.median(rates[1]), statistics.median(rates[-1])
                print(f"| {algo} {env_id} | {case} | {one:.0f} | {default:.0f} | {one / default:.2f} |", flush=True)
    print(f"\nMeasured with `python benchmark/threads/measure.py --repeats {args.repeats}`; nothing else ran.")


if __name__ == "__main__":
    main()
