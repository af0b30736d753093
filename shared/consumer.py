"""The base both workers consume with: validate, skip what the ledger has, dispatch, record.

Idempotency: the ledger row (event id, consumer) is inserted in the same transaction as the
handler's effect, and its primary key makes a second insert fail, so an event redelivered by
the broker (worker killed before ack, relay retry) has its effect at most once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import PermanentError
from shared.events import parse_envelope
from shared.models import ConsumedEvent, DeadLetter

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], None]

CONSUMED = "consumed"
DUPLICATE = "duplicate"
DEAD = "dead-lettered"


class Consumer:
    """One consumer service: its name (also its queue) and a handler per event type."""

    def __init__(self, name: str, db: Database, handlers: dict[str, Handler]):
        self.name = name
        self.db = db
        self.handlers = handlers

    def consume(self, raw: object) -> str:
        """Handle one delivered envelope; returns what became of it."""
        try:
            event = parse_envelope(raw)
        except ValidationError as exc:
            return self.dead_letter(raw, f"envelope does not parse: {exc.messages}")
        try:
            with self.db.transaction() as session:
                if self._seen(session, event["id"]):
                    log.info("%s skipped duplicate %s %s", self.name, event["type"], event["id"])
                    return DUPLICATE
                handler = self.handlers.get(event["type"])
                if handler is not None:
                    handler(session, event)
                session.add(
                    ConsumedEvent(
                        event_id=event["id"],
                        consumer=self.name,
                        event_type=event["type"],
                        article_id=event["data"]["article_id"],
                    )
                )
        except IntegrityError:
            # Another delivery of the same event committed first: its effect stands.
            return DUPLICATE
        except PermanentError as exc:
            return self.dead_letter(raw, str(exc), event["id"])
        log.info(
            "%s consumed %s %s for article %s",
            self.name,
            event["type"],
            event["id"],
            event["data"]["article_id"],
        )
        return CONSUMED

    def _seen(self, session: Session, event_id: str) -> bool:
        found = session.scalar(
            select(ConsumedEvent.event_id).where(
                ConsumedEvent.event_id == event_id, ConsumedEvent.consumer == self.name
            )
        )
        return found is not None

    def dead_letter(self, raw: object, reason: str, event_id: str | None = None) -> str:
        if event_id is None and isinstance(raw, dict) and isinstance(raw.get("id"), str):
            event_id = raw["id"][:36]
        with self.db.transaction() as session:
            session.add(
                DeadLetter(
                    consumer=self.name,
                    event_id=event_id,
                    payload=json.dumps(raw, default=str),
                    reason=reason,
                )
            )
        log.warning("%s dead-lettered a message: %s", self.name, reason)
        return DEAD
