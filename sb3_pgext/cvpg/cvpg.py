import io
import math
import pathlib
import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_pgext.common.arguments import check_choice, check_integer, check_number
from sb3_pgext.common.buffers import flat_actions, flat_array, flat_observations, policy_actions, rollout_chunks
from sb3_pgext.common.compat import parameters_without_q_critic
from sb3_pgext.common.estimators import (
    ETA_RULES,
    GradientMoments,
    centered_control_variate,
    clipped_gaussian_mean,
    corrected_advantages,
    expected_analytic_term,
    min_variance_eta,
    qprop_eta,
    rollout_folds,
    taylor_analytic_term,
    taylor_control_variate,
    weighted_analytic_term,
)
from sb3_pgext.common.gradient_variance import gradient_variance
from sb3_pgext.common.utils import index_observations, optimizer_implementations_kept, repeat_observations, value_net_layers
from sb3_pgext.cvpg.buffers import (
    CVPGBufferMixin,
    CVPGDictRolloutBuffer,
    CVPGRolloutBuffer,
)
from sb3_pgext.cvpg.callbacks import CVPGCollectionCallback
from sb3_pgext.cvpg.per_sample import per_sample_gradient_size, per_sample_gradients
from sb3_pgext.cvpg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_pgext.cvpg.q_critic import (
    MAX_JOINT_ACTIONS,
    QF_OPTIMIZERS,
    QF_TARGETS,
    QCritic,
    action_choices,
    joint_action_index,
    joint_action_probs,
)
from sb3_pgext.ppokl.ppokl import PPOKL
from sb3_pgext.registry import check_action_space

SelfCVPG = TypeVar("SelfCVPG", bound="CVPG")

CONTROL_VARIATES = ("auto", "none", "taylor", "reparameterization", "expected")
SURROGATES = ("vanilla", "clip", "kl")
BASELINES = ("value", "mean", "none")
#: qf_gradient_steps=None: passes over the rollout for qf_target="advantages" / "returns", steps for "td" (fewer passes
#: cut less variance: docs/algorithms/cvpg.md, "Where the variance cut comes from")
DEFAULT_QF_PASSES, DEFAULT_QF_TD_STEPS = 100, 100
#: qf_gradient_steps=None with qf_optimizer="lbfgs": L-BFGS's iterations per rollout
DEFAULT_QF_LBFGS_ITERATIONS = 50
#: eta="min_variance": the samples of each fold whose per-sample gradients measure η, at most, and at least; between
#: the two, as many as keep a rollout's per-sample gradients within 2^24 values (64 MiB, and their cost with it)
ETA_SAMPLES_PER_FOLD, MIN_ETA_SAMPLES_PER_FOLD, PER_SAMPLE_GRADIENT_VALUES = 256, 32, 2**24


class CVPG(PPOKL):
    """
    Policy gradient with a Q-critic control variate (Q-Prop / Stein), on PPO's clipped surrogate, PPOKL's KL
    penalty or a vanilla policy-gradient step (PPOKL's update, which it subclasses).

    Gu et al. 2017, "Q-Prop: Sample-Efficient Policy Gradient with An Off-Policy Critic"
    (https://arxiv.org/abs/1611.02247); Liu et al. 2018, "Action-dependent Control Variates for Policy
    Optimization via Stein's Identity" (https://arxiv.org/abs/1710.11198); Tucker et al. 2018, "The Mirage
    of Action-Dependent Baselines in Reinforcement Learning" (https://arxiv.org/abs/1802.10031). The estimator is

        ∇J ≈ (1/N) Σ_i ∇ log π(a_i|s_i) (Â_i − η_i Ā_i)  +  (1/N) Σ_i η_i ∇_θ E_{a∼π_θ(s_i)}[ Q_w(s_i, a) ]

    with Â from the rollout (GAE with a value baseline, or the baselines below), Ā a critic Q_w(s, a)'s
    prediction of Â (its part that depends on the action, as in Q-Prop, plus by default its state part, which
    corrects the value baseline where the critic has learnt what V misses: a function of s alone, it adds no
    bias and no analytic term) and η Q-Prop's weight. Per rollout:

    1. Ā, η and the analytic term's constants are computed for every sample (:meth:`prepare_control_variate`)
       and travel as named fields of the rollout buffer's samples (:class:`~sb3_pgext.cvpg.buffers.CVPGRolloutBufferSamples`);
    2. the policy is updated on the chosen surrogate of Â − ηĀ minus η times the analytic term (see :meth:`train`);
    3. the critic is fitted (:class:`~sb3_pgext.cvpg.q_critic.QCritic`): by regression onto the rollout's
       advantages (``qf_target="advantages"``) or λ-returns ("returns", default), or by Q-Prop's off-policy TD
       on a replay buffer ("td").

    The estimator is unbiased for any critic and η that do not depend on the actions they are applied to:
    the critic that builds a rollout's Ā was fitted on earlier rollouts only, and each sample's η comes from
    the other fold of the rollout (other envs, or the other half of a single env's rollout; see
    :func:`~sb3_pgext.common.estimators.rollout_folds`). Tucker et al. (sec. 4) found open-source
    implementations that fitted them on the same samples, which biases the gradient.

    The corrected advantage's per-minibatch normalisation also scales the analytic term, so the two stay
    consistent. With PPO's clipping, a sample's analytic term counts only while its ratio is inside
    [1 − ε, 1 + ε]: at θ_old that is every sample (the estimator above), and later epochs cannot follow the
    critic past the clipped trust region. The critic sees the action the env executes, Q_w(s, clip(a)) for
    Box actions, so its gradient never pushes the mean past the action bounds.

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
        ``n_cv_samples`` actions, analytic term through a = μ_θ(s) + σ_θ(s) ξ; Box, with gSDE through the
        per-state Gaussian its log-probabilities use);
        "expected" (Ā = ``Q_w(s, a) − Σ_a' π(a'|s) Q_w(s, a')``, exact analytic term Σ_a ∇π Q_w; Discrete, and
        MultiDiscrete / MultiBinary with at most 1024 joint actions, the sum running over joint actions);
        "auto" (default): "taylor" for Box, "expected" for finite action sets ("none", with a warning, for a
        squashed Box policy or where the joint action set is too large to sum over)
    :param eta: the control variate's weight η, cross-fitted (each env's from the rollout's other envs; with one
        env, each half's from the other half):
        "adaptive" (default; Q-Prop's η* = Ĉov(Â, Ā) / V̂ar(Ā), the weight that minimises Var(Â − ηĀ) alone),
        "min_variance" (the η that minimises the measured variance of the whole per-sample gradient, the analytic
        term's included, from per-sample gradients of at most 256 samples per fold: see
        :func:`~sb3_pgext.common.estimators.min_variance_eta`; on Pendulum-v1 it cut less than η*, docs: CVPG),
        "ones", "conservative" (1 if Ĉov(Â, Ā) > 0, else 0) or "aggressive" (sign of Ĉov(Â, Ā))
    :param centered_cv: True: Ā is only the critic's action-dependent part, φ(s, a) − E_{a'∼π}[φ(s, a')] (Q-Prop's
        and Liu et al.'s centred form); False (default): Ā also keeps the critic's state part, Q_w(s, m(s))
        ("taylor") or E_a Q_w(s, a), minus Â's baseline (V(s), or the batch mean for ``baseline="mean"``) when
        ``qf_target`` makes Q_w track Q^π rather than Â: the whole of the critic's prediction of Â, a learned
        correction of the value baseline
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
    :param rollout_buffer_class: Rollout buffer class to use (None: chosen from the observation space); with a
        control variate it must subclass :class:`~sb3_pgext.cvpg.buffers.CVPGRolloutBuffer` (or the Dict one)
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
    :param qf_target: how the Q critic is fitted after each policy update: "returns" (default; least squares
        onto the rollout's λ-returns, the value function's targets, so Q_w tracks Q^π and its state part
        corrects V), "advantages" (onto the rollout's Â, so Q_w tracks A^π up to a function of s; the default
        of 0.1.0, which cut no variance on HalfCheetah-v5) or "td" (Q-Prop's off-policy critic:
        expected-SARSA TD on a replay buffer of every step, with a Polyak target network)
    :param qf_optimizer: how the Q critic is fitted: "adam" (default; ``qf_gradient_steps`` minibatch steps of Adam) or
        "lbfgs" (``qf_gradient_steps`` iterations of L-BFGS on all of the fit's samples at once, each with a line
        search, no learning rate or minibatch; not for ``qf_target="td"``): on Pendulum-v1 more variance cut than
        Adam's 100 passes at a quarter of their cost, but it overfits small rollouts (docs/algorithms/cvpg.md)
    :param qf_learning_rate: learning rate of the Q critic's Adam optimizer (``qf_optimizer="adam"``)
    :param qf_buffer_size: size of the Q critic's replay buffer (``qf_target="td"``)
    :param qf_batch_size: minibatch size of the Q critic's Adam updates
    :param qf_gradient_steps: Q critic updates per rollout (Adam's steps, or L-BFGS's iterations); None: 100 passes over
        the rollout with Adam ("advantages", "returns"), 50 iterations of L-BFGS, or 100 steps ("td")
    :param qf_rollouts: for ``qf_target`` "advantages" and "returns", how many of the most recent rollouts the Q
        critic regresses on (their samples together, in ``qf_gradient_steps`` steps): more data for the critic,
        all of it from rollouts before the one its Ā is applied to
    :param qf_tau: Polyak coefficient of the Q critic's target network, in (0, 1] (``qf_target="td"``)
    :param qf_net_arch: hidden layers of the Q critic (None: those of the policy's value network)
    :param n_cv_samples: actions per state estimating E_a' Q_w(s, a') for "reparameterization"
    :param log_grad_var: Log ``train/grad_var`` each update (see :func:`sb3_pgext.gradient_variance`), and
        ``train/grad_var_no_cv``, the same estimator's variance without the control variate on the same data
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
    accepted_files = "files saved by CVPG, or by PPOKL or SB3's PPO to warm-start from (Q_w then starts fresh)"
    q_critic: QCritic | None

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
        eta: str = "adaptive",
        centered_cv: bool = False,
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
        qf_target: str = "returns",
        qf_optimizer: str = "adam",
        qf_learning_rate: float = 1e-3,
        qf_buffer_size: int = 1_000_000,
        qf_batch_size: int = 256,
        qf_gradient_steps: int | None = None,
        qf_rollouts: int = 1,
        qf_tau: float = 0.005,
        qf_net_arch: list[int] | None = None,
        n_cv_samples: int = 8,
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
        _check_arguments(
            control_variate, eta, surrogate, baseline, qf_target, qf_optimizer, qf_learning_rate, qf_buffer_size,
            qf_batch_size, qf_gradient_steps, qf_rollouts, qf_tau, n_cv_samples, n_epochs, batch_size, clip_range,
        )  # fmt: skip
        penalty = surrogate == "kl"
        if surrogate == "vanilla":  # one gradient step on the whole rollout
            n_epochs, batch_size = 1, n_steps * (env.num_envs if isinstance(env, VecEnv) else 1)
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
            horizon_aware_value=horizon_aware_value,
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
        self.centered_cv = centered_cv
        self.surrogate = surrogate
        self.baseline = baseline
        self.qf_target = qf_target
        self.qf_optimizer = qf_optimizer
        self.qf_learning_rate = qf_learning_rate
        self.qf_buffer_size = qf_buffer_size
        self.qf_batch_size = qf_batch_size
        self.qf_gradient_steps = qf_gradient_steps
        self.qf_rollouts = qf_rollouts
        self.qf_tau = qf_tau
        self.qf_net_arch = None if qf_net_arch is None else list(qf_net_arch)
        self.n_cv_samples = n_cv_samples
        if env is not None:  # None only while loading without an env: the saved values are restored
            self._resolve_for_env()
        if _init_setup_model:
            self._setup_model()

    def _resolve_for_env(self) -> None:
        """Check the action space and resolve "auto" and the vanilla surrogate's epochs / batch."""
        check_action_space("cvpg", self.action_space)
        choices = action_choices(self.action_space)
        joint = math.prod(choices) if choices is not None else None
        squashed = self.policy_kwargs.get("squash_output", False)
        if self.control_variate == "auto":
            if joint is None and squashed:
                warnings.warn(
                    "control_variate='auto': the policy squashes its actions (squash_output=True), which the Taylor and "
                    "reparameterization control variates do not support; CVPG runs without one (as PPO)",
                    stacklevel=3,
                )
                self.control_variate = "none"
            elif joint is None:
                self.control_variate = "taylor"
            elif joint <= MAX_JOINT_ACTIONS:
                self.control_variate = "expected"
            else:
                warnings.warn(
                    f"control_variate='auto': {self.action_space} has {joint} joint actions, more than the "
                    f"{MAX_JOINT_ACTIONS} the exact control variate sums over; CVPG runs without one (as PPO)",
                    stacklevel=3,
                )
                self.control_variate = "none"
        if self.control_variate in ("taylor", "reparameterization") and joint is not None:
            raise ValueError(f'control_variate="{self.control_variate}" needs Box actions; use "expected" for finite action sets')
        if self.control_variate == "expected":
            if joint is None:
                raise ValueError('control_variate="expected" sums over every action and needs a finite action space')
            if joint > MAX_JOINT_ACTIONS:
                raise ValueError(
                    f'control_variate="expected" sums over the {joint} joint actions of {self.action_space}: at most '
                    f'{MAX_JOINT_ACTIONS} are supported; use control_variate="none"'
                )
        if self.control_variate in ("taylor", "reparameterization") and squashed:
            raise ValueError(f'control_variate="{self.control_variate}" needs an unsquashed Gaussian policy (squash_output=False)')
        if self.surrogate == "vanilla":
            self.n_epochs, self.batch_size = 1, self.n_steps * self.n_envs

    def _setup_model(self) -> None:
        user_buffer_class = self.rollout_buffer_class
        if self.control_variate != "none":  # the buffer's samples carry Ā's per-sample data
            default = CVPGDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else CVPGRolloutBuffer
            # SB3's own classes (what a PPO checkpoint saved) become CVPG's; another class must be CVPG's
            buffer_class = default if user_buffer_class in (None, RolloutBuffer, DictRolloutBuffer) else user_buffer_class
            if not issubclass(buffer_class, CVPGBufferMixin):
                raise ValueError(
                    f"rollout_buffer_class must subclass {default.__name__} with control_variate="
                    f"{self.control_variate!r}, got {buffer_class.__name__}"
                )
            self.rollout_buffer_class = buffer_class
        super()._setup_model()
        self.rollout_buffer_class = user_buffer_class  # the user's setting is what is saved
        self._rollout_bootstrap: tuple[th.Tensor, np.ndarray] | None = None
        self._reward_to_go_mean = 0.0  # baseline="mean": the batch mean Â subtracts, set with the advantages
        self._per_sample_gradients_loop = False  # set when vmap cannot batch the policy (cvpg.per_sample)
        self.q_critic = None
        if self.control_variate == "none":
            return  # no critic: nothing else touches the random streams, so PPO's results are kept bit for bit
        gradient_steps = self.qf_gradient_steps
        if gradient_steps is None:
            if self.qf_target == "td":
                gradient_steps = DEFAULT_QF_TD_STEPS
            elif self.qf_optimizer == "lbfgs":
                gradient_steps = DEFAULT_QF_LBFGS_ITERATIONS
            else:
                gradient_steps = math.ceil(DEFAULT_QF_PASSES * self.n_steps * self.n_envs / self.qf_batch_size)
        self.q_critic = QCritic(
            self.observation_space,
            self.action_space,
            self.policy.make_features_extractor,
            net_arch=self._qf_net_arch(),
            normalize_images=self.policy.normalize_images,
            target=self.qf_target,
            learning_rate=self.qf_learning_rate,
            batch_size=self.qf_batch_size,
            gradient_steps=gradient_steps,
            n_rollouts=self.qf_rollouts,
            optimizer=self.qf_optimizer,
            buffer_size=self.qf_buffer_size,
            tau=self.qf_tau,
            gamma=self.gamma,
            n_envs=self.n_envs,
            device=self.device,
        ).requires_grad_(False)  # trained only in _fit_q_critic; elsewhere a fixed function of the actions

    def _qf_net_arch(self) -> list[int]:
        """``qf_net_arch``, or the hidden layers of the policy's value network."""
        if self.qf_net_arch is not None:
            return self.qf_net_arch
        return value_net_layers(self.policy.net_arch)

    def _collection_callbacks(self) -> list[BaseCallback]:
        """PPOKL's, plus the TD critic's replay feed and the rollout's last values (reward-to-go baselines)."""
        callbacks = super()._collection_callbacks()
        if self.qf_target == "td" or self.baseline != "value":
            callbacks.append(CVPGCollectionCallback())
        return callbacks

    @property
    def measures_kl(self) -> bool:
        """Whether d = Ê[KL] between π_old and π_θ is measured and logged after each update: with the KL penalty only."""
        return self.penalty_active

    # ------------------------------------------------------------------ the update

    def train(self) -> None:
        """
        CVPG's update, in order: the rollout's advantages Â; the control variate Ā, η and the analytic term's
        constants of every sample, into the buffer's named fields; PPOKL's epochs of minibatch steps, whose surrogate
        weighs Â − ηĀ (:meth:`_surrogate_advantages`) and whose loss adds minus η times the analytic term
        (:meth:`_control_variate_loss`); then the critic's fit, after the update, so that the next rollout's Ā comes
        from a critic that never saw that rollout.
        """
        # 1. Â, and Ā, η and the analytic term's constants of every sample
        self.prepare_advantages()
        if self.q_critic is not None and self.log_grad_var:  # the same estimator without its control variate, on the same data
            self.logger.record("train/grad_var_no_cv", gradient_variance(self, control_variate=False)["variance"])
        # 2. the policy update (PPOKL's), per minibatch on Â − ηĀ, normalized, minus η times the analytic term
        self.update_policy()
        # 3. the critic's fit on this rollout (or on the replay buffer, for "td")
        if self.q_critic is not None:
            self.logger.record("train/qf_loss", self._fit_q_critic())

    def prepare_advantages(self) -> None:
        """
        What :meth:`train` does before the policy update: the rollout's Â (GAE with V(s), recomputed with the time
        left for a horizon-aware V, or the reward-to-go for the other baselines) and, with a critic, Ā, η and the
        analytic term's constants of every sample (:meth:`prepare_control_variate`).
        """
        if self.horizon_aware_value:
            self.recompute_horizon_aware_returns()
        if self.baseline != "value":
            self._reward_to_go_advantages()
        if self.q_critic is not None:
            self.prepare_control_variate()

    def _surrogate_advantages(self, rollout_data: RolloutBufferSamples) -> th.Tensor:
        """Â − ηĀ: the advantages corrected by the control variate (Â without a critic)."""
        if self.q_critic is None:
            return rollout_data.advantages
        return corrected_advantages(rollout_data.advantages, rollout_data.eta, rollout_data.control_variate)  # type: ignore[attr-defined]

    def _control_variate_loss(
        self,
        rollout_data: RolloutBufferSamples,
        surrogate_advantages: th.Tensor,
        ratio: th.Tensor,
        distribution: Any,
        clip_range: float | None,
    ) -> th.Tensor | None:
        """
        Minus η times the analytic term, to add to the surrogate loss:

            L(θ) = L_surrogate(r(θ), (Â − ηĀ − m) / σ)  −  (1/σ) mean_i[ η_i c_i(θ) S_i(θ) ]

        L_surrogate is PPOKL's surrogate (PPO's clip, or the importance-weighted advantage, plus the KL penalty when
        active) on Â − ηĀ, normalized per minibatch (mean m, standard deviation σ) when ``normalize_advantage``; S_i
        is :meth:`analytic_term`, scaled by the same 1/σ; c_i = 1 while the ratio r_i is inside [1 − ε, 1 + ε] with
        PPO's clip, else 0 (always 1 without). At θ = θ_old the gradient of L is minus the estimator of the class
        docstring (up to the normalization).
        """
        if self.q_critic is None:
            return None
        scale = 1.0
        if self.normalize_advantage and len(rollout_data.advantages) > 1:  # the scale of the normalized Â − ηĀ
            scale = 1.0 / (surrogate_advantages.std() + 1e-8)
        analytic = self.analytic_term(rollout_data.observations, rollout_data.analytic_term_constants, distribution)  # type: ignore[attr-defined]
        return -scale * weighted_analytic_term(rollout_data.eta, analytic, ratio, clip_range)  # type: ignore[attr-defined]

    def _reward_to_go_advantages(self) -> None:
        """Â = reward-to-go ("none") or reward-to-go minus its batch mean ("mean"); V's targets are kept."""
        assert self._rollout_bootstrap is not None, "the rollout's last values are recorded during collection"
        buffer = self.rollout_buffer
        returns, gae_lambda = buffer.returns.copy(), buffer.gae_lambda
        buffer.gae_lambda = 1.0  # λ = 1: discounted reward-to-go, bootstrapped where the rollout cuts an episode
        buffer.compute_returns_and_advantage(*self._rollout_bootstrap)
        reward_to_go = buffer.returns
        buffer.gae_lambda, buffer.returns = gae_lambda, returns
        self._reward_to_go_mean = float(reward_to_go.mean())
        buffer.advantages = reward_to_go - self._reward_to_go_mean if self.baseline == "mean" else reward_to_go.copy()

    def _fit_q_critic(self) -> float:
        """Fit Q_w on this rollout's advantages or λ-returns, or on the replay buffer ("td"); the mean loss."""
        assert self.q_critic is not None
        self.q_critic.requires_grad_(True)
        try:
            if self.qf_target == "td":
                return self.q_critic.fit_td(self.policy, self.get_vec_normalize_env())
            buffer = self.rollout_buffer
            observations = obs_as_tensor(flat_observations(buffer), self.device)  # type: ignore[arg-type]
            actions = th.as_tensor(flat_actions(buffer), device=self.device)
            if self.qf_target == "advantages":
                targets = th.as_tensor(flat_array(buffer, "advantages"), device=self.device)
            else:
                targets = th.as_tensor(flat_array(buffer, "returns"), device=self.device)
            return self.q_critic.fit_rollout(observations, actions, targets)
        finally:
            self.q_critic.requires_grad_(False)  # between fits Q_w is a fixed function of the actions

    def prepare_control_variate(self) -> None:
        """
        Ā, the cross-fitted η and the analytic term's constants of every sample of the rollout buffer, stored as its
        named fields, as :meth:`train` does before the policy update; logs η's mean (``train/eta_mean``) and the
        correlation of Â and Ā (``train/cv_corr``).
        """
        assert self.q_critic is not None
        buffer = self.rollout_buffer
        assert isinstance(buffer, CVPGBufferMixin)
        actions = th.as_tensor(flat_actions(buffer), device=self.device)
        baselines = self._advantage_baseline()
        cv_parts, constant_parts = [], []
        for obs, chunk in rollout_chunks(buffer, self.policy, self.device):
            with th.no_grad():
                distribution = self.policy.get_distribution(obs)
            control_variate, constants = self._control_variate(obs, distribution, actions[chunk], baselines[chunk])
            cv_parts.append(control_variate)
            constant_parts.append(constants)
        control_variate = th.cat(cv_parts)
        advantages = th.as_tensor(flat_array(buffer, "advantages"), device=self.device)
        constants = None if constant_parts[0] is None else th.cat(constant_parts)
        # leave one env out: each env's η from the others (with one env, from the other half of the rollout)
        folds = rollout_folds(buffer.buffer_size, buffer.n_envs, n_folds=max(2, buffer.n_envs)).to(self.device)
        if self.eta == "min_variance":
            eta = self._min_variance_eta(actions, advantages, control_variate, constants, folds)
        else:
            eta = qprop_eta(advantages, control_variate, self.eta, folds)
        buffer.set_control_variate(control_variate.cpu().numpy(), eta.cpu().numpy(), None if constants is None else constants.cpu().numpy())
        self.logger.record("train/eta_mean", eta.mean().item())
        self.logger.record("train/cv_corr", _correlation(advantages, control_variate))

    def _min_variance_eta(
        self, actions: th.Tensor, advantages: th.Tensor, control_variate: th.Tensor, constants: th.Tensor | None, folds: th.Tensor
    ) -> th.Tensor:
        """
        η per sample for ``eta="min_variance"`` (:func:`~sb3_pgext.common.estimators.min_variance_eta`): the moments of
        the per-sample gradients u_i = Â_i ∇ log π_i and v_i = Ā_i ∇ log π_i − ∇S_i on random samples of each fold
        (η is one number per fold: a subsample measures it, for a fraction of the cost): 256, or fewer (32 at least)
        where the policy is so large that a rollout's per-sample gradients would exceed 2^24 values; each fold's η
        from the others'.
        """
        observations = flat_observations(self.rollout_buffer)
        fold_ids, fold_of = th.unique(folds, return_inverse=True)  # the folds, and each sample's among them
        n_parameters = per_sample_gradient_size(self)
        per_fold = PER_SAMPLE_GRADIENT_VALUES // (2 * n_parameters * len(fold_ids))
        per_fold = min(ETA_SAMPLES_PER_FOLD, max(MIN_ETA_SAMPLES_PER_FOLD, per_fold))
        chosen = th.cat([members[th.randperm(len(members), device=members.device)[:per_fold]]
                         for members in (th.nonzero(folds == fold).flatten() for fold in fold_ids)])  # fmt: skip
        chunk_size = max(1, PER_SAMPLE_GRADIENT_VALUES // (2 * n_parameters))  # the rows' memory, bounded
        fold_moments: list[GradientMoments] = []
        for chunk in chosen.split(chunk_size):
            obs = obs_as_tensor(index_observations(observations, chunk.cpu().numpy()), self.device)  # type: ignore[arg-type]
            chunk_constants = None if constants is None else constants[chunk]
            score, analytic = per_sample_gradients(self, obs, policy_actions(actions[chunk], self.action_space), chunk_constants)
            parts = GradientMoments.of_samples(score, analytic, advantages[chunk], control_variate[chunk], fold_of[chunk], len(fold_ids))
            fold_moments = parts if not fold_moments else [total + part for total, part in zip(fold_moments, parts)]
        return min_variance_eta(fold_moments).to(advantages.dtype)[folds]  # type: ignore[arg-type]

    def _advantage_baseline(self) -> th.Tensor:
        """
        What the rollout's Â subtracted from the return, per sample: V(s) for ``baseline="value"``, the
        reward-to-go's batch mean for "mean", 0 for "none".
        """
        values = th.as_tensor(flat_array(self.rollout_buffer, "values"), device=self.device)
        if self.baseline == "value":
            return values
        return th.full_like(values, self._reward_to_go_mean if self.baseline == "mean" else 0.0)

    def _control_variate(
        self, obs: PyTorchObs, distribution: Distribution, actions: th.Tensor, baselines: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """
        Ā(s, a) of the rollout's actions, and the constants the analytic term needs (None: it evaluates Q_w).

        :param baselines: what Â subtracted from the return at these samples (:meth:`_advantage_baseline`; see
            :meth:`_with_state_part`)
        """
        assert self.q_critic is not None
        critic = self.q_critic
        if self.control_variate == "expected":
            with th.no_grad():
                q_table = critic(obs)
                q_taken = q_table.gather(1, joint_action_index(actions, critic.choices).unsqueeze(1)).flatten()  # type: ignore[arg-type]
                probs = joint_action_probs(distribution, critic.choices)  # type: ignore[arg-type]
                q_state = (probs * q_table).sum(dim=1)
                return self._with_state_part(centered_control_variate(q_taken, q_state), q_state, baselines), q_table
        if self.control_variate == "taylor":  # in the executed action clip(a), around its mean m(s) = E_π[clip(a)]
            expansion = self._executed_mean(distribution).detach().requires_grad_(True)
            with th.enable_grad():
                q_expansion = critic(obs, expansion)
                q_grad = th.autograd.grad(q_expansion.sum(), expansion)[0]
            executed = th.clamp(actions.to(expansion.dtype), critic.action_low, critic.action_high)
            control_variate = taylor_control_variate(q_grad, executed, expansion.detach())
            return self._with_state_part(control_variate, q_expansion.detach(), baselines), q_grad
        with th.no_grad():  # "reparameterization": E_a' Q_w(s, a') from n_cv_samples actions
            n_states = len(actions)
            samples = distribution.distribution.sample((self.n_cv_samples,)).reshape(self.n_cv_samples * n_states, -1)
            q_state = critic(repeat_observations(obs, self.n_cv_samples), samples).reshape(self.n_cv_samples, n_states).mean(dim=0)
            return self._with_state_part(centered_control_variate(critic(obs, actions), q_state), q_state, baselines), None

    def _with_state_part(self, control_variate: th.Tensor, q_state: th.Tensor, baselines: th.Tensor) -> th.Tensor:
        """
        The centred Ā, plus (unless ``centered_cv``) the critic's state part: its prediction of Â at the state,
        Q_w(s, m(s)) ("taylor") or E_a Q_w(s, a) (the others), minus the baseline Â subtracted from the return
        (V(s), the batch mean or 0) where Q_w is fitted to track Q^π (``qf_target`` "returns" or "td") rather
        than Â itself. A function of s alone, it is a baseline: it adds nothing to the analytic term and no bias,
        and corrects the value function where the critic has learnt what V misses.
        """
        if self.centered_cv:
            return control_variate
        if self.qf_target != "advantages":
            q_state = q_state - baselines.to(q_state.dtype)
        return control_variate + q_state

    def _executed_mean(self, distribution: Distribution) -> th.Tensor:
        """m_θ(s) = E_{a∼π_θ(s)}[clip(a)], the mean of the action the env executes (μ_θ(s) without bounds)."""
        assert self.q_critic is not None
        normal = distribution.distribution
        return clipped_gaussian_mean(normal.mean, normal.stddev, self.q_critic.action_low, self.q_critic.action_high)

    # ------------------------------------------------------------------ per minibatch

    def analytic_term(self, obs: PyTorchObs, constants: th.Tensor, distribution: Distribution) -> th.Tensor:
        """
        Per sample, a surrogate whose gradient in θ is ∇_θ E_{a∼π_θ(s)}[Q_w(s, a)] (Q-Prop's first-order one for
        "taylor"), given the constants :meth:`_control_variate` returned for the samples' states.
        """
        assert self.q_critic is not None
        if self.control_variate == "expected":
            probs = joint_action_probs(distribution, self.q_critic.choices)  # type: ignore[arg-type]
            return expected_analytic_term(probs, constants)
        if self.control_variate == "taylor":
            return taylor_analytic_term(constants, self._executed_mean(distribution))
        return self.q_critic(obs, distribution.distribution.rsample())  # a = μ_θ + σ_θ ξ

    # ------------------------------------------------------------------ measured gradient variance

    def control_variate_terms(
        self, obs: PyTorchObs, actions: th.Tensor, distribution: Distribution, values: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor] | None:
        """
        For :func:`sb3_pgext.variance_decomposition`: Ā(s, a) per sample, and the per-sample surrogate whose gradient
        is ∇_θ E_{a∼π_θ(s)}[Q_w(s, a)], for states and actions outside the rollout buffer, unweighted: the
        decomposition chooses η (by default η* for the current critic, cross-fitted over its states). None
        without a control variate.

        :param obs: the states (policy input)
        :param actions: one action per state, as the policy samples them
        :param distribution: π_θ(·|s) of the states, differentiable in θ
        :param values: V(s) of the states (the value baseline)
        """
        if self.q_critic is None:
            return None
        if self.baseline != "value":
            raise ValueError(f"variance_decomposition needs CVPG's value baseline (baseline='value'), got baseline={self.baseline!r}")
        control_variate, constants = self._control_variate(obs, distribution, policy_actions(actions, self.action_space), values)
        analytic = self.analytic_term(obs, th.empty(0) if constants is None else constants, distribution)
        return control_variate.detach(), analytic

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
        return [*super()._excluded_save_params(), "q_critic", "_rollout_bootstrap"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        if self.q_critic is not None:
            state_dicts = [*state_dicts, "q_critic", "q_critic.optimizer"]
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
        zoo's ``train --algo cvpg -i ppo.zip`` continue from a PPO agent; a file of an older CVPG, whose critic
        had another layout, loads the same way (:func:`~sb3_pgext.common.compat.parameters_without_q_critic`).
        """
        params = load_path_or_dict
        if not isinstance(params, dict):
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        params, exact_match = parameters_without_q_critic(self, params, exact_match)
        with optimizer_implementations_kept([] if self.q_critic is None else [self.q_critic.optimizer]):  # fused Adam, as built
            super().set_parameters(params, exact_match=exact_match, device=device)


def _check_arguments(
    control_variate: str,
    eta: str,
    surrogate: str,
    baseline: str,
    qf_target: str,
    qf_optimizer: str,
    qf_learning_rate: float,
    qf_buffer_size: int,
    qf_batch_size: int,
    qf_gradient_steps: int | None,
    qf_rollouts: int,
    qf_tau: float,
    n_cv_samples: int,
    n_epochs: int | None,
    batch_size: int | None,
    clip_range: float | Schedule | None,
) -> None:
    """ValueErrors for bad arguments that do not depend on the environment (see :mod:`sb3_pgext.common.arguments`)."""
    check_choice("control_variate", control_variate, CONTROL_VARIATES)
    check_choice("eta", eta, ETA_RULES)
    check_choice("surrogate", surrogate, SURROGATES)
    check_choice("baseline", baseline, BASELINES)
    check_choice("qf_target", qf_target, QF_TARGETS)
    check_choice("qf_optimizer", qf_optimizer, QF_OPTIMIZERS)
    if qf_optimizer == "lbfgs" and qf_target == "td":
        raise ValueError('qf_optimizer="lbfgs" fits the critic by least squares on whole rollouts: it needs qf_target "returns" or "advantages", got "td"')
    check_number("qf_learning_rate", qf_learning_rate, low=0, low_open=True)
    for name, value in dict(qf_buffer_size=qf_buffer_size, qf_batch_size=qf_batch_size, qf_rollouts=qf_rollouts, n_cv_samples=n_cv_samples).items():
        check_integer(name, value, 1)
    check_integer("qf_gradient_steps", qf_gradient_steps, 0, optional=True)
    check_number("qf_tau", qf_tau, low=0, high=1, low_open=True)
    if surrogate == "vanilla":
        for name, value in dict(n_epochs=n_epochs, batch_size=batch_size, clip_range=clip_range).items():
            if value is not None:
                raise ValueError(f'surrogate="vanilla" takes one gradient step on the whole rollout: leave {name} unset (got {value!r})')


def _correlation(x: th.Tensor, y: th.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    x, y = x.to(th.float64), y.to(th.float64)
    denominator = (x.norm() * y.norm()).item()
    return (x.dot(y) / denominator).item() if denominator > 0 else 0.0
