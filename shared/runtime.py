"""What a process of the stack works with, built once from settings and opened lazily:
nothing connects at import or before a fork, and a forked child builds its own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import redis

from shared.config import Settings
from shared.db import Database, make_engine
from shared.embedded_postgres import EmbeddedPostgres, running
from shared.migrate import upgrade


class Runtime:
    """Settings plus the database, the broker's Redis and a Celery app, each made on first
    use in this process."""

    def __init__(self, settings: Settings, name: str = "pressroom"):
        self.settings = settings
        self.name = name
        self._db: Database | None = None
        self._redis: redis.Redis | None = None
        self._celery: Any = None
        self._pid: int | None = None

    def _this_process(self) -> None:
        if self._pid != os.getpid():  # a forked child builds its own
            self._db, self._redis, self._celery, self._pid = None, None, None, os.getpid()

    @property
    def db(self) -> Database:
        self._this_process()
        if self._db is None:
            self._db = Database(self.settings.db_url)
        return self._db

    @property
    def redis(self) -> redis.Redis:
        """The broker's server, for what processes share beyond messages (queue depths)."""
        self._this_process()
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.settings.redis_client_url, socket_connect_timeout=2, socket_timeout=5
            )
        return self._redis

    @property
    def celery(self) -> Any:
        """A Celery app on the configured broker, for sending (workers build their own)."""
        self._this_process()
        if self._celery is None:
            from shared.celery import create_celery

            self._celery = create_celery(self.settings, self.name)
        return self._celery

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
        if self._redis is not None:
            self._redis.close()
        self._db, self._redis, self._celery = None, None, None


@contextlib.contextmanager
def database_server(settings: Settings) -> Iterator[None]:
    """The database for the length of the block. With DATABASE_URL, the server it names;
    else the embedded PostgreSQL: the stack's when it runs, or one started for the block
    (its schema brought up to date) and stopped after."""
    if not settings.embedded_database:
        yield
        return
    server = EmbeddedPostgres(settings.postgres_dir)
    server.initialise()
    if server.is_running():
        yield
        return
    with running(server):
        engine = make_engine(settings.db_url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield
