"""The base both workers consume with: validate, skip what the ledger has, dispatch, record.

Idempotency: the ledger row (event id, consumer) is inserted in the same transaction as the
handler's effect, and its primary key makes a second insert fail, so an event redelivered by
the broker (worker killed before ack, relay retry) has its effect at most once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import PermanentError, TransientError
from shared.events import envelopes_in, parse_envelope
from shared.models import ConsumedEvent, DeadLetter

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], None]

# Errors worth trying again later: the consumer tasks retry the whole message on these.
RETRYABLE = (TransientError, OperationalError)

CONSUMED = "consumed"
DUPLICATE = "duplicate"
DEAD = "dead-lettered"


class Consumer:
    """One consumer service: its name (also its queue) and a handler per event type."""

    def __init__(self, name: str, db: Database, handlers: dict[str, Handler]):
        self.name = name
        self.db = db
        self.handlers = handlers

    def consume_message(self, message: object) -> list[str]:
        """Handle what one broker message carried: a list of envelopes, oldest first (or a
        lone envelope, as messages sent before batching held); returns what became of each."""
        return self.consume_many(envelopes_in(message))

    def consume_many(self, raws: Sequence[object]) -> list[str]:
        """Handle envelopes in order, in one transaction with their ledger rows.

        If one of them fails (a permanent or unexpected error, a concurrent delivery that
        got to the ledger first), the batch's work is rolled back and each envelope is
        handled alone, so the others are not held up by it. Alone, an event whose handler
        fails for good goes to the dead letters; a transient error is raised, and the broker
        redelivers the message later (the ledger skips the events already done).
        """
        outcomes: list[str | None] = [None] * len(raws)
        parsed: list[tuple[int, dict[str, Any]]] = []
        for index, raw in enumerate(raws):
            try:
                parsed.append((index, parse_envelope(raw)))
            except ValidationError as exc:
                outcomes[index] = self.dead_letter(raw, f"envelope does not parse: {exc.messages}")
        if len(parsed) > 1:
            try:
                with self.db.transaction() as session:
                    seen = self._seen(session, [event["id"] for _, event in parsed])
                    for index, event in parsed:
                        outcomes[index] = self._handle(session, event, seen)
                    self._record(session, [e for i, e in parsed if outcomes[i] == CONSUMED])
            except Exception:  # rolled back: each event alone shows which one it was
                outcomes = [o if o == DEAD else None for o in outcomes]
            else:
                for index, event in parsed:
                    self._log(event, outcomes[index])
        for index, event in parsed:
            if outcomes[index] is None:
                outcomes[index] = self._consume_one(raws[index], event)
        return [o for o in outcomes if o is not None]

    def consume(self, raw: object) -> str:
        """Handle one delivered envelope; returns what became of it."""
        [outcome] = self.consume_many([raw])
        return outcome

    def _consume_one(self, raw: object, event: dict[str, Any]) -> str:
        try:
            with self.db.transaction() as session:
                outcome = self._handle(session, event, self._seen(session, [event["id"]]))
                self._record(session, [event] if outcome == CONSUMED else [])
        except IntegrityError:
            # Another delivery of the same event committed first: its effect stands.
            return DUPLICATE
        except RETRYABLE:
            raise
        except PermanentError as exc:
            return self.dead_letter(raw, str(exc), event["id"])
        except Exception as exc:  # a bug in a handler: keep the event for a replay after the fix
            log.exception("%s failed on %s %s", self.name, event["type"], event["id"])
            return self.dead_letter(raw, f"{type(exc).__name__}: {exc}", event["id"])
        self._log(event, outcome)
        return outcome

    def _handle(self, session: Session, event: dict[str, Any], seen: set[str]) -> str:
        """Run the event's handler, unless it is a duplicate; the caller records it."""
        if event["id"] in seen:
            return DUPLICATE
        seen.add(event["id"])  # the same event twice in one batch
        handler = self.handlers.get(event["type"])
        if handler is not None:
            handler(session, event)
        return CONSUMED

    def _record(self, session: Session, handled: list[dict[str, Any]]) -> None:
        """The ledger rows of the events handled, in one statement of the same transaction
        (a unit-of-work object per row cost a quarter of a consumer's time)."""
        if handled:
            session.execute(
                insert(ConsumedEvent),
                [
                    {
                        "event_id": event["id"],
                        "consumer": self.name,
                        "event_type": event["type"],
                        "article_id": event["data"]["article_id"],
                    }
                    for event in handled
                ],
            )

    def _log(self, event: dict[str, Any], outcome: str | None) -> None:
        if outcome == DUPLICATE:
            log.info("%s skipped duplicate %s %s", self.name, event["type"], event["id"])
        else:
            article = event["data"]["article_id"]
            log.info(
                "%s consumed %s %s for article %s", self.name, event["type"], event["id"], article
            )

    def _seen(self, session: Session, event_ids: list[str]) -> set[str]:
        found = session.scalars(
            select(ConsumedEvent.event_id).where(
                ConsumedEvent.consumer == self.name, ConsumedEvent.event_id.in_(event_ids)
            )
        )
        return set(found)

    def dead_letter(self, raw: object, reason: str, event_id: str | None = None) -> str:
        """Keep what could not be handled, once: a message the broker redelivers (its other
        events hit a transient error) finds the letter already there."""
        if event_id is None and isinstance(raw, dict) and isinstance(raw.get("id"), str):
            event_id = raw["id"][:36]
        payload = json.dumps(raw, default=str)
        same = DeadLetter.event_id == event_id if event_id else DeadLetter.payload == payload
        with self.db.transaction() as session:
            kept = session.scalar(
                select(DeadLetter.id).where(
                    DeadLetter.consumer == self.name, DeadLetter.replayed_at.is_(None), same
                )
            )
            if kept is None:
                session.add(
                    DeadLetter(
                        consumer=self.name, event_id=event_id, payload=payload, reason=reason
                    )
                )
        log.warning("%s dead-lettered a message: %s", self.name, reason)
        return DEAD
