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

from pathlib import Path
from typing import Any

import yaml
from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3 import PPO

import rl_zoo3
from bench_common import Benchmark, main
from sb3_pgext import PPOKL
from sb3_pgext.common.hyperparams import load_hyperparams
from sb3_pgext.train import build_model


def zoo_ppo_clip_range(env_id: str) -> Any:
    """The clip_range of rl_zoo3's PPO entry for ``env_id`` (0.2, PPO's default, when it has none)."""
    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo.yml") as file:
        entry = yaml.safe_load(file).get(env_id, {})
    return entry.get("clip_range", 0.2)


def build(variant: str, env_id: str, seed: int):
    """The model of ``variant`` on ``env_id`` with the ppokl.yml entry, and its training budget."""
    hyperparams = load_hyperparams("ppokl", env_id)
    if variant != "PPOKL-penalty":
        hyperparams.model_kwargs.update(ExperimentManager._preprocess_schedules({"clip_range": zoo_ppo_clip_range(env_id)}))
    model = build_model(PPO if variant == "PPO" else PPOKL, env_id, hyperparams, seed, device="cpu")
    return model, hyperparams.n_timesteps


VARIANTS = ("PPOKL-penalty", "PPOKL-clip", "PPO")
BENCHMARK = Benchmark(
    name="ppokl",
    title="PPOKL benchmark",
    build=build,
    variants=VARIANTS,
    # The bars: CartPole-v1 >= 475 in at least 4 of 5 seeds; Pendulum-v1 mean >= -250
    thresholds={"CartPole-v1": 475.0, "Pendulum-v1": -250.0},
    learning_envs=["CartPole-v1", "Pendulum-v1"],
    learning_variants=list(VARIANTS),
    speed_envs=["CartPole-v1", "Pendulum-v1"],
    speed_variants=VARIANTS,
    reference="PPO",
    speed_steps=20_000,
    speed_repeats=5,
    learning_note="Hyperparameters: `hyperparams/ppokl.yml` (PPO and PPOKL-clip add the zoo PPO clip_range).",
)

if __name__ == "__main__":
    main(BENCHMARK, __doc__)
