"""The archiver's tasks: thin wrappers that parse, call domain code, and return."""

from __future__ import annotations

import functools
import os

from celery import Celery

from services.archiver import archiving
from services.archiver.handlers import build_handlers
from services.archiver.related import JOB, RelatedReads
from shared import work
from shared.bus import ARCHIVER, consumer_task
from shared.celery import CONSUMER_TASK_OPTIONS
from shared.consumer import Consumer
from shared.runtime import Runtime


def register(app: Celery, runtime: Runtime) -> None:
    @functools.cache
    def related(pid: int) -> RelatedReads:  # one cache per pool process
        return RelatedReads(runtime.db, runtime.settings)

    def run_related(rounds: int | None = None) -> int:
        engine = related(os.getpid())
        return work.run_due_batches(
            runtime.db,
            JOB,
            lambda jobs: engine.recompute_many([job.key for job in jobs]),
            rounds=rounds,
        )

    # After each message's commit, one batch: the next message's events wait behind that
    # much and no more, while beat's related-due runs whatever is left.
    consumer = Consumer(ARCHIVER, runtime, build_handlers(lambda: run_related(rounds=1)))

    @app.task(name=consumer_task(ARCHIVER), **CONSUMER_TASK_OPTIONS)
    def consume(envelopes: list[dict] | dict) -> list[str]:
        return consumer.consume_message(envelopes)

    @app.task(name="archiver.archive_sweep", acks_late=True, ignore_result=True)
    def archive_sweep() -> int:
        # Its events wake the relays as each chunk commits.
        return archiving.sweep(runtime.db, runtime.settings)

    @app.task(name="archiver.related_due", acks_late=True, ignore_result=True)
    def related_due() -> int:
        return run_related()  # retries that came due, leases of killed workers

    @app.task(name="archiver.related_refit", acks_late=True, ignore_result=True)
    def related_refit() -> int:
        # Hourly: a first model for a large back catalogue, a refit as the corpus grows.
        engine = related(os.getpid())
        return engine.rebuild() if engine.needs_refit() else 0
