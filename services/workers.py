"""Starting a consumer worker or beat as ``pressroom worker ...`` / ``pressroom beat`` do."""

from __future__ import annotations

import os

from shared.celery import beat_schedule, create_celery
from shared.config import Settings
from shared.logs import configure_logging


def run_worker(settings: Settings, service: str, concurrency: int | None = None) -> None:
    configure_logging(settings.log_level, settings.secrets())
    if service == "archiver":
        from services.archiver.celery_app import create_app
    else:
        from services.notifier.celery_app import create_app
    app = create_app(settings)
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


def run_beat(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.secrets())
    app = create_celery(settings, "beat")
    app.conf.beat_schedule = beat_schedule(settings)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    app.Beat(
        schedule=str(settings.var_dir / "celerybeat-schedule"),
        loglevel=settings.log_level,
    ).run()
