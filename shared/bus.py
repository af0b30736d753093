"""Where events go: the routing table, the outbox write, and the relay to the broker."""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import BigInteger, Row, Select, bindparam, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from shared import events
from shared.celery import EVENT_PRIORITY
from shared.db import Database, is_postgres, json_elements, utcnow
from shared.models import OutboxEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

ARCHIVER = "archiver"
NOTIFIER = "notifier"
CONSUMERS = (ARCHIVER, NOTIFIER)

# event type -> the consumer queues that subscribe to it (DESIGN.md, "Events")
ROUTES: dict[str, tuple[str, ...]] = {
    events.ARTICLE_PUBLISHED: (ARCHIVER, NOTIFIER),
    events.ARTICLE_UPDATED: (ARCHIVER,),
    events.ARTICLE_ARCHIVED: (ARCHIVER,),
    events.ARTICLE_UNARCHIVED: (ARCHIVER,),
    events.ARTICLE_RETRACTED: (ARCHIVER, NOTIFIER),
}


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
                    priority=EVENT_PRIORITY,
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


def emit(session: Session, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Write an event to the outbox, in the caller's transaction; returns its envelope."""
    now = utcnow()
    envelope = events.make_envelope(event_type, data, time=now)
    row = {
        "event_id": envelope["id"],
        "type": event_type,
        "article_id": data["article_id"],
        "data": envelope["data"],
        "created_at": now,
    }
    session.connection().execute(_WRITE_EVENT, row)
    return envelope


class Relay:
    """Publishes outbox rows to their queues, oldest first, each article's events in order.

    On PostgreSQL a relay locks the rows it sends until it has marked them, so concurrent
    relays never send a row twice. SQLite has one write lock for the whole file: a relay
    there reads, sends, then marks in a short transaction of its own, never holding the lock
    across a broker call (a broker that is down would stall every writer for its connect
    timeout). Two relays that meet there may both send an event; the consumers' ledgers
    skip the second.
    """

    def __init__(self, db: Database, sender: Sender, batch: int = 500):
        self.db = db
        self.sender = sender
        self.batch = batch
        self.locks_rows = is_postgres(db.engine)
        self.statements = _relay_statements(db.engine.dialect.name)

    def relay(
        self,
        article_ids: Iterable[str] | None = None,
        *,
        settled: timedelta = timedelta(0),
        budget: float | None = None,
    ) -> int:
        """Relay what is pending (for these articles, or all written ``settled`` ago or
        earlier, batch after batch for up to ``budget`` seconds); returns how many were
        sent.

        Stops quietly at the first broker failure: what was not sent stays in the outbox for
        the next sweep.
        """
        if article_ids is not None:
            return self._relay_articles(sorted(set(article_ids)))
        sent, started = 0, time.monotonic()
        while True:
            done, failed, fetched = self._relay(lambda session: self._heads(session, settled))
            sent += done
            out_of_time = budget is not None and time.monotonic() - started >= budget
            if failed or not fetched or out_of_time:
                return sent

    def _heads(self, session: Session, settled: timedelta) -> Sequence[Row[Any]]:
        """Of the oldest pending events, those that are their article's oldest pending one:
        a later event of an article waits for the earlier, so order is kept.

        Two plain index walks, whatever the backlog: the oldest pending rows by position
        (skipping, on PostgreSQL, rows another relay holds), then each of their articles'
        first pending position. One query with NOT EXISTS over the whole backlog let
        PostgreSQL, its statistics stale after a burst, hash 280,000 pending rows for every
        batch of 500 (2.2 s a batch).
        """
        connection = session.connection()
        oldest = self.statements.oldest
        params: dict[str, Any] = {"limit": self.batch}
        if settled:  # younger ones are the business of their process's relay thread
            oldest = self.statements.oldest_settled
            params["written_by"] = utcnow() - settled
        rows = connection.execute(oldest, params).all()
        if not rows:
            return rows
        article_ids = list({row.article_id for row in rows})
        first: dict[str, int] = dict(
            connection.execute(self.statements.first_pending, {"article_ids": article_ids}).all()
        )
        return [row for row in rows if first[row.article_id] == row.position]

    def _relay_articles(self, article_ids: Sequence[str]) -> int:
        """Right after a commit: every pending event of these articles, oldest first.

        All of an article's pending events go together, so order holds without the sweep's
        head-of-line query. On PostgreSQL the rows are locked without skipping, so a relay
        that holds an older event of the same article is waited for, not overtaken.
        """
        query, ids = self.statements.of_articles, {"article_ids": list(article_ids)}
        done, _, _ = self._relay(lambda session: session.connection().execute(query, ids).all())
        return done

    def _relay(self, fetch: Callable[[Session], Sequence[Row[Any]]]) -> tuple[int, bool, int]:
        """Send the rows ``fetch`` finds and mark them: (sent, whether one failed, found).

        On PostgreSQL all in one transaction, the rows locked by ``fetch`` until marked; on
        SQLite read, send, then mark, the write lock held only for the marking.
        """
        if self.locks_rows:
            with self.db.transaction() as session:
                rows = fetch(session)
                done, failed = self._send(rows)
                self._mark(session, rows, done, failed)
            return done, failed, len(rows)
        with self.db.reader() as session:
            rows = fetch(session)
        done, failed = self._send(rows)
        if rows:
            with self.db.transaction() as session:
                self._mark(session, rows, done, failed)
        return done, failed, len(rows)

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
    oldest: Select[Any]  # the ``limit`` oldest pending rows
    oldest_settled: Select[Any]  # the same, of those written by ``written_by``
    first_pending: Select[str, int]  # (article id, its first pending position) of ``article_ids``
    of_articles: Select[Any]  # every pending row of ``article_ids``, oldest first
    mark: Update  # ``positions`` relayed at ``now``
    count_attempt: Update  # one more failed attempt at the row ``failed_at``


@functools.cache
def _relay_statements(dialect: str) -> RelayStatements:
    """Built once per dialect, Core rather than the ORM: a relay reads plain rows and marks
    them by key, under a backlog thousands of times a minute."""
    outbox = OutboxEvent.__table__
    pending = select(
        OutboxEvent.position,
        OutboxEvent.article_id,
        OutboxEvent.type,
        OutboxEvent.event_id,
        OutboxEvent.data,
        OutboxEvent.created_at,
    ).where(OutboxEvent.relayed_at.is_(None))
    oldest = pending.order_by(OutboxEvent.position).limit(bindparam("limit"))
    oldest_settled = oldest.where(OutboxEvent.created_at <= bindparam("written_by"))
    of_articles_given = OutboxEvent.article_id.in_(json_elements(dialect, "article_ids"))
    of_articles = pending.where(of_articles_given).order_by(OutboxEvent.position)
    if dialect == "postgresql":
        oldest = oldest.with_for_update(of=outbox, skip_locked=True)
        oldest_settled = oldest_settled.with_for_update(of=outbox, skip_locked=True)
        of_articles = of_articles.with_for_update(of=outbox)
    return RelayStatements(
        oldest=oldest,
        oldest_settled=oldest_settled,
        first_pending=select(OutboxEvent.article_id, func.min(OutboxEvent.position))
        .where(OutboxEvent.relayed_at.is_(None), of_articles_given)
        .group_by(OutboxEvent.article_id),
        of_articles=of_articles,
        mark=update(OutboxEvent)
        .where(
            OutboxEvent.position.in_(json_elements(dialect, "positions", BigInteger)),
            OutboxEvent.relayed_at.is_(None),
        )
        .values(relayed_at=bindparam("now")),
        count_attempt=update(OutboxEvent)
        .where(OutboxEvent.position == bindparam("failed_at"))
        .values(attempts=OutboxEvent.attempts + 1),
    )


# The periodic sweep leaves events younger than this to the relay thread of their process.
SWEEP_SETTLED = timedelta(seconds=2)
# One periodic sweep relays at a time (beat sends one every OUTBOX_SWEEP_SECONDS), for up
# to SWEEP_BUDGET_S; the next one beat sends carries on. Its lock lapses on its own if the
# worker dies, and outlasts the budget by more than any one batch takes.
SWEEP_LOCK = "pressroom:outbox-sweep"
SWEEP_BUDGET_S = 30.0
SWEEP_LOCK_S = 90

# How long the relay thread waits for company before it relays: LINGER_STEP_S for each
# article beyond the first that its last batch held, never more than LINGER_MAX_S.
LINGER_STEP_S = 0.005
LINGER_MAX_S = 0.1


def linger_after(previous_batch: int) -> float:
    return min(LINGER_MAX_S, LINGER_STEP_S * max(0, previous_batch - 1))


class BackgroundRelay:
    """Relays right after commit from one thread of this process, batching as it goes.

    A request hands its article ids over and answers at once; the thread relays them
    together with whatever other requests committed meanwhile (see :class:`Relay`: one
    message per queue for each ``MESSAGE_EVENTS`` events). How long it first waits for
    company follows the load: an article that came alone last time is relayed at once, so
    a quiet newsroom's events leave within milliseconds; under a burst the thread waits up
    to 100 ms and relays the batch with one write and a message or two per queue, instead of
    a write and two messages per article, which is what lets the publisher and the
    consumers keep up.

    Nothing depends on the thread for safety: an event it has not sent yet (the process
    died, the broker is down) is still in the outbox, where the beat sweep finds it.
    """

    def __init__(self, relay: Relay):
        self.relay = relay
        self._owner_pid = 0
        self._wanted: set[str] = set()
        self._busy = False
        self._changed = threading.Condition()
        self._starting = threading.Lock()

    def submit(self, article_ids: Iterable[str]) -> None:
        """Relay these articles' pending events soon; returns without waiting."""
        changed = self._running()
        with changed:
            self._wanted.update(article_ids)
            changed.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far has been relayed (or tried)."""
        if self._owner_pid != os.getpid():  # nothing submitted here (a forked child's atexit)
            return True
        with self._changed:
            return self._changed.wait_for(lambda: not self._wanted and not self._busy, timeout)

    def _running(self) -> threading.Condition:
        """The thread's condition, starting the thread on first use and after a fork."""
        with self._starting:
            if self._owner_pid != os.getpid():  # gunicorn forks its workers from the arbiter
                self._owner_pid = os.getpid()
                self._wanted, self._busy = set(), False
                self._changed = threading.Condition()
                threading.Thread(target=self._run, name="outbox-relay", daemon=True).start()
                atexit.register(self.flush, 2.0)
        return self._changed

    def _run(self) -> None:
        changed = self._changed
        previous = 0
        while True:
            with changed:
                changed.wait_for(lambda: bool(self._wanted))
            if linger := linger_after(previous):
                time.sleep(linger)  # requests committing right now join this batch
            with changed:
                batch, self._wanted, self._busy = self._wanted, set(), True
            previous = len(batch)
            try:
                self.relay.relay(batch)
            except Exception:  # the database is down: the beat sweep relays them later
                log.exception(
                    "relay after commit failed; %d articles left to the sweep", len(batch)
                )
            finally:
                with changed:
                    self._busy = False
                    changed.notify_all()
