"""The notifier's tasks: thin wrappers around the consumer base."""

from __future__ import annotations

from celery import Celery

from services.notifier.handlers import build_handlers
from shared.bus import NOTIFIER, consumer_task
from shared.celery import CONSUMER_TASK_OPTIONS
from shared.consumer import Consumer
from shared.runtime import Runtime


def register(app: Celery, runtime: Runtime) -> None:
    consumer = Consumer(NOTIFIER, runtime, build_handlers(runtime))

    @app.task(name=consumer_task(NOTIFIER), **CONSUMER_TASK_OPTIONS)
    def consume(envelopes: list[dict] | dict) -> list[str]:
        return consumer.consume_message(envelopes)
