"""
CVPG's rollout buffers: SB3's ``RolloutBuffer`` / ``DictRolloutBuffer`` whose samples also carry the
control variate's per-sample data, as named fields (as sb3-contrib's ``MaskableRolloutBuffer`` carries
``action_masks``).

The control variate is computed once per rollout, after collection, and stored by :meth:`CVPGBufferMixin.set_control_variate`;
collection, GAE, shuffling and the random stream are SB3's own.
"""

from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sb3_pgext.common.buffers import TimeLeftMixin


class CVPGRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    #: Â: the rollout's advantages (the surrogate weighs Â − ηĀ)
    advantages: th.Tensor
    returns: th.Tensor
    #: T − t, the steps left in the episode (used by a horizon-aware value function)
    time_left: th.Tensor
    #: Ā: the control variate, the critic's prediction of Â
    control_variate: th.Tensor
    #: η of each sample (cross-fitted: from the other fold of the rollout)
    eta: th.Tensor
    #: the analytic term's constants: ∇_a Q_w at the rollout policy's executed mean ("taylor", (batch, action_dim)), Q_w(s, ·)
    #: ("expected", (batch, n_actions)), or nothing ("reparameterization" evaluates Q_w itself, (batch, 0))
    analytic_term_constants: th.Tensor


class CVPGDictRolloutBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    time_left: th.Tensor
    control_variate: th.Tensor
    eta: th.Tensor
    analytic_term_constants: th.Tensor


class CVPGBufferMixin(TimeLeftMixin):
    """The control variate's per-sample arrays, stored in the flattened order that ``get()`` indexes."""

    control_variate: np.ndarray
    eta: np.ndarray
    analytic_term_constants: np.ndarray
    buffer_size: int
    n_envs: int

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        n_samples = self.buffer_size * self.n_envs
        self.control_variate = np.zeros(n_samples, dtype=np.float32)
        self.eta = np.zeros(n_samples, dtype=np.float32)
        self.analytic_term_constants = np.zeros((n_samples, 0), dtype=np.float32)

    def set_control_variate(self, control_variate: np.ndarray, eta: np.ndarray, analytic_term_constants: np.ndarray | None = None) -> None:
        """
        Store the control variate's per-sample data; the advantages Â are left as they are.

        :param control_variate: Ā per sample, in the flattened order, shape (buffer_size · n_envs,)
        :param eta: η per sample, same shape
        :param analytic_term_constants: the analytic term's constants per sample, shape (buffer_size · n_envs, k), or None
        """
        self.control_variate = control_variate.astype(np.float32)
        self.eta = eta.astype(np.float32)
        if analytic_term_constants is not None:
            self.analytic_term_constants = analytic_term_constants.astype(np.float32)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None):  # type: ignore[no-untyped-def]
        samples = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        samples_class = CVPGDictRolloutBufferSamples if isinstance(samples.observations, dict) else CVPGRolloutBufferSamples
        return samples_class(
            *samples,  # SB3's fields and time_left
            control_variate=self.to_torch(self.control_variate[batch_inds]),  # type: ignore[attr-defined]
            eta=self.to_torch(self.eta[batch_inds]),  # type: ignore[attr-defined]
            analytic_term_constants=self.to_torch(self.analytic_term_constants[batch_inds]),  # type: ignore[attr-defined]
        )


class CVPGRolloutBuffer(CVPGBufferMixin, RolloutBuffer):
    """SB3's :class:`RolloutBuffer` whose samples are :class:`CVPGRolloutBufferSamples`."""


class CVPGDictRolloutBuffer(CVPGBufferMixin, DictRolloutBuffer):
    """SB3's :class:`DictRolloutBuffer` whose samples are :class:`CVPGDictRolloutBufferSamples`."""
