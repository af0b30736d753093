"""The archiver's tasks: thin wrappers that parse, call domain code, and return."""

from __future__ import annotations

from celery import Celery

from services.archiver import archiving
from services.archiver.handlers import build_handlers
from shared.bus import ARCHIVER, consumer_task
from shared.celery import CONSUMER_TASK_OPTIONS
from shared.consumer import Consumer
from shared.runtime import Runtime


def register(app: Celery, runtime: Runtime) -> None:
    # The handlers write due work; the related-reads process runs it (runner.py).
    consumer = Consumer(ARCHIVER, runtime, build_handlers())

    @app.task(name=consumer_task(ARCHIVER), **CONSUMER_TASK_OPTIONS)
    def consume(envelopes: list[dict] | dict) -> list[str]:
        return consumer.consume_message(envelopes)

    @app.task(name="archiver.archive_sweep", acks_late=True, ignore_result=True)
    def archive_sweep() -> int:
        # Its events wake the relays as each chunk commits.
        return archiving.sweep(runtime.db, runtime.settings)
