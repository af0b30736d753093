"""Two Linux arrangements a process makes for itself: ending with its parent, and giving
its session's CPU share a nice value. Elsewhere both do nothing."""

from __future__ import annotations

import contextlib
import ctypes
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
