"""A worker's main process killed while it holds messages: every event is still consumed,
with no human running ``events replay`` (on Redis the held messages would otherwise come
back only after the visibility timeout, an hour)."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest
import redis

from shared import processes
from tests.e2e.conftest import ledger, wait_for
from tests.publisher.helpers import article

pytestmark = pytest.mark.e2e


def children_of_thread(pid: int, thread: int) -> list[int]:
    with open(f"/proc/{pid}/task/{thread}/children") as fh:
        return [int(p) for p in fh.read().split()]


def pool_children(pid: int) -> list[int]:  # forked by the worker's main thread
    return children_of_thread(pid, pid)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline") as fh:
        return fh.read()


def test_messages_held_by_a_killed_worker_are_consumed(
    client, editor, database, settings, workers, redis_url
):
    quick = replace(settings, redeliver_after_seconds=3)
    workers.start(quick, "relay", "archiver")
    archiver = workers.procs[1]
    assert wait_for(lambda: pool_children(archiver.pid), 30), workers.logs()
    for child in pool_children(archiver.pid):
        os.kill(child, signal.SIGSTOP)  # the pool stalls; the main process keeps taking
    ids = [
        client.post(
            "/api/v1/articles", json=article(title=f"S{n}", status="published"), headers=editor
        ).json["id"]
        for n in range(10)
    ]
    broker = redis.Redis.from_url(redis_url)
    assert wait_for(lambda: broker.hlen("unacked") > 0, 30), workers.logs()
    os.killpg(archiver.pid, signal.SIGKILL)
    archiver.wait(10)
    workers.start(quick, "archiver")
    consumed = lambda: {e for e, c in ledger(database) if c == "archiver"}  # noqa: E731
    assert wait_for(lambda: len(consumed()) == len(ids), 90, 0.5), workers.logs()


def test_the_related_reads_process_ends_with_its_killed_worker(settings, workers):
    # It leads a session of its own (its CPU priority), so the worker's process group,
    # which the stack kills, no longer includes it: the kernel ends it with the worker.
    workers.start(settings, "archiver")
    archiver = workers.procs[0]

    def related() -> list[int]:  # started by a thread of the worker's, not its main one
        threads = [int(t) for t in os.listdir(f"/proc/{archiver.pid}/task")]
        children = [c for t in threads for c in children_of_thread(archiver.pid, t)]
        return [pid for pid in children if "multiprocessing.spawn" in cmdline(pid)]

    assert wait_for(related, 60), workers.logs()
    [process] = related()
    if processes.AUTOGROUP.exists():  # then it leaves the worker's session, and group
        assert wait_for(lambda: os.getsid(process) != os.getsid(archiver.pid), 30, 0.05)
    os.killpg(archiver.pid, signal.SIGKILL)
    archiver.wait(10)
    # At once, busy or not: left to notice by itself, an idle runner takes up to 5 s.
    assert wait_for(lambda: ended(process), 1.0, 0.02)


def ended(pid: int) -> bool:
    """Gone, or dead and waiting to be reaped by whoever inherited it (here, PID 1)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True
