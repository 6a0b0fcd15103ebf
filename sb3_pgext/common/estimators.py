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
