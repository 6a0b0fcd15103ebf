"""
PPOKL benchmark: learning (final deterministic evaluation over seeds) and speed (env steps per
second side by side with SB3 PPO), with the hyperparameters of ``hyperparams/ppokl.yml``.

Variants, all with the same yml entry:
  - ``PPOKL-penalty``: the entry as it is (the paper's penalty-only surrogate, adaptive β);
  - ``PPOKL-clip``: the entry plus the clip_range of rl_zoo3's own PPO entry (clip + penalty);
  - ``PPO``: SB3's PPO with the entry plus that clip_range (for these envs, exactly zoo PPO).

    python benchmarks/ppokl_benchmark.py learning --envs CartPole-v1 Pendulum-v1 --seeds 0 1 2 3 4
    python benchmarks/ppokl_benchmark.py speed --envs CartPole-v1 Pendulum-v1 --steps 20000 --repeats 5
    python benchmarks/ppokl_benchmark.py report

Results are written under ``benchmarks/results/`` (JSON, and the report ``ppokl.md``).
"""

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
import yaml
from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

import rl_zoo3
from sb3_pgext import PPOKL
from sb3_pgext.common.hyperparams import load_hyperparams

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("PPOKL-penalty", "PPOKL-clip", "PPO")
# The bars: CartPole-v1 >= 475 in at least 4 of 5 seeds; Pendulum-v1 mean >= -250
THRESHOLDS = {"CartPole-v1": 475.0, "Pendulum-v1": -250.0}
N_EVAL_EPISODES = 10


def zoo_ppo_clip_range(env_id: str) -> Any:
    """The clip_range of rl_zoo3's PPO entry for ``env_id`` (0.2, PPO's default, when it has none)."""
    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo.yml") as file:
        entry = yaml.safe_load(file).get(env_id, {})
    return entry.get("clip_range", 0.2)


def build(variant: str, env_id: str, seed: int, device: str = "cpu"):
    """The model of ``variant`` on ``env_id``, with its training budget and whether obs are normalised."""
    hyperparams = load_hyperparams("ppokl", env_id)
    kwargs = dict(hyperparams.model_kwargs)
    if variant != "PPOKL-penalty":
        kwargs.update(ExperimentManager._preprocess_schedules({"clip_range": zoo_ppo_clip_range(env_id)}))
    env = make_vec_env(env_id, n_envs=hyperparams.n_envs, seed=seed)
    if hyperparams.normalize:
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99), **hyperparams.normalize_kwargs)
    algo = PPO if variant == "PPO" else PPOKL
    model = algo(hyperparams.policy, env, seed=seed, device=device, **kwargs)
    return model, hyperparams.n_timesteps


def evaluate(model, env_id: str, seed: int) -> tuple[float, float]:
    eval_env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    train_env = model.get_env()
    if isinstance(train_env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = train_env.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=N_EVAL_EPISODES, deterministic=True)
    return float(mean), float(std)


def learning_run(job: tuple[str, str, int]) -> dict[str, Any]:
    variant, env_id, seed = job
    th.set_num_threads(1)
    model, n_timesteps = build(variant, env_id, seed)
    start = time.perf_counter()
    model.learn(n_timesteps)
    seconds = time.perf_counter() - start
    mean, std = evaluate(model, env_id, seed)
    result = dict(variant=variant, env=env_id, seed=seed, steps=n_timesteps, mean_return=mean, std_return=std)
    result.update(train_seconds=round(seconds, 1), final_kl_coef=getattr(model, "kl_coef", None))
    print(json.dumps(result), flush=True)
    return result


def run_learning(args: argparse.Namespace) -> None:
    path = RESULTS / "ppokl_learning.json"
    done = json.loads(path.read_text()) if path.exists() else []
    finished = {(r["variant"], r["env"], r["seed"]) for r in done}
    jobs = [(v, e, s) for e in args.envs for v in args.variants for s in args.seeds if (v, e, s) not in finished]
    print(f"{len(jobs)} runs to do, {len(finished)} already done")
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for result in pool.imap_unordered(learning_run, jobs):
            done.append(result)
            path.write_text(json.dumps(done, indent=1))  # resumable: finished runs are kept


def run_speed(args: argparse.Namespace) -> None:
    """Env steps per second, variants alternated within one process (order rotated each repeat)."""
    th.set_num_threads(1)
    results: dict[str, Any] = {}
    for env_id in args.envs:
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for repeat in range(args.repeats):
            order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
            for variant in order:
                model, _ = build(variant, env_id, seed=repeat)
                start = time.perf_counter()
                model.learn(args.steps)
                rates[variant].append(args.steps / (time.perf_counter() - start))
        ppo = np.median(rates["PPO"])
        results[env_id] = {
            v: dict(steps_per_second=rates[v], median=float(np.median(rates[v])), ratio_to_ppo=float(np.median(rates[v]) / ppo))
            for v in VARIANTS
        }
        print(env_id, {v: round(results[env_id][v]["ratio_to_ppo"], 3) for v in VARIANTS}, flush=True)
    (RESULTS / "ppokl_speed.json").write_text(
        json.dumps(dict(steps=args.steps, repeats=args.repeats, torch_threads=1, results=results), indent=1)
    )


def run_report(_: argparse.Namespace) -> None:
    lines = ["# PPOKL benchmark", "", "Generated by `python benchmarks/ppokl_benchmark.py report`; see the script for the commands.", ""]
    path = RESULTS / "ppokl_learning.json"
    if path.exists():
        runs = json.loads(path.read_text())
        lines += [
            f"## Learning: final deterministic evaluation ({N_EVAL_EPISODES} episodes per seed)",
            "",
            "Hyperparameters: `hyperparams/ppokl.yml` (PPO and PPOKL-clip add the zoo PPO clip_range).",
            "",
            "| env | variant | steps | seeds | mean ± std over seeds | per seed | seeds ≥ bar |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for env_id in dict.fromkeys(r["env"] for r in runs):
            for variant in VARIANTS:
                cell = sorted((r for r in runs if r["env"] == env_id and r["variant"] == variant), key=lambda r: r["seed"])
                if not cell:
                    continue
                returns = np.array([r["mean_return"] for r in cell])
                bar = THRESHOLDS.get(env_id)
                above = f"{int((returns >= bar).sum())}/{len(returns)} (bar {bar:g})" if bar is not None else ""
                per_seed = ", ".join(f"{x:.0f}" for x in returns)
                lines.append(
                    f"| {env_id} | {variant} | {cell[0]['steps']:,} | {len(cell)} | {returns.mean():.1f} ± {returns.std():.1f} "
                    f"| {per_seed} | {above} |"
                )
        lines.append("")
    path = RESULTS / "ppokl_speed.json"
    if path.exists():
        speed = json.loads(path.read_text())
        lines += [
            f"## Speed: env steps per second, side by side ({speed['steps']:,} steps a run, "
            f"{speed['repeats']} alternating repeats, torch threads {speed['torch_threads']}, CPU)",
            "",
            "| env | variant | median steps/s | ratio to PPO |",
            "| --- | --- | --- | --- |",
        ]
        for env_id, cells in speed["results"].items():
            for variant, cell in cells.items():
                lines.append(f"| {env_id} | {variant} | {cell['median']:.0f} | {cell['ratio_to_ppo']:.3f} |")
        lines.append("")
    (RESULTS / "ppokl.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    learning = sub.add_parser("learning")
    learning.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    learning.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    learning.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    learning.add_argument("--workers", type=int, default=2)
    speed = sub.add_parser("speed")
    speed.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    speed.add_argument("--steps", type=int, default=20_000)
    speed.add_argument("--repeats", type=int, default=5)
    sub.add_parser("report")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    {"learning": run_learning, "speed": run_speed, "report": run_report}[args.command](args)


if __name__ == "__main__":
    main()
