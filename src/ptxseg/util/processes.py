"""Worker processes that end with the process that started them, even after `kill -9`.

A process pool's workers outlive a parent killed with SIGKILL: nothing tells them. On Linux the
kernel can (`prctl(PR_SET_PDEATHSIG)`); elsewhere a thread watches the parent. Pass
`die_with_parent` as a pool's initializer with the parent's pid:
`ProcessPoolExecutor(n, initializer=die_with_parent, initargs=(os.getpid(),))`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def alive(pid: int) -> bool:
    """True while a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(parent: int, interval: float) -> None:
    while alive(parent) and os.getppid() != 1:
        time.sleep(interval)
    os._exit(1)


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """Make this process end when `parent` ends (a pool initializer).

    A worker started through a fork server is the server's child, not `parent`'s, and the server
    lives as long as any of its workers: such a worker watches `parent` itself."""
    if os.getppid() != parent:
        threading.Thread(target=_watch, args=(parent, interval), daemon=True).start()
    elif sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            threading.Thread(target=_watch, args=(parent, interval), daemon=True).start()
    else:
        threading.Thread(target=_watch, args=(parent, interval), daemon=True).start()
    if not alive(parent):  # the parent died before the signal was armed
        os._exit(1)
