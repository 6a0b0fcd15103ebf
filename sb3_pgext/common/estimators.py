"""
Actor-gradient estimators of ``∇_θ E_{a∼π_θ(·|s)}[ f(s, a) ]``, each written as a surrogate loss whose
autograd gradient is the estimator (minimising the loss ascends E[f]).

The score function with fresh actions from the current policy (Degris et al. 2012, "Off-Policy
Actor-Critic", https://arxiv.org/abs/1205.4839; Williams 1992), reparameterization (Kingma & Welling
2014; as in SAC, Haarnoja et al. 2018, https://arxiv.org/abs/1801.01290), and the all-action sum of
Expected Policy Gradients (Ciosek & Whiteson 2018, https://arxiv.org/abs/1706.05374) and SAC-Discrete
(Christodoulou 2019, https://arxiv.org/abs/1910.07207).
"""

import math
from typing import Any, NamedTuple

import torch as th
from torch.autograd.function import once_differentiable


def leave_one_out_baseline(values: th.Tensor) -> th.Tensor:
    """
    b_k = (1 / (K − 1)) Σ_{j≠k} f_j for K samples per state (``values`` of shape (K, batch)).

    b_k does not depend on the k-th sample, so subtracting it keeps the score-function estimator
    unbiased while removing most of the variance of f (Kool et al. 2019, "Buy 4 REINFORCE samples").
    With K = 1 there is no other sample and the baseline is 0.
    """
    n_samples = values.shape[0]
    if n_samples == 1:
        return th.zeros_like(values)
    return (values.sum(dim=0, keepdim=True) - values) / (n_samples - 1)


def likelihood_ratio_loss(log_prob: th.Tensor, values: th.Tensor, baseline: bool = True) -> th.Tensor:
    """
    Score-function (likelihood-ratio) estimator with K fresh actions per state and a leave-one-out baseline::

        ∇_θ J ≈ (1 / NK) Σ_i Σ_k ∇_θ log π_θ(a_ik|s_i) (f(s_i, a_ik) − b_ik),   a_ik ∼ π_θ(·|s_i).

    :param log_prob: log π_θ(a_ik|s_i) of shape (K, batch), differentiable in θ, actions held fixed
    :param values: f(s_i, a_ik) of shape (K, batch) (treated as constants)
    :param baseline: subtract the leave-one-out baseline (False: b = 0)
    :return: the surrogate loss, −mean of log π · (f − b)
    """
    values = values.detach()
    if baseline:
        values = values - leave_one_out_baseline(values)
    return -(log_prob * values).mean()


def reparameterization_loss(log_prob: th.Tensor, q_values: th.Tensor, ent_coef: th.Tensor) -> th.Tensor:
    """
    Pathwise estimator (reparameterization, as in SAC): a = f_θ(s, ξ) carries the gradient, so

        ∇_θ J ≈ (1 / N) Σ_i ∇_a Q(s_i, a) ∇_θ f_θ(s_i, ξ_i) − α ∇_θ log π_θ(f_θ(s_i, ξ_i)|s_i).

    :param log_prob: log π_θ(a|s) of reparameterized actions, shape (batch, 1)
    :param q_values: Q(s, a) at those actions, shape (batch, 1), differentiable through a
    :param ent_coef: entropy coefficient α
    :return: the surrogate loss mean(α log π − Q) (SAC's actor loss)
    """
    return (ent_coef * log_prob - q_values).mean()


def expected_policy_loss(probs: th.Tensor, log_probs: th.Tensor, q_values: th.Tensor, ent_coef: th.Tensor) -> th.Tensor:
    """
    All-action estimator for Discrete actions (Expected Policy Gradients, SAC-Discrete): the
    expectation is an exact sum, so its gradient has no sampling noise at all,

        ∇_θ J = (1 / N) Σ_i ∇_θ Σ_a π_θ(a|s_i) (Q(s_i, a) − α log π_θ(a|s_i)).

    :param probs: ``π_θ(·|s)`` of shape (batch, n_actions)
    :param log_probs: ``log π_θ(·|s)`` of shape (batch, n_actions)
    :param q_values: Q(s, ·) of shape (batch, n_actions) (treated as constants)
    :param ent_coef: entropy coefficient α
    :return: the surrogate loss mean_i Σ_a π (α log π − Q)
    """
    return (probs * (ent_coef * log_probs - q_values.detach())).sum(dim=1).mean()


# --- control variates for on-policy policy gradients (CVPG) ------------------------------------------
#
#     ∇J ≈ (1/N) Σ_i ∇ log π(a_i|s_i) (Â_i − η_i Ā_i)  +  (1/N) Σ_i η_i ∇_θ E_{a∼π_θ(s_i)}[ Q_w(s_i, a) ]
#
# (Q-Prop, Gu et al. 2017, https://arxiv.org/abs/1611.02247, eq. 9; Stein control variates, Liu et al.
# 2018, https://arxiv.org/abs/1710.11198). Ā is the action-dependent part of the critic, computed once
# per rollout; the analytic term is written as a surrogate in θ whose gradient is ∇_θ E_{a∼π_θ(s)}[Q_w(s, a)]
# (or Q-Prop's first-order version of it). The estimator is unbiased for any critic and any η, provided
# neither depends on the action a_i it is applied to: Q_w is fitted on earlier rollouts and η_i on the
# other fold of the rollout (Tucker et al. 2018, https://arxiv.org/abs/1802.10031, sec. 4, found
# implementations that fitted them on the same samples, which biases the estimator).


def taylor_control_variate(q_grad: th.Tensor, actions: th.Tensor, mean_actions: th.Tensor) -> th.Tensor:
    """
    Q-Prop's first-order Taylor control variate Ā(s, a) = ∇_a Q_w(s, μ(s))ᵀ (a − μ(s)) (Gu et al. 2017, eq. 7).

    CVPG expands in the action the env executes, clip(a), around its mean m(s) = E_π[clip(a)] (see
    :func:`clipped_gaussian_mean`): Ā = ∇_a Q_w(s, m)ᵀ (clip(a) − m), Q-Prop's term when nothing is clipped.

    :param q_grad: ∇_a Q_w(s, a) at the expansion point, shape (batch, action_dim)
    :param actions: the actions (executed), shape (batch, action_dim)
    :param mean_actions: the expansion point, their mean under the rollout policy, shape (batch, action_dim)
    :return: Ā, shape (batch,)
    """
    return (q_grad * (actions.to(q_grad.dtype) - mean_actions)).sum(dim=1)


def taylor_analytic_term(q_grad: th.Tensor, mean_actions: th.Tensor) -> th.Tensor:
    """
    Q-Prop's analytic term as a surrogate, per state: ∇_a Q_w(s_i, μ_old(s_i))ᵀ μ_θ(s_i), whose gradient in θ
    is ∇_a Q_w(s, μ)ᵀ ∇_θ μ_θ(s), i.e. ∇_θ Q_w(s, μ_θ(s)) at θ = θ_old (Gu et al. 2017, eq. 8); with the
    executed actions' mean m_θ(s) in place of μ_θ(s), ∇_θ E_{a∼π_θ}[gᵀ clip(a)] exactly.

    :param q_grad: ∇_a Q_w at the rollout policy's expansion point, constants of shape (batch, action_dim)
    :param mean_actions: μ_θ(s) or m_θ(s), differentiable, shape (batch, action_dim)
    :return: shape (batch,); its mean is the minibatch's surrogate
    """
    return (q_grad.detach() * mean_actions).sum(dim=1)


_HUGE, _INV_SQRT_2PI = 1e30, (2 * math.pi) ** -0.5


def clipped_gaussian_mean(mean: th.Tensor, std: th.Tensor, low: th.Tensor, high: th.Tensor) -> th.Tensor:
    """
    E[clip(a, low, high)] for a ∼ N(mean, std²), per component, differentiable in mean and std:

        l Φ(α) + h (1 − Φ(β)) + μ (Φ(β) − Φ(α)) + σ (φ(α) − φ(β)),   α = (l − μ) / σ,  β = (h − μ) / σ,

    whose derivatives ∂/∂μ = Φ(β) − Φ(α) and ∂/∂σ = φ(α) − φ(β) the backward pass multiplies by directly (autograd
    through the formula's 20 operations took twice as long, per minibatch of CVPG's update on one CPU core).
    SB3 clips a Gaussian policy's actions to the Box before the env sees them, so this is the mean of
    the executed action; an infinite bound leaves its side unclipped.

    :param mean: μ, shape (batch, action_dim)
    :param std: σ > 0, same shape
    :param low: the lower bounds, shape (action_dim,)
    :param high: the upper bounds, shape (action_dim,)
    :return: shape (batch, action_dim)
    """
    return _ClippedGaussianMean.apply(mean, std, low, high)[0]


def _clipped_gaussian_mean_and_slopes(
    mean: th.Tensor, std: th.Tensor, low: th.Tensor, high: th.Tensor
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """:func:`clipped_gaussian_mean`'s formula, and its derivatives in μ and σ."""
    # an infinite bound as a huge finite one: Φ and φ are then exactly 0 or 1 there, and the products 0
    low, high = th.clamp(low, min=-_HUGE), th.clamp(high, max=_HUGE)
    z = (th.stack([low, high]).unsqueeze(1) - mean) / std  # α and β
    cdf, pdf = th.special.ndtr(z), th.exp(-0.5 * z.square()) * _INV_SQRT_2PI
    d_mean, d_std = cdf[1] - cdf[0], pdf[0] - pdf[1]
    return low * cdf[0] + high * (1 - cdf[1]) + mean * d_mean + std * d_std, d_mean, d_std


class _ClippedGaussianMean(th.autograd.Function):
    """:func:`clipped_gaussian_mean`, its first derivatives by hand (and a vmap rule, for ``torch.func``'s per-sample gradients)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mean: th.Tensor, std: th.Tensor, low: th.Tensor, high: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:  # type: ignore[override]
        return _clipped_gaussian_mean_and_slopes(mean, std, low, high)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[th.Tensor, ...], output: tuple[th.Tensor, ...]) -> None:
        _, d_mean, d_std = output
        ctx.mark_non_differentiable(d_mean, d_std)
        ctx.save_for_backward(d_mean, d_std)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: th.Tensor, *_: Any) -> tuple[th.Tensor, th.Tensor, None, None]:  # type: ignore[override]
        d_mean, d_std = ctx.saved_tensors
        return grad * d_mean, grad * d_std, None, None


def centered_control_variate(q_taken: th.Tensor, q_expected: th.Tensor) -> th.Tensor:
    """
    Ā(s, a) = Q_w(s, a) − E_{a'∼π(s)}[Q_w(s, a')]: the Stein control variate with φ = Q_w
    ("reparameterization", the expectation estimated by sampling; Liu et al. 2018, eq. 8) and the exact
    one for finite action sets ("expected"). Subtracting a function of s alone leaves the estimator unbiased.
    """
    return q_taken - q_expected


def expected_analytic_term(probs: th.Tensor, q_table: th.Tensor) -> th.Tensor:
    """
    The exact analytic term over a finite action set, per state: Σ_a π_θ(a|s) Q_w(s, a), whose gradient in
    θ is ∇_θ E_{a∼π_θ(s)}[Q_w(s, a)] with no sampling at all.

    :param probs: ``π_θ(·|s)``, differentiable, shape (batch, n_actions)
    :param q_table: Q_w(s, ·), constants of shape (batch, n_actions)
    :return: shape (batch,)
    """
    return (probs * q_table.detach()).sum(dim=1)


def corrected_advantages(advantages: th.Tensor, eta: th.Tensor, control_variate: th.Tensor) -> th.Tensor:
    """
    Â − ηĀ: the advantages minus η times the control variate, the weight of ∇ log π in Q-Prop's estimator
    (Gu et al. 2017, eq. 10; the analytic term η ∇_θ E_π[Q_w] is added apart, :func:`weighted_analytic_term`).
    """
    return advantages - eta * control_variate


#: η's rules: "min_variance" (:func:`min_variance_eta`, from per-sample gradients) and Q-Prop's (:func:`qprop_eta`)
ETA_RULES = ("min_variance", "adaptive", "ones", "conservative", "aggressive")


def weighted_analytic_term(eta: th.Tensor, analytic_term: th.Tensor, ratio: th.Tensor, clip_range: float | None) -> th.Tensor:
    """
    mean_i[ η_i c_i S_i ]: Q-Prop's analytic term (Gu et al. 2017, eq. 8) weighted by each sample's η, with
    c_i = 1 while the sample's ratio r_i = π_θ(a_i|s_i) / π_old(a_i|s_i) is inside PPO's [1 − ε, 1 + ε], else 0: past
    the clipped trust region the surrogate stops following Â − ηĀ, and the analytic term stops with it (always 1
    without clipping).

    :param eta: η per sample
    :param analytic_term: S_i(θ) per sample, whose gradient in θ is ∇_θ E_{a∼π_θ(s_i)}[Q_w(s_i, a)]
    :param ratio: r_i(θ) per sample
    :param clip_range: ε, or None without clipping
    """
    if clip_range is not None:
        analytic_term = analytic_term * ((ratio - 1).abs() <= clip_range).detach()
    return (eta * analytic_term).mean()


def qprop_eta(advantages: th.Tensor, control_variate: th.Tensor, rule: str, folds: th.Tensor | None = None) -> th.Tensor:
    """
    Q-Prop's weight η of the control variate, per sample (Gu et al. 2017, sec. 3.3 and 3.4):

    - "adaptive": η* = Ĉov(Â, Ā) / V̂ar(Ā), the weight that minimises Var(Â − ηĀ), i.e. the least-squares
      coefficient of Â on Ā; it never raises that variance in expectation;
    - "ones": η = 1 (a perfect critic's weight; Var(Â − Ā) < Var(Â) only where Ĉov(Â, Ā) > V̂ar(Ā) / 2);
    - "conservative": η = 1 where Ĉov(Â, Ā) > 0, else 0;
    - "aggressive": η = sign Ĉov(Â, Ā).

    Cross-fitted: the statistics that set the η of a sample of fold f are taken over the samples of the
    other folds, never over the sample itself, so that η_i is independent of a_i and the estimator stays
    unbiased. ``folds=None`` is a single fold: the in-sample estimate, biased by O(1/N) (for comparisons).

    :param advantages: Â of the rollout, shape (N,)
    :param control_variate: Ā of the rollout, shape (N,)
    :param rule: one of ``ETA_RULES``
    :param folds: the fold of each sample, integers of shape (N,) (see :func:`rollout_folds`), or None
    :return: η per sample, shape (N,)
    """
    if rule not in ETA_RULES:
        raise ValueError(f"eta must be one of {ETA_RULES}, got {rule!r}")
    if rule == "ones":
        return th.ones_like(advantages)
    if folds is None:
        folds = th.zeros_like(advantages, dtype=th.long)
    eta = th.empty_like(advantages)
    for fold in th.unique(folds):
        inside = folds == fold
        # the other folds' statistics; a rollout of a single fold (one sample per env...) uses its own
        others = ~inside if (~inside).any() else inside
        a, c = advantages[others], control_variate[others]
        c_centered = c - c.mean()
        covariance = ((a - a.mean()) * c_centered).mean()
        if rule == "adaptive":
            variance = c_centered.pow(2).mean()
            eta[inside] = covariance / variance if variance > 0 else 0.0
        elif rule == "conservative":
            eta[inside] = (covariance > 0).to(advantages.dtype)
        else:  # aggressive
            eta[inside] = th.sign(covariance)
    return eta


class GradientMoments(NamedTuple):
    """
    Sums over samples of the per-sample gradients u_i and v_i of :func:`min_variance_eta` (flattened over the policy's
    parameters): what it needs of a fold. Moments of disjoint sets of samples add up (``+`` is elementwise).

    :param n: number of samples
    :param sum_u: Σ_i u_i
    :param sum_v: Σ_i v_i
    :param sum_uv: Σ_i ⟨u_i, v_i⟩
    :param sum_vv: Σ_i ‖v_i‖²
    """

    n: th.Tensor
    sum_u: th.Tensor
    sum_v: th.Tensor
    sum_uv: th.Tensor
    sum_vv: th.Tensor

    @classmethod
    def of_samples(
        cls,
        score: th.Tensor,
        analytic: th.Tensor,
        advantages: th.Tensor,
        control_variate: th.Tensor,
        groups: th.Tensor | None = None,
        n_groups: int = 1,
    ) -> list["GradientMoments"]:
        """
        The moments of u_i = Â_i ∇ log π_i and v_i = Ā_i ∇ log π_i − ∇S_i over the samples of each group, from the
        per-sample gradients without forming u and v (⟨u_i, v_i⟩ and ‖v_i‖² from three row products), summed in the
        gradients' dtype and returned in float64.

        :param score: ∇_θ log π_θ(a_i|s_i) per sample, shape (n, n_parameters)
        :param analytic: ∇_θ S_i per sample, same shape
        :param advantages: Â_i, shape (n,)
        :param control_variate: Ā_i, shape (n,)
        :param groups: each sample's group, integers below ``n_groups`` (None: one group)
        :param n_groups: the number of groups
        """
        a, c = advantages.to(score.dtype), control_variate.to(score.dtype)
        groups = th.zeros(len(a), dtype=th.long, device=a.device) if groups is None else groups
        membership = th.nn.functional.one_hot(groups, n_groups).to(score.dtype)  # (n, n_groups)
        score_score, score_analytic = (score * score).sum(1), (score * analytic).sum(1)
        analytic_analytic = (analytic * analytic).sum(1)
        uv = a * c * score_score - a * score_analytic
        vv = c * c * score_score - 2 * c * score_analytic + analytic_analytic
        sums = (
            membership.sum(0),
            (membership * a[:, None]).T @ score,
            (membership * c[:, None]).T @ score - membership.T @ analytic,
            membership.T @ uv,
            membership.T @ vv,
        )
        return [cls(*(value[group].double() for value in sums)) for group in range(n_groups)]

    def __add__(self, other: "GradientMoments") -> "GradientMoments":  # type: ignore[override]
        return GradientMoments(*(a + b for a, b in zip(self, other)))


def min_variance_eta(fold_moments: list[GradientMoments]) -> th.Tensor:
    """
    η of each fold chosen against the variance of the whole per-sample gradient the estimator adds up. With
    u_i = Â_i ∇_θ log π_θ(a_i|s_i) and v_i = Ā_i ∇_θ log π_θ(a_i|s_i) − ∇_θ S_i (S_i the analytic term), the
    per-sample gradient of Q-Prop's estimator (Gu et al. 2017, eq. 10) is g_i(η) = u_i − η v_i, and

        tr V̂ar(g(η)) = tr V̂ar(u) − 2η tr Ĉov(u, v) + η² tr V̂ar(v),    minimised by    η = tr Ĉov(u, v) / tr V̂ar(v).

    Q-Prop's η* = Ĉov(Â, Ā) / V̂ar(Ā) (:func:`qprop_eta`) minimises the variance of Â − ηĀ alone: it leaves out the
    analytic term's variance and how the score ∇ log π weighs each sample, and can raise the gradient's variance
    where those are large; this η never raises the (measured) variance above η = 0's. Cross-fitted as
    :func:`qprop_eta`: fold f's η comes from the moments of the other folds (its own when it is the only one), so
    that it does not depend on the actions it is applied to.

    :param fold_moments: the :class:`GradientMoments` of each fold's samples
    :return: η per fold, shape (n_folds,)
    """
    total = fold_moments[0]
    for moments in fold_moments[1:]:
        total = total + moments
    etas = []
    for moments in fold_moments:
        others = total if len(fold_moments) == 1 else GradientMoments(*(a - b for a, b in zip(total, moments)))
        n = others.n
        covariance = others.sum_uv / n - others.sum_u.dot(others.sum_v) / n**2
        variance = others.sum_vv / n - others.sum_v.dot(others.sum_v) / n**2
        etas.append(covariance / variance if variance > 0 else th.zeros_like(variance))
    return th.stack(etas)


def rollout_folds(n_steps: int, n_envs: int, n_folds: int = 2) -> th.Tensor:
    """
    The cross-fitting fold of each sample of a rollout, in the flattened order of SB3's ``RolloutBuffer``
    (index = env · n_steps + step).

    With several envs, whole envs form the folds (env e in fold e mod n_folds): their trajectories are
    independent given the rollout's start, so a statistic of one fold is independent of the other folds'
    actions. With one env, the rollout's consecutive blocks form the folds: the first block's statistics
    are then independent of the later blocks' actions, while the later blocks' states depend (weakly,
    through the dynamics) on the first block's actions.

    :param n_steps: steps per env in the rollout
    :param n_envs: number of envs
    :param n_folds: number of folds (2: each half's η comes from the other half)
    :return: fold indices, a long tensor of shape (n_steps · n_envs,)
    """
    if n_envs >= n_folds:
        return (th.arange(n_envs) % n_folds).repeat_interleave(n_steps)
    return (th.arange(n_steps) * n_folds // n_steps).repeat(n_envs)
