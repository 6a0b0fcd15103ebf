"""
What the non-finite checks cost: the same models timed with the checks and without them, side by side in one
process, pinned to one core, the order alternated between repeats (each figure: the median over the repeats).

- PPOKL on CartPole-v1 (ppokl.yml, 8 envs): env steps/s of ``learn()``, where the transition check runs at every
  env step and the loss check at every minibatch;
- OffPAC on Pendulum-v1 (offpac.yml: 256x256 networks, batch 256): env steps/s of ``learn()`` (one gradient step
  per env step: both checks) and gradient steps/s of ``train(64)`` (the loss checks alone).

"Without" replaces the checks by no-ops for the timed call (``FiniteTransitionCheck._on_step`` and the algorithms'
``check_finite_loss``), so both rows time the same model, continuing one run::

    python benchmark/finite-checks/measure.py --repeats 7 > benchmark/finite-checks/results.md
"""

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_pgext.ppokl import ppokl
from sb3_pgext.common.finite import FiniteTransitionCheck, check_finite_loss
from sb3_pgext.offpac import offpac
from sb3_pgext.suite.runner import cpu_name
from sb3_pgext.suite.speed import pin_to_cores, zoo_model


@contextlib.contextmanager
def checks_off() -> Iterator[None]:
    """The checks replaced by no-ops within the block."""
    saved = FiniteTransitionCheck._on_step, FiniteTransitionCheck._on_rollout_start, ppokl.check_finite_loss, offpac.check_finite_loss
    FiniteTransitionCheck._on_step = lambda self: True  # type: ignore[method-assign]
    FiniteTransitionCheck._on_rollout_start = lambda self: None  # type: ignore[method-assign]
    ppokl.check_finite_loss = offpac.check_finite_loss = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        FiniteTransitionCheck._on_step, FiniteTransitionCheck._on_rollout_start = saved[:2]  # type: ignore[method-assign]
        ppokl.check_finite_loss, offpac.check_finite_loss = saved[2:]  # type: ignore[assignment]


def side_by_side(step: Callable[[], None], count: int, repeats: int) -> dict[str, Any]:
    """
    Units/s of ``step`` with and without the checks, the order alternated between repeats: the medians, and the
    ratio of each repeat's two calls (adjacent in time, so slow drifts of the machine cancel) as median and range.
    """
    rates: dict[str, list[float]] = {"with checks": [], "without": []}
    for repeat in range(repeats):
        for name in (("with checks", "without") if repeat % 2 == 0 else ("without", "with checks")):
            with checks_off() if name == "without" else contextlib.nullcontext(), contextlib.redirect_stdout(io.StringIO()):
                start = time.perf_counter()
                step()
                rates[name].append(count / (time.perf_counter() - start))
    ratios = [with_checks / without for with_checks, without in zip(rates["with checks"], rates["without"])]
    return {
        **{name: statistics.median(values) for name, values in rates.items()},
        "ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
    }  # fmt: skip


def microseconds_per_call(call: Callable[[], Any], n_calls: int = 20_000) -> float:
    start = time.perf_counter()
    for _ in range(n_calls):
        call()
    return 1e6 * (time.perf_counter() - start) / n_calls


def check_costs(model: BaseAlgorithm) -> dict[str, float]:
    """Microseconds per call of the transition check (on the model's env's shapes) and of one loss check."""
    env = model.get_env()
    assert env is not None
    check = FiniteTransitionCheck()
    check.init_callback(model)
    observations = np.stack([env.observation_space.sample() for _ in range(env.num_envs)]).astype(np.float32)
    check.update_locals(dict(new_obs=observations, rewards=np.ones(env.num_envs, np.float32),
                             dones=np.zeros(env.num_envs, bool), infos=[{}] * env.num_envs))  # fmt: skip
    loss = th.tensor(1.0)
    return {
        "transition": microseconds_per_call(check.on_step),
        "loss": microseconds_per_call(lambda: check_finite_loss("OffPAC", "loss", loss, "at gradient step 1")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    th.set_num_threads(1)
    pin_to_cores(1)
    rows, costs = [], {}
    with TemporaryDirectory() as folder:
        ppokl = zoo_model("ppokl", "CartPole-v1", "cpu", Path(folder) / "ppokl", None, None)
        ppokl.learn(ppokl.n_steps * ppokl.n_envs)
        steps = 4 * ppokl.n_steps * ppokl.n_envs
        rows.append(("PPOKL, CartPole-v1 (8 envs), learn()", "env steps/s", side_by_side(lambda: ppokl.learn(steps, reset_num_timesteps=False), steps, args.repeats)))
        costs["PPOKL, CartPole-v1 (8 envs)"] = check_costs(ppokl)

        model = zoo_model("offpac", "Pendulum-v1", "cpu", Path(folder) / "offpac", None, None)
        model.learn(model.learning_starts + 256)
        rows.append(("OffPAC, Pendulum-v1, learn()", "env steps/s", side_by_side(lambda: model.learn(500, reset_num_timesteps=False), 500, args.repeats)))
        train = lambda: model.train(gradient_steps=64, batch_size=model.batch_size)  # noqa: E731
        rows.append(("OffPAC, Pendulum-v1, train(64)", "gradient steps/s", side_by_side(train, 64, args.repeats)))
        costs["OffPAC, Pendulum-v1"] = check_costs(model)
    print(f"One core ({cpu_name()}), one torch thread; nothing else ran. Each model timed {args.repeats} times with the checks")
    print("and as often without, alternately; ratio: with / without in each repeat, median [lowest, highest].\n")
    print("| model | unit | with checks | without | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name, unit, rates in rows:
        print(f"| {name} | {unit} | {rates['with checks']:.0f} | {rates['without']:.0f} | {rates['ratio']:.3f} [{rates['low']:.3f}, {rates['high']:.3f}] |")
    print("\nThe checks alone, microseconds per call (a transition check per env step, a loss check per loss):\n")
    print("| env shapes | transition check | loss check |")
    print("| --- | --- | --- |")
    for name, cost in costs.items():
        print(f"| {name} | {cost['transition']:.1f} | {cost['loss']:.1f} |")
    print(f"\nMeasured with `python benchmark/finite-checks/measure.py --repeats {args.repeats}`.")

if __name__ == "__main__":
    main()
