"""
The horizon-aware value function of Tucker et al. (2018), "The Mirage of Action-Dependent Baselines in
Reinforcement Learning", https://arxiv.org/abs/1802.10031, section 6:

    V(s_t) = (Σ_{i=t}^{T-1} γ^{i−t}) r̂(s_t) + V'(s_t)

where T is the episode's time limit, r̂(s) a predicted reward rate and V'(s) the rest. The time left in the
episode scales the part of the value that grows with it, which a plain V(s) cannot see. With r̂ = 0 it is
the plain value function V'(s).

All of it lives here: the value head (:class:`HorizonAwareValueHead`), the callback that records each observation's
time left during collection (:class:`TimeLeftCallback`), and what an on-policy algorithm does with it
(:class:`HorizonAwareValueMixin`: the values and GAE recomputed with the time left before each update, the value loss
on V(s) with each sample's time left).
"""

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_pgext.common.buffers import (
    TimeLeftDictRolloutBuffer,
    TimeLeftMixin,
    TimeLeftRolloutBuffer,
    flat_array,
    rollout_chunks,
    set_flat,
)


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


def time_limits(env: VecEnv) -> np.ndarray:
    """T of each env, from its ``TimeLimit``; a ValueError when an env has none."""
    try:
        return np.array(env.get_attr("_max_episode_steps"), dtype=np.int64)
    except AttributeError:
        raise ValueError(
            "horizon_aware_value=True needs episodes with a time limit: wrap the env in gymnasium's TimeLimit "
            "(gym.make(..., max_episode_steps=...))"
        ) from None


class TimeLeftCallback(BaseCallback):
    """
    Records T − t, the steps left in its episode, for each observation the rollout stores: t is read from the
    envs' ``TimeLimit`` at the start of each rollout and counted on from there.
    """

    model: "HorizonAwareValueMixin"

    def _on_rollout_start(self) -> None:
        assert self.model.env is not None
        self.model._elapsed_steps = np.array(self.model.env.get_attr("_elapsed_steps"), dtype=np.int64)

    def _on_step(self) -> bool:
        model = self.model
        buffer = model.rollout_buffer
        assert isinstance(buffer, TimeLeftMixin) and model._elapsed_steps is not None
        buffer.time_left[buffer.pos] = model._time_limits - model._elapsed_steps  # of model._last_obs, stored next
        model._elapsed_steps += 1
        model._elapsed_steps[self.locals["dones"]] = 0
        return True


class HorizonAwareValueMixin(OnPolicyAlgorithm):
    """
    The horizon-aware value function for an SB3 on-policy algorithm with a ``horizon_aware_value`` setting: mixed in
    before the algorithm, it gives the policy a :class:`HorizonAwareValueHead` and the rollout buffer the time left of
    each sample (:meth:`setup_horizon_aware_value`, from ``_setup_model``); the algorithm adds
    :class:`TimeLeftCallback` to its collection, calls :meth:`recompute_horizon_aware_returns` before its update and
    takes its values from :meth:`with_horizon`.
    """

    horizon_aware_value: bool
    _elapsed_steps: np.ndarray | None
    _time_limits: np.ndarray

    @staticmethod
    def time_left_buffer_class(buffer_class: type[RolloutBuffer]) -> type[RolloutBuffer]:
        """SB3's rollout buffer classes, as their time-left versions; another class must be one already."""
        buffer_class = {RolloutBuffer: TimeLeftRolloutBuffer, DictRolloutBuffer: TimeLeftDictRolloutBuffer}.get(buffer_class, buffer_class)
        if not issubclass(buffer_class, TimeLeftMixin):
            raise ValueError(
                f"rollout_buffer_class must subclass TimeLeftRolloutBuffer with horizon_aware_value=True, got {buffer_class.__name__}"
            )
        return buffer_class

    def setup_horizon_aware_value(self) -> None:
        """After SB3's ``_setup_model``: the policy's value head, and T of each env."""
        self._elapsed_steps = None
        if self.horizon_aware_value:
            use_horizon_aware_value(self.policy)  # type: ignore[arg-type]
            if self.env is not None:
                self._time_limits = time_limits(self.env)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        if self.horizon_aware_value:
            self._time_limits = time_limits(self.env)  # type: ignore[arg-type]

    def with_horizon(self, values: th.Tensor, time_left: th.Tensor) -> th.Tensor:
        """V(s) = V'(s) + (Σ_{i<T−t} γ^i) r̂(s), from V'(s) the policy just returned (its head keeps r̂(s))."""
        head = self.policy.value_net
        assert isinstance(head, HorizonAwareValueHead) and head.reward_rate is not None
        return horizon_aware_value(values, head.reward_rate.flatten(), time_left.flatten(), self.gamma)

    def predict_horizon_values(self, obs: PyTorchObs, time_left: th.Tensor) -> th.Tensor:
        """
        V(s) of observations at given times left in their episodes, T − t (the plain V(s) without a
        horizon-aware value function), shape (batch,).

        :param obs: observations, as the policy takes them
        :param time_left: T − t per observation
        """
        values = self.policy.predict_values(obs).flatten()
        return self.with_horizon(values, time_left) if self.horizon_aware_value else values

    @th.no_grad()
    def recompute_horizon_aware_returns(self) -> None:
        """
        Collection stored V'(s) (the head's output, right for SB3's bootstrap at a time limit, where no time is
        left); make the rollout's values V'(s) + (Σ γ^i) r̂(s) with each observation's time left, and compute
        GAE again from them. Logs the rollout's mean r̂(s) (``train/reward_rate``) and mean horizon part
        (Σ γ^i) r̂(s) of V(s) (``train/horizon_value``), beside the mean V(s) (``train/value``).
        """
        buffer = self.rollout_buffer
        assert isinstance(buffer, TimeLeftMixin) and self._elapsed_steps is not None and self._last_obs is not None
        time_left = th.as_tensor(flat_array(buffer, "time_left"), device=self.device)
        values, reward_rates = [], []
        for obs, chunk in rollout_chunks(buffer, self.policy, self.device):
            values.append(self.predict_horizon_values(obs, time_left[chunk]))
            reward_rates.append(self.policy.value_net.reward_rate.flatten())  # type: ignore[union-attr]
        all_values, reward_rate = th.cat(values), th.cat(reward_rates)
        self.logger.record("train/reward_rate", reward_rate.mean().item())
        self.logger.record("train/horizon_value", (horizon_weight(time_left, self.gamma) * reward_rate).mean().item())
        self.logger.record("train/value", all_values.mean().item())
        set_flat(buffer, "values", all_values.cpu().numpy())
        training = self.policy.training
        self.policy.set_training_mode(False)
        last_time_left = th.as_tensor(self._time_limits - self._elapsed_steps, dtype=th.float32, device=self.device)
        last_values = self.predict_horizon_values(obs_as_tensor(self._last_obs, self.device), last_time_left)  # type: ignore[arg-type]
        self.policy.set_training_mode(training)
        buffer.compute_returns_and_advantage(last_values=last_values, dones=self._last_episode_starts)  # type: ignore[arg-type]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_elapsed_steps"]
