import io
import pathlib
from collections import defaultdict
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import get_parameters_by_name, polyak_update
from stable_baselines3.sac import policies as sac_policies
from torch.nn import functional as F

from sb3_pgext.common.arguments import check_choice, check_integer, check_number
from sb3_pgext.common.compat import CheckedLoadMixin
from sb3_pgext.common.critics import BatchedCriticMixin, check_optimizer_state
from sb3_pgext.common.estimators import expected_policy_loss, likelihood_ratio_loss, reparameterization_loss
from sb3_pgext.common.finite import FiniteTransitionCheck, check_finite_loss
from sb3_pgext.common.gradient_variance import gradient_variance
from sb3_pgext.common.save_util import AtomicSaveMixin, atomic_path
from sb3_pgext.common.utils import flush_denormal, optimizer_implementations_kept, repeat_observations, with_callbacks
from sb3_pgext.offpac.cuda_graph import CapturedGradientStep, minibatches
from sb3_pgext.offpac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy, OffPACPolicy
from sb3_pgext.registry import check_action_space

SelfOffPAC = TypeVar("SelfOffPAC", bound="OffPAC")

ACTOR_GRADIENTS = ("auto", "likelihood", "reparameterization", "expected")
#: target_entropy="auto" for Discrete actions: this fraction of the uniform policy's entropy log|A|
DISCRETE_TARGET_ENTROPY_FRACTION = 0.5
#: SB3 SAC's policy classes, by the alias of OffPAC's counterpart (a SAC checkpoint loads into it)
SAC_POLICY_ALIASES: dict[type, str] = {
    sac_policies.SACPolicy: "MlpPolicy",
    sac_policies.CnnPolicy: "CnnPolicy",
    sac_policies.MultiInputPolicy: "MultiInputPolicy",
}
#: n_action_samples=None: K fresh actions per state for the score-function estimator (1 otherwise)
DEFAULT_LIKELIHOOD_SAMPLES = 4


class PolicySample(NamedTuple):
    """What the current policy gives at the batch's states, drawn once per gradient step."""

    neg_entropy: th.Tensor  # −H(π(·|s)) (exact for Discrete, −log π(a|s) sampled for Box), shape (batch, 1)
    actions: th.Tensor | None  # fresh actions, sample-major (K * batch, ...); None for "expected"
    log_prob: th.Tensor  # log π(a|s) of ``actions``; for "expected" log π(·|s), shape (batch, n_actions)
    probs: th.Tensor | None  # π(·|s) for Discrete actions, shape (batch, n_actions)


class OffPAC(AtomicSaveMixin, CheckedLoadMixin, OffPolicyAlgorithm):
    """
    Off-policy actor-critic with a Q critic, for Discrete and Box actions.

    Degris, White and Sutton 2012, "Off-Policy Actor-Critic" (https://arxiv.org/abs/1205.4839), with the
    soft (entropy-regularised) targets, twin critics and pathwise actor gradient of SAC (Haarnoja et al.
    2018, https://arxiv.org/abs/1812.05905). A stochastic actor π_θ and ``n_critics`` critics Q_φ are
    learned from SB3's replay buffer (n-step returns and HER through SB3's buffers)::

        critic: y = r + γ (1 − d) E_{a'∼π(s')}[ min_j Q_φ̄j(s', a') − α log π(a'|s') ]
        actor : ∇_θ J ≈ (1/N) Σ_i ∇_θ E_{a∼π_θ(s_i)}[ min_j Q_φj(s_i, a) ] + α ∇_θ H(π_θ(s_i))

    The action a' of the target and the actions of the actor update come from the *current* policy,
    never from the buffer. For Discrete actions the critics output Q(s, ·) and the target's expectation
    over a' is an exact sum. With ``actor_gradient="reparameterization"``, one action sample and Box
    actions, an update is SAC's: bit for bit with ``fast_update=False`` (given the same seed), within float
    rounding with the default fast update.

    The fast update (``fast_update=True``) computes the same update with less framework overhead: the
    critics (and their targets) as one batched network, fused Adam steps, the actor's backward pass
    without the critics' (discarded) weight gradients, the Polyak update as one foreach operation, the
    logged values kept on the device and read once per ``train()`` call, on the CPU subnormal floats
    flushed to zero (:func:`~sb3_pgext.common.utils.flush_denormal`), and Box actions predicted without
    building the distribution objects. Saved files are the same either way.
    On CUDA the fast update's gradient step is captured as a CUDA graph and replayed (``cuda_graph``, see
    :mod:`sb3_pgext.offpac.cuda_graph`): one launch per gradient step instead of a few hundred.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate for the Adam optimizers of actor, critics and α;
        it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
    :param batch_size: Minibatch size for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) of the target critics
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps, or a tuple like ``(5, "step")``
        or ``(2, "episode")``
    :param gradient_steps: How many gradient steps to do after each rollout (``-1``: as many as env steps)
    :param action_noise: the action noise type (None by default), Box actions only
    :param replay_buffer_class: Replay buffer class to use (for instance ``HerReplayBuffer``);
        None: chosen from the observation space and ``n_steps``
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
    :param n_steps: n-step returns for the critic target (SB3's NStepReplayBuffer) when > 1
    :param actor_gradient: the estimator of ∇_θ E_{a∼π_θ}[Q(s, a)]:
        "likelihood" (score function with ``n_action_samples`` fresh actions per state and a
        leave-one-out baseline, Kool et al. 2019, https://openreview.net/forum?id=r1lgTGL5DE; any action space),
        "reparameterization" (pathwise through a = f_θ(s, ξ), as SAC; Box),
        "expected" (the exact sum Σ_a π(a|s) Q(s, a); Discrete),
        "auto" (default: "expected" for Discrete, "reparameterization" for Box).
        See :mod:`sb3_pgext.common.estimators`.
    :param n_action_samples: K, the number of fresh actions per state for the sampled estimators
        ("likelihood", "reparameterization"); None: 4 for "likelihood", 1 for "reparameterization".
        Unused by "expected". Must be >= 1; K > 1 is not available with gSDE (its exploration matrix
        is shared by all samples).
    :param ent_coef: Entropy coefficient α: a float >= 0 (0.0 turns entropy regularisation off), or
        "auto" to learn it towards ``target_entropy`` ("auto_0.1": learned, starting at 0.1)
    :param target_update_interval: update the target critics every ``target_update_interval`` gradient steps
    :param target_entropy: target entropy when learning ``ent_coef``; "auto": −dim(A) for Box actions,
        0.5 · log|A| for Discrete actions (half the uniform policy's entropy)
    :param log_grad_var: Log ``train/grad_var`` each update: the variance of the actor-gradient estimator
        over ``batch_size`` replay minibatches (see :func:`sb3_pgext.gradient_variance`)
    :param fast_update: the fast update described above (default); False: SB3 SAC's arithmetic (separate
        critic modules, SB3's Adam and ``polyak_update``), for bit-for-bit comparisons with SAC
    :param cuda_graph: run the fast update's gradient step as a captured CUDA graph (a CUDA device, ``fast_update``
        and no gSDE needed); None (default): on where it can be, i.e. on CUDA. If the capture fails, the model
        warns once and trains eagerly
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE), Box actions only
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param use_sde_at_warmup: Whether to use gSDE instead of uniform sampling before learning starts
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation, e.g. ``net_arch``
        and ``n_critics`` (default 2, must be >= 1; the target takes their minimum)
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
    policy: OffPACPolicy
    accepted_policy_classes = (OffPACPolicy,)
    accepted_files = "files saved by OffPAC, or by SB3's SAC to warm-start from"

    def __init__(
        self,
        policy: str | type[OffPACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        actor_gradient: str = "auto",
        n_action_samples: int | None = None,
        ent_coef: str | float = "auto",
        target_update_interval: int = 1,
        target_entropy: str | float = "auto",
        log_grad_var: bool = False,
        fast_update: bool = True,
        cuda_graph: bool | None = None,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        use_sde_at_warmup: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        _check_arguments(actor_gradient, n_action_samples, ent_coef, target_entropy, policy_kwargs, cuda_graph)
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            use_sde_at_warmup=use_sde_at_warmup,
            supported_action_spaces=None,  # checked below, with a ValueError naming what is supported
            support_multi_env=True,
        )
        self.actor_gradient = actor_gradient
        self.n_action_samples = n_action_samples
        self.target_entropy = target_entropy
        self.log_ent_coef: th.Tensor | None = None
        self.ent_coef = ent_coef
        self.target_update_interval = target_update_interval
        self.log_grad_var = log_grad_var
        self.fast_update = fast_update
        self.cuda_graph = cuda_graph
        if cuda_graph and (self.device.type != "cuda" or not fast_update or use_sde):
            raise ValueError(
                f"cuda_graph=True needs a CUDA device, fast_update=True and use_sde=False; got device={self.device}, "
                f"fast_update={fast_update}, use_sde={use_sde} (cuda_graph=None captures where it can)"
            )
        self._cuda_graph_step: CapturedGradientStep | None = None
        self._cuda_graph_failed = False
        self.ent_coef_optimizer: th.optim.Adam | None = None
        if env is not None:  # None only while loading without an env: the saved values are restored
            self._resolve_for_env()

        if _init_setup_model:
            self._setup_model()

    @classmethod
    def _policy_class_for(cls, saved: type) -> type | None:
        """SB3 SAC's policy classes (a SAC checkpoint) become OffPAC's, which have the same layout for Box actions."""
        return cls.policy_aliases[SAC_POLICY_ALIASES[saved]] if saved in SAC_POLICY_ALIASES else None

    def _resolve_for_env(self) -> None:
        """Check the action space, then resolve "auto" / None defaults of the estimator for it."""
        check_action_space("offpac", self.action_space)
        discrete = isinstance(self.action_space, spaces.Discrete)
        if self.actor_gradient == "auto":
            self.actor_gradient = "expected" if discrete else "reparameterization"
        if self.actor_gradient == "reparameterization" and discrete:
            raise ValueError(
                'actor_gradient="reparameterization" needs Box actions (a = f_θ(s, ξ) must be differentiable); '
                'use "expected" or "likelihood" for Discrete actions'
            )
        if self.actor_gradient == "expected" and not discrete:
            raise ValueError(
                'actor_gradient="expected" sums over every action and needs Discrete actions; '
                'use "reparameterization" or "likelihood" for Box actions'
            )
        if self.n_action_samples is None:
            self.n_action_samples = DEFAULT_LIKELIHOOD_SAMPLES if self.actor_gradient == "likelihood" else 1
        if self.use_sde and self.n_action_samples > 1 and self.actor_gradient != "expected":
            raise ValueError(
                f"n_action_samples={self.n_action_samples} needs independent samples, but gSDE's exploration "
                "matrix is shared by all of them: use n_action_samples=1 with use_sde=True"
            )

    def _setup_model(self) -> None:
        # fast_update is passed to the policy here, not kept in the saved policy_kwargs: a file loads with either
        policy_kwargs = self.policy_kwargs
        self.policy_kwargs = {**policy_kwargs, "fast_update": self.fast_update}
        try:
            super()._setup_model()
        finally:
            self.policy_kwargs = policy_kwargs
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target
        self.batch_norm_stats = get_parameters_by_name(self.critic, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.critic_target, ["running_"])

        if self.target_entropy == "auto":
            if isinstance(self.action_space, spaces.Discrete):
                self.target_entropy = float(DISCRETE_TARGET_ENTROPY_FRACTION * np.log(self.action_space.n))
            else:
                self.target_entropy = float(-np.prod(self.action_space.shape).astype(np.float32))  # type: ignore[union-attr]
        else:
            self.target_entropy = float(self.target_entropy)

        if isinstance(self.ent_coef, str):  # "auto" or "auto_<initial value>", checked in the constructor
            init_value = float(self.ent_coef.split("_")[1]) if "_" in self.ent_coef else 1.0
            self.log_ent_coef = th.log(th.ones(1, device=self.device) * init_value).requires_grad_(True)
            self.ent_coef_optimizer = th.optim.Adam([self.log_ent_coef], lr=self.lr_schedule(1), fused=self.fast_update or None)
        else:
            self.ent_coef_tensor = th.tensor(float(self.ent_coef), device=self.device)

    # --- the pieces of one gradient step -------------------------------------------------------

    def _current_ent_coef(self) -> th.Tensor:
        """α as it is now: the learned exp(log α), detached, or the fixed coefficient."""
        if self.log_ent_coef is not None:
            return th.exp(self.log_ent_coef.detach())
        return self.ent_coef_tensor

    def _sample_policy(self, obs: PyTorchObs) -> PolicySample:
        """The current policy at the batch's states: fresh actions (or the whole distribution)."""
        assert self.n_action_samples is not None
        if isinstance(self.action_space, spaces.Box):
            reparameterize = self.actor_gradient == "reparameterization"
            actions, log_prob = self.policy.sample_log_prob(obs, self.n_action_samples, reparameterize)
            if self.n_action_samples == 1:
                neg_entropy = log_prob.reshape(-1, 1)
            else:
                neg_entropy = log_prob.reshape(self.n_action_samples, -1).mean(dim=0).reshape(-1, 1)
            return PolicySample(neg_entropy, actions, log_prob, None)
        log_probs, probs = self.actor.log_probs_and_probs(obs)  # type: ignore[union-attr]
        neg_entropy = (probs * log_probs).sum(dim=1, keepdim=True)
        if self.actor_gradient == "expected":
            return PolicySample(neg_entropy, None, log_probs, probs)
        # K actions per state, drawn as torch's Categorical.sample((K,)) draws them (shape (batch, K), then (K, batch))
        draws = th.multinomial(probs.detach(), self.n_action_samples, replacement=True)
        actions, log_prob = draws.t(), log_probs.gather(1, draws).t()
        return PolicySample(neg_entropy, actions.reshape(-1), log_prob.reshape(-1), probs)

    def _soft_state_value(self, obs: PyTorchObs, ent_coef: th.Tensor) -> th.Tensor:
        """E_{a∼π(s)}[ min_j Q_φ̄j(s, a) − α log π(a|s) ] with fresh a from the current policy."""
        if isinstance(self.action_space, spaces.Discrete):
            log_probs, probs = self.actor.log_probs_and_probs(obs)  # type: ignore[union-attr]
            q_values = self.policy.min_q(self.critic_target, obs)
            return (probs * (q_values - ent_coef * log_probs)).sum(dim=1, keepdim=True)
        next_actions, next_log_prob = self.actor.action_log_prob(obs)
        next_q_values = self.policy.min_q(self.critic_target, obs, next_actions)
        return next_q_values - ent_coef * next_log_prob.reshape(-1, 1)

    def _replay_q_values(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        """Each critic's Q(s, a) at the buffer's actions, shape (batch, 1)."""
        if isinstance(self.action_space, spaces.Discrete):
            return tuple(q.gather(1, actions.long()) for q in self.critic(obs))  # type: ignore[call-arg]
        return self.critic(obs, actions)

    def _actor_loss(self, obs: PyTorchObs, sample: PolicySample, ent_coef: th.Tensor, baseline: bool = True) -> th.Tensor:
        """
        The surrogate of the chosen estimator, with the critics as they are (in ``train``: after this
        step's critic update); ``baseline=False`` drops the leave-one-out baseline of "likelihood".
        """
        if self.actor_gradient == "expected":
            assert sample.probs is not None
            with th.no_grad():
                q_values = self.policy.min_q(self.critic, obs)
            return expected_policy_loss(sample.probs, sample.log_prob, q_values, ent_coef)
        assert sample.actions is not None and self.n_action_samples is not None
        if self.actor_gradient == "reparameterization":
            obs_k = repeat_observations(obs, self.n_action_samples)
            q_values = self.policy.min_q(self.critic, obs_k, sample.actions)
            return reparameterization_loss(sample.log_prob.reshape(-1, 1), q_values, ent_coef)
        # "likelihood": f(s, a) = Q(s, a) − α log π(a|s), the soft value whose expectation is ascended
        with th.no_grad():
            if isinstance(self.action_space, spaces.Discrete):
                q_table = self.policy.min_q(self.critic, obs).repeat(self.n_action_samples, 1)
                q_values = q_table.gather(1, sample.actions.long().reshape(-1, 1))
            else:
                obs_k = repeat_observations(obs, self.n_action_samples)
                q_values = self.policy.min_q(self.critic, obs_k, sample.actions)
            soft_q = q_values.reshape(-1) - ent_coef * sample.log_prob
        shape = (self.n_action_samples, -1)
        return likelihood_ratio_loss(sample.log_prob.reshape(shape), soft_q.reshape(shape), baseline)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self._optimizers())

        if self.log_grad_var:  # before the update, on fresh replay minibatches of batch_size
            self.logger.record("train/grad_var", gradient_variance(self)["variance"])

        # Logged values stay on the device and are read once, after the loop: no synchronisation per step (so the
        # losses are checked for NaN / inf there too)
        logs: dict[str, list[th.Tensor]] = defaultdict(list)
        assert self.replay_buffer is not None
        captured = self._captured_step(batch_size)
        if captured is not None:  # the call's minibatches sampled together, each step one replay of the CUDA graph
            batches = minibatches(self.replay_buffer, gradient_steps, batch_size, self._vec_normalize_env)
            step = captured
        else:  # a minibatch sampled before each step, as SAC samples it
            batches = (self.replay_buffer.sample(batch_size, env=self._vec_normalize_env) for _ in range(gradient_steps))
            step = self._gradient_step
        # Subnormal floats (Adam's moments of dead units) flushed to zero on the CPU: they slow the arithmetic many
        # times (see flush_denormal); the exact update keeps SAC's arithmetic bit for bit
        with flush_denormal(enabled=self.fast_update and self.device.type == "cpu"):
            for gradient_step, replay_data in enumerate(batches):
                for key, value in step(replay_data).items():
                    logs[key].append(value)
                if gradient_step % self.target_update_interval == 0:
                    self._update_targets()

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if gradient_steps == 0:
            return
        # One transfer for every logged value; means in float64 of the float32 values, as np.mean of .item()s
        keys = [key for key in ("ent_coef", "entropy", "actor_loss", "critic_loss", "q_mean", "ent_coef_loss") if logs[key]]
        table = th.stack([th.stack(logs[key]).reshape(-1) for key in keys]).cpu().numpy().astype(np.float64)
        for key, values in zip(keys, table):
            if key.endswith("loss"):
                where = f"in gradient steps {self._n_updates - gradient_steps + 1}-{self._n_updates} (this train() call)"
                check_finite_loss("OffPAC", key, th.as_tensor(values), where)
            self.logger.record(f"train/{key}", np.mean(values))

    def _gradient_step(self, replay_data: ReplayBufferSamples) -> dict[str, th.Tensor]:
        """
        One gradient step on one replay minibatch: α, then the critics towards the soft target, then the actor
        with the updated critics (SAC's order). It reads no value back from the device, so that it can be captured
        as a CUDA graph (:mod:`sb3_pgext.offpac.cuda_graph`).

        :return: the values to log, as tensors (detached)
        """
        logs = {}
        # n-step replay: the discount is γ^n (when the episode did not end earlier)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        if self.use_sde:  # log_std may have changed since the last step
            self.actor.reset_noise()  # type: ignore[union-attr]

        sample = self._sample_policy(replay_data.observations)

        ent_coef = self._current_ent_coef()  # α of this step, before its own update (as SAC)
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            assert isinstance(self.target_entropy, float)
            # Detached: only log α learns from this loss (softlearning issue 60)
            ent_coef_loss = -(self.log_ent_coef * (sample.neg_entropy + self.target_entropy).detach()).mean()
            logs["ent_coef_loss"] = ent_coef_loss.detach()
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.backward()
            self.ent_coef_optimizer.step()
        logs["ent_coef"] = ent_coef
        logs["entropy"] = -sample.neg_entropy.detach().mean()

        with th.no_grad():
            next_values = self._soft_state_value(replay_data.next_observations, ent_coef)
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_values

        current_q_values = self._replay_q_values(replay_data.observations, replay_data.actions)
        critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
        assert isinstance(critic_loss, th.Tensor)
        logs["critic_loss"] = critic_loss.detach()
        logs["q_mean"] = current_q_values[0].detach().mean()
        self.critic.optimizer.zero_grad()
        critic_loss.backward()
        self.critic.optimizer.step()

        actor_loss = self._actor_loss(replay_data.observations, sample, ent_coef)
        logs["actor_loss"] = actor_loss.detach()
        self.actor.optimizer.zero_grad()
        # The fast update differentiates the actor's loss for the actor only (the critics' weight gradients
        # would be discarded)
        actor_loss.backward(inputs=_optimizer_parameters(self.actor.optimizer) if self.fast_update else None)
        self.actor.optimizer.step()
        return logs

    def _update_targets(self) -> None:
        """The Polyak update of the target critics (one foreach operation in the fast update), and BatchNorm's statistics."""
        critic_parameters, target_parameters = list(self.critic.parameters()), list(self.critic_target.parameters())
        if self.fast_update:
            with th.no_grad():
                th._foreach_lerp_(target_parameters, critic_parameters, self.tau)
        else:
            polyak_update(critic_parameters, target_parameters, self.tau)
        # Copy running stats, see SB3 issue #996
        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

    def _optimizers(self) -> list[th.optim.Optimizer]:
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        return optimizers if self.ent_coef_optimizer is None else [*optimizers, self.ent_coef_optimizer]

    def _captured_step(self, batch_size: int) -> CapturedGradientStep | None:
        """The captured gradient step for ``batch_size`` (a new one when the batch size changed), None when eager."""
        # None captures where it can; on a device other than CUDA (a file saved with cuda_graph=True loaded on the
        # CPU), eagerly
        capturable = self.device.type == "cuda" and self.fast_update and not self.use_sde
        if self.cuda_graph is False or not capturable or self._cuda_graph_failed:
            return None
        if self._cuda_graph_step is None or self._cuda_graph_step.batch_size != batch_size:
            if self._cuda_graph_step is not None:  # the optimizers as they were, for the new step's eager warm-up
                self._cuda_graph_step.release()
            self._cuda_graph_step = CapturedGradientStep(self, batch_size)
        return self._cuda_graph_step

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        """SB3's schedule step; a captured update reads the new rate from the tensor its graph was captured with."""
        super()._update_learning_rate(optimizers)
        if self._cuda_graph_step is not None:
            self._cuda_graph_step.update_learning_rates()

    def actor_loss(self, obs: PyTorchObs, baseline: bool = True) -> th.Tensor:
        """
        The actor's loss at the batch's states with fresh actions, α and the critics as they are now: the surrogate
        whose gradient is minus the chosen estimator (what :func:`sb3_pgext.gradient_variance` measures);
        ``baseline=False`` drops the leave-one-out baseline of "likelihood".

        :param obs: the states (policy input)
        :param baseline: whether the estimator keeps its baseline
        """
        return self._actor_loss(obs, self._sample_policy(obs), self._current_ent_coef(), baseline=baseline)

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """SB3's callback, after the check that what enters the replay buffer is finite."""
        return super()._init_callback(with_callbacks([FiniteTransitionCheck()], callback), progress_bar)

    def learn(
        self: SelfOffPAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "OffPAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfOffPAC:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor", "critic", "critic_target", "_cuda_graph_step", "_cuda_graph_failed"]

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """
        Save the replay buffer as a pickle file (SB3's ``save_replay_buffer``), written beside ``path`` and renamed
        into place (:func:`~sb3_pgext.common.save_util.atomic_path`): a failed or killed save leaves the previous file.

        :param path: path to the file where the replay buffer should be saved (``.pkl`` is added if it has no
            suffix), or a file-like object
        """
        if not isinstance(path, (str, pathlib.Path)):
            super().save_replay_buffer(path)
            return
        with atomic_path(path, suffix="pkl") as temporary:
            super().save_replay_buffer(temporary)

    def get_parameters(self) -> dict[str, dict]:
        """
        SB3's ``get_parameters``; the critic optimizer's state is given in the layout of separate critics
        (as the policy's state dict is), and the learning rates as floats, so that files depend neither on
        ``fast_update`` nor on ``cuda_graph``.
        """
        params = super().get_parameters()
        for name in ("actor.optimizer", "critic.optimizer", "ent_coef_optimizer"):
            for group in params.get(name, {}).get("param_groups", []):  # a captured update's settings are not saved
                group["lr"], group["capturable"] = float(group["lr"]), False
        if isinstance(self.critic, BatchedCriticMixin):
            params["critic.optimizer"] = self.critic.per_network_optimizer_state(
                params["critic.optimizer"], _optimizer_parameters(self.critic.optimizer)
            )
        return params

    def set_parameters(
        self,
        load_path_or_dict: str | pathlib.Path | io.BufferedIOBase | dict[str, dict],
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """
        SB3's ``set_parameters``, for files saved with either value of ``fast_update`` (and by older
        versions): the critic optimizer's state is rewritten for this model's critics, and each optimizer
        keeps this model's implementation (fused or not) whatever the saved one was.

        :param load_path_or_dict: the parameters, or a model zip to read them from
        :param exact_match: whether every module and optimizer of the model must be given
        :param device: the device to load the parameters on
        """
        if isinstance(load_path_or_dict, dict):
            params = dict(load_path_or_dict)
        else:
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        named_optimizers = {"actor.optimizer": self.actor.optimizer, "critic.optimizer": self.critic.optimizer}
        if self.ent_coef_optimizer is not None:
            named_optimizers["ent_coef_optimizer"] = self.ent_coef_optimizer
        for name, optimizer in named_optimizers.items():
            saved = params.get(name)
            if not (isinstance(saved, dict) and {"state", "param_groups"} <= saved.keys()):
                continue  # absent or incomplete: SB3 (torch) reports it as for its own algorithms
            if name == "critic.optimizer" and isinstance(self.critic, BatchedCriticMixin):
                params[name] = self.critic.stacked_optimizer_state(saved, _optimizer_parameters(optimizer))
            check_optimizer_state(name, params[name], _optimizer_parameters(optimizer))
        with optimizer_implementations_kept(list(named_optimizers.values())):
            super().set_parameters(params, exact_match=exact_match, device=device)
        self._cuda_graph_step = None  # its graph holds the optimizers' replaced state tensors: captured again when needed

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        if self.ent_coef_optimizer is not None:
            return [*state_dicts, "ent_coef_optimizer"], ["log_ent_coef"]
        return state_dicts, ["ent_coef_tensor"]


def _optimizer_parameters(optimizer: th.optim.Optimizer) -> list[th.Tensor]:
    return [param for group in optimizer.param_groups for param in group["params"]]


def _check_arguments(
    actor_gradient: str,
    n_action_samples: int | None,
    ent_coef: str | float,
    target_entropy: str | float,
    policy_kwargs: dict[str, Any] | None,
    cuda_graph: bool | None,
) -> None:
    """ValueErrors for bad arguments that do not depend on the environment (see :mod:`sb3_pgext.common.arguments`)."""
    check_choice("cuda_graph", cuda_graph, (None, True, False))
    check_choice("actor_gradient", actor_gradient, ACTOR_GRADIENTS)
    check_integer("n_action_samples", n_action_samples, 1, optional=True)
    check_integer("n_critics (in policy_kwargs)", (policy_kwargs or {}).get("n_critics", 2), 1)
    if isinstance(ent_coef, str):
        valid = ent_coef == "auto"
        if ent_coef.startswith("auto_"):
            try:
                valid = float(ent_coef[len("auto_") :]) > 0
            except ValueError:
                valid = False
        if not valid:
            raise ValueError(
                f'ent_coef must be a float >= 0, "auto" or "auto_<initial value > 0>" (e.g. "auto_0.1"), got {ent_coef!r}'
            )
    else:
        check_number("ent_coef", ent_coef, low=0, why="when fixed; 0.0 turns entropy regularisation off")
    if isinstance(target_entropy, str) and target_entropy != "auto":
        raise ValueError(f'target_entropy must be a float or "auto", got {target_entropy!r}')
