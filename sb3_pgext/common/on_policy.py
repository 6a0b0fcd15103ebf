"""The PPO-family base: SB3's PPO with an update loop made of overridable pieces."""

import copy
import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_pgext.common.buffers import (
    BatchIndicesMixin,
    TimeLeftDictRolloutBuffer,
    TimeLeftMixin,
    TimeLeftRolloutBuffer,
    flat_actions,
    flat_array,
    flat_observations,
    set_flat,
    with_batch_indices,
)
from sb3_pgext.common.compat import LegacyLoadMixin
from sb3_pgext.common.gradient_variance import GradientVarianceMixin, gradient_variance
from sb3_pgext.common.horizon import HorizonAwareValueHead, horizon_aware_value, horizon_weight, use_horizon_aware_value
from sb3_pgext.common.kl import (
    DistributionParams,
    adapt_kl_coef,
    analytic_kl,
    mean_kl_from_fixed,
    sampled_kl,
    validate_kl_penalty_args,
)
from sb3_pgext.common.finite import FiniteTransitionCheck, check_finite_loss
from sb3_pgext.common.save_util import AtomicSaveMixin
from sb3_pgext.common.utils import index_observations, with_callbacks

# States per forward pass when the whole rollout goes through the policy at once (KL bookkeeping)
_FULL_ROLLOUT_CHUNK = 2048


class _TimeLeftCallback(BaseCallback):
    """
    Records T − t, the steps left in its episode, for each observation the rollout stores: t is read from the
    envs' ``TimeLimit`` at the start of each rollout and counted on from there.
    """

    model: "PPOBase"

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


class PPOBase(AtomicSaveMixin, LegacyLoadMixin, GradientVarianceMixin, PPO):
    """
    Base of the PPO family (PPOKL, CVPG): SB3's :class:`~stable_baselines3.PPO` whose ``train()`` owns
    the epoch / minibatch loop, the gradient clipping, SB3's ``target_kl`` early stop and the logging,
    and builds each minibatch's loss from pieces a subclass may override:

    - :meth:`_begin_update` / :meth:`_end_update`, once per rollout;
    - :meth:`_policy_loss`, the surrogate: PPO's clipped ratio (``clip_range`` a float) or the plain
      importance-weighted advantage (``clip_range=None``), plus an optional KL penalty
      β · KL(π_old ‖ π_θ) with β fixed or adapted (Schulman et al. 2017, section 4);
    - :meth:`_after_gradient_step`, after each optimizer step.

    With ``clip_range`` a float and the KL penalty off (``kl_coef=0``, ``adaptive_kl=False``,
    ``kl_hinge_coef=0``), training is bit-identical to SB3's PPO with the same seed.

    The arguments are those of :class:`~stable_baselines3.PPO` and of :class:`sb3_pgext.PPOKL`,
    whose docstring describes them; the base's defaults turn the penalty off.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }
    loadable_policies = (ActorCriticPolicy,)

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule | None = 0.2,
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
        kl_coef: float = 0.0,
        kl_target: float = 0.01,
        adaptive_kl: bool = False,
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
        validate_kl_penalty_args(
            kl_coef, kl_target, adaptive_kl, kl_update, kl_coef_bounds, kl_hinge_coef, kl_estimator, kl_direction
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
        # The rollout buffer records its minibatch indices, for per-sample data such as π_old's
        # parameters; the user's (or SB3's default) class is kept as the saved setting.
        buffer_class = self.rollout_buffer_class
        if buffer_class is None:
            buffer_class = DictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else RolloutBuffer
        if self.horizon_aware_value:  # the samples carry the time left in the episode
            buffer_class = {RolloutBuffer: TimeLeftRolloutBuffer, DictRolloutBuffer: TimeLeftDictRolloutBuffer}.get(
                buffer_class, buffer_class
            )
            if not issubclass(buffer_class, TimeLeftMixin):
                raise ValueError(
                    f"rollout_buffer_class must subclass TimeLeftRolloutBuffer with horizon_aware_value=True, got {buffer_class.__name__}"
                )
        user_buffer_class, self.rollout_buffer_class = self.rollout_buffer_class, with_batch_indices(buffer_class)
        # PPO wraps clip_range in a schedule; None (no clipping) is this family's own setting
        clip_range = self.clip_range
        if clip_range is None:
            self.clip_range = 0.0  # type: ignore[assignment]
        super()._setup_model()
        self.rollout_buffer_class = user_buffer_class
        if clip_range is None:
            self.clip_range = None  # type: ignore[assignment]
        self._old_params: DistributionParams | None = None
        self._last_minibatch_kl = th.zeros(())
        self._train_logs: dict[str, list[float]] = defaultdict(list)
        self._elapsed_steps: np.ndarray | None = None
        if self.horizon_aware_value:
            use_horizon_aware_value(self.policy)
            if self.env is not None:
                self._time_limits = _time_limits(self.env)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_old_params", "_last_minibatch_kl", "_train_logs", "_elapsed_steps"]

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        if self.horizon_aware_value:
            self._time_limits = _time_limits(self.env)  # type: ignore[arg-type]

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """SB3's callback, after the family's own for the rollout (:meth:`_rollout_callbacks`)."""
        return super()._init_callback(with_callbacks(self._rollout_callbacks(), callback), progress_bar)

    def _rollout_callbacks(self) -> list[BaseCallback]:
        """
        Callbacks the algorithm needs during collection: the check that what enters the rollout buffer is finite,
        and the time left in the episode for a horizon-aware value.
        """
        return [FiniteTransitionCheck(), *([_TimeLeftCallback()] if self.horizon_aware_value else [])]

    @property
    def penalty_active(self) -> bool:
        """Whether the KL penalty takes part in the loss."""
        return self.kl_coef > 0 or self.adaptive_kl or self.kl_hinge_coef > 0

    def _tracks_kl(self) -> bool:
        """Whether the KL between the rollout policy and the updated policy is measured and logged."""
        return self.penalty_active

    # ------------------------------------------------------------------ the update loop

    def train(self) -> None:
        """Update the policy (and value function) on the rollout buffer; see the class docstring."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = None if self.clip_range is None else self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        self._train_logs = defaultdict(list)
        if self.horizon_aware_value:
            self._horizon_aware_returns()
        self._begin_update()
        if self.log_grad_var:  # on the rollout, at the parameters that collected it
            self._train_logs["grad_var"] = [gradient_variance(self)["variance"]]
        # the parameters to clip, listed once per update rather than walking the modules every step
        parameters = list(self.policy.parameters())

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                loss, log_prob = self._minibatch_loss(rollout_data, clip_range, clip_range_vf)
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
                self._after_gradient_step()

            self._n_updates += 1
            if not continue_training:
                break

        self._train_logs["approx_kl"] = approx_kl_divs  # SB3 logs the last epoch's mean
        self._train_logs["loss"] = [loss.item()]
        self._end_update()
        self._record_train_logs(clip_range, clip_range_vf)

    def _minibatch_loss(
        self,
        rollout_data: RolloutBufferSamples,
        clip_range: float | None,
        clip_range_vf: float | None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        PPO's loss on one minibatch: surrogate + ent_coef · entropy loss + vf_coef · value loss.

        :param rollout_data: the minibatch
        :param clip_range: current clip range (None: no clipping)
        :param clip_range_vf: current value clip range (None: no clipping)
        :return: the loss and log π_θ(a|s) of the minibatch's actions
        """
        actions = self._prepare_actions(rollout_data.actions)
        values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
        # evaluate_actions leaves the minibatch's distribution in policy.action_dist
        distribution = self.policy.action_dist
        values = values.flatten()
        if self.horizon_aware_value:  # V'(s) + (Σ γ^i) r̂(s), with the samples' time left
            values = self._with_horizon(values, rollout_data.time_left)  # type: ignore[attr-defined]
        advantages = rollout_data.advantages
        # Normalization does not make sense if mini batchsize == 1, see GH issue #325
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # ratio between old and new policy, should be one at the first iteration
        ratio = th.exp(log_prob - rollout_data.old_log_prob)
        policy_loss = self._policy_loss(rollout_data, advantages, ratio, log_prob, distribution, clip_range)

        if clip_range_vf is None:
            values_pred = values
        else:
            # Clip the difference between old and new value (depends on the reward scaling)
            values_pred = rollout_data.old_values + th.clamp(values - rollout_data.old_values, -clip_range_vf, clip_range_vf)
        value_loss = F.mse_loss(rollout_data.returns, values_pred)
        self._train_logs["value_loss"].append(value_loss.item())

        # Approximate the entropy when it has no closed form
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        self._train_logs["entropy_loss"].append(entropy_loss.item())

        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return loss, log_prob

    def _policy_loss(
        self,
        rollout_data: RolloutBufferSamples,
        advantages: th.Tensor,
        ratio: th.Tensor,
        log_prob: th.Tensor,
        distribution: Any,
        clip_range: float | None,
    ) -> th.Tensor:
        """
        The surrogate to minimise: −Ê[min(r Â, clip(r, 1 ± ε) Â)] (or −Ê[r Â] without clipping),
        plus the KL penalty β · KL (and the hinge) when it is active.

        :param rollout_data: the minibatch
        :param advantages: its (normalised) advantages Â
        :param ratio: r = π_θ(a|s) / π_old(a|s)
        :param log_prob: log π_θ(a|s)
        :param distribution: the SB3 distribution π_θ(·|s) of the minibatch's states
        :param clip_range: ε, or None for no clipping
        :return: the policy loss
        """
        if clip_range is None:
            policy_loss = -(advantages * ratio).mean()
        else:
            policy_loss_1 = advantages * ratio
            policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
            policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
            self._train_logs["clip_fraction"].append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
        self._train_logs["policy_gradient_loss"].append(policy_loss.item())

        if self.penalty_active:
            kl = self._minibatch_kl(rollout_data, log_prob, distribution)
            self._last_minibatch_kl = kl.detach()
            policy_loss = th.add(policy_loss, kl, alpha=self.kl_coef)
            if self.kl_hinge_coef > 0:
                # modular_rl / Stein-PPO hinge: a steep extra cost for KL beyond 2 · d_targ
                policy_loss = policy_loss + self.kl_hinge_coef * F.relu(kl - 2.0 * self.kl_target).pow(2)
        return policy_loss

    def _after_gradient_step(self) -> None:
        """Called after each optimizer step; adapts β per minibatch when ``kl_update="minibatch"``."""
        if self.adaptive_kl and self.kl_update == "minibatch":
            kl = self._last_minibatch_kl.item()
            self.kl_coef = adapt_kl_coef(self.kl_coef, kl, self.kl_target, self.kl_coef_bounds)

    def _begin_update(self) -> None:
        """Called before the first epoch: keeps π_old's distribution parameters for an analytic KL."""
        self._old_params = None
        if self._tracks_kl() and self.kl_estimator == "analytic":
            self._old_params = self._rollout_distribution_params()
            if self._old_params is None:
                warnings.warn(
                    f"{type(self.policy.action_dist).__name__} has no closed-form KL here: "
                    "kl_estimator='analytic' falls back to the sampled 'k3' estimator",
                    stacklevel=2,
                )

    def _end_update(self) -> None:
        """Called after the last epoch: measures d = Ê[KL] over the rollout and adapts β per rollout."""
        if not self._tracks_kl():
            return
        kl = self._rollout_kl()
        self._train_logs["kl"] = [kl]
        if self.adaptive_kl and self.kl_update == "rollout":
            self.kl_coef = adapt_kl_coef(self.kl_coef, kl, self.kl_target, self.kl_coef_bounds)

    def _record_train_logs(self, clip_range: float | None, clip_range_vf: float | None) -> None:
        """Record SB3 PPO's ``train/`` keys, and ``train/kl``, ``train/kl_coef`` when the KL is tracked."""
        logs = self._train_logs
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
        if self._tracks_kl():
            self.logger.record("train/kl", logs["kl"][0])
            self.logger.record("train/kl_coef", self.kl_coef)

    # ------------------------------------------------------------------ horizon-aware value function

    def _with_horizon(self, values: th.Tensor, time_left: th.Tensor) -> th.Tensor:
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
        return self._with_horizon(values, time_left) if self.horizon_aware_value else values

    @th.no_grad()
    def _horizon_aware_returns(self) -> None:
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
        for obs, chunk in self._rollout_chunks():
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

    # ------------------------------------------------------------------ measured gradient variance

    def _pg_parameters(self) -> list[th.nn.Parameter]:
        return [param for param in self.policy.parameters() if param.requires_grad]

    def _pg_minibatches(self, n_minibatches: int) -> Iterator[RolloutBufferSamples]:
        """
        ``n_minibatches`` disjoint minibatches of the rollout the model last trained on, drawn from a shallow
        copy of the buffer, so that the buffer's layout and recorded indices stay as they were.
        """
        if not self.rollout_buffer.full:
            raise ValueError(
                "gradient_variance measures the policy gradient on the rollout the model last collected, and this "
                "model has none (it is new or was just loaded): train it first, or pass log_grad_var=True to the "
                "constructor to measure it at every update, the first one included"
            )
        n_samples = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs
        minibatch_size = n_samples // n_minibatches
        if minibatch_size < 1:
            raise ValueError(f"n_minibatches={n_minibatches} exceeds the rollout's {n_samples} samples")
        for index, rollout_data in enumerate(copy.copy(self.rollout_buffer).get(minibatch_size)):
            if index == n_minibatches:
                break  # the remainder, when the rollout does not split evenly
            yield rollout_data

    def _pg_surrogate(self, rollout_data: RolloutBufferSamples, control_variate: bool) -> th.Tensor:
        """−mean[log π_θ(a|s) Â] (raw advantages); without the control variate Â + V(s), the returns."""
        actions = self._prepare_actions(rollout_data.actions)
        _, log_prob, _ = self.policy.evaluate_actions(rollout_data.observations, actions)
        weights = rollout_data.advantages if control_variate else rollout_data.returns
        return -(log_prob * weights).mean()

    # ------------------------------------------------------------------ KL bookkeeping

    def _prepare_actions(self, actions: th.Tensor) -> th.Tensor:
        """The buffer stores actions as float; Discrete ones are indices."""
        if isinstance(self.action_space, spaces.Discrete):
            return actions.long().flatten()
        return actions

    def _minibatch_kl(self, rollout_data: RolloutBufferSamples, log_prob: th.Tensor, distribution: Any) -> th.Tensor:
        """
        Mean KL between π_old and π_θ over a minibatch, in ``kl_direction``, differentiable in θ.

        Closed form when π_old's parameters were kept, else the sampled ``kl_estimator``.
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

    def _rollout_chunks(self):  # type: ignore[no-untyped-def]
        """
        Yield (observations, slice) over the whole rollout in the order ``get()`` indexes it, with the
        policy in evaluation mode (as when the rollout's log-probabilities were computed); the policy's
        mode is restored afterwards.
        """
        observations = flat_observations(self.rollout_buffer)
        n_samples = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs
        training = self.policy.training
        self.policy.set_training_mode(False)
        try:
            for start in range(0, n_samples, _FULL_ROLLOUT_CHUNK):
                chunk = slice(start, start + _FULL_ROLLOUT_CHUNK)
                yield obs_as_tensor(index_observations(observations, chunk), self.device), chunk  # type: ignore[arg-type]
        finally:
            self.policy.set_training_mode(training)

    @th.no_grad()
    def _rollout_distribution_params(self) -> DistributionParams | None:
        """The current policy's distribution parameters for every state of the rollout (None: no closed form)."""
        parts = []
        for obs, _ in self._rollout_chunks():
            params = DistributionParams.capture(self.policy.get_distribution(obs))
            if params is None:
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
        for obs, chunk in self._rollout_chunks():
            chunk_actions = self._prepare_actions(self.rollout_buffer.to_torch(actions[chunk].astype(np.float32)))
            log_probs.append(self.policy.get_distribution(obs).log_prob(chunk_actions))
        log_ratio = th.cat(log_probs) - old_log_prob
        return sampled_kl(log_ratio, self._sampled_estimator, self.kl_direction).mean().item()  # type: ignore[arg-type]


def _time_limits(env: VecEnv) -> np.ndarray:
    """T of each env, from its ``TimeLimit``; a ValueError when an env has none."""
    try:
        return np.array(env.get_attr("_max_episode_steps"), dtype=np.int64)
    except AttributeError:
        raise ValueError(
            "horizon_aware_value=True needs episodes with a time limit: wrap the env in gymnasium's TimeLimit "
            "(gym.make(..., max_episode_steps=...))"
        ) from None
