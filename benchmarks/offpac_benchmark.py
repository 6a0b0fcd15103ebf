"""
OffPAC benchmark: learning (final deterministic evaluation over seeds) and speed (env steps per
second side by side with SB3 SAC), with the hyperparameters of ``hyperparams/offpac.yml``.

Variants, all with the same yml entry:
  - ``OffPAC``: the entry as it is (actor_gradient "auto": "expected" for Discrete, "reparameterization" for Box);
  - ``OffPAC-likelihood``: the entry with actor_gradient="likelihood" (score function, 4 actions per state);
  - ``SAC``: SB3's SAC with the entry (Box only; speed reference).

    python benchmarks/offpac_benchmark.py learning --envs CartPole-v1 Acrobot-v1 Pendulum-v1 --variants OffPAC
    python benchmarks/offpac_benchmark.py learning --envs Pendulum-v1 --variants OffPAC-likelihood
    python benchmarks/offpac_benchmark.py speed --envs Pendulum-v1 --steps 5000 --repeats 7
    python benchmarks/offpac_benchmark.py report

Results are written under ``benchmarks/results/`` (JSON, and the report ``offpac.md``).
"""

from stable_baselines3 import SAC

from bench_common import Benchmark, main
from sb3_pgext import OffPAC
from sb3_pgext.common.hyperparams import load_hyperparams
from sb3_pgext.train import build_model


def build(variant: str, env_id: str, seed: int):
    """The model of ``variant`` on ``env_id`` with the offpac.yml entry, and its training budget."""
    hyperparams = load_hyperparams("offpac", env_id)
    if variant == "OffPAC-likelihood":
        hyperparams.model_kwargs["actor_gradient"] = "likelihood"
    model = build_model(SAC if variant == "SAC" else OffPAC, env_id, hyperparams, seed, device="cpu")
    return model, hyperparams.n_timesteps


BENCHMARK = Benchmark(
    name="offpac",
    title="OffPAC benchmark",
    build=build,
    variants=("OffPAC", "OffPAC-likelihood", "SAC"),
    # The bars: Pendulum-v1 >= -200 in at least 4 of 5 seeds at 20k; CartPole-v1 >= 475 at 50k;
    # Acrobot-v1 >= -100 at 100k
    thresholds={"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -200.0},
    learning_envs=["CartPole-v1", "Acrobot-v1", "Pendulum-v1"],
    learning_variants=["OffPAC"],
    speed_envs=["Pendulum-v1"],
    speed_variants=("OffPAC", "SAC"),
    reference="SAC",
    speed_steps=5_000,
    speed_repeats=7,
    learning_note=(
        "Hyperparameters: `hyperparams/offpac.yml`; OffPAC-likelihood swaps in actor_gradient=\"likelihood\" "
        "(4 fresh actions per state, leave-one-out baseline). On Box actions OffPAC with its default estimator "
        "is SAC bit for bit (tested), so SAC's learning figures would repeat OffPAC's."
    ),
    speed_note=(
        "Same networks, batch size and gradient steps (the yml entry) for both; OffPAC with "
        "actor_gradient=\"reparameterization\" and twin critics."
    ),
)

if __name__ == "__main__":
    main(BENCHMARK, __doc__)
