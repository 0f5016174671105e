"""The node's threads named in the operating system too, so that ``top -H``, ``/proc/PID/task/*/comm`` and
the benches tell a hop-serving thread from a background one (Python names its threads for itself only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15  # linux/prctl.h
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def name_this_thread() -> None:
    """Give the calling thread its Python name in the OS as well (Linux keeps the first 15 bytes)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
