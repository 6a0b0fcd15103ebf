"""Agents saved with ``gym`` (SB3 1.x, the hub's sb3/* agents) and warm starts from PPO checkpoints."""

import json
import subprocess
import sys
import warnings
import zipfile
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.utils import check_for_correct_spaces

from sb3_pgext import CVPG, PPOKL, OffPAC
from sb3_pgext.common.compat import gym_as_gymnasium, legacy_train_freq, load_model, same_space_up_to_legacy_bounds
from sb3_pgext.offpac.policies import OffPACPolicy

if __import__("importlib").util.find_spec("gym") is not None:  # pragma: no cover
    pytest.skip("the legacy gym package is installed: nothing to map", allow_module_level=True)


@contextmanager
def pickled_as_gym():
    """Save with gymnasium's space classes named as gym's, as SB3 1.x did."""
    classes = (spaces.Box, spaces.Discrete)
    modules = {cls: cls.__module__ for cls in classes}
    with gym_as_gymnasium():
        for cls in classes:
            cls.__module__ = modules[cls].replace("gymnasium", "gym", 1)
        try:
            yield
        finally:
            for cls in classes:
                cls.__module__ = modules[cls]


def legacy_cartpole_spaces() -> tuple[spaces.Box, spaces.Discrete]:
    """CartPole's spaces as gym < 0.26 wrote them: unbounded limits as ±float32 max."""
    high = np.array([4.8, np.finfo(np.float32).max, 0.41887903, np.finfo(np.float32).max], dtype=np.float32)
    return spaces.Box(-high, high, dtype=np.float32), spaces.Discrete(2)


@pytest.fixture(scope="module")
def legacy_ppo(tmp_path_factory):
    """A tiny PPO saved with gym-named spaces and gym's CartPole bounds, and the observations/actions it gives."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[8]), seed=0)
    model.learn(64)
    model.observation_space, model.action_space = legacy_cartpole_spaces()
    path = tmp_path_factory.mktemp("legacy") / "ppo-CartPole-v1.zip"
    with pickled_as_gym():
        model.save(path)
    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    return path, observations, model.predict(observations, deterministic=True)[0], model


def test_fixture_is_a_real_legacy_file(legacy_ppo):
    """Run apart from this process's imports: plain SB3 cannot read it, as with the hub's sb3/* agents."""
    path = legacy_ppo[0]
    code = f"from stable_baselines3 import PPO; PPO.load({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "No module named 'gym'" in result.stderr


def test_load_model_reads_gym_pickles(legacy_ppo):
    path, observations, actions, _ = legacy_ppo
    model = load_model(PPO, path)
    assert isinstance(model.observation_space, spaces.Box) and type(model.action_space) is spaces.Discrete
    np.testing.assert_array_equal(model.predict(observations, deterministic=True)[0], actions)
    assert "gym" not in sys.modules  # the mapping is gone after loading


def test_legacy_bounds_match_the_gymnasium_env():
    env = gym.make("CartPole-v1")
    legacy_observations, legacy_actions = legacy_cartpole_spaces()
    assert legacy_observations != env.observation_space
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        check_for_correct_spaces(env, legacy_observations, legacy_actions)
    assert same_space_up_to_legacy_bounds(legacy_observations, env.observation_space)
    assert not same_space_up_to_legacy_bounds(spaces.Box(-1, 1, (4,)), env.observation_space)
    assert not same_space_up_to_legacy_bounds(legacy_observations, spaces.Box(-np.inf, np.inf, (4,), dtype=np.float64))


@pytest.mark.parametrize("algo_class", [PPO, PPOKL])
def test_warm_start_from_legacy_ppo(legacy_ppo, algo_class):
    """A gym-era PPO agent continues training as PPO or PPOKL on today's env, starting from its policy."""
    path, observations, actions, original = legacy_ppo
    env = gym.make("CartPole-v1")
    model = load_model(algo_class, path, env=env, n_steps=32, batch_size=32)
    assert type(model) is algo_class and model.observation_space == env.observation_space
    for name, tensor in original.policy.state_dict().items():
        th.testing.assert_close(model.policy.state_dict()[name], tensor, rtol=0, atol=0)
    np.testing.assert_array_equal(model.predict(observations, deterministic=True)[0], actions)
    model.learn(64, reset_num_timesteps=False)
    assert model.num_timesteps >= 64 + original.num_timesteps
    assert not th.equal(model.policy.action_net.weight, original.policy.action_net.weight)  # it trained on


def test_ppokl_load_reads_legacy_files_itself(legacy_ppo):
    path = legacy_ppo[0]
    model = PPOKL.load(path, env=gym.make("CartPole-v1"))
    assert isinstance(model, PPOKL) and model.kl_target == 0.01  # PPOKL's defaults for what PPO never saved


def test_cvpg_warm_start_keeps_policy_and_trains_a_fresh_critic(tmp_path):
    ppo = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[8]), seed=0)
    ppo.learn(64)
    ppo.save(tmp_path / "ppo")
    with pytest.warns(UserWarning, match="no Q critic"):
        model = CVPG.load(tmp_path / "ppo", env=gym.make("Pendulum-v1"), qf_gradient_steps=2, qf_net_arch=[8])
    assert model.control_variate == "taylor"
    for name, tensor in ppo.policy.state_dict().items():
        th.testing.assert_close(model.policy.state_dict()[name], tensor, rtol=0, atol=0)
    fresh_critic = [p.clone() for p in model.q_critic.parameters()]
    model.learn(128)
    assert not all(th.equal(a, b) for a, b in zip(fresh_critic, model.q_critic.parameters())), "the critic trains"
    # a CVPG checkpoint with its critic loads exactly, without the warning
    model.save(tmp_path / "cvpg")
    with warnings.catch_warnings(record=True) as caught:  # SB3 may warn of other things (an MLP on a GPU)
        warnings.simplefilter("always")
        again = CVPG.load(tmp_path / "cvpg")
    assert not [w for w in caught if "critic" in str(w.message)], [str(w.message) for w in caught]
    th.testing.assert_close(again.q_critic.state_dict(), model.q_critic.state_dict())


def test_cvpg_warm_start_rejects_another_architecture(tmp_path):
    ppo = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[8]), seed=0)
    ppo.save(tmp_path / "ppo")
    cvpg = CVPG("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[16]), qf_net_arch=[8])
    with pytest.raises(ValueError, match="does not match"):
        cvpg.set_parameters(str(tmp_path / "ppo.zip"))


# --- files of other algorithms, truncated files, SAC checkpoints into OffPAC ----------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Tiny models of each kind, saved: {name: path}."""
    folder = tmp_path_factory.mktemp("saved")
    on_policy = dict(n_steps=64, batch_size=32, n_epochs=1, seed=0)
    models = {
        "ppo": PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), **on_policy),
        "cvpg": CVPG("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), qf_net_arch=[8], **on_policy),
        "sac": SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), learning_starts=32, batch_size=16, seed=0),
        "offpac": OffPAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), seed=0),
    }
    models["sac"].learn(64)
    paths = {}
    for name, model in models.items():
        model.save(folder / name)
        paths[name] = folder / f"{name}.zip"
    content = paths["ppo"].read_bytes()
    paths["truncated"] = folder / "truncated.zip"
    paths["truncated"].write_bytes(content[: len(content) // 2])
    return paths


@pytest.mark.parametrize(
    "algo_class, name, message",
    [
        (PPOKL, "offpac", r"policy is sb3_pgext\.offpac\.policies\.OffPACPolicy.*PPOKL\.load reads files saved by PPOKL"),
        (OffPAC, "ppo", r"policy is stable_baselines3\.common\.policies\.ActorCriticPolicy.*OffPAC\.load reads files saved by OffPAC"),
        (CVPG, "sac", r"policy is stable_baselines3\.sac\.policies\.SACPolicy.*CVPG\.load reads"),
        (PPOKL, "cvpg", r"holds 'q_critic', which PPOKL does not have"),
        (OffPAC, "truncated", r"truncated\.zip is not a model file \(not a zip archive, or a truncated one\)"),
    ],
)
def test_load_refuses_files_it_cannot_read(saved_models, algo_class, name, message):
    with pytest.raises(ValueError, match=message):
        algo_class.load(saved_models[name], env=gym.make("Pendulum-v1"))


def test_offpac_warm_starts_from_a_sac_checkpoint(saved_models):
    """A SAC file loads into OffPAC (same policy, same predictions) and trains on."""
    sac = SAC.load(saved_models["sac"])
    model = OffPAC.load(saved_models["sac"], env=gym.make("Pendulum-v1"))
    assert type(model.policy) is OffPACPolicy and model.actor_gradient == "reparameterization"
    for name, tensor in sac.policy.state_dict().items():
        th.testing.assert_close(model.policy.state_dict()[name], tensor, rtol=0, atol=0)
    observations = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(observations, deterministic=True)[0], sac.predict(observations, deterministic=True)[0])
    critic = [param.clone() for param in model.critic.parameters()]
    model.learn(64, reset_num_timesteps=False)
    assert model.num_timesteps == sac.num_timesteps + 64
    assert not all(th.equal(a, b) for a, b in zip(critic, model.critic.parameters())), "the critics train on"


def _as_sb3_0_x(path, folder):
    """The file rewritten as SB3 < 1.0 saved SAC: train_freq=-1 with n_episodes_rollout=1 (one episode per rollout)."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    data.update(train_freq=-1, gradient_steps=-1, n_episodes_rollout=1)
    entries["data"] = json.dumps(data).encode()
    old = folder / "sac-0.x.zip"
    with zipfile.ZipFile(old, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return old


@pytest.mark.parametrize("load", [lambda path, env: OffPAC.load(path, env=env), lambda path, env: load_model(SAC, path, env=env)])
def test_pre_1_0_train_freq_is_read(saved_models, tmp_path, load):
    """SB3 0.x's train_freq=-1, n_episodes_rollout=1 becomes (1, "episode"), so learn() collects and trains."""
    model = load(_as_sb3_0_x(saved_models["sac"], tmp_path), gym.make("Pendulum-v1"))
    assert model.train_freq == TrainFreq(1, TrainFrequencyUnit.EPISODE)
    start, updates = model.num_timesteps, model._n_updates
    model.learn(1, reset_num_timesteps=False)
    assert model.num_timesteps == start + 200  # one whole Pendulum episode
    assert model._n_updates == updates + 200  # gradient_steps=-1: as many as env steps


def test_legacy_train_freq():
    assert legacy_train_freq({"train_freq": -1, "n_episodes_rollout": 2}) == (2, "episode")
    assert legacy_train_freq({"train_freq": 4, "n_episodes_rollout": -1}) == (4, "step")
    assert legacy_train_freq({"train_freq": 4}) is None  # SB3 >= 1.0: read as saved
