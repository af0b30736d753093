"""The archiver's Celery app: ``pressroom worker archiver`` runs it on queue ``archiver``,
with the related-reads process beside its pool (:mod:`services.archiver.runner`)."""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps

from services.archiver import tasks
from services.archiver.runner import Supervisor
from shared.bus import ARCHIVER
from shared.celery import create_celery
from shared.config import Settings
from shared.runtime import Runtime


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = create_celery(settings, ARCHIVER)
    app.conf.task_default_queue = ARCHIVER
    tasks.register(app, Runtime(settings))
    app.steps["worker"].add(_related_reads_step(settings))
    return app


def _related_reads_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    class RelatedReads(bootsteps.StartStopStep):
        """Starts the related-reads process with the worker and stops it with the worker."""

        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **options: Any) -> None:
            super().__init__(worker, **options)
            self.supervisor: Supervisor | None = None

        def start(self, worker: Any) -> None:
            self.supervisor = Supervisor(settings)
            self.supervisor.start()

        def stop(self, worker: Any) -> None:
            if self.supervisor is not None:
                self.supervisor.stop()

    return RelatedReads
