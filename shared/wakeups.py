"""Waking listeners once a writer has committed: ``NOTIFY`` after the commit, sent by one
thread per process so that the commits of a burst share a round trip."""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import weakref

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from shared.db import after_commit

log = logging.getLogger(__name__)

# The sending thread ends after this long with nothing to send, and starts again when asked:
# no thread outlives the engines of a test, and a forked child starts its own.
IDLE_S = 1.0

_CHANNEL = re.compile(r"[a-z_][a-z0-9_]*")  # written into the statement: plain words only
_PAYLOAD = re.compile(r"[a-z0-9_.]*")


def notify_after_commit(session: Session, channel: str, payload: str = "") -> None:
    """``NOTIFY channel, payload`` once the session's transaction has committed; once per
    transaction however often it is asked.

    Not in the writer's transaction: PostgreSQL serialises the commits of transactions that
    notify, each holding one lock through its WAL flush, so under concurrent writes each
    waited for the flushes of all before it instead of sharing one. Nor in the writer's
    thread: the process's :class:`Notifier` sends it, together with what other commits asked
    for meanwhile. A listener that misses the wake-up (the process died just after the
    commit) finds the rows when it next looks.
    """
    if not _CHANNEL.fullmatch(channel) or not _PAYLOAD.fullmatch(payload):
        raise ValueError(f"not a plain channel name and payload: {channel!r}, {payload!r}")
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    after_commit(
        session,
        lambda: Notifier.of(engine).send(engine, channel, payload),
        key=(notify_after_commit, channel, payload),
    )


class Notifier:
    """Sends the notifications asked of one engine from a thread of its own.

    Each one asked for is sent after it was asked (so after the commit that asked), in one
    transaction with the others pending at that moment, duplicates sent once. The
    transaction commits without waiting for its WAL flush: it writes nothing worth keeping.
    """

    # By pool: an engine and its copies with other execution options share one.
    _of: weakref.WeakKeyDictionary[Pool, Notifier] = weakref.WeakKeyDictionary()
    _of_lock = threading.Lock()

    @classmethod
    def of(cls, engine: Engine) -> Notifier:
        with cls._of_lock:
            notifier = cls._of.get(engine.pool)
            if notifier is None:
                notifier = cls._of[engine.pool] = cls()
            return notifier

    def __init__(self) -> None:
        self._start_afresh()

    def _start_afresh(self) -> None:
        """Nothing pending and no thread: as made, and in a forked child, where the parent's
        thread is gone and its lock may have been held at the fork."""
        self._engine: Engine | None = None  # held only while something is pending
        self._lock = threading.Lock()
        self._asked = threading.Condition(self._lock)
        self._pending: dict[tuple[str, str], None] = {}  # in the order asked
        self._thread: threading.Thread | None = None

    def send(self, engine: Engine, channel: str, payload: str = "") -> None:
        with self._lock:
            self._engine = engine
            self._pending[(channel, payload)] = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pressroom-notifier", daemon=True
                )
                self._thread.start()
            self._asked.notify()

    def flush(self) -> None:
        """Send what is pending now, in the caller's thread (at exit)."""
        with self._lock:
            engine, batch = self._take()
        self._send(engine, batch)

    def _take(self) -> tuple[Engine | None, list[tuple[str, str]]]:
        engine, batch = self._engine, list(self._pending)
        self._engine, self._pending = None, {}
        return engine, batch

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._pending and not self._asked.wait_for(
                    lambda: bool(self._pending), IDLE_S
                ):
                    self._thread = None  # under the lock: the next send starts another
                    return
                engine, batch = self._take()
            self._send(engine, batch)

    def _send(self, engine: Engine | None, batch: list[tuple[str, str]]) -> None:
        if engine is None or not batch:
            return
        statements = "; ".join(f"NOTIFY {channel}, '{payload}'" for channel, payload in batch)
        sql = f"BEGIN; SET LOCAL synchronous_commit TO off; {statements}; COMMIT"
        try:
            with engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(sql)
        except Exception:  # the rows are committed: whoever waits on them looks again later
            log.exception("wake-up not sent; its listeners find the work at their next look")


@atexit.register
def _flush_all() -> None:
    """A process that exits sends what it still owes (its thread is a daemon)."""
    for notifier in list(Notifier._of.values()):
        notifier.flush()


def _after_fork_in_child() -> None:
    Notifier._of_lock = threading.Lock()
    for notifier in list(Notifier._of.values()):
        notifier._start_afresh()  # what the parent owed is the parent's to send


os.register_at_fork(after_in_child=_after_fork_in_child)
