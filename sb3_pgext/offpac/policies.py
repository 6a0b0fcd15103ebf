"""
OffPAC's policies: SB3's SAC actor and critics for Box actions, and their Discrete counterparts.

For Box actions the actor is SB3's squashed-Gaussian ``Actor`` and the critic SB3's
``ContinuousCritic``, built by SB3's ``SACPolicy``: a SAC checkpoint's policy has the same layout.
For Discrete actions the actor outputs the logits of a Categorical distribution and the critic
outputs Q(s, ·) for every action at once, so expectations over the policy are exact sums.
"""

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.sac.policies import Actor, SACPolicy
from torch import nn
from torch.nn import functional as F

from sb3_pgext.common.critics import BatchedContinuousCritic, BatchedDiscreteCritic, DiscreteCritic

#: What SACPolicy passes to its actor for gSDE; a Categorical actor has no use for them
_GAUSSIAN_ACTOR_KWARGS = ("use_sde", "log_std_init", "use_expln", "clip_mean")
#: Optimizers whose fused implementation the fast update uses, unless told otherwise by ``optimizer_kwargs``
_FUSABLE_OPTIMIZERS = (th.optim.Adam, th.optim.AdamW)


class CategoricalActor(BasePolicy):
    """
    Actor for Discrete actions: features -> MLP -> logits of π_θ(·|s).

    :param observation_space: Observation space
    :param action_space: Action space (Discrete)
    :param net_arch: Network architecture of the MLP after the features extractor
    :param features_extractor: Network to extract features (a CNN for images, a Flatten layer otherwise)
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.latent_pi = nn.Sequential(*create_mlp(features_dim, -1, net_arch, activation_fn))
        last_layer_dim = net_arch[-1] if len(net_arch) > 0 else features_dim
        self.action_dist = CategoricalDistribution(int(action_space.n))
        self.action_net = nn.Linear(last_layer_dim, int(action_space.n))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
            )
        )
        return data

    def distribution(self, obs: PyTorchObs) -> CategoricalDistribution:
        """π_θ(·|s) for a batch of observations."""
        features = self.extract_features(obs, self.features_extractor)
        return self.action_dist.proba_distribution(action_logits=self.action_net(self.latent_pi(features)))

    def log_probs_and_probs(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """
        log π_θ(·|s) and π_θ(·|s), each of shape (batch, n_actions), computed as torch's ``Categorical`` computes
        its ``logits`` and ``probs`` (the same values), without building the distribution and checking its arguments.
        """
        features = self.extract_features(obs, self.features_extractor)
        logits = self.action_net(self.latent_pi(features))
        log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
        return log_probs, F.softmax(log_probs, dim=-1)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.distribution(obs).get_actions(deterministic=deterministic)

    def action_log_prob(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """An action drawn from π_θ(·|s) and its log-probability, as SAC's ``Actor.action_log_prob``."""
        distribution = self.distribution(obs)
        actions = distribution.sample()
        return actions, distribution.log_prob(actions)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)


class OffPACPolicy(SACPolicy):
    """
    Actor and critics for OffPAC: SB3's ``SACPolicy`` for Box actions, and a Categorical actor
    with Q(s, ·) critics for Discrete actions. It takes SACPolicy's arguments; for Discrete actions
    the Gaussian-only ones (``use_sde``, ``log_std_init``, ``use_expln``, ``clip_mean``) are unused.

    :param observation_space: Observation space
    :param action_space: Action space (Box or Discrete)
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: The specification of the actor and critic networks (a list, or a dict with pi / qf)
    :param activation_fn: Activation function
    :param use_sde: Whether to use State Dependent Exploration (Box only)
    :param log_std_init: Initial value for the log standard deviation (gSDE)
    :param use_expln: Use ``expln()`` instead of ``exp()`` for gSDE's standard deviation
    :param clip_mean: Clip the mean output when using gSDE
    :param features_extractor_class: Features extractor to use
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param optimizer_class: The optimizer to use (``th.optim.Adam`` by default)
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, for the optimizer
    :param n_critics: Number of critic networks (the target takes their minimum)
    :param share_features_extractor: Whether to share the features extractor between actor and critic
    :param fast_update: The critics' Q-networks as one batched network (:class:`~sb3_pgext.common.critics.BatchedMLP`,
        same state-dict keys) and the fused implementation of Adam / AdamW (unless ``optimizer_kwargs`` sets
        ``fused`` or ``foreach``), and Box actions predicted without SB3's distribution objects (see ``_predict``);
        False: SB3's separate modules and Adam, SAC's arithmetic bit for bit
    """

    actor: Actor | CategoricalActor  # type: ignore[assignment]
    critic: ContinuousCritic | DiscreteCritic  # type: ignore[assignment]
    critic_target: ContinuousCritic | DiscreteCritic  # type: ignore[assignment]

    def __init__(self, *args: Any, fast_update: bool = False, **kwargs: Any):
        self.fast_update = fast_update  # read by make_critic, which SACPolicy's constructor calls
        optimizer_class = kwargs.get("optimizer_class", th.optim.Adam)
        optimizer_kwargs = kwargs.get("optimizer_kwargs") or {}
        self._fused_by_default = (
            fast_update and optimizer_class in _FUSABLE_OPTIMIZERS and not {"fused", "foreach"} & set(optimizer_kwargs)
        )
        if self._fused_by_default:
            kwargs["optimizer_kwargs"] = {**optimizer_kwargs, "fused": True}
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["fast_update"] = self.fast_update
        if self._fused_by_default:  # chosen by fast_update, not by the user
            data["optimizer_kwargs"] = {key: value for key, value in self.optimizer_kwargs.items() if key != "fused"}
        return data

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """
        SAC's action. With the fast update, for Box actions without gSDE, computed without building the distribution
        objects (the same arithmetic and random draw as SB3's ``SquashedDiagGaussianDistribution``): at one
        observation per env step, their construction and argument checks cost more than the network.
        """
        if self.fast_update and isinstance(self.actor, Actor) and not self.actor.use_sde:
            mean_actions, log_std, _ = self.actor.get_action_dist_params(observation)
            if deterministic:
                return th.tanh(mean_actions)
            # torch.distributions.Normal.rsample: loc + ε · scale, with ε drawn by normal_() on an empty tensor
            return th.tanh(mean_actions + th.empty_like(mean_actions).normal_() * log_std.exp())
        return super()._predict(observation, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        """
        SAC's ``set_training_mode`` (actor and critic in training or evaluation mode), skipped when they are in that
        mode already: SB3 calls it twice per env step, and each call walks every module.

        :param mode: if true, set to training mode, else set to evaluation mode
        """
        if self.training != mode or self.actor.training != mode or self.critic.training != mode:
            super().set_training_mode(mode)

    @property
    def is_discrete(self) -> bool:
        return isinstance(self.action_space, spaces.Discrete)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Actor | CategoricalActor:  # type: ignore[override]
        if not self.is_discrete:
            return super().make_actor(features_extractor)
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        for key in _GAUSSIAN_ACTOR_KWARGS:
            actor_kwargs.pop(key)
        return CategoricalActor(**actor_kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic | DiscreteCritic:  # type: ignore[override]
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        if self.is_discrete:
            critic_class = BatchedDiscreteCritic if self.fast_update else DiscreteCritic
        else:
            critic_class = BatchedContinuousCritic if self.fast_update else ContinuousCritic
        return critic_class(**critic_kwargs).to(self.device)

    def min_q(self, critic: ContinuousCritic | DiscreteCritic, obs: PyTorchObs, actions: th.Tensor | None = None) -> th.Tensor:
        """
        min over the critics of Q(s, a): shape (batch, 1) for Box actions (``actions`` given);
        for Discrete actions Q(s, ·) of shape (batch, n_actions) when ``actions`` is None.
        """
        if actions is None:
            return th.stack(critic(obs), dim=0).min(dim=0).values
        return th.min(th.cat(critic(obs, actions), dim=1), dim=1, keepdim=True).values

    def sample_log_prob(self, obs: PyTorchObs, n_samples: int, reparameterize: bool) -> tuple[th.Tensor, th.Tensor]:
        """
        ``n_samples`` fresh actions per state from the current Box policy and their log π_θ(a|s).

        Actions are laid out sample-major: row k * batch + i is the k-th action for state i.
        With ``reparameterize`` the actions carry the pathwise gradient a = f_θ(s, ξ) (one sample
        is exactly SAC's ``actor.action_log_prob``); without, the actions are constants and only
        the log-probability depends on θ (for the score-function estimator).
        """
        assert isinstance(self.actor, Actor)
        if n_samples == 1 and reparameterize:
            return self.actor.action_log_prob(obs)
        mean_actions, log_std, kwargs = self.actor.get_action_dist_params(obs)
        if n_samples > 1:  # the constructor rules out gSDE here: its exploration matrix is shared
            mean_actions, log_std = mean_actions.repeat(n_samples, 1), log_std.repeat(n_samples, 1)
        distribution = self.actor.action_dist.proba_distribution(mean_actions, log_std, **kwargs)
        if reparameterize:
            actions = distribution.sample()
        else:
            with th.no_grad():
                actions = distribution.sample()
        if isinstance(distribution, SquashedDiagGaussianDistribution):
            gaussian_actions = distribution.gaussian_actions
            if not reparameterize:
                gaussian_actions = gaussian_actions.detach()
            return actions, distribution.log_prob(actions, gaussian_actions)
        assert isinstance(distribution, StateDependentNoiseDistribution)
        return actions, distribution.log_prob(actions)


MlpPolicy = OffPACPolicy


class CnnPolicy(OffPACPolicy):
    """OffPACPolicy with SB3's NatureCNN features extractor (see :class:`OffPACPolicy` for the arguments)."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputPolicy(OffPACPolicy):
    """OffPACPolicy with SB3's CombinedExtractor for Dict observations (see :class:`OffPACPolicy`)."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
