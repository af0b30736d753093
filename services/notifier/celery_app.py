"""The notifier's Celery app: ``pressroom worker notifier`` runs it on queue ``notifier``."""

from __future__ import annotations

from celery import Celery

from services.notifier import tasks
from shared.bus import NOTIFIER
from shared.celery import create_celery
from shared.config import Settings
from shared.runtime import Runtime


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = create_celery(settings, NOTIFIER)
    app.conf.task_default_queue = NOTIFIER
    tasks.register(app, Runtime(settings))
    return app
