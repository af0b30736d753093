"""Starting a consumer worker or beat as ``pressroom worker ...`` / ``pressroom beat`` do, and
Celery's own tools as ``pressroom celery ...`` / ``pressroom flower`` do."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from celery import Celery, signals
from celery.app import trace
from kombu import Queue

from shared.bus import CONSUMERS
from shared.celery import beat_schedule, create_celery
from shared.config import Settings
from shared.logs import configure_logging
from shared.processes import freeze_startup_objects


def run_worker(settings: Settings, service: str, concurrency: int | None = None) -> None:
    configure_logging(settings.log_level, settings.secrets())
    quiet_task_lines()
    if service == "archiver":
        from services.archiver.celery_app import create_app
    else:
        from services.notifier.celery_app import create_app
    app = create_app(settings)
    for started in (signals.worker_ready, signals.worker_process_init):  # main, pool child
        started.connect(lambda **_: freeze_startup_objects(), weak=False)
    app.worker_main(
        [
            "worker",
            "--queues", service,
            "--hostname", f"{service}-{os.getpid()}@%h",
            "--concurrency", str(concurrency or settings.worker_concurrency),
            "--loglevel", settings.log_level,
            "--without-mingle",
            "--without-gossip",
        ]
    )  # fmt: skip


def quiet_task_lines() -> None:
    """Drop Celery's lines for each task received and each task that succeeded: the
    consumer's own line already says what became of each event, and at fifty messages a
    second the two took a share of the worker's CPU and two thirds of the log. Retries and
    failures are still logged."""
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    logging.getLogger("celery.app.trace").addFilter(lambda record: record.msg != trace.LOG_SUCCESS)


def run_beat(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.secrets())
    app = create_celery(settings, "beat")
    app.conf.beat_schedule = beat_schedule(settings)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    app.Beat(
        schedule=str(settings.var_dir / "celerybeat-schedule"),
        loglevel=settings.log_level,
    ).run()


def tools_app(settings: Settings) -> Celery:
    """An app for Celery's tools: the configured broker and both consumer queues, so that
    ``purge``, ``call`` and Flower's broker page know the queues without being told."""
    app = create_celery(settings, "pressroom")
    app.conf.task_queues = [Queue(name) for name in CONSUMERS]
    app.conf.task_default_queue = CONSUMERS[0]  # else Flower lists Celery's unused "celery"
    app.conf.task_routes = {f"{name}.*": {"queue": name} for name in CONSUMERS}
    return app


def run_celery(settings: Settings, args: Sequence[str]) -> int:
    """Celery's command line with ``args``; returns its exit status. ``-A`` given in
    ``args`` still names another app."""
    return tools_app(settings).start(list(args)) or 0
