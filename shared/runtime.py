"""Per-process resources for workers: built on first use, rebuilt in a forked child."""

from __future__ import annotations

import os

import redis

from shared.config import Settings
from shared.db import Database


class Runtime:
    """Settings plus a database and a Redis client opened lazily, so nothing connects at
    import or before fork."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._db: Database | None = None
        self._redis: redis.Redis | None = None
        self._pid: int | None = None

    def _this_process(self) -> None:
        if self._pid != os.getpid():  # a forked child builds its own
            self._db, self._redis, self._pid = None, None, os.getpid()

    @property
    def db(self) -> Database:
        self._this_process()
        if self._db is None:
            self._db = Database(self.settings.database_url)
        return self._db

    @property
    def redis(self) -> redis.Redis:
        """The broker's server, for what workers share beyond messages (locks)."""
        self._this_process()
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.settings.redis_client_url, socket_connect_timeout=2, socket_timeout=5
            )
        return self._redis
