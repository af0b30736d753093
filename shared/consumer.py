"""The base both workers consume with: validate, skip what the ledger has, dispatch, record.

Idempotency: the ledger row (event id, consumer) is inserted in the same transaction as the
handler's effect, before it, and only if absent: an event redelivered by the broker (worker
killed before ack, relay retry) finds its row and has its effect at most once.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared.db import Database, insert_unless_present
from shared.errors import PermanentError, TransientError
from shared.events import envelopes_in, parse_envelope
from shared.models import ConsumedEvent, DeadLetter
from shared.runtime import Runtime

log = logging.getLogger(__name__)

# A handler gets a run of consecutive events of its type, in order: a message of a hundred
# stories is one call, so a handler can write for all of them in one statement.
Handler = Callable[[Session, list[dict[str, Any]]], None]

# Errors worth trying again later: the consumer tasks retry the whole message on these.
RETRYABLE = (TransientError, OperationalError)

CONSUMED = "consumed"
DUPLICATE = "duplicate"
DEAD = "dead-lettered"


class Consumer:
    """One consumer service: its name (also its queue) and a handler per event type.

    A handler runs inside the ledger transaction and writes rows only; slow work (network
    calls, heavy computing) it leaves as due work (:mod:`shared.work`) for after the commit.
    """

    def __init__(self, name: str, runtime: Runtime | Database, handlers: dict[str, Handler]):
        self.name = name
        self._runtime = runtime
        self.handlers = handlers

    @property
    def db(self) -> Database:
        # From the runtime at each use: a forked pool process opens its own.
        return self._runtime if isinstance(self._runtime, Database) else self._runtime.db

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
                    handled = self._handle(session, [event for _, event in parsed])
                for (index, _), outcome in zip(parsed, handled, strict=True):
                    outcomes[index] = outcome
            except Exception:  # rolled back: each event alone shows which one it was
                outcomes = [o if o == DEAD else None for o in outcomes]
            else:
                self._log([event for _, event in parsed], [outcomes[i] for i, _ in parsed])
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
                [outcome] = self._handle(session, [event])
        except RETRYABLE:
            raise
        except PermanentError as exc:
            return self.dead_letter(raw, str(exc), event["id"])
        except Exception as exc:  # a bug in a handler: keep the event for a replay after the fix
            log.exception("%s failed on %s %s", self.name, event["type"], event["id"])
            return self.dead_letter(raw, f"{type(exc).__name__}: {exc}", event["id"])
        self._log([event], [outcome])
        return outcome

    def _handle(self, session: Session, events: list[dict[str, Any]]) -> list[str]:
        """Claim the events in the ledger, then hand those this claimed to their handlers, each
        run of one type in one call.

        One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` writes the ledger rows: an
        event already there is a duplicate, and one a concurrent delivery is writing right
        now is waited for (its uniqueness check holds this insert) and then skipped. The
        handlers' effects commit with the rows or not at all.
        """
        claimed = self._claim(session, events)
        outcomes, todo = [], []
        for event in events:
            if event["id"] in claimed:
                claimed.discard(event["id"])  # the same event twice in one message: once
                todo.append(event)
                outcomes.append(CONSUMED)
            else:
                outcomes.append(DUPLICATE)
        for event_type, run in itertools.groupby(todo, key=lambda event: event["type"]):
            handler = self.handlers.get(event_type)
            if handler is not None:
                handler(session, list(run))
        return outcomes

    def _claim(self, session: Session, events: list[dict[str, Any]]) -> set[str]:
        rows = [
            {
                "event_id": event["id"],
                "consumer": self.name,
                "event_type": event["type"],
                "article_id": event["data"]["article_id"],
            }
            for event in events
        ]
        claim = insert_unless_present(session, ConsumedEvent, returning=[ConsumedEvent.event_id])
        return set(session.scalars(claim, rows))

    def _log(self, events: list[dict[str, Any]], outcomes: list[str | None]) -> None:
        """One line at INFO for what a transaction handled, a line per event at DEBUG: a
        sweep that archives 300,000 stories is not 300,000 lines at INFO."""
        handled = list(zip(events, outcomes, strict=True))
        if len(handled) == 1 or log.isEnabledFor(logging.DEBUG):
            level = logging.INFO if len(handled) == 1 else logging.DEBUG
            for event, outcome in handled:
                article = event["data"]["article_id"]
                what = f"{outcome} {event['type']} {event['id']} for article {article}"
                log.log(level, "%s %s", self.name, what)
        if len(handled) > 1:
            counts = Counter(f"{outcome} {event['type']}" for event, outcome in handled)
            log.info(
                "%s handled %d events: %s (%s .. %s)",
                self.name,
                len(handled),
                ", ".join(f"{n} {what}" for what, n in sorted(counts.items())),
                events[0]["id"],
                events[-1]["id"],
            )

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
                    DeadLetter.consumer == self.name, DeadLetter.open(), same
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
