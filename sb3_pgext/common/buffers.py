"""Rollout buffers that remember which samples they just returned.

SB3's :meth:`RolloutBuffer.get` shuffles the flattened rollout and yields minibatches without their
indices. Per-sample data that the algorithm computes itself (the rollout policy's distribution
parameters for an analytic KL, a control-variate weight, ...) is indexed with
:attr:`BatchIndicesMixin.batch_inds`. Sampling, shuffling and the random stream are SB3's own.
"""

from collections.abc import Generator, Iterator
from functools import cache
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, TensorDict
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecNormalize

from sb3_pgext.common.utils import index_observations


class BatchIndicesMixin:
    """Records the indices (into the flattened rollout) of the last minibatch returned."""

    batch_inds: np.ndarray | None = None

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None):  # type: ignore[no-untyped-def]
        self.batch_inds = batch_inds
        return super()._get_samples(batch_inds, env)  # type: ignore[misc]


class IndexedRolloutBuffer(BatchIndicesMixin, RolloutBuffer):
    """:class:`RolloutBuffer` that records the indices of its last minibatch."""


class IndexedDictRolloutBuffer(BatchIndicesMixin, DictRolloutBuffer):
    """:class:`DictRolloutBuffer` that records the indices of its last minibatch."""


class TimeLeftRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    #: T − t: the steps left in the episode at the observation (its TimeLimit's), for a horizon-aware value
    time_left: th.Tensor


class TimeLeftDictRolloutBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    time_left: th.Tensor


class TimeLeftMixin(BatchIndicesMixin):
    """
    Also stores ``time_left``, the steps left in the episode at each observation (written by the algorithm
    during collection, ``time_left[pos, env]``), and returns it with each sample, as a named field.
    """

    time_left: np.ndarray
    buffer_size: int
    n_envs: int
    generator_ready: bool

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.time_left = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    def get(self, batch_size: int | None = None) -> Generator:
        if not self.generator_ready:  # flattened as RolloutBuffer.get flattens its own arrays
            self.time_left = self.swap_and_flatten(self.time_left)  # type: ignore[attr-defined]
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None):  # type: ignore[no-untyped-def]
        samples = super()._get_samples(batch_inds, env)
        samples_class = TimeLeftDictRolloutBufferSamples if isinstance(samples.observations, dict) else TimeLeftRolloutBufferSamples
        return samples_class(*samples, time_left=self.to_torch(self.time_left[batch_inds].flatten()))  # type: ignore[attr-defined]


class TimeLeftRolloutBuffer(TimeLeftMixin, RolloutBuffer):
    """:class:`RolloutBuffer` whose samples are :class:`TimeLeftRolloutBufferSamples`."""


class TimeLeftDictRolloutBuffer(TimeLeftMixin, DictRolloutBuffer):
    """:class:`DictRolloutBuffer` whose samples are :class:`TimeLeftDictRolloutBufferSamples`."""


@cache
def with_batch_indices(buffer_class: type[RolloutBuffer]) -> type[RolloutBuffer]:
    """
    Return a subclass of ``buffer_class`` that records its minibatch indices.

    :param buffer_class: a rollout buffer class (SB3's or the user's)
    :return: ``buffer_class`` itself when it already records them, else a subclass that does
    """
    if issubclass(buffer_class, BatchIndicesMixin):
        return buffer_class
    if buffer_class is RolloutBuffer:
        return IndexedRolloutBuffer
    if buffer_class is DictRolloutBuffer:
        return IndexedDictRolloutBuffer
    return type(buffer_class.__name__, (BatchIndicesMixin, buffer_class), {})


def flat_observations(buffer: RolloutBuffer) -> np.ndarray | dict[str, np.ndarray]:
    """
    The buffer's observations in the flattened order that :meth:`RolloutBuffer.get` indexes.

    :param buffer: a full rollout buffer, before or after its first ``get()``
    :return: an array (or dict of arrays) of shape ``(buffer_size * n_envs, *obs_shape)``
    """
    if buffer.generator_ready:
        return buffer.observations
    if isinstance(buffer.observations, dict):
        return {key: buffer.swap_and_flatten(obs) for key, obs in buffer.observations.items()}
    return buffer.swap_and_flatten(buffer.observations)


def flat_actions(buffer: RolloutBuffer) -> np.ndarray:
    """
    The buffer's actions in the flattened order that :meth:`RolloutBuffer.get` indexes.

    :param buffer: a full rollout buffer, before or after its first ``get()``
    :return: an array of shape ``(buffer_size * n_envs, action_dim)``
    """
    return buffer.actions if buffer.generator_ready else buffer.swap_and_flatten(buffer.actions)


def policy_actions(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    """
    A rollout buffer's actions as the policy's distributions take them: the buffer stores them as float, and
    Discrete ones are indices (the cast of SB3's ``PPO.train``).

    :param actions: the buffer's actions (a tensor)
    :param action_space: the env's action space
    """
    if isinstance(action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions


def flat_array(buffer: RolloutBuffer, name: str) -> np.ndarray:
    """The buffer's per-sample array ``name`` (e.g. "advantages") in the flattened order, shape (buffer_size * n_envs,)."""
    values = getattr(buffer, name)
    return (values if buffer.generator_ready else buffer.swap_and_flatten(values)).reshape(-1)


def set_flat(buffer: RolloutBuffer, name: str, values: np.ndarray) -> None:
    """
    Write per-sample ``values``, given in the flattened order of :func:`flat_observations`, into the
    buffer's array ``name`` (e.g. "advantages"), before or after the buffer's first ``get()``.
    """
    if buffer.generator_ready:
        getattr(buffer, name)[...] = values.reshape(getattr(buffer, name).shape)
    else:  # flat index = env * buffer_size + step
        setattr(buffer, name, values.reshape(buffer.n_envs, buffer.buffer_size).T.astype(np.float32).copy())


#: states per forward pass when a whole rollout goes through the policy at once
ROLLOUT_CHUNK = 2048


def rollout_chunks(buffer: RolloutBuffer, policy: BasePolicy, device: th.device) -> Iterator[tuple[PyTorchObs, slice]]:
    """
    Yield (observations, slice) over the whole rollout in the flattened order ``get()`` indexes, in chunks of
    :data:`ROLLOUT_CHUNK`, with the policy in evaluation mode (as when the rollout's log-probabilities were
    computed); the policy's mode is restored afterwards.

    :param buffer: a full rollout buffer
    :param policy: the policy the observations are for
    :param device: the device of the tensors
    """
    observations = flat_observations(buffer)
    n_samples = buffer.buffer_size * buffer.n_envs
    training = policy.training
    policy.set_training_mode(False)
    try:
        for start in range(0, n_samples, ROLLOUT_CHUNK):
            chunk = slice(start, start + ROLLOUT_CHUNK)
            yield obs_as_tensor(index_observations(observations, chunk), device), chunk  # type: ignore[arg-type]
    finally:
        policy.set_training_mode(training)
