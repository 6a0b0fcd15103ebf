"""
Measured variance of a policy-gradient estimator. Baselines and control variates exist to cut it
(Greensmith et al. 2004, "Variance Reduction Techniques for Gradient Estimates in Reinforcement
Learning", https://jmlr.org/papers/v5/greensmith04a.html), and a claimed reduction has to be measured
(Tucker et al. 2018, "The Mirage of Action-Dependent Baselines in Reinforcement Learning",
https://arxiv.org/abs/1802.10031).

One batch is split into K minibatches; the estimator's gradient ĝ_k is computed on each, and

    variance     = tr Cov_k(ĝ_k) = Σ_j 1/(K − 1) Σ_k (ĝ_kj − ḡ_j)²   (per-minibatch estimator variance)
    mean_sq_norm = ‖ḡ‖²,  ḡ = (1/K) Σ_k ĝ_k

An algorithm takes part by providing three methods (see :class:`GradientVarianceMixin`).
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th

from sb3_pgext.common.utils import isolated_random_streams


class GradientVarianceMixin:
    """
    The hooks :func:`gradient_variance` calls. An algorithm implements:

    - ``_pg_parameters()``: the parameters the policy gradient is taken with respect to;
    - ``_pg_minibatches(n_minibatches)``: ``n_minibatches`` equal, disjoint minibatches of one batch
      of data (the data the model last trained on, or freshly collected);
    - ``_pg_surrogate(batch, control_variate)``: a loss whose gradient is minus the estimator on
      ``batch``; ``control_variate=False`` gives the same estimator without its baseline / control variate.
    """

    def _pg_parameters(self) -> list[th.nn.Parameter]:
        raise NotImplementedError

    def _pg_minibatches(self, n_minibatches: int) -> Iterator[Any]:
        raise NotImplementedError

    def _pg_surrogate(self, batch: Any, control_variate: bool) -> th.Tensor:
        raise NotImplementedError


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


def gradient_variance(model: GradientVarianceMixin, n_minibatches: int = 16, control_variate: bool = True) -> GradientVariance:
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

    :param model: a model of the package (PPOKL, CVPG, OffPAC)
    :param n_minibatches: K, the number of minibatches (>= 2)
    :param control_variate: whether the estimator keeps its baseline / control variate
    :return: a :class:`GradientVariance` dict: ``variance`` (trace of the covariance of the K minibatch gradients),
        ``mean_sq_norm`` (squared norm of their mean), ``n_minibatches``, ``minibatch_size`` and ``mean`` (the mean
        gradient of ascent, a float64 tensor over ``_pg_parameters()`` flattened in order)
    """
    if not isinstance(n_minibatches, (int, np.integer)) or n_minibatches < 2:
        raise ValueError(f"n_minibatches must be an integer >= 2, got {n_minibatches!r}")
    parameters = model._pg_parameters()
    rows, minibatch_size = [], 0
    with isolated_random_streams():
        for batch in model._pg_minibatches(n_minibatches):
            loss = model._pg_surrogate(batch, control_variate)
            grads = th.autograd.grad(loss, parameters, allow_unused=True)
            rows.append(-flatten_gradients(grads, parameters))  # the loss descends: its negative is the estimate
            minibatch_size = len(batch.actions)
    gradients = th.stack(rows).double().cpu()
    statistics = minibatch_gradient_statistics(gradients)
    return GradientVariance(**statistics, n_minibatches=len(rows), minibatch_size=minibatch_size, mean=gradients.mean(dim=0))
