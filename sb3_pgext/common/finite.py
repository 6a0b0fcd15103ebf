"""
Stopping at the first non-finite number, before it reaches the weights.

A NaN or infinite observation or reward goes from the buffers into the losses, and one optimizer step
later every weight is NaN; training then fails much later with an error about the NaN policy
(``Normal(loc: nan)``), far from its cause. The algorithms check what enters their buffers (observations,
rewards, the terminal observations of finished episodes) at every env step, and their losses before
each optimizer step, and stop with a :class:`NonFiniteError` that names the quantity, the step and
SB3's tool for finding where it comes from, :class:`~stable_baselines3.common.vec_env.VecCheckNan`.
"""

import math
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

#: where the errors point the user
VEC_CHECK_NAN_HINT = (
    "wrap the env in stable_baselines3.common.vec_env.VecCheckNan(env, raise_exception=True) to stop at the env "
    "step that makes it (or clip / normalise the env's outputs, e.g. with VecNormalize)"
)


class NonFiniteError(ValueError):
    """A NaN or an infinity where training needs a finite number; the model's weights are still those before it."""


def non_finite_entries(value: Any) -> list[str]:
    """
    Where an array, or a dict of arrays (Dict observations), holds NaN or ±inf: ``[]`` when it is all finite;
    otherwise e.g. ``["nan at [0, 2]"]`` (the first entry of each key). Integer arrays (images) are always finite.

    :param value: a numpy array, a dict of them, or a number
    """
    if isinstance(value, dict):
        return [f"{key}: {entry}" for key, array in value.items() for entry in non_finite_entries(array)]
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        return []
    finite = np.isfinite(array)
    if finite.all():
        return []
    index = np.argwhere(~finite)[0]
    return [f"{array[tuple(index)]} at {index.tolist()}"]


def check_finite(algo_name: str, quantity: str, value: Any, step: int) -> None:
    """
    A :class:`NonFiniteError` when ``value`` holds NaN or ±inf.

    :param algo_name: the algorithm, for the message
    :param quantity: what it is, in words ("reward", "observation", ...)
    :param value: the array (or dict of arrays) to check
    :param step: the model's ``num_timesteps`` when it was met
    """
    entries = non_finite_entries(value)
    if entries:
        raise NonFiniteError(
            f"{algo_name}: non-finite {quantity} from the env at step {step} ({', '.join(entries)}; the index is "
            f"[env, ...]), stopped before it entered the buffer: {VEC_CHECK_NAN_HINT}"
        )


def check_finite_loss(algo_name: str, name: str, loss: th.Tensor, where: str) -> None:
    """
    A :class:`NonFiniteError` when a loss (or any of a tensor of losses) is NaN or ±inf. This reads the loss's
    value: on a GPU it waits for the loss to be computed.

    :param algo_name: the algorithm, for the message
    :param name: the loss's name ("loss", "critic_loss", ...)
    :param loss: the loss, or the losses of several updates
    :param where: when it was met, in words (e.g. "at update 12, before its optimizer step")
    """
    if loss.numel() == 1 and math.isfinite(loss.item()):  # the common case, at a tenth of isfinite's cost
        return
    values = loss.detach().reshape(-1)
    finite = th.isfinite(values)
    if not bool(finite.all()):
        raise NonFiniteError(
            f"{algo_name}: the {name} is {values[~finite][0].item()} {where}. The observations and rewards were finite, "
            f"so the networks diverged: lower the learning rate, or normalise observations and rewards (VecNormalize); "
            f"to rule out the env, {VEC_CHECK_NAN_HINT}"
        )


class FiniteTransitionCheck(BaseCallback):
    """
    Checks, at every env step of a rollout, the new observations, the rewards and the terminal observations of
    finished episodes (read from the rollout's locals before they are stored), and the first observation of
    each rollout; a :class:`NonFiniteError` stops training before a non-finite one enters the buffer. The
    algorithms add it to the user's callbacks themselves.
    """

    def _on_rollout_start(self) -> None:
        last_obs = self.model._last_obs
        if last_obs is not None:
            check_finite(type(self.model).__name__, "observation", last_obs, self.model.num_timesteps)

    def _on_step(self) -> bool:
        name, step = type(self.model).__name__, self.model.num_timesteps
        check_finite(name, "observation", self.locals["new_obs"], step)
        check_finite(name, "reward", self.locals["rewards"], step)
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done and info.get("terminal_observation") is not None:
                check_finite(name, "terminal observation", info["terminal_observation"], step)
        return True
