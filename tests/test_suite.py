"""Benchmark suites: configuration, the resumable runner through the zoo, and the report."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sb3_pgext.suite import load_suite, run_suite, write_report
from sb3_pgext.suite.__main__ import main
from sb3_pgext.suite.config import EnvSpec
from sb3_pgext.suite.formatting import estimate
from sb3_pgext.suite.results import Cell
from sb3_pgext.suite.runner import jobs_of
from sb3_pgext.suite.scores import SCORE_RANGES, normalize

# the budget is a multiple of PPOKL's CartPole-v1 rollout (n_steps 128 x 8 envs in hyperparams/ppokl.yml): the zoo
# trains whole rollouts
TINY_SUITE = """
description: two tiny cells
seeds: [0, 1]
eval_freq: 1024
eval_episodes: 2
envs:
  CartPole-v1:
    n_timesteps: 2048
    threshold: 15
    algos: [ppokl, ppo]
    note: A budget for tests only.
"""


PACKAGED_SUITES = sorted(path.stem for path in (Path(__file__).parent.parent / "zoo_configs").glob("*.yml"))


@pytest.mark.parametrize("name", PACKAGED_SUITES)
def test_packaged_suites_are_complete(name):
    """
    Every env has a normalisation range and an entry in the yml of each of our algorithms (variants included);
    each of ours has a peer; every variant trains a zoo algorithm and runs somewhere.
    """
    import rl_zoo3.utils
    import yaml

    from sb3_pgext.common.hyperparams import hyperparams_path
    from sb3_pgext.registry import ALGORITHMS
    from sb3_pgext.zoo import register

    register()
    suite = load_suite(name)
    assert len(suite.seeds) == 5
    for env in suite.envs:
        assert env.env_id in SCORE_RANGES
        for algo in env.algos:
            assert suite.zoo_algo(algo) in rl_zoo3.utils.ALGOS, algo
            if suite.zoo_algo(algo) in ALGORITHMS:
                with open(hyperparams_path(suite.zoo_algo(algo))) as file:
                    assert env.env_id in yaml.safe_load(file), (algo, env.env_id)
                assert suite.peer(algo, env) in env.algos
    assert all(any(name in env.algos for env in suite.envs) for name in suite.variants)
    if name in ("quick", "standard"):
        assert {"CartPole-v1", "Acrobot-v1", "Pendulum-v1"} <= {env.env_id for env in suite.envs}


def test_bad_suites_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="one of"):
        load_suite("no-such-suite")
    bad = tmp_path / "bad.yml"
    bad.write_text(TINY_SUITE.replace("    threshold: 15\n", ""))
    with pytest.raises(ValueError, match="lacks \\['threshold'\\]"):
        load_suite(bad)
    bad.write_text(TINY_SUITE + "budget: 3\n")
    with pytest.raises(ValueError, match="unknown keys \\['budget'\\]"):
        load_suite(bad)
    bad.write_text(TINY_SUITE.replace("    threshold: 15\n", "    threshold: 15\n    seeds: [1]\n"))
    with pytest.raises(ValueError, match="env CartPole-v1 has unknown keys \\['seeds'\\]"):
        load_suite(bad)
    bad.write_text(TINY_SUITE.replace("[ppokl, ppo]", "[ppokl, nope]"))
    with pytest.raises(ValueError, match="unknown algos \\['nope'\\]"):
        run_suite(load_suite(bad), tmp_path / "out")


def test_normalisation():
    low, high, _ = SCORE_RANGES["CartPole-v1"]
    assert normalize(low, "CartPole-v1") == 0 and normalize(high, "CartPole-v1") == 1
    with pytest.raises(KeyError, match="no normalisation range for Foo-v0"):
        normalize(1.0, "Foo-v0")


def test_steps_to_threshold():
    suite_env = load_suite("quick").envs[0]
    cell = Cell(suite_env, "ppo", [0, 1], np.array([100, 200, 300]), np.array([[10, 480, 500], [10, 20, 30]]), [])
    assert cell.steps_to_threshold() == [200, None]
    np.testing.assert_array_equal(cell.finals, [500, 30])


def test_run_resume_and_report(tmp_path, monkeypatch):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--workers", "2"]) == 0
    suite = load_suite(path)
    jobs = jobs_of(suite)
    assert len(jobs) == 4
    results = [json.loads((job.root(out) / "result.json").read_text()) for job in jobs]
    assert all(result["fps"] > 0 and result["n_timesteps"] == 2048 for result in results)
    # the recorded command names no interpreter path of this machine
    assert all(result["command"][:4] == ["python", "-m", "sb3_pgext.zoo", "train"] for result in results)
    # and the versions it trained with, which the report prints (not those of the process writing it)
    assert all(result["versions"]["SB3"] == __import__("stable_baselines3").__version__ and result["cpu"] for result in results)
    for job in jobs:  # the zoo's own layout, with its evaluations
        with np.load(job.log_dir(out) / "evaluations.npz") as data:
            assert list(data["timesteps"]) == [1024, 2048] and data["results"].shape == (2, 2)

    # resumable: finished runs are skipped, an unfinished one (no result.json) is trained again from scratch
    stamps = {job: (job.root(out) / "result.json").stat().st_mtime_ns for job in jobs}
    (jobs[1].root(out) / "result.json").unlink()
    (jobs[1].root(out) / "leftover").write_text("from the interrupted run")
    assert run_suite(suite, out, workers=1) == []
    assert not (jobs[1].root(out) / "leftover").exists()
    for job in jobs:
        if job != jobs[1]:
            assert (job.root(out) / "result.json").stat().st_mtime_ns == stamps[job]

    report = write_report(suite, out, "python -m sb3_pgext.suite run tiny.yml")
    text = report.read_text()
    assert "4/4 runs finished" in text and "python -m sb3_pgext.suite run tiny.yml" in text
    assert f"Trained with sb3_pgext {results[0]['versions']['sb3_pgext']}, SB3 " in text
    assert "(2 episodes at the budget). A budget for tests only." in text
    rows = [line for line in text.splitlines() if line.startswith("| PPOKL |") or line.startswith("| PPO |")]
    assert len(rows) >= 2 and "| PPOKL | PPO | 2/2 |" in text
    assert "## Where ours trail their peers" in text and "P(ours > peer)" in text
    assert re.search(r"\n\| PPOKL \| PPO \| [01]\.\d\d \[[01]\.\d\d, [01]\.\d\d\] \|\n", text), text
    # a label with a comma (suite variants have them) in the probability-of-improvement table and plot
    from sb3_pgext.suite import config

    monkeypatch.setitem(config.NAMES, "ppokl", "PPOKL (clip, penalty)")
    (out / "probability_of_improvement.png").unlink()
    assert "\n| PPOKL (clip, penalty) | PPO | " in write_report(suite, out, "cmd").read_text()
    assert (out / "probability_of_improvement.png").stat().st_size > 1000
    for name in ("aggregate.png", "probability_of_improvement.png", "curves_CartPole-v1.png"):
        assert (out / name).stat().st_size > 1000
    assert "![CartPole-v1](curves_CartPole-v1.png)" in text


def test_two_runners_of_one_folder_share_the_runs(tmp_path, monkeypatch, capsys, hold_lock):
    """
    A run another runner is training (its lock held by another process) is skipped, not failed, and left alone;
    the lock is freed when that process dies, and the next runner trains it; a run another runner finished
    after this one listed its work is returned as it is, not trained again.
    """
    from sb3_pgext.suite import runner

    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    jobs = jobs_of(suite)
    trained = []

    def train(suite, job, out, device, conf):  # the zoo's training, quickly: what _train leaves behind
        trained.append(job)
        job.root(out).mkdir(parents=True, exist_ok=True)
        result = {"env": job.env.env_id, "algo": job.algo, "seed": job.seed, "wall_seconds": 1.0}
        (job.root(out) / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(runner, "_train", train)
    busy = jobs[0]
    busy.root(out).mkdir(parents=True)
    (busy.root(out) / "progress.csv").write_text("the other runner's run, in progress")
    holder = hold_lock(busy.root(out).with_name(f"{busy.root(out).name}.lock"))
    assert run_suite(suite, out, workers=2) == []  # skipped is not failed
    printed = capsys.readouterr()
    assert "seed 0: skipped, another runner is training it" in printed.out + printed.err
    assert sorted(trained, key=jobs.index) == jobs[1:]
    assert (busy.root(out) / "progress.csv").read_text() == "the other runner's run, in progress"
    holder.kill()
    holder.wait()
    trained.clear()
    assert run_suite(suite, out, workers=2) == [] and trained == [busy]  # the dead runner's lock is free
    # finished by another runner meanwhile: its result, untouched
    finished = jobs[1]
    result = json.loads((finished.root(out) / "result.json").read_text())
    trained.clear()
    assert runner.run_job(suite, finished, out, "cpu") == result and trained == []


VARIANT_SUITE = """
description: a variant
seeds: [0]
eval_freq: 128
eval_episodes: 2
variants:
  ppokl-clip:
    algo: ppokl
    label: PPOKL (clip)
    hyperparams: {clip_range: 0.3, n_epochs: 2, policy_kwargs: "dict(net_arch=[8])"}
envs:
  CartPole-v1:
    n_timesteps: 256
    threshold: 15
    algos: [ppokl-clip]
"""


def test_a_variant_trains_its_algorithm_with_its_overrides_and_is_its_own_row(tmp_path):
    """A variant runs as --algo <algo> -params ...; the zoo's saved config has the overrides; the report names it by its label."""
    import yaml

    path = tmp_path / "variant.yml"
    path.write_text(VARIANT_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    [job] = jobs_of(suite)
    assert (job.algo, job.trained) == ("ppokl-clip", "ppokl")
    # compared with its algorithm's peer where that runs on the env
    env_with_ppo = EnvSpec("CartPole-v1", 256, 15, ("ppokl-clip", "ppo"))
    assert suite.peer("ppokl-clip", env_with_ppo) == "ppo" and suite.peer("ppokl-clip", suite.envs[0]) is None
    assert run_suite(suite, out, workers=1) == []
    result = json.loads((job.root(out) / "result.json").read_text())
    assert result["algo"] == "ppokl-clip" and result["variant_of"] == "ppokl"
    assert result["hyperparams"] == {"clip_range": 0.3, "n_epochs": 2, "policy_kwargs": "dict(net_arch=[8])"}
    assert result["command"][result["command"].index("--algo") + 1] == "ppokl"
    with open(job.log_dir(out) / "CartPole-v1" / "config.yml") as file:
        saved = dict(yaml.load(file, Loader=yaml.UnsafeLoader))
    assert saved["clip_range"] == 0.3 and saved["n_epochs"] == 2 and saved["policy_kwargs"] == "dict(net_arch=[8])"
    text = write_report(suite, out, "cmd").read_text()
    assert "| PPOKL (clip) |  | 1/1 |" in text and "PPOKL (clip): PPOKL with `clip_range=0.3`, `n_epochs=2`" in text


LOGGED_SUITE = """
description: logged values
seeds: [0, 1]
eval_freq: 128
eval_episodes: 2
variants:
  cvpg-measured:
    algo: cvpg
    hyperparams: {n_envs: 2, n_steps: 64, batch_size: 64, n_epochs: 1, qf_gradient_steps: 2, log_grad_var: True, policy_kwargs: "dict(net_arch=[8])"}
logged:
  - {name: variance ratio, key: train/grad_var, over: train/grad_var_no_cv}
  - {name: "corr(Â, Ā)", key: train/cv_corr}
envs:
  CartPole-v1:
    n_timesteps: 512
    threshold: 15
    algos: [cvpg-measured]
"""


def test_runs_keep_their_progress_csv_and_the_report_summarises_the_logged_values(tmp_path):
    """Every run writes SB3's progress.csv (full precision); the report's logged section is computed from those files."""
    from sb3_pgext.suite.results import logged_values, read_progress

    path = tmp_path / "logged.yml"
    path.write_text(LOGGED_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    assert [entry.over for entry in suite.logged] == ["train/grad_var_no_cv", None]
    assert run_suite(suite, out, workers=2) == []
    runs = []
    for job in jobs_of(suite):
        columns = read_progress(job.log_dir(out) / "progress.csv")
        # SB3 dumps an iteration's logs before its update: an update's values come with the next rollout's row
        # (2 envs × 64 steps per rollout; the last update is never dumped); the evaluations add rows of their own
        measured = np.isfinite(columns["train/grad_var"])
        assert list(columns["time/total_timesteps"][measured]) == [256, 384, 512]
        assert {128, 256, 384, 512} <= set(columns["time/total_timesteps"][np.isfinite(columns["eval/mean_reward"])])
        ratio = columns["train/grad_var"] / columns["train/grad_var_no_cv"]
        runs.append(ratio[np.isfinite(ratio)])
    pooled = np.concatenate(runs)
    text = write_report(suite, out, "cmd").read_text()
    expected = f"| cvpg-measured | {np.median(pooled):.4g} (seeds {min(map(np.median, runs)):.4g} to {max(map(np.median, runs)):.4g}"
    assert "## Logged along training" in text and expected in text
    thirds = [np.median([run[third] for run in runs]) for third in range(3)]  # 3 updates per run: one per third
    last = [run[2] for run in runs]  # each run's last third: its third update; the range over seeds, for the ratio only
    assert (
        f"{np.mean(pooled < 1):.0%} below 1; by third of training {' / '.join(f'{value:.3g}' for value in thirds)}, "
        f"the seeds' last thirds {min(last):.3g} to {max(last):.3g}; 2 runs, 6 updates) |"
    ) in text
    corr = [logged_values(read_progress(job.log_dir(out) / "progress.csv"), suite.logged[1]) for job in jobs_of(suite)]
    assert f"by third of training {' / '.join(f'{np.median([run[third] for run in corr]):.3g}' for third in range(3))}; 2 runs" in text
    # a suite whose runs did not log the values says so
    no_runs = tmp_path / "empty"
    no_runs.mkdir()
    assert "No finished run has logged these values yet." in write_report(suite, no_runs, "cmd").read_text()
    bad = tmp_path / "bad.yml"
    bad.write_text(LOGGED_SUITE.replace("key: train/cv_corr}", "column: train/cv_corr}"))
    with pytest.raises(ValueError, match="each entry of logged must be a mapping of name, key"):
        load_suite(bad)


def test_the_action_share_is_a_ratio_of_means_over_runs():
    """
    One run whose total is near 0 (an unbiased estimate can even fall below 0) must not swing the share: the mean
    of per-run ratios here would be (1 / 0.01 + 9 / 19.99) / 2 ≈ 50 (5000%), the share of the mean total is 10 / 20 = 50%.
    """
    from sb3_pgext.suite.decomposition import action_share

    runs = [{"action": 1.0, "total": 0.01, "total_se": 0.1}, {"action": 9.0, "total": 19.99, "total_se": 2.0}]
    assert action_share(runs) == pytest.approx(0.5)
    # a mean total within 2 standard errors of 0 has no share; the mean of 4 independent runs has half their error
    two_runs = [{"action": 2.0, "total": -1.0, "total_se": 1.0}, {"action": 1.0, "total": 0.5, "total_se": 1.0}]
    assert action_share(two_runs) is None
    assert action_share([{"action": 0.5, "total": 1.9, "total_se": 1.0}]) is None
    assert action_share([{"action": 0.5, "total": 2.1, "total_se": 1.0}]) == pytest.approx(0.5 / 2.1)
    assert action_share([{"action": 0.5, "total": 0.9, "total_se": 1.0}] * 4) is None
    assert action_share([{"action": 0.5, "total": 1.1, "total_se": 1.0}] * 4) == pytest.approx(0.5 / 1.1)


DECOMPOSED_SUITE = """
description: decompositions
seeds: [0]
eval_freq: 128
eval_episodes: 2
variants:
  cvpg-decomposed:
    algo: cvpg
    hyperparams:
      n_envs: 1
      n_steps: 64
      batch_size: 64
      n_epochs: 1
      qf_gradient_steps: 2
      policy_kwargs: "dict(net_arch=[8])"
      callback:
        - sb3_pgext.VarianceDecompositionCallback: {n_states: 2, n_actions: 3, n_rollouts: 2}
        - sb3_pgext.CriticPredictabilityCallback: {passes: 2}
logged:
  - {name: predictability, key: predictability/same_rollout/both}
envs:
  CartPole-v1:
    n_timesteps: 256
    threshold: 15
    algos: [cvpg-decomposed]
"""


def test_a_decomposition_callback_variant_gets_the_reports_decomposition_section(tmp_path):
    """
    Through the zoo (its callback hyperparameter), a run logs its decompositions and the critic's predictability;
    the report tabulates and plots the decompositions and summarises the predictability with the logged values.
    """
    from sb3_pgext.suite.decomposition import PLOT

    path = tmp_path / "decomposed.yml"
    path.write_text(DECOMPOSED_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    assert run_suite(suite, out, workers=1) == []
    text = write_report(suite, out, "cmd").read_text()
    assert "## Where the variance comes from" in text and f"]({PLOT})" in text and (out / PLOT).is_file()
    for stage in ("start", "middle", "end"):
        for estimator in ("value baseline", "control variate", "centred control variate", "φ = true V", "φ = true Q (ceiling)"):
            assert f"| {stage} | cvpg-decomposed | {estimator} | 1 |" in text, (stage, estimator)
    # the return beside the variance of the estimator CVPG trains with, at each stage
    summary = re.search(r"\n\| CartPole-v1 \| cvpg-decomposed \| control variate \| 1 \| (.*) \| (.*) \| (.*) \|\n", text)
    assert summary is not None, text
    final, trajectory, total = summary.groups()
    last = float(np.load(jobs_of(suite)[0].log_dir(out) / "evaluations.npz")["results"][-1].mean())
    assert final == estimate(last, last, last, 1)
    assert len(trajectory.split(" / ")) == len(total.split(" / ")) == 3
    assert re.search(r"\| cvpg-decomposed \| -?[0-9.e-]+ \(seeds .*; 1 runs, [34] updates\) \|", text), text
    # no run with decompositions: no section
    (tmp_path / "empty").mkdir()
    assert "Where the variance comes from" not in write_report(suite, tmp_path / "empty", "cmd").read_text()


@pytest.mark.parametrize(
    "variants, match",
    [
        ("  x: {hyperparams: {a: 1}}", "variant x must be a mapping with an 'algo'"),
        ("  x: {algo: ppokl, params: {a: 1}}", "variant x has unknown keys \\['params'\\]"),
        ("  x: {algo: ppokl, hyperparams: [1]}", "variant x's hyperparams must map"),
        ("  ppokl: {algo: ppokl}", "variant ppokl has the name of its algorithm"),
        ("  a/b: {algo: ppokl}", "variant name 'a/b' must be"),
    ],
)
def test_bad_variants_are_refused_by_name(tmp_path, variants, match):
    path = tmp_path / "bad.yml"
    path.write_text(VARIANT_SUITE.replace(VARIANT_SUITE[VARIANT_SUITE.index("  ppokl-clip:"):VARIANT_SUITE.index("envs:")], variants + "\n"))
    with pytest.raises(ValueError, match=match):
        load_suite(path)


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("algo: ppokl", "algo: nope", "variant ppokl-clip trains unknown algo 'nope'"),
        ("ppokl-clip", "ppo", "variant ppo has the name of the zoo algorithm 'ppo'"),
    ],
)
def test_a_variant_of_an_unknown_algo_or_named_as_a_zoo_algo_is_refused_before_training(tmp_path, old, new, match):
    path = tmp_path / "bad.yml"
    path.write_text(VARIANT_SUITE.replace(old, new))
    with pytest.raises(ValueError, match=match):
        run_suite(load_suite(path), tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists()


def test_envs_algos_and_seeds_restrict_the_runs_and_unknown_ones_are_refused_before_training(tmp_path, capsys):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    suite = load_suite(path)
    assert [(job.algo, job.seed) for job in jobs_of(suite, algos=["ppo"], seeds=[1])] == [("ppo", 1)]
    assert [job.seed for job in jobs_of(suite, seeds=[1])] == [1, 1]
    for flag, value, match in [("--envs", "CartPole-v0", r"envs \['CartPole-v0'\] are not in the suite; its envs: \['CartPole-v1'\]"),
                               ("--algos", "sac", r"algos \['sac'\] are not in the suite"),
                               ("--seeds", "7", r"seeds \[7\] are not in the suite; its seeds: \[0, 1\]")]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(path), "--out", str(tmp_path / "out"), flag, value])
        assert exit_info.value.code == 2 and re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out" / "runs").exists()


def test_report_counts_missing_runs(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    out = tmp_path / "out"
    report = write_report(load_suite(path), out if out.mkdir() is None else out, "cmd")
    text = Path(report).read_text()
    assert "0/4 runs finished" in text and "not run yet" in text


def test_the_reproduce_command_selects_the_part_of_the_suite_that_has_run(tmp_path):
    from sb3_pgext.suite.formatting import selection_options

    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    suite = load_suite(path)
    env, jobs = suite.envs[0], [(job.algo, job.seed) for job in jobs_of(suite)]

    def finish(*runs):  # type: ignore[no-untyped-def]
        seeds: dict[str, list[int]] = {}
        for algo, seed in runs:
            seeds.setdefault(algo, []).append(seed)
        cells = {(env.env_id, algo): Cell(env, algo, s, np.array([256]), np.zeros((len(s), 1)), []) for algo, s in seeds.items()}
        return selection_options(suite, cells)

    assert finish() == ""
    assert finish(("ppo", 0), ("ppo", 1)) == " --algos ppo"
    assert finish(("ppo", 1)) == " --algos ppo --seeds 1"
    assert finish(("ppokl", 0), ("ppo", 0)) == " --seeds 0"
    assert finish(("ppokl", 0), ("ppo", 1)) == ""  # no options select these two alone: the whole suite's command
    assert finish(*jobs) == ""


def test_zoo_entry_aliases_give_sb3_peers_the_zoo_entry(tmp_path):
    """HalfCheetah-v5 has no rl_zoo3 entry: SB3's algorithms get the v4 entry under the v5 id; ours keep their yml."""
    import rl_zoo3
    import yaml

    from sb3_pgext.suite.runner import train_command, zoo_conf_file

    suite = load_suite("standard")
    conf = zoo_conf_file(suite, "sac", tmp_path)
    with open(conf) as file:
        entries = yaml.safe_load(file)
    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / "sac.yml") as file:
        zoo = yaml.safe_load(file)
    assert entries["HalfCheetah-v5"] == zoo["HalfCheetah-v4"] and entries["Hopper-v5"] == zoo["Hopper-v4"]
    assert entries["Pendulum-v1"] == zoo["Pendulum-v1"]
    assert zoo_conf_file(suite, "offpac", tmp_path) is None
    job = next(job for job in jobs_of(suite) if job.algo == "sac" and job.env.env_id == "HalfCheetah-v5")
    command = train_command(suite, job, tmp_path, "cpu", conf)
    assert command[command.index("--conf-file") + 1] == str(conf) and command[command.index("-n") + 1] == "300000"


SPEED_SUITE = """
description: the speed measurement's env
seeds: [0]
eval_freq: 256
eval_episodes: 1
envs:
  Pendulum-v1:
    n_timesteps: 512
    threshold: -200
    algos: [offpac, cvpg, sac, ppo]
"""
TINY_MODELS = {
    "offpac": {"policy_kwargs": "dict(net_arch=[8])", "batch_size": 16, "learning_starts": 16},
    "sac": {"policy_kwargs": "dict(net_arch=[8])", "batch_size": 16, "learning_starts": 16},
    "cvpg": {"policy_kwargs": "dict(net_arch=[8])", "n_envs": 1, "n_steps": 32, "batch_size": 16, "n_epochs": 2, "qf_gradient_steps": 4},
}


def test_speed_times_updates_and_the_report_shows_them(tmp_path):
    """speed.json has OffPAC, CVPG and SAC on the CPU with their updates per train() call; the report tabulates them."""
    from sb3_pgext.suite.speed import measure_speed

    path = tmp_path / "speed.yml"
    path.write_text(SPEED_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    out.mkdir()
    assert "Not measured yet: `python -m sb3_pgext.suite speed speed --device cuda`" in write_report(suite, out, "cmd").read_text()
    data = json.loads(measure_speed(suite, out, device="cpu", repeats=2, hyperparams=TINY_MODELS).read_text())
    assert data["devices"] == ["cpu"] and data["repeats"] == 2
    from sb3_pgext.suite.speed import sbx_available

    rows = {row["algo"]: row for row in data["rows"]}
    # SBX's SAC, the outside anchor, only when sbx-rl is installed
    assert list(rows) == ["offpac", "cvpg", "sac"] + (["sbx"] if sbx_available() else []) and {row["device"] for row in rows.values()} == {"cpu"}
    # 64 gradient steps per call off-policy; CVPG: n_epochs × minibatches of its 32-step rollout
    assert rows["offpac"]["updates_per_call"] == rows["sac"]["updates_per_call"] == rows.get("sbx", rows["sac"])["updates_per_call"] == 64
    assert rows["cvpg"]["updates_per_call"] == 2 * 2
    for row in rows.values():
        assert row["updates_per_s"] == pytest.approx(row["updates_per_call"] / row["seconds_per_call"]) and row["updates_per_s"] > 0
    text = write_report(suite, out, "cmd").read_text()
    assert "| Pendulum-v1 | CVPG | 4 |" in text and "| Pendulum-v1 | SAC | 64 |" in text
    assert f"{rows['sac']['updates_per_s']:.0f} | 1.00 |" in text and "No GPU was measured" in text
    for envs in (["CartPole-v1"], ["Pendulum-v1", "Pendulum-v0"]):  # an unknown name beside a known one too
        with pytest.raises(ValueError, match="envs must name envs of the suite .*, got \\[.*'(CartPole-v1|Pendulum-v0)'"):
            measure_speed(suite, out, device="cpu", envs=envs)


def test_sbx_device_puts_jax_arrays_on_the_matching_platform():
    """sbx_device("cpu") makes JAX's CPU the default, also where JAX has a GPU; "cuda" its GPU, or its default without one."""
    from sb3_pgext.suite.speed import sbx_available, sbx_device

    if not sbx_available():
        pytest.skip("sbx-rl is not installed")
    import jax
    import jax.numpy as jnp

    with sbx_device("cpu"):
        assert {device.platform for device in jnp.zeros(2).devices()} == {"cpu"}
    has_gpu = any(device.platform == "gpu" for device in jax.devices())
    with sbx_device("cuda"):
        assert {device.platform for device in jnp.zeros(2).devices()} == ({"gpu"} if has_gpu else {jax.devices()[0].platform})


def test_compare_times_models_side_by_side_in_rotated_order(tmp_path):
    """compare.json has each model's repeats, their median, the order rotated each round and the goals' ratios of medians."""
    import statistics

    from sb3_pgext.suite.compare import PROFILED_CALLS, PROFILED_STEPS, compare
    from sb3_pgext.suite.speed import sbx_available

    tiny = {
        "offpac": TINY_MODELS["offpac"], "sac": TINY_MODELS["sac"],
        "ppokl": {"n_envs": 1, "n_steps": 32, "batch_size": 16, "n_epochs": 2}, "ppo": {"n_envs": 1, "n_steps": 32, "batch_size": 16, "n_epochs": 2},
    }  # fmt: skip
    out = tmp_path / "speed"
    data = json.loads(compare(out, repeats=2, steps=40, cases=("pendulum-sac", "ppokl-ppo"), envs=("Pendulum-v1", "CartPole-v1"), hyperparams=tiny).read_text())
    assert data["device"] == "cpu" and data["repeats"] == 2 and ("sbx" in data["versions"]) == sbx_available()
    assert [(result["case"], result["env"]) for result in data["results"]] == [
        ("pendulum-sac", "Pendulum-v1"), ("ppokl-ppo", "CartPole-v1"), ("ppokl-ppo", "Pendulum-v1")
    ]
    sac, ppo, _ = data["results"]
    names = ["OffPAC", "OffPAC (exact)", "SB3 SAC"] + (["SBX SAC"] if sbx_available() else [])
    assert [row["name"] for row in sac["rows"]] == names and sac["unit"] == "env steps/s"
    assert sac["orders"] == [names, names[1:] + names[:1]]
    for row in sac["rows"] + ppo["rows"]:
        assert len(row["values"]) == 2 and row["median"] == statistics.median(row["values"]) > 0
        assert 0 < row["cores"] <= os.cpu_count() + 0.5  # CPU time over wall time of the timed calls
    medians = {row["name"]: row["median"] for row in sac["rows"]}
    goal = sac["goals"][0]
    assert (goal["name"], goal["reference"], goal["goal"]) == ("OffPAC", "SB3 SAC", 2.0)
    assert goal["ratio"] == pytest.approx(medians["OffPAC"] / medians["SB3 SAC"])
    assert (ppo["case"], ppo["env"], [row["name"] for row in ppo["rows"]]) == ("ppokl-ppo", "CartPole-v1", ["PPOKL", "PPO"])
    for name in ("OffPAC", "OffPAC (exact)", "SB3 SAC"):  # the PyTorch updates' time, and its matrix products
        cost = sac["breakdown"][name]
        assert 0 < cost["matmul_ms_per_step"] and 0 < cost["ms_per_step"] and cost["profiled_steps"] == PROFILED_STEPS
    assert ("SBX SAC" in sac["breakdown"]) == sbx_available() and "breakdown" in ppo and not ppo["breakdown"]
    if sbx_available():  # SBX's gradient step, unprofiled: its arithmetic is XLA's, not aten's
        assert set(sac["breakdown"]["SBX SAC"]) == {"ms_per_step"} and sac["breakdown"]["SBX SAC"]["ms_per_step"] > 0
    text = (out / "compare.md").read_text()
    assert "Device: CPU (" in text and f"- OffPAC / SB3 SAC: {goal['ratio']:.2f} (goal ≥ 2.0" in text
    assert f"under the torch profiler, the median of {PROFILED_CALLS} calls of {PROFILED_STEPS} gradient steps)" in text
    offpac = sac["rows"][0]
    assert f"| OffPAC | {offpac['median']:.1f} | {', '.join(f'{value:.1f}' for value in offpac['values'])} | {offpac['cores']:.2f} |" in text
    assert f"| OffPAC | {1e3 / medians['OffPAC']:.1f} | {sac['breakdown']['OffPAC']['ms_per_step']:.1f} |" in text


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 cores")
def test_compare_pins_every_thread_of_the_process_to_the_cores_asked_for():
    """pin_to_cores: the threads running before the call and those started after it run on one core; asked for all, nothing changes."""
    script = (
        "import os, threading\n"
        "from sb3_pgext.suite.speed import pin_to_cores\n"
        "before = threading.Thread(target=threading.Event().wait, daemon=True); before.start()\n"
        "assert pin_to_cores(len(os.sched_getaffinity(0))) == sorted(os.sched_getaffinity(0)) == sorted(os.sched_getaffinity(before.native_id))\n"
        "cores = pin_to_cores(1)\n"
        "seen = []\n"
        "after = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0))); after.start(); after.join()\n"
        "threads = [os.sched_getaffinity(int(task)) for task in os.listdir('/proc/self/task')]\n"
        "print(len(cores), len(threads), all(affinity == set(cores) for affinity in threads + seen))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    n_cores, n_threads, pinned = result.stdout.split()
    assert n_cores == "1" and int(n_threads) >= 2 and pinned == "True"


def test_compare_cvpg_with_sb3_ppo(tmp_path):
    """
    cvpg-ppo: CVPG, CVPG with the L-BFGS critic fit and SB3's PPO side by side, the goal ratio 0.8; on HalfCheetah-v5 PPO
    takes the zoo's v4 entry. On Pendulum-v1, whose cvpg.yml entry was tuned away from PPO's, CVPG also trains PPO's
    entry with its defaults (both fits); on HalfCheetah-v5, whose entry is PPO's with a smaller critic, it does not.
    """
    from sb3_pgext.suite.compare import compare

    small = {"n_envs": 1, "n_steps": 32, "batch_size": 16, "n_epochs": 2}
    tiny = {"cvpg": {**small, "qf_gradient_steps": 2}, "ppo": small}
    envs = ("Pendulum-v1", "HalfCheetah-v5") if importlib.util.find_spec("mujoco") else ("Pendulum-v1",)
    data = json.loads(compare(tmp_path, repeats=2, steps=32, cases=("cvpg-ppo",), envs=envs, hyperparams=tiny).read_text())
    assert [(result["case"], result["env"]) for result in data["results"]] == [("cvpg-ppo", env) for env in envs]
    same_settings = ["CVPG, PPO's settings", "CVPG, PPO's settings (L-BFGS critic fit)"]
    for result in data["results"]:
        names = ["CVPG", "CVPG (L-BFGS critic fit)", *(same_settings if result["env"] == "Pendulum-v1" else []), "PPO"]
        assert [row["name"] for row in result["rows"]] == names and result["unit"] == "env steps/s"
        assert [goal["name"] for goal in result["goals"]] == names[:-1]
        medians = {row["name"]: row["median"] for row in result["rows"]}
        goal = result["goals"][0]
        assert (goal["name"], goal["reference"], goal["goal"]) == ("CVPG", "PPO", 0.8)
        assert goal["ratio"] == pytest.approx(medians["CVPG"] / medians["PPO"])
    assert "- CVPG / PPO: " in (tmp_path / "compare.md").read_text()


def test_compare_discrete_offpac_beside_dqn(tmp_path):
    """cartpole-offpac: OffPAC's gradient steps beside DQN's, at the zoo's DQN settings and at OffPAC's batch and networks."""
    import yaml

    from sb3_pgext.common.hyperparams import hyperparams_path
    from sb3_pgext.suite.compare import compare

    tiny = {"offpac": {**TINY_MODELS["offpac"], "learning_starts": 64}, "dqn": {"learning_starts": 64}}
    data = json.loads(compare(tmp_path, repeats=1, steps=40, cases=("cartpole-offpac",), envs=("CartPole-v1",), hyperparams=tiny).read_text())
    (result,) = data["results"]
    names = ["OffPAC", "OffPAC (exact)", "DQN", "DQN, OffPAC's batch and networks"]
    assert [row["name"] for row in result["rows"]] == names and result["unit"] == "gradient steps/s"
    assert [(goal["name"], goal["reference"], goal["goal"]) for goal in result["goals"]] == [
        ("OffPAC", "OffPAC (exact)", 1.5), ("OffPAC", "DQN", None), ("OffPAC", "DQN, OffPAC's batch and networks", None)
    ]  # fmt: skip
    entry = yaml.safe_load(hyperparams_path("offpac").read_text())["CartPole-v1"]
    assert entry["batch_size"] == 256 and entry["policy_kwargs"] == "dict(net_arch=[64, 64])", "the DQN row's label"


def test_compare_gpu_cases_time_updates_per_batch_size_and_many_envs(tmp_path):
    """sac-updates: one row per model and batch size (256, 1024), ratios without goals; ppo-64-envs: PPOKL and PPO on 64 envs."""
    from sb3_pgext.suite.compare import MANY_ENVS, SAC_BATCH_SIZES, compare
    from sb3_pgext.suite.speed import sbx_available

    no_training = {"policy_kwargs": "dict(net_arch=[8])", "learning_starts": 1100}  # the warm-up only fills the buffer
    tiny = {
        "offpac": no_training, "sac": no_training,
        "ppokl": {"n_steps": 4, "batch_size": 64, "n_epochs": 1}, "ppo": {"n_steps": 4, "batch_size": 64, "n_epochs": 1},
    }  # fmt: skip
    out = tmp_path / "speed"
    path = compare(out, repeats=1, steps=8, cases=("sac-updates", "ppo-64-envs"), envs=("Pendulum-v1", "CartPole-v1"), hyperparams=tiny)
    data = json.loads(path.read_text())
    assert data["command"] == "python -m sb3_pgext.suite.compare --repeats 1 --steps 8 --cases sac-updates ppo-64-envs"
    sac, ppo = data["results"]
    models = ["OffPAC", "OffPAC (exact)", "SB3 SAC"] + (["SBX SAC"] if sbx_available() else [])
    assert [row["name"] for row in sac["rows"]] == [f"{name}, batch {size}" for size in SAC_BATCH_SIZES for name in models]
    assert sac["unit"] == "gradient steps/s" and not sac["breakdown"]
    assert all(goal["goal"] is None for goal in sac["goals"]) and len(sac["goals"]) == len(SAC_BATCH_SIZES) * (len(models) - 1)
    assert [row["name"] for row in ppo["rows"]] == [f"PPOKL, {MANY_ENVS} envs", f"PPO, {MANY_ENVS} envs"] and ppo["env"] == "CartPole-v1"
    text = (out / "compare.md").read_text()
    assert f"- OffPAC, batch 1024 / SB3 SAC, batch 1024: {sac['goals'][len(models) - 1]['ratio']:.2f}\n" in text
    assert "goal ≥" not in text and "Device: CPU (" in text
    with pytest.raises(ValueError, match="cases must be among"):
        compare(out, cases=("gpu",))


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs MuJoCo (the benchmarks extra)")
def test_compare_halfcheetah_end_to_end(tmp_path):
    """halfcheetah-sac: OffPAC, SB3's SAC (the zoo's v4 entry for v5) and SBX end to end, OffPAC / SBX's goal 1.0."""
    from sb3_pgext.suite.compare import compare
    from sb3_pgext.suite.speed import sbx_available

    tiny = {"offpac": TINY_MODELS["offpac"], "sac": TINY_MODELS["sac"]}
    data = json.loads(compare(tmp_path, repeats=1, steps=20, cases=("halfcheetah-sac",), hyperparams=tiny).read_text())
    (result,) = data["results"]
    names = ["OffPAC", "SB3 SAC"] + (["SBX SAC"] if sbx_available() else [])  # no eager row off CUDA
    assert result["env"] == "HalfCheetah-v5" and [row["name"] for row in result["rows"]] == names
    assert result["unit"] == "env steps/s" and all(row["median"] > 0 for row in result["rows"])
    expected = [("OffPAC", "SBX SAC", 1.0)] if sbx_available() else []
    assert [(g["name"], g["reference"], g["goal"]) for g in result["goals"]] == [*expected, ("OffPAC", "SB3 SAC", None)]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error without CUDA")
def test_speed_on_cuda_without_cuda_is_refused(tmp_path):
    path = tmp_path / "speed.yml"
    path.write_text(SPEED_SUITE)
    with pytest.raises(SystemExit):
        main(["speed", str(path), "--out", str(tmp_path / "out"), "--device", "cuda"])
    assert not (tmp_path / "out" / "speed.json").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_speed_on_cuda(tmp_path):
    """On a GPU: every algorithm is timed on the CPU and on CUDA, and the report gets the GPU columns."""
    from sb3_pgext.suite.speed import measure_speed

    path = tmp_path / "speed.yml"
    path.write_text(SPEED_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    out.mkdir()
    data = json.loads(measure_speed(suite, out, device="cuda", repeats=1, hyperparams=TINY_MODELS).read_text())
    assert data["devices"] == ["cpu", "cuda"] and data["device_name"]
    from sb3_pgext.suite.speed import sbx_available

    expected = {(a, d) for a in ("offpac", "cvpg", "sac") for d in ("cpu", "cuda")} | ({("sbx", "cpu")} if sbx_available() else set())
    assert {(row["algo"], row["device"]) for row in data["rows"]} == expected
    text = write_report(suite, out, "cmd").read_text()
    assert "cuda updates/s | cuda / CPU | ratio to SAC (cuda) |" in text and "No GPU was measured" not in text


def test_bootstrap_cis_do_not_depend_on_numpy_global_rng():
    """rliable resamples with numpy's global RNG: the report's CIs must not change with its state, which is restored."""
    from sb3_pgext.suite.results import _interval

    scores = np.array([[1.0], [5.0], [2.0], [9.0], [4.0]])
    np.random.seed(1)
    first = _interval(scores, "mean")
    np.random.seed(2)
    assert _interval(scores, "mean") == first
    # the caller's stream goes on as if the report had drawn nothing
    np.random.seed(3)
    expected_next = np.random.random(2)
    np.random.seed(3)
    np.random.random()
    _interval(scores, "iqm")
    assert np.random.random() == expected_next[1]
    assert first[1] < first[0] < first[2]


def _cell(env_id: str, algo: str, returns, fps):  # type: ignore[no-untyped-def]
    env = next(env for env in load_suite("quick").envs if env.env_id == env_id)
    returns = np.asarray(returns, dtype=float)
    return Cell(env, algo, list(range(len(returns))), np.arange(1, returns.shape[1] + 1) * 1000, returns, fps)


def test_trailing_says_where_ours_trail_and_when_runs_are_the_same():
    from sb3_pgext.suite.formatting import trailing

    suite = load_suite("quick")
    sac = [[-900, -150], [-800, -180], [-700, -190]]
    cells = {
        # CartPole: PPOKL ends lower, reaches 475 on fewer seeds, and runs at half PPO's speed
        ("CartPole-v1", "ppo"): _cell("CartPole-v1", "ppo", [[480, 500], [490, 500], [300, 500]], [2000.0]),
        ("CartPole-v1", "ppokl"): _cell("CartPole-v1", "ppokl", [[100, 500], [200, 480], [300, 300]], [1000.0]),
        # CVPG: the same final scores, threshold reached later, as fast
        ("CartPole-v1", "cvpg"): _cell("CartPole-v1", "cvpg", [[100, 500], [200, 500], [300, 500]], [1990.0]),
        # OffPAC and SAC: the same runs
        ("Pendulum-v1", "sac"): _cell("Pendulum-v1", "sac", sac, [70.0]),
        ("Pendulum-v1", "offpac"): _cell("Pendulum-v1", "offpac", sac, [71.0]),
    }
    lines = trailing(suite, cells)
    text = "\n".join(lines)
    assert "**PPOKL trails PPO on CartPole-v1**: final 427" in text
    assert "**PPOKL reaches CartPole-v1's threshold 475 on fewer seeds than PPO**: 2/3 seeds, median 2,000 steps vs 3/3 seeds, median 1,000 steps" in text
    assert "**PPOKL is slower than PPO on CartPole-v1**: 1000 vs 2000 env steps/s (0.50×)" in text
    assert "CVPG trails" not in text and "CVPG is slower" not in text
    assert "**CVPG reaches CartPole-v1's threshold 475 later than PPO**: 3/3 seeds, median 2,000 steps vs 3/3 seeds, median 1,000 steps" in text
    assert "**OffPAC and SAC on Pendulum-v1 are the same runs**" in text and "OffPAC trails" not in text
    assert len(lines) == 5

    # Fewer seeds reach the threshold, the one that does reaches it earlier: "on fewer seeds", not "later"
    early = {
        ("CartPole-v1", "ppo"): _cell("CartPole-v1", "ppo", [[100, 500], [100, 500], [100, 500]], [2000.0]),
        ("CartPole-v1", "ppokl"): _cell("CartPole-v1", "ppokl", [[500, 500], [100, 100], [100, 100]], [2000.0]),
    }
    assert "\n".join(trailing(suite, early)).endswith(
        "**PPOKL reaches CartPole-v1's threshold 475 on fewer seeds than PPO**: "
        "1/3 seeds, median 1,000 steps vs 3/3 seeds, median 2,000 steps."
    )

    # A cell with 2 of its seeds finished, both reaching the threshold, against a complete one whose 3 seeds all do: the
    # same share and the same median: nothing trails. With 1 of 2 reaching it: a smaller share of its seeds
    partial = {
        ("CartPole-v1", "ppo"): _cell("CartPole-v1", "ppo", [[100, 500], [100, 500], [500, 500]], [2000.0]),
        ("CartPole-v1", "ppokl"): _cell("CartPole-v1", "ppokl", [[100, 500], [100, 500]], [2000.0]),
    }
    assert trailing(suite, partial) == []
    partial[("CartPole-v1", "ppokl")] = _cell("CartPole-v1", "ppokl", [[100, 500], [100, 100]], [2000.0])
    assert "\n".join(trailing(suite, partial)).endswith(
        "**PPOKL reaches CartPole-v1's threshold 475 on a smaller share of its seeds than PPO**: "
        "1/2 seeds, median 2,000 steps vs 3/3 seeds, median 2,000 steps."
    )


def test_sample_efficiency_gives_the_steps_to_the_peers_mean_final_return(tmp_path):
    """
    sample_efficiency: on the suite's envs for it, the median over seeds of the steps to the peer's mean final return
    (never: infinity), and P(ours > peer) over those envs.
    """
    import dataclasses

    from sb3_pgext.suite.formatting import sample_efficiency

    suite = dataclasses.replace(load_suite("quick"), sample_efficiency=("CartPole-v1",))  # _cell: evaluations every 1,000 steps
    cells = {
        # PPO ends at 300, 400, 500: its mean 400 is reached at 3,000 steps (seed 1) and 2,000 (seed 2), never by seed 0
        ("CartPole-v1", "ppo"): _cell("CartPole-v1", "ppo", [[100, 200, 300], [100, 300, 400], [200, 400, 500]], [1.0]),
        # PPOKL reaches 400 at 1,000, 2,000 and 1,000 steps: median 1,000
        ("CartPole-v1", "ppokl"): _cell("CartPole-v1", "ppokl", [[400, 500, 500], [300, 450, 500], [420, 420, 420]], [1.0]),
        # CVPG: two seeds of three never reach it, so the median seed does not
        ("CartPole-v1", "cvpg"): _cell("CartPole-v1", "cvpg", [[100, 100, 100], [100, 100, 500], [100, 100, 100]], [1.0]),
        # Pendulum-v1 is not one of the section's envs
        ("Pendulum-v1", "ppokl"): _cell("Pendulum-v1", "ppokl", [[-900, -150]], [1.0]),
        ("Pendulum-v1", "ppo"): _cell("Pendulum-v1", "ppo", [[-900, -150]], [1.0]),
    }
    budget = next(env for env in suite.envs if env.env_id == "CartPole-v1").n_timesteps
    text = "\n".join(sample_efficiency(suite, cells))
    assert text.startswith("## Sample efficiency: steps to the peer's final return\n\nOn CartPole-v1, for each of ours")
    assert f"Evaluations every {suite.eval_freq:,} env steps" in text
    peer = f"| 3,000 | {3000 / budget:.2f} | 2/3 |"  # PPO: seeds 1 and 2 at 3,000 and 2,000, seed 0 never: median 3,000
    assert f"\n| CartPole-v1 | PPOKL | PPO | 400 | 1,000 | {1000 / budget:.2f} | 3/3 {peer}\n" in text
    assert f"\n| CartPole-v1 | CVPG | PPO | 400 | not by the median seed | | 1/3 {peer}\n" in text
    assert "Pendulum-v1 |" not in text and text.count("\n| CartPole-v1 |") == 2
    # P(PPOKL > PPO) over the section's envs, by hand: finals (500, 500, 420) against (300, 400, 500), ties count half
    assert "\n| PPOKL | PPO | 0.78 [" in text and "\n| CVPG | PPO | 0.28 [" in text
    assert "No env has finished runs" in "\n".join(sample_efficiency(suite, {}))
    # a suite asks for it with true (every env) or a list of its envs; anything else is refused before any run
    path = tmp_path / "efficiency.yml"
    path.write_text(SHARED_LABEL_SUITE + "sample_efficiency: true\n")
    assert load_suite(path).sample_efficiency == ("CartPole-v1", "Pendulum-v1") and load_suite("quick").sample_efficiency == ()
    path.write_text(SHARED_LABEL_SUITE + "sample_efficiency: [Pendulum-v1]\n")
    assert load_suite(path).sample_efficiency == ("Pendulum-v1",)
    for bad in ("yes please", "[Hopper-v5]", "[]"):
        path.write_text(SHARED_LABEL_SUITE + f"sample_efficiency: {bad}\n")
        with pytest.raises(ValueError, match="sample_efficiency must be true, false or a list of the suite's envs"):
            load_suite(path)


SHARED_LABEL_SUITE = """
description: one algorithm with per-env overrides, as two variants with one label
seeds: [0, 1, 2]
eval_freq: 1000
eval_episodes: 2
variants:
  ppokl-a: {algo: ppokl, label: "PPOKL, tuned", hyperparams: {clip_range: 0.2}}
  ppokl-b: {algo: ppokl, label: "PPOKL, tuned", hyperparams: {clip_range: 0.1}}
envs:
  CartPole-v1: {n_timesteps: 2000, threshold: 475, algos: [ppokl-a, ppo]}
  Pendulum-v1: {n_timesteps: 2000, threshold: -200, algos: [ppokl-b, ppo]}
"""


def test_variants_sharing_a_label_are_one_row_over_envs_and_only_the_suites_algorithms_are_compared(tmp_path):
    from sb3_pgext.suite.formatting import comparisons
    from sb3_pgext.suite.report import aggregates

    path = tmp_path / "shared.yml"
    path.write_text(SHARED_LABEL_SUITE)
    suite = load_suite(path)
    assert suite.rows() == {"PPOKL, tuned": {"CartPole-v1": "ppokl-a", "Pendulum-v1": "ppokl-b"}, "PPO": {"CartPole-v1": "ppo", "Pendulum-v1": "ppo"}}
    # the suite's own pairs only (no OffPAC or CVPG, which it does not run), each variant with the envs it runs on
    assert comparisons(suite) == (
        "Each of ours is compared with its nearest SB3 peer, trained with the zoo's own hyperparameters. Compared with PPO: PPOKL, tuned. "
        "PPOKL, tuned: PPOKL with `clip_range=0.2` on CartPole-v1; PPOKL with `clip_range=0.1` on Pendulum-v1."
    )
    cells = {
        ("CartPole-v1", "ppokl-a"): _cell("CartPole-v1", "ppokl-a", [[100, 500], [100, 490], [100, 480]], [1.0]),
        ("CartPole-v1", "ppo"): _cell("CartPole-v1", "ppo", [[100, 200], [100, 210], [100, 220]], [1.0]),
        ("Pendulum-v1", "ppokl-b"): _cell("Pendulum-v1", "ppokl-b", [[-900, -150], [-900, -160], [-900, -170]], [1.0]),
        ("Pendulum-v1", "ppo"): _cell("Pendulum-v1", "ppo", [[-900, -800], [-900, -700], [-900, -600]], [1.0]),
    }
    text = "\n".join(aggregates(suite, cells, tmp_path))
    assert "\n| PPOKL, tuned | 0." in text and "\n| PPO | 0." in text
    # ahead on both envs, every seed: P(ours > peer) is 1
    assert "\n| PPOKL, tuned | PPO | 1.00 [1.00, 1.00] |" in text
    assert "none yet" not in text
    # a suite run in part is aggregated over the envs that have runs, and says so
    cartpole = {key: cell for key, cell in cells.items() if key[0] == "CartPole-v1"}
    text = "\n".join(aggregates(suite, cartpole, tmp_path))
    assert "Over the envs that have finished runs (CartPole-v1) alone: Pendulum-v1 has none yet." in text
    assert "CartPole-v1 [23.7, 500]" in text and "Pendulum-v1 [" not in text
    assert "\n| PPOKL, tuned | PPO | 1.00 [1.00, 1.00] |" in text
    assert aggregates(suite, {}, tmp_path) == ["Aggregates appear once runs have finished.", ""]
    # two rows of one env that the report would name alike are refused when the suite is read
    path.write_text(SHARED_LABEL_SUITE.replace("algos: [ppokl-a, ppo]", "algos: [ppokl-a, ppokl-b]"))
    with pytest.raises(ValueError, match="env CartPole-v1 lists ppokl-a and ppokl-b, which the report names alike \\('PPOKL, tuned'\\)"):
        load_suite(path)


def test_rows_left_out_of_the_aggregate_are_aggregated_over_their_complete_cells_beside_their_peer(tmp_path):
    """An algorithm that runs on some envs only (DQN, SAC, OffPAC beside DQN) gets a row over the envs where all of
    the suite's seeds finished, its peer's IQM over the same envs beside it; an unfinished cell is left out."""
    from sb3_pgext.suite.report import aggregates

    suite = load_suite("quick")
    five = len(suite.seeds)
    cartpole_mid = 23.7 + (500 - 23.7) / 2  # normalised: 0.5
    cells = {}
    for env_id, final in (("CartPole-v1", 500), ("Acrobot-v1", -80), ("Pendulum-v1", -200)):
        for algo in ("ppokl", "ppo"):
            cells[(env_id, algo)] = _cell(env_id, algo, [[final, final]] * five, [1.0])
    cells[("CartPole-v1", "offpac")] = _cell("CartPole-v1", "offpac", [[100, 500]] * five, [1.0])
    cells[("CartPole-v1", "dqn")] = _cell("CartPole-v1", "dqn", [[100, cartpole_mid]] * five, [1.0])
    cells[("Pendulum-v1", "offpac")] = _cell("Pendulum-v1", "offpac", [[-900, -150]] * 3, [1.0])  # 3 of 5 seeds
    cells[("Pendulum-v1", "sac")] = _cell("Pendulum-v1", "sac", [[-900, -150]] * 2, [1.0])
    text = "\n".join(aggregates(suite, cells, tmp_path))
    main, partial = text.split("Each row left out above")
    partial = partial.split("Probability of improvement")[0]
    assert "\n| PPOKL | " in main and "\n| OffPAC | " not in main and "\n| DQN | " not in main
    assert "\n| OffPAC | CartPole-v1 | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | DQN | 0.50 [0.50, 0.50] |" in partial
    assert "\n| DQN | CartPole-v1 | 0.50 [0.50, 0.50] | 0.50 [0.50, 0.50] | — | — |" in partial
    assert "| SAC |" not in partial and "| PPOKL |" not in partial and "Pendulum-v1 |" not in partial
    # with every row on every env, the table is not written
    full = {key: cell for key, cell in cells.items() if key[1] in ("ppokl", "ppo")}
    assert "Each row left out above" not in "\n".join(aggregates(suite, full, tmp_path))


def test_too_few_seeds_get_no_confidence_interval():
    """One seed each: no "[x, x]" CI and no claim that CIs (of one value) do not overlap; three seeds: CIs again."""
    from sb3_pgext.suite.formatting import MIN_SEEDS_FOR_CI, env_table, trailing

    assert MIN_SEEDS_FOR_CI == 3
    suite = load_suite("quick")
    cartpole = next(env for env in suite.envs if env.env_id == "CartPole-v1")
    cells = {
        ("CartPole-v1", "ppo"): _cell("CartPole-v1", "ppo", [[480, 500]], [2000.0]),
        ("CartPole-v1", "ppokl"): _cell("CartPole-v1", "ppokl", [[100, 450]], [2000.0]),
    }
    text = "\n".join(trailing(suite, cells) + env_table(suite, cartpole, cells))
    assert "final 450 (1 seed: no CI) vs 500 (1 seed: no CI) (too few seeds to tell: 1 and 1)" in text
    assert "[450, 450]" not in text and "overlap" not in text
    cells[("CartPole-v1", "ppokl")] = _cell("CartPole-v1", "ppokl", [[100, 450], [100, 460], [100, 470]], [2000.0])
    text = "\n".join(trailing(suite, cells) + env_table(suite, cartpole, cells))
    assert "(too few seeds to tell: 3 and 1)" in text and "| 460 [" in text


def test_recorded_command_is_portable(monkeypatch, tmp_path):
    """result.json's command: `python` for the interpreter, paths inside the working folder relative to it."""
    import sys

    from sb3_pgext.suite.runner import recorded_command

    monkeypatch.chdir(tmp_path)
    command = [sys.executable, "-m", "sb3_pgext.zoo", "train", "-f", str(tmp_path / "benchmark" / "quick"), "--conf-file", "/elsewhere/c.yml"]
    assert recorded_command(command) == ["python", "-m", "sb3_pgext.zoo", "train", "-f", "benchmark/quick", "--conf-file", "/elsewhere/c.yml"]


REPOSITORY = Path(__file__).parent.parent


COMMITTED_REPORTS = sorted(path.parent.name for path in (REPOSITORY / "benchmark").glob("*/benchmark.md"))


@pytest.mark.parametrize("name", COMMITTED_REPORTS)
def test_every_committed_suite_report_regenerates_byte_for_byte_from_the_raw_results(tmp_path, name):
    """benchmark/<suite>/benchmark.md is what `report` writes from the committed result.json, evaluations.npz,
    progress.csv and speed.json alone."""
    committed = REPOSITORY / "benchmark" / name
    for path in committed.rglob("*"):
        if path.name in ("result.json", "evaluations.npz", "progress.csv", "speed.json"):
            copy = tmp_path / path.relative_to(committed)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
    report = write_report(load_suite(name), tmp_path, f"python -m sb3_pgext.suite run {name} --workers 2")
    text = report.read_text()
    assert text == (committed / "benchmark.md").read_text()
    # every plot the report shows is drawn (the aggregate plot only once every cell has runs)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images and all((tmp_path / image).stat().st_size > 1000 for image in images)
    assert ("aggregate.png" in images) == (tmp_path / "aggregate.png").exists()


@pytest.mark.parametrize("folder", ["speed", "speed/cuda", "speed/cvpg"])
def test_the_speed_comparisons_regenerate_byte_for_byte_from_their_json(folder):
    from sb3_pgext.suite.compare import COMPARE_JSON, COMPARE_MD, compare_markdown

    committed = REPOSITORY / "benchmark" / folder
    if not (committed / COMPARE_JSON).is_file():
        pytest.skip(f"no committed benchmark/{folder} in this checkout")
    data = json.loads((committed / COMPARE_JSON).read_text())
    assert "\n".join(compare_markdown(data)) + "\n" == (committed / COMPARE_MD).read_text()


def test_a_run_records_its_versions_and_the_report_prints_them():
    from sb3_pgext.suite.formatting import provenance
    from sb3_pgext.suite.runner import versions

    assert set(versions()) == {"sb3_pgext", "SB3", "torch", "Python"}
    old = {"fps": 1.0}
    new = [{"versions": {"SB3": "2.9.2", "torch": torch}, "cpu": "CPU A"} for torch in ("2.13.0", "2.11.0")]
    assert provenance([old]) == "The runs did not record their versions (they predate that field of `result.json`)."
    assert provenance([*new, old]) == "Trained with SB3 2.9.2, torch 2.11.0/2.13.0 on CPU A (1 older runs recorded none)."
    on_ray = {**new[0], "backend": "ray"}
    assert provenance([on_ray, new[1]]).endswith("on CPU A. 1 of the 2 runs trained as Ray tasks (`--backend ray`).")
    assert provenance([on_ray]).endswith("on CPU A. All 1 runs trained as Ray tasks (`--backend ray`).")


#: shrinks a packaged variant's model to a few cheap steps, on top of its own overrides
SHRINK = {
    "ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 1},
    "ppokl": {"n_steps": 16, "batch_size": 32, "n_epochs": 1},
    "cvpg": {"n_steps": 16, "batch_size": 32, "n_epochs": 1, "qf_gradient_steps": 2},
    "offpac": {"learning_starts": 16, "batch_size": 16, "train_freq": 1, "gradient_steps": 1},
}
def _needs_mujoco(env_id: str) -> bool:
    import gymnasium as gym

    return "mujoco" in str(gym.spec(env_id).entry_point)


PACKAGED_VARIANTS = [
    (name, variant, min((env.env_id for env in suite.envs if variant in env.algos), key=_needs_mujoco))  # the first without MuJoCo
    for name in PACKAGED_SUITES
    for suite in [load_suite(name)]
    for variant in suite.variants
]


@pytest.mark.parametrize("suite_name, variant, env_id", PACKAGED_VARIANTS)
def test_every_packaged_variant_builds_through_the_zoo_and_trains(tmp_path, suite_name, variant, env_id):
    """Each variant's overrides are accepted by its algorithm, as the zoo builds it, and a few steps of it train."""
    from sb3_pgext.suite.runner import zoo_conf_file
    from sb3_pgext.suite.speed import zoo_model

    if _needs_mujoco(env_id) and importlib.util.find_spec("mujoco") is None:
        pytest.skip(f"{variant} runs on MuJoCo envs only, and MuJoCo is not installed (the benchmarks extra)")
    suite = load_suite(suite_name)
    algo = suite.zoo_algo(variant)
    overrides = {**SHRINK[algo], **suite.overrides(variant)}  # tiny rollouts, but what the variant sets is its own
    model = zoo_model(algo, env_id, "cpu", tmp_path, zoo_conf_file(suite, algo, tmp_path), overrides)
    for key, value in suite.overrides(variant).items():
        if key == "callback":  # the zoo's own hyperparameter: it builds the callbacks, the model never sees them
            from rl_zoo3.utils import get_callback_list

            assert get_callback_list({"callback": value}), value
            continue
        actual = getattr(model, key)
        if key == "policy_kwargs" and isinstance(value, str):  # a Python expression the zoo evaluates in its own module
            import rl_zoo3.exp_manager

            value = eval(value, vars(rl_zoo3.exp_manager))
            # the zoo adds its own keys (use_sde=False for the off-policy algorithms): the variant's must all be there
            actual = {name: actual.get(name) for name in value}
        if key == "train_freq" and isinstance(value, int):  # SB3 stores an int as TrainFreq(n, "step")
            from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

            value = TrainFreq(value, TrainFrequencyUnit.STEP)
        if isinstance(value, str) and value.startswith("lin_"):  # the zoo's linear schedule, from its value to 0
            value = float(value.removeprefix("lin_"))
            assert actual(0.5) == pytest.approx(value / 2), key
        assert (actual(1.0) if callable(actual) else actual) == value, key  # a schedule at the start of training
    steps = max(64, model.n_envs * getattr(model, "n_steps", 0) * 2)
    model.learn(steps)
    assert model.num_timesteps >= steps and model._n_updates > 0
    model.get_env().close()


def test_suite_modules_import_only_downward_and_no_private_names():
    """The suite's modules form no import cycle (function-level imports included), and none imports another's `_name`."""
    import ast
    from graphlib import TopologicalSorter

    folder = REPOSITORY / "sb3_pgext" / "suite"
    modules = {f"sb3_pgext.suite.{path.stem}": path for path in folder.glob("*.py") if path.stem != "__init__"}
    graph, private = {}, []
    for name, path in modules.items():
        imported = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)]
        graph[name] = {node.module for node in imported if node.module in modules and node.module != name}
        private += [
            f"{name}: {node.module}.{alias.name}"
            for node in imported
            if node.module in modules
            for alias in node.names
            if alias.name.startswith("_")
        ]
    order = [name.removeprefix("sb3_pgext.suite.") for name in TopologicalSorter(graph).static_order()]  # CycleError: a cycle
    assert order.index("results") < order.index("formatting") < order.index("decomposition") < order.index("report")
    assert private == []
