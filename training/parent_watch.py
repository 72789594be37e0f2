"""A torchrun worker stops when its agent dies.

``torchrun`` starts every worker as a child process of its agent, in a session of its own
(so a signal to torchrun's process group does not reach them: the agent forwards SIGINT /
SIGTERM itself). When the agent is killed with SIGKILL nobody forwards anything, and
before this module the workers trained on to the end, unsupervised, and wrote
``model.pt``. Now each worker asks the Linux kernel for SIGTERM the moment its parent
(the agent) exits (``prctl(PR_SET_PDEATHSIG)``): SIGTERM's default action ends it at once,
whatever it is doing (a long GPU kernel, a collective waiting for the other rank), so
nothing more is written; the last complete checkpoint stays, ready for ``--resume``.

Why the kernel and not a thread polling ``os.getppid()``: the kernel delivers the signal
immediately and needs nothing from the process (no GIL, no loop, no period), which a
watchdog thread cannot promise while the main thread sits in a long C call. The thread is
the fallback where ``prctl`` is missing (not Linux). Either way a parent that died before
the request took effect is caught by comparing the parent pid with the one this module saw
when it was imported.

Only workers started by torchrun (``TORCHELASTIC_RUN_ID`` set) do this: a plain
``python -m training.stage1`` keeps running when the shell that started it goes (nohup).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Optional

log = logging.getLogger("training")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_AT_IMPORT = os.getppid()
_armed: Optional[str] = None


def launched_by_torchrun() -> bool:
    """torchrun's agent sets TORCHELASTIC_RUN_ID for each worker it starts."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def _prctl_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, sig: int, period_s: float) -> None:
    stop = threading.Event()
    while not stop.wait(period_s):
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
            return


def stop_with_parent(sig: int = signal.SIGTERM, parent: Optional[int] = None, period_s: float = 0.5) -> str:
    """Have ``sig`` sent to this process when its parent process exits.

    Returns how: ``"prctl"`` (Linux: the kernel sends it) or ``"watchdog"`` (a daemon
    thread checks the parent pid every ``period_s``). ``parent`` is the pid expected as the
    parent (default: the parent when this module was imported); if it is already gone the
    signal is sent now.
    """
    parent = _PARENT_AT_IMPORT if parent is None else int(parent)
    if _prctl_pdeathsig(sig):
        how = "prctl"
    else:
        threading.Thread(target=_watch, args=(parent, sig, period_s), name="parent-watch", daemon=True).start()
        how = "watchdog"
    if os.getppid() != parent:  # the parent died before the request above took effect
        log.error("the launching process (pid %d) is gone: stopping (pid %d)", parent, os.getpid())
        os.kill(os.getpid(), sig)
    return how


def stop_with_torchrun_agent() -> Optional[str]:
    """Under torchrun: stop this worker (SIGTERM) when its agent dies; once per process.
    Returns how (see :func:`stop_with_parent`), or None outside torchrun."""
    global _armed
    if not launched_by_torchrun():
        return None
    if _armed is None:
        _armed = stop_with_parent(signal.SIGTERM)
    return _armed
