"""
Q-networks for Discrete actions, the counterpart of SB3's ``ContinuousCritic`` (used by OffPAC and CVPG), and
both critics with their Q-networks batched into one network (OffPAC's fast update).
"""

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel, ContinuousCritic
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


class BatchedMLP(nn.Module):
    """
    ``n_nets`` MLPs of the same shape evaluated as one network: layer j keeps the weights of every net
    stacked, ``weight`` of shape (n_nets, out, in) and ``bias`` of shape (n_nets, out), and a forward
    pass is one batched matrix product per layer (``torch.baddbmm``) instead of a Python loop of modules
    (the "ensemble" of Chua et al. 2018, https://arxiv.org/abs/1805.12114, and of REDQ,
    https://arxiv.org/abs/2101.05982, as JAX ports build it with ``vmap``).

    It is built from ``nn.Sequential`` networks of SB3's ``create_mlp`` (``Linear`` layers separated by
    one activation module), whose parameters it copies: built after them from the same seed, the nets
    start from the same values as the separate modules.

    :param networks: the networks to stack, of the same shape
    """

    def __init__(self, networks: list[nn.Sequential]):
        super().__init__()
        first = networks[0]
        #: positions of the Linear layers inside each ``nn.Sequential``, for the per-network state-dict keys
        self.linear_indices = [index for index, module in enumerate(first) if isinstance(module, nn.Linear)]
        activations = [module for module in first if not isinstance(module, nn.Linear)]
        if len(activations) != max(len(self.linear_indices) - 1, 0) or any(
            isinstance(module, nn.Linear) == (position % 2 == 1) for position, module in enumerate(first)
        ):
            raise ValueError(f"BatchedMLP stacks Linear layers separated by one activation, got {first}")
        self.activation = activations[0] if activations else nn.Identity()
        self.n_nets = len(networks)
        self.weights = nn.ParameterList(
            nn.Parameter(th.stack([net[index].weight.detach() for net in networks]).clone()) for index in self.linear_indices
        )
        self.biases = nn.ParameterList(
            nn.Parameter(th.stack([net[index].bias.detach() for net in networks]).clone()) for index in self.linear_indices
        )

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        """
        Every net on the same inputs.

        :param inputs: shape (batch, in)
        :return: the outputs of every net, shape (n_nets, batch, out)
        """
        hidden = inputs.expand(self.n_nets, *inputs.shape)
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if layer > 0:
                hidden = self.activation(hidden)
            hidden = th.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
        return hidden

    def per_network_keys(self, prefix: str, network_prefix: str) -> list[tuple[str, str, int]]:
        """
        (stacked key, per-network key, network index) for every parameter, the per-network keys being those
        of the ``nn.Sequential`` networks (``<network_prefix><i>.<layer>.weight``), e.g. SB3's ``qf0.0.weight``.

        :param prefix: prefix of this module's keys in the state dict
        :param network_prefix: prefix of the separate networks' keys, e.g. ``critic.qf``
        """
        keys = []
        for layer, index in enumerate(self.linear_indices):
            for name, stacked in (("weight", "weights"), ("bias", "biases")):
                for net in range(self.n_nets):
                    keys.append((f"{prefix}{stacked}.{layer}", f"{network_prefix}{net}.{index}.{name}", net))
        return keys


class BatchedCriticMixin:
    """
    The ``n_critics`` Q-networks of a critic as one :class:`BatchedMLP` (``q_net``); ``forward`` keeps the
    critic's contract (a tuple of each critic's values). The state dict has the separate networks' keys
    (``qf0.0.weight`` ...), so saved files, SB3 SAC checkpoints and critics of separate modules load into
    each other.
    """

    q_net: BatchedMLP
    n_critics: int

    def _batch_q_networks(self) -> None:
        """Replace the separate ``qf<i>`` networks built by the critic's constructor with one BatchedMLP."""
        networks = [getattr(self, f"qf{index}") for index in range(self.n_critics)]
        for index in range(self.n_critics):
            delattr(self, f"qf{index}")
        self.q_net = BatchedMLP(networks)
        self.q_networks = []
        self.register_state_dict_post_hook(_stacked_to_per_network)  # type: ignore[attr-defined]
        self.register_load_state_dict_pre_hook(_per_network_to_stacked)  # type: ignore[attr-defined]

    def _key_pairs(self, prefix: str) -> list[tuple[str, str, int]]:
        return self.q_net.per_network_keys(f"{prefix}q_net.", f"{prefix}qf")

    def per_network_optimizer_state(self, state_dict: dict[str, Any], parameters: list[th.Tensor]) -> dict[str, Any]:
        """
        An optimizer state dict over ``parameters`` (the stacked ones) rewritten for the separate networks:
        the parameters and per-parameter states in the order an optimizer over the separate critics has
        them (the features extractor's first, then each critic's layers).

        :param state_dict: the optimizer's ``state_dict()``
        :param parameters: the optimizer's parameters, in order
        """
        slots = self._optimizer_slots(parameters)
        state = {}
        for new_index, (old_index, net) in enumerate(slots):
            if old_index in state_dict["state"]:
                state[new_index] = {
                    key: value[net].clone() if net is not None and _is_stacked(value, parameters[old_index]) else value
                    for key, value in state_dict["state"][old_index].items()
                }
        return _with_params(state_dict, state, len(slots))

    def stacked_optimizer_state(self, state_dict: dict[str, Any], parameters: list[th.Tensor]) -> dict[str, Any]:
        """
        The inverse of :meth:`per_network_optimizer_state`: a state dict saved for the separate networks,
        rewritten for ``parameters``; returned unchanged when it is already in their layout. The layout is told
        by the saved tensors' shapes (with one critic, both layouts have as many entries as ``parameters``); a
        ValueError when they fit neither, so that a mismatched state never reaches an optimizer's kernel.

        :param state_dict: an optimizer state dict over the separate critics' parameters
        :param parameters: this optimizer's parameters, in order
        """
        n_saved = sum(len(group["params"]) for group in state_dict["param_groups"])
        if n_saved == len(parameters) and optimizer_state_fits(state_dict, parameters):
            return state_dict
        slots = self._optimizer_slots(parameters)
        if n_saved != len(slots):
            raise ValueError(f"the critic optimizer's state has {n_saved} parameters, expected {len(slots)} or {len(parameters)}")
        gathered: dict[int, list[dict[str, Any]]] = {}
        for saved_index, (index, _) in enumerate(slots):
            if saved_index in state_dict["state"]:
                gathered.setdefault(index, []).append(state_dict["state"][saved_index])
        heads = {index for index, net in slots if net is None}
        state = {}
        for index, parts in gathered.items():
            if index in heads:  # a features extractor's parameter: its state as it is
                state[index] = parts[0]
                continue
            # the networks' per-parameter tensors stacked (one network: a leading axis of 1); scalars (step) as they are
            network_shape = parameters[index].shape[1:]
            state[index] = {
                key: th.stack([part[key] for part in parts]) if _is_tensor_of_shape(value, network_shape) else value
                for key, value in parts[0].items()
            }
        stacked = _with_params(state_dict, state, len(parameters))
        check_optimizer_state("critic.optimizer", stacked, parameters)
        return stacked

    def _optimizer_slots(self, parameters: list[th.Tensor]) -> list[tuple[int, int | None]]:
        """For each parameter of the separate networks' optimizer, in order: (index in ``parameters``, network or None)."""
        stacked = {id(param): layer for layer, param in enumerate(self.q_net.parameters())}
        head = [(index, None) for index, param in enumerate(parameters) if id(param) not in stacked]
        by_layer = {stacked[id(param)]: index for index, param in enumerate(parameters) if id(param) in stacked}
        n_layers = len(self.q_net.linear_indices)
        if len(by_layer) != 2 * n_layers or any(index != position for position, (index, _) in enumerate(head)):
            raise ValueError("the critic optimizer must hold every Q-network parameter after the features extractor's")
        # named_parameters order: weights.0, weights.1, ..., biases.0, ...; the separate networks': per net, per layer w, b
        tail = [
            (by_layer[kind * n_layers + layer], net)
            for net in range(self.n_critics)
            for layer in range(n_layers)
            for kind in (0, 1)
        ]
        return head + tail


def _is_stacked(value: Any, parameter: th.Tensor) -> bool:
    return _is_tensor_of_shape(value, parameter.shape)


def _is_tensor_of_shape(value: Any, shape: th.Size) -> bool:
    return isinstance(value, th.Tensor) and value.dim() > 0 and value.shape == shape


def _shape_mismatches(state_dict: dict[str, Any], parameters: list[th.Tensor]) -> list[str]:
    """The per-parameter tensors of an optimizer state dict whose shape is not their parameter's, in words."""
    mismatches = []
    for index, state in state_dict["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(parameters):
            mismatches.append(f"state of parameter {index!r}, which the optimizer does not have")
            continue
        for key, value in state.items():
            if isinstance(value, th.Tensor) and value.dim() > 0 and value.shape != parameters[index].shape:
                mismatches.append(f"{key} of parameter {index}: {tuple(value.shape)} for {tuple(parameters[index].shape)}")
    return mismatches


def optimizer_state_fits(state_dict: dict[str, Any], parameters: list[th.Tensor]) -> bool:
    """
    Whether every per-parameter tensor (``exp_avg`` ...) of an optimizer state dict has the shape of its parameter.

    :param state_dict: an optimizer's state dict
    :param parameters: the optimizer's parameters, in order
    """
    return not _shape_mismatches(state_dict, parameters)


def check_optimizer_state(name: str, state_dict: dict[str, Any], parameters: list[th.Tensor]) -> None:
    """
    A ValueError naming the optimizer and the tensors when a state dict does not fit ``parameters``: torch's
    ``load_state_dict`` does not compare shapes, and a fused optimizer step on a mismatched state crashes the
    process (a segmentation fault) instead of raising.

    :param name: the optimizer's name in the model's parameters (e.g. ``critic.optimizer``)
    :param state_dict: the state dict to load
    :param parameters: the optimizer's parameters, in order
    """
    mismatches = _shape_mismatches(state_dict, parameters)
    if mismatches:
        raise ValueError(
            f"the saved state of {name} does not fit this model's parameters ({'; '.join(mismatches[:3])}"
            f"{'; ...' if len(mismatches) > 3 else ''}): it was saved for networks of other sizes"
        )


def _with_params(state_dict: dict[str, Any], state: dict[int, Any], n_params: int) -> dict[str, Any]:
    if len(state_dict["param_groups"]) != 1:
        raise ValueError("only optimizers with one parameter group can be converted between critic layouts")
    group = {**state_dict["param_groups"][0], "params": list(range(n_params))}
    group.pop("param_names", None)
    return {"state": state, "param_groups": [group]}


def _stacked_to_per_network(module: BatchedCriticMixin, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: the stacked parameters under the separate networks' keys."""
    for stacked_key, key, net in module._key_pairs(prefix):
        state_dict[key] = state_dict[stacked_key][net]
    for stacked_key, _, _ in module._key_pairs(prefix):
        state_dict.pop(stacked_key, None)


def _per_network_to_stacked(
    module: BatchedCriticMixin,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """load_state_dict pre-hook: the separate networks' keys (``qf0.0.weight`` ...) stacked into ``q_net``'s."""
    pairs = module._key_pairs(prefix)
    if not all(key in state_dict for _, key, _ in pairs):
        return  # already stacked, or incomplete: load_state_dict reports the missing keys
    stacked: dict[str, list[th.Tensor]] = {}
    for stacked_key, key, _ in pairs:
        stacked.setdefault(stacked_key, []).append(state_dict.pop(key))
    state_dict.update({key: th.stack(values) for key, values in stacked.items()})


class BatchedContinuousCritic(BatchedCriticMixin, ContinuousCritic):
    """
    SB3's ``ContinuousCritic`` with its ``n_critics`` Q-networks evaluated as one batched network
    (:class:`BatchedMLP`); same arguments, same outputs, same state-dict keys.

    :param observation_space: Observation space
    :param action_space: Action space (Box)
    :param net_arch: Network architecture of each Q-network
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param n_critics: Number of Q-networks
    :param share_features_extractor: Whether the features extractor is shared with the actor
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._batch_q_networks()

    def all_q_values(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """Every critic's Q(s, a), shape (n_critics, batch, 1)."""
        with th.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        return self.q_net(th.cat([features, actions], dim=1))

    def forward(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, ...]:  # type: ignore[override]
        return tuple(self.all_q_values(obs, actions).unbind(0))

    def q1_forward(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        with th.no_grad():
            features = self.extract_features(obs, self.features_extractor)
        return self.q_net(th.cat([features, actions], dim=1))[0]


class BatchedDiscreteCritic(BatchedCriticMixin, DiscreteCritic):
    """
    :class:`DiscreteCritic` with its ``n_critics`` Q-networks evaluated as one batched network
    (:class:`BatchedMLP`); same arguments, same outputs, same state-dict keys.

    :param observation_space: Observation space
    :param action_space: Action space (Discrete)
    :param net_arch: Network architecture of each Q-network
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param n_critics: Number of Q-networks
    :param share_features_extractor: Whether the features extractor is shared with the actor
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._batch_q_networks()

    def all_q_values(self, obs: PyTorchObs) -> th.Tensor:
        """Every critic's Q(s, ·), shape (n_critics, batch, n_actions)."""
        with th.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        return self.q_net(features)

    def forward(self, obs: PyTorchObs) -> tuple[th.Tensor, ...]:
        return tuple(self.all_q_values(obs).unbind(0))
