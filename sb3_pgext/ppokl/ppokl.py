"""
PPOKL: PPO with an adaptive (or fixed) KL penalty, with or without clipping (Schulman et al. 2017, section 4).

The PPO update is written once in this package, here: :meth:`PPOKL.update_policy` is SB3's ``PPO.train`` with the
KL penalty added. With ``clip_range`` a float and the penalty off (``kl_coef=0``, ``adaptive_kl=False``,
``kl_hinge_coef=0``) it trains bit for bit as SB3's PPO with the same seed: ``tests/test_ppokl.py``'s bit-identity
tests hold it, and fail when SB3's PPO changes. CVPG subclasses PPOKL: it prepares its control variate before the
update and changes a minibatch's loss in the two places the loop names (:meth:`PPOKL._surrogate_advantages` and
:meth:`PPOKL._control_variate_loss`).
"""

import warnings
from collections import defaultdict
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_pgext.common.arguments import check_choice, check_number
from sb3_pgext.common.buffers import BatchIndicesMixin, flat_actions, policy_actions, rollout_chunks, with_batch_indices
from sb3_pgext.common.compat import CheckedLoadMixin
from sb3_pgext.common.finite import FiniteTransitionCheck, check_finite_loss
from sb3_pgext.common.gradient_variance import gradient_variance
from sb3_pgext.common.horizon import HorizonAwareValueMixin, TimeLeftCallback
from sb3_pgext.common.kl import (
    KL_DIRECTIONS,
    KL_ESTIMATORS,
    KL_UPDATES,
    DistributionParams,
    adapt_kl_coef,
    analytic_kl,
    mean_kl_from_fixed,
    sampled_kl,
)
from sb3_pgext.common.save_util import AtomicSaveMixin
from sb3_pgext.common.utils import with_callbacks
from sb3_pgext.ppokl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

SelfPPOKL = TypeVar("SelfPPOKL", bound="PPOKL")


def kl_penalty(kl: th.Tensor, kl_coef: float, kl_hinge_coef: float, kl_target: float) -> th.Tensor:
    """
    The penalty added to the surrogate loss: β · KL (Schulman et al. 2017, section 4), plus the hinge
    kl_hinge_coef · max(0, KL − 2 d_targ)² of modular_rl and Stein-PPO, a steep extra cost beyond 2 d_targ.

    :param kl: the minibatch's mean KL between π_old and π_θ, differentiable in θ
    :param kl_coef: β
    :param kl_hinge_coef: the hinge's coefficient (0: no hinge)
    :param kl_target: d_targ
    """
    penalty = kl_coef * kl
    if kl_hinge_coef > 0:
        penalty = penalty + kl_hinge_coef * F.relu(kl - 2.0 * kl_target).pow(2)
    return penalty


class PPOKL(HorizonAwareValueMixin, AtomicSaveMixin, CheckedLoadMixin, PPO):
    """
    Proximal Policy Optimization with an adaptive (or fixed) KL penalty, with or without clipping.

    Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", section 4
    (https://arxiv.org/abs/1707.06347). The loss is::

        L(θ) = Ê[ r_t(θ) Â_t − β · KL(π_old(·|s_t) ‖ π_θ(·|s_t)) ] + c_ent H − c_vf L_V,
        r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t),

    and after each policy update d = Ê[KL] over the rollout adapts β: d < d_targ / 1.5 halves it,
    d > 1.5 · d_targ doubles it. ``clip_range=None`` (default) is the paper's penalty-only PPO; a
    float replaces r_t Â_t by PPO's clipped term (clip + penalty, RLlib's default). The current β is
    ``model.kl_coef``; it is saved with the model, so a loaded model resumes with the adapted β.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (the rollout buffer holds n_steps * n_envs transitions)
    :param batch_size: Minibatch size
    :param n_epochs: Number of epochs when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: PPO's clipping parameter ε (a float or a schedule of the progress remaining),
        or None (default) for no clipping: the paper's KL-penalty-only surrogate Ê[r_t Â_t]
    :param clip_range_vf: Clipping parameter for the value function (None: no clipping), as in PPO
    :param normalize_advantage: Whether to normalize the advantages
    :param ent_coef: Entropy coefficient c_ent for the loss calculation
    :param vf_coef: Value function coefficient c_vf for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param rollout_buffer_class: Rollout buffer class to use (None: chosen from the observation space)
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: SB3's early stop, unchanged: stop the epochs of an update once the minibatch
        estimate of the KL exceeds 1.5 · target_kl (None: no early stop). Independent of ``kl_target``.
    :param kl_coef: Initial penalty coefficient β (the paper starts at 1). Must be >= 0.
    :param kl_target: Target KL d_targ of the adaptive rule and of the hinge (the paper's 0.01). Must be > 0.
    :param adaptive_kl: Adapt β with the paper's rule (True) or keep ``kl_coef`` fixed (False)
    :param kl_update: When β is adapted: "rollout" (once per update, on d measured over the whole
        rollout after the update; the paper's choice) or "minibatch" (after each gradient step, on the
        minibatch's KL; TorchRL's ``KLPENPPOLoss``)
    :param kl_coef_bounds: (low, high) bounds β is kept inside by the adaptive rule, 0 <= low < high
    :param kl_hinge_coef: Coefficient of the hinge term kl_hinge_coef · max(0, KL − 2 d_targ)² added to
        the loss (modular_rl, Stein-PPO); 0 (default) turns it off
    :param kl_estimator: How KL is computed: "analytic" (closed form for SB3's Gaussian incl. gSDE
        and squashed, Categorical, MultiCategorical and Bernoulli distributions, falling back to "k3"
        for a distribution with none), "k1" or "k3" (sampled estimators on the taken actions,
        see :func:`sb3_pgext.common.kl.sampled_kl`)
    :param kl_direction: "forward" for KL(π_old ‖ π_θ) (the paper's, default) or "reverse" for KL(π_θ ‖ π_old)
    :param log_grad_var: Log ``train/grad_var`` each update: the variance of the policy-gradient
        estimator measured on the rollout (see :func:`sb3_pgext.gradient_variance`)
    :param horizon_aware_value: Use Tucker et al.'s horizon-aware value function (2018, section 6,
        https://arxiv.org/abs/1802.10031): V(s_t) = (Σ_{i=t}^{T−1} γ^{i−t}) r̂(s_t) + V'(s_t), with T the env's
        ``TimeLimit`` and t the episode's step, read during collection; the value network gets a second
        output r̂ (initialised to zero). Needs envs with a time limit (see :mod:`sb3_pgext.common.horizon`).
        The time left assumes the episode runs to T: on envs that end early (Hopper-v5) it overstates the
        rest of the episode, and it measured worse than the plain value function there (docs: gradient variance)
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run ("auto": the GPU if possible)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    accepted_policy_classes = (ActorCriticPolicy,)
    accepted_files = "files saved by PPOKL, or by SB3's PPO to warm-start from"

    def __init__(
        self,
        policy: str | type[MlpPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule | None = None,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        kl_coef: float = 1.0,
        kl_target: float = 0.01,
        adaptive_kl: bool = True,
        kl_update: str = "rollout",
        kl_coef_bounds: tuple[float, float] = (1e-4, 1e4),
        kl_hinge_coef: float = 0.0,
        kl_estimator: str = "analytic",
        kl_direction: str = "forward",
        log_grad_var: bool = False,
        horizon_aware_value: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # a single gradient step per rollout (CVPG's vanilla surrogate) needs no trust region
        one_step = n_epochs == 1 and batch_size >= n_steps * (env.num_envs if isinstance(env, VecEnv) else 1)
        _check_arguments(
            kl_coef, kl_target, adaptive_kl, kl_update, kl_coef_bounds, kl_hinge_coef, kl_estimator, kl_direction, clip_range, one_step
        )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,  # type: ignore[arg-type]
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.kl_coef = float(kl_coef)
        self.kl_target = kl_target
        self.adaptive_kl = adaptive_kl
        self.kl_update = kl_update
        self.kl_coef_bounds = (float(kl_coef_bounds[0]), float(kl_coef_bounds[1]))
        self.kl_hinge_coef = kl_hinge_coef
        self.kl_estimator = kl_estimator
        self.kl_direction = kl_direction
        self.log_grad_var = log_grad_var
        self.horizon_aware_value = horizon_aware_value

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        # The rollout buffer records its minibatch indices (π_old's parameters are indexed with them for the closed-form
        # KL) and, for a horizon-aware value, each sample's time left; the user's (or SB3's default) class is what is saved.
        buffer_class = self.rollout_buffer_class
        if buffer_class is None:
            buffer_class = DictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else RolloutBuffer
        if self.horizon_aware_value:
            buffer_class = self.time_left_buffer_class(buffer_class)
        user_buffer_class, self.rollout_buffer_class = self.rollout_buffer_class, with_batch_indices(buffer_class)
        # PPO wraps clip_range in a schedule; None (no clipping) is PPOKL's own setting
        clip_range = self.clip_range
        if clip_range is None:
            self.clip_range = 0.0  # type: ignore[assignment]
        super()._setup_model()
        self.rollout_buffer_class = user_buffer_class
        if clip_range is None:
            self.clip_range = None  # type: ignore[assignment]
        self._old_params: DistributionParams | None = None
        self.setup_horizon_aware_value()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_old_params"]

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """SB3's callback, after the algorithm's own for collection (:meth:`_collection_callbacks`)."""
        return super()._init_callback(with_callbacks(self._collection_callbacks(), callback), progress_bar)

    def _collection_callbacks(self) -> list[BaseCallback]:
        """
        Callbacks the algorithm needs during collection: the check that what enters the rollout buffer is finite,
        and the time left in the episode for a horizon-aware value.
        """
        return [FiniteTransitionCheck(), *([TimeLeftCallback()] if self.horizon_aware_value else [])]

    @property
    def penalty_active(self) -> bool:
        """Whether the KL penalty takes part in the loss."""
        return self.kl_coef > 0 or self.adaptive_kl or self.kl_hinge_coef > 0

    @property
    def measures_kl(self) -> bool:
        """
        Whether d = Ê[KL] between π_old and π_θ is measured over the rollout after each update and logged
        (``train/kl``, ``train/kl_coef``): always for PPOKL, also with the penalty off.
        """
        return True

    # ------------------------------------------------------------------ the update

    def train(self) -> None:
        """PPOKL's update: the rollout's values and GAE again with the horizon-aware value (when used), then :meth:`update_policy`."""
        if self.horizon_aware_value:  # V(s) with each sample's time left, at the parameters that collected the rollout
            self.recompute_horizon_aware_returns()
        self.update_policy()

    def update_policy(self) -> None:
        """
        PPO's epochs of minibatch steps on the rollout buffer (SB3's ``PPO.train``) with the KL penalty, and β's rule
        after the update (or after each step); logs SB3 PPO's ``train/`` keys and ``train/kl``, ``train/kl_coef``.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = None if self.clip_range is None else self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        logs: dict[str, list[float]] = defaultdict(list)
        # π_old's distribution parameters over the rollout, for the closed-form KL (None: the sampled estimator)
        self._old_params = None
        if self.measures_kl and self.kl_estimator == "analytic":
            self._old_params = self._rollout_distribution_params()
        if self.log_grad_var:  # on the rollout, at the parameters that collected it
            logs["grad_var"] = [gradient_variance(self)["variance"]]
        parameters = list(self.policy.parameters())  # listed once per update rather than walking the modules every step

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = policy_actions(rollout_data.actions, self.action_space)  # Discrete: indices
                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                distribution = self.policy.action_dist  # π_θ(·|s) of the minibatch, where evaluate_actions leaves it
                values = values.flatten()
                if self.horizon_aware_value:  # V'(s) + (Σ γ^i) r̂(s), with the samples' time left
                    values = self.with_horizon(values, rollout_data.time_left)  # type: ignore[attr-defined]

                # Â (CVPG: Â − ηĀ), normalized per minibatch (not with a minibatch of one, see SB3 issue #325)
                advantages = surrogate_advantages = self._surrogate_advantages(rollout_data)
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # the surrogate: PPO's clipped ratio, or the plain importance-weighted advantage without clipping
                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                if clip_range is None:
                    policy_loss = -(advantages * ratio).mean()
                else:
                    policy_loss_1 = advantages * ratio
                    policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                    policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
                    logs["clip_fraction"].append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                logs["policy_gradient_loss"].append(policy_loss.item())

                # the KL penalty β · KL(π_old ‖ π_θ) on the minibatch (+ the hinge)
                if self.penalty_active:
                    kl = self._minibatch_kl(rollout_data, log_prob, distribution)
                    policy_loss = policy_loss + kl_penalty(kl, self.kl_coef, self.kl_hinge_coef, self.kl_target)
                # CVPG: minus η times its control variate's analytic term
                control_variate_loss = self._control_variate_loss(rollout_data, surrogate_advantages, ratio, distribution, clip_range)
                if control_variate_loss is not None:
                    policy_loss = policy_loss + control_variate_loss

                if clip_range_vf is None:
                    values_pred = values
                else:  # clip the difference between old and new value (depends on the reward scaling)
                    values_pred = rollout_data.old_values + th.clamp(values - rollout_data.old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                logs["value_loss"].append(value_loss.item())

                # the entropy bonus, approximated where it has no closed form
                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                logs["entropy_loss"].append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                where = f"in epoch {epoch + 1} of the update at step {self.num_timesteps}, before its step"
                check_finite_loss(type(self).__name__, "loss", loss, where)

                # SB3's early stop: k3 estimate of KL(π_old ‖ π_θ) on the minibatch, see SB3 issue #417
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
                self.policy.optimizer.step()
                if self.penalty_active and self.adaptive_kl and self.kl_update == "minibatch":  # β's rule after each step
                    self.kl_coef = adapt_kl_coef(self.kl_coef, kl.item(), self.kl_target, self.kl_coef_bounds)

            self._n_updates += 1
            if not continue_training:
                break

        # d = Ê[KL] over the rollout after the update; β's rule: d < d_targ / 1.5 halves β, d > 1.5 · d_targ doubles it
        if self.measures_kl:
            logs["kl"] = [self._rollout_kl()]
            if self.adaptive_kl and self.kl_update == "rollout":
                self.kl_coef = adapt_kl_coef(self.kl_coef, logs["kl"][0], self.kl_target, self.kl_coef_bounds)

        logs["approx_kl"] = approx_kl_divs  # SB3 logs the last epoch's mean
        logs["loss"] = [loss.item()]
        for key in ("entropy_loss", "policy_gradient_loss", "value_loss", "approx_kl", "clip_fraction", "loss", "grad_var"):
            if logs[key]:
                self.logger.record(f"train/{key}", np.mean(logs[key]))
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if clip_range is not None:
            self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        if self.measures_kl:
            self.logger.record("train/kl", logs["kl"][0])
            self.logger.record("train/kl_coef", self.kl_coef)

    def _surrogate_advantages(self, rollout_data: RolloutBufferSamples) -> th.Tensor:
        """The advantages the surrogate weighs, before their normalization: the rollout's Â (CVPG: Â − ηĀ)."""
        return rollout_data.advantages

    def _control_variate_loss(
        self,
        rollout_data: RolloutBufferSamples,
        surrogate_advantages: th.Tensor,
        ratio: th.Tensor,
        distribution: Any,
        clip_range: float | None,
    ) -> th.Tensor | None:
        """
        A term added to the policy loss, given the minibatch's :meth:`_surrogate_advantages` before their normalization:
        none for PPOKL (CVPG: minus η times its control variate's analytic term).
        """
        return None

    # ------------------------------------------------------------------ the KL between π_old and π_θ

    def _minibatch_kl(self, rollout_data: RolloutBufferSamples, log_prob: th.Tensor, distribution: Any) -> th.Tensor:
        """
        Mean KL between π_old and π_θ over a minibatch, in ``kl_direction``, differentiable in θ: the closed form
        when π_old's parameters were kept, else the sampled ``kl_estimator`` on the taken actions.
        """
        if self._old_params is not None:
            assert isinstance(self.rollout_buffer, BatchIndicesMixin) and self.rollout_buffer.batch_inds is not None
            old_params = self._old_params[th.from_numpy(self.rollout_buffer.batch_inds).to(self.device)]
            new_params = DistributionParams.capture(distribution, detach=False)
            assert new_params is not None, "π_θ is of π_old's family"
            if self.kl_direction == "forward":
                return mean_kl_from_fixed(old_params, new_params)
            return self._analytic_kl(old_params, new_params).mean()
        log_ratio = log_prob - rollout_data.old_log_prob
        return sampled_kl(log_ratio, self._sampled_estimator, self.kl_direction).mean()  # type: ignore[arg-type]

    @property
    def _sampled_estimator(self) -> str:
        return "k3" if self.kl_estimator == "analytic" else self.kl_estimator

    def _analytic_kl(self, old: DistributionParams, new: DistributionParams) -> th.Tensor:
        return analytic_kl(old, new) if self.kl_direction == "forward" else analytic_kl(new, old)

    @th.no_grad()
    def _rollout_distribution_params(self) -> DistributionParams | None:
        """The current policy's distribution parameters for every state of the rollout (None, with a warning: no closed form)."""
        parts = []
        for obs, _ in rollout_chunks(self.rollout_buffer, self.policy, self.device):
            params = DistributionParams.capture(self.policy.get_distribution(obs))
            if params is None:
                warnings.warn(
                    f"{type(self.policy.action_dist).__name__} has no closed-form KL here: "
                    "kl_estimator='analytic' falls back to the sampled 'k3' estimator",
                    stacklevel=4,
                )
                return None
            parts.append(params)
        return DistributionParams.cat(parts)

    @th.no_grad()
    def _rollout_kl(self) -> float:
        """d = Ê[KL] between the rollout policy and the current policy over the whole rollout."""
        if self._old_params is not None:
            new_params = self._rollout_distribution_params()
            assert new_params is not None
            return self._analytic_kl(self._old_params, new_params).mean().item()
        actions = flat_actions(self.rollout_buffer)
        old_log_prob = th.as_tensor(self.rollout_buffer.log_probs.flatten(), device=self.device)
        log_probs = []
        for obs, chunk in rollout_chunks(self.rollout_buffer, self.policy, self.device):
            chunk_actions = policy_actions(self.rollout_buffer.to_torch(actions[chunk].astype(np.float32)), self.action_space)
            log_probs.append(self.policy.get_distribution(obs).log_prob(chunk_actions))
        log_ratio = th.cat(log_probs) - old_log_prob
        return sampled_kl(log_ratio, self._sampled_estimator, self.kl_direction).mean().item()  # type: ignore[arg-type]

    def learn(
        self: SelfPPOKL,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "PPOKL",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfPPOKL:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


def _check_arguments(
    kl_coef: float,
    kl_target: float,
    adaptive_kl: bool,
    kl_update: str,
    kl_coef_bounds: tuple[float, float],
    kl_hinge_coef: float,
    kl_estimator: str,
    kl_direction: str,
    clip_range: float | Schedule | None,
    one_step: bool,
) -> None:
    """
    ValueErrors for bad arguments that do not depend on the environment (see :mod:`sb3_pgext.common.arguments`).

    :param one_step: whether each update is one gradient step on the whole rollout (which needs no trust region)
    """
    check_number("kl_target", kl_target, low=0, low_open=True, why="the target KL d_targ")
    check_number("kl_coef", kl_coef, low=0, why="the initial penalty coefficient β")
    check_choice("kl_update", kl_update, KL_UPDATES)
    check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    check_choice("kl_direction", kl_direction, KL_DIRECTIONS)
    check_number("kl_hinge_coef", kl_hinge_coef, low=0, why="0 turns the hinge off")
    try:
        low, high = (float(bound) for bound in kl_coef_bounds)
    except (TypeError, ValueError):
        raise ValueError(f"kl_coef_bounds must be a pair (low, high) of numbers, got {kl_coef_bounds!r}") from None
    if not 0 <= low < high:
        raise ValueError(f"kl_coef_bounds must satisfy 0 <= low < high, got {kl_coef_bounds!r}")
    if adaptive_kl and not low <= kl_coef <= high:
        raise ValueError(
            f"kl_coef must lie inside kl_coef_bounds={kl_coef_bounds!r} when adaptive_kl=True, got {kl_coef}"
        )
    if adaptive_kl and kl_coef == 0:
        raise ValueError("kl_coef must be > 0 when adaptive_kl=True: the adaptive rule only multiplies β")
    if clip_range is None and kl_coef == 0 and not adaptive_kl and kl_hinge_coef == 0 and not one_step:
        raise ValueError(
            "clip_range=None with kl_coef=0 and adaptive_kl=False leaves no trust region at all: "
            "set clip_range to a float, kl_coef > 0, adaptive_kl=True or kl_hinge_coef > 0"
        )
