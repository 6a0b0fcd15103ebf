"""
python -m sb3_pgext.suite run quick [--workers 2] [--out benchmark/quick] [--envs ...] [--algos ...] [--seeds ...] [--device cpu]
python -m sb3_pgext.suite run standard --backend ray [--address <Ray cluster address>]
python -m sb3_pgext.suite speed quick --device cuda [--out benchmark/quick] [--threads 1]
python -m sb3_pgext.suite report quick [--out benchmark/quick]

``run`` trains the suite's unfinished runs through the RL Zoo (in local worker processes, or with
``--backend ray`` one Ray task per run on a Ray cluster, or on a local Ray instance without ``--address``)
and then writes the report; ``speed``
times OffPAC's, CVPG's and SAC's updates per second on the CPU and on ``--device`` (speed.json) and
rewrites the report; ``report`` only rewrites it from what is there.
"""

import argparse
import shlex
import sys
from pathlib import Path

from sb3_pgext.suite import load_suite, run_suite, write_report
from sb3_pgext.suite.runner import BACKENDS, finished_results
from sb3_pgext.suite.speed import measure_speed, pin_to_cores


def _parser() -> argparse.ArgumentParser:
    """The command line: ``run``, ``speed`` and ``report``, each with its own options and ``--help``."""
    parser = argparse.ArgumentParser(prog="python -m sb3_pgext.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("suite", help='a suite file, or the name of one in zoo_configs/ ("quick", "standard")')
    shared.add_argument("--out", type=Path, help="results folder (default: benchmark/<suite>)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,speed,report}")
    run = commands.add_parser("run", parents=[shared], help="train the suite's unfinished runs, then write the report")
    run.add_argument("--workers", type=int, default=2, help="runs trained side by side (one torch thread each)")
    run.add_argument("--backend", choices=BACKENDS, default="local", help="local worker processes or one Ray task per run")
    run.add_argument("--address", help='with --backend ray: the Ray cluster\'s address ("auto", "ray://<head>:10001"); none: a local instance')
    run.add_argument("--device", default="cpu", help='torch device of every run ("cpu", "cuda")')
    run.add_argument("--envs", nargs="+", help="only these envs of the suite")
    run.add_argument("--algos", nargs="+", help="only these algorithms of the suite")
    run.add_argument("--seeds", nargs="+", type=int, help="only these seeds of the suite")
    speed = commands.add_parser("speed", parents=[shared], help="time OffPAC's, CVPG's and SAC's updates, then rewrite the report")
    speed.add_argument("--device", default="cpu", help='the device compared with the CPU ("cuda")')
    speed.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (the runs use 1), the process pinned to as many cores")
    speed.add_argument("--repeats", type=int, default=3, help="timed train() calls per algorithm and device")
    speed.add_argument("--envs", nargs="+", help="only these envs of the suite")
    report = commands.add_parser("report", parents=[shared], help="rewrite the report from the finished runs")
    report.add_argument("--workers", type=int, default=2, help="the --workers of the report's Reproduce command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("workers", "threads", "repeats"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    suite = load_suite(args.suite)
    out = args.out or Path("benchmark") / suite.name
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if args.command == "run":
        if args.address is not None and args.backend != "ray":
            parser.error("--address is the address of a Ray cluster: add --backend ray")
        try:
            failed = run_suite(
                suite, out, workers=args.workers, device=args.device, envs=args.envs, algos=args.algos,
                backend=args.backend, address=args.address, seeds=args.seeds,
            )  # fmt: skip
        except ValueError as error:  # a suite file or --envs / --algos / --seeds that does not fit: before any run
            parser.error(str(error))
    elif args.command == "speed":
        import torch

        torch.set_num_threads(args.threads)
        pin_to_cores(args.threads)  # SBX's XLA uses more threads than it is told to: one core for every framework alike
        try:
            print(f"speed: {measure_speed(suite, out, device=args.device, repeats=args.repeats, envs=args.envs)}")
        except ValueError as error:
            parser.error(str(error))
    command = f"python -m sb3_pgext.suite run {shlex.quote(args.suite)} --workers {getattr(args, 'workers', 2)}"
    if args.out is not None:
        command += f" --out {shlex.quote(str(args.out))}"
    # the runs' device: this command's for run, else the one their result.json files record
    run_devices = {args.device} if args.command == "run" else {result["device"] for result in finished_results(suite, out)}
    if len(run_devices) == 1 and run_devices != {"cpu"}:
        command += f" --device {run_devices.pop()}"
    print(f"report: {write_report(suite, out, command)}")
    if failed:
        print(f"{len(failed)} runs failed: see their train.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
