"""
KL divergences between action distributions, and the adaptive KL-penalty coefficient.

Follows Schulman et al. 2017 ("Proximal Policy Optimization Algorithms", section 4,
https://arxiv.org/abs/1707.06347):

    L(θ) = Ê[ r_t(θ) Â_t − β · KL(π_old(·|s_t) ‖ π_θ(·|s_t)) ]

Closed forms cover every distribution SB3's on-policy policies build: diagonal Gaussian (also
gSDE, whose per-state action distribution is a diagonal Gaussian), Categorical, MultiCategorical
(a product of Categoricals) and Bernoulli (MultiBinary). A squashed Gaussian has the KL of the
Gaussian it squashes, since the KL is invariant under the same invertible map applied to both
distributions. Sampled estimators (Schulman, "Approximating KL divergence", 2020) use only the
log-ratio of the taken actions, which were drawn from π_old.
"""

from collections.abc import Sequence
from typing import Literal

import torch as th
from stable_baselines3.common.distributions import Distribution
from torch.distributions import Bernoulli, Categorical, Normal
from torch.nn import functional as F

KL_ESTIMATORS = ("analytic", "k1", "k3")
KL_DIRECTIONS = ("forward", "reverse")
KL_UPDATES = ("rollout", "minibatch")

KLEstimator = Literal["analytic", "k1", "k3"]
KLDirection = Literal["forward", "reverse"]


def gaussian_kl(loc_p: th.Tensor, scale_p: th.Tensor, loc_q: th.Tensor, scale_q: th.Tensor) -> th.Tensor:
    """
    KL(p ‖ q) of two diagonal Gaussians, summed over the last (action) dimension.

    KL = Σ_i log(σ_q,i / σ_p,i) + (σ_p,i² + (μ_p,i − μ_q,i)²) / (2 σ_q,i²) − 1/2

    :param loc_p: mean of p, shape (batch, action_dim)
    :param scale_p: standard deviation of p
    :param loc_q: mean of q
    :param scale_q: standard deviation of q
    :return: KL per sample, shape (batch,)
    """
    diff = loc_p - loc_q
    # σ_p² + (μ_p − μ_q)², in one fused op: this runs on every minibatch
    spread = th.addcmul(scale_p.square(), diff, diff)
    return (th.log(scale_q / scale_p) + 0.5 * (spread / scale_q.square() - 1.0)).sum(dim=-1)


def categorical_kl(logits_p: th.Tensor, logits_q: th.Tensor) -> th.Tensor:
    """
    KL(p ‖ q) = Σ_a p(a) (log p(a) − log q(a)) of two Categoricals given by normalised log-probabilities.

    :param logits_p: log p, shape (batch, n_actions)
    :param logits_q: log q, shape (batch, n_actions)
    :return: KL per sample, shape (batch,)
    """
    return (logits_p.exp() * (logits_p - logits_q)).sum(dim=-1)


def bernoulli_kl(logits_p: th.Tensor, logits_q: th.Tensor) -> th.Tensor:
    """
    KL(p ‖ q) of independent Bernoullis given by logits, summed over the last dimension.

    KL = Σ_i p_i (log p_i − log q_i) + (1 − p_i)(log(1 − p_i) − log(1 − q_i))

    :param logits_p: logits of p, shape (batch, n_bits)
    :param logits_q: logits of q, shape (batch, n_bits)
    :return: KL per sample, shape (batch,)
    """
    p = th.sigmoid(logits_p)
    kl_one = p * (F.logsigmoid(logits_p) - F.logsigmoid(logits_q))
    kl_zero = (1.0 - p) * (F.logsigmoid(-logits_p) - F.logsigmoid(-logits_q))
    return (kl_one + kl_zero).sum(dim=-1)


def sampled_kl(log_ratio: th.Tensor, estimator: KLEstimator, direction: KLDirection) -> th.Tensor:
    """
    Per-sample estimate of a KL from the taken actions a ~ π_old, with r = π_new(a) / π_old(a).

    forward, KL(π_old ‖ π_new) = E_old[−log r]:   k1 = −log r,    k3 = (r − 1) − log r
    reverse, KL(π_new ‖ π_old) = E_old[r log r]:  k1 = r log r,   k3 = r log r − (r − 1)

    Both are unbiased (k3 adds the zero-mean control variate r − 1) and k3 is never negative.

    :param log_ratio: log π_new(a) − log π_old(a) per sample
    :param estimator: "k1" or "k3"
    :param direction: "forward" for KL(old ‖ new), "reverse" for KL(new ‖ old)
    :return: per-sample estimate, same shape as ``log_ratio``
    """
    if direction == "forward":
        if estimator == "k1":
            return -log_ratio
        return th.expm1(log_ratio) - log_ratio
    r_log_r = th.exp(log_ratio) * log_ratio
    if estimator == "k1":
        return r_log_r
    return r_log_r - th.expm1(log_ratio)


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float, bounds: tuple[float, float]) -> float:
    """
    The adaptive rule of Schulman et al. 2017, section 4, applied after a policy update.

    d < d_targ / 1.5 → β / 2;  d > 1.5 · d_targ → 2β;  then β is clipped to ``bounds``.

    :param kl_coef: current β
    :param kl: measured d = Ê[KL] of the update
    :param kl_target: d_targ
    :param bounds: (lowest, highest) β
    :return: the new β
    """
    if kl < kl_target / 1.5:
        kl_coef = kl_coef / 2.0
    elif kl > kl_target * 1.5:
        kl_coef = kl_coef * 2.0
    return float(min(max(kl_coef, bounds[0]), bounds[1]))


class DistributionParams:
    """
    The parameters of a batch of action distributions, one row per state, for closed-form KLs.

    Built from an SB3 :class:`~stable_baselines3.common.distributions.Distribution` (after
    ``proba_distribution``) with :meth:`capture`; rows are selected with ``params[indices]``.

    :param components: one ``(kind, tensors)`` pair per independent factor of the distribution,
        kind "normal" (loc, scale), "categorical" (normalised log-probabilities) or "bernoulli" (logits)
    """

    def __init__(self, components: Sequence[tuple[str, tuple[th.Tensor, ...]]]):
        self.components = list(components)

    @classmethod
    def capture(cls, distribution: Distribution, detach: bool = True) -> "DistributionParams | None":
        """
        Read the parameters of an SB3 distribution.

        :param distribution: an SB3 distribution whose ``proba_distribution`` has been called
        :param detach: detach the tensors from the graph (for the rollout policy π_old)
        :return: the parameters, or None when a factor has no closed-form KL here
        """
        factors = distribution.distribution
        factors = factors if isinstance(factors, list) else [factors]
        components: list[tuple[str, tuple[th.Tensor, ...]]] = []
        for factor in factors:
            if isinstance(factor, Normal):
                kind, tensors = "normal", (factor.loc, factor.scale)
            elif isinstance(factor, Categorical):
                kind, tensors = "categorical", (factor.logits,)
            elif isinstance(factor, Bernoulli):
                kind, tensors = "bernoulli", (factor.logits,)
            else:
                return None
            if detach:
                tensors = tuple(tensor.detach() for tensor in tensors)
            components.append((kind, tensors))
        return cls(components)

    @classmethod
    def cat(cls, parts: Sequence["DistributionParams"]) -> "DistributionParams":
        """
        Concatenate batches of parameters along the batch dimension.

        :param parts: parameters of consecutive chunks of states
        :return: the parameters of all states
        """
        components = []
        for i, (kind, _) in enumerate(parts[0].components):
            tensors = tuple(th.cat(column) for column in zip(*(part.components[i][1] for part in parts), strict=True))
            components.append((kind, tensors))
        return cls(components)

    def __getitem__(self, indices: th.Tensor | slice) -> "DistributionParams":
        return DistributionParams([(kind, tuple(t[indices] for t in tensors)) for kind, tensors in self.components])


def analytic_kl(p: DistributionParams, q: DistributionParams) -> th.Tensor:
    """
    KL(p ‖ q) per state, the sum over the independent factors of the closed-form KLs.

    :param p: parameters of the first distribution
    :param q: parameters of the second distribution (same kinds and shapes as ``p``)
    :return: KL per state, shape (batch,)
    """
    total: th.Tensor | None = None
    for (kind, tensors_p), (_, tensors_q) in zip(p.components, q.components, strict=True):
        if kind == "normal":
            kl = gaussian_kl(tensors_p[0], tensors_p[1], tensors_q[0], tensors_q[1])
        elif kind == "categorical":
            kl = categorical_kl(tensors_p[0], tensors_q[0])
        else:
            kl = bernoulli_kl(tensors_p[0], tensors_q[0])
        total = kl if total is None else total + kl
    assert total is not None, "a distribution has at least one factor"
    return total


class _GaussianKLToFixed(th.autograd.Function):
    """
    Batch mean of KL(p ‖ q) for diagonal Gaussians, p fixed (the rollout policy, no gradient), with
    the closed-form gradient in q's parameters. One autograd node instead of a dozen: this runs on
    every minibatch of a KL-penalised update, where per-op overhead dominates.

        KL = Σ_i log(σ_q,i / σ_p,i) + (σ_p,i² + (μ_p,i − μ_q,i)²) / (2 σ_q,i²) − 1/2
        ∂KL/∂μ_q = (μ_q − μ_p) / σ_q²,    ∂KL/∂σ_q = (1 − (σ_p² + (μ_p − μ_q)²) / σ_q²) / σ_q
    """

    @staticmethod
    def forward(ctx, loc_q: th.Tensor, scale_q: th.Tensor, loc_p: th.Tensor, scale_p: th.Tensor) -> th.Tensor:  # type: ignore[override]
        diff = loc_p - loc_q
        inv_var_q = scale_q.pow(-2)
        spread = th.addcmul(scale_p.square(), diff, diff)
        ctx.save_for_backward(diff, scale_q, inv_var_q, spread)
        kl_sum = th.addcmul(th.log(scale_q / scale_p), spread, inv_var_q, value=0.5).sum() - 0.5 * diff.numel()
        return kl_sum / len(loc_q)

    @staticmethod
    def backward(ctx, grad_output: th.Tensor) -> tuple[th.Tensor | None, ...]:  # type: ignore[override]
        diff, scale_q, inv_var_q, spread = ctx.saved_tensors
        grad = grad_output / len(diff)
        grad_loc_q = -grad * diff * inv_var_q
        grad_scale_q = grad * (1.0 - spread * inv_var_q) / scale_q
        return grad_loc_q, grad_scale_q, None, None


def mean_kl_from_fixed(p: DistributionParams, q: DistributionParams) -> th.Tensor:
    """
    Ê_s[KL(p(·|s) ‖ q(·|s))] with p held fixed (no gradient through p): the KL penalty of PPO.

    Equal to ``analytic_kl(p, q).mean()``; Gaussian factors take a single fused autograd node.

    :param p: parameters of the fixed (rollout) distribution
    :param q: parameters of the current distribution, carrying gradients
    :return: the mean KL, a scalar
    """
    total: th.Tensor | None = None
    for (kind, tensors_p), (_, tensors_q) in zip(p.components, q.components, strict=True):
        if kind == "normal":
            kl = _GaussianKLToFixed.apply(tensors_q[0], tensors_q[1], tensors_p[0], tensors_p[1])
        else:
            kl = analytic_kl(DistributionParams([(kind, tensors_p)]), DistributionParams([(kind, tensors_q)])).mean()
        total = kl if total is None else total + kl
    assert total is not None, "a distribution has at least one factor"
    return total
