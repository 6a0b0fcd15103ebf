"""
Where a policy-gradient estimator's variance comes from: the decomposition of Tucker et al. (2018),
"The Mirage of Action-Dependent Baselines in Reinforcement Learning", https://arxiv.org/abs/1802.10031,
section 3.

The per-sample estimator of an actor-critic is

    ĝ(s, a, τ) = ∇_θ log π_θ(a|s) (R̂(s, a, τ) − φ(s, a)) + ∇_θ E_{a'∼π_θ(s)}[φ(s, a')]

with R̂ the λ-return of the continuation τ after (s, a) (the GAE advantage plus V(s), computed as the model
trains with it) and φ the baseline: V(s) (the value baseline, whose last term vanishes), V(s) + ηĀ(s, a)
(CVPG's control variate) or nothing. By the law of total variance its variance (the trace of its
covariance) is

    Σ_s = tr Var_s( E[ĝ | s] )               which states were visited
    Σ_a = E_s tr Var_{a|s}( E[ĝ | s, a] )     which action was drawn: the only term φ's dependence on a can cut
    Σ_τ = E_{s,a} tr Var_τ( ĝ | s, a )        what happened after: later actions, rewards and states

and Σ_s and Σ_τ are the same for every unbiased φ. φ = Q^π, the best an action-dependent control variate
can do, makes E[ĝ | s, a] the same for every a, so Σ_a = 0: the ceiling's terms are (Σ_s, 0, Σ_τ). φ = V^π,
the true value (a perfect value function), leaves Σ_a = E_s tr Var_a(∇ log π(a|s) A^π(s, a)), the part due to
the advantage itself; the value baseline's Σ_a minus that is what the value function's error costs (it can
be negative: V^π is not the variance-minimising state baseline).

The terms are measured by nested sampling: ``n_states`` states s_i drawn uniformly from a stretch of the
policy's own experience, ``n_actions`` actions a_ij ∼ π(·|s_i) at each, and ``n_rollouts`` continuations
τ_ijk re-run from the restored env state (see :mod:`sb3_pgext.common.env_state`). With g_ij = ∇ log π(a_ij|s_i),
m_ij = g_ij mean_k(R̂_ijk − φ_ij) + ∇E φ(s_i, ·), M_i = mean_j m_ij and the unbiased sample variances

    Σ_τ ≈ mean_i τ_i,  τ_i = mean_j ‖g_ij‖² Var_k(R̂_ijk)
    Σ_a ≈ mean_i α_i,  α_i = tr Var_j(m_ij) − τ_i / K
    Σ_s ≈ mean_i σ_i,  σ_i = I/(I − 1) ‖M_i − mean_i M_i‖² − tr Var_j(m_ij) / J

each unbiased (the subtracted parts remove the noise of the inner means), and each a mean over states, whose
standard error is std_i / √I (states are treated as independent; they are ``state_stride`` steps apart on
average).
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from sb3_pgext.common.env_state import check_restorable, get_env_state, set_env_state, wrapper_kind
from sb3_pgext.common.estimators import qprop_eta
from sb3_pgext.common.gradient_variance import flatten_gradients
from sb3_pgext.common.horizon import HorizonAwareValueHead, horizon_aware_value, use_horizon_aware_value
from sb3_pgext.common.utils import isolated_random_streams

#: the continuations are cut (and bootstrapped with V, as a rollout's end is) where (γλ)^t falls below this
HORIZON_TOLERANCE = 1e-3
#: wrappers that ``gym.make`` and SB3 add, which rebuilding the env from its spec reproduces
_KNOWN_WRAPPERS = ("Monitor", "TimeLimit", "OrderEnforcing", "PassiveEnvChecker")
TERMS = ("state", "action", "trajectory", "total")


def variance_decomposition(
    model: OnPolicyAlgorithm,
    n_states: int = 32,
    n_actions: int = 8,
    n_rollouts: int = 8,
    control_variate: bool = True,
    env: str | Callable[[], gym.Env] | None = None,
    horizon: int | None = None,
    state_stride: int = 20,
    seed: int = 0,
    eta: float | None = None,
) -> dict[str, Any]:
    """
    Tucker et al.'s decomposition of the variance of the model's per-sample policy-gradient estimator into
    its state, action and trajectory terms (see the module docstring), measured by re-running continuations
    from restored env states, at the model's current parameters.

    Works for PPOKL, CVPG and SB3's actor-critics (PPO, A2C). The estimator is the one
    :func:`sb3_pgext.gradient_variance` measures, per sample: raw (not normalised) advantages, the value
    baseline, and CVPG's control variate with ``eta`` (by default Q-Prop's η* for the model's current critic,
    estimated from the decomposition's own draws and cross-fitted: each half of the states gets the η* of the
    other half, as CVPG weights each env of a rollout by the η* of the others);
    ``control_variate=False`` drops the value baseline (PPO, PPOKL), or CVPG's control variate (keeping the
    value baseline). A batch of N independent samples has 1/N of these variances.

    It works on its own copies of the env (``env``, or rebuilt from the training env's spec, normalised with
    a frozen copy of the model's ``VecNormalize`` statistics) and of the policy, and leaves the model, its
    buffers, the training env and every global random stream (Python's, numpy's, torch's, CUDA's) as they were.

    :param model: an on-policy actor-critic model
    :param n_states: I, the number of states, drawn uniformly from ``n_states * state_stride`` consecutive
        steps of the policy in a fresh copy of the env (>= 2)
    :param n_actions: J, the actions drawn from π at each state (>= 3)
    :param n_rollouts: K, the continuations re-run after each action (>= 2)
    :param control_variate: whether the estimator keeps its baseline / control variate
    :param env: the env as the model sees it (before vectorisation): an env id, or a function that makes one;
        None rebuilds it from the training env's spec. It must be restorable (MuJoCo or classic control).
    :param horizon: continuations are cut after this many steps and bootstrapped with V (None: where (γλ)^t
        falls below 1e-3, or the episode's time limit when γλ = 1)
    :param state_stride: the average number of steps between two measured states
    :param seed: seed of the env copies and of every random draw
    :param eta: the weight of a control variate (CVPG's): None estimates Q-Prop's η* = Ĉov(Â, Ā) / V̂ar(Ā) over
        the draws, cross-fitted between the two halves of the states; a number fixes it
    :return: ``state``, ``action``, ``trajectory`` and ``total`` (traces of covariance, per sample), their
        standard errors ``state_se``, ``action_se``, ``trajectory_se`` and ``total_se``; ``ceiling``, the same
        for φ = the true Q of the λ-return (action term 0); ``true_value``, the same for φ = the true V (the
        action term estimated without bias from the same draws, :func:`true_value_action_term`); and
        ``n_states``, ``n_actions``, ``n_rollouts``, ``horizon``; ``eta``, the mean weight of the control
        variate (None without one)
    """
    for name, value, least in (("n_states", n_states, 2), ("n_actions", n_actions, 3), ("n_rollouts", n_rollouts, 2)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(state_stride, (int, np.integer)) or state_stride < 1:
        raise ValueError(f"state_stride must be an integer >= 1, got {state_stride!r}")
    if not isinstance(model, OnPolicyAlgorithm) or not isinstance(model.policy, ActorCriticPolicy):
        raise TypeError(
            f"variance_decomposition measures on-policy actor-critics (PPOKL, CVPG, SB3's PPO and A2C), got {type(model).__name__}"
        )
    make_env = _env_factory(model, env)
    vec_normalize = model.get_vec_normalize_env()
    gamma, gae_lambda = float(model.gamma), float(model.gae_lambda)
    probe = make_env()
    probe.reset(seed=seed)
    check_restorable(probe)
    if horizon is None:
        horizon = _default_horizon(gamma * gae_lambda, probe)
    elif not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 or None, got {horizon!r}")
    probe.close()

    with isolated_random_streams(seed):
        measure = _Measurement(model, make_env, vec_normalize, int(horizon), n_actions, n_rollouts, seed)
        try:
            states = measure.visited_states(n_states, state_stride)
            per_state = [measure.state_terms(obs, saved, control_variate) for obs, saved in states]
        finally:
            measure.close()

    # m_ij = u_ij + η w_ij: the estimator is linear in the control variate's weight
    n = len(per_state)
    etas = None
    if per_state[0].cv_weighted is not None:
        etas = np.full(n, float(eta)) if eta is not None else _cross_fitted_eta(per_state)
    estimates = [terms.plain if etas is None else terms.plain + etas[i] * terms.cv_weighted for i, terms in enumerate(per_state)]
    # per state: τ_i, tr Var_j(m_ij), M_i (see the module docstring)
    tau = np.array([terms.tau for terms in per_state])
    action_spread = np.array([float(rows.var(dim=0, unbiased=True).sum()) for rows in estimates])
    means = th.stack([rows.mean(dim=0) for rows in estimates])
    alpha_true_value = np.array([terms.true_value for terms in per_state])
    sigma = n / (n - 1) * ((means - means.mean(dim=0)) ** 2).sum(dim=1).numpy() - action_spread / n_actions
    alpha = action_spread - tau / n_rollouts

    def summary(per_state_terms: dict[str, np.ndarray]) -> dict[str, float]:
        result = {}
        for name, values in per_state_terms.items():
            result[name] = float(values.mean())
            result[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(n))
        return result

    results = summary(dict(state=sigma, action=alpha, trajectory=tau, total=sigma + alpha + tau))
    results["ceiling"] = summary(dict(state=sigma, action=np.zeros(n), trajectory=tau, total=sigma + tau))
    results["true_value"] = summary(
        dict(state=sigma, action=alpha_true_value, trajectory=tau, total=sigma + alpha_true_value + tau)
    )
    mean_eta = None if etas is None else float(etas.mean())
    return dict(**results, n_states=n_states, n_actions=n_actions, n_rollouts=n_rollouts, horizon=int(horizon), eta=mean_eta)


@dataclass
class _StateDraws:
    """One state's draws: m_ij = plain_j + η cv_weighted_j (rows over the J actions), and what η* is estimated from."""

    tau: float
    plain: th.Tensor
    cv_weighted: th.Tensor | None
    true_value: float
    advantages: np.ndarray
    control_variate: np.ndarray | None


def _cross_fitted_eta(per_state: list[_StateDraws]) -> np.ndarray:
    """Q-Prop's η* per state (:func:`~sb3_pgext.common.estimators.qprop_eta`), from the draws of the other half of the states (even / odd)."""
    n_draws = len(per_state[0].advantages)
    advantages = th.as_tensor(np.concatenate([terms.advantages for terms in per_state]))
    control_variate = th.as_tensor(np.concatenate([terms.control_variate for terms in per_state]))  # type: ignore[misc]
    folds = (th.arange(len(per_state)) % 2).repeat_interleave(n_draws)
    return qprop_eta(advantages, control_variate, "adaptive", folds)[::n_draws].numpy()


class _Measurement:
    """The policy (a copy), the env copies and the sampling of one :func:`variance_decomposition`."""

    def __init__(
        self,
        model: OnPolicyAlgorithm,
        make_env: Callable[[], gym.Env],
        vec_normalize: VecNormalize | None,
        horizon: int,
        n_actions: int,
        n_rollouts: int,
        seed: int,
    ):
        self.model = model
        # a copy: the model's policy (and the distribution it keeps from its last forward pass) stays as it was
        self.policy: ActorCriticPolicy = type(model.policy)(**model.policy._get_constructor_parameters())
        self.horizon_aware = isinstance(model.policy.value_net, HorizonAwareValueHead)
        if self.horizon_aware:
            use_horizon_aware_value(self.policy)
        self.policy.load_state_dict(model.policy.state_dict())
        self.policy.to(model.policy.device)
        self.policy.set_training_mode(False)
        self.parameters = [param for param in self.policy.parameters() if param.requires_grad]
        self.vec_normalize = vec_normalize
        self.horizon = horizon
        self.n_actions, self.n_rollouts = n_actions, n_rollouts
        self.gamma, self.gae_lambda = float(model.gamma), float(model.gae_lambda)
        self.stream_env = make_env()
        self.stream_env.reset(seed=seed)
        self.envs = [make_env() for _ in range(n_actions * n_rollouts)]
        for index, copy_env in enumerate(self.envs):
            copy_env.reset(seed=seed + 1 + index)  # once, so that steps are allowed; restoring sets the state
        if self.horizon_aware:  # T, the env's time limit (every copy's), for the time left T − t
            self.time_limit = int(self.stream_env.get_wrapper_attr("_max_episode_steps"))

    def close(self) -> None:
        for env in [self.stream_env, *self.envs]:
            env.close()

    # ------------------------------------------------------------------ the policy, as collection runs it

    def _obs_tensor(self, obs: np.ndarray | dict[str, np.ndarray]) -> th.Tensor | dict[str, th.Tensor]:
        if self.vec_normalize is not None:
            obs = self.vec_normalize.normalize_obs(obs)
        return obs_as_tensor(obs, self.policy.device)  # type: ignore[arg-type]

    def _reward(self, reward: float) -> float:
        if self.vec_normalize is None:
            return float(reward)
        return float(self.vec_normalize.normalize_reward(np.array([reward]))[0])

    def _reset_noise(self, n_envs: int) -> None:
        if self.model.use_sde:
            self.policy.reset_noise(n_envs)

    @th.no_grad()
    def _act(self, obs: np.ndarray | dict[str, np.ndarray], envs: list[gym.Env]) -> tuple[np.ndarray, np.ndarray]:
        """
        Sampled actions (as SB3's rollout sends them to the env) and V(s) for a batch of raw observations, the
        current observations of ``envs`` (whose time limits give a horizon-aware value its time left).
        """
        actions, values, _ = self.policy(self._obs_tensor(obs))
        values = values.flatten()
        if self.horizon_aware:
            time_left = [self.time_limit - env.get_wrapper_attr("_elapsed_steps") for env in envs]
            reward_rate = self.policy.value_net.reward_rate
            assert reward_rate is not None
            values = horizon_aware_value(values, reward_rate, th.as_tensor(time_left, device=values.device), self.gamma)
        return self._env_actions(actions), values.double().cpu().numpy()

    def _env_actions(self, actions: th.Tensor) -> np.ndarray:
        actions_np = actions.cpu().numpy()
        action_space = self.model.action_space
        if isinstance(action_space, spaces.Box):
            if self.policy.squash_output:
                return self.policy.unscale_action(actions_np)
            return np.clip(actions_np, action_space.low, action_space.high)
        return actions_np

    # ------------------------------------------------------------------ sampling

    def visited_states(self, n_states: int, state_stride: int) -> list[tuple[Any, dict[str, Any]]]:
        """``n_states`` (observation, saved env state) pairs at distinct steps drawn uniformly from the policy's run."""
        n_steps = n_states * state_stride
        chosen = set(np.random.choice(n_steps, size=n_states, replace=False).tolist())
        env, states = self.stream_env, []
        obs, _ = env.reset()
        self._reset_noise(1)
        sde_sample_freq = self.model.sde_sample_freq
        for step in range(n_steps):
            if step in chosen:
                states.append((copy.deepcopy(obs), get_env_state(env)))
            if self.model.use_sde and sde_sample_freq > 0 and step % sde_sample_freq == 0:
                self._reset_noise(1)
            actions, _ = self._act(_batch([obs]), [env])
            obs, _, terminated, truncated, _ = env.step(actions[0])
            if terminated or truncated:
                obs, _ = env.reset()
                self._reset_noise(1)
        return states

    def state_terms(self, obs: Any, saved: dict[str, Any], control_variate: bool) -> "_StateDraws":
        """
        At one state: τ_i = mean_j ‖g_ij‖² Var_k(R̂_ijk), the rows m_ij (module docstring) as m_ij = u_ij + η w_ij
        (w = None without a control variate), the action term of φ = V^π (:func:`true_value_action_term`), and
        Â_ij = mean_k R̂_ijk − V(s_i) and Ā_ij, from which η* is estimated.
        """
        n_actions, n_rollouts = self.n_actions, self.n_rollouts
        obs_batch = self._obs_tensor(_batch([obs] * n_actions))
        self._reset_noise(n_actions)  # gSDE: each action with its own exploration noise
        with th.no_grad():
            actions = self.policy.get_distribution(obs_batch).get_actions()
        env_actions = np.repeat(self._env_actions(actions), n_rollouts, axis=0)
        returns, state_value = self._lambda_returns(obs, saved, env_actions)
        returns = returns.reshape(n_actions, n_rollouts)

        # the baseline φ(s, a_j) and the surrogate whose gradient is ∇E φ(s, ·)
        distribution = self.policy.get_distribution(obs_batch)
        log_prob = distribution.log_prob(actions)
        # computed with or without the control variate, so that both draw the same random numbers (paired)
        cv_terms = getattr(self.model, "control_variate_terms", None)
        values = th.full((n_actions,), state_value, dtype=th.float32, device=actions.device)
        cv_terms = None if cv_terms is None else cv_terms(obs_batch, actions, distribution, values)
        # without its control variate, a model that has one keeps its value baseline; the PPO family drops it
        baseline = state_value if control_variate or cv_terms is not None else 0.0
        with_cv = control_variate and cv_terms is not None
        cv_values = cv_terms[0].double().cpu().numpy() if with_cv else None  # type: ignore[index]

        weights = returns.mean(axis=1) - baseline
        returns_var = returns.var(axis=1, ddof=1)
        scores = th.stack([self._gradient(log_prob[j]) for j in range(n_actions)])
        plain = scores * th.as_tensor(weights).unsqueeze(1)
        cv_weighted = None
        if with_cv:  # w_ij = −g_ij Ā_ij + ∇ analytic_ij
            analytic = th.stack([self._gradient(cv_terms[1][j]) for j in range(n_actions)])  # type: ignore[index]
            cv_weighted = analytic - scores * th.as_tensor(cv_values).unsqueeze(1)
        tau = float(((scores**2).sum(dim=1).numpy() * returns_var).mean())
        true_value = true_value_action_term(scores, returns, center=state_value)
        return _StateDraws(tau, plain, cv_weighted, true_value, weights, cv_values)

    def _gradient(self, output: th.Tensor) -> th.Tensor:
        gradients = th.autograd.grad(output, self.parameters, retain_graph=True, allow_unused=True)
        return flatten_gradients(gradients, self.parameters).double().cpu()

    def _lambda_returns(self, obs: Any, saved: dict[str, Any], first_actions: np.ndarray) -> tuple[np.ndarray, float]:
        """
        R̂ = Â_GAE + V(s) of one continuation per env copy, each from the saved state with its first action,
        cut after ``horizon`` steps; V bootstraps where a time limit or the cut ends it, as in SB3's rollouts.
        Also V(s) of the saved state.
        """
        n_envs, horizon = len(self.envs), self.horizon
        for env in self.envs:
            set_env_state(env, saved)
        rewards = np.zeros((n_envs, horizon))
        values = np.zeros((n_envs, horizon + 1))
        lengths = np.zeros(n_envs, dtype=np.int64)
        end_values = np.zeros(n_envs)
        alive = np.ones(n_envs, dtype=bool)
        observations = [copy.deepcopy(obs) for _ in range(n_envs)]
        self._reset_noise(n_envs)
        actions, values[:, 0] = first_actions, self._act(_batch(observations), self.envs)[1]
        sde_sample_freq = self.model.sde_sample_freq
        for step in range(horizon):
            terminated, truncated = np.zeros(n_envs, dtype=bool), np.zeros(n_envs, dtype=bool)
            for index in np.flatnonzero(alive):
                observations[index], reward, terminated[index], truncated[index], _ = self.envs[index].step(actions[index])
                rewards[index, step] = self._reward(reward)
            lengths[alive] += 1
            if self.model.use_sde and sde_sample_freq > 0 and (step + 1) % sde_sample_freq == 0:
                self._reset_noise(n_envs)
            actions, values[:, step + 1] = self._act(_batch(observations), self.envs)
            ended = alive & (terminated | truncated)
            end_values[ended & ~terminated] = values[ended & ~terminated, step + 1]  # a time limit: bootstrap
            alive &= ~ended
            if not alive.any():
                break
        end_values[alive] = values[alive, horizon]  # cut by the horizon: bootstrap, as at a rollout's end
        advantage = np.zeros(n_envs)
        for step in reversed(range(horizon)):
            active = step < lengths
            next_values = np.where(step == lengths - 1, end_values, values[:, step + 1])
            delta = rewards[:, step] + self.gamma * next_values - values[:, step]
            advantage = np.where(active, delta + self.gamma * self.gae_lambda * advantage, 0.0)
        return advantage + values[:, 0], float(values[0, 0])


def true_value_action_term(scores: th.Tensor, returns: np.ndarray, center: float = 0.0) -> float:
    """
    Σ_a at one state for the baseline φ = V^π(s), the true value (a perfect value function):
    tr Var_a(g(a)(Q(s, a) − V^π(s))) = E_a[‖g‖² (Q − V^π)²] − ‖E_a[g Q]‖², with V^π = E_a Q and E_a g = 0,
    estimated without bias by U-statistics over the J actions (distinct actions are independent) and the
    unbiased Q(s, a_j)² = q_j² − Var_k(R̂_jk) / K, q_j = mean_k R̂_jk. The quantity does not change when Q is
    shifted by a constant of the state, and the estimator stays unbiased, but its variance grows with the
    shift's square (the sampled scores do not sum to zero): pass the model's V(s) as ``center``.

    :param scores: g_j = ∇ log π(a_j|s), shape (J, n_parameters), J >= 3
    :param returns: R̂_jk, shape (J, K)
    :param center: a constant of the state subtracted from the returns first
    :return: the estimate
    """
    n_actions, n_rollouts = returns.shape
    q = returns.mean(axis=1) - center
    q_squared = q**2 - returns.var(axis=1, ddof=1) / n_rollouts
    sq_norms = (scores**2).sum(dim=1).double().numpy()
    total, total_sq = q.sum(), (q**2).sum()
    first = np.mean(sq_norms * q_squared)  # E[‖g‖² Q²]
    cross = np.sum(sq_norms * q * (total - q)) / (n_actions * (n_actions - 1))  # E[‖g_j‖² Q_j Q_j']
    others = (total - q) ** 2 - (total_sq - q**2)  # Σ over distinct j', j'' other than j of q_j' q_j''
    square = np.sum(sq_norms * others) / (n_actions * (n_actions - 1) * (n_actions - 2))  # E[‖g_j‖² Q_j' Q_j'']
    weighted = (scores.double() * th.as_tensor(q).unsqueeze(1)).sum(dim=0)
    mean_sq = (float(weighted.dot(weighted)) - float(np.sum(sq_norms * q**2))) / (n_actions * (n_actions - 1))  # ‖E[g Q]‖²
    return float(first - 2 * cross + square - mean_sq)


def _batch(observations: list[Any]) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def _default_horizon(discount: float, env: gym.Env) -> int:
    if discount < 1:
        return max(1, math.ceil(math.log(HORIZON_TOLERANCE) / math.log(discount)))
    max_steps = env.spec.max_episode_steps if env.spec is not None else None
    if max_steps is None:
        raise ValueError("with gamma * gae_lambda = 1 and no time limit on the env, pass horizon=")
    return int(max_steps)


def _env_factory(model: OnPolicyAlgorithm, env: str | Callable[[], gym.Env] | None) -> Callable[[], gym.Env]:
    """A function that makes a fresh copy of the env the model sees (before vectorisation)."""
    if isinstance(env, str):
        return lambda: gym.make(env)
    if env is not None:
        if not callable(env):
            raise TypeError(f"env must be an env id, a function that makes the env, or None, got {type(env).__name__}")
        return env
    vec_env = model.get_env()
    if vec_env is None:
        raise ValueError("the model has no env (was it loaded without one?): pass env=, an env id or a function that makes the env")
    unsupported = []
    inner: VecEnv = vec_env
    while isinstance(inner, VecEnvWrapper):
        if not isinstance(inner, (VecNormalize, VecMonitor)):
            unsupported.append(type(inner).__name__)
        inner = inner.venv
    if isinstance(inner, DummyVecEnv):
        wrapper = inner.envs[0]
        while isinstance(wrapper, gym.Wrapper):
            if wrapper_kind(wrapper, _KNOWN_WRAPPERS) is None:
                unsupported.append(type(wrapper).__name__)
            wrapper = wrapper.env
    if unsupported:
        raise ValueError(
            f"variance_decomposition cannot rebuild the training env's wrappers {unsupported} from its spec: pass env=, "
            "a function that makes the env as the model sees it before vectorisation (VecNormalize is applied for you)"
        )
    spec = vec_env.get_attr("spec", indices=[0])[0]
    if spec is None:
        raise ValueError("the training env has no spec to rebuild it from: pass env=, an env id or a function that makes the env")
    return lambda: gym.make(spec.id, max_episode_steps=spec.max_episode_steps, **spec.kwargs)
