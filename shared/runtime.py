"""Per-process resources for workers: built on first use, rebuilt in a forked child."""

from __future__ import annotations

import os

from shared.config import Settings
from shared.db import Database


class Runtime:
    """Settings plus a database opened lazily, so nothing connects at import or before fork."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._db: Database | None = None
        self._pid: int | None = None

    @property
    def db(self) -> Database:
        if self._db is None or self._pid != os.getpid():
            self._db = Database(self.settings.database_url)
            self._pid = os.getpid()
        return self._db
