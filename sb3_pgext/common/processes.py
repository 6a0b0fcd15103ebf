"""
A child process that ends with its parent.

The benchmark suite trains each run in a child process (``python -m sb3_pgext.zoo train``). When the runner
is killed (SIGKILL, an out-of-memory kill, a closed session), the child would go on training, orphaned,
beside the run a restarted runner trains again. The runner names itself in the child's environment
(:data:`PARENT_PID_VARIABLE`); the zoo command then asks the kernel to kill it when that parent dies
(Linux's ``PR_SET_PDEATHSIG``), or, elsewhere, watches for it from a thread.
"""

import ctypes
import os
import signal
import sys
import threading
import time

#: the environment variable in which a parent asks its child to die with it (the parent's pid)
PARENT_PID_VARIABLE = "SB3_PGEXT_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _set_parent_death_signal() -> bool:
    """Linux: the kernel sends SIGKILL to this process when its parent exits. Whether it could be set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def die_with_parent(environ: dict[str, str] | None = None, interval: float = 1.0) -> bool:
    """
    When the environment names a parent (:data:`PARENT_PID_VARIABLE`), end this process as soon as that parent
    dies; at once if it is already gone. Does nothing otherwise, and on Windows.

    :param environ: the environment to read (default: ``os.environ``)
    :param interval: seconds between two looks at the parent, where the kernel cannot be asked to signal
    :return: whether this process now dies with its parent
    """
    parent = (os.environ if environ is None else environ).get(PARENT_PID_VARIABLE)
    if not parent or not parent.isdigit() or sys.platform == "win32":
        return False
    parent_pid = int(parent)
    if not _set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent_pid, interval), daemon=True, name="die-with-parent").start()
    if os.getppid() != parent_pid:  # the parent died before the signal was set: it will not come
        os._exit(1)
    return True
