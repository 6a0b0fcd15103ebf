"""
Nothing lost, nothing crashes: loading optimizer states of any critic layout, saves that a failure or a kill
cannot destroy, damaged suite results, a runner's children, clear errors for bad files and envs, and
non-finite numbers stopped before they reach the weights.
"""

import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common import save_util as sb3_save_util
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_pgext import PPOKL, OffPAC
from sb3_pgext.common.finite import NonFiniteError
from sb3_pgext.common.save_util import atomic_vec_normalize_saves
from sb3_pgext.suite import load_suite, run_suite, write_report
from sb3_pgext.suite.__main__ import main as suite_main
from sb3_pgext.suite.runner import jobs_of
from tests.conftest import tiny

# --- OffPAC: an optimizer state of any critic layout loads and trains on, or is a named error -------

LOAD_AND_LEARN = """
import sys
import gymnasium as gym
import torch as th
from stable_baselines3 import SAC
from sb3_pgext import OffPAC

n_critics, env_id, source, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
kwargs = dict(policy_kwargs=dict(n_critics=n_critics, net_arch=[16]), learning_starts=100, batch_size=32, seed=0)
saved = (SAC if source == "sac" else OffPAC)("MlpPolicy", env_id, **kwargs)
saved.learn(150)
saved.save(path)
expected = saved.get_parameters()["critic.optimizer"]
if source == "set_parameters":
    model = OffPAC("MlpPolicy", env_id, **kwargs)
    model.set_parameters(path)
else:
    model = OffPAC.load(path, env=gym.make(env_id))
# the state that was saved, in the saved layout, every tensor equal: not only no crash
loaded = model.get_parameters()["critic.optimizer"]
assert loaded["state"].keys() == expected["state"].keys()
for index, state in expected["state"].items():
    for key, value in state.items():
        assert th.equal(th.as_tensor(loaded["state"][index][key]).cpu(), th.as_tensor(value).cpu()), (index, key)
model.learn(150, reset_num_timesteps=False)
assert all(th.isfinite(param).all() for param in model.policy.parameters())
print("trained on")
"""


@pytest.mark.parametrize(
    "n_critics, env_id, source",
    [
        (1, "Pendulum-v1", "offpac"),
        (2, "Pendulum-v1", "offpac"),
        (3, "Pendulum-v1", "offpac"),
        (1, "CartPole-v1", "offpac"),
        (1, "Pendulum-v1", "sac"),
        (2, "Pendulum-v1", "sac"),
        (1, "Pendulum-v1", "set_parameters"),
    ],
)
def test_offpac_loads_its_optimizer_state_and_trains_on(tmp_path, n_critics, env_id, source):
    """
    Save, load (or ``set_parameters``, or a SAC checkpoint), train on: in a subprocess, so that a crash inside
    the fused Adam step (a segmentation fault with one critic, before) fails this test instead of ending the run.
    """
    script = [sys.executable, "-c", LOAD_AND_LEARN, str(n_critics), env_id, source, str(tmp_path / "model.zip")]
    finished = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, f"exit {finished.returncode}\n{finished.stderr[-3000:]}"
    assert finished.stdout.strip().endswith("trained on")


def test_set_parameters_with_incomplete_states_raises_as_sb3_does():
    """SB3's own check (tests/test_save_load.py): every state dict missing its last entry is a RuntimeError."""
    model = OffPAC("MlpPolicy", "Pendulum-v1", **tiny(OffPAC))
    model.learn(64)
    params = model.get_parameters()
    incomplete = {name: dict(list(state.items())[:-1]) for name, state in params.items()}
    with pytest.raises(RuntimeError):
        model.set_parameters(incomplete, exact_match=True)


def test_an_optimizer_state_of_other_shapes_is_a_named_error():
    model = OffPAC("MlpPolicy", "Pendulum-v1", **tiny(OffPAC))
    other = OffPAC("MlpPolicy", "Pendulum-v1", **tiny(OffPAC, policy_kwargs=dict(net_arch=[8])))
    for trained in (model, other):
        trained.learn(64)
    params = {**model.get_parameters(), "actor.optimizer": other.get_parameters()["actor.optimizer"]}
    with pytest.raises(ValueError, match=r"the saved state of actor\.optimizer does not fit .*exp_avg of parameter 0: \(8, 3\) for \(16, 3\)"):
        model.set_parameters(params)
    params = {**model.get_parameters(), "critic.optimizer": other.get_parameters()["critic.optimizer"]}
    with pytest.raises(ValueError, match=r"critic\.optimizer"):
        model.set_parameters(params)


# --- saves: a failure or a kill midway leaves the previous file --------------------------------------


def _flat(model) -> th.Tensor:
    return th.cat([param.detach().flatten() for param in model.policy.parameters()])


def test_a_save_that_fails_after_its_first_entry_leaves_the_previous_file(tmp_path, model_class, monkeypatch):
    env_id = "Pendulum-v1"
    model = model_class("MlpPolicy", env_id, **tiny(model_class))
    path = tmp_path / "model.zip"
    model.save(tmp_path / "model")  # SB3's suffix rule: model -> model.zip
    before = _flat(model).clone()
    model.learn(64)
    assert not th.equal(before, _flat(model))

    def fail(*args, **kwargs):  # save_to_zip_file writes "data" first, then the tensors with th.save
        raise OSError("disk full")

    monkeypatch.setattr(sb3_save_util.th, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert th.equal(_flat(model_class.load(path)), before)
    assert sorted(file.name for file in tmp_path.iterdir()) == ["model.zip"], "no temporary file is left"


KILLED_SAVE = """
import os, signal, sys
from stable_baselines3.common import save_util
from sb3_pgext import PPOKL

path = sys.argv[1]
model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, policy_kwargs=dict(net_arch=[16]), seed=0)
model.save(path)
model.learn(64)
save_util.th.save = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)  # killed after "data" is written
model.save(path)
"""


def test_a_killed_save_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.zip"
    finished = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == -signal.SIGKILL, finished.stderr[-2000:]
    model = PPOKL.load(path)  # the first save, whole
    assert model.num_timesteps == 0


def test_a_failed_replay_buffer_save_leaves_the_previous_file(tmp_path, monkeypatch):
    model = OffPAC("MlpPolicy", "Pendulum-v1", **tiny(OffPAC))
    model.learn(40)
    path = tmp_path / "buffer.pkl"
    model.save_replay_buffer(path)
    model.learn(40, reset_num_timesteps=False)

    def fail(obj, file, protocol=None):
        file.write(b"part of a pickle")
        raise OSError("killed")

    monkeypatch.setattr(sb3_save_util.pickle, "dump", fail)
    with pytest.raises(OSError, match="killed"):
        model.save_replay_buffer(path)
    monkeypatch.undo()
    model.load_replay_buffer(path)
    assert model.replay_buffer.size() == 40


def test_vec_normalize_saves_of_the_zoo_command_leave_the_previous_file(tmp_path, monkeypatch):
    """What the zoo command saves through ``VecNormalize.save``; SB3's method is back after the command."""
    assert list(inspect.signature(VecNormalize.save).parameters) == ["self", "save_path"], "SB3's VecNormalize.save changed"
    sb3_save = VecNormalize.save
    env = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    path = tmp_path / "vecnormalize.pkl"
    with atomic_vec_normalize_saves():
        env.save(str(path))
        assert VecNormalize.save is not sb3_save
        env.reset()
        env.step(np.zeros((1, 1), dtype=np.float32))
        monkeypatch.setattr(pickle, "dump", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(OSError, match="killed"):
            env.save(str(path))
        monkeypatch.undo()
    assert VecNormalize.save is sb3_save
    assert VecNormalize.load(str(path), DummyVecEnv([lambda: gym.make("Pendulum-v1")])).obs_rms.count == 1e-4  # the first save
    assert sorted(file.name for file in tmp_path.iterdir()) == ["vecnormalize.pkl"]


# --- the suite: damaged results, children that die with their runner ---------------------------------

TINY_SUITE = """
description: two tiny cells
seeds: [0, 1]
eval_freq: 256
eval_episodes: 2
envs:
  CartPole-v1:
    n_timesteps: 512
    threshold: 15
    algos: [ppokl]
"""


def test_a_damaged_result_is_named_and_trained_again_and_the_report_names_it(tmp_path, monkeypatch, capsys):
    from sb3_pgext.suite import runner

    path = tmp_path / "tiny.yml"
    path.write_text(TINY_SUITE)
    suite, out = load_suite(path), tmp_path / "out"
    jobs = jobs_of(suite)
    for job, content in zip(jobs, ["", '{"env": "CartPole-v1", "al']):  # zero bytes; truncated
        job.root(out).mkdir(parents=True)
        (job.root(out) / "result.json").write_text(content)
    write_report(suite, out, "cmd")  # the report, before: not a JSONDecodeError
    text = (out / "benchmark.md").read_text()
    assert "Damaged runs, not in this report: `runs/CartPole-v1/ppokl/seed_0/result.json` (unreadable" in text
    assert "`runs/CartPole-v1/ppokl/seed_1/result.json`" in text and "0/2 runs finished" in text
    trained = []

    def train(suite, job, out, device, conf):
        trained.append(job)
        result = {"env": job.env.env_id, "algo": job.algo, "seed": job.seed, "wall_seconds": 1.0}
        job.root(out).mkdir(parents=True, exist_ok=True)
        (job.root(out) / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(runner, "_train", train)
    assert run_suite(suite, out, workers=1) == []
    printed = capsys.readouterr().out
    for job in jobs:
        assert f"{job.root(out) / 'result.json'}: damaged (not a readable result), so ppokl on CartPole-v1, seed {job.seed} is trained again" in printed
    assert sorted(trained, key=jobs.index) == jobs


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_runners_training_child_dies_with_it(tmp_path):
    path = tmp_path / "long.yml"
    path.write_text(TINY_SUITE.replace("n_timesteps: 512", "n_timesteps: 1000000").replace("seeds: [0, 1]", "seeds: [0]"))
    command = [sys.executable, "-m", "sb3_pgext.suite", "run", str(path), "--out", str(tmp_path / "out"), "--workers", "1"]
    runner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while not children and time.monotonic() < deadline:
            time.sleep(0.5)
            children = _children(runner.pid)
        assert children, "the runner started no training"
        time.sleep(8)  # the child is past its imports and trains
        assert all(_alive(child) for child in children)
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 30
    while any(_alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [child for child in children if _alive(child)]
    for child in alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the training went on after its runner was killed"


def test_suite_subcommands_have_their_own_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite_main(["run", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: python -m sb3_pgext.suite run ") and "--backend" in printed and "--seeds" in printed
    assert "--repeats" not in printed


# --- clear errors for what cannot be loaded ----------------------------------------------------------


def test_a_truncated_model_file_and_an_env_id_are_clear_errors(tmp_path):
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0)
    model.save(tmp_path / "model.zip")
    content = (tmp_path / "model.zip").read_bytes()
    # cut in half, zipfile finds the nested policy.pth archive and SB3 said "No data found in the saved file"
    (tmp_path / "half.zip").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=r"half\.zip is not a model file \(not a zip archive, or a truncated one\): it has no 'data' entry"):
        PPOKL.load(tmp_path / "half.zip")
    for fraction in (0.1, 0.3, 0.7, 0.9, 0.999):
        (tmp_path / "cut.zip").write_bytes(content[: int(len(content) * fraction)])
        with pytest.raises(ValueError, match=r"cut\.zip is not a model file \(not a zip archive, or a truncated one\)"):
            PPOKL.load(tmp_path / "cut.zip")
    with pytest.raises(TypeError, match=r"got the string 'CartPole-v1'.*pass env=gymnasium\.make\('CartPole-v1'\)"):
        PPOKL.load(tmp_path / "model.zip", env="CartPole-v1")


# --- non-finite numbers stop training before they reach the weights ----------------------------------


class _Broken(gym.Wrapper):
    """Pendulum whose ``what`` ("reward" or "observation") is ``value`` at env step ``at`` (and on, for "huge")."""

    def __init__(self, what: str, value: float, at: int = 150):
        super().__init__(gym.make("Pendulum-v1"))
        self.what, self.value, self.at, self.t = what, value, at, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.what == "reward" and self.t == self.at:
            reward = self.value
        if self.what == "observation" and self.t == self.at:
            obs = obs.copy()
            obs[1] = self.value
        if self.what == "huge":
            reward = self.value
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("what", ["reward", "observation"])
def test_a_nan_from_the_env_stops_training_with_a_named_error_and_finite_weights(tmp_path, model_class, what):
    model = model_class("MlpPolicy", _Broken(what, float("nan")), **tiny(model_class))
    with pytest.raises(NonFiniteError, match=rf"{model_class.__name__}: non-finite {what} from the env at step 150 \(nan at \[0.*VecCheckNan"):
        model.learn(400)
    model.save(tmp_path / "model")
    assert all(th.isfinite(param).all() for param in model_class.load(tmp_path / "model").policy.parameters())


def test_a_non_finite_loss_stops_training_with_a_named_error(model_class):
    """
    Finite rewards too large for float32 squares: the loss is inf. The PPO family checks each minibatch's loss before
    its optimizer step (its weights stay finite); OffPAC checks its losses once per train() call, where it reads its
    logged values (no device read per gradient step), and names the call's gradient steps.
    """
    model = model_class("MlpPolicy", _Broken("huge", 1e30), **tiny(model_class))
    if model_class is OffPAC:
        with pytest.raises(NonFiniteError, match=r"OffPAC: the critic_loss is inf in gradient steps 1-1 \(this train\(\) call\)"):
            model.learn(400)
        return
    with pytest.raises(NonFiniteError, match=rf"{model_class.__name__}: the loss is inf in epoch 1 of the update at step 32, before its step"):
        model.learn(400)
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
