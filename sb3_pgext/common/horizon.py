"""
The horizon-aware value function of Tucker et al. (2018), "The Mirage of Action-Dependent Baselines in
Reinforcement Learning", https://arxiv.org/abs/1802.10031, section 6:

    V(s_t) = (Σ_{i=t}^{T-1} γ^{i−t}) r̂(s_t) + V'(s_t)

where T is the episode's time limit, r̂(s) a predicted reward rate and V'(s) the rest. The time left in the
episode scales the part of the value that grows with it, which a plain V(s) cannot see. With r̂ = 0 it is
the plain value function V'(s).
"""

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn


def horizon_weight(time_left: th.Tensor, gamma: float) -> th.Tensor:
    """
    Σ_{i=0}^{time_left − 1} γ^i = (1 − γ^time_left) / (1 − γ): the discounted number of rewards left.

    :param time_left: the number of steps left in the episode (T − t), per sample
    :param gamma: the discount factor γ
    :return: the weight of r̂, per sample
    """
    if gamma == 1.0:
        return time_left
    return (1.0 - gamma**time_left) / (1.0 - gamma)


def horizon_aware_value(value_rest: th.Tensor, reward_rate: th.Tensor, time_left: th.Tensor, gamma: float) -> th.Tensor:
    """
    V(s_t) = (Σ_{i=t}^{T−1} γ^{i−t}) r̂(s_t) + V'(s_t) (Tucker et al. 2018, section 6).

    :param value_rest: V'(s_t), per sample
    :param reward_rate: r̂(s_t), per sample
    :param time_left: T − t, the steps left in the episode, per sample
    :param gamma: the discount factor γ
    :return: V(s_t), per sample
    """
    return horizon_weight(time_left, gamma) * reward_rate + value_rest


class HorizonAwareValueHead(nn.Module):
    """
    The value network's last layer for a horizon-aware value function: one linear layer with two outputs,
    V'(s) and r̂(s). Its forward pass returns V'(s), the value with no time left, which is what SB3's
    rollout collection needs at a time limit (it bootstraps a truncated episode with V(terminal
    observation), where no time is left); it keeps r̂(s) of the same pass in :attr:`reward_rate`, as SB3's
    policies keep the last distribution in ``action_dist``. The algorithm adds the horizon's part
    (:func:`horizon_aware_value`) where it knows the time left.

    :param latent_dim: the size of the value network's latent features
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.linear = nn.utils.skip_init(nn.Linear, latent_dim, 2)  # set by its user (no draw from the random streams)
        self.reward_rate: th.Tensor | None = None

    def forward(self, latent: th.Tensor) -> th.Tensor:
        out = self.linear(latent)
        self.reward_rate = out[:, 1]
        return out[:, :1]


def use_horizon_aware_value(policy: ActorCriticPolicy) -> None:
    """
    Give ``policy`` a :class:`HorizonAwareValueHead` in place of its ``value_net``, V' starting as the
    ``value_net`` SB3 built and r̂ = 0 (so that nothing else changes, the random streams included), and a new
    optimizer over its parameters.

    :param policy: an SB3 actor-critic policy, just built
    """
    value_net = policy.value_net
    head = HorizonAwareValueHead(value_net.in_features).to(policy.device)
    with th.no_grad():  # [V' | r̂] = [value_net | 0]
        head.linear.weight.zero_()
        head.linear.bias.zero_()
        head.linear.weight[0].copy_(value_net.weight[0])
        head.linear.bias[0].copy_(value_net.bias[0])
    policy.value_net = head
    learning_rate = policy.optimizer.param_groups[0]["lr"]  # the algorithm sets it again at every update
    policy.optimizer = policy.optimizer_class(policy.parameters(), lr=learning_rate, **policy.optimizer_kwargs)  # type: ignore[call-arg]
