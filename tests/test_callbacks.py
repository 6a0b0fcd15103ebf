"""CriticPredictabilityCallback: the cross-fitted share against known answers, and a model that trains as without it."""

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_pgext import CVPG, CriticPredictabilityCallback
from sb3_pgext.cvpg.callbacks import crossfit_r2
from sb3_pgext.suite.results import read_progress
from tests.test_cvpg import GaussianBandit


def test_crossfit_r2_against_the_known_share():
    """targets = 2x + noise: R² = 4 Var(x) / (4 Var(x) + σ²) = 0.8 here; pure noise explains nothing."""
    rng = np.random.default_rng(0)
    n = 4000
    x, noise = rng.normal(size=n), rng.normal(scale=1.0, size=n)
    folds = np.arange(n) % 2
    r2 = crossfit_r2(2 * x + noise, x[:, None], folds)
    # the sample R² of n points has a standard error of about 2 R² (1 − R²) / √n (≈ 0.005 here)
    assert abs(r2 - 0.8) < 5 * 2 * 0.8 * 0.2 / math.sqrt(n), r2
    unrelated = crossfit_r2(noise, rng.normal(size=(n, 3)), folds)
    assert -0.01 < unrelated < 0.005, unrelated  # cross-fitted: noise features cost a little, never help


@pytest.mark.parametrize("model_class", [PPO, CVPG])
def test_predictability_on_a_bandit_and_training_unchanged(model_class, tmp_path):
    """
    On the Gaussian bandit (one state, reward −(a − 2)²) Â is a function of the action alone: a critic fitted on
    the other half of the rollout predicts most of it from its action part, its state part nothing. The model's
    parameters are those of a run without the callback, bit for bit.
    """
    kwargs = dict(
        n_steps=256,
        batch_size=256,
        n_epochs=1,
        seed=0,
        policy_kwargs=dict(net_arch=dict(pi=[], vf=[16]), log_std_init=math.log(0.5)),
    )
    if model_class is CVPG:
        kwargs.update(qf_gradient_steps=2, qf_net_arch=[8])
    plain = model_class("MlpPolicy", make_vec_env(GaussianBandit, n_envs=2, seed=0), **kwargs).learn(2048)
    model = model_class("MlpPolicy", make_vec_env(GaussianBandit, n_envs=2, seed=0), **kwargs)
    model.set_logger(configure(str(tmp_path), ["csv", "stdout"]))  # the console cuts keys at 36 characters
    callback = CriticPredictabilityCallback(passes=400)
    model.learn(2048, callback=callback)
    for p, q in zip(plain.policy.parameters(), model.policy.parameters(), strict=True):
        assert th.equal(p, q)
    progress = read_progress(tmp_path / "progress.csv")
    same_action = progress["predictability/same_rollout/action"]
    assert np.isfinite(same_action).sum() >= 3  # one row per rollout, dumped with the next iteration's logs
    assert np.nanmedian(same_action) > 0.7, same_action
    assert np.nanmedian(progress["predictability/same_rollout/state"]) < 0.05
    assert np.nanmedian(progress["predictability/earlier/both"]) > 0.3  # earlier rollouts' critic: the policy moves
    # the history keeps every rollout's shares, the values the logger wrote among them
    assert [row["timesteps"] for row in callback.history] == [512 * (index + 1) for index in range(2048 // 512)]
    logged = same_action[np.isfinite(same_action)]
    assert np.array_equal(logged, [row["same_rollout/action"] for row in callback.history][: logged.size])
