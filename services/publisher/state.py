"""What the publisher holds for the life of the app: settings, the database, the broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from shared.config import Settings
from shared.db import Database
from shared.tokens import KnownTokens


@dataclass
class PublisherState:
    settings: Settings
    db: Database
    celery: Any
    known_tokens: KnownTokens = field(default_factory=KnownTokens)


def state() -> PublisherState:
    found: PublisherState = current_app.extensions["pressroom"]
    return found
