"""
What the zoo command checks before it runs an rl_zoo3 script, so that a missing extra or an argument the script
would trip on far inside gets a message naming it (and the fix) instead of a traceback:

- :func:`missing_extra`: the packages a command imports (``record_video``: moviepy, and pygame for the envs that
  render with it; the plot commands: seaborn and the other plot packages), with the extra that installs them;
- :func:`trial_id_error`: ``train --trial-id N`` of a study with no trial N;
- :func:`rliable_error`: ``plot_from_file -r`` on results with fewer than two runs of an algorithm (rliable's
  bootstrap needs two; rl_zoo3 stops with "min() arg is an empty sequence").
"""

import argparse
import importlib.util
import pickle
from typing import Any

#: command -> (extra, modules it needs); record_video's pygame only for the envs that render with it
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "record_video": ("video", ("moviepy",)),
    "plot_train": ("plots", ("seaborn", "pandas")),
    "plot_from_file": ("plots", ("seaborn", "pandas", "pytablewriter", "rliable")),
    "all_plots": ("plots", ("seaborn", "pandas", "pytablewriter", "scipy")),
}
#: gymnasium's envs that render with pygame (their entry points' modules)
PYGAME_ENVS = ("gymnasium.envs.classic_control", "gymnasium.envs.box2d", "gymnasium.envs.toy_text")


def _flag_value(flags: list[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``flags`` (``--name value`` or ``--name=value``), or None."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(*names, dest="value")
    known, _ = parser.parse_known_args(flags)
    return known.value


def _renders_with_pygame(env_id: str | None) -> bool:
    import gymnasium

    try:
        entry_point = str(gymnasium.spec(env_id or "CartPole-v1").entry_point)
    except gymnasium.error.Error:
        return False
    return entry_point.startswith(PYGAME_ENVS)


def missing_extra(command: str, flags: list[str], find_spec: Any = importlib.util.find_spec) -> str | None:
    """
    The message for a command whose packages are not installed (None: all are).

    :param command: the zoo command
    :param flags: its flags
    :param find_spec: how a module is looked up (``importlib.util.find_spec``; tests pass their own)
    """
    if command not in EXTRAS:
        return None
    extra, modules = EXTRAS[command]
    if command == "record_video" and _renders_with_pygame(_flag_value(flags, "--env")):
        modules = (*modules, "pygame")
    missing = [module for module in modules if find_spec(module) is None]
    if not missing:
        return None
    return f'{command} needs {", ".join(missing)}, which {"is" if len(missing) == 1 else "are"} not installed: pip install "sb3-pgext[{extra}]"'


def trial_id_error(flags: list[str]) -> str | None:
    """
    For ``train --trial-id N --storage S --study-name X``: the message when study X has no trial N (None: it has,
    or the flags do not ask for a trial). The zoo would stop with a raw ``IndexError``.

    :param flags: the train command's flags
    """
    trial_id = _flag_value(flags, "--trial-id")
    storage, study_name = _flag_value(flags, "--storage"), _flag_value(flags, "--study-name")
    if trial_id is None or storage is None or study_name is None or not trial_id.lstrip("-").isdigit():
        return None
    import optuna

    # as the zoo's ExperimentManager.load_trial opens it: a ".log" file is a journal, anything else a database URL
    opened = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)) if storage.endswith(".log") else storage
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        return f"--study-name {study_name}: no such study in {storage}"
    n_trials = len(study.trials)
    if 0 < int(trial_id) < n_trials:
        return None
    return (
        f"--trial-id {trial_id}: study {study_name} in {storage} has {n_trials} trials, numbered 0 to {n_trials - 1}; "
        "the zoo takes 1 to the last (it treats --trial-id 0 as unset)"
    )


def rliable_error(flags: list[str]) -> str | None:
    """
    For ``plot_from_file -r``: the message when an algorithm of the results file has fewer than two runs on an env
    (None: every one has two or more, or ``-r`` is not asked for, or the file cannot be read: the zoo says why).

    :param flags: the plot_from_file command's flags
    """
    if "-r" not in flags and "--rliable" not in flags:
        return None
    filename = _flag_value(flags, "-i", "--input")
    if filename is None:
        return None
    filename = filename if filename.endswith(".pkl") else f"{filename}.pkl"
    try:
        with open(filename, "rb") as file:
            results = pickle.load(file)
    except (OSError, pickle.UnpicklingError, EOFError):
        return None
    few = []
    for env, per_key in results.items():
        if env == "results_table":  # all_plots' table, beside the envs
            continue
        for key, values in per_key.items():
            if not (isinstance(values, dict) and "last_evals" in values):
                continue
            last_evals = values["last_evals"]  # one score per run, or one float when there was no evaluation to keep
            n_runs = len(last_evals) if hasattr(last_evals, "__len__") else 1
            if n_runs < 2:
                few.append(f"{key} on {env} ({n_runs})")
    if not few:
        return None
    return (
        f"-r (rliable's aggregates) needs at least two runs of each algorithm on each env, and {filename} has fewer for "
        f"{', '.join(few)}: train more seeds (--seed) before all_plots, or leave out -r"
    )
