"""Tucker et al.'s variance decomposition against closed forms on a toy MDP, env state restoration, and isolation."""

import random

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO

from sb3_pgext import CVPG, PPOKL, variance_decomposition
from sb3_pgext.common.env_state import get_env_state, set_env_state
from sb3_pgext.common.gradient_variance import flatten_gradients

# rewards of the toy MDP: R0[s, a] at the first step, R1[b, a'] at the second (state 2 + b)
R0 = np.array([[1.0, -1.0], [0.5, 2.0]])
R1 = np.array([[3.0, -2.0], [0.0, 1.5]])


class TwoStepEnv(gym.Env):
    """
    Start in state 0 or 1 (each with probability 1/2), act (reward R0[s, a]), move to state 2 + a, act again
    (reward R1[a, a']), end. Observations are one-hot; ``state`` is (state, step), as classic-control envs keep it.
    """

    observation_space = spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = (int(self.np_random.integers(2)), 0)
        return self._obs(), {}

    def step(self, action):
        state, step = self.state
        if step == 0:
            self.state = (2 + int(action), 1)
            return self._obs(), float(R0[state, action]), False, False, {}
        self.state = (state, 2)
        return self._obs(), float(R1[state - 2, action]), True, False, {}

    def _obs(self):
        obs = np.zeros(4, dtype=np.float32)
        obs[self.state[0]] = 1.0
        return obs


def one_hot(state, device: th.device | str = "cpu"):
    obs = th.zeros(1, 4, device=device)
    obs[0, state] = 1.0
    return obs


def toy_model(model_class, **kwargs):
    model = model_class("MlpPolicy", TwoStepEnv(), gamma=0.9, gae_lambda=0.8, policy_kwargs=dict(net_arch=[]), seed=0, **kwargs)
    with th.no_grad():  # a policy far from uniform, a value function far from the truth
        model.policy.action_net.weight.copy_(th.tensor([[0.8, -0.5, 1.0, 0.0], [-0.4, 0.6, -0.7, 0.3]]))
        model.policy.value_net.weight.copy_(th.tensor([[0.5, 1.5, -1.0, 2.0]]))
    return model


def exact_terms(model, control_variate, true_value=False):
    """
    Σ_s, Σ_a, Σ_τ and the total variance of the per-sample estimator, by enumerating the toy MDP; with
    ``true_value``, for the baseline φ = V^π(s) = E_a E[R̂ | s, a].
    """
    policy, gamma, lam, device = model.policy, model.gamma, model.gae_lambda, model.device
    params = [p for p in policy.parameters() if p.requires_grad]
    states = {x: one_hot(x, device) for x in range(4)}
    probs = {x: policy.get_distribution(states[x]).distribution.probs[0].detach().double().cpu().numpy() for x in range(4)}
    values = {x: policy.predict_values(states[x]).item() for x in range(4)}
    value_tensors = {x: th.tensor([values[x]], device=device) for x in range(4)}
    # visitation: half the steps are first steps (state 0 or 1), half second steps (state 2 + a)
    p_first_action = (probs[0] + probs[1]) / 2
    visitation = {0: 0.25, 1: 0.25, 2: 0.5 * p_first_action[0], 3: 0.5 * p_first_action[1]}
    # per (x, a): outcomes of R̂ with their probabilities (the λ-return of GAE with the model's V)
    def mean_return(x, a):
        if x >= 2:
            return R1[x - 2, a]
        nxt = 2 + a
        return R0[x, a] + gamma * values[nxt] + gamma * lam * (sum(probs[nxt][b] * R1[a, b] for b in range(2)) - values[nxt])

    true_values = {x: sum(probs[x][a] * mean_return(x, a) for a in range(2)) for x in range(4)}
    state_means, state_probs, total_second_moment, action_terms, trajectory = [], [], 0.0, 0.0, 0.0
    for x, p_x in visitation.items():
        distribution = policy.get_distribution(states[x])
        cv = getattr(model, "control_variate_terms", None)
        conditional, weights = [], []
        for a in range(2):
            action = th.tensor([a], device=device)
            log_prob = distribution.log_prob(action)[0]
            score = flatten_gradients(th.autograd.grad(log_prob, params, retain_graph=True, allow_unused=True), params).double()
            baseline, analytic = 0.0, th.zeros_like(score)
            terms = None if cv is None else cv(states[x], action, policy.get_distribution(states[x]), value_tensors[x])
            if true_value:
                baseline = true_values[x]
            elif terms is None:
                baseline = values[x] if control_variate else 0.0
            else:
                baseline = values[x] + (float(terms[0][0]) if control_variate else 0.0)
                if control_variate:
                    analytic = flatten_gradients(th.autograd.grad(terms[1][0], params, retain_graph=True, allow_unused=True), params).double()
            if x < 2:
                nxt = 2 + a
                outcomes = [(R0[x, a] + gamma * values[nxt] + gamma * lam * (R1[a, b] - values[nxt]), probs[nxt][b]) for b in range(2)]
            else:
                outcomes = [(R1[x - 2, a], 1.0)]
            mean_return = sum(r * p for r, p in outcomes)
            var_return = sum(p * (r - mean_return) ** 2 for r, p in outcomes)
            conditional.append(score * (mean_return - baseline) + analytic)
            weights.append(probs[x][a])
            trajectory += p_x * probs[x][a] * float(score.dot(score)) * var_return
            for r, p in outcomes:
                sample = score * (r - baseline) + analytic
                total_second_moment += p_x * probs[x][a] * p * float(sample.dot(sample))
        state_mean = sum(w * c for w, c in zip(weights, conditional))
        action_terms += p_x * (sum(w * float(c.dot(c)) for w, c in zip(weights, conditional)) - float(state_mean.dot(state_mean)))
        state_means.append(state_mean)
        state_probs.append(p_x)
    mean = sum(p * m for p, m in zip(state_probs, state_means))
    state = sum(p * float(m.dot(m)) for p, m in zip(state_probs, state_means)) - float(mean.dot(mean))
    total = total_second_moment - float(mean.dot(mean))
    return dict(state=state, action=action_terms, trajectory=trajectory, total=total)


@pytest.mark.parametrize(
    "model_class, kwargs, control_variate, sizes",
    [
        # J = 3, K = 2: the inner means are at their noisiest, so the estimator's noise corrections (several
        # standard errors here) must be right for Σ_a and Σ_s to match
        (PPO, {}, True, (1200, 3, 2)),
        (PPO, {}, False, (300, 4, 4)),
        (CVPG, dict(control_variate="expected"), True, (300, 4, 4)),
    ],
    ids=["PPO-value-baseline", "PPO-no-baseline", "CVPG-expected"],
)
def test_terms_match_the_closed_form_on_a_toy_mdp(model_class, kwargs, control_variate, sizes):
    model = toy_model(model_class, **kwargs)
    if model_class is CVPG:
        with th.no_grad():  # a critic that is neither zero nor the truth
            for param in model.q_critic.q_net.parameters():
                param.copy_(th.linspace(-1.0, 1.0, param.numel()).reshape(param.shape))
    exact = exact_terms(model, control_variate)
    assert exact["action"] > 0 and exact["trajectory"] > 0
    assert exact["total"] == pytest.approx(exact["state"] + exact["action"] + exact["trajectory"], rel=1e-6)  # float32 π
    n_states, n_actions, n_rollouts = sizes
    measured = variance_decomposition(  # η = 1 for CVPG, the weight exact_terms uses
        model, n_states, n_actions, n_rollouts, control_variate=control_variate, env=TwoStepEnv, state_stride=10, eta=1.0
    )
    for term in ("state", "action", "trajectory", "total"):
        tolerance = 5 * measured[f"{term}_se"]
        assert abs(measured[term] - exact[term]) < tolerance, (term, measured[term], exact[term], tolerance)
    assert measured["total"] == pytest.approx(measured["state"] + measured["action"] + measured["trajectory"])
    ceiling = measured["ceiling"]
    assert ceiling["action"] == 0.0 and ceiling["state"] == measured["state"] and ceiling["trajectory"] == measured["trajectory"]
    # the true value's action term, from the same draws
    exact_true_value = exact_terms(model, control_variate, true_value=True)["action"]
    assert exact_true_value > 0
    true_value = measured["true_value"]
    assert abs(true_value["action"] - exact_true_value) < 5 * true_value["action_se"], (true_value["action"], exact_true_value)
    assert true_value["state"] == measured["state"] and true_value["trajectory"] == measured["trajectory"]


def test_the_value_baseline_and_the_control_variate_change_only_the_action_term():
    """Σ_s and Σ_τ are the same for every unbiased φ; with the same seed the draws are paired."""
    model = toy_model(PPO)
    with_baseline = variance_decomposition(model, n_states=50, n_actions=4, n_rollouts=4, env=TwoStepEnv, seed=3)
    without = variance_decomposition(model, n_states=50, n_actions=4, n_rollouts=4, control_variate=False, env=TwoStepEnv, seed=3)
    assert with_baseline["trajectory"] == without["trajectory"]
    assert with_baseline["action"] != without["action"]


def run_actions(env, actions):
    trace = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trace.append((obs.copy(), reward, terminated, truncated))
    return trace


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1", "HalfCheetah-v5", "Hopper-v5"])
def test_restoring_a_state_reproduces_the_trajectory_bit_for_bit(env_id):
    if env_id.endswith("-v5"):
        pytest.importorskip("mujoco")
    env, other = gym.make(env_id), gym.make(env_id)
    env.reset(seed=0)
    other.reset(seed=1)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(30)]
    if env_id == "CartPole-v1":
        actions = [step % 2 for step in range(8)]  # stays upright for a while
    run_actions(env, actions[:4])
    saved = get_env_state(env)
    expected = run_actions(env, actions[4:])
    set_env_state(other, saved)  # another instance of the env
    replayed = run_actions(other, actions[4:])
    assert len(replayed) == len(expected)
    for (obs, reward, terminated, truncated), (obs2, reward2, terminated2, truncated2) in zip(expected, replayed):
        assert np.array_equal(obs, obs2) and reward == reward2 and (terminated, truncated) == (terminated2, truncated2)
    # the time limit travels with the state
    assert other._elapsed_steps == env._elapsed_steps


def test_a_non_restorable_env_is_refused_with_a_clear_message():
    model = PPO("MlpPolicy", "FrozenLake-v1", n_steps=16, seed=0)
    with pytest.raises(TypeError, match="FrozenLake-v1 cannot be saved and restored"):
        variance_decomposition(model)


def test_bad_arguments_are_refused_before_anything_runs():
    model = toy_model(PPO)
    with pytest.raises(ValueError, match="n_actions must be an integer >= 3"):
        variance_decomposition(model, n_actions=2, env=TwoStepEnv)
    with pytest.raises(TypeError, match="on-policy actor-critics"):
        from sb3_pgext import OffPAC

        variance_decomposition(OffPAC("MlpPolicy", "Pendulum-v1"), env="Pendulum-v1")


@pytest.mark.parametrize("model_class", [PPOKL, CVPG])
def test_nothing_in_the_model_the_training_env_or_the_random_streams_changes(model_class):
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[16]), use_sde=True, sde_sample_freq=4)
    if model_class is CVPG:
        kwargs.update(qf_net_arch=[16], qf_gradient_steps=2)
    model = model_class("MlpPolicy", "Pendulum-v1", seed=0, **kwargs).learn(128)
    params = {key: value.clone() for key, value in model.policy.state_dict().items()}
    buffer = {key: getattr(model.rollout_buffer, key).copy() for key in ("observations", "actions", "advantages", "returns")}
    training_state = model.env.envs[0].unwrapped.state.copy()
    counters = (model.num_timesteps, model._n_updates, model._last_obs.copy())
    random.seed(5), np.random.seed(5), th.manual_seed(5)
    streams = (random.getstate(), np.random.get_state()[1].copy(), th.random.get_rng_state().clone())
    variance_decomposition(model, n_states=3, n_actions=3, n_rollouts=2, horizon=5)
    assert all(th.equal(value, params[key]) for key, value in model.policy.state_dict().items())
    assert all(np.array_equal(getattr(model.rollout_buffer, key), value) for key, value in buffer.items())
    assert np.array_equal(model.env.envs[0].unwrapped.state, training_state)
    assert model.num_timesteps == counters[0] and model._n_updates == counters[1] and np.array_equal(model._last_obs, counters[2])
    assert random.getstate() == streams[0]
    assert np.array_equal(np.random.get_state()[1], streams[1]) and th.equal(th.random.get_rng_state(), streams[2])
    # the model trains on as if nothing happened: the same as a twin that was not measured
    twin = model_class("MlpPolicy", "Pendulum-v1", seed=0, **kwargs).learn(128)
    random.seed(5), np.random.seed(5), th.manual_seed(5)
    model.learn(64, reset_num_timesteps=False)
    random.seed(5), np.random.seed(5), th.manual_seed(5)
    twin.learn(64, reset_num_timesteps=False)
    assert all(th.equal(value, twin.policy.state_dict()[key]) for key, value in model.policy.state_dict().items())


def test_the_time_limit_travels_when_rl_zoo3_has_patched_it():
    import rl_zoo3.gym_patches  # noqa: F401  (replaces gymnasium's TimeLimit by its subclass)

    env, other = gym.make("Pendulum-v1"), gym.make("Pendulum-v1")
    assert type(env).__name__ == "PatchedTimeLimit"
    env.reset(seed=0), other.reset(seed=0)
    for _ in range(7):
        env.step(env.action_space.sample())
    set_env_state(other, get_env_state(env))
    assert other._elapsed_steps == 7



def exact_eta(model) -> float:
    """Q-Prop's η* = Cov(Â, Ā) / Var(Ā) over the toy MDP's visitation and π, Â = E[R̂ | s, a] − V(s), by enumeration."""
    policy, gamma, lam, device = model.policy, model.gamma, model.gae_lambda, model.device
    states = {x: one_hot(x, device) for x in range(4)}
    probs = {x: policy.get_distribution(states[x]).distribution.probs[0].detach().double().cpu().numpy() for x in range(4)}
    values = {x: policy.predict_values(states[x]).item() for x in range(4)}
    value_tensors = {x: th.tensor([values[x]], device=device) for x in range(4)}
    p_first_action = (probs[0] + probs[1]) / 2
    visitation = {0: 0.25, 1: 0.25, 2: 0.5 * p_first_action[0], 3: 0.5 * p_first_action[1]}
    weights, advantages, control_variates = [], [], []
    for x, p_x in visitation.items():
        for a in range(2):
            if x >= 2:
                mean_return = R1[x - 2, a]
            else:
                nxt = 2 + a
                mean_return = R0[x, a] + gamma * values[nxt] + gamma * lam * (sum(probs[nxt][b] * R1[a, b] for b in range(2)) - values[nxt])
            action = th.tensor([a], device=device)
            terms = model.control_variate_terms(states[x], action, policy.get_distribution(states[x]), value_tensors[x])
            weights.append(p_x * probs[x][a])
            advantages.append(mean_return - values[x])
            control_variates.append(float(terms[0][0]))
    w, adv, cv = np.array(weights), np.array(advantages), np.array(control_variates)
    cv_centred = cv - np.sum(w * cv)
    return float(np.sum(w * (adv - np.sum(w * adv)) * cv_centred) / np.sum(w * cv_centred**2))


def test_control_variate_weight_is_the_cross_fitted_eta_star_of_the_current_critic():
    """By default the decomposition weights CVPG's Ā by Q-Prop's η* estimated from its own draws (two halves of
    the states, each weighted by the other's); it agrees with η* by enumeration, and a fixed ``eta`` is used as given."""
    model = toy_model(CVPG, control_variate="expected")
    with th.no_grad():
        for param in model.q_critic.q_net.parameters():
            param.copy_(th.linspace(-1.0, 1.0, param.numel()).reshape(param.shape))
    exact = exact_eta(model)
    assert abs(exact) > 0.1
    measured = variance_decomposition(model, n_states=400, n_actions=4, n_rollouts=4, env=TwoStepEnv, state_stride=10)
    assert abs(measured["eta"] - exact) < 0.15 * abs(exact) + 0.05, (measured["eta"], exact)
    fixed = variance_decomposition(model, n_states=20, n_actions=4, n_rollouts=2, env=TwoStepEnv, state_stride=10, eta=0.0)
    plain = variance_decomposition(model, n_states=20, n_actions=4, n_rollouts=2, env=TwoStepEnv, state_stride=10, control_variate=False)
    assert fixed["eta"] == 0.0 and fixed["total"] == pytest.approx(plain["total"])  # η = 0: the value baseline alone
    assert plain["eta"] is None


@pytest.mark.parametrize("model_class", [CVPG, PPO])
def test_decomposition_callback_logs_three_checkpoints_and_changes_no_training(model_class, tmp_path):
    """
    The callback decomposes after the first update, at half the budget and at the end, logs every estimator's
    terms (CVPG: value baseline, control variate, centred; all: true V and true Q) and dumps them; the trained
    parameters are those of a run without it, bit for bit. A second on_training_end (the zoo's) measures nothing.
    """
    from stable_baselines3.common.logger import configure

    from sb3_pgext import VarianceDecompositionCallback
    from sb3_pgext.suite.decomposition import read_decompositions
    from sb3_pgext.suite.results import read_progress

    kwargs = dict(n_steps=64, batch_size=64, n_epochs=1, seed=0, policy_kwargs=dict(net_arch=[8]))
    if model_class is CVPG:
        kwargs.update(qf_gradient_steps=2, qf_net_arch=[8])
    plain = model_class("MlpPolicy", "Pendulum-v1", **kwargs).learn(320)
    model = model_class("MlpPolicy", "Pendulum-v1", **kwargs)
    model.set_logger(configure(str(tmp_path), ["csv", "stdout"]))  # the console cuts keys at 36 characters
    callback = VarianceDecompositionCallback(n_states=2, n_actions=3, n_rollouts=2)
    model.learn(320, callback=callback)
    callback.on_training_end()
    for p, q in zip(plain.policy.parameters(), model.policy.parameters(), strict=True):
        assert th.equal(p, q)
    progress = read_progress(tmp_path / "progress.csv")
    decompositions = read_decompositions(progress)
    assert list(decompositions) == [0, 1, 2]
    steps = progress["decomposition/timesteps"][np.isfinite(progress["decomposition/stage"])]
    assert [int(s) for s in steps] == [64, 192, 320]  # the first rollout after the first update, then from 160, the end
    estimators = {"value_baseline", "true_value", "true_q"} | ({"control_variate", "centred_cv"} if model_class is CVPG else set())
    for stage in range(3):
        assert set(decompositions[stage]) == estimators
        value = decompositions[stage]["value_baseline"]
        assert value["total"] == pytest.approx(value["state"] + value["action"] + value["trajectory"])
        assert decompositions[stage]["true_q"]["action"] == 0.0
    if model_class is CVPG:
        assert np.isfinite(progress["decomposition/eta"]).sum() == 3
        assert not model.centered_cv  # restored after the centred decomposition
