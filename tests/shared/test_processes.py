"""What a served process keeps out of the garbage collector's way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a child: freezing is for the life of the process, and pytest's is shared.
CHILD = """
import gc, weakref
from shared.processes import freeze_startup_objects

loaded_at_start = [[n] for n in range(50_000)]  # lists: always tracked
freeze_startup_objects()
print(gc.get_freeze_count())

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after start-up: only the collector frees it
freed = weakref.ref(a)
del a, b
gc.collect()
print(freed() is None)
"""


def test_what_was_loaded_at_start_is_frozen_and_later_garbage_still_collected():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True
    )
    frozen, freed = done.stdout.split()
    assert int(frozen) >= 50_000  # full collections no longer walk them
    assert freed == "True"
