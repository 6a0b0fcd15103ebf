from typing import Any, ClassVar, TypeVar

import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_pgext.common.on_policy import PPOBase
from sb3_pgext.ppokl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

SelfPPOKL = TypeVar("SelfPPOKL", bound="PPOKL")


class PPOKL(PPOBase):
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
    loadable_files = "files saved by PPOKL, or by SB3's PPO to warm-start from"

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
        if clip_range is None and kl_coef == 0 and not adaptive_kl and kl_hinge_coef == 0:
            raise ValueError(
                "clip_range=None with kl_coef=0 and adaptive_kl=False leaves no trust region at all: "
                "set clip_range to a float, kl_coef > 0, adaptive_kl=True or kl_hinge_coef > 0"
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
            clip_range=clip_range,
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
            kl_coef=kl_coef,
            kl_target=kl_target,
            adaptive_kl=adaptive_kl,
            kl_update=kl_update,
            kl_coef_bounds=kl_coef_bounds,
            kl_hinge_coef=kl_hinge_coef,
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
            _init_setup_model=_init_setup_model,
        )

    def _tracks_kl(self) -> bool:
        # PPOKL always measures and logs d = Ê[KL] and β, also with the penalty switched off
        return True

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
