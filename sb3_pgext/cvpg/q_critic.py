"""
CVPG's action-value critic Q_w(s, a): networks, target network, optimiser, data and update in one place.

A control variate uses only the action-dependent part of Q_w, and three ways to fit it are offered
(``target``):

- ``"advantages"``: least squares of Q_w(s_t, a_t) onto the rollout's advantages Â_t, so that Q_w tracks
  E[Â | s, a] = A^π(s, a) up to a function of s (which cancels in Ā): the part of Â a control variate
  can remove, without spending the network on V(s), which varies far more across states than A across
  actions. The cost is that of a value-function fit.
- ``"returns"``: least squares onto the rollout's λ-returns G_t = Â_t + V(s_t), the value function's
  targets, i.e. Q^π itself (Liu et al. 2018, https://arxiv.org/abs/1710.11198, fit φ to Monte-Carlo
  estimates of Q^π).
- ``"td"``: Q-Prop's off-policy critic (Gu et al. 2017, https://arxiv.org/abs/1611.02247, Algorithm 1):
  a replay buffer of every rollout step, the expected-SARSA target
  y = r + γ (1 − d) E_{a'∼π(s')}[Q_w̄(s', a')] and a Polyak-averaged target network. The buffer stores the
  env's original observations and rewards and normalises them when sampled, as SB3's off-policy
  algorithms do with ``VecNormalize``.

CVPG fits the critic after the policy update, so the critic that builds a rollout's control variate has
only seen earlier rollouts: it does not depend on the actions it is applied to, and the estimator stays
unbiased (Tucker et al. 2018, https://arxiv.org/abs/1802.10031, sec. 4, found implementations that fitted
it on the same samples). The regression targets are those of the rollout just used, fitted warm-started
(as PPO fits its value function), so with ``VecNormalize`` the critic sees observations normalised as the
policy saw them.

Finite action sets (Discrete, MultiDiscrete, MultiBinary) get a critic that outputs Q_w(s, ·) over every
joint action, so expectations over π are exact sums.
"""

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn
from torch.nn import functional as F

from sb3_pgext.common.critics import DiscreteCritic
from sb3_pgext.common.utils import concatenate_observations, flush_denormal, index_observations

QF_TARGETS = ("advantages", "returns", "td")
#: How :meth:`QCritic.fit_rollout` minimises the squared error: Adam's minibatch steps, or L-BFGS on all the samples
QF_OPTIMIZERS = ("adam", "lbfgs")
#: L-BFGS's memory (pairs of steps and gradient changes), and the samples per chunk of its autograd evaluations
LBFGS_HISTORY, LBFGS_CHUNK = 20, 8192
#: :meth:`QCritic.fit_rollout` gathers the minibatches of this many steps at a time (one copy instead of one per step)
GATHERED_STEPS = 64
#: The most joint actions of a MultiDiscrete / MultiBinary space the exact ("expected") control variate sums over
MAX_JOINT_ACTIONS = 1024


def action_choices(action_space: spaces.Space) -> list[int] | None:
    """The number of choices of each action component of a finite action space; None for Box."""
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [int(n) for n in np.asarray(action_space.nvec).flatten()]
    if isinstance(action_space, spaces.MultiBinary):
        return [2] * int(np.prod(action_space.shape))
    return None


def joint_action_index(actions: th.Tensor, choices: list[int]) -> th.Tensor:
    """
    The index of each joint action among all ``prod(choices)`` of them, in row-major order (as
    ``np.ravel_multi_index``): the last component varies fastest.

    :param actions: actions as stored by SB3's buffers, shape (batch,), (batch, 1) or (batch, n_components)
    :param choices: the number of choices of each component
    :return: a long tensor of shape (batch,)
    """
    actions = actions.reshape(len(actions), len(choices)).long()
    strides = [math.prod(choices[i + 1 :]) for i in range(len(choices))]
    return (actions * th.as_tensor(strides, device=actions.device)).sum(dim=1)


def joint_action_probs(distribution: Distribution, choices: list[int]) -> th.Tensor:
    """
    π(a|s) of every joint action of a finite action space, differentiable, in :func:`joint_action_index`'s order.

    :param distribution: SB3's Categorical, MultiCategorical or Bernoulli distribution of the batch's states
    :param choices: the number of choices of each component
    :return: shape (batch, prod(choices))
    """
    torch_distribution = distribution.distribution
    if isinstance(torch_distribution, list):  # MultiCategorical: one Categorical per component
        factors = [component.probs for component in torch_distribution]
    elif isinstance(torch_distribution, th.distributions.Bernoulli):
        p = torch_distribution.probs
        factors = [th.stack([1 - p[:, j], p[:, j]], dim=1) for j in range(p.shape[1])]
    else:
        factors = [torch_distribution.probs]
    assert [f.shape[1] for f in factors] == choices, "the distribution matches the action space"
    probs = factors[0]
    for factor in factors[1:]:
        probs = (probs.unsqueeze(2) * factor.unsqueeze(1)).reshape(len(probs), -1)
    return probs


class QCritic(nn.Module):
    """
    CVPG's critic Q_w(s, a) (see the module docstring): ``q_net`` (and ``q_net_target`` for ``target="td"``),
    ``optimizer``, the replay buffer for ``"td"``, and the update.

    :param observation_space: Observation space
    :param action_space: Action space: Box, or a finite one (Discrete, MultiDiscrete, MultiBinary)
    :param make_features_extractor: builds a features extractor for the observations (the policy's kind)
    :param net_arch: hidden layers of the Q-network
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param target: "advantages" or "returns" (regression onto the rollout's Â or λ-returns), or "td"
        (expected-SARSA TD on a replay buffer)
    :param learning_rate: learning rate of the Adam optimizer
    :param batch_size: minibatch size of an update (Adam)
    :param gradient_steps: updates per rollout: Adam's steps, or L-BFGS's iterations
    :param n_rollouts: how many of the most recent rollouts :meth:`fit_rollout` regresses on ("advantages",
        "returns"): their samples together, in ``gradient_steps`` steps
    :param optimizer: how :meth:`fit_rollout` fits ("advantages", "returns"): "adam" (``gradient_steps`` steps of
        ``batch_size`` samples) or "lbfgs" (``gradient_steps`` iterations of L-BFGS on all the samples, each with a
        strong-Wolfe line search); "td" always takes Adam's steps
    :param buffer_size: replay buffer size ("td")
    :param tau: Polyak coefficient of the target network ("td")
    :param gamma: discount factor of the TD target ("td")
    :param n_envs: number of envs feeding the replay buffer ("td")
    :param device: PyTorch device
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        make_features_extractor: Callable[[], BaseFeaturesExtractor],
        net_arch: list[int],
        normalize_images: bool = True,
        target: str = "advantages",
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        gradient_steps: int = 100,
        n_rollouts: int = 1,
        optimizer: str = "adam",
        buffer_size: int = 1_000_000,
        tau: float = 0.005,
        gamma: float = 0.99,
        n_envs: int = 1,
        device: th.device | str = "cpu",
    ):
        super().__init__()
        self.target = target
        self.batch_size = batch_size
        self.gradient_steps = gradient_steps
        self.optimizer_name = optimizer
        #: the (observations, actions, targets) of the last ``n_rollouts`` rollouts :meth:`fit_rollout` was given
        self.recent_rollouts: deque[tuple[PyTorchObs, th.Tensor, th.Tensor]] = deque(maxlen=n_rollouts)
        self.tau = tau
        self.gamma = gamma
        self.choices = action_choices(action_space)
        self.device = th.device(device)

        def make_q_net() -> ContinuousCritic | DiscreteCritic:
            features_extractor = make_features_extractor()
            kwargs: dict[str, Any] = dict(
                net_arch=net_arch,
                features_extractor=features_extractor,
                features_dim=features_extractor.features_dim,
                activation_fn=nn.ReLU,
                normalize_images=normalize_images,
                n_critics=1,
                share_features_extractor=False,
            )
            if self.choices is None:
                return ContinuousCritic(observation_space, action_space, **kwargs)  # type: ignore[arg-type]
            return DiscreteCritic(observation_space, spaces.Discrete(math.prod(self.choices)), **kwargs)

        self.q_net = make_q_net()
        # torch's fused Adam: the same update as its default (single-tensor on the CPU) in one kernel per step
        self.optimizer = th.optim.Adam(self.q_net.parameters(), lr=learning_rate, fused=self.device.type in ("cpu", "cuda") or None)
        self.q_net_target: nn.Module | None = None
        self.replay_buffer: ReplayBuffer | None = None
        if target == "td":
            self.q_net_target = make_q_net()
            self.q_net_target.load_state_dict(self.q_net.state_dict())
            self.q_net_target.set_training_mode(False)
            buffer_class = DictReplayBuffer if isinstance(observation_space, spaces.Dict) else ReplayBuffer
            self.replay_buffer = buffer_class(buffer_size, observation_space, action_space, device=device, n_envs=n_envs)
        if isinstance(action_space, spaces.Box):  # the bounds the env clips actions to, flattened as SB3 flattens actions
            self.register_buffer("action_low", th.as_tensor(action_space.low.flatten(), dtype=th.float32), persistent=False)
            self.register_buffer("action_high", th.as_tensor(action_space.high.flatten(), dtype=th.float32), persistent=False)
        self.to(device)

    # ------------------------------------------------------------------ evaluation

    def forward(self, obs: PyTorchObs, actions: th.Tensor | None = None, target: bool = False) -> th.Tensor:
        """
        Q(s, a) of shape (batch,) for Box actions; Q(s, ·) over every joint action, (batch, n_joint), for finite ones.

        Box: the critic sees the action the env executes, clip(a) to the action space's bounds (as SB3's
        rollout does), so Q(s, a) = Q_w(s, clip(a)). Its gradient in a vanishes outside the bounds: the
        Taylor and pathwise terms never push the policy's mean past them.
        """
        q_net = self.q_net_target if target else self.q_net
        assert q_net is not None
        if self.choices is not None:
            return q_net(obs)[0]
        assert actions is not None
        return q_net(obs, self._clip(actions))[0].flatten()

    def _clip(self, actions: th.Tensor) -> th.Tensor:
        """Box actions as the env executes them, clipped to the action space's bounds, as float32."""
        return th.clamp(actions.to(th.float32), self.action_low, self.action_high)

    def q_taken(self, obs: PyTorchObs, actions: th.Tensor, target: bool = False) -> th.Tensor:
        """Q(s, a) of the given actions, shape (batch,), for every kind of action space."""
        if self.choices is None:
            return self(obs, actions, target=target)
        index = joint_action_index(actions, self.choices)
        return self(obs, target=target).gather(1, index.unsqueeze(1)).flatten()

    def expected_q(self, obs: PyTorchObs, distribution: Distribution, target: bool = False) -> th.Tensor:
        """E_{a∼π(s)}[Q(s, a)], shape (batch,): the exact sum for finite actions, one sampled action for Box."""
        if self.choices is None:
            return self(obs, distribution.sample(), target=target)
        return (joint_action_probs(distribution, self.choices) * self(obs, target=target)).sum(dim=1)

    # ------------------------------------------------------------------ fitting

    def fit_rollout(self, observations: PyTorchObs, actions: th.Tensor, targets: th.Tensor) -> float:
        """
        Least squares of Q_w(s_t, a_t) onto per-sample targets (advantages or λ-returns) of this rollout and of the
        ``n_rollouts − 1`` before it, warm-started: ``gradient_steps`` Adam steps on shuffled minibatches
        (:meth:`_fit_adam`), or ``gradient_steps`` L-BFGS iterations on all the samples (:meth:`_fit_lbfgs`). With Box
        actions and SB3's ``FlattenExtractor`` (the MLP policies' critic) the gradient is written by hand
        (:func:`mlp_mse_gradients`), otherwise it is autograd's; the two agree to float rounding (tested).

        :param observations: the rollout's observations (as the policy sees them), batch-first tensors
        :param actions: the rollout's actions
        :param targets: the regression targets, shape (n_samples,)
        :return: the mean squared error: Adam's over its steps, L-BFGS's after the fit (nan with no step)
        """
        self.recent_rollouts.append((observations, actions, targets))
        if len(self.recent_rollouts) > 1:
            observations = concatenate_observations([rollout[0] for rollout in self.recent_rollouts])
            actions = th.cat([rollout[1] for rollout in self.recent_rollouts])
            targets = th.cat([rollout[2] for rollout in self.recent_rollouts])
        if self.gradient_steps == 0:
            return float("nan")
        layers = self.hand_written_layers()
        inputs = None
        if layers is not None:  # the critic's inputs, [features(s), clip(a)], once: its features extractor has no weights
            inputs = th.cat([self.q_net.extract_features(observations, self.q_net.features_extractor), self._clip(actions)], dim=1)
        with flush_denormal(self.device.type == "cpu"):  # Adam's moments of dead ReLU units go subnormal
            if self.optimizer_name == "lbfgs":
                return self._fit_lbfgs(observations, actions, targets, layers, inputs)
            return self._fit_adam(observations, actions, targets, layers, inputs)

    def _fit_adam(
        self, observations: PyTorchObs, actions: th.Tensor, targets: th.Tensor, layers: list[nn.Linear] | None, inputs: th.Tensor | None
    ) -> float:
        """``gradient_steps`` steps of Adam, in shuffled passes over the samples; the mean squared error over the steps."""
        n_samples, batch_size = len(targets), self.batch_size
        n_passes = math.ceil(self.gradient_steps * batch_size / n_samples)
        order = th.cat([th.randperm(n_samples, device=self.device) for _ in range(n_passes)])
        losses = []
        for first in range(0, self.gradient_steps, GATHERED_STEPS):
            n_steps = min(GATHERED_STEPS, self.gradient_steps - first)
            index = order[first * batch_size : (first + n_steps) * batch_size]
            chunk_targets = targets[index]
            if layers is not None:
                chunk_inputs = inputs[index]  # type: ignore[index]
            else:
                chunk_observations, chunk_actions = index_observations(observations, index), actions[index]
            for step in range(n_steps):
                batch = slice(step * batch_size, (step + 1) * batch_size)
                if layers is not None:
                    loss = mlp_mse_gradients(layers, chunk_inputs[batch], chunk_targets[batch])
                else:
                    self.optimizer.zero_grad()
                    loss = F.mse_loss(self.q_taken(index_observations(chunk_observations, batch), chunk_actions[batch]), chunk_targets[batch])
                    loss.backward()
                self.optimizer.step()
                losses.append(loss.detach())
        return th.stack(losses).mean().item()

    def _fit_lbfgs(
        self, observations: PyTorchObs, actions: th.Tensor, targets: th.Tensor, layers: list[nn.Linear] | None, inputs: th.Tensor | None
    ) -> float:
        """
        ``gradient_steps`` iterations of L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search, a memory of
        ``LBFGS_HISTORY`` steps, started afresh each fit) on the mean squared error over all the samples, divided by
        the targets' variance (the share of it left unexplained: the stopping tolerances then do not depend on the
        rewards' scale). Each iteration evaluates the loss and its gradient on every sample, about 1.1 times on
        average; the autograd path does so in chunks of ``LBFGS_CHUNK`` samples. The mean squared error after the fit.
        """
        parameters = list(self.q_net.parameters())
        scale = 1.0 / max(float(targets.var(unbiased=False)), 1e-8)
        optimizer = th.optim.LBFGS(
            parameters,
            max_iter=self.gradient_steps,
            history_size=LBFGS_HISTORY,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )

        chunks = th.arange(len(targets), device=self.device).split(LBFGS_CHUNK)

        def squared_error(chunk: th.Tensor) -> th.Tensor:
            """The sum of the chunk's squared errors, through the critic's modules (autograd's path)."""
            return F.mse_loss(self.q_taken(index_observations(observations, chunk), actions[chunk]), targets[chunk], reduction="sum")

        def closure() -> th.Tensor:
            if layers is not None:
                loss = mlp_mse_gradients(layers, inputs, targets)  # type: ignore[arg-type]
                for parameter in parameters:
                    parameter.grad.mul_(scale)  # type: ignore[union-attr]
                return loss * scale
            optimizer.zero_grad()
            total = th.zeros((), device=self.device)
            for chunk in chunks:
                chunk_loss = squared_error(chunk)
                (chunk_loss * (scale / len(targets))).backward()
                total += chunk_loss.detach()
            return total * (scale / len(targets))

        optimizer.step(closure)
        with th.no_grad():  # the loss after the fit (the closure's last call may have been a rejected line-search point)
            return (sum(squared_error(chunk) for chunk in chunks) / len(targets)).item()

    def hand_written_layers(self) -> list[nn.Linear] | None:
        """
        The Q-network's linear layers when :meth:`fit_rollout` writes its gradients by hand: Box actions, a features
        extractor without weights (SB3's ``FlattenExtractor``) and linear layers with a ReLU between each two (SB3's
        ``create_mlp``); None otherwise.
        """
        if self.choices is not None or any(True for _ in self.q_net.features_extractor.parameters()):
            return None
        modules = list(self.q_net.q_networks[0])  # type: ignore[union-attr]
        layers, activations = modules[0::2], modules[1::2]
        if len(layers) == len(activations) + 1 and all(type(m) is nn.Linear for m in layers) and all(type(m) is nn.ReLU for m in activations):
            return layers  # type: ignore[return-value]
        return None

    def fit_td(self, policy: BasePolicy, vec_normalize_env: VecNormalize | None = None) -> float:
        """
        ``gradient_steps`` TD updates on replay samples, y = r + γ (1 − d) E_{a'∼π(s')}[Q_w̄(s', a')], each
        followed by a Polyak update of the target network.

        :param policy: the actor-critic policy whose π(·|s') the target's expectation is over
        :param vec_normalize_env: the training env's VecNormalize, which normalises the stored originals
        :return: the mean squared TD error over the steps (nan with no step)
        """
        assert self.replay_buffer is not None and self.q_net_target is not None
        losses = []
        with flush_denormal(self.device.type == "cpu"):
            for _ in range(self.gradient_steps):
                data = self.replay_buffer.sample(self.batch_size, env=vec_normalize_env)
                with th.no_grad():
                    next_q = self.expected_q(data.next_observations, policy.get_distribution(data.next_observations), target=True)
                    target = data.rewards.flatten() + (1 - data.dones.flatten()) * self.gamma * next_q
                loss = F.mse_loss(self.q_taken(data.observations, data.actions), target)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
                losses.append(loss.detach())
        return th.stack(losses).mean().item() if losses else float("nan")


def mlp_mse_gradients(layers: list[nn.Linear], inputs: th.Tensor, targets: th.Tensor) -> th.Tensor:
    """
    The gradient of the mean squared error mean_i (f(x_i) − y_i)² of the MLP f made of ``layers`` with a ReLU between
    each two, written into each weight's and bias's ``.grad``: what ``loss.backward()`` gives, without autograd's
    bookkeeping, which costs more than the arithmetic at the sizes of CVPG's critics on one CPU core (measured in
    docs/algorithms/cvpg.md, "What the critic costs").

    :param layers: the linear layers, the last one with one output
    :param inputs: the minibatch's inputs, shape (batch, layers[0].in_features)
    :param targets: the regression targets, shape (batch,)
    :return: the loss, a scalar tensor
    """
    with th.no_grad():
        hidden = [inputs]  # the input of each layer
        for layer in layers[:-1]:
            hidden.append(th.addmm(layer.bias, hidden[-1], layer.weight.t()).relu_())
        last = layers[-1]
        error = th.addmm(last.bias, hidden[-1], last.weight.t()).squeeze(1) - targets
        grad_output = error.unsqueeze(1) * (2.0 / len(targets))  # d loss / d f(x)
        for k in range(len(layers) - 1, -1, -1):
            layers[k].weight.grad = grad_output.t().mm(hidden[k])
            layers[k].bias.grad = grad_output.sum(0)
            if k > 0:  # back through layer k and the ReLU before it (its output is > 0 where its input was)
                grad_output = grad_output.mm(layers[k].weight).mul_(hidden[k] > 0)
        return error.square().mean()
