"""From an event to delivery rows: who gets told, written in the ledger transaction.

Rows only, set-based (one ``INSERT ... SELECT`` per channel however many subscribers): the
sending happens after the commit (:mod:`services.notifier.sending`). Idempotent twice
over: the consumer's ledger skips a redelivered event, and the deliveries' unique key
(event, channel, destination, kind) skips any row already written.

Matching: a subscription with neither sections nor tags wants everything; otherwise a
story matches if its section is one of the sections or it shares a tag.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from shared.consumer import after_commit
from shared.models import Channel, Delivery, DeliveryStatus
from shared.models import DeliveryKind as K

# What a destination's topics make of a story: ``t`` is the subscriptions or endpoints row.
MATCHES = """(
    (json_array_length(t.sections) = 0 AND json_array_length(t.tags) = 0)
    OR (CAST(:section AS text) IS NOT NULL AND t.sections::jsonb ? CAST(:section AS text))
    OR t.tags::jsonb ?| CAST(:tags AS text[])
)"""

EMAIL_STORY = text(f"""
INSERT INTO deliveries (event_id, channel, destination_id, kind, article_id, status,
                        attempts, due_at, created_at)
SELECT :event_id, 'email', t.id, :kind, :article_id, 'pending', 0, now(), now()
FROM subscriptions t
WHERE t.status = 'confirmed' AND {MATCHES}
ON CONFLICT DO NOTHING
""")

# Corrections go to those who were sent the story, whatever their topics are now.
EMAIL_CORRECTION = text("""
INSERT INTO deliveries (event_id, channel, destination_id, kind, article_id, status,
                        attempts, due_at, created_at)
SELECT :event_id, 'email', d.destination_id, 'correction', d.article_id, 'pending', 0, now(),
       now()
FROM deliveries d JOIN subscriptions t ON t.id = d.destination_id
WHERE d.article_id = CAST(:article_id AS varchar) AND d.channel = 'email' AND d.kind = 'story'
  AND d.status = 'sent' AND t.status = 'confirmed'
ON CONFLICT DO NOTHING
""")

WEBHOOK = text(f"""
INSERT INTO deliveries (event_id, channel, destination_id, kind, article_id, status,
                        attempts, due_at, created_at)
SELECT :event_id, 'webhook', t.id, :kind, :article_id, 'pending', 0, now(), now()
FROM webhook_endpoints t
WHERE t.enabled AND t.event_types::jsonb ? CAST(:type AS text) AND {MATCHES}
ON CONFLICT DO NOTHING
""")


def _params(event: dict[str, Any], kind: str) -> dict[str, Any]:
    data = event["data"]
    return {
        "event_id": event["id"],
        "type": event["type"],
        "kind": kind,
        "article_id": data["article_id"],
        "section": data.get("section"),
        "tags": list(data.get("tags") or []),
    }


Wake = Callable[[str], None]  # start senders of a channel: rows are waiting


class FanOut:
    """The notifier's handlers. Each writes rows only; if it wrote any, the channel's
    senders are woken once the ledger transaction commits."""

    def __init__(self, wake: Wake):
        self.wake = wake

    def _write(
        self, session: Session, channel: str, statement: Any, params: dict[str, Any]
    ) -> None:
        result: Any = session.execute(statement, params)
        if result.rowcount:
            after_commit(session, functools.partial(self.wake, channel))

    def on_published(self, session: Session, event: dict[str, Any]) -> None:
        """A new story: an email to each matching confirmed subscriber, the event to each
        matching endpoint. Imported stories are back catalogue, not news: nobody is told."""
        if event["data"].get("origin") == "import":
            return
        params = _params(event, K.STORY)
        self._write(session, Channel.EMAIL, EMAIL_STORY, params)
        self._write(session, Channel.WEBHOOK, WEBHOOK, params)

    def on_updated(self, session: Session, event: dict[str, Any]) -> None:
        """Only a correction tells anyone: one email to each who got the story, the event
        (with its note) to the endpoints that asked for updates."""
        if not event["data"].get("correction"):
            return
        params = _params(event, K.CORRECTION)
        self._write(session, Channel.EMAIL, EMAIL_CORRECTION, params)
        self._write(session, Channel.WEBHOOK, WEBHOOK, params)

    def on_retracted(self, session: Session, event: dict[str, Any]) -> None:
        """Messages about the story not sent yet are cancelled; endpoints get the
        retraction."""
        session.execute(
            update(Delivery)
            .where(
                Delivery.article_id == event["data"]["article_id"],
                Delivery.status == DeliveryStatus.PENDING,
                Delivery.kind.in_([K.STORY, K.CORRECTION]),
            )
            .values(status=DeliveryStatus.CANCELLED, last_error="the story was retracted")
        )
        self._write(session, Channel.WEBHOOK, WEBHOOK, _params(event, K.RETRACTION))
