"""
Callbacks that measure an on-policy model while it trains, usable from the RL Zoo's hyperparameter files
(``callback: sb3_pgext.VarianceDecompositionCallback``); they log what they measure and leave training as it
would be without them.
"""

import math
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor

from sb3_pgext.common.buffers import flat_actions, flat_array, flat_observations
from sb3_pgext.common.estimators import clipped_gaussian_mean, rollout_folds
from sb3_pgext.common.utils import index_observations, isolated_random_streams, value_net_layers
from sb3_pgext.common.variance_decomposition import TERMS, variance_decomposition
from sb3_pgext.cvpg.critic import QCritic, joint_action_probs

#: the checkpoints of :class:`VarianceDecompositionCallback`, in the order of ``decomposition/stage``
STAGES = ("start", "middle", "end")
#: what is logged per checkpoint: ``decomposition/<estimator>/<term>`` (and ``<term>_se``) for these estimators
#: (names short enough for SB3's console output, which cuts keys at 36 characters)
ESTIMATORS = {
    "value_baseline": "the estimator with the value baseline",
    "control_variate": "CVPG's control variate (its settings), on the same draws",
    "centred_cv": "CVPG's control variate with centered_cv=True (Q-Prop's centred Ā), on the same draws",
    "true_value": "φ = the true V (a perfect value function)",
    "true_q": "φ = the true Q (the ceiling of any action-dependent control variate: action term 0)",
}


def decompose_estimators(model: OnPolicyAlgorithm, seed: int, **sizes: int) -> dict[str, dict[str, Any]]:
    """
    The decompositions (:func:`~sb3_pgext.common.variance_decomposition.variance_decomposition`) of the model as
    it is now, by estimator, those of :data:`ESTIMATORS` that apply: for CVPG three on the same draws (without its
    control variate, with it, with its centred form), for other models their value baseline; each with the true V
    and true Q references of the value baseline's draws.

    :param model: an on-policy actor-critic
    :param seed: the draws' seed, the same for every estimator
    :param sizes: ``n_states``, ``n_actions``, ``n_rollouts``
    """
    is_cvpg = getattr(model, "q_critic", None) is not None
    value = variance_decomposition(model, control_variate=not is_cvpg, seed=seed, **sizes)  # type: ignore[arg-type]
    result = {"value_baseline": value, "true_value": value["true_value"], "true_q": value["ceiling"]}
    if is_cvpg:
        result["control_variate"] = variance_decomposition(model, control_variate=True, seed=seed, **sizes)  # type: ignore[arg-type]
        centered_cv = model.centered_cv  # type: ignore[attr-defined]
        model.centered_cv = True  # type: ignore[attr-defined]
        try:
            result["centred_cv"] = variance_decomposition(model, control_variate=True, seed=seed, **sizes)  # type: ignore[arg-type]
        finally:
            model.centered_cv = centered_cv  # type: ignore[attr-defined]
    return result


class VarianceDecompositionCallback(BaseCallback):
    """
    Tucker et al.'s decomposition of the policy gradient's variance (:func:`sb3_pgext.variance_decomposition`;
    Tucker et al. 2018, https://arxiv.org/abs/1802.10031) at three checkpoints of training: after the first
    update (``start``), when a rollout starts at half the budget or later (``middle``), and at the end. Each
    checkpoint is logged as ``decomposition/<estimator>/<term>`` and ``.../<term>_se`` (``term``: state,
    action, trajectory, total; ``estimator``: see :data:`ESTIMATORS`), with ``decomposition/stage`` (0, 1, 2),
    ``decomposition/timesteps`` and, for CVPG, ``decomposition/eta`` (η of the control variate), and dumped at once: the terms land in
    every output the logger has (``progress.csv`` with the zoo's ``--log-csv``, TensorBoard).

    For CVPG, every checkpoint is decomposed three times on the same draws (same ``seed``): without the control
    variate (the value baseline), with it, and with its centred form. Other models (PPO, PPOKL, A2C) are
    decomposed with their value baseline. The decomposition works on its own copies of the env and policy and
    leaves training as it would be without the callback (tested).

    :param n_states: states per decomposition (I)
    :param n_actions: actions drawn per state (J)
    :param n_rollouts: continuations re-run per action (K)
    :param seed: seed of the decomposition's draws; None: the model's seed (0 if it has none)
    :param verbose: 1 prints each checkpoint's total
    """

    model: OnPolicyAlgorithm

    def __init__(self, n_states: int = 48, n_actions: int = 8, n_rollouts: int = 8, seed: int | None = None, verbose: int = 0):
        super().__init__(verbose)
        self.sizes = {"n_states": n_states, "n_actions": n_actions, "n_rollouts": n_rollouts}
        self.seed = seed
        self.pending: list[int] = []
        self.measured_end = False

    def _on_training_start(self) -> None:
        if not isinstance(self.model, OnPolicyAlgorithm):
            raise TypeError(
                f"VarianceDecompositionCallback measures on-policy actor-critics (PPO, PPOKL, CVPG, A2C), got {type(self.model).__name__}"
            )
        first_update = self.num_timesteps + self.model.n_steps * self.model.n_envs
        self.pending = [first_update, max(first_update, self.locals["total_timesteps"] // 2)]
        self.measured_end = False

    def _on_rollout_start(self) -> None:
        if self.pending and self.num_timesteps >= self.pending[0]:
            self.pending.pop(0)
            self._measure(len(STAGES) - 2 - len(self.pending))

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if not self.measured_end:  # the zoo ends its first callback a second time
            self.measured_end = True
            self._measure(len(STAGES) - 1)

    def _measure(self, stage: int) -> None:
        seed = self.seed if self.seed is not None else (self.model.seed or 0)
        decompositions = decompose_estimators(self.model, seed, **self.sizes)
        self.logger.record("decomposition/stage", stage)
        self.logger.record("decomposition/timesteps", self.num_timesteps)
        for estimator, terms in decompositions.items():
            for term in TERMS:
                self.logger.record(f"decomposition/{estimator}/{term}", terms[term])
                self.logger.record(f"decomposition/{estimator}/{term}_se", terms[f"{term}_se"])
        if "control_variate" in decompositions:
            self.logger.record("decomposition/eta", decompositions["control_variate"]["eta"])
        self.logger.dump(self.num_timesteps)
        if self.verbose:
            print(
                f"decomposition ({STAGES[stage]}, {self.num_timesteps} steps): total {decompositions['value_baseline']['total']:.4g}"
            )


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

    Two critics (:class:`~sb3_pgext.cvpg.critic.QCritic`, least squares onto Â with the value network's
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
