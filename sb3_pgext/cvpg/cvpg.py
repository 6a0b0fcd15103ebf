import io
import pathlib
import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import polyak_update
from torch import nn
from torch.nn import functional as F

from sb3_pgext.common.buffers import BatchIndicesMixin, flat_actions, flat_array, set_flat
from sb3_pgext.common.critics import DiscreteCritic
from sb3_pgext.common.gradient_variance import gradient_variance
from sb3_pgext.common.estimators import (
    centered_control_variate,
    qprop_eta,
    taylor_analytic_term,
    taylor_control_variate,
)
from sb3_pgext.common.on_policy import PPOBase
from sb3_pgext.common.utils import repeat_observations
from sb3_pgext.cvpg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

SelfCVPG = TypeVar("SelfCVPG", bound="CVPG")

CONTROL_VARIATES = ("auto", "none", "taylor", "reparameterization", "expected")
ETA_RULES = ("ones", "conservative", "aggressive")
SURROGATES = ("vanilla", "clip", "kl")
BASELINES = ("value", "mean", "none")


class _RolloutToReplay(BaseCallback):
    """Feeds each env step of the rollout into CVPG's replay buffer and keeps the rollout's last values."""

    model: "CVPG"

    def _on_step(self) -> bool:
        model, locals_ = self.model, self.locals
        if model.replay_buffer is not None:
            new_obs, dones, infos = locals_["new_obs"], locals_["dones"], locals_["infos"]
            next_obs = {k: v.copy() for k, v in new_obs.items()} if isinstance(new_obs, dict) else new_obs.copy()
            for idx, done in enumerate(dones):
                if done and infos[idx].get("terminal_observation") is not None:
                    terminal = infos[idx]["terminal_observation"]
                    if isinstance(next_obs, dict):
                        for key in next_obs:
                            next_obs[key][idx] = terminal[key]
                    else:
                        next_obs[idx] = terminal
            # the raw rewards (SB3 adds the truncation bootstrap only after this callback) and the
            # policy's own (unclipped) actions, the ones log π and the critic's Taylor expansion refer to
            model.replay_buffer.add(model._last_obs, next_obs, locals_["actions"], locals_["rewards"], dones, infos)
        return True

    def _on_rollout_end(self) -> None:
        self.model._rollout_end = (self.locals["values"], self.locals["dones"])


class CVPG(PPOBase):
    """
    Policy gradient with a Q-critic control variate (Q-Prop / Stein style), on the PPO-family base.

    Lecture notes seed 000 eq. 4.2.5–4.2.6 and seed 004 (Stein's identity); Gu et al. 2017, "Q-Prop:
    Sample-Efficient Policy Gradient with An Off-Policy Critic" (https://arxiv.org/abs/1611.02247);
    Liu et al. 2018, "Action-dependent Control Variates for Policy Optimization via Stein's Identity"
    (https://arxiv.org/abs/1710.11198). The estimator is

        ∇J ≈ (1/N) Σ ∇ log π(a|s) (Â(s,a) − η Ā(s,a))  +  (1/N) Σ η ∇_θ E_{a∼π_θ(s)}[ Q_w(s, a) ]

    with Â from the rollout (GAE with a value baseline, or the baselines below), Ā the part of an
    off-policy critic Q_w(s, a) that depends on the action, and η Q-Prop's weight. Q_w is learned on an
    SB3 ``ReplayBuffer`` fed with every rollout step, with an expected-SARSA target
    y = r + γ (1 − d) E_{a'∼π(s')}[Q_w̄(s', a')] and a Polyak-averaged target network, for
    ``qf_gradient_steps`` steps before each policy update; Ā and η are then computed once per rollout.
    The corrected advantage Â − ηĀ goes into the chosen surrogate (its per-minibatch normalisation
    also scales the analytic term, so the two stay consistent). With PPO's clipping, a sample's analytic
    term counts only while its ratio is inside [1 − ε, 1 + ε]: at θ_old that is every sample (the
    estimator above), and later epochs cannot follow the critic past the clipped trust region. The
    critic sees the action the env executes, Q_w(s, clip(a)) for Box actions, so its gradient never
    pushes the mean past the action bounds.

    With ``control_variate="none"``, ``surrogate="clip"`` and ``baseline="value"``, training is
    bit-identical to SB3's PPO with the same seed. The policy is SB3's ``ActorCriticPolicy``.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the policy and value function (a float or a schedule)
    :param n_steps: The number of steps to run for each environment per update
    :param batch_size: Minibatch size; None: 64, or the whole rollout for ``surrogate="vanilla"``
    :param n_epochs: Number of epochs of the surrogate; None: 10, or 1 for ``surrogate="vanilla"``
    :param gamma: Discount factor
    :param gae_lambda: GAE's λ for ``baseline="value"`` (λ = 1: Monte-Carlo returns minus V)
    :param control_variate: Ā and its analytic term: "none" (plain policy gradient with the baseline);
        "taylor" (Q-Prop: Ā = ∇_a Q_w(s, μ(s))ᵀ (a − μ(s)), analytic term ∇_a Q_w(s, μ)ᵀ ∇_θ μ_θ(s); Box);
        "reparameterization" (Stein, φ = Q_w: Ā = Q_w(s, a) − E_a' Q_w(s, a') estimated with
        ``n_cv_samples`` actions, analytic term through a = μ_θ(s) + σ_θ(s) ξ; Box without gSDE);
        "expected" (Ā = Q_w(s, a) − Σ_a' π(a'|s) Q_w(s, a'), exact analytic term Σ_a ∇π Q_w; Discrete);
        "auto" (default): "taylor" for Box, "expected" for Discrete
    :param eta: Q-Prop's weight η: "ones", "conservative" (1 if Ĉov(Â, Ā) > 0 over the rollout, else 0;
        default) or "aggressive" (sign of Ĉov(Â, Ā))
    :param surrogate: the objective the corrected advantage enters: "vanilla" (one policy-gradient
        step on the whole rollout), "clip" (PPO's clipped surrogate, default) or "kl" (PPOKL's KL
        penalty with the ``kl_*`` arguments below, no clipping unless ``clip_range`` is given)
    :param baseline: "value" (GAE with the value function, default), "mean" (reward-to-go minus its
        batch mean) or "none" (reward-to-go: REINFORCE). Reward-to-go is the discounted return from
        each step, bootstrapped with V where the rollout cuts an episode.
    :param clip_range: PPO's ε for ``surrogate="clip"`` (None: 0.2); with "kl", clip + penalty when given
    :param clip_range_vf: Clipping parameter for the value function (None: no clipping)
    :param normalize_advantage: Whether to normalize the (corrected) advantages per minibatch
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param rollout_buffer_class: Rollout buffer class to use (None: chosen from the observation space)
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: SB3 PPO's early stop on the minibatch KL (None: none)
    :param kl_coef: Initial β of the KL penalty (``surrogate="kl"``)
    :param kl_target: d_targ of the adaptive β (``surrogate="kl"``)
    :param adaptive_kl: Adapt β with PPO's rule (``surrogate="kl"``)
    :param kl_update: "rollout" or "minibatch": when β is adapted (``surrogate="kl"``)
    :param kl_coef_bounds: Bounds of β (``surrogate="kl"``)
    :param kl_hinge_coef: Coefficient of the hinge term beyond 2 d_targ (``surrogate="kl"``)
    :param kl_estimator: "analytic", "k1" or "k3" (``surrogate="kl"``)
    :param kl_direction: "forward" or "reverse" (``surrogate="kl"``)
    :param qf_learning_rate: learning rate of the Q critic's Adam optimizer
    :param qf_buffer_size: size of the Q critic's replay buffer
    :param qf_batch_size: minibatch size of the Q critic's updates
    :param qf_gradient_steps: Q critic updates before each policy update (each on a fresh replay sample)
    :param qf_tau: Polyak coefficient of the Q critic's target network, in (0, 1]
    :param qf_net_arch: hidden layers of the Q critic (None: [256, 256])
    :param n_cv_samples: actions per state estimating E_a' Q_w(s, a') for "reparameterization"
    :param log_grad_var: Log ``train/grad_var`` each update (see :func:`sb3_pgext.gradient_variance`), and
        ``train/grad_var_no_cv``, the same estimator's variance without the control variate on the same data
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

    def __init__(
        self,
        policy: str | type[MlpPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int | None = None,
        n_epochs: int | None = None,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        control_variate: str = "auto",
        eta: str = "conservative",
        surrogate: str = "clip",
        baseline: str = "value",
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
        qf_learning_rate: float = 1e-3,
        qf_buffer_size: int = 1_000_000,
        qf_batch_size: int = 256,
        qf_gradient_steps: int = 100,
        qf_tau: float = 0.005,
        qf_net_arch: list[int] | None = None,
        n_cv_samples: int = 8,
        log_grad_var: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        _check_names(control_variate=(control_variate, CONTROL_VARIATES), eta=(eta, ETA_RULES))
        _check_names(surrogate=(surrogate, SURROGATES), baseline=(baseline, BASELINES))
        for name, value in dict(qf_buffer_size=qf_buffer_size, qf_batch_size=qf_batch_size, n_cv_samples=n_cv_samples).items():
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(qf_gradient_steps, (int, np.integer)) or qf_gradient_steps < 0:
            raise ValueError(f"qf_gradient_steps must be an integer >= 0, got {qf_gradient_steps!r}")
        if not 0 < qf_tau <= 1:
            raise ValueError(f"qf_tau must be in (0, 1], got {qf_tau!r}")
        if not qf_learning_rate > 0:
            raise ValueError(f"qf_learning_rate must be > 0, got {qf_learning_rate!r}")
        if surrogate == "vanilla":
            for name, value in dict(n_epochs=n_epochs, batch_size=batch_size, clip_range=clip_range).items():
                if value is not None:
                    raise ValueError(
                        f'surrogate="vanilla" takes one gradient step on the whole rollout: leave {name} unset (got {value!r})'
                    )
        penalty = surrogate == "kl"
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=64 if batch_size is None else batch_size,
            n_epochs=10 if n_epochs is None else n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=(0.2 if clip_range is None else clip_range) if surrogate == "clip" else clip_range,
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
            kl_coef=kl_coef if penalty else 0.0,
            kl_target=kl_target,
            adaptive_kl=adaptive_kl if penalty else False,
            kl_update=kl_update,
            kl_coef_bounds=kl_coef_bounds,
            kl_hinge_coef=kl_hinge_coef if penalty else 0.0,
            kl_estimator=kl_estimator,
            kl_direction=kl_direction,
            log_grad_var=log_grad_var,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.control_variate = control_variate
        self.eta = eta
        self.surrogate = surrogate
        self.baseline = baseline
        self.qf_learning_rate = qf_learning_rate
        self.qf_buffer_size = qf_buffer_size
        self.qf_batch_size = qf_batch_size
        self.qf_gradient_steps = qf_gradient_steps
        self.qf_tau = qf_tau
        self.qf_net_arch = [256, 256] if qf_net_arch is None else list(qf_net_arch)
        self.n_cv_samples = n_cv_samples
        if env is not None:  # None only while loading without an env: the saved values are restored
            self._resolve_for_env()
        if _init_setup_model:
            self._setup_model()

    def _resolve_for_env(self) -> None:
        """Check the action space and resolve "auto" and the vanilla surrogate's epochs / batch."""
        if not isinstance(self.action_space, (spaces.Box, spaces.Discrete)):
            raise ValueError(
                f"CVPG supports Discrete and Box action spaces, not {type(self.action_space).__name__} "
                f"(env action_space={self.action_space})"
            )
        discrete = isinstance(self.action_space, spaces.Discrete)
        if self.control_variate == "auto":
            self.control_variate = "expected" if discrete else "taylor"
        if self.control_variate in ("taylor", "reparameterization") and discrete:
            raise ValueError(f'control_variate="{self.control_variate}" needs Box actions; use "expected" for Discrete actions')
        if self.control_variate == "expected" and not discrete:
            raise ValueError('control_variate="expected" sums over every action and needs Discrete actions')
        if self.control_variate in ("taylor", "reparameterization") and self.policy_kwargs.get("squash_output", False):
            raise ValueError(f'control_variate="{self.control_variate}" needs an unsquashed Gaussian policy (squash_output=False)')
        if self.control_variate == "reparameterization" and self.use_sde:
            raise ValueError('control_variate="reparameterization" needs independent Gaussian noise: use use_sde=False')
        if self.surrogate == "vanilla":
            self.n_epochs, self.batch_size = 1, self.n_steps * self.n_envs

    def _setup_model(self) -> None:
        super()._setup_model()
        self.replay_buffer: ReplayBuffer | None = None
        self.q_net: ContinuousCritic | DiscreteCritic | None = None
        self._cv: dict[str, Any] | None = None
        self._rollout_end: tuple[th.Tensor, np.ndarray] | None = None
        self._action_low = self._action_high = None
        if isinstance(self.action_space, spaces.Box):  # the bounds the env's actions are clipped to
            self._action_low = th.as_tensor(self.action_space.low, dtype=th.float32, device=self.device)
            self._action_high = th.as_tensor(self.action_space.high, dtype=th.float32, device=self.device)
        if self.control_variate == "none":
            return  # no critic: nothing else touches the random streams, so PPO's results are kept bit for bit
        self.q_net = self._make_q_net()
        self.q_net_target = self._make_q_net()
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.set_training_mode(False)
        self.q_optimizer = th.optim.Adam(self.q_net.parameters(), lr=self.qf_learning_rate)
        buffer_class = DictReplayBuffer if isinstance(self.observation_space, spaces.Dict) else ReplayBuffer
        self.replay_buffer = buffer_class(
            self.qf_buffer_size, self.observation_space, self.action_space, device=self.device, n_envs=self.n_envs
        )

    def _make_q_net(self) -> ContinuousCritic | DiscreteCritic:
        features_extractor = self.policy.make_features_extractor()
        critic_class = DiscreteCritic if isinstance(self.action_space, spaces.Discrete) else ContinuousCritic
        return critic_class(
            self.observation_space,
            self.action_space,  # type: ignore[arg-type]
            net_arch=self.qf_net_arch,
            features_extractor=features_extractor,
            features_dim=features_extractor.features_dim,
            activation_fn=nn.ReLU,
            normalize_images=self.policy.normalize_images,
            n_critics=1,
            share_features_extractor=False,
        ).to(self.device)

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        if self.control_variate != "none" or self.baseline != "value":
            if callback is None:
                callbacks: list[BaseCallback] = []
            elif isinstance(callback, list):
                callbacks = list(callback)
            elif isinstance(callback, BaseCallback):
                callbacks = [callback]
            else:
                callbacks = [ConvertCallback(callback)]
            callback = [*callbacks, _RolloutToReplay()]
        return super()._init_callback(callback, progress_bar)

    # ------------------------------------------------------------------ per rollout

    def _begin_update(self) -> None:
        super()._begin_update()
        if self.baseline != "value":
            self._reward_to_go_advantages()
        self._cv = None
        if self.control_variate != "none":
            self._train_logs["qf_loss"] = [self._train_q_critic()]
            self._prepare_control_variate()
            if self.log_grad_var:  # the same estimator without its control variate, on the same data
                self._train_logs["grad_var_no_cv"] = [gradient_variance(self, control_variate=False)["variance"]]

    def _reward_to_go_advantages(self) -> None:
        """Â = reward-to-go ("none") or reward-to-go minus its batch mean ("mean"); V's targets are kept."""
        assert self._rollout_end is not None, "the rollout's last values are recorded during collection"
        buffer = self.rollout_buffer
        returns, gae_lambda = buffer.returns.copy(), buffer.gae_lambda
        buffer.gae_lambda = 1.0  # λ = 1: discounted reward-to-go, bootstrapped where the rollout cuts an episode
        buffer.compute_returns_and_advantage(*self._rollout_end)
        reward_to_go = buffer.returns
        buffer.gae_lambda, buffer.returns = gae_lambda, returns
        buffer.advantages = reward_to_go - reward_to_go.mean() if self.baseline == "mean" else reward_to_go.copy()

    def _q_values(self, q_net: nn.Module, obs: PyTorchObs, actions: th.Tensor | None = None) -> th.Tensor:
        """
        Q(s, a) of shape (batch,) for Box actions; Q(s, ·) of shape (batch, n_actions) for Discrete.

        Box: the critic sees the action the env executes, clip(a) to the action space's bounds (as SB3's
        rollout does), so Q(s, a) = Q_w(s, clip(a)). Its gradient in a vanishes outside the bounds: the
        Taylor and pathwise terms never push the policy's mean past them.
        """
        if isinstance(self.action_space, spaces.Discrete):
            return q_net(obs)[0]
        assert actions is not None and self._action_low is not None and self._action_high is not None
        return q_net(obs, th.clamp(actions, self._action_low, self._action_high))[0].flatten()

    def _train_q_critic(self) -> float:
        """``qf_gradient_steps`` TD updates of Q_w with y = r + γ (1 − d) E_{a'∼π(s')}[Q_w̄(s', a')]."""
        assert self.replay_buffer is not None and self.q_net is not None
        self.q_net.requires_grad_(True)
        losses = []
        for _ in range(self.qf_gradient_steps):
            data = self.replay_buffer.sample(self.qf_batch_size)
            with th.no_grad():
                distribution = self.policy.get_distribution(data.next_observations).distribution
                if isinstance(self.action_space, spaces.Discrete):
                    next_q = (distribution.probs * self._q_values(self.q_net_target, data.next_observations)).sum(dim=1)
                else:
                    next_q = self._q_values(self.q_net_target, data.next_observations, distribution.sample())
                target = data.rewards.flatten() + (1 - data.dones.flatten()) * self.gamma * next_q
            if isinstance(self.action_space, spaces.Discrete):
                q = self._q_values(self.q_net, data.observations).gather(1, data.actions.long()).flatten()
            else:
                q = self._q_values(self.q_net, data.observations, data.actions)
            loss = F.mse_loss(q, target)
            self.q_optimizer.zero_grad()
            loss.backward()
            self.q_optimizer.step()
            polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.qf_tau)
            losses.append(loss.item())
        self.q_net.requires_grad_(False)  # from here on Q_w is a fixed function of the actions
        return float(np.mean(losses)) if losses else float("nan")

    def _prepare_control_variate(self) -> None:
        """Ā, η and the analytic term's constants for every sample of the rollout; Â ← Â − η Ā in the buffer."""
        assert self.q_net is not None
        buffer = self.rollout_buffer
        actions = th.as_tensor(flat_actions(buffer), device=self.device)
        cv_parts, constants = [], []
        for obs, chunk in self._rollout_chunks():
            with th.no_grad():
                distribution = self.policy.get_distribution(obs).distribution
            chunk_actions = actions[chunk]
            if self.control_variate == "expected":
                with th.no_grad():
                    q_table = self._q_values(self.q_net, obs)
                    q_taken = q_table.gather(1, chunk_actions.long().reshape(-1, 1)).flatten()
                    cv_parts.append(centered_control_variate(q_taken, (distribution.probs * q_table).sum(dim=1)))
                constants.append(q_table)
            elif self.control_variate == "taylor":
                mean_actions = distribution.mean.detach().requires_grad_(True)
                with th.enable_grad():
                    q_grad = th.autograd.grad(self._q_values(self.q_net, obs, mean_actions).sum(), mean_actions)[0]
                cv_parts.append(taylor_control_variate(q_grad, chunk_actions, mean_actions.detach()))
                constants.append(q_grad)
            else:  # "reparameterization"
                with th.no_grad():
                    n_states = len(chunk_actions)
                    samples = distribution.sample((self.n_cv_samples,)).reshape(self.n_cv_samples * n_states, -1)
                    obs_k = repeat_observations(obs, self.n_cv_samples)
                    q_expected = self._q_values(self.q_net, obs_k, samples).reshape(self.n_cv_samples, n_states).mean(dim=0)
                    cv_parts.append(centered_control_variate(self._q_values(self.q_net, obs, chunk_actions), q_expected))
        control_variate = th.cat(cv_parts)
        advantages = th.as_tensor(flat_array(buffer, "advantages"), device=self.device)
        eta = qprop_eta(advantages, control_variate, self.eta)
        set_flat(buffer, "advantages", (advantages - eta * control_variate).cpu().numpy())
        self._cv = dict(eta=eta, advantages=advantages, constants=th.cat(constants) if constants else None)
        self._train_logs["eta_mean"] = [eta.item()]
        self._train_logs["cv_corr"] = [_correlation(advantages, control_variate)]

    # ------------------------------------------------------------------ per minibatch

    def _analytic_term(self, obs: PyTorchObs, distribution: Any, batch_inds: th.Tensor) -> th.Tensor:
        """Per sample, a surrogate whose gradient is ∇_θ E_{a∼π_θ(s)}[Q_w(s, a)]: shape (batch,)."""
        assert self._cv is not None
        torch_distribution = distribution.distribution
        if self.control_variate == "expected":
            return (torch_distribution.probs * self._cv["constants"][batch_inds]).sum(dim=1)
        if self.control_variate == "taylor":
            return taylor_analytic_term(self._cv["constants"][batch_inds], torch_distribution.mean)
        return self._q_values(self.q_net, obs, torch_distribution.rsample())  # a = μ_θ + σ_θ ξ

    def _batch_inds(self) -> th.Tensor:
        assert isinstance(self.rollout_buffer, BatchIndicesMixin) and self.rollout_buffer.batch_inds is not None
        return th.from_numpy(self.rollout_buffer.batch_inds).to(self.device)

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
        The surrogate on Â − ηĀ (``advantages``), minus η times the analytic term. With PPO's clipping
        the analytic term is clipped too: a sample's term counts while its ratio is inside [1 − ε, 1 + ε]
        (all do at θ_old, where the estimator is Q-Prop's), so the critic cannot carry the policy past the
        trust region the clipped surrogate keeps, epoch after epoch.
        """
        policy_loss = super()._policy_loss(rollout_data, advantages, ratio, log_prob, distribution, clip_range)
        if self._cv is None:
            return policy_loss
        scale = 1.0
        if self.normalize_advantage and len(rollout_data.advantages) > 1:
            scale = 1.0 / (rollout_data.advantages.std() + 1e-8)  # the same scale as the normalised Â − ηĀ
        analytic = self._analytic_term(rollout_data.observations, distribution, self._batch_inds())
        if clip_range is not None:
            analytic = analytic * ((ratio - 1).abs() <= clip_range).detach()
        return policy_loss - self._cv["eta"] * scale * analytic.mean()

    def _record_train_logs(self, clip_range: float | None, clip_range_vf: float | None) -> None:
        super()._record_train_logs(clip_range, clip_range_vf)
        for key in ("eta_mean", "cv_corr", "qf_loss", "grad_var_no_cv"):
            if self._train_logs[key]:
                self.logger.record(f"train/{key}", self._train_logs[key][0])

    # ------------------------------------------------------------------ measured gradient variance

    def _collect_fresh_rollout(self) -> None:
        super()._collect_fresh_rollout()
        self._begin_update()  # the critic's update and the control variate of this rollout

    def _pg_surrogate(self, rollout_data: RolloutBufferSamples, control_variate: bool) -> th.Tensor:
        """
        −mean[log π_θ(a|s) (Â − ηĀ)] − η · analytic term (raw advantages); ``control_variate=False``:
        −mean[log π_θ(a|s) Â], the same estimator without the control variate.
        """
        actions = self._prepare_actions(rollout_data.actions)
        _, log_prob, _ = self.policy.evaluate_actions(rollout_data.observations, actions)
        if self._cv is None:
            return -(log_prob * rollout_data.advantages).mean()
        batch_inds = self._batch_inds()
        if not control_variate:
            return -(log_prob * self._cv["advantages"][batch_inds]).mean()
        analytic = self._analytic_term(rollout_data.observations, self.policy.action_dist, batch_inds)
        return -(log_prob * rollout_data.advantages).mean() - self._cv["eta"] * analytic.mean()

    # ------------------------------------------------------------------ save / load

    def learn(
        self: SelfCVPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "CVPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfCVPG:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "q_net", "q_net_target", "q_optimizer", "_cv", "_rollout_end", "_action_low", "_action_high"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        if self.control_variate != "none":
            state_dicts = [*state_dicts, "q_net", "q_net_target", "q_optimizer"]
        return state_dicts, variables

    def set_parameters(
        self,
        load_path_or_dict: str | pathlib.Path | io.BufferedIOBase | dict[str, Any],
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """
        SB3's ``set_parameters``; parameters without a Q critic (a PPO or PPOKL checkpoint, or CVPG with
        ``control_variate="none"``) warm-start the policy and value function, strictly, and leave the Q
        critic freshly initialised, with a warning. This is how ``CVPG.load("ppo.zip", env=env)`` and the
        zoo's ``train --algo cvpg -i ppo.zip`` continue from a PPO agent.
        """
        params = load_path_or_dict
        if not isinstance(params, dict):
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        critic = {"q_net", "q_net_target", "q_optimizer"}
        if exact_match and self.q_net is not None and not critic & params.keys():
            expected = set(self._get_torch_save_params()[0]) - critic
            if params.keys() != expected:
                raise ValueError(f"Names of parameters do not match agents' parameters: expected {expected}, got {set(params)}")
            shapes = {key: tuple(value.shape) for key, value in self.policy.state_dict().items()}
            if shapes != {key: tuple(value.shape) for key, value in params["policy"].items()}:
                raise ValueError("the checkpoint's policy does not match this CVPG's (another net_arch or policy_kwargs?)")
            warnings.warn("the checkpoint has no Q critic (a PPO agent?): its policy and value function are loaded, Q_w starts fresh")
            exact_match = False
        super().set_parameters(params, exact_match=exact_match, device=device)


def _check_names(**arguments: tuple[str, tuple[str, ...]]) -> None:
    for name, (value, allowed) in arguments.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _correlation(x: th.Tensor, y: th.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return (x.dot(y) / denominator).item() if denominator > 0 else 0.0
