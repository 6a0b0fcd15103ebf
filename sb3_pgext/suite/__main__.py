"""
python -m sb3_pgext.suite run quick [--workers 2] [--out benchmark/quick] [--envs ...] [--algos ...] [--device cpu]
python -m sb3_pgext.suite report quick [--out benchmark/quick]

``run`` trains the suite's unfinished runs through the RL Zoo and then writes the report; ``report``
only rewrites it from the runs finished so far.
"""

import argparse
import shlex
import sys
from pathlib import Path

from sb3_pgext.suite import load_suite, run_suite, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sb3_pgext.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("suite", help='a suite file, or the name of one in zoo_configs/ ("quick", "standard")')
    parser.add_argument("--out", type=Path, help="results folder (default: benchmark/<suite>)")
    parser.add_argument("--workers", type=int, default=2, help="runs trained side by side (one torch thread each)")
    parser.add_argument("--device", default="cpu", help='torch device of every run ("cuda" for the GPU)')
    parser.add_argument("--envs", nargs="+", help="only these envs of the suite")
    parser.add_argument("--algos", nargs="+", help="only these algorithms of the suite")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    suite = load_suite(args.suite)
    out = args.out or Path("benchmark") / suite.name
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if args.command == "run":
        failed = run_suite(suite, out, workers=args.workers, device=args.device, envs=args.envs, algos=args.algos)
    command = f"python -m sb3_pgext.suite run {shlex.quote(args.suite)} --workers {args.workers}"
    if args.out is not None:
        command += f" --out {shlex.quote(str(args.out))}"
    if args.device != "cpu":
        command += f" --device {args.device}"
    print(f"report: {write_report(suite, out, command)}")
    if failed:
        print(f"{len(failed)} runs failed: see their train.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
