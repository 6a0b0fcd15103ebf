"""Q-networks for Discrete actions, the counterpart of SB3's ``ContinuousCritic`` (used by OffPAC and CVPG)."""

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn


class DiscreteCritic(BaseModel):
    """
    ``n_critics`` Q-networks for Discrete actions, each mapping s to Q(s, ·) over every action
    (the counterpart of SB3's ``ContinuousCritic``, with the same feature-sharing rule).

    :param observation_space: Observation space
    :param action_space: Action space (Discrete)
    :param net_arch: Network architecture of each Q-network
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param n_critics: Number of Q-networks
    :param share_features_extractor: Whether the features extractor is shared with the actor
        (then only the actor's loss trains it)
    """

    features_extractor: BaseFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = True,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = nn.Sequential(*create_mlp(features_dim, int(action_space.n), net_arch, activation_fn))
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)

    def forward(self, obs: PyTorchObs) -> tuple[th.Tensor, ...]:
        """Q(s, ·) of each critic, each of shape (batch, n_actions)."""
        with th.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        return tuple(q_net(features) for q_net in self.q_networks)
