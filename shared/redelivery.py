"""Finding events a consumer never got, and sending them again, with no human involved.

A message can vanish after the relay handed it over: a worker's main process killed while
it held it (on Redis it would come back only after the visibility timeout, an hour), or a
Redis without persistence restarted. The outbox still has the event and the consumer's
ledger does not: that is what this looks for, in events relayed ``settle`` ago or earlier
(REDELIVER_AFTER_SECONDS).

Bounded so it never floods: a consumer's queue must have drained first (a deep queue holds
what is merely late, not lost), at most ``MAX_RESEND`` events a pass, and an event resent
is not resent again before ``settle`` has passed once more. Per consumer, a mark keeps the
position up to which everything was consumed (or dead-lettered), so each pass reads only
what came after it. Sent twice, an event is skipped by the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from shared.bus import CONSUMERS, ROUTES, Sender, send_in_messages
from shared.db import Database, insert_unless_present, utcnow
from shared.events import envelope_of
from shared.models import ConsumedEvent, DeadLetter, OutboxEvent, RedeliveryMark

log = logging.getLogger(__name__)

SCAN = 5000  # outbox rows a pass reads per consumer
MAX_RESEND = 500
DRAINED_BELOW = 10  # messages waiting in a queue that count as drained
LOCK = "pressroom:redelivery"  # one search at a time, whichever relay runs it


def redeliver_lost(
    db: Database,
    sender: Sender,
    queue_depth: Callable[[str], int | None],
    settle: timedelta,
    now: datetime | None = None,
) -> dict[str, int]:
    """One pass for every consumer; returns how many events each was sent again."""
    now = now or utcnow()
    resent: dict[str, int] = {}
    with db.transaction() as session:
        if not session.scalar(select(func.pg_try_advisory_xact_lock(func.hashtext(LOCK)))):
            return resent  # another relay is at it
        for consumer in CONSUMERS:
            depth = queue_depth(consumer)
            if depth is None or depth >= DRAINED_BELOW:
                continue  # not drained (or unknown): what is missing may only be late
            rows = _lost(session, consumer, now - settle)
            if rows:
                with sender.open() as send:
                    resent[consumer] = send_in_messages(send, consumer, map(envelope_of, rows))
                session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.position.in_([row.position for row in rows]))
                    .values(resent_at=now)
                )
                log.warning("resent %d events %s never consumed", len(rows), consumer)
    return resent


def _lost(session: Session, consumer: str, settled: datetime) -> list[Any]:
    """The events after the consumer's mark, relayed by ``settled``, that it has no record
    of and that were not resent since; moves the mark up to the first of them."""
    mark = _mark(session, consumer)
    types = [t for t, queues in ROUTES.items() if consumer in queues]
    missing = and_(
        OutboxEvent.type.in_(types),
        ~exists().where(
            ConsumedEvent.event_id == OutboxEvent.event_id, ConsumedEvent.consumer == consumer
        ),
        ~exists().where(
            DeadLetter.event_id == OutboxEvent.event_id, DeadLetter.consumer == consumer
        ),
    )
    scanned = session.execute(
        select(
            OutboxEvent.position,
            OutboxEvent.event_id,
            OutboxEvent.type,
            OutboxEvent.article_id,
            OutboxEvent.data,
            OutboxEvent.created_at,
            OutboxEvent.relayed_at,
            OutboxEvent.resent_at,
            missing.label("missing"),
        )
        .where(OutboxEvent.position > mark)
        .order_by(OutboxEvent.position)
        .limit(SCAN)
    ).all()
    lost: list[Any] = []
    settled_up_to, blocked = mark, False
    for row in scanned:
        if row.relayed_at is None or row.relayed_at > settled:
            break  # not relayed yet, or too lately to tell: the mark stops here
        if row.missing:
            blocked = True  # the mark waits until this one is consumed
            if row.resent_at is None or row.resent_at <= settled:
                lost.append(row)
                if len(lost) >= MAX_RESEND:
                    break
        elif not blocked:
            settled_up_to = row.position
    _move_mark(session, consumer, settled_up_to)
    return lost


def _mark(session: Session, consumer: str) -> int:
    session.execute(
        insert_unless_present(session, RedeliveryMark),
        {"consumer": consumer, "position": 0},
    )
    return int(
        session.scalar(select(RedeliveryMark.position).where(RedeliveryMark.consumer == consumer))
        or 0
    )


def _move_mark(session: Session, consumer: str, position: int) -> None:
    session.execute(
        update(RedeliveryMark)
        .where(RedeliveryMark.consumer == consumer, RedeliveryMark.position < position)
        .values(position=position)
    )
