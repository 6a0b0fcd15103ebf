"""
CVPG's callbacks. :class:`CVPGCollectionCallback`: what CVPG records during collection, beside the rollout buffer.
:class:`CriticPredictabilityCallback`: how much of each rollout's advantages a Q critic of CVPG's design can
predict, measured beside any PPO-family run (usable from the RL Zoo's hyperparameter files as
``callback: sb3_pgext.CriticPredictabilityCallback``).
"""

import math

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor

from sb3_pgext.common.buffers import flat_actions, flat_array, flat_observations
from sb3_pgext.common.estimators import clipped_gaussian_mean, rollout_folds
from sb3_pgext.common.utils import index_observations, isolated_random_streams, value_net_layers
from sb3_pgext.cvpg.q_critic import QCritic, joint_action_probs


def crossfit_r2(targets: np.ndarray, features: np.ndarray, folds: np.ndarray) -> float:
    """
    The cross-fitted share of ``targets``' variance that a linear function of ``features`` explains:
    1 − Var(residual) / Var(targets), each fold's least-squares intercept and slopes taken from the other folds.

    :param targets: shape (n,)
    :param features: shape (n, k)
    :param folds: the fold of each sample, shape (n,)
    """
    residuals = np.empty_like(targets)
    for fold in np.unique(folds):
        inside, others = folds == fold, folds != fold
        coefficients, *_ = np.linalg.lstsq(np.c_[np.ones(others.sum()), features[others]], targets[others], rcond=None)
        residuals[inside] = targets[inside] - np.c_[np.ones(inside.sum()), features[inside]] @ coefficients
    return float(1 - residuals.var() / targets.var())


class CriticPredictabilityCallback(BaseCallback):
    """
    How much of each rollout's advantages Â a Q critic of CVPG's design can predict: the cross-fitted share of
    Var(Â) explained, along training. A control variate (or any baseline) can only remove the part of Â that a
    critic can learn from the data it may use; a share near 0 says no critic of this design, however weighted,
    cuts Â's variance.

    Two critics (:class:`~sb3_pgext.cvpg.q_critic.QCritic`, least squares onto Â with the value network's
    layers) are fitted beside training, one per fold of each rollout (half the envs, or the two halves of a
    single env's rollout), each only on the other fold's samples, with their own random streams. Per rollout,
    with the state part c(s) = Q_w(s, m(s)) (m the mean of the executed action; Σ_a π(a|s) Q_w(s, a) for finite
    action sets) and the action part d(s, a) = Q_w(s, a) − c(s), it logs
    ``predictability/<source>/<part>`` = 1 − Var(Â − b − β·x) / Var(Â) with the least-squares b and β of each
    fold taken from the other fold (x: c, d or both, ``part`` "state", "action", "both"), for two sources:
    ``earlier``, the critics before they see this rollout (what CVPG's critic has when it builds Ā), and
    ``same_rollout``, after they are fitted on its other fold (Tucker et al.'s cross-fitting on the freshest
    data). Var(Â) is centred: Â's mean is excluded (PPO normalises it away per minibatch).

    Works with PPO, PPOKL and CVPG; the model trains exactly as without it.

    The shares of every rollout are also kept in ``history`` (one dict per rollout: ``timesteps`` and
    ``<source>/<part>``), as ``EvalCallback`` keeps its evaluations.

    :param passes: passes of each critic over the other fold per rollout (CVPG's default fit is 100)
    :param seed: seed of the critics' initialisation and fits; None: the model's seed (0 if it has none)
    :param verbose: unused (the shares go to the logger)
    """

    model: OnPolicyAlgorithm
    SOURCES = ("earlier", "same_rollout")
    PARTS = ("state", "action", "both")

    def __init__(self, passes: int = 100, seed: int | None = None, verbose: int = 0):
        super().__init__(verbose)
        self.passes = passes
        self.seed = seed
        self.critics: list[QCritic] = []
        self.history: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        if not isinstance(self.model, OnPolicyAlgorithm):
            raise TypeError(f"CriticPredictabilityCallback measures on-policy actor-critics, got {type(self.model).__name__}")
        if self.seed is None:
            self.seed = self.model.seed or 0
        policy = self.model.policy
        layers = value_net_layers(policy.net_arch)
        with isolated_random_streams(self.seed):
            self.critics = [
                QCritic(
                    self.model.observation_space,
                    self.model.action_space,
                    policy.make_features_extractor,
                    layers,
                    policy.normalize_images,
                    device=self.model.device,
                ).requires_grad_(False)
                for _ in range(2)
            ]

    def _on_step(self) -> bool:
        return True

    def _parts(self, critic: QCritic, obs: th.Tensor, actions: th.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The state part c(s) and the action part Q_w(s, a) − c(s)."""
        with th.no_grad():
            distribution = self.model.policy.get_distribution(obs)
            if critic.choices is None:
                normal = distribution.distribution
                state = critic(obs, clipped_gaussian_mean(normal.mean, normal.stddev, critic.action_low, critic.action_high))
            else:
                state = (joint_action_probs(distribution, critic.choices) * critic(obs)).sum(dim=1)
            taken = critic.q_taken(obs, actions)
        return state.cpu().double().numpy(), (taken - state).cpu().double().numpy()

    def _on_rollout_end(self) -> None:  # after GAE: the buffer holds this rollout's Â
        buffer = self.model.rollout_buffer
        advantages = flat_array(buffer, "advantages").astype(np.float64)
        obs = obs_as_tensor(flat_observations(buffer), self.model.device)  # type: ignore[arg-type]
        actions = th.as_tensor(flat_actions(buffer), device=self.model.device)
        targets = th.as_tensor(advantages, dtype=th.float32, device=self.model.device)
        folds = rollout_folds(buffer.buffer_size, buffer.n_envs).numpy()
        parts = {source: (np.empty_like(advantages), np.empty_like(advantages)) for source in self.SOURCES}
        with isolated_random_streams(self.seed + self.num_timesteps):  # type: ignore[operator]
            for fold, critic in enumerate(self.critics):
                inside, others = folds == fold, folds != fold
                for source in self.SOURCES:
                    if source == "same_rollout":
                        critic.gradient_steps = math.ceil(self.passes * int(others.sum()) / critic.batch_size)
                        critic.requires_grad_(True)
                        critic.fit_rollout(index_observations(obs, th.as_tensor(others)), actions[others], targets[others])
                        critic.requires_grad_(False)
                    state, action = self._parts(critic, index_observations(obs, th.as_tensor(inside)), actions[inside])
                    parts[source][0][inside], parts[source][1][inside] = state, action
        shares: dict[str, float] = {"timesteps": self.num_timesteps}
        for source, (state, action) in parts.items():
            features = {"state": state[:, None], "action": action[:, None], "both": np.c_[state, action]}
            for part in self.PARTS:
                shares[f"{source}/{part}"] = crossfit_r2(advantages, features[part], folds)
                self.logger.record(f"predictability/{source}/{part}", shares[f"{source}/{part}"])
        self.history.append(shares)


class CVPGCollectionCallback(BaseCallback):
    """
    Feeds each env step of the rollout into the TD critic's replay buffer (the env's original observations
    and rewards, as SB3's off-policy algorithms store them) and keeps the rollout's last values.
    """

    model: "CVPG"  # noqa: F821 (not imported here: cvpg.py imports this module)

    def _on_step(self) -> bool:
        model = self.model
        replay_buffer = None if model.q_critic is None else model.q_critic.replay_buffer
        if replay_buffer is None:
            return True
        new_obs, rewards, dones, infos = (self.locals[key] for key in ("new_obs", "rewards", "dones", "infos"))
        vec_normalize = model.get_vec_normalize_env()
        if vec_normalize is not None:  # the originals; the buffer normalises them with the statistics of when it is sampled
            obs, new_obs, rewards = model._last_original_obs, vec_normalize.get_original_obs(), vec_normalize.get_original_reward()
        else:
            obs = model._last_obs
        next_obs = {k: v.copy() for k, v in new_obs.items()} if isinstance(new_obs, dict) else new_obs.copy()
        for idx, done in enumerate(dones):
            terminal = infos[idx].get("terminal_observation") if done else None
            if terminal is None:
                continue
            if vec_normalize is not None:  # VecNormalize normalised it in the info
                terminal = vec_normalize.unnormalize_obs(terminal)
            if isinstance(next_obs, dict):
                for key in next_obs:
                    next_obs[key][idx] = terminal[key]
            else:
                next_obs[idx] = terminal
        # the raw rewards (SB3 adds the truncation bootstrap only after this callback) and the
        # policy's own (unclipped) actions, the ones log π and the critic's Taylor expansion refer to
        replay_buffer.add(obs, next_obs, self.locals["actions"], rewards, dones, infos)  # type: ignore[arg-type]
        if vec_normalize is not None:
            model._last_original_obs = new_obs
        return True

    def _on_rollout_end(self) -> None:
        self.model._rollout_bootstrap = (self.locals["values"], self.locals["dones"])
