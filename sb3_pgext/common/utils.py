"""Small helpers shared by the algorithms."""

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.type_aliases import MaybeCallback, PyTorchObs


def repeat_observations(obs: PyTorchObs, n_times: int) -> PyTorchObs:
    """Stack ``n_times`` copies of a batch of observations (tensor or dict of tensors) along dim 0."""
    if n_times == 1:
        return obs
    if isinstance(obs, dict):
        return {key: value.repeat(n_times, *([1] * (value.dim() - 1))) for key, value in obs.items()}
    return obs.repeat(n_times, *([1] * (obs.dim() - 1)))


def index_observations(obs: Any, index: Any) -> Any:
    """
    The samples ``index`` selects (a slice, mask or index array) of a batch of observations: an array or
    tensor, or a dict of them.
    """
    if isinstance(obs, dict):
        return {key: value[index] for key, value in obs.items()}
    return obs[index]


def concatenate_observations(batches: list[PyTorchObs]) -> PyTorchObs:
    """Batches of observations (tensors, or dicts of tensors) concatenated along dim 0."""
    if isinstance(batches[0], dict):
        return {key: th.cat([batch[key] for batch in batches]) for key in batches[0]}  # type: ignore[index]
    return th.cat(batches)  # type: ignore[arg-type]


def value_net_layers(net_arch: list[int] | dict[str, list[int]]) -> list[int]:
    """The hidden layers of an actor-critic policy's value network, from its ``net_arch``."""
    return list(net_arch.get("vf", [])) if isinstance(net_arch, dict) else list(net_arch)


@contextmanager
def isolated_random_streams(seed: int | None = None) -> Iterator[None]:
    """
    Run a block without disturbing the global random streams: Python's, numpy's, torch's CPU one and CUDA's
    (when initialised) are saved on entry and restored on exit, and seeded with ``seed`` inside when it is given.

    :param seed: the seed of the streams inside the block (None: they go on from their current state)
    """
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), th.random.get_rng_state()
    cuda_states = th.cuda.get_rng_state_all() if th.cuda.is_available() and th.cuda.is_initialized() else None
    try:
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed)
            th.random.default_generator.manual_seed(seed)
            if cuda_states is not None:
                th.cuda.manual_seed_all(seed)
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        th.random.set_rng_state(torch_state)
        if cuda_states is not None:
            th.cuda.set_rng_state_all(cuda_states)


@contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[None]:
    """
    Run a block with float32 values below the normal range (|x| < 2^-126, about 1.2e-38) flushed to zero on the CPU
    (``torch.set_flush_denormal``; x86 with SSE3 and ARM), and restore the previous mode on exit. Arithmetic on such
    subnormal values is many times slower on x86: Adam's moments of a weight whose gradient stays zero (a dead ReLU
    unit) decay into that range after about 800 steps, and made fused Adam 6 times slower in OffPAC's update on
    Pendulum-v1. XLA (JAX, SBX) flushes them by default. The mode is the calling thread's (threads started inside the
    block inherit it; torch's intra-op thread pool, started earlier, does not).

    :param enabled: False: run the block as it is
    """
    if not enabled or _flushes_denormals() or not th.set_flush_denormal(True):
        yield  # nothing to do, or not supported by this CPU
        return
    try:
        yield
    finally:
        th.set_flush_denormal(False)


@contextmanager
def optimizer_implementations_kept(optimizers: list[th.optim.Optimizer]) -> Iterator[None]:
    """
    Load optimizer states in the block (SB3's ``set_parameters``) and keep each optimizer's implementation (fused,
    foreach or single-tensor), whatever the file's was: ``Optimizer.load_state_dict`` takes the saved param groups'
    ``fused`` and ``foreach``. Fused kernels take Adam's step count on the parameters' device, so it is moved there.

    :param optimizers: the optimizers whose states the block loads
    """
    implementations = [[(group.get("fused"), group.get("foreach")) for group in opt.param_groups] for opt in optimizers]
    yield
    for optimizer, settings in zip(optimizers, implementations):
        for group, (fused, foreach) in zip(optimizer.param_groups, settings):
            group["fused"], group["foreach"] = fused, foreach
            if fused:
                step_counts_on_parameter_device(optimizer, group)


def step_counts_on_parameter_device(optimizer: th.optim.Optimizer, group: dict[str, Any]) -> None:
    """
    Each parameter's step count in the optimizer's param ``group`` as a float32 tensor on the parameter's device,
    where fused and capturable kernels read it (torch's other implementations keep it on the CPU).
    """
    for param in group["params"]:
        state = optimizer.state.get(param, {})
        if isinstance(state.get("step"), th.Tensor):
            state["step"] = state["step"].to(device=param.device, dtype=th.float32)


def _flushes_denormals() -> bool:
    """Whether the calling thread flushes subnormal floats: torch has no getter, so halve the smallest normal float32."""
    return bool(np.float32(2.0**-126) / np.float32(2.0) == 0.0)


def with_callbacks(own: list[BaseCallback], callback: MaybeCallback) -> MaybeCallback:
    """
    The user's ``callback`` (None, a callback, a list of them or a function, as ``learn`` takes it) run after an
    algorithm's ``own`` callbacks, as one list for SB3's ``_init_callback``; the user's alone when there are none.

    :param own: the algorithm's callbacks
    :param callback: the user's
    """
    if not own:
        return callback
    if callback is None:
        callbacks: list[BaseCallback] = []
    elif isinstance(callback, list):
        callbacks = list(callback)
    elif isinstance(callback, BaseCallback):
        callbacks = [callback]
    else:
        callbacks = [ConvertCallback(callback)]
    return [*own, *callbacks]
