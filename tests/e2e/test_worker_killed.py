"""A worker's main process killed while it holds messages: every event is still consumed,
with no human running ``events replay`` (on Redis the held messages would otherwise come
back only after the visibility timeout, an hour)."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest
import redis

from tests.e2e.conftest import ledger, wait_for
from tests.publisher.helpers import article

pytestmark = pytest.mark.e2e


def pool_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


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
