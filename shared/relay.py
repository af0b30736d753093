"""The relay: outbox rows to their consumer queues, oldest first, each article's in order.

Any number of relays may run at once (``pressroom relay``): a relay locks the rows it
sends until it has marked them, and the others skip locked rows.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Row, Select, bindparam, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from shared import events
from shared.bus import CONSUMERS, MESSAGE_EVENTS, ROUTES, Sender, batched
from shared.db import Database, json_elements, utcnow
from shared.models import OutboxEvent

log = logging.getLogger(__name__)


class Relay:
    """Publishes pending outbox rows, batch after batch, and marks them relayed."""

    def __init__(self, db: Database, sender: Sender, batch: int = 500):
        self.db = db
        self.sender = sender
        self.batch = batch
        self.statements = _relay_statements()

    def relay(self, *, budget: float | None = None) -> int:
        """Relay what is pending when it starts, batch after batch for up to ``budget``
        seconds; returns how many were sent. What commits meanwhile wakes the relays again.

        Stops quietly at the first broker failure: what was not sent stays in the outbox
        for the next pass.
        """
        sent, started = 0, time.monotonic()
        while True:
            with self.db.transaction() as session:
                rows, fetched = self._heads(session)
                done, failed = self._send(rows)
                self._mark(session, rows, done, failed)
            sent += done
            out_of_time = budget is not None and time.monotonic() - started >= budget
            # A pass that fetched less than a batch and could send all of it saw everything
            # pending then (what commits later wakes the relays again). A full batch, or a
            # row held back because another relay holds its article's earlier event, may
            # leave more: another pass, until one comes back empty.
            saw_all = fetched < self.batch and len(rows) == fetched
            if failed or not fetched or saw_all or out_of_time:
                return sent

    def _heads(self, session: Session) -> tuple[Sequence[Row[Any]], int]:
        """Of the oldest pending events, those that are their article's oldest pending one
        (a later event of an article waits for the earlier, so order is kept), and how many
        were fetched.

        Two plain index walks, whatever the backlog: the oldest pending rows by position
        (skipping rows another relay holds), then each of their articles' first pending
        position. One query with NOT EXISTS over the whole backlog let PostgreSQL, its
        statistics stale after a burst, hash the whole backlog for every batch.
        """
        connection = session.connection()
        rows = connection.execute(self.statements.oldest, {"limit": self.batch}).all()
        if not rows:
            return rows, 0
        article_ids = list({row.article_id for row in rows})
        first: dict[str, int] = dict(
            connection.execute(self.statements.first_pending, {"article_ids": article_ids}).all()
        )
        return [row for row in rows if first[row.article_id] == row.position], len(rows)

    def _send(self, rows: Sequence[Row[Any]]) -> tuple[int, bool]:
        """Each run of ``MESSAGE_EVENTS`` rows goes as one message to each queue routed.

        After a failure the rows of the failed run stay pending, even those already sent to
        another queue: sent again later, they are duplicates the consumers' ledgers skip.
        """
        if not rows:
            return 0, False
        done = 0
        try:
            with self.sender.open() as send:
                for chunk in batched(rows, MESSAGE_EVENTS):
                    envelopes = [events.envelope_of(row) for row in chunk]
                    for queue in CONSUMERS:
                        routed = [e for e in envelopes if queue in ROUTES[e["type"]]]
                        if routed:
                            send(queue, routed)
                    done += len(chunk)
        except Exception as exc:  # the broker's errors vary by transport
            log.warning("outbox relay stopped, %d events stay pending: %s", len(rows) - done, exc)
            return done, True
        return done, False

    def _mark(self, session: Session, rows: Sequence[Row[Any]], done: int, failed: bool) -> None:
        """The first ``done`` rows were sent; after a failure the next one counts an attempt."""
        connection = session.connection()
        if done:
            sent = [row.position for row in rows[:done]]
            connection.execute(self.statements.mark, {"positions": sent, "now": utcnow()})
        if failed and done < len(rows):
            connection.execute(self.statements.count_attempt, {"failed_at": rows[done].position})


@dataclass(frozen=True)
class RelayStatements:
    oldest: Select[Any]  # the ``limit`` oldest pending rows no other relay holds
    first_pending: Select[str, int]  # (article id, its first pending position) of ``article_ids``
    mark: Update  # ``positions`` relayed at ``now``
    count_attempt: Update  # one more failed attempt at the row ``failed_at``


@functools.cache
def _relay_statements() -> RelayStatements:
    """Built once, Core rather than the ORM: a relay reads plain rows and marks them by
    key, under a backlog thousands of times a minute."""
    outbox = OutboxEvent.__table__
    pending = select(
        OutboxEvent.position,
        OutboxEvent.article_id,
        OutboxEvent.type,
        OutboxEvent.event_id,
        OutboxEvent.data,
        OutboxEvent.created_at,
    ).where(OutboxEvent.relayed_at.is_(None))
    of_articles_given = OutboxEvent.article_id.in_(json_elements("article_ids"))
    return RelayStatements(
        oldest=pending.order_by(OutboxEvent.position)
        .limit(bindparam("limit"))
        .with_for_update(of=outbox, skip_locked=True),
        first_pending=select(OutboxEvent.article_id, func.min(OutboxEvent.position))
        .where(OutboxEvent.relayed_at.is_(None), of_articles_given)
        .group_by(OutboxEvent.article_id),
        mark=update(OutboxEvent)
        .where(
            OutboxEvent.position.in_(json_elements("positions", BigInteger)),
            OutboxEvent.relayed_at.is_(None),
        )
        .values(relayed_at=bindparam("now")),
        count_attempt=update(OutboxEvent)
        .where(OutboxEvent.position == bindparam("failed_at"))
        .values(attempts=OutboxEvent.attempts + 1),
    )
