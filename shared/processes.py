"""Arrangements a long-running process makes for itself: ending with its parent and giving
its session's CPU share a nice value (Linux only; elsewhere both do nothing), and keeping
what it loaded at start-up out of the garbage collector's way."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

PR_SET_PDEATHSIG = 1  # prctl(2)
AUTOGROUP = Path("/proc/self/autogroup")


def end_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when the thread that started it ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def rank_session(niceness: int) -> None:
    """With the kernel's autogroups a nice value only ranks processes within their session,
    and sessions share the CPU as wholes: rank this process's session at ``niceness`` too."""
    with contextlib.suppress(OSError):
        AUTOGROUP.write_text(f"{niceness}\n")


def freeze_startup_objects() -> None:
    """Exempt every object alive now (modules, the app, its schemas and compiled statements)
    from the cyclic garbage collector's scans.

    A full collection walks every tracked object. In a served process most of them were
    made at start-up and live until exit, so each full collection stopped every thread for
    tens of milliseconds to find nothing, and every request in flight or queued waited for
    it. Called before a pool forks, it also spares the children's copies of those pages
    from the collector's writes.
    """
    gc.freeze()
