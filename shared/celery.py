"""The Celery app factory every service uses, and the one place its delivery settings live."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from shared.bus import NOTIFIER_SEND_TASK
from shared.config import Settings
from shared.consumer import RETRYABLE

# A message taken but not acknowledged comes back after this long. Every task's hard time
# limit stays well under it, so a running task is never handed to a second worker.
VISIBILITY_TIMEOUT_S = 3600
TASK_TIME_LIMIT_S = 600
BROKER_SOCKET_TIMEOUT_S = 5


def broker_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages (one: no priority steps)."""
    return [queue]


# How every event consumer task is declared: acknowledged after it ran, and a transient
# failure (the database restarting, failing over) retried 1, 2, 4, then every 5 seconds for
# as long as it lasts. Once relayed, the message is the only copy of its events in flight:
# a task that gave up would be acknowledged and its events lost, and the dead letters live
# in the very database that is away. Countdowns stay short (DESIGN: an unacked ETA task on
# Redis comes back after the visibility timeout). Permanent failures never get here: the
# consumer dead-letters them (shared.consumer).
CONSUMER_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "ignore_result": True,
    "autoretry_for": RETRYABLE,
    "retry_backoff": 1,
    "retry_backoff_max": 5,
    "max_retries": None,
}


def create_celery(settings: Settings, name: str) -> Celery:
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_S,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # A broker that takes the connection and then hangs fails a send after this
            # long instead of holding the relay forever (above the 1 s BRPOP poll).
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
        task_send_sent_event=False,
        timezone="UTC",
        enable_utc=True,
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The workers' periodic jobs (the relay runs its own: outbox, due publications). Each
    expires before the next one is due, so a backlog never piles them up."""

    def every(seconds: int, task: str, queue: str) -> dict[str, Any]:
        return {
            "task": task,
            "schedule": timedelta(seconds=seconds),
            "options": {"queue": queue, "expires": seconds},
        }

    send = NOTIFIER_SEND_TASK
    return {
        "notifier-send": every(5, send, "notifier"),
        "archive-sweep": every(
            settings.archive_sweep_seconds, "archiver.archive_sweep", "archiver"
        ),
    }
