import subprocess
import sys
from pathlib import Path

import pytest
import torch as th

from sb3_pgext import CVPG, PPOKL, OffPAC
from sb3_pgext.registry import ALGORITHMS

# One thread: the default suite runs on 2 cores, in parallel workers
th.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_under_pytests_temporary_folder(tmp_path_factory):
    """
    SB3's logger makes a folder ``$TMPDIR/SB3-<date and time>`` for every ``learn()`` without a log folder (over a
    thousand per run of the tests, left behind); ``SB3_LOGDIR`` names the folder instead, here one under pytest's
    own temporary folder (also for the processes the tests start).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))
        yield


# The algorithms every generic test runs on: the package's registry
MODEL_LIST = [algorithm.algo_class for algorithm in ALGORITHMS.values()]

# Tiny settings per algorithm, so that a few hundred steps exercise whole updates
TINY_KWARGS = {
    PPOKL: dict(n_steps=32, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16])),
    OffPAC: dict(learning_starts=32, batch_size=32, buffer_size=2_000, policy_kwargs=dict(net_arch=[16])),
    CVPG: dict(
        n_steps=32, batch_size=32, n_epochs=2, qf_gradient_steps=2, qf_batch_size=16, qf_buffer_size=2_000, qf_net_arch=[16],
        policy_kwargs=dict(net_arch=[16]),
    ),
}

# The action spaces each algorithm supports, by class name (the generic suite skips the others)
ACTION_SPACES = {
    algorithm.algo_class: tuple(space.__name__ for space in algorithm.action_spaces) for algorithm in ALGORITHMS.values()
}


def tiny(model_class, **overrides):
    """The tiny constructor kwargs of ``model_class``, updated with ``overrides``."""
    kwargs = {**TINY_KWARGS[model_class], **overrides}
    if "policy_kwargs" in overrides:
        kwargs["policy_kwargs"] = {**TINY_KWARGS[model_class].get("policy_kwargs", {}), **overrides["policy_kwargs"]}
    return kwargs


@pytest.fixture(params=MODEL_LIST, ids=lambda cls: cls.__name__)
def model_class(request):
    return request.param


#: another runner, as a run's lock sees it: a process that takes the lock and keeps it until killed
HOLD_LOCK = (
    "import sys, time; from filelock import FileLock; "
    "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)"
)


@pytest.fixture
def hold_lock():
    """``hold_lock(path)`` starts a process holding the file lock ``path`` (killed at the end of the test) and returns it."""
    holders = []

    def hold(path: Path) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
