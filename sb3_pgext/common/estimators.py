"""
Actor-gradient estimators of ∇_θ E_{a∼π_θ(·|s)}[ f(s, a) ], each written as a surrogate loss whose
autograd gradient is the estimator (minimising the loss ascends E[f]).

Lecture notes seed 000 eq. 4.4.4–4.4.5 (score function with fresh actions from the current policy),
seed 004 section 3 (reparameterization / Stein's identity); Expected Policy Gradients
(Ciosek & Whiteson, 2018) and SAC-Discrete (Christodoulou, 2019) for the all-action sum.
"""

import torch as th


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
    Score-function (likelihood-ratio) estimator, seed 000 eq. 4.4.5 with a leave-one-out baseline:

        ∇_θ J ≈ (1 / NK) Σ_i Σ_k ∇_θ log π_θ(a_ik|s_i) (f(s_i, a_ik) − b_ik),   a_ik ∼ π_θ(·|s_i).

    :param log_prob: log π_θ(a_ik|s_i) of shape (K, batch), differentiable in θ, actions held fixed
    :param values: f(s_i, a_ik) of shape (K, batch) (treated as constants)
    :param baseline: subtract the leave-one-out baseline (False: b = 0, the plain eq. 4.4.5)
    :return: the surrogate loss, −mean of log π · (f − b)
    """
    values = values.detach()
    if baseline:
        values = values - leave_one_out_baseline(values)
    return -(log_prob * values).mean()


def reparameterization_loss(log_prob: th.Tensor, q_values: th.Tensor, ent_coef: th.Tensor) -> th.Tensor:
    """
    Pathwise estimator (seed 004 section 3, SAC): a = f_θ(s, ξ) carries the gradient, so

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

    :param probs: π_θ(·|s) of shape (batch, n_actions)
    :param log_probs: log π_θ(·|s) of shape (batch, n_actions)
    :param q_values: Q(s, ·) of shape (batch, n_actions) (treated as constants)
    :param ent_coef: entropy coefficient α
    :return: the surrogate loss mean_i Σ_a π (α log π − Q)
    """
    return (probs * (ent_coef * log_probs - q_values.detach())).sum(dim=1).mean()


# --- control variates for on-policy policy gradients (CVPG) ------------------------------------------
#
#     ∇J ≈ (1/N) Σ ∇ log π(a|s) (Â(s,a) − η Ā(s,a))  +  (1/N) Σ η ∇_θ E_{a∼π_θ(s)}[ Q_w(s, a) ]
#
# (seed 000 eq. 4.2.5–4.2.6; Q-Prop, Gu et al. 2017; Stein control variates, Liu et al. 2018). Ā is the
# action-dependent part of the critic, computed once per rollout; the analytic term is written as a
# surrogate in θ whose gradient is ∇_θ E_{a∼π_θ(s)}[Q_w(s, a)] (or Q-Prop's first-order version of it).


def taylor_control_variate(q_grad: th.Tensor, actions: th.Tensor, mean_actions: th.Tensor) -> th.Tensor:
    """
    Q-Prop's first-order Taylor control variate Ā(s, a) = ∇_a Q_w(s, μ(s))ᵀ (a − μ(s)).

    :param q_grad: ∇_a Q_w(s, a) at a = μ(s), shape (batch, action_dim)
    :param actions: the taken actions, shape (batch, action_dim)
    :param mean_actions: μ(s), the rollout policy's mean action, shape (batch, action_dim)
    :return: Ā, shape (batch,)
    """
    return (q_grad * (actions - mean_actions)).sum(dim=1)


def taylor_analytic_term(q_grad: th.Tensor, mean_actions: th.Tensor) -> th.Tensor:
    """
    Q-Prop's analytic term as a surrogate, per state: ∇_a Q_w(s_i, μ_old(s_i))ᵀ μ_θ(s_i), whose gradient in θ
    is ∇_a Q_w(s, μ)ᵀ ∇_θ μ_θ(s), i.e. ∇_θ Q_w(s, μ_θ(s)) at θ = θ_old.

    :param q_grad: ∇_a Q_w(s, μ_old(s)), constants of shape (batch, action_dim)
    :param mean_actions: μ_θ(s), differentiable, shape (batch, action_dim)
    :return: shape (batch,); its mean is the minibatch's surrogate
    """
    return (q_grad.detach() * mean_actions).sum(dim=1)


def centered_control_variate(q_taken: th.Tensor, q_expected: th.Tensor) -> th.Tensor:
    """
    Ā(s, a) = Q_w(s, a) − E_{a'∼π(s)}[Q_w(s, a')]: the Stein control variate with φ = Q_w
    ("reparameterization", the expectation estimated by sampling) and the exact one for Discrete
    actions ("expected"). Subtracting a function of s alone leaves the estimator unbiased.
    """
    return q_taken - q_expected


def qprop_eta(advantages: th.Tensor, control_variate: th.Tensor, rule: str) -> th.Tensor:
    """
    Q-Prop's weight η of the control variate: "ones" (η = 1), "conservative" (η = 1 where
    Ĉov(Â, Ā) > 0, else 0) or "aggressive" (η = sign Ĉov(Â, Ā)), the covariance taken over the rollout.

    :return: η as a 0-d tensor
    """
    if rule == "ones":
        return th.ones((), device=advantages.device)
    covariance = ((advantages - advantages.mean()) * (control_variate - control_variate.mean())).mean()
    if rule == "conservative":
        return (covariance > 0).to(advantages.dtype)
    if rule == "aggressive":
        return th.sign(covariance)
    raise ValueError(f"eta must be 'ones', 'conservative' or 'aggressive', got {rule!r}")
