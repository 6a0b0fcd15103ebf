"""
Resumable hyperparameter searches behind the yml files' tuned entries, through the RL Zoo's ``-optimize``
with the package's Optuna samplers (``sb3_pgext.zoo.hyperparams_opt``)::

    python benchmark/tuning/run.py run ppokl-CartPole-v1       # runs the study's remaining trials
    python benchmark/tuning/run.py report                      # writes benchmark/tuning/results.md
    python benchmark/tuning/run.py list
    python benchmark/tuning/run.py verify ppokl-Pendulum-v1     # the best trials again, at 3 seeds

Every trial is one zoo process::

    python -m sb3_pgext.zoo train --algo ALGO --env ENV -optimize --n-trials 1 --seed TRIAL_NUMBER
        -n BUDGET --n-evaluations 5 --eval-episodes 10 --sampler tpe --pruner median --n-startup-trials STARTUP
        --storage benchmark/tuning/work/STUDY.log --study-name STUDY -f benchmark/tuning/work/logs --no-optim-plots

on an Optuna journal in ``benchmark/tuning/work/`` (not committed). ``STARTUP`` is the study's number of random
start-up trials, which the zoo gives both to TPE (random draws before it models) and to the median pruner (no pruning
before that many trials have finished): 10, or 5 in a study of 10 trials, which would otherwise be a random search
that prunes nothing. The seed is the trial's number, so the
sampler's random start-up draws differ from trial to trial and a search repeated from scratch draws the same
first points; the trial's model is unseeded, as in the zoo. After each trial the study is exported to
``benchmark/tuning/STUDY.json`` (committed): every finished trial's state, value, raw parameters, intermediate
evaluations and duration, without the worker's host name. A clone without the journal rebuilds it from that
export, so a search goes on where the last session stopped; a trial cut off by a killed session is marked
failed when the search resumes (the zoo's ``--max-total-trials`` would count it as running for ever), and its
number is not reused.

A study may queue start points before the sampler's own draws (the env's yml entry, ``Study.start_points``); each is
one more trial, recorded as such in the export and the report.

A study's best value is one unseeded run's final evaluation, the largest of many noisy draws: it overstates what
the hyperparameters reach. ``verify`` trains the study's best complete trials (by that value) again at 3 seeds
(``Study.verify_seeds``: 10, 11 and 12, held out from the standard suite's 0 to 4, for the studies from
ppokl-LunarLanderContinuous-v3 on; 0, 1 and 2 for the earlier ones, as they ran), and the queued entry with them where
it is not among the best, each ``python -m sb3_pgext.zoo train --trial-id N --seed S`` at the study's budget with 5
evaluations (trial 0, which the zoo's ``--trial-id`` cannot name, with its parameters given as ``--hyperparams``), and
records each run's final evaluation in ``benchmark/tuning/STUDY.verify.json`` (committed; runs already there are
skipped). The yml takes the trial whose mean final evaluation over the seeds is best; the standard suite (5 seeds) is
what measures the entry.
"""

import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState

from sb3_pgext.common.processes import PARENT_PID_VARIABLE
from sb3_pgext.zoo.cli import python_literal
from sb3_pgext.zoo.hyperparams_opt import CONVERTERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "work"


@dataclass(frozen=True)
class Study:
    """
    One search.

    :param algo: the zoo name of the algorithm
    :param env: the Gymnasium id
    :param n_timesteps: each trial's budget (the standard suite's, or the entry's own where the suite's is too long
        for a search on this machine)
    :param n_trials: the trials it runs (complete and pruned; failed ones are not counted)
    :param start_points: raw parameters, as the sampler draws them, of trials queued before the sampler's next own
        draw (Optuna's ``enqueue_trial``): the env's yml entry, so that the search measures where it starts from
    :param verify_seeds: the seeds ``verify`` trains the best trials at
    :param n_startup_trials: the zoo's ``--n-startup-trials``: TPE's random draws before it models, and the trials the
        median pruner waits for before it prunes
    """

    algo: str
    env: str
    n_timesteps: int
    n_trials: int
    start_points: tuple[dict[str, Any], ...] = ()
    verify_seeds: tuple[int, ...] = (0, 1, 2)
    n_startup_trials: int = 10

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.env}"


#: seeds held out from the suites that measure the entries (0-4), for verifying a search's best trials (ppokl-entries,
#: which compares entries before they are kept, trains 10-14)
HELD_OUT_SEEDS = (10, 11, 12)
#: CVPG's critic and η as the constructor's defaults set them, in the CVPG sampler's raw parameters
_CVPG_DEFAULT_CRITIC = {"qf_optimizer": "adam", "qf_learning_rate": 1e-3, "qf_gradient_steps": None, "qf_rollouts": 1, "eta": "adaptive"}
#: what OffPAC's Discrete entries share, in the OffPAC sampler's raw parameters (gamma 0.99, batch 256, tau 0.01)
_OFFPAC_DISCRETE_ENTRY = {"one_minus_gamma": 0.01, "batch_size_pow": 8, "tau": 0.01, "actor_gradient": "expected"}

STUDIES = {
    study.name: study
    for study in (
        Study("ppokl", "CartPole-v1", 100_000, 50),
        Study("ppokl", "Pendulum-v1", 100_000, 50),
        Study("ppokl", "Acrobot-v1", 200_000, 40),
        # from here on verified at seeds held out from the standard suite's
        Study("ppokl", "LunarLanderContinuous-v3", 300_000, 30, verify_seeds=HELD_OUT_SEEDS),
        Study("ppokl", "LunarLander-v3", 500_000, 30, verify_seeds=HELD_OUT_SEEDS),
        # OffPAC takes a gradient step per env step: 12 to 80 minutes a trial here (the entry, queued first as trial 0: 12)
        Study("offpac", "Acrobot-v1", 200_000, 12,
              ({**_OFFPAC_DISCRETE_ENTRY, "learning_rate": 1e-3, "train_freq": 1, "net_arch": "small"},), HELD_OUT_SEEDS),
        # at the entry's own budget (200k; the standard suite trains it 500k), the entry queued first; 5 start-up trials,
        # so that TPE draws and the pruner prunes in the second half of a 10-trial search
        Study("offpac", "LunarLander-v3", 200_000, 10,
              ({**_OFFPAC_DISCRETE_ENTRY, "learning_rate": 6.3e-4, "train_freq": 4, "net_arch": "medium"},), HELD_OUT_SEEDS, 5),
        Study("cvpg", "Pendulum-v1", 100_000, 50),  # 30 before the sampler drew the critic's optimizer, 20 with it
        Study("cvpg", "LunarLanderContinuous-v3", 300_000, 20),
        # the MuJoCo searches queue the entry itself (zoo PPO's values, CVPG's default critic; its 64×64 critic stays the
        # entry's): trial 10 of HalfCheetah-v5's, trial 2 of Hopper-v5's, queued when their best draws had not reached
        # the entry's return
        Study("cvpg", "HalfCheetah-v5", 300_000, 12, ({**_CVPG_DEFAULT_CRITIC, "n_steps_pow": 9, "batch_size_pow": 6,
              "learning_rate": 2.0633e-05, "n_epochs": 20, "clip_range": 0.1},)),
        Study("cvpg", "Hopper-v5", 300_000, 12, ({**_CVPG_DEFAULT_CRITIC, "n_steps_pow": 9, "batch_size_pow": 5,
              "learning_rate": 9.80828e-05, "n_epochs": 5, "clip_range": 0.2},)),
    )
}
#: the zoo flags every study shares
SEARCH_FLAGS = [
    "--n-evaluations", "5", "--eval-episodes", "10", "--sampler", "tpe", "--pruner", "median",
    "--no-optim-plots", "--num-threads", "1",
]  # fmt: skip
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def journal_path(study: Study) -> Path:
    return WORK / f"{study.name}.log"


def export_path(study: Study) -> Path:
    return HERE / f"{study.name}.json"


def zoo_command(study: Study, seed: int | str = "TRIAL_NUMBER") -> list[str]:
    """The zoo command of one trial, with paths relative to the repository's root (where it runs)."""
    return [
        "python", "-m", "sb3_pgext.zoo", "train", "--algo", study.algo, "--env", study.env, "-optimize",
        "--n-trials", "1", "--seed", str(seed), "-n", str(study.n_timesteps), *SEARCH_FLAGS,
        "--n-startup-trials", str(study.n_startup_trials),
        "--storage", str(journal_path(study).relative_to(ROOT)), "--study-name", study.name,
        "-f", str((WORK / "logs").relative_to(ROOT)),
    ]  # fmt: skip


def open_study(study: Study) -> optuna.Study:
    """The study on its journal; rebuilt from the committed export where the journal is missing."""
    WORK.mkdir(exist_ok=True)
    journal = journal_path(study)
    rebuild = not journal.exists() and export_path(study).exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna_study = optuna.create_study(storage=storage, study_name=study.name, direction="maximize", load_if_exists=True)
    if rebuild:
        exported = json.loads(export_path(study).read_text(encoding="utf-8"))
        for key, value in exported["study_user_attrs"].items():
            optuna_study.set_user_attr(key, value)
        for trial in exported["trials"]:
            optuna_study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState[trial["state"]],
                    value=trial["value"] if trial["state"] == "COMPLETE" else None,
                    params=trial["params"],
                    distributions={key: json_to_distribution(value) for key, value in trial["distributions"].items()},
                    intermediate_values={int(step): value for step, value in trial["intermediate_values"].items()},
                    user_attrs={**trial["user_attrs"], "duration_s": trial["duration_s"]},
                )
            )
    return optuna_study


def fail_cut_off_trials(optuna_study: optuna.Study) -> None:
    """Mark the trials a killed session left running as failed (the runner's lock says no other worker is on it)."""
    for trial in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna_study.tell(trial.number, state=TrialState.FAIL)


def export(study: Study, optuna_study: optuna.Study) -> None:
    """Write the finished trials to ``STUDY.json`` (renamed into place), without the worker's host name."""
    trials = []
    for trial in optuna_study.get_trials(deepcopy=False, states=FINISHED):
        user_attrs = {key: value for key, value in trial.user_attrs.items() if key not in ("worker", "duration_s")}
        duration = trial.user_attrs.get("duration_s")
        if duration is None and trial.datetime_start is not None and trial.datetime_complete is not None:
            duration = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        trials.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "params": trial.params,
                "distributions": {key: distribution_to_json(value) for key, value in trial.distributions.items()},
                "intermediate_values": {str(step): value for step, value in sorted(trial.intermediate_values.items())},
                "duration_s": duration,
                "user_attrs": user_attrs,
            }
        )
    exported = {
        "study": study.name,
        "algo": study.algo,
        "env": study.env,
        "n_timesteps": study.n_timesteps,
        "n_trials": study.n_trials,
        "command": " ".join(zoo_command(study)),
        "study_user_attrs": {key: value for key, value in optuna_study.user_attrs.items() if key != "command"},
        "trials": trials,
    }
    path = export_path(study)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(exported, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def enqueue_start_points(study: Study, optuna_study: optuna.Study) -> None:
    """Queue the study's start points that no trial has taken yet (each trial records its point's index)."""
    taken = {trial.user_attrs.get("start_point") for trial in optuna_study.get_trials(deepcopy=False)}
    for index, params in enumerate(study.start_points):
        if index not in taken:
            optuna_study.enqueue_trial(params, user_attrs={"start_point": index})


def next_trial_number(optuna_study: optuna.Study) -> int:
    """The number of the trial the next zoo process runs: the first queued one, else a new one."""
    waiting = optuna_study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return min(trial.number for trial in waiting) if waiting else len(optuna_study.trials)


def counted(optuna_study: optuna.Study) -> int:
    return len(optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run(study: Study, n_trials: int | None) -> None:
    target = study.n_trials if n_trials is None else n_trials
    WORK.mkdir(exist_ok=True)
    with open(WORK / f"{study.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another runner is on {study.name} (lock {WORK / study.name}.lock)") from None
        optuna_study = open_study(study)
        fail_cut_off_trials(optuna_study)
        enqueue_start_points(study, optuna_study)
        export(study, optuna_study)
        # "python" found first in the runner's own environment; the zoo process dies with the runner (a killed session)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, PARENT_PID_VARIABLE: str(os.getpid())}
        while counted(optuna_study) < target:
            number = next_trial_number(optuna_study)
            print(f"{study.name}: trial {number} ({counted(optuna_study)} of {target} done)", flush=True)
            started = time.monotonic()
            with open(WORK / f"{study.name}.trial.log", "w") as log:
                code = subprocess.call(zoo_command(study, seed=number), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            optuna_study = open_study(study)
            fail_cut_off_trials(optuna_study)
            export(study, optuna_study)
            trial = optuna_study.trials[number] if len(optuna_study.trials) > number else None
            state = trial.state.name if trial is not None else "not started"
            print(f"  exit {code}, {state}, value {trial.value if trial else None}, {time.monotonic() - started:.0f} s", flush=True)
            if trial is None or code != 0 and trial.state == TrialState.FAIL:
                raise SystemExit(f"trial {number} of {study.name} failed: see {WORK / study.name}.trial.log")


VERIFY_TRIALS = 5


def verify_path(study: Study) -> Path:
    return HERE / f"{study.name}.verify.json"


def trial_flags(study: Study, trial: dict[str, Any]) -> list[str]:
    """
    The zoo flags that train an exported trial's hyperparameters: ``--trial-id N`` on the study's journal, or, for trial
    0 (the zoo reads ``--trial-id 0`` as no trial id), its raw parameters converted as the zoo's ``--trial-id`` would,
    given with ``--hyperparams`` (each value's Python literal, which the zoo evaluates).
    """
    if trial["number"] > 0:
        return ["--trial-id", str(trial["number"]), "--storage", str(journal_path(study).relative_to(ROOT)), "--study-name", study.name]
    hyperparams = CONVERTERS[study.algo](trial["params"])
    return ["--hyperparams", *(f"{key}:{python_literal(value)}" for key, value in hyperparams.items())]


def verify(study: Study, n_trials: int) -> None:
    """
    Train the study's best ``n_trials`` complete trials, and its start points (the yml entry it was queued with) where
    they are not among them, at each of its ``verify_seeds``; record their final evaluations. The entry is so measured
    at the same seeds as the trials that would replace it.
    """
    import numpy as np

    exported = json.loads(export_path(study).read_text(encoding="utf-8"))
    complete = ranked_complete(exported["trials"])
    best = complete[:n_trials] + [trial for trial in complete[n_trials:] if is_entry(trial)]
    path = verify_path(study)
    results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"runs": {}}
    optuna_study = open_study(study)  # the journal the zoo reads the trials' parameters from (rebuilt if missing)
    del optuna_study
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", PARENT_PID_VARIABLE: str(os.getpid())}
    for trial in best:
        for seed in study.verify_seeds:
            key = f"{trial['number']}/{seed}"
            if key in results["runs"]:
                continue
            folder = WORK / "verify" / study.name / f"trial{trial['number']}-seed{seed}"
            command = [
                "python", "-m", "sb3_pgext.zoo", "train", "--algo", study.algo, "--env", study.env, "--seed", str(seed),
                *trial_flags(study, trial), "-n", str(study.n_timesteps), "--eval-freq", str(study.n_timesteps // 5),
                "--eval-episodes", "10", "--num-threads", "1", "-f", str(folder.relative_to(ROOT)),
            ]  # fmt: skip
            print(f"{study.name}: trial {trial['number']}, seed {seed}", flush=True)
            started = time.monotonic()
            with open(WORK / f"{study.name}.verify.log", "w") as log:
                code = subprocess.call(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            evaluations = sorted(folder.rglob("evaluations.npz"))
            if code != 0 or not evaluations:
                raise SystemExit(f"trial {trial['number']} at seed {seed} failed: see {WORK / study.name}.verify.log")
            final = float(np.load(evaluations[-1])["results"][-1].mean())
            results["runs"][key] = {"final": final, "duration_s": round(time.monotonic() - started)}
            if trial["number"] > 0:  # the command of every trial but 0, whose own is kept with its runs
                results["command"] = " ".join(command[:-1] + ["benchmark/tuning/work/verify/STUDY/trialN-seedS"])
            else:
                results["runs"][key]["command"] = shlex.join(command)
            print(f"  final evaluation {final:.1f}", flush=True)
            path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def ranking(trial: dict[str, Any]) -> tuple[float, float]:
    """A complete trial's rank: its value (the last evaluation), then the mean of its evaluations along the run."""
    evaluations = list(trial["intermediate_values"].values())
    return trial["value"], sum(evaluations) / len(evaluations) if evaluations else float("-inf")


def ranked_complete(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An export's complete trials, best first (``ranking``)."""
    return sorted((trial for trial in trials if trial["state"] == "COMPLETE"), key=ranking, reverse=True)


def is_entry(trial: dict[str, Any]) -> bool:
    """Whether an exported trial is one of the study's queued start points (the yml entry)."""
    return "start_point" in trial["user_attrs"]


def trial_label(number: int, entries: set[int]) -> str:
    """A trial's number as the report's tables give it, the entry marked."""
    return f"{number} (the entry)" if number in entries else str(number)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report() -> None:
    """``results.md``: per study, its trials, the best five and the best trial's hyperparameters as the zoo converts them."""
    lines = [
        "# Hyperparameter searches",
        "",
        "Generated by `python benchmark/tuning/run.py report` from the exports beside it. Each trial: one unseeded",
        "run of the study's budget, valued by its last evaluation (10 episodes, deterministic); TPE (10 random",
        "start-up trials where the study's command does not say otherwise, seeded by the trial's number) and the",
        "median pruner, 5 evaluations per run. The best value overstates what its hyperparameters reach: the",
        "standard suite measures the entries at 5 seeds.",
        "",
    ]
    for name, study in STUDIES.items():
        path = export_path(study)
        if not path.exists():
            lines += [f"## {name}", "", f"not run ({study.n_trials} trials of {study.n_timesteps:,} steps planned)", ""]
            continue
        exported = json.loads(path.read_text(encoding="utf-8"))
        trials = exported["trials"]
        states = {state: sum(trial["state"] == state for trial in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
        hours = sum(trial["duration_s"] or 0 for trial in trials) / 3600
        lines += [
            f"## {name}",
            "",
            f"{states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed of {study.n_trials} planned; "
            f"{study.n_timesteps:,} steps per trial; {hours:.1f} trial-hours.",
            "",
            f"`python benchmark/tuning/run.py run {name}`: each trial `{exported['command']}`",
            "",
        ]
        complete = ranked_complete(trials)
        if not complete:
            continue
        # the parameters of the five best, in the order drawn (a conditional one, such as L-BFGS's iterations, only where drawn)
        columns = list(dict.fromkeys(key for trial in complete[:5] for key in trial["params"]))
        lines += [
            "Ranked by the last evaluation, ties (the env's maximum, often) broken by the mean of the run's evaluations:",
            "the run that got there sooner. A blank cell: a parameter the trial did not draw (a conditional one, or one",
            "added to the space after it ran: CVPG's trials before `qf_optimizer` was drawn ran Adam, the default).",
            "",
            "| trial | value | mean of evaluations | " + " | ".join(columns) + " |",
            "| --- " * (len(columns) + 3) + "|",
        ]
        entries = {trial["number"] for trial in trials if is_entry(trial)}
        for trial in complete[:5]:
            values = [_fmt(trial["params"].get(key, "")) for key in columns]
            lines += [f"| {trial_label(trial['number'], entries)} | {trial['value']:.1f} | {ranking(trial)[1]:.1f} | " + " | ".join(values) + " |"]
        for trial in trials:
            if is_entry(trial):
                value = f"{trial['value']:.1f}" if trial["state"] == "COMPLETE" else trial["state"].lower()
                lines += ["", f"The entry's own values, queued as trial {trial['number']}: {value}."]
        best = complete[0]
        if verify_path(study).exists():
            runs = json.loads(verify_path(study).read_text(encoding="utf-8"))["runs"]
            finals: dict[int, list[float]] = {}
            for key, run in runs.items():
                finals.setdefault(int(key.split("/")[0]), []).append(run["final"])
            lines += ["", f"Verified: the best trials again at seeds {', '.join(map(str, study.verify_seeds))} (`python benchmark/tuning/run.py verify {name}`), final evaluation:", ""]
            lines += ["| trial | mean over seeds | per seed |", "| --- | --- | --- |"]
            for number, values in sorted(finals.items(), key=lambda item: -sum(item[1]) / len(item[1])):
                lines += [f"| {trial_label(number, entries)} | {sum(values) / len(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |"]
            complete_runs = {number: values for number, values in finals.items() if len(values) == len(study.verify_seeds)}
            if complete_runs:  # the best mean over the seeds; of tied trials, the one the search ranked higher
                verified = [trial for trial in complete if trial["number"] in complete_runs]
                best = max(verified, key=lambda trial: sum(complete_runs[trial["number"]]) / len(study.verify_seeds))
        converted = CONVERTERS[study.algo](dict(best["params"]))
        lines += ["", f"Trial {best['number']}'s hyperparameters (its parameters as the zoo's `--trial-id` converts them):", "", "```yaml"]
        lines += [f"{key}: {_fmt(value)}" for key, value in converted.items()]
        lines += ["```", ""]
    (HERE / "results.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a study's remaining trials")
    run_parser.add_argument("study", choices=sorted(STUDIES))
    run_parser.add_argument("--trials", type=int, help="stop at this many complete and pruned trials (default: the study's)")
    verify_parser = commands.add_parser("verify", help="the best trials and the entry again at the study's 3 verify seeds")
    verify_parser.add_argument("study", choices=sorted(STUDIES))
    verify_parser.add_argument("--trials", type=int, default=VERIFY_TRIALS, help="how many of the best trials (default: 5)")
    commands.add_parser("report", help="write benchmark/tuning/results.md")
    commands.add_parser("list", help="the studies and how far each is")
    args = parser.parse_args()
    if args.command == "run":
        run(STUDIES[args.study], args.trials)
    elif args.command == "verify":
        verify(STUDIES[args.study], args.trials)
    elif args.command == "report":
        report()
    else:
        for name, study in STUDIES.items():
            done = len(json.loads(export_path(study).read_text())["trials"]) if export_path(study).exists() else 0
            print(f"{name}: {done} finished of {study.n_trials}, {study.n_timesteps:,} steps each")


if __name__ == "__main__":
    main()
