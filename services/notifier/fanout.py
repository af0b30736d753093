"""From an event to delivery rows: who gets told, written in the ledger transaction.

Rows only, set-based (one ``INSERT ... SELECT`` per channel, however many subscribers and
however many events of a kind the message carried): the sending happens after the commit
(:mod:`services.notifier.sending`). Idempotent twice over: the consumer's ledger skips a
redelivered event, and the deliveries' unique key (event, channel, destination, kind) skips
any row already written.

Matching: a subscription with neither sections nor tags wants everything; otherwise a
story matches if its section is one of the sections or it shares a tag.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from shared.db import after_commit
from shared.models import Channel, Delivery, DeliveryStatus
from shared.models import DeliveryKind as K

# The message's events of one kind, as rows ``e``: one statement fans out all of them.
EVENTS = """json_to_recordset(CAST(:events AS json)) AS e(
    event_id text, type text, kind text, article_id text, section text, tags text[]
)"""

# What a destination's topics make of a story: ``t`` is the subscriptions or endpoints row.
MATCHES = """(
    (json_array_length(t.sections) = 0 AND json_array_length(t.tags) = 0)
    OR (e.section IS NOT NULL AND t.sections::jsonb ? e.section)
    OR t.tags::jsonb ?| e.tags
)"""

EMAIL_STORY = text(f"""
INSERT INTO deliveries (event_id, channel, destination_id, kind, article_id, status,
                        attempts, due_at, created_at)
SELECT e.event_id, 'email', t.id, e.kind, e.article_id, 'pending', 0, now(), now()
FROM {EVENTS} JOIN subscriptions t ON t.status = 'confirmed' AND {MATCHES}
ON CONFLICT DO NOTHING
""")

# Corrections go to those who were sent the story, whatever their topics are now.
EMAIL_CORRECTION = text(f"""
INSERT INTO deliveries (event_id, channel, destination_id, kind, article_id, status,
                        attempts, due_at, created_at)
SELECT e.event_id, 'email', d.destination_id, 'correction', d.article_id, 'pending', 0, now(),
       now()
FROM {EVENTS}
JOIN deliveries d ON d.article_id = e.article_id AND d.channel = 'email' AND d.kind = 'story'
                     AND d.status = 'sent'
JOIN subscriptions t ON t.id = d.destination_id AND t.status = 'confirmed'
ON CONFLICT DO NOTHING
""")

WEBHOOK = text(f"""
INSERT INTO deliveries (event_id, channel, destination_id, kind, article_id, status,
                        attempts, due_at, created_at)
SELECT e.event_id, 'webhook', t.id, e.kind, e.article_id, 'pending', 0, now(), now()
FROM {EVENTS}
JOIN webhook_endpoints t ON t.enabled AND t.event_types::jsonb ? e.type AND {MATCHES}
ON CONFLICT DO NOTHING
""")


def _rows(events: list[dict[str, Any]], kind: str) -> dict[str, str]:
    return {
        "events": json.dumps(
            [
                {
                    "event_id": event["id"],
                    "type": event["type"],
                    "kind": kind,
                    "article_id": event["data"]["article_id"],
                    "section": event["data"].get("section"),
                    "tags": list(event["data"].get("tags") or []),
                }
                for event in events
            ]
        )
    }


Wake = Callable[[str], None]  # start senders of a channel: rows are waiting


class FanOut:
    """The notifier's handlers, each given a run of events of its type. Each writes rows
    only, one statement per channel for the whole run; if it wrote any, the channel's
    senders are woken once the ledger transaction commits."""

    def __init__(self, wake: Wake):
        self.wake = wake

    def _write(
        self,
        session: Session,
        channel: str,
        statement: Any,
        events: list[dict[str, Any]],
        kind: str,
    ) -> None:
        if not events:
            return
        result: Any = session.execute(statement, _rows(events, kind))
        if result.rowcount:
            after_commit(session, functools.partial(self.wake, channel), key=(self.wake, channel))

    def on_published(self, session: Session, events: list[dict[str, Any]]) -> None:
        """New stories: an email to each matching confirmed subscriber, the event to each
        matching endpoint. Imported stories are back catalogue, not news: nobody is told."""
        news = [e for e in events if e["data"].get("origin") != "import"]
        self._write(session, Channel.EMAIL, EMAIL_STORY, news, K.STORY)
        self._write(session, Channel.WEBHOOK, WEBHOOK, news, K.STORY)

    def on_updated(self, session: Session, events: list[dict[str, Any]]) -> None:
        """Only a correction tells anyone: one email to each who got the story, the event
        (with its note) to the endpoints that asked for updates."""
        corrections = [e for e in events if e["data"].get("correction")]
        self._write(session, Channel.EMAIL, EMAIL_CORRECTION, corrections, K.CORRECTION)
        self._write(session, Channel.WEBHOOK, WEBHOOK, corrections, K.CORRECTION)

    def on_retracted(self, session: Session, events: list[dict[str, Any]]) -> None:
        """Messages about the stories not sent yet are cancelled; endpoints get the
        retractions."""
        session.execute(
            update(Delivery)
            .where(
                Delivery.article_id.in_([e["data"]["article_id"] for e in events]),
                Delivery.status == DeliveryStatus.PENDING,
                Delivery.kind.in_([K.STORY, K.CORRECTION]),
            )
            .values(status=DeliveryStatus.CANCELLED, last_error="the story was retracted")
        )
        self._write(session, Channel.WEBHOOK, WEBHOOK, events, K.RETRACTION)
