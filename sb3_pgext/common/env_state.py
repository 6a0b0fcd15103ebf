"""
Saving and restoring a Gymnasium env's state, so that continuations can be re-run from a visited state
(the Monte-Carlo measurements of :func:`sb3_pgext.variance_decomposition`).

Two kinds of env can be restored:

- MuJoCo envs (``gymnasium.envs.mujoco.MujocoEnv``): a copy of the simulator's whole ``MjData`` (``qpos``
  and ``qvel``, which ``set_state(qpos, qvel)`` sets, and also the controls, the time, the solver's warm
  start and the derived quantities some envs read before stepping), copied back with ``mujoco.mj_copyData``,
  so that a restored env continues bit for bit as the original would;
- classic-control envs (CartPole, Pendulum, Acrobot, MountainCar, ...), through their ``state``
  attribute (and ``last_u``, ``steps_beyond_terminated`` where the env has them).

The wrappers' counters travel with the state: ``TimeLimit``'s elapsed steps (the time left in the episode)
and sb3-contrib's ``TimeFeatureWrapper``'s step. The env's random generator is *not* part of the state:
restored copies draw their own randomness, which is what re-running a continuation means. Any other
env raises a ``TypeError`` that names it.
"""

import copy
from collections.abc import Iterable
from typing import Any

import gymnasium as gym

#: wrapper class name (or that of a base class: rl_zoo3 patches TimeLimit) -> the attributes of its per-episode state
WRAPPER_COUNTERS = {"TimeLimit": ("_elapsed_steps",), "TimeFeatureWrapper": ("_current_step",)}
#: classic-control attributes restored along with ``state``, where the env has them
CLASSIC_CONTROL_EXTRAS = ("last_u", "steps_beyond_terminated")


def _wrappers(env: gym.Env) -> list[gym.Env]:
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def wrapper_kind(wrapper: gym.Env, names: Iterable[str]) -> str | None:
    """The first of ``names`` that is the name of ``wrapper``'s class or of one of its base classes, else None."""
    bases = {cls.__name__ for cls in type(wrapper).__mro__}
    return next((name for name in names if name in bases), None)


def _is_mujoco(env: gym.Env) -> bool:
    return all(hasattr(env, name) for name in ("model", "data", "set_state")) and type(env.data).__name__ == "MjData"


def check_restorable(env: gym.Env) -> None:
    """
    Raise a ``TypeError`` naming ``env`` when :func:`get_env_state` cannot save it.

    :param env: the env (wrapped or not), after ``reset()``
    """
    unwrapped = env.unwrapped
    if _is_mujoco(unwrapped) or hasattr(unwrapped, "state"):
        return
    spec = getattr(unwrapped, "spec", None)
    name = spec.id if spec is not None else type(unwrapped).__name__
    raise TypeError(
        f"the state of {name} cannot be saved and restored: variance_decomposition re-runs continuations from "
        "restored states, which needs a MuJoCo env (gymnasium.envs.mujoco.MujocoEnv) or a classic-control env "
        "with a `state` attribute"
    )


def get_env_state(env: gym.Env) -> dict[str, Any]:
    """
    A copy of ``env``'s state (see the module docstring), for :func:`set_env_state`.

    :param env: the env (wrapped or not), after ``reset()``
    :return: the saved state
    """
    check_restorable(env)
    unwrapped = env.unwrapped
    wrappers = {}
    for index, wrapper in enumerate(_wrappers(env)):
        kind = wrapper_kind(wrapper, WRAPPER_COUNTERS)
        if kind is not None:
            wrappers[index] = {name: copy.deepcopy(getattr(wrapper, name)) for name in WRAPPER_COUNTERS[kind]}
    if _is_mujoco(unwrapped):
        return dict(kind="mujoco", state=copy.copy(unwrapped.data), wrappers=wrappers)
    extras = {name: copy.deepcopy(getattr(unwrapped, name)) for name in CLASSIC_CONTROL_EXTRAS if hasattr(unwrapped, name)}
    return dict(kind="state", state=copy.deepcopy(unwrapped.state), extras=extras, wrappers=wrappers)


def set_env_state(env: gym.Env, saved: dict[str, Any]) -> None:
    """
    Put ``env`` (the env :func:`get_env_state` saved, or another instance of the same env with the same
    wrappers, already reset once) in the saved state.

    :param env: the env to restore
    :param saved: what :func:`get_env_state` returned
    """
    chain = _wrappers(env)
    for index, counters in saved["wrappers"].items():
        for name, value in counters.items():
            setattr(chain[index], name, copy.deepcopy(value))
    unwrapped = env.unwrapped
    if saved["kind"] == "mujoco":
        import mujoco

        mujoco.mj_copyData(unwrapped.data, unwrapped.model, saved["state"])
        return
    unwrapped.state = copy.deepcopy(saved["state"])
    for name, value in saved["extras"].items():
        setattr(unwrapped, name, copy.deepcopy(value))
