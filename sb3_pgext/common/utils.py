"""Small helpers shared by the algorithms."""

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs


def repeat_observations(obs: PyTorchObs, n_times: int) -> PyTorchObs:
    """Stack ``n_times`` copies of a batch of observations (tensor or dict of tensors) along dim 0."""
    if n_times == 1:
        return obs
    if isinstance(obs, dict):
        return {key: value.repeat(n_times, *([1] * (value.dim() - 1))) for key, value in obs.items()}
    return obs.repeat(n_times, *([1] * (obs.dim() - 1)))


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
