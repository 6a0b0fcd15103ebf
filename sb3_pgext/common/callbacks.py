"""
:class:`VarianceDecompositionCallback`: Tucker et al.'s decomposition of the policy gradient's variance at the
start, middle and end of training, usable from the RL Zoo's hyperparameter files
(``callback: sb3_pgext.VarianceDecompositionCallback``); it logs what it measures and leaves training as it
would be without it.
"""

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sb3_pgext.common.variance_decomposition import TERMS, variance_decomposition

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
