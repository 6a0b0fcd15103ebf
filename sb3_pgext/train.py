"""
Train one of the package's algorithms with its zoo hyperparameters, then print its evaluation.

    python -m sb3_pgext.train --algo ppokl --env CartPole-v1

The hyperparameters are the entry for the env in the package's ``hyperparams/<algo>.yml``; the final
evaluation is deterministic, on a separately seeded environment.
"""

import argparse
import time
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_pgext.common.hyperparams import ZooHyperparams, load_hyperparams
from sb3_pgext.registry import ALGORITHMS

ALGOS = {name: algorithm.algo_class for name, algorithm in ALGORITHMS.items()}


def build_model(model_class: type[BaseAlgorithm], env_id: str, hyperparams: ZooHyperparams, seed: int, **kwargs: Any):
    """
    ``model_class`` on ``env_id`` with a zoo entry's settings: n_envs, VecNormalize and model kwargs.

    :param model_class: the algorithm class (ours or SB3's)
    :param env_id: the Gymnasium environment id
    :param hyperparams: the converted zoo entry (see :func:`sb3_pgext.common.hyperparams.load_hyperparams`)
    :param seed: seed of the environments and the model
    :param kwargs: further constructor arguments (e.g. verbose)
    :return: the model
    """
    env = make_vec_env(env_id, n_envs=hyperparams.n_envs, seed=seed)
    if hyperparams.normalize:
        env = VecNormalize(env, gamma=hyperparams.model_kwargs.get("gamma", 0.99), **hyperparams.normalize_kwargs)
    return model_class(hyperparams.policy, env, seed=seed, **hyperparams.model_kwargs, **kwargs)


def evaluate(model: BaseAlgorithm, env_id: str, seed: int, n_eval_episodes: int = 10) -> tuple[float, float]:
    """
    Deterministic evaluation on a fresh env seeded ``seed + 10_000``, with the training VecNormalize statistics.

    :return: mean and standard deviation of the episode return
    """
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    train_env = model.get_env()
    if isinstance(train_env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = train_env.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=n_eval_episodes, deterministic=True)
    return float(mean), float(std)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="ppokl", choices=sorted(ALGOS))
    parser.add_argument("--env", default="CartPole-v1", help="an env with an entry in hyperparams/<algo>.yml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", "--n-timesteps", type=int, default=0, help="training budget (default: the yml's)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--save", default="", help="save the trained model to this path")
    parser.add_argument("-P", "--progress", action="store_true", help="show a progress bar")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)

    th.set_num_threads(1)
    hyperparams = load_hyperparams(args.algo, args.env)
    n_timesteps = args.n_timesteps or hyperparams.n_timesteps
    model = build_model(ALGOS[args.algo], args.env, hyperparams, args.seed, verbose=args.verbose)
    print(f"Training {type(model).__name__} on {args.env} for {n_timesteps:,} steps (seed {args.seed}) ...", flush=True)
    start = time.perf_counter()
    model.learn(n_timesteps, progress_bar=args.progress)
    seconds = time.perf_counter() - start
    if args.save:
        model.save(args.save)
        if isinstance(model.get_env(), VecNormalize):
            model.get_env().save(f"{args.save}_vecnormalize.pkl")
    mean, std = evaluate(model, args.env, args.seed, args.eval_episodes)
    print(
        f"{type(model).__name__} on {args.env}: mean return {mean:.1f} ± {std:.1f} "
        f"over {args.eval_episodes} deterministic episodes ({seconds:.0f} s of training)"
    )
    return float(mean)


if __name__ == "__main__":
    main()
