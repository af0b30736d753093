"""Where events go: the routing table, the outbox write, and sending to consumer queues."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared import events
from shared.db import utcnow
from shared.models import OutboxEvent
from shared.wakeups import notify_after_commit

log = logging.getLogger(__name__)
T = TypeVar("T")

ARCHIVER = "archiver"
NOTIFIER = "notifier"
CONSUMERS = (ARCHIVER, NOTIFIER)

# event type -> the consumer queues that subscribe to it (DESIGN.md, "Events")
ROUTES: dict[str, tuple[str, ...]] = {
    events.ARTICLE_PUBLISHED: (ARCHIVER, NOTIFIER),
    events.ARTICLE_UPDATED: (ARCHIVER, NOTIFIER),  # the notifier acts on corrections only
    events.ARTICLE_ARCHIVED: (ARCHIVER,),
    events.ARTICLE_UNARCHIVED: (ARCHIVER,),
    events.ARTICLE_RETRACTED: (ARCHIVER, NOTIFIER),
}


# The notifier's sender (args: [channel]). Beat sends it every few seconds; the publisher
# sends it after committing a delivery of its own (a confirmation, a test event) so that
# message goes at once instead of at the next tick.
NOTIFIER_SEND_TASK = "notifier.send"


def consumer_task(queue: str) -> str:
    """The task name each consumer service registers for the events on its queue."""
    return f"{queue}.consume"


# The most events one message carries. A consumer handles a message in one transaction, so
# this also bounds how much work a redelivered message repeats.
MESSAGE_EVENTS = 100

Send = Callable[[str, list[dict[str, Any]]], None]


class Sender(Protocol):
    def open(self) -> AbstractContextManager[Send]:
        """A function that sends a list of envelopes to a queue as one message, valid inside
        the ``with`` block."""
        ...


class CelerySender:
    """Hands envelopes to consumer queues by task name; fails fast if the broker is down.

    A message carries a list of envelopes, oldest first: a Celery task costs its worker about
    a millisecond however small, so one event per task would cap a consumer near 1,000
    events/s. One producer (one broker connection) serves a whole relay batch.
    """

    def __init__(self, celery_app: Any):
        self.celery = celery_app

    @contextmanager
    def open(self) -> Iterator[Send]:
        with self.celery.producer_or_acquire() as producer:

            def send(queue: str, envelopes: list[dict[str, Any]]) -> None:
                self.celery.send_task(
                    consumer_task(queue),
                    args=[envelopes],
                    argsrepr=_describe(envelopes),  # Celery's own repr costs more than a send
                    kwargsrepr="{}",
                    queue=queue,
                    retry=False,
                    ignore_result=True,
                    producer=producer,
                )

            yield send


def _describe(envelopes: list[Any]) -> str:
    first = envelopes[0] if envelopes else None
    if len(envelopes) == 1 and isinstance(first, dict):
        return f"[{first.get('type')} {first.get('id')}]"
    return f"[{len(envelopes)} events]"


def batched(items: Iterable[T], size: int) -> Iterator[tuple[T, ...]]:
    """Tuples of ``size`` items in order, the last one shorter (``itertools.batched`` in 3.12)."""
    it = iter(items)
    while chunk := tuple(itertools.islice(it, size)):
        yield chunk


def send_in_messages(send: Send, queue: str, envelopes: Iterable[Any]) -> int:
    """Send envelopes to a queue, in order, ``MESSAGE_EVENTS`` to a message; returns how many.

    Anything JSON goes: a dead letter replayed may hold what never was an envelope, and the
    consumer dead-letters it again, with its reason."""
    sent = 0
    for chunk in batched(envelopes, MESSAGE_EVENTS):
        send(queue, list(chunk))
        sent += len(chunk)
    return sent


# Core, not the ORM's unit of work: nothing reads an outbox row back in the transaction that
# writes it, and the flush's bookkeeping (on PostgreSQL, RETURNING the new key too) cost more
# than the INSERT.
_WRITE_EVENT = insert(OutboxEvent)


# The relays LISTEN on this channel for outbox rows that committed.
OUTBOX_CHANNEL = "pressroom_outbox"


def emit(session: Session, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Write an event to the outbox, in the caller's transaction; returns its envelope."""
    envelope, row = outbox_row(event_type, data)
    session.connection().execute(_WRITE_EVENT, row)
    wake_relays(session)
    return envelope


def wake_relays(session: Session) -> None:
    """For every writer of outbox rows: the relays are woken once the transaction commits
    (:func:`shared.wakeups.notify_after_commit`), and otherwise find the rows within
    OUTBOX_SWEEP_SECONDS."""
    notify_after_commit(session, OUTBOX_CHANNEL)


def outbox_row(event_type: str, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new event's envelope and its outbox row (for a caller that writes it itself)."""
    now = utcnow()
    envelope = events.make_envelope(event_type, data, time=now)
    row = {
        "event_id": envelope["id"],
        "type": event_type,
        "article_id": data["article_id"],
        "data": envelope["data"],
        "created_at": now,
    }
    return envelope, row
