"""Small helpers the publisher tests share."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import func, select

from services.publisher import create_app
from shared.bus import CelerySender
from shared.config import Settings
from shared.db import Base, Database
from shared.relay import Relay


def article(**overrides: Any) -> dict[str, Any]:
    body = {
        "title": "Putin takes Kim on a drive",
        "body": "<p>First paragraph.</p><p>Second paragraph.</p>",
        "section": "world",
        "tags": ["russia", "north-korea"],
        "authors": ["World desk"],
    }
    body.update(overrides)
    return body


def row_counts(db: Database) -> dict[str, int]:
    """Rows in every table: equal before and after means a request changed nothing."""
    with db.session() as session:
        return {
            t.name: session.scalar(select(func.count()).select_from(t)) or 0
            for t in Base.metadata.sorted_tables
        }


def relayed(client: Any) -> None:
    """Relay what the app committed to the broker, as ``pressroom relay`` would on waking."""
    state = client.application.extensions["pressroom"]
    Relay(state.db, CelerySender(state.celery)).relay()


def document_only_app() -> Flask:
    """An app built only to serve its routes and OpenAPI document: it touches no database or
    broker, so it can be made at import time or once per module."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "SECRET_KEY": "only-for-the-openapi-document",
            "PUBLIC_BASE_URL": "http://pressroom.test",
        }
    )
    return create_app(settings, db=Database(settings.db_url))
