"""What the publisher holds for the life of the app: settings, the database, the relay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from shared.bus import BackgroundRelay
from shared.config import Settings
from shared.db import Database


@dataclass
class PublisherState:
    settings: Settings
    db: Database
    relay: BackgroundRelay
    celery: Any


def state() -> PublisherState:
    found: PublisherState = current_app.extensions["pressroom"]
    return found
