"""
``python -m sb3_pgext.zoo <command> [zoo flags]`` (console script ``sb3-pgext-zoo``): rl_zoo3's own
commands, with this package's algorithms registered (see :func:`sb3_pgext.zoo.register`).

Commands: train (``-optimize``, ``--trial-id`` ...), enjoy, record_video, push_to_hub,
load_from_hub, plot_train, plot_from_file, all_plots. ``train --log-csv`` also writes SB3's
``progress.csv`` (every logged value, full precision) into the run's log folder. (rl_zoo3's record_training is left out: it
starts ``python -m rl_zoo3.record_video`` in a subprocess, where this package is not registered.) ``train``, ``enjoy``
and ``push_to_hub`` run with one torch thread unless ``--num-threads`` is given (``benchmark/threads/`` measures why);
a missing extra, a ``--trial-id`` the study does not have and ``plot_from_file -r`` on single runs are refused with
a message before the zoo starts (:mod:`sb3_pgext.zoo.checks`).
Agents saved with ``gym`` (SB3 1.x, the hub's ``sb3/*`` agents) load as they are: the command runs
with ``gym`` mapped to ``gymnasium`` (see :func:`sb3_pgext.common.compat.gym_as_gymnasium`). The ``VecNormalize``
statistics the zoo saves are written beside their file and renamed into place
(:func:`sb3_pgext.common.save_util.atomic_vec_normalize_saves`); started by the benchmark suite's runner, the
command ends with it (:func:`sb3_pgext.common.processes.die_with_parent`).
"""

import argparse
import importlib
import runpy
import sys
import warnings
from typing import Any

from torch import nn

from sb3_pgext.common.compat import gym_as_gymnasium
from sb3_pgext.common.hyperparams import hyperparams_path
from sb3_pgext.common.processes import die_with_parent
from sb3_pgext.common.save_util import atomic_vec_normalize_saves
from sb3_pgext.zoo import ALGOS, checks, register

# command -> (rl_zoo3 module, its entry function, or None where the script is a ``__main__`` block)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "train": ("rl_zoo3.train", "train"),
    "enjoy": ("rl_zoo3.enjoy", "enjoy"),
    "record_video": ("rl_zoo3.record_video", None),
    "push_to_hub": ("rl_zoo3.push_to_hub", None),
    "load_from_hub": ("rl_zoo3.load_from_hub", None),
    "plot_train": ("rl_zoo3.plots.plot_train", "plot_train"),
    "plot_from_file": ("rl_zoo3.plots.plot_from_file", "plot_from_file"),
    "all_plots": ("rl_zoo3.plots.all_plots", "all_plots"),
}

USAGE = f"usage: python -m sb3_pgext.zoo {{{','.join(COMMANDS)}}} [rl_zoo3 flags ...]"
HELP = """
rl_zoo3's commands with PPOKL (ppokl), CVPG (cvpg) and OffPAC (offpac) registered beside SB3's algorithms;
every flag is the zoo's (python -m sb3_pgext.zoo <command> --help lists a command's). Our algorithms read the
package's hyperparams/<algo>.yml unless --conf-file is given.

  train           train, or tune with -optimize; --log-csv also writes progress.csv into the run's folder
  enjoy           replay a trained agent
  record_video    record a video of a trained agent (pip install "sb3-pgext[video]")
  push_to_hub     publish a trained agent on the Hugging Face Hub
  load_from_hub   download an agent from the Hub
  plot_train      plot training curves (pip install "sb3-pgext[plots]", like the two below)
  all_plots       gather the evaluations of runs (-o FILE --no-display saves them)
  plot_from_file  plot what all_plots saved (-r: rliable's aggregates, two runs per algorithm at least)

train, enjoy and push_to_hub run with one torch thread unless --num-threads is given (-1: torch's default),
the fastest for small networks on the CPU, above all when other jobs share the machine. rl_zoo3's
record_training is not available here: record each checkpoint with record_video --load-checkpoint N.
"""
#: the commands that take the zoo's --num-threads, and the value they get when it is not given
THREADED_COMMANDS = ("train", "enjoy", "push_to_hub")
DEFAULT_NUM_THREADS = 1


def with_package_conf_file(flags: list[str]) -> list[str]:
    """
    ``train``'s flags, plus ``--conf-file`` with the package's ``hyperparams/<algo>.yml`` when ``--algo`` names one
    of our algorithms and no ``--conf-file`` is given (the zoo would look in its own folder, which has no entry
    for them). The flags are read as the zoo's parser reads them (abbreviations, ``--flag=value``).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("-conf", "--conf-file", default=None)
    known, _ = parser.parse_known_args(flags)
    if known.conf_file is not None or known.algo not in ALGOS:
        return flags
    return [*flags, "--conf-file", str(hyperparams_path(known.algo))]


def python_literal(value: Any) -> str:
    """
    A hyperparameter's value as the Python source that ``train --hyperparams key:SOURCE`` (``-params``) evaluates back
    to it (rl_zoo3's ``StoreDict``, in the namespace of ``rl_zoo3.utils``, where ``nn`` is ``torch.nn``): literals,
    nested in dicts, lists and tuples, and ``torch.nn`` classes such as an activation (whose ``repr`` is not Python).

    :param value: the value
    :return: its source
    """
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {python_literal(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        items = [python_literal(item) for item in value]
        return f"[{', '.join(items)}]" if isinstance(value, list) else f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    if isinstance(value, type) and getattr(nn, value.__name__, None) is value:
        return f"nn.{value.__name__}"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise TypeError(f"no --hyperparams literal for {value!r}")


def run_main_block(module_name: str) -> None:
    """
    Run an rl_zoo3 script (``record_video``, ``push_to_hub``, ``load_from_hub``: a ``__main__`` block, no entry
    function) as ``python -m <module>`` does, with ``runpy``. It runs a fresh copy of the module: what
    :func:`register` set up reaches it only through objects it imports from other modules (rl_zoo3's ``ALGOS``,
    ``ExperimentManager``, the hub functions of :mod:`sb3_pgext.zoo.hub`), never through the script's own names.
    ``sys.argv`` and ``sys.modules["__main__"]`` are left as :func:`main` set them (``alter_sys=False``), so the
    script's usage line names ``sb3_pgext.zoo <command>``.
    """
    with warnings.catch_warnings():
        # the module may already be imported (by a test, a notebook): a fresh copy is what we want
        warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
        runpy.run_module(module_name, run_name="__main__", alter_sys=False)


def main(argv: list[str] | None = None) -> None:
    """Register the algorithms, then run the rl_zoo3 command ``argv[0]`` with the flags ``argv[1:]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE + HELP, end="")
        return
    if not argv:  # as argparse does for a missing required argument: usage on stderr, exit status 2
        print(f"{USAGE}\nerror: a command is required (-h for help)", file=sys.stderr)
        raise SystemExit(2)
    die_with_parent()  # started by the benchmark suite's runner: end with it
    command, flags = argv[0], argv[1:]
    if command == "record_training":
        raise SystemExit(
            "record_training is not available: rl_zoo3 runs it as 'python -m rl_zoo3.record_video' subprocesses, which "
            "do not know this package's algorithms. Record the final model and each checkpoint with\n"
            "  python -m sb3_pgext.zoo record_video --algo ALGO --env ENV -f FOLDER [--load-checkpoint N | --load-best]"
        )
    if command not in COMMANDS:
        raise SystemExit(f"unknown command {command!r}\n{USAGE}")
    log_csv = "--log-csv" in flags
    if log_csv and command != "train":
        raise SystemExit(f"--log-csv is a flag of train only, not of {command}\n{USAGE}")
    flags = [flag for flag in flags if flag != "--log-csv"]
    problem = checks.missing_extra(command, flags)
    if problem is None and command == "train":
        problem = checks.trial_id_error(flags)
    if problem is None and command == "plot_from_file":
        problem = checks.rliable_error(flags)
    if problem is not None:
        raise SystemExit(f"python -m sb3_pgext.zoo {command}: {problem}")
    if command in THREADED_COMMANDS and not any(flag.startswith("--num-threads") for flag in flags):
        flags += ["--num-threads", str(DEFAULT_NUM_THREADS)]
        print(f"sb3_pgext.zoo: {DEFAULT_NUM_THREADS} torch thread (--num-threads N to choose, -1 for torch's default)")
    if command == "train":
        flags = with_package_conf_file(flags)
    module_name, function = COMMANDS[command]
    register(log_csv=log_csv)
    saved_argv = sys.argv
    sys.argv = [f"sb3_pgext.zoo {command}", *flags]
    try:
        with gym_as_gymnasium(), atomic_vec_normalize_saves():
            if function is None:
                run_main_block(module_name)
            else:
                getattr(importlib.import_module(module_name), function)()
    finally:
        sys.argv = saved_argv
