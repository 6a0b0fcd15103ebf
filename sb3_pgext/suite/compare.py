"""
Side-by-side speed of our algorithms and their peers, in one process, the order rotated between repeats::

    python -m sb3_pgext.suite.compare --repeats 5 --out benchmark/speed

Three comparisons, each a set of models built once and timed in turn, ``repeats`` times, the first model
of a round moving to the end of the next one (so that none always runs first, or after the same one);
each figure is the median over the repeats and each ratio the ratio of two medians:

- ``pendulum-sac``: env steps per second of ``learn()`` on Pendulum-v1 with the RL Zoo's SAC settings
  (256×256 networks, batch 256, one gradient step per env step) of OffPAC (fast and exact update),
  SB3's SAC and, when sbx-rl is installed (``pip install sb3-pgext[sbx]``), SBX's SAC, the JAX port of SB3;
- ``cartpole-offpac``: gradient steps per second of OffPAC's ``train()`` on CartPole-v1 (offpac.yml), fast
  update against the exact one (SAC's arithmetic, the update before the fast one existed), beside SB3's DQN
  (the zoo's dqn.yml: batch 64, 256×256 network; and with OffPAC's batch 256 and 64×64 networks). A DQN
  gradient step trains one Q-network; OffPAC's trains an actor, two critics and α;
- ``ppokl-ppo``: env steps per second of ``learn()`` of PPOKL and PPO, both with the zoo's ppo.yml entries
  (PPOKL adds its KL penalty's defaults), on CartPole-v1, Acrobot-v1 and Pendulum-v1: what the penalty costs
  (ppokl.yml's tuned entries train other network and batch sizes);
- ``sac-updates``: gradient steps per second of ``train()`` on Pendulum-v1 with the zoo's SAC settings at
  batch 256 and 1024, of OffPAC (fast and exact), SB3's SAC and SBX's SAC (env stepping left out: what a
  GPU can speed up);
- ``ppo-64-envs``: env steps per second of ``learn()`` of PPOKL and PPO on CartPole-v1 and Acrobot-v1 with
  the zoo's ppo.yml settings but 64 envs, as one would run them on a GPU;
- ``cvpg-ppo``: env steps per second of ``learn()`` of CVPG (cvpg.yml, and with ``qf_optimizer="lbfgs"``) and
  PPO (the zoo's ppo.yml, its v4 MuJoCo entries for v5 as the ``cvpg-variance`` suite takes them) on Pendulum-v1
  and HalfCheetah-v5 (which needs ``pip install sb3-pgext[benchmarks]``); where cvpg.yml's entry was tuned away
  from PPO's, also CVPG with its defaults on PPO's entry ("PPO's settings": the control variate's cost at equal
  settings);
- ``halfcheetah-sac``: env steps per second of ``learn()`` on HalfCheetah-v5 with the zoo's SAC settings (its
  v4 entry) of OffPAC (offpac.yml), SB3's SAC and SBX's SAC, end to end (LeanRL's SAC makes 733 env steps/s on
  an H100 with ``torch.compile`` and CUDA graphs).

On CUDA, ``sac-updates`` and ``halfcheetah-sac`` also time OffPAC with ``cuda_graph=False`` ("OffPAC (eager)")
beside its default, the captured update.

The first three are the CPU comparisons (the default ``--cases``); ``sac-updates``, ``ppo-64-envs`` and
``halfcheetah-sac`` are meant for ``--device cuda`` (``benchmark/speed/cuda/gpu.sh`` runs them with the CUDA
tests); ``cvpg-ppo`` is asked for by name::

    python -m sb3_pgext.suite.compare --device cuda --cases sac-updates halfcheetah-sac --out benchmark/speed/cuda
    python -m sb3_pgext.suite.compare --cases cvpg-ppo --out benchmark/speed/cvpg

For ``pendulum-sac`` the report also says where the PyTorch updates' time goes: milliseconds per gradient
step of ``train()``, in all and in matrix products (torch profiler), beside each model's whole env step and
SBX's gradient step, so that the gap to SBX can be read as arithmetic or as framework overhead.

Every model is built by the RL Zoo as the suites build it (SBX's SAC takes the hyperparameters the zoo
gave SB3's). One torch thread by default, and one XLA thread for SBX; on the CPU the command line also pins
the process to as many cores as ``--threads`` (XLA's CPU client runs SBX on two cores even with one thread
asked for), and the report gives the cores each model kept busy (CPU time over wall time). Every model
runs on ``--device``; SBX runs on JAX's device of the same kind (:func:`~sb3_pgext.suite.speed.sbx_device`:
a machine with a GPU still measures SBX on its CPU for ``--device cpu``; the command line also sets
``JAX_PLATFORMS=cpu`` then, so that JAX does not take the GPU's memory). The results go to ``<out>/compare.json`` and ``<out>/compare.md``,
with the device that was measured.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch as th
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_pgext.common.hyperparams import hyperparams_path
from sb3_pgext.common.save_util import write_text_atomically
from sb3_pgext.suite.config import load_suite
from sb3_pgext.suite.runner import cpu_name, zoo_conf_file
from sb3_pgext.suite.speed import (
    core_counts,
    pin_to_cores,
    pinned_note,
    sbx_available,
    sbx_device,
    sbx_sac_like,
    synchronize,
    update_step,
    zoo_model,
)
from sb3_pgext.zoo.derived import zoo_hyperparams_path

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
CASES = ("pendulum-sac", "cartpole-offpac", "ppokl-ppo", "sac-updates", "ppo-64-envs", "cvpg-ppo", "halfcheetah-sac")
#: the comparisons run when ``--cases`` is not given (the CPU ones)
CPU_CASES = CASES[:3]
PPO_ENVS = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1")
#: batch sizes of ``sac-updates``
SAC_BATCH_SIZES = (256, 1024)
#: envs of ``ppo-64-envs`` (Pendulum's 1024-step rollouts would make one rollout 65536 steps)
MANY_ENVS = 64
#: XLA's flags for one CPU thread, as torch.set_num_threads(1) (read when jax is first imported)
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
#: aten's matrix products: the arithmetic of a dense update
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


@dataclass
class Contender:
    """
    One model of a comparison.

    :param name: its name in the tables
    :param build: builds the model
    :param warm_up: an untimed first run (buffers filled, JIT compiled, caches warm); returns the timed step
    :param unit: what the timed step counts ("env steps" or "gradient steps")
    """

    name: str
    build: Callable[[], BaseAlgorithm]
    warm_up: Callable[[BaseAlgorithm], tuple[Callable[[], None], int]]
    unit: str
    values: list[float] = field(default_factory=list)
    #: per timed call, the process's CPU time over the wall time: the cores the model kept busy
    cores: list[float] = field(default_factory=list)


@dataclass
class Goal:
    """
    A ratio reported for a comparison: ``name``'s median over ``reference``'s, with the issue's goal for it
    (``ratio``: at least that many times; None: reported without a goal).
    """

    name: str
    reference: str
    ratio: float | None


def _learn_step(steps: int, warm_up_steps: int | None = None) -> Callable[[BaseAlgorithm], tuple[Callable[[], None], int]]:
    """
    Warm-up: ``learn(warm_up_steps)`` (None: ``learning_starts`` and a quarter of ``steps``, so that every
    timed step trains); timed: ``learn(steps)`` more, continuing the same run.
    """

    def warm_up(model: BaseAlgorithm) -> tuple[Callable[[], None], int]:
        model.learn(warm_up_steps if warm_up_steps is not None else model.learning_starts + max(steps // 4, 1))  # type: ignore[attr-defined]
        return (lambda: model.learn(steps, reset_num_timesteps=False)), steps

    return warm_up


def _train_step(model: BaseAlgorithm) -> tuple[Callable[[], None], int]:
    """Warm-up: fill a batch and call ``train()`` once; timed: ``train()`` (64 gradient steps)."""
    step, updates = update_step(model)
    step()
    return step, updates


def _rollout_size(model: BaseAlgorithm) -> int:
    return model.n_steps * model.n_envs  # type: ignore[attr-defined]


def contenders(
    case: str, env_id: str, folder: Path, steps: int, hyperparams: dict[str, dict[str, Any]], device: str = "cpu"
) -> list[Contender]:
    """
    The models of one comparison on one env.

    :param case: one of :data:`CASES`
    :param env_id: the env
    :param folder: where the zoo may write
    :param steps: env steps per timed ``learn()`` call (rounded up to whole rollouts on-policy)
    :param hyperparams: per zoo algorithm name (``offpac``, ``sac``, ``ppokl``, ``ppo``), overrides
    :param device: torch device of the PyTorch models
    """

    def zoo(algo: str, conf: Path | None = None, **extra: Any) -> Callable[[], BaseAlgorithm]:
        def build() -> BaseAlgorithm:
            th.manual_seed(0)
            log_folder = Path(tempfile.mkdtemp(prefix=f"{algo}-", dir=folder))
            return zoo_model(algo, env_id, device, log_folder, conf, {**hyperparams.get(algo, {}), **extra} or None)

        return build

    def eager_offpac(name: str, build: Callable[[], BaseAlgorithm], step: Any, unit: str) -> list[Contender]:
        """On CUDA, OffPAC without its captured update beside it (on the CPU the update is eager anyway)."""
        return [Contender(name, build, step, unit)] if th.device(device).type == "cuda" else []

    def on_policy(model: BaseAlgorithm) -> tuple[Callable[[], None], int]:
        rollouts = max(1, -(-steps // _rollout_size(model)))
        return _learn_step(rollouts * _rollout_size(model), _rollout_size(model))(model)

    if case == "pendulum-sac":
        def sac_then_sbx() -> BaseAlgorithm:
            return sbx_sac_like(zoo("sac")())

        warm_up = _learn_step(steps)
        found = [
            Contender("OffPAC", zoo("offpac"), warm_up, "env steps"),
            Contender("OffPAC (exact)", zoo("offpac", fast_update=False), warm_up, "env steps"),
            Contender("SB3 SAC", zoo("sac"), warm_up, "env steps"),
        ]
        if sbx_available():
            found.append(Contender("SBX SAC", sac_then_sbx, warm_up, "env steps"))
        return found
    if case == "cartpole-offpac":
        offpac_entry = yaml.safe_load(hyperparams_path("offpac").read_text())[env_id]
        same_size = {key: offpac_entry[key] for key in ("batch_size", "policy_kwargs")}
        return [
            Contender("OffPAC", zoo("offpac"), _train_step, "gradient steps"),
            Contender("OffPAC (exact)", zoo("offpac", fast_update=False), _train_step, "gradient steps"),
            Contender("DQN", zoo("dqn"), _train_step, "gradient steps"),
            Contender("DQN, OffPAC's batch and networks", zoo("dqn", **same_size), _train_step, "gradient steps"),
        ]
    if case == "ppokl-ppo":  # the same hyperparameters (PPO's): what the KL penalty costs, not what a tuned entry does
        ppo_file = zoo_hyperparams_path("ppo")
        return [
            Contender("PPOKL", zoo("ppokl", conf=ppo_file), on_policy, "env steps"),
            Contender("PPO", zoo("ppo"), on_policy, "env steps"),
        ]
    if case == "sac-updates":
        found = []
        for batch_size in SAC_BATCH_SIZES:
            def sbx_like(batch_size: int = batch_size) -> BaseAlgorithm:
                return sbx_sac_like(zoo("sac", batch_size=batch_size)())

            found += [
                Contender(f"OffPAC, batch {batch_size}", zoo("offpac", batch_size=batch_size), _train_step, "gradient steps"),
                *eager_offpac(f"OffPAC (eager), batch {batch_size}", zoo("offpac", batch_size=batch_size, cuda_graph=False), _train_step, "gradient steps"),
                Contender(f"OffPAC (exact), batch {batch_size}", zoo("offpac", batch_size=batch_size, fast_update=False), _train_step, "gradient steps"),
                Contender(f"SB3 SAC, batch {batch_size}", zoo("sac", batch_size=batch_size), _train_step, "gradient steps"),
            ]  # fmt: skip
            if sbx_available():
                found.append(Contender(f"SBX SAC, batch {batch_size}", sbx_like, _train_step, "gradient steps"))
        return found
    if case == "ppo-64-envs":
        return [
            Contender(f"PPOKL, {MANY_ENVS} envs", zoo("ppokl", conf=zoo_hyperparams_path("ppo"), n_envs=MANY_ENVS), on_policy, "env steps"),
            Contender(f"PPO, {MANY_ENVS} envs", zoo("ppo", n_envs=MANY_ENVS), on_policy, "env steps"),
        ]
    if case == "cvpg-ppo":
        ppo_conf = zoo_conf_file(load_suite("cvpg-variance"), "ppo", folder)  # the zoo's v4 entries for the v5 envs
        found = [
            Contender("CVPG", zoo("cvpg"), on_policy, "env steps"),
            Contender("CVPG (L-BFGS critic fit)", zoo("cvpg", qf_optimizer="lbfgs"), on_policy, "env steps"),
        ]
        # where cvpg.yml's entry was tuned (other rollouts, minibatches, epochs): CVPG with its defaults on PPO's entry as
        # well, so that the table also says what the control variate costs at the same settings
        ppo_file = ppo_conf or zoo_hyperparams_path("ppo")
        cvpg_entry = yaml.safe_load(hyperparams_path("cvpg").read_text())[env_id]
        critic = {key: value for key, value in cvpg_entry.items() if key.startswith("qf_") or key == "eta"}
        ppo_entry = yaml.safe_load(ppo_file.read_text())[env_id]
        if {key: value for key, value in cvpg_entry.items() if key not in critic} != ppo_entry:
            found += [
                Contender("CVPG, PPO's settings", zoo("cvpg", conf=ppo_file), on_policy, "env steps"),
                Contender("CVPG, PPO's settings (L-BFGS critic fit)", zoo("cvpg", conf=ppo_file, qf_optimizer="lbfgs"),
                          on_policy, "env steps"),
            ]  # fmt: skip
        return [*found, Contender("PPO", zoo("ppo", conf=ppo_conf), on_policy, "env steps")]
    if case == "halfcheetah-sac":  # end to end with the zoo's SAC settings (its v4 entry for v5)
        sac_conf = zoo_conf_file(load_suite("cvpg-variance"), "sac", folder)
        warm_up = _learn_step(steps)

        def sbx_from_zoo() -> BaseAlgorithm:
            return sbx_sac_like(zoo("sac", conf=sac_conf)())

        found = [
            Contender("OffPAC", zoo("offpac"), warm_up, "env steps"),
            *eager_offpac("OffPAC (eager)", zoo("offpac", cuda_graph=False), warm_up, "env steps"),
            Contender("SB3 SAC", zoo("sac", conf=sac_conf), warm_up, "env steps"),
        ]
        if sbx_available():
            found.append(Contender("SBX SAC", sbx_from_zoo, warm_up, "env steps"))
        return found
    raise ValueError(f"case must be one of {CASES}, got {case!r}")


GOALS = {
    "pendulum-sac": [Goal("OffPAC", "SB3 SAC", 2.0), Goal("OffPAC", "SBX SAC", 1.0)],
    "cartpole-offpac": [
        Goal("OffPAC", "OffPAC (exact)", 1.5),
        Goal("OffPAC", "DQN", None),
        Goal("OffPAC", "DQN, OffPAC's batch and networks", None),
    ],
    "ppokl-ppo": [Goal("PPOKL", "PPO", 0.98)],
    "sac-updates": [
        Goal(f"OffPAC, batch {size}", f"{reference}, batch {size}", None)
        for size in SAC_BATCH_SIZES
        for reference in ("SB3 SAC", "SBX SAC", "OffPAC (exact)", "OffPAC (eager)")
    ],
    "ppo-64-envs": [Goal(f"PPOKL, {MANY_ENVS} envs", f"PPO, {MANY_ENVS} envs", None)],
    "cvpg-ppo": [
        Goal("CVPG", "PPO", 0.8),
        Goal("CVPG (L-BFGS critic fit)", "PPO", None),
        Goal("CVPG, PPO's settings", "PPO", None),
        Goal("CVPG, PPO's settings (L-BFGS critic fit)", "PPO", None),
    ],
    "halfcheetah-sac": [Goal("OffPAC", "SBX SAC", 1.0), Goal("OffPAC", "OffPAC (eager)", None), Goal("OffPAC", "SB3 SAC", None)],
}
ENVS = {
    "pendulum-sac": ("Pendulum-v1",),
    "cartpole-offpac": ("CartPole-v1",),
    "ppokl-ppo": PPO_ENVS,
    "sac-updates": ("Pendulum-v1",),
    "ppo-64-envs": ("CartPole-v1", "Acrobot-v1"),
    "cvpg-ppo": ("Pendulum-v1", "HalfCheetah-v5"),
    "halfcheetah-sac": ("HalfCheetah-v5",),
}


def race(entrants: list[Contender], repeats: int) -> tuple[list[list[str]], list[BaseAlgorithm]]:
    """
    Build and warm up every contender, then time them ``repeats`` times each, the order rotated by one
    each round; fills ``values`` (units per second) and returns the orders and the models.

    :param entrants: the contenders
    :param repeats: timed calls per contender
    """
    models = [entrant.build() for entrant in entrants]
    steps = [entrant.warm_up(model) for entrant, model in zip(entrants, models)]
    orders = []
    for round_ in range(repeats):
        order = [(round_ + offset) % len(entrants) for offset in range(len(entrants))]
        orders.append([entrants[index].name for index in order])
        for index in order:
            step, count = steps[index]
            synchronize(models[index].device)
            start, start_cpu = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):
                step()
            synchronize(models[index].device)
            wall = time.perf_counter() - start
            entrants[index].values.append(count / wall)
            entrants[index].cores.append((time.process_time() - start_cpu) / wall)
    return orders, models


def close_envs(models: list[BaseAlgorithm]) -> None:
    """Close the models' envs."""
    for model in models:
        env = model.get_env()
        if env is not None:
            env.close()


#: unprofiled ``train()`` calls per breakdown (their median is reported), profiled ones, and the gradient steps of a
#: profiled call: reading the profiler's events (about 1,400 per SAC step) takes longer than the steps themselves, and
#: 8 steps per call give the per-step figure of 64 (7.8 against 7.9 ms of matrix products for Pendulum-v1's OffPAC)
BREAKDOWN_CALLS, PROFILED_CALLS, PROFILED_STEPS = 5, 3, 8


def _train_ms_per_step(model: BaseAlgorithm, gradient_steps: int) -> float:
    """Milliseconds per gradient step, the median of unprofiled ``train()`` calls (waiting for a GPU to finish)."""
    times = []
    for _ in range(BREAKDOWN_CALLS):
        synchronize(model.device)
        start = time.perf_counter()
        model.train(gradient_steps=gradient_steps, batch_size=model.batch_size)  # type: ignore[attr-defined]
        synchronize(model.device)
        times.append(1e3 * (time.perf_counter() - start) / gradient_steps)
    return statistics.median(times)


def matmul_breakdown(model: BaseAlgorithm, gradient_steps: int = 64) -> dict[str, float]:
    """
    Milliseconds per gradient step of an off-policy PyTorch model's ``train()``: in all (unprofiled calls)
    and in matrix products (the self CPU time of :data:`MATMUL_OPS` under the torch profiler, the median of
    other calls of :data:`PROFILED_STEPS` steps): the share of the update that is arithmetic rather than framework
    overhead.

    :param model: a warmed-up off-policy model (its replay buffer holds a batch)
    :param gradient_steps: gradient steps per call
    """
    from torch.profiler import ProfilerActivity, profile

    ms_per_step = _train_ms_per_step(model, gradient_steps)
    matmul_us = []
    for _ in range(PROFILED_CALLS):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            model.train(gradient_steps=PROFILED_STEPS, batch_size=model.batch_size)  # type: ignore[attr-defined]
        matmul_us.append(sum(event.self_cpu_time_total for event in profiler.key_averages() if event.key in MATMUL_OPS))
    return {
        "ms_per_step": ms_per_step,
        "matmul_ms_per_step": 1e-3 * statistics.median(matmul_us) / PROFILED_STEPS,
        "profiled_steps": PROFILED_STEPS,
    }


def cuda_breakdown(model: BaseAlgorithm, gradient_steps: int = 64) -> dict[str, float]:
    """
    Milliseconds per gradient step of a PyTorch off-policy model's ``train()`` on a CUDA device: in all (an
    unprofiled call), and the GPU's busy time and kernel launches (copies included) per step in a second
    call under the torch profiler. Busy time far below the step's time means the step is bound by
    launching kernels from Python, not by the GPU's arithmetic.

    :param model: a warmed-up off-policy model on a CUDA device (its replay buffer holds a batch)
    :param gradient_steps: gradient steps per call
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    ms_per_step = _train_ms_per_step(model, gradient_steps)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        model.train(gradient_steps=gradient_steps, batch_size=model.batch_size)  # type: ignore[attr-defined]
        synchronize(model.device)
    kernels = [event for event in profiler.events() if event.device_type == DeviceType.CUDA]
    return {
        "ms_per_step": ms_per_step,
        "gpu_ms_per_step": 1e-3 * sum(event.device_time_total for event in kernels) / gradient_steps,
        "kernels_per_step": len(kernels) / gradient_steps,
    }


def compare(
    out: Path,
    repeats: int = 5,
    steps: int = 2000,
    cases: tuple[str, ...] = CPU_CASES,
    envs: tuple[str, ...] | None = None,
    hyperparams: dict[str, dict[str, Any]] | None = None,
    device: str = "cpu",
    command: str | None = None,
) -> Path:
    """
    Run the comparisons on ``device``; write ``out/compare.json`` and ``out/compare.md``; return the json's path.

    :param out: the results folder
    :param repeats: timed calls per model (the median is reported)
    :param steps: env steps per timed ``learn()`` call
    :param cases: which comparisons (default: the CPU ones, :data:`CPU_CASES`)
    :param envs: only these envs of the comparisons
    :param hyperparams: per zoo algorithm name, overrides of its hyperparameters (tests shrink the models)
    :param device: torch device of the PyTorch models ("cpu", "cuda", "cuda:1")
    :param command: the command line to print in the report (default: built from the arguments)
    """
    target = th.device(device)
    if target.type == "cuda" and not th.cuda.is_available():
        raise ValueError(f"device is {device!r} but torch sees no CUDA device (torch {th.__version__})")
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        raise ValueError(f"cases must be among {CASES}, got {unknown}")
    versions = {"torch": th.__version__}
    if sbx_available():
        import jax
        import sbx

        versions.update(jax=f"{jax.__version__} ({jax.default_backend()})", sbx=sbx.__version__)
    if command is None:
        command = "python -m sb3_pgext.suite.compare" + (f" --device {device}" if device != "cpu" else "")
        command += f" --repeats {repeats} --steps {steps}" + (f" --cases {' '.join(cases)}" if tuple(cases) != CPU_CASES else "")
    results: list[dict[str, Any]] = []
    data = {
        "command": command,
        "device": device,
        "device_name": th.cuda.get_device_name(target) if target.type == "cuda" else None,
        "cpu": cpu_name(),
        "torch_threads": th.get_num_threads(),
        **core_counts(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions,
        "repeats": repeats,
        "steps": steps,
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            for env_id in ENVS[case]:
                if envs and env_id not in envs:
                    continue
                entrants = contenders(case, env_id, Path(tmp), steps, hyperparams or {}, device)
                with sbx_device(device):  # SBX's models are built and timed on JAX's device of the same kind
                    orders, models = race(entrants, repeats)
                medians = {entrant.name: statistics.median(entrant.values) for entrant in entrants}
                goals = [
                    {"name": goal.name, "reference": goal.reference, "goal": goal.ratio, "ratio": medians[goal.name] / medians[goal.reference]}
                    for goal in GOALS[case]
                    if goal.name in medians and goal.reference in medians
                ]
                breakdown: dict[str, dict[str, float]] = {}
                results.append({
                    "case": case, "env": env_id, "unit": entrants[0].unit + "/s", "orders": orders,
                    "rows": [
                        {"name": entrant.name, "median": medians[entrant.name], "values": entrant.values, "cores": statistics.median(entrant.cores)}
                        for entrant in entrants
                    ],
                    "goals": goals, "breakdown": breakdown,
                })  # fmt: skip
                for name, median in medians.items():
                    print(f"{case} {env_id}: {name}: {median:.1f} {entrants[0].unit}/s")
                for goal in goals:
                    print(f"{case} {env_id}: {goal['name']} / {goal['reference']} = {goal['ratio']:.2f} (goal {goal['goal']})")
                _write(out, data)  # after every table, so that a run stopped later keeps what it measured
                # Where the PyTorch updates' time goes: on the CPU beside SBX's whole env step; on a GPU, its busy time
                profiled = {("pendulum-sac", "cpu"): matmul_breakdown, ("sac-updates", "cuda"): cuda_breakdown}.get((case, target.type))
                if profiled is not None:
                    for entrant, model in zip(entrants, models):
                        if not type(model).__module__.startswith("sbx"):
                            breakdown[entrant.name] = profiled(model)
                        elif target.type == "cpu":  # SBX's gradient step too, unprofiled (its arithmetic is XLA's)
                            with sbx_device(device):
                                # a first call compiles SBX's loop of 64 gradient steps (the race's calls made one each)
                                model.train(gradient_steps=64, batch_size=model.batch_size)  # type: ignore[attr-defined]
                                breakdown[entrant.name] = {"ms_per_step": _train_ms_per_step(model, 64)}
                    _write(out, data)
                close_envs(models)
    _write(out, data)
    return out / COMPARE_JSON


def _write(out: Path, data: dict[str, Any]) -> None:
    write_text_atomically(out / COMPARE_JSON, json.dumps(data, indent=1))
    write_text_atomically(out / COMPARE_MD, "\n".join(compare_markdown(data)) + "\n")


def _has_cores(data: dict[str, Any]) -> bool:
    return any("cores" in row for result in data["results"] for row in result["rows"])


def compare_markdown(data: dict[str, Any]) -> list[str]:
    """The tables of ``compare.json``."""
    versions = ", ".join(f"{name} {version}" for name, version in data["versions"].items())
    command = data.get("command") or f"python -m sb3_pgext.suite.compare --repeats {data['repeats']} --steps {data['steps']}"
    lines = [
        "# Side-by-side speed",
        "",
        f"`{command}`",
        "",
        (f"Device: {data['device_name']} (`{data['device']}`), " if data.get("device_name") else "Device: ")
        + f"CPU ({data['cpu']}), {data['torch_threads']} torch thread(s)"
        + (f", XLA flags `{data['xla_flags']}`" if data["xla_flags"] else "")
        + pinned_note(data)
        + f"; {versions}. Every figure is the median of {data['repeats']} timed calls, the models of a table timed "
        "in turn in one process, the order rotated each round; ratios are ratios of medians."
        + (" Cores used: the process's CPU time over the wall time of the timed calls (median)." if _has_cores(data) else ""),
        "",
    ]
    for result in data["results"]:
        cores = "cores" in result["rows"][0]
        lines += [
            f"## {result['case']}: {result['env']}",
            "",
            f"| model | {result['unit']} (median) | all repeats |" + (" cores used |" if cores else ""),
            "| --- | --- | --- |" + (" --- |" if cores else ""),
        ]
        for row in result["rows"]:
            used = f" {row['cores']:.2f} |" if cores else ""
            lines.append(f"| {row['name']} | {row['median']:.1f} | {', '.join(f'{value:.1f}' for value in row['values'])} |{used}")
        lines.append("")
        for goal in result["goals"]:
            if goal["goal"] is None:
                lines.append(f"- {goal['name']} / {goal['reference']}: {goal['ratio']:.2f}")
                continue
            met = "met" if goal["ratio"] >= goal["goal"] else "not met"
            lines.append(f"- {goal['name']} / {goal['reference']}: {goal['ratio']:.2f} (goal ≥ {goal['goal']}: {met})")
        lines.append("")
        if result.get("breakdown") and result["case"] == "sac-updates":
            lines += [
                "Where the time goes on the GPU: milliseconds per gradient step of `train(64)` after the race (unprofiled), "
                "and per step the GPU's busy time (the kernels' and copies' durations) and the kernels and copies launched, "
                "under the torch profiler.",
                "",
                "| model | ms per gradient step | GPU busy ms per step | kernels per step |",
                "| --- | --- | --- | --- |",
            ]
            for row in result["rows"]:
                cost = result["breakdown"].get(row["name"])
                if cost:
                    lines.append(f"| {row['name']} | {cost['ms_per_step']:.2f} | {cost['gpu_ms_per_step']:.2f} | {cost['kernels_per_step']:.0f} |")
            lines.append("")
        elif result.get("breakdown"):
            steps = {cost.get("profiled_steps") for cost in result["breakdown"].values()} - {None}  # None: train(64) (older runs)
            profiled_steps = f" of {steps.pop()} gradient steps" if len(steps) == 1 else ""
            lines += [
                f"Where the time goes: milliseconds per gradient step of `train(64)` after the race, in all (the median of "
                f"{BREAKDOWN_CALLS} unprofiled calls) and in matrix products (self CPU time of "
                f"{', '.join(f'`{op}`' for op in MATMUL_OPS)} under the torch profiler, the median of {PROFILED_CALLS} calls"
                f"{profiled_steps}), "
                "beside each model's whole env step (1 / its median above, collection included); SBX's gradient step is "
                "timed the same way, its matrix products are XLA's and not counted.",
                "",
                "| model | ms per env step | ms per gradient step | of it in matrix products |",
                "| --- | --- | --- | --- |",
            ]
            medians = {row["name"]: row["median"] for row in result["rows"]}
            for row in result["rows"]:
                cost = result["breakdown"].get(row["name"])
                matmul = f"{cost['matmul_ms_per_step']:.1f}" if cost and "matmul_ms_per_step" in cost else "–"
                update = f"{cost['ms_per_step']:.1f} | {matmul}" if cost else "– | –"
                lines.append(f"| {row['name']} | {1e3 / medians[row['name']]:.1f} | {update} |")
            lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sb3_pgext.suite.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmark") / "speed", help="results folder")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model (median reported)")
    parser.add_argument("--steps", type=int, default=2000, help="env steps per timed learn() call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and XLA's, for SBX); on the CPU the process is also pinned to that many cores")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CPU_CASES), help="comparisons (default: the CPU ones)")
    parser.add_argument("--envs", nargs="+", help="only these envs")
    parser.add_argument("--device", default="cpu", help='torch device of the PyTorch models ("cpu", "cuda"); SBX runs on JAX\'s matching platform')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--repeats, --steps and --threads must be at least 1")
    if th.device(args.device).type == "cuda" and not th.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device (torch {th.__version__})")
    th.set_num_threads(args.threads)
    if th.device(args.device).type == "cpu":
        pin_to_cores(args.threads)
    if "jax" not in sys.modules:  # read when jax is first imported
        if args.threads == 1 and XLA_ONE_THREAD not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
        if th.device(args.device).type == "cpu":  # SBX runs on JAX's CPU anyway (sbx_device); JAX then leaves the GPU alone
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        else:  # JAX takes 75% of the GPU's memory at its first use unless told otherwise; torch shares the GPU
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    command = "python -m sb3_pgext.suite.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    envs = tuple(args.envs) if args.envs else None
    print(f"compare: {compare(args.out, args.repeats, args.steps, tuple(args.cases), envs, device=args.device, command=command.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
