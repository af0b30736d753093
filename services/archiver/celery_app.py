"""The archiver's Celery app: ``pressroom worker archiver`` runs it on queue ``archiver``."""

from __future__ import annotations

from celery import Celery

from services.archiver import tasks
from shared.bus import ARCHIVER
from shared.celery import create_celery
from shared.config import Settings
from shared.runtime import Runtime


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = create_celery(settings, ARCHIVER)
    app.conf.task_default_queue = ARCHIVER
    tasks.register(app, Runtime(settings))
    return app
