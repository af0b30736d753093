"""The archiver's tasks: thin wrappers that parse, call domain code, and return.

It also hosts the periodic jobs beat sends to its queue (outbox sweep, due publications).
"""

from __future__ import annotations

from celery import Celery

from services.archiver import archiving
from services.archiver.handlers import HANDLERS
from shared import lifecycle
from shared.bus import ARCHIVER, SWEEP_SETTLED, CelerySender, Relay, consumer_task
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
        archived = archiving.sweep(runtime.db, runtime.settings)
        if archived:
            relay().relay()
        return archived

    @app.task(name="pressroom.outbox_sweep", acks_late=True, ignore_result=True)
    def outbox_sweep() -> int:
        return relay().relay(settled=SWEEP_SETTLED)

    @app.task(name="pressroom.publish_due", acks_late=True, ignore_result=True)
    def publish_due() -> int:
        with runtime.db.transaction() as session:
            published = lifecycle.publish_due(session)
        if published:
            relay().relay(published)
        return len(published)
