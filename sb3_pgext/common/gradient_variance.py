"""
Measured variance of a policy-gradient estimator. Baselines and control variates exist to cut it
(Greensmith et al. 2004, "Variance Reduction Techniques for Gradient Estimates in Reinforcement
Learning", https://jmlr.org/papers/v5/greensmith04a.html), and a claimed reduction has to be measured
(Tucker et al. 2018, "The Mirage of Action-Dependent Baselines in Reinforcement Learning",
https://arxiv.org/abs/1802.10031).

One batch is split into K minibatches; the estimator's gradient ĝ_k is computed on each, and

    variance     = tr Cov_k(ĝ_k) = Σ_j 1/(K − 1) Σ_k (ĝ_kj − ḡ_j)²   (per-minibatch estimator variance)
    mean_sq_norm = ‖ḡ‖²,  ḡ = (1/K) Σ_k ĝ_k

The estimator of each family of algorithms is an adapter beside this function: :class:`RolloutEstimator` (on-policy
actor-critics) and :class:`ReplayEstimator` (OffPAC).
"""

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sb3_pgext.common.buffers import policy_actions
from sb3_pgext.common.estimators import corrected_advantages
from sb3_pgext.common.utils import isolated_random_streams


class RolloutEstimator:
    """
    The policy-gradient estimator of an on-policy actor-critic (SB3's PPO and A2C, PPOKL, CVPG) on the rollout it last
    collected: ∇_θ mean[log π_θ(a|s) Â] with the raw (not normalized) advantages; ``control_variate=False`` drops the
    value baseline (the returns Â + V(s) instead of Â). CVPG's samples carry its control variate: its estimator is
    ∇_θ mean[log π_θ(a|s) (Â − ηĀ)] + ∇_θ mean[η S(θ)] (its analytic term S), and ``control_variate=False`` keeps Â.

    :param model: the on-policy model
    """

    def __init__(self, model: OnPolicyAlgorithm):
        self.model = model

    def parameters(self) -> list[th.nn.Parameter]:
        return [param for param in self.model.policy.parameters() if param.requires_grad]

    def minibatches(self, n_minibatches: int) -> Iterator[Any]:
        """
        ``n_minibatches`` disjoint minibatches of the rollout the model last trained on, drawn from a shallow copy of
        the buffer, so that the buffer's layout and recorded indices stay as they were.
        """
        buffer = self.model.rollout_buffer
        if not buffer.full:
            raise ValueError(
                "gradient_variance measures the policy gradient on the rollout the model last collected, and this "
                "model has none (it is new or was just loaded): train it first, or pass log_grad_var=True to the "
                "constructor to measure it at every update, the first one included"
            )
        n_samples = buffer.buffer_size * buffer.n_envs
        minibatch_size = n_samples // n_minibatches
        if minibatch_size < 1:
            raise ValueError(f"n_minibatches={n_minibatches} exceeds the rollout's {n_samples} samples")
        for index, rollout_data in enumerate(copy.copy(buffer).get(minibatch_size)):
            if index == n_minibatches:
                break  # the remainder, when the rollout does not split evenly
            yield rollout_data

    def surrogate(self, rollout_data: Any, control_variate: bool) -> th.Tensor:
        """A loss whose gradient is minus the estimator on the minibatch."""
        policy = self.model.policy
        actions = policy_actions(rollout_data.actions, self.model.action_space)
        _, log_prob, _ = policy.evaluate_actions(rollout_data.observations, actions)
        if not hasattr(rollout_data, "eta"):  # no control variate: the value baseline, or the returns without it
            return -(log_prob * (rollout_data.advantages if control_variate else rollout_data.returns)).mean()
        if not control_variate:
            return -(log_prob * rollout_data.advantages).mean()
        analytic = self.model.analytic_term(rollout_data.observations, rollout_data.analytic_term_constants, policy.action_dist)  # type: ignore[attr-defined]
        corrected = corrected_advantages(rollout_data.advantages, rollout_data.eta, rollout_data.control_variate)
        return -(log_prob * corrected).mean() - (rollout_data.eta * analytic).mean()


class ReplayEstimator:
    """
    The actor-gradient estimator of an off-policy actor-critic with an ``actor_loss(observations, baseline)`` (OffPAC)
    on fresh replay samples of its ``batch_size``; ``control_variate=False`` drops its baseline (the leave-one-out
    baseline of OffPAC's "likelihood" estimator).

    :param model: the off-policy model
    """

    def __init__(self, model: OffPolicyAlgorithm):
        self.model = model

    def parameters(self) -> list[th.nn.Parameter]:
        return list(self.model.actor.parameters())  # type: ignore[attr-defined]

    def minibatches(self, n_minibatches: int) -> Iterator[Any]:
        """``n_minibatches`` fresh replay samples of ``batch_size`` transitions."""
        model = self.model
        if model.replay_buffer is None or model.replay_buffer.size() == 0:
            raise ValueError(f"the replay buffer is empty: gradient_variance needs {type(model).__name__} to have collected data (call learn)")
        for _ in range(n_minibatches):
            yield model.replay_buffer.sample(model.batch_size, env=model._vec_normalize_env)

    def surrogate(self, replay_data: Any, control_variate: bool) -> th.Tensor:
        return self.model.actor_loss(replay_data.observations, baseline=control_variate)  # type: ignore[attr-defined]


def estimator_of(model: BaseAlgorithm) -> RolloutEstimator | ReplayEstimator:
    """The estimator :func:`gradient_variance` measures for ``model``: by its family (on- or off-policy)."""
    if isinstance(model, OnPolicyAlgorithm):
        return RolloutEstimator(model)
    if isinstance(model, OffPolicyAlgorithm) and hasattr(model, "actor_loss"):
        return ReplayEstimator(model)
    raise TypeError(
        f"gradient_variance measures on-policy actor-critics (PPO, A2C, PPOKL, CVPG) and OffPAC, not {type(model).__name__}"
    )


def flatten_gradients(gradients: tuple[th.Tensor | None, ...], parameters: list[th.nn.Parameter]) -> th.Tensor:
    """One vector of ``th.autograd.grad(..., allow_unused=True)``'s output, zeros for unused parameters."""
    return th.cat([(g if g is not None else th.zeros_like(p)).flatten() for g, p in zip(gradients, parameters)])


def minibatch_gradient_statistics(gradients: th.Tensor) -> dict[str, float]:
    """
    ``variance`` (trace of the covariance, unbiased over the K rows) and ``mean_sq_norm`` (‖mean‖²)
    of K gradient estimates, given as the rows of a (K, n_parameters) tensor.
    """
    if gradients.shape[0] < 2:
        raise ValueError(f"n_minibatches must be >= 2 to measure a variance, got {gradients.shape[0]}")
    mean = gradients.mean(dim=0)
    return dict(
        variance=float(gradients.var(dim=0, unbiased=True).sum()),
        mean_sq_norm=float(mean.dot(mean)),
    )


class GradientVariance(dict):
    """
    What :func:`gradient_variance` measures: a dict (``result["variance"]`` ...) that prints as one line of the
    numbers a user compares, without the mean gradient's values.
    """

    def __repr__(self) -> str:
        mean = self.get("mean")
        shape = f", mean=<{mean.numel()} values>" if isinstance(mean, th.Tensor) else ""
        return (
            f"GradientVariance(variance={self['variance']:.6g}, mean_sq_norm={self['mean_sq_norm']:.6g}, "
            f"n_minibatches={self['n_minibatches']}, minibatch_size={self['minibatch_size']}{shape})"
        )


def gradient_variance(model: BaseAlgorithm, n_minibatches: int = 16, control_variate: bool = True) -> GradientVariance:
    """
    Variance of the model's policy-gradient estimator, measured on one batch split into minibatches.

    On-policy models (PPOKL, CVPG) use the rollout they last collected (a model with none, new or just
    loaded, raises a ValueError); the estimator is ∇_θ mean[log π_θ(a|s) Â] at the current parameters,
    with the raw (not normalized) advantages, and ``control_variate=False`` drops the value baseline
    (Â + V(s), the returns), or CVPG's control variate (Â instead of Â − ηĀ, no analytic term).
    OffPAC uses ``n_minibatches`` fresh replay samples of ``batch_size`` and its actor loss;
    ``control_variate=False`` drops the leave-one-out baseline of "likelihood". Nothing is trained or
    collected: the model, its buffers and counters, and the global random streams (numpy's, torch's CPU
    and CUDA ones) are left as they were.

    :param model: an on-policy actor-critic (PPOKL, CVPG, SB3's PPO or A2C) or OffPAC
    :param n_minibatches: K, the number of minibatches (>= 2)
    :param control_variate: whether the estimator keeps its baseline / control variate
    :return: a :class:`GradientVariance` dict: ``variance`` (trace of the covariance of the K minibatch gradients),
        ``mean_sq_norm`` (squared norm of their mean), ``n_minibatches``, ``minibatch_size`` and ``mean`` (the mean
        gradient of ascent, a float64 tensor over the estimator's parameters flattened in order: the policy's, or OffPAC's actor's)
    """
    if not isinstance(n_minibatches, (int, np.integer)) or n_minibatches < 2:
        raise ValueError(f"n_minibatches must be an integer >= 2, got {n_minibatches!r}")
    estimator = estimator_of(model)
    parameters = estimator.parameters()
    rows, minibatch_size = [], 0
    with isolated_random_streams():
        for batch in estimator.minibatches(n_minibatches):
            loss = estimator.surrogate(batch, control_variate)
            grads = th.autograd.grad(loss, parameters, allow_unused=True)
            rows.append(-flatten_gradients(grads, parameters))  # the loss descends: its negative is the estimate
            minibatch_size = len(batch.actions)
    gradients = th.stack(rows).double().cpu()
    statistics = minibatch_gradient_statistics(gradients)
    return GradientVariance(**statistics, n_minibatches=len(rows), minibatch_size=minibatch_size, mean=gradients.mean(dim=0))
