"""
Per-sample policy gradients of CVPG's estimator, for η chosen against the variance of the whole gradient
(``eta="min_variance"``, :func:`sb3_pgext.common.estimators.min_variance_eta`): ∇_θ log π_θ(a_i|s_i) and the
analytic term's ∇_θ S_i of each sample, with ``torch.func`` (``vmap`` of ``jacrev``) over the policy's parameters.
"""

import warnings
from typing import TYPE_CHECKING

import torch as th
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_pgext.common.utils import index_observations

if TYPE_CHECKING:
    from sb3_pgext.cvpg.cvpg import CVPG


class _LogProbAndAnalyticTerm(nn.Module):
    """
    log π_θ(a|s) and the analytic term S(θ) of one sample from the policy's features, as a module of the policy's
    parameters (for ``torch.func``). It goes from the features to the distribution as SB3's
    ``ActorCriticPolicy.get_distribution`` does, through the private ``_get_action_dist_from_latent`` (no public
    method starts from the features); ``tests/test_cvpg.py::test_per_sample_gradients_follow_get_distribution``
    fails when SB3 changes that path.
    """

    def __init__(self, model: "CVPG"):
        super().__init__()
        self.policy = model.policy
        self.model = model

    def forward(self, features: th.Tensor, obs: PyTorchObs, actions: th.Tensor, constants: th.Tensor) -> th.Tensor:
        distribution = self.policy._get_action_dist_from_latent(self.policy.mlp_extractor.forward_actor(features))
        if self.model.control_variate == "reparameterization":  # the noise ξ is drawn outside (vmap draws none)
            normal = distribution.distribution
            analytic = self.model.q_critic(obs, normal.mean + normal.stddev * constants)  # type: ignore[misc]
        else:
            analytic = self.model.analytic_term(obs, constants, distribution)
        return th.stack([distribution.log_prob(actions).sum(), analytic.sum()])


def _per_sample_parameters(model: "CVPG", terms: nn.Module) -> dict[str, th.Tensor]:
    """The parameters the per-sample gradients are over: the policy's, less its features extractor's and V's."""
    policy = model.policy
    left_out = {id(param) for param in policy.pi_features_extractor.parameters()}
    for module in (policy.value_net, getattr(policy.mlp_extractor, "value_net", None)):  # V's, unused by π
        left_out |= {id(param) for param in (module.parameters() if module is not None else [])}
    return {name: param.detach() for name, param in terms.named_parameters() if param.requires_grad and id(param) not in left_out}


def per_sample_gradient_size(model: "CVPG") -> int:
    """The length of each per-sample gradient :func:`per_sample_gradients` returns."""
    return sum(param.numel() for param in _per_sample_parameters(model, _LogProbAndAnalyticTerm(model)).values())


def per_sample_gradients(
    model: "CVPG", obs: PyTorchObs, actions: th.Tensor, constants: th.Tensor | None
) -> tuple[th.Tensor, th.Tensor]:
    """
    ∇_θ log π_θ(a_i|s_i) and ∇_θ S_i (the analytic term, :meth:`~sb3_pgext.cvpg.cvpg.CVPG.analytic_term`) of each
    sample, over the policy's parameters from its features to its action distribution (the actor's MLP, its action
    head, ``log_std``): two tensors of shape (n, :func:`per_sample_gradient_size`), computed with ``torch.func``
    (``vmap`` of ``jacrev``). The features extractor's parameters (none for ``MlpPolicy``; a CNN's, large, for
    images) are left out.

    :param model: the CVPG model
    :param obs: the samples' observations (policy input, batch first)
    :param actions: their actions, as the policy's distribution takes them
    :param constants: the analytic term's constants of the samples (``CVPG._control_variate``; None for
        "reparameterization", whose noise is drawn here)
    """
    policy = model.policy
    terms = _LogProbAndAnalyticTerm(model)
    params = _per_sample_parameters(model, terms)
    with th.no_grad():
        features = policy.extract_features(obs, policy.pi_features_extractor)
    if model.control_variate == "reparameterization":  # the noise of a = μ_θ + σ_θ ξ, one draw per sample
        constants = th.randn(len(actions), get_action_dim(model.action_space), device=actions.device)
    assert constants is not None, "the other control variates have constants"

    names = list(params)
    shapes, sizes = [params[name].shape for name in names], [params[name].numel() for name in names]
    flat_params = th.cat([params[name].flatten() for name in names])  # one vector: each sample's rows come out whole

    def per_sample(flat: th.Tensor, features: th.Tensor, obs: PyTorchObs, action: th.Tensor, constant: th.Tensor) -> th.Tensor:
        pieces = {name: piece.view(shape) for name, piece, shape in zip(names, flat.split(sizes), shapes)}
        one = {key: value.unsqueeze(0) for key, value in obs.items()} if isinstance(obs, dict) else obs.unsqueeze(0)
        return th.func.functional_call(terms, pieces, (features.unsqueeze(0), one, action.unsqueeze(0), constant.unsqueeze(0)))

    jacobian = th.func.jacrev(per_sample)
    if not model._per_sample_gradients_loop:
        try:
            rows = th.func.vmap(jacobian, in_dims=(None, 0, 0, 0, 0))(flat_params, features, obs, actions, constants)
        except RuntimeError as error:  # an operation vmap does not batch
            warnings.warn(
                f"per-sample gradients with torch.func.vmap failed for this policy ({error}); they are computed one sample at a time"
            )
            model._per_sample_gradients_loop = True
    if model._per_sample_gradients_loop:
        rows = th.stack(
            [jacobian(flat_params, features[i], index_observations(obs, i), actions[i], constants[i]) for i in range(len(actions))]
        )
    return rows[:, 0], rows[:, 1]
