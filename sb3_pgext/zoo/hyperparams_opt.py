"""
Optuna samplers and converters for the RL Zoo's ``-optimize`` and ``--trial-id``, one per algorithm.

Each sampler draws raw values with ``trial.suggest_*`` and returns ``CONVERTERS[algo](trial.params)``,
so that the zoo's ``--trial-id`` (which converts a stored trial's raw ``params``) rebuilds exactly the
hyperparameters the trial trained with. PPOKL's sampler draws the RL Zoo's PPO search space and converts
with the zoo's own ``convert_onpolicy_params``; CVPG's draws only what a lower-variance gradient lets one
change on top of the env's entry (a search over the zoo's whole PPO space found nothing on Pendulum-v1 in 30
trials); OffPAC draws the zoo's SAC space and converts with ``convert_offpolicy_params``. Every trial
records the worker that ran it (``worker`` = ``host:pid``), which tells the workers of a distributed study apart.
"""

import os
import socket
from collections.abc import Callable
from typing import Any

import optuna
from rl_zoo3.hyperparams_opt import convert_offpolicy_params, convert_onpolicy_params

Sampler = Callable[[optuna.Trial, int, int, dict[str, Any]], dict[str, Any]]


def _record_worker(trial: optuna.Trial) -> None:
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")


def _suggest_on_policy(trial: optuna.Trial) -> None:
    """
    The RL Zoo's PPO search space (without its clip range), minibatches of 32 to 512, and the value function:
    plain or horizon-aware (Tucker et al. 2018, section 6).
    """
    trial.suggest_int("batch_size_pow", 5, 9)
    trial.suggest_int("n_steps_pow", 5, 11)
    trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True)
    trial.suggest_float("learning_rate", 1e-5, 0.002, log=True)
    trial.suggest_float("ent_coef", 1e-8, 0.1, log=True)
    trial.suggest_categorical("n_epochs", [1, 5, 10, 20])
    trial.suggest_float("max_grad_norm", 0.3, 2)
    trial.suggest_categorical("net_arch", ["tiny", "small", "medium"])
    trial.suggest_categorical("activation_fn", ["tanh", "relu"])
    trial.suggest_categorical("horizon_aware_value", [False, True])


def sample_ppokl_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    PPOKL: the zoo's PPO space, plus the adaptive penalty's target d_targ and initial β, and PPO's
    clipping on or off (``clip_range`` None: the penalty alone, Schulman et al. 2017 section 4).
    """
    _record_worker(trial)
    _suggest_on_policy(trial)
    trial.suggest_float("kl_target", 0.002, 0.05, log=True)
    trial.suggest_float("kl_coef", 0.1, 10.0, log=True)
    trial.suggest_categorical("clip_range", [None, 0.1, 0.2, 0.3])
    return CONVERTERS["ppokl"](trial.params)


def convert_cvpg_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Raw values of :func:`sample_cvpg_params` to constructor arguments: ``batch_size`` and ``n_steps`` from powers of 2,
    L-BFGS's iterations as ``qf_gradient_steps`` (trials sampled before ``qf_optimizer`` was drawn ran Adam, the default).
    """
    hyperparams = dict(sampled_params)
    for name in ("batch_size", "n_steps"):
        hyperparams[name] = 2 ** hyperparams.pop(f"{name}_pow")
    if "qf_lbfgs_iterations" in hyperparams:
        hyperparams["qf_gradient_steps"] = hyperparams.pop("qf_lbfgs_iterations")
    return hyperparams


def sample_cvpg_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    CVPG: what a lower-variance gradient lets one change, on top of the env's entry (the RL Zoo's PPO entry, whose
    discount, GAE λ, network, entropy bonus and gSDE it keeps): the rollout's length, the minibatch, the step size,
    the epochs and the clip range (Gu et al. 2017 report Q-Prop's gain at smaller batches); and the Q critic's
    optimizer (Adam, with its learning rate and steps per rollout, or L-BFGS, with its iterations), the rollouts it
    regresses on, and η's rule (Q-Prop's η*, or the η of least measured variance). The critic stays fitted on the
    λ-returns (the cvpg-variance suite's best target).
    """
    _record_worker(trial)
    trial.suggest_int("n_steps_pow", 5, 11)
    trial.suggest_int("batch_size_pow", 5, 9)
    trial.suggest_float("learning_rate", 1e-5, 0.003, log=True)
    trial.suggest_categorical("n_epochs", [1, 5, 10, 20])
    trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3, 0.4])
    if trial.suggest_categorical("qf_optimizer", ["adam", "lbfgs"]) == "lbfgs":
        trial.suggest_categorical("qf_lbfgs_iterations", [20, 50, 100])  # on the whole rollout; no learning rate
    else:
        trial.suggest_float("qf_learning_rate", 1e-4, 3e-3, log=True)
        # None: Adam's default, 100 passes over the rollout
        trial.suggest_categorical("qf_gradient_steps", [32, 64, 128, 256, None])
    trial.suggest_categorical("qf_rollouts", [1, 4, 16])
    trial.suggest_categorical("eta", ["adaptive", "min_variance"])
    return CONVERTERS["cvpg"](trial.params)


def sample_offpac_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    OffPAC: the zoo's SAC space (one gradient step per env step), plus the actor's gradient estimator
    and, for the likelihood-ratio one, its number of actions per state. ``n_actions`` is 0 for Discrete
    actions (the zoo counts only Box dimensions).
    """
    _record_worker(trial)
    trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    trial.suggest_int("batch_size_pow", 5, 10)
    trial.suggest_float("learning_rate", 1e-5, 0.002, log=True)
    trial.suggest_int("train_freq", 1, 10)
    trial.suggest_float("tau", 0.001, 0.08, log=True)
    trial.suggest_categorical("net_arch", ["small", "medium", "big"])
    estimators = ["reparameterization", "likelihood"] if n_actions > 0 else ["expected", "likelihood"]
    if trial.suggest_categorical("actor_gradient", estimators) == "likelihood":
        trial.suggest_categorical("n_action_samples", [1, 2, 4, 8])
    return CONVERTERS["offpac"](trial.params)


#: Raw trial values to constructor arguments: the zoo's own on- / off-policy conversion, CVPG's own for its narrower space
CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "cvpg": convert_cvpg_params,
    "offpac": convert_offpolicy_params,
    "ppokl": convert_onpolicy_params,
}
SAMPLERS: dict[str, Sampler] = {"cvpg": sample_cvpg_params, "offpac": sample_offpac_params, "ppokl": sample_ppokl_params}
