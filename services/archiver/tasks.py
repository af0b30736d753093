"""The archiver's tasks: thin wrappers that parse, call domain code, and return.

It also hosts the periodic jobs beat sends to its queue (outbox sweep, due publications).
"""

from __future__ import annotations

import contextlib

from celery import Celery
from redis.exceptions import LockError

from services.archiver import archiving
from services.archiver.handlers import HANDLERS
from shared import lifecycle
from shared.bus import (
    ARCHIVER,
    SWEEP_BUDGET_S,
    SWEEP_LOCK,
    SWEEP_LOCK_S,
    SWEEP_SETTLED,
    CelerySender,
    Relay,
    consumer_task,
)
from shared.celery import CONSUMER_TASK_OPTIONS
from shared.consumer import Consumer
from shared.runtime import Runtime


def register(app: Celery, runtime: Runtime) -> None:
    def relay() -> Relay:
        return Relay(runtime.db, CelerySender(app))

    @app.task(name=consumer_task(ARCHIVER), **CONSUMER_TASK_OPTIONS)
    def consume(envelopes: list[dict] | dict) -> list[str]:
        return Consumer(ARCHIVER, runtime.db, HANDLERS).consume_message(envelopes)

    @app.task(name="archiver.archive_sweep", acks_late=True, ignore_result=True)
    def archive_sweep() -> int:
        # Its events go out with beat's next outbox sweep, one relay at a time.
        return archiving.sweep(runtime.db, runtime.settings)

    @app.task(name="pressroom.outbox_sweep", acks_late=True, ignore_result=True)
    def outbox_sweep() -> int:
        # One at a time: under a backlog (an archive sweep's 300,000 events) beat's next
        # sweep started a second relay beside the first, in the pool process the
        # archiver's own consumer tasks were waiting for.
        lock = runtime.redis.lock(SWEEP_LOCK, timeout=SWEEP_LOCK_S)
        if not lock.acquire(blocking=False):
            return 0
        try:
            return relay().relay(settled=SWEEP_SETTLED, budget=SWEEP_BUDGET_S)
        finally:
            with contextlib.suppress(LockError):  # lapsed: the relay outran SWEEP_LOCK_S
                lock.release()

    @app.task(name="pressroom.publish_due", acks_late=True, ignore_result=True)
    def publish_due() -> int:
        with runtime.db.transaction() as session:
            published = lifecycle.publish_due(session)
        if published:
            relay().relay(published)
        return len(published)
