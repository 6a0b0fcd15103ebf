"""
CVPG benchmark: learning (final deterministic evaluation over seeds), the measured gradient variance
with / without the control variate along training, and speed side by side with SB3 PPO, with the
hyperparameters of ``hyperparams/cvpg.yml`` (rl_zoo3's PPO entries plus the Q critic's settings).

Variants, all with the same yml entry:
  - ``CVPG-taylor``: control_variate="taylor" (Q-Prop's first-order control variate, Box actions);
  - ``CVPG-reparameterization``: control_variate="reparameterization" (Stein, φ = Q_w, Box actions);
  - ``CVPG-expected``: control_variate="expected" (exact all-action control variate, Discrete actions);
  - ``PPO``: SB3's PPO with the entry: the zoo's PPO, and also CVPG with control_variate="none"
    (bit-identical to PPO, tested), so that variant is not run twice.

Every CVPG learning run logs, at each update and on the same rollout, the variance of its policy-gradient
estimator with and without the control variate (``train/grad_var``, ``train/grad_var_no_cv``; 16
minibatches, see ``sb3_pgext.gradient_variance``). The HalfCheetah-v5 runs need MuJoCo
(``pip install "gymnasium[mujoco]"``).

    python benchmarks/cvpg_benchmark.py learning --envs Pendulum-v1 HalfCheetah-v5
    python benchmarks/cvpg_benchmark.py speed --envs Pendulum-v1 --steps 20000 --repeats 5
    python benchmarks/cvpg_benchmark.py report

Results are written under ``benchmarks/results/`` (JSON, and the report ``cvpg.md``).
"""

from typing import Any

import numpy as np
from stable_baselines3 import PPO

from bench_common import Benchmark, main
from sb3_pgext import CVPG
from sb3_pgext.common.hyperparams import load_hyperparams
from sb3_pgext.train import build_model

# The budgets: Pendulum-v1 100k steps, HalfCheetah-v5 200k steps
BUDGETS = {"Pendulum-v1": 100_000, "HalfCheetah-v5": 200_000}
TRACE_KEYS = ("train/grad_var", "train/grad_var_no_cv", "train/cv_corr", "train/eta_mean")


def _build(variant: str, env_id: str, seed: int, log_grad_var: bool):
    hyperparams = load_hyperparams("cvpg", env_id)
    if variant == "PPO":
        for key in [k for k in hyperparams.model_kwargs if k.startswith("qf_")]:
            del hyperparams.model_kwargs[key]
        model = build_model(PPO, env_id, hyperparams, seed, device="cpu")
    else:
        control_variate = variant.split("-", 1)[1]
        if control_variate == "reparameterization" and hyperparams.model_kwargs.get("use_sde", False):
            # the pathwise term needs independent Gaussian noise: this variant explores without gSDE
            hyperparams.model_kwargs.update(use_sde=False)
            hyperparams.model_kwargs.pop("sde_sample_freq", None)
        model = build_model(CVPG, env_id, hyperparams, seed, device="cpu", control_variate=control_variate, log_grad_var=log_grad_var)
    return model, BUDGETS.get(env_id, hyperparams.n_timesteps)


def build(variant: str, env_id: str, seed: int):
    """The model of ``variant`` on ``env_id`` with the cvpg.yml entry (variance logged), and its budget."""
    return _build(variant, env_id, seed, log_grad_var=True)


def build_for_speed(variant: str, env_id: str, seed: int):
    """As :func:`build`, without the variance measurement (it costs two extra passes per update)."""
    return _build(variant, env_id, seed, log_grad_var=False)


def variance_report(runs: list[dict[str, Any]]) -> list[str]:
    """
    Per env and control variate: the ratio var(with CV) / var(without) over all updates of all seeds, and
    how well the critic's Ā tracks Â (``train/cv_corr``) and how often η was 1 (``train/eta_mean``).
    """
    lines = [
        "## Gradient variance with / without the control variate, along training",
        "",
        "At every update, on the same rollout: tr Cov of the 16 minibatch policy-gradient estimates with the control "
        "variate, over the same without it. Updates of all seeds pooled; first / last third of training separately. "
        "corr(Â, Ā): the correlation of the rollout's advantages with the critic's control variate (median over "
        "updates); η = 1: the share of updates where the conservative rule switched the control variate on.",
        "",
        "| env | variant | updates | median ratio | first third | last third | updates with ratio < 1 | corr(Â, Ā) | η = 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env_id in dict.fromkeys(r["env"] for r in runs):
        for variant in dict.fromkeys(r["variant"] for r in runs if r["env"] == env_id and "trace" in r):
            ratios, early, late, corr, eta = [], [], [], [], []
            for run in (r for r in runs if r["env"] == env_id and r["variant"] == variant):
                trace = run["trace"]
                ratio = np.array(trace["train/grad_var"]) / np.array(trace["train/grad_var_no_cv"])
                third = max(len(ratio) // 3, 1)
                ratios += list(ratio)
                early += list(ratio[:third])
                late += list(ratio[-third:])
                corr += trace.get("train/cv_corr", [])
                eta += trace.get("train/eta_mean", [])
            if not ratios:
                continue
            below = np.mean(np.array(ratios) < 1)
            corr_cell = f"{np.median(corr):.3f}" if corr else "—"
            eta_cell = f"{np.mean(np.array(eta) == 1):.0%}" if eta else "—"
            lines.append(
                f"| {env_id} | {variant} | {len(ratios)} | {np.median(ratios):.3f} | {np.median(early):.3f} "
                f"| {np.median(late):.3f} | {below:.0%} | {corr_cell} | {eta_cell} |"
            )
    return lines


VARIANTS = ("CVPG-taylor", "CVPG-reparameterization", "CVPG-expected", "PPO")
BENCHMARK = Benchmark(
    name="cvpg",
    title="CVPG benchmark",
    build=build,
    variants=VARIANTS,
    thresholds={},
    learning_envs=["Pendulum-v1", "HalfCheetah-v5"],
    learning_variants=["CVPG-taylor", "CVPG-reparameterization", "PPO"],
    speed_envs=["Pendulum-v1"],
    speed_variants=("CVPG-taylor", "CVPG-reparameterization", "PPO"),
    reference="PPO",
    speed_steps=20_000,
    speed_repeats=5,
    learning_note=(
        "Hyperparameters: `hyperparams/cvpg.yml` (rl_zoo3's PPO entries plus the Q critic's updates per rollout); "
        "budgets: Pendulum-v1 100k, HalfCheetah-v5 200k steps. PPO is also CVPG with control_variate=\"none\" "
        "(bit-identical, tested). CVPG-reparameterization explores without gSDE (the zoo's Pendulum-v1 entry uses "
        "gSDE; the pathwise term needs independent Gaussian noise)."
    ),
    speed_note="Whole `learn()` runs, without the variance measurement; CVPG's Q critic updates are included.",
    trace_keys=TRACE_KEYS,
    speed_build=build_for_speed,
    extra_report=variance_report,
)

if __name__ == "__main__":
    main(BENCHMARK, __doc__)
