"""
The zoo command as a newcomer meets it: its thread default, its help, and the messages that replace rl_zoo3's
tracebacks (a missing extra, record_training, a trial the study does not have, rliable on single runs).
"""

import pickle
import sys

import numpy as np
import optuna
import pytest
import torch as th

from sb3_pgext import PPOKL, gradient_variance
from sb3_pgext.zoo import checks
from sb3_pgext.zoo.cli import main

TINY_TRAIN = ["train", "--algo", "ppokl", "--env", "CartPole-v1", "-n", "64", "--eval-freq", "-1", "-params", "n_envs:1", "n_steps:32", "batch_size:32"]


@pytest.fixture
def restore_threads():
    threads = th.get_num_threads()
    yield
    th.set_num_threads(threads)


def test_train_uses_one_torch_thread_unless_told(tmp_path, capsys, restore_threads):
    th.set_num_threads(2)
    main([*TINY_TRAIN, "-f", str(tmp_path / "a")])
    assert th.get_num_threads() == 1
    printed = capsys.readouterr().out
    assert "sb3_pgext.zoo: 1 torch thread (--num-threads N to choose, -1 for torch's default)" in printed
    main([*TINY_TRAIN, "-f", str(tmp_path / "b"), "--num-threads", "2"])  # the user's choice wins
    assert th.get_num_threads() == 2
    printed = capsys.readouterr().out
    assert "sb3_pgext.zoo: 1 torch thread" not in printed


@pytest.mark.parametrize(
    "command, flags, module, extra",
    [
        ("plot_train", ["--algo", "ppokl", "--env", "CartPole-v1", "-f", "logs"], "seaborn", "plots"),
        ("all_plots", ["--algo", "ppokl", "--env", "CartPole-v1", "-f", "logs"], "seaborn", "plots"),
        ("record_video", ["--algo", "ppokl", "--env", "CartPole-v1", "-f", "logs"], "pygame", "video"),
        ("record_video", ["--algo", "ppokl", "--env", "CartPole-v1", "-f", "logs"], "moviepy", "video"),
    ],
)
def test_a_missing_extra_is_named_before_the_zoo_starts(monkeypatch, command, flags, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # not importable: importlib.util.find_spec gives None
    with pytest.raises(SystemExit) as exit_info:
        main([command, *flags])
    assert str(exit_info.value) == f'python -m sb3_pgext.zoo {command}: {command} needs {module}, which is not installed: pip install "sb3-pgext[{extra}]"'


def test_record_video_of_a_mujoco_env_does_not_need_pygame():
    assert checks.missing_extra("record_video", ["--env", "HalfCheetah-v5"], find_spec=lambda name: None if name == "pygame" else object()) is None


def test_help_is_plain_text_and_record_training_says_what_to_use(capsys):
    main(["--help"])
    printed = capsys.readouterr().out
    assert printed.startswith("usage: python -m sb3_pgext.zoo {train,")
    assert "``" not in printed and ":func:" not in printed and "record_video" in printed
    with pytest.raises(SystemExit, match=r"(?s)record_training is not available.*record_video --algo ALGO --env ENV -f FOLDER"):
        main(["record_training", "--algo", "ppokl", "--env", "CartPole-v1"])


def test_a_trial_the_study_does_not_have_is_refused_with_the_range(tmp_path):
    storage = str(tmp_path / "study.log")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    study = optuna.create_study(study_name="s", storage=journal, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    flags = ["train", "--algo", "ppokl", "--env", "CartPole-v1", "--storage", storage, "--study-name", "s"]
    with pytest.raises(SystemExit, match=r"--trial-id 7: study s in .*study\.log has 3 trials, numbered 0 to 2; the zoo takes 1 to the last"):
        main([*flags, "--trial-id", "7"])
    with pytest.raises(SystemExit, match=r"--study-name other: no such study"):
        main([*flags[:-1], "other", "--trial-id", "1"])
    assert checks.trial_id_error([*flags[1:], "--trial-id", "2"]) is None


def test_rliable_plots_of_single_runs_are_refused_with_the_fix(tmp_path):
    """all_plots' results of one run per algorithm: rl_zoo3 stopped with "min() arg is an empty sequence"."""
    results = {
        "CartPole-v1": {"ppokl": {"last_evals": np.float64(9.0)}, "ppo": {"last_evals": np.array([9.0, 10.0])}},
        "results_table": {"headers": ["env"], "value_matrix": [["CartPole-v1"]]},
    }
    path = tmp_path / "results.pkl"
    path.write_bytes(pickle.dumps(results))
    with pytest.raises(SystemExit, match=r"-r \(rliable's aggregates\) needs at least two runs .* for ppokl on CartPole-v1 \(1\): train more seeds"):
        main(["plot_from_file", "-i", str(path), "-o", str(tmp_path / "figure.png"), "-r"])


def test_gradient_variance_prints_as_one_line():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, policy_kwargs=dict(net_arch=[8])).learn(64)
    result = gradient_variance(model)
    assert repr(result).startswith(f"GradientVariance(variance={result['variance']:.6g}, mean_sq_norm=")
    assert "tensor" not in repr(result) and repr(result).endswith("n_minibatches=16, minibatch_size=4, mean=<" f"{result['mean'].numel()} values>)")


@pytest.mark.parametrize("command", ["record_video", "push_to_hub", "load_from_hub"])
def test_scripts_run_with_runpy_see_the_registered_algorithms(command, capsys):
    """The zoo's __main__-block scripts run as a fresh module (runpy): their --algo choices still hold ours."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"usage: sb3_pgext.zoo {command}" in printed
    assert "ppokl" in printed and "cvpg" in printed and "offpac" in printed
