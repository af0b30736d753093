"""What ops look at: queue depth and age, the outbox backlog, dead letters, live workers.

One snapshot feeds ``GET /ops/queues``, ``GET /metrics`` and ``pressroom queues``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import exists, func, select, text, update
from sqlalchemy.orm import Session

from shared.bus import CONSUMERS, ROUTES, CelerySender, Sender, send_in_messages
from shared.celery import broker_lists
from shared.db import Database, utcnow
from shared.events import envelope_of, envelopes_in
from shared.models import Channel, ConsumedEvent, DeadLetter, Delivery, DeliveryStatus, OutboxEvent

# kombu's Redis transport keeps taken-but-unacknowledged messages under these keys.
log = logging.getLogger(__name__)
UNACKED_INDEX = "unacked_index"

# What ops see of the notifier's deliveries, per channel. "retrying" are the pending ones
# tried at least once (for the moment it is in flight, a first try counts as one too);
# "pending" are the rest.
DELIVERY_STATES = ("pending", "retrying", "sent", "failed", "dead", "cancelled")
_DELIVERY_COUNTS = text("""
SELECT channel,
       CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END,
       count(*)
FROM deliveries
GROUP BY 1, 2
""")


@dataclass
class QueueState:
    name: str
    depth: int | None  # None: the broker did not answer, so nobody knows
    oldest_age_s: float | None


@dataclass
class Snapshot:
    queues: list[QueueState]
    in_flight: int | None  # None when the broker did not answer
    outbox_pending: int
    outbox_lag_s: float | None
    dead_letters: dict[str, int]
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)  # channel -> state
    workers: list[str] = field(default_factory=list)
    broker_ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def carried(raw: bytes) -> tuple[str, list[Any]]:
    """(task name, envelopes oldest first) of a message as kombu's Redis transport stores it.

    Periodic jobs carry no envelopes; a message of an older sender carries one, unlisted.
    """
    message = json.loads(raw)
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return message["headers"]["task"], envelopes_in(args[0]) if args else []


def _message_time(raw: bytes) -> datetime | None:
    """When the oldest event in a queued Celery message was written (None for other tasks)."""
    try:
        _, envelopes = carried(raw)
        return datetime.fromisoformat(envelopes[0]["time"]) if envelopes else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def queue_states(client: redis.Redis, names: Iterable[str], now: datetime) -> list[QueueState]:
    """Depth and oldest event's age of each queue, over all its priority lists."""
    states = []
    for name in names:
        depth, sent = 0, []
        for key in broker_lists(name):
            length = int(client.llen(key))
            oldest = client.lindex(key, -1) if length else None  # LPUSHed: the oldest is last
            depth += length
            if isinstance(oldest, bytes) and (at := _message_time(oldest)) is not None:
                sent.append(at)
        age = (now - min(sent)).total_seconds() if sent else None
        states.append(QueueState(name, depth, age))
    return states


def delivery_counts(session: Session) -> dict[str, dict[str, int]]:
    """Deliveries of each channel in each of ``DELIVERY_STATES`` (zeros included)."""
    counts = {channel.value: dict.fromkeys(DELIVERY_STATES, 0) for channel in Channel}
    for channel, state, count in session.execute(_DELIVERY_COUNTS):
        counts.setdefault(channel, dict.fromkeys(DELIVERY_STATES, 0))[state] = int(count)
    return counts


def snapshot(db: Database, redis_url: str, celery_app: Any | None = None) -> Snapshot:
    now = utcnow()
    with db.session() as session:
        pending, oldest = session.execute(
            select(func.count(), func.min(OutboxEvent.created_at)).where(
                OutboxEvent.relayed_at.is_(None)
            )
        ).one()
        dead = dict(
            session.execute(
                select(DeadLetter.consumer, func.count())
                .where(DeadLetter.open())
                .group_by(DeadLetter.consumer)
            ).all()
        )
        deliveries = delivery_counts(session)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    result = Snapshot(
        queues=[QueueState(name, None, None) for name in CONSUMERS],
        in_flight=None,
        outbox_pending=int(pending),
        outbox_lag_s=(now - oldest).total_seconds() if oldest else None,
        dead_letters={name: int(dead.get(name, 0)) for name in CONSUMERS},
        deliveries=deliveries,
    )
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)
    try:
        result.queues = queue_states(client, CONSUMERS, now)
        result.in_flight = int(client.zcard(UNACKED_INDEX))
    except redis.RedisError:
        result.broker_ok = False
    finally:
        client.close()
    if celery_app is not None and result.broker_ok:
        replies = celery_app.control.ping(timeout=0.5) or []
        result.workers = sorted(name for reply in replies for name in reply)
    return result


def replay_dead_letters(
    db: Database, sender: Sender, consumer: str | None = None, ids: list[int] | None = None
) -> int:
    """Send dead letters back to their consumer's queue (after a fix); returns how many.

    Each letter is marked replayed, and that committed, before it is sent: a worker that
    fails the event again at once must find no open letter for it and write a new one. (Sent
    first and marked after, the new failure found the old letter still open and was folded
    into it, and the mark then closed it: the failure vanished.) If the broker refuses, the
    marks are taken back. On PostgreSQL two replays at once never claim the same letter.
    """
    query = select(DeadLetter).where(DeadLetter.open()).order_by(DeadLetter.id)
    if consumer:
        query = query.where(DeadLetter.consumer == consumer)
    if ids:
        query = query.where(DeadLetter.id.in_(ids))
    now = utcnow()
    with db.transaction() as session:
        letters = list(session.scalars(query.with_for_update(skip_locked=True)))
        for letter in letters:
            letter.replayed_at = now
    try:
        with sender.open() as send:
            for queue in sorted({letter.consumer for letter in letters}):
                mine = [letter for letter in letters if letter.consumer == queue]
                send_in_messages(send, queue, _envelopes(letter.payload for letter in mine))
    except Exception:
        with db.transaction() as session:
            session.execute(
                update(DeadLetter)
                .where(
                    DeadLetter.id.in_([letter.id for letter in letters]),
                    DeadLetter.replayed_at == now,
                )
                .values(replayed_at=None)
            )
        raise
    return len(letters)


def replay_dead_deliveries(db: Database, ids: list[int] | None = None) -> int:
    """Give dead deliveries (out of attempts) a fresh schedule; returns how many. The
    notifier's next send picks them up (beat's, within seconds)."""
    query = update(Delivery).where(Delivery.status == DeliveryStatus.DEAD)
    if ids:
        query = query.where(Delivery.id.in_(ids))
    with db.transaction() as session:
        revived = session.scalars(
            query.values(
                status=DeliveryStatus.PENDING, attempts=0, due_at=utcnow(), leased_until=None
            ).returning(Delivery.id)
        ).all()
    return len(revived)


def dead_deliveries(db: Database, limit: int = 100) -> list[Delivery]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Delivery)
                .where(Delivery.status == DeliveryStatus.DEAD)
                .order_by(Delivery.id)
                .limit(limit)
            )
        )


def discard_dead_letters(
    db: Database, ids: list[int], actor: str, reason: str, consumer: str | None = None
) -> int:
    """Close letters that can never succeed, with who and why; returns how many. They stay
    in the table (and in ``dlq list --all``) but no longer count as dead letters."""
    query = update(DeadLetter).where(DeadLetter.open(), DeadLetter.id.in_(ids))
    if consumer:
        query = query.where(DeadLetter.consumer == consumer)
    with db.transaction() as session:
        discarded = session.scalars(
            query.values(
                discarded_at=utcnow(), discarded_by=actor, discard_reason=reason
            ).returning(DeadLetter.id)
        ).all()
    for letter_id in discarded:
        log.warning("dead letter #%s discarded by %s: %s", letter_id, actor, reason)
    return len(discarded)


def _envelopes(payloads: Iterable[str]) -> Iterator[Any]:
    """What dead letters held, one envelope each. A worker older than batched messages
    dead-letters a whole list as one letter: its envelopes go back one by one."""
    for payload in payloads:
        yield from envelopes_in(json.loads(payload))


def replay_events(
    db: Database, sender: CelerySender, since: datetime, consumer: str | None = None
) -> dict[str, int]:
    """Send again each event written since ``since`` that a consumer has no ledger row for.

    For a broker that lost its queues (a Redis without persistence restarted): events already
    consumed are not sent, and the ledger makes any double delivery harmless.
    """
    sent: dict[str, int] = {}
    for queue in [consumer] if consumer else CONSUMERS:
        types = [t for t, queues in ROUTES.items() if queue in queues]
        consumed = exists().where(
            ConsumedEvent.event_id == OutboxEvent.event_id, ConsumedEvent.consumer == queue
        )
        query = (
            select(OutboxEvent.event_id, OutboxEvent.type, OutboxEvent.data, OutboxEvent.created_at)
            .where(
                OutboxEvent.created_at >= since,
                OutboxEvent.relayed_at.is_not(None),
                OutboxEvent.type.in_(types),
                ~consumed,
            )
            .order_by(OutboxEvent.position)
        )
        with db.session() as session, sender.open() as send:
            rows = session.execute(query.execution_options(yield_per=1000))
            sent[queue] = send_in_messages(send, queue, map(envelope_of, rows))
    return sent
