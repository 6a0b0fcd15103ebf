"""
Updates per second of the actor-critic algorithms of a suite, on the CPU and on another torch device,
beside SB3's SAC on the same device::

    python -m sb3_pgext.suite speed quick --device cuda

On every env of the suite that runs SAC, OffPAC, CVPG and SAC are built exactly as the suite's runs
build them (the RL Zoo's ``ExperimentManager`` with the same hyperparameter files), given one batch of
data, and their ``train()`` is timed on the device. An *update* is one minibatch gradient step of the
actor: for OffPAC and SAC one step of actor and critics (``gradient_steps=1``); for CVPG one PPO
minibatch step, the Q critic's ``qf_gradient_steps`` of that rollout included in the time. Env
stepping is left out, so the figures isolate what a GPU can speed up. The results go to
``<out>/speed.json``, which the report turns into its "Updates per second" section. When sbx-rl is
installed (the ``[sbx]`` extra), SBX's SAC (SB3's JAX port) with the hyperparameters the zoo gave SB3's SAC
is timed beside them on the CPU, as an outside anchor (``algo`` "sbx"). For env steps per second side by
side, see :mod:`sb3_pgext.suite.compare`, which builds and times its models with this module's helpers
(:func:`zoo_model`, :func:`update_step`, :func:`synchronize`, :func:`pin_to_cores`, the SBX ones).
"""

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_pgext.common.hyperparams import hyperparams_path
from sb3_pgext.common.save_util import write_text_atomically
from sb3_pgext.registry import ALGORITHMS
from sb3_pgext.suite.config import Suite
from sb3_pgext.suite.runner import zoo_conf_file

#: The algorithms timed, in report order: ours and the SB3 peer the issue compares them with
SPEED_ALGOS = ("offpac", "cvpg", "sac")
SPEED_FILE = "speed.json"


def zoo_model(
    algo: str, env_id: str, device: str, log_folder: Path, conf: Path | None = None, hyperparams: dict[str, Any] | None = None
) -> BaseAlgorithm:
    """
    The model ``python -m sb3_pgext.zoo train --algo <algo> --env <env_id> --device <device>`` would train.

    :param algo: zoo name of the algorithm
    :param env_id: the env
    :param device: torch device of the model
    :param log_folder: where the zoo may write its monitor files and config
    :param conf: ``--conf-file`` (None: the package's yml for ours, the zoo's for SB3's)
    :param hyperparams: overrides, as ``-params`` would give them
    """
    from rl_zoo3.exp_manager import ExperimentManager

    from sb3_pgext.zoo import register

    register()
    with contextlib.redirect_stdout(io.StringIO()):  # the zoo prints the hyperparameters and the log path
        manager = ExperimentManager(
            argparse.Namespace(), algo, env_id, str(log_folder), hyperparams=hyperparams, device=device, verbose=0,
            config=str(conf) if conf else (str(hyperparams_path(algo)) if algo in ALGORITHMS else None),
        )  # fmt: skip
        setup = manager.setup_experiment()
    assert setup is not None  # None only when optimising hyperparameters
    return setup[0]


def sbx_available() -> bool:
    """Whether SBX (sbx-rl) can be imported."""
    try:
        import sbx  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def sbx_device(device: str) -> Iterator[None]:
    """
    Run SBX's models of a block on the JAX device that matches the torch ``device``: JAX's CPU for "cpu"
    (JAX's default is the GPU when it has one), its GPU for "cuda" (its default device if JAX has no GPU).
    Nothing happens without sbx-rl.
    """
    if not sbx_available():
        yield
        return
    import jax

    if th.device(device).type == "cpu":
        target = jax.devices("cpu")[0]
    else:
        target = next((d for d in jax.devices() if d.platform == "gpu"), jax.devices()[0])
    with jax.default_device(target):
        yield


def sbx_sac_like(model: BaseAlgorithm) -> BaseAlgorithm:
    """SBX's SAC with the hyperparameters of SB3's SAC ``model`` (as the zoo built it), on the same env."""
    import sbx

    names = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "gradient_steps", "ent_coef", "target_entropy")
    kwargs = {name: getattr(model, name) for name in names}
    kwargs["train_freq"] = (model.train_freq.frequency, model.train_freq.unit.value)  # type: ignore[attr-defined]
    net_arch = model.policy_kwargs.get("net_arch")
    return sbx.SAC("MlpPolicy", model.get_env(), seed=0, policy_kwargs={"net_arch": net_arch} if net_arch else None, **kwargs)


def update_step(model: BaseAlgorithm) -> tuple[Callable[[], None], int]:
    """Give ``model`` one batch of data; return one call of its ``train()`` and the updates it makes."""
    if isinstance(model, OffPolicyAlgorithm):
        model.learn(total_timesteps=max(model.learning_starts, model.batch_size) + 1)
        gradient_steps = 64
        return (lambda: model.train(gradient_steps=gradient_steps, batch_size=model.batch_size)), gradient_steps
    n_steps, n_envs, batch_size, n_epochs = model.n_steps, model.n_envs, model.batch_size, model.n_epochs  # type: ignore[attr-defined]
    model.learn(total_timesteps=n_steps * n_envs)  # one rollout (and its first update)
    if getattr(model, "target_kl", None) is not None:
        raise ValueError(f"{type(model).__name__} with target_kl may stop its epochs early: its updates per call are not fixed")
    return model.train, n_epochs * math.ceil(n_steps * n_envs / batch_size)


def pin_to_cores(n_cores: int) -> list[int]:
    """
    Restrict this process, every thread it has and every thread it starts later, to ``n_cores`` of the cores
    it may run on (Linux): XLA's CPU client runs SBX's update on more threads than its flags ask for, so
    only the operating system's affinity makes "one thread" hold for every framework alike. Nothing changes
    where the process may not use more than ``n_cores`` already, or where the platform has no affinity.

    :param n_cores: how many cores
    :return: the cores the process may run on now (empty where the platform cannot tell)
    """
    if not hasattr(os, "sched_setaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    if n_cores < len(cores):
        cores = cores[:n_cores]
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), cores)
    return cores


def core_counts() -> dict[str, int | None]:
    """The cores this process may run on and the machine's, as the speed results record them."""
    return {
        "cores_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cores_in_machine": os.cpu_count(),
    }


def pinned_note(data: dict[str, Any]) -> str:
    """", the process pinned to k of the machine's n cores" for speed results whose process was pinned, else ""."""
    allowed, machine = data.get("cores_allowed"), data.get("cores_in_machine")
    return f", the process pinned to {allowed} of the machine's {machine} cores" if allowed and machine and allowed < machine else ""


def synchronize(device: th.device) -> None:
    """Wait for the work queued on ``device`` (CUDA's kernels run asynchronously), so that a timer stops after it."""
    if device.type == "cuda":
        th.cuda.synchronize(device)


def updates_per_second(model: BaseAlgorithm, repeats: int = 3) -> dict[str, float]:
    """
    Median updates per second of ``model.train()`` over ``repeats`` timed calls, after one untimed call
    (CUDA kernels and the allocator warm up there).

    :param model: a model built by :func:`zoo_model`
    :param repeats: timed calls
    """
    step, updates = update_step(model)
    step()
    seconds = []
    for _ in range(repeats):
        synchronize(model.device)
        start = time.perf_counter()
        step()
        synchronize(model.device)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"updates_per_call": updates, "seconds_per_call": median, "updates_per_s": updates / median}


def measure_speed(
    suite: Suite,
    out: Path,
    device: str = "cuda",
    repeats: int = 3,
    envs: list[str] | None = None,
    hyperparams: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """
    Time OffPAC, CVPG and SAC on the CPU and on ``device`` (only the CPU when ``device`` is "cpu") on the
    suite's envs that run SAC (or ``envs``); write and return ``out/speed.json``.

    :param suite: the suite
    :param out: the suite's results folder
    :param device: the torch device compared with the CPU
    :param repeats: timed ``train()`` calls per (env, algorithm, device)
    :param envs: only these envs (default: those of the suite that run SAC)
    :param hyperparams: per algorithm, overrides of its hyperparameters (tests shrink the models with them)
    """
    target = th.device(device)
    if target.type == "cuda" and not th.cuda.is_available():
        raise ValueError(f"device is {device!r} but torch sees no CUDA device (torch {th.__version__})")
    known = [env.env_id for env in suite.envs]
    chosen = [env for env in suite.envs if (env.env_id in envs if envs else "sac" in env.algos)]
    if not chosen or any(env_id not in known for env_id in envs or []):
        raise ValueError(f"envs must name envs of the suite {suite.name!r} ({known}), got {envs}")
    devices = ["cpu"] if target.type == "cpu" else ["cpu", device]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for env in chosen:
            for algo in (a for a in SPEED_ALGOS if a in env.algos):
                conf, overrides = zoo_conf_file(suite, algo, Path(tmp)), (hyperparams or {}).get(algo)
                for name in devices:
                    th.manual_seed(0)
                    model = zoo_model(algo, env.env_id, name, Path(tmp) / f"{algo}-{name}", conf, overrides)
                    rows.append({"env": env.env_id, "algo": algo, "device": name, **updates_per_second(model, repeats)})
                    print(f"{env.env_id} {algo} {name}: {rows[-1]['updates_per_s']:.0f} updates/s")
                    if algo == "sac" and name == "cpu" and sbx_available():  # the outside anchor: SBX's SAC, same settings
                        with sbx_device("cpu"):
                            sbx_model = sbx_sac_like(model)
                            rows.append({"env": env.env_id, "algo": "sbx", "device": name, **updates_per_second(sbx_model, repeats)})
                        print(f"{env.env_id} sbx {name}: {rows[-1]['updates_per_s']:.0f} updates/s")
                    model.get_env().close()  # type: ignore[union-attr]
    result = {
        "devices": devices,
        "device_name": th.cuda.get_device_name(target) if target.type == "cuda" else None,
        "cpu": f"{platform.machine()} ({platform.processor() or platform.system()})",
        "torch_threads": th.get_num_threads(),
        **core_counts(),
        "torch": th.__version__,
        "repeats": repeats,
        "rows": rows,
    }
    path = out / SPEED_FILE
    write_text_atomically(path, json.dumps(result, indent=1))
    return path
