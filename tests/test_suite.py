"""Benchmark suites: configuration, the resumable runner through the zoo, and the report."""

import json
from pathlib import Path

import numpy as np
import pytest

from sb3_pgext.suite import load_suite, run_suite, write_report
from sb3_pgext.suite.__main__ import main
from sb3_pgext.suite.report import Cell
from sb3_pgext.suite.runner import jobs_of
from sb3_pgext.suite.scores import SCORE_RANGES, normalize

TINY_SUITE = """
description: two tiny cells
seeds: [0, 1]
eval_freq: 256
eval_episodes: 2
envs:
  CartPole-v1:
    n_timesteps: 512
    threshold: 15
    algos: [ppokl, ppo]
"""


@pytest.mark.parametrize("name", ["quick", "standard"])
def test_packaged_suites_are_complete(name):
    """Every env has a normalisation range and an entry in the yml of each of our algorithms; each of ours has a peer."""
    from sb3_pgext.common.hyperparams import hyperparams_path
    import yaml

    suite = load_suite(name)
    assert len(suite.seeds) == 5
    for env in suite.envs:
        assert env.env_id in SCORE_RANGES
        for algo in env.algos:
            if algo in ("ppokl", "cvpg", "offpac"):
                with open(hyperparams_path(algo)) as file:
                    assert env.env_id in yaml.safe_load(file), (algo, env.env_id)
                assert suite.peer(algo, env) in env.algos
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


def test_run_resume_and_report(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--workers", "2"]) == 0
    suite = load_suite(path)
    jobs = jobs_of(suite)
    assert len(jobs) == 4
    results = [json.loads((job.root(out) / "result.json").read_text()) for job in jobs]
    assert all(result["fps"] > 0 and result["n_timesteps"] == 512 for result in results)
    for job in jobs:  # the zoo's own layout, with its evaluations
        with np.load(job.log_dir(out) / "evaluations.npz") as data:
            assert list(data["timesteps"]) == [256, 512] and data["results"].shape == (2, 2)

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
    rows = [line for line in text.splitlines() if line.startswith("| PPOKL |") or line.startswith("| PPO |")]
    assert len(rows) >= 2 and "| PPOKL | PPO | 2/2 |" in text
    assert "## Where ours trail their peers" in text and "P(ours > peer)" in text and "| PPOKL, PPO |" in text
    for name in ("aggregate.png", "probability_of_improvement.png", "curves_CartPole-v1.png"):
        assert (out / name).stat().st_size > 1000
    assert "![CartPole-v1](curves_CartPole-v1.png)" in text


def test_report_counts_missing_runs(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    out = tmp_path / "out"
    report = write_report(load_suite(path), out if out.mkdir() is None else out, "cmd")
    text = Path(report).read_text()
    assert "0/4 runs finished" in text and "not run yet" in text


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
