"""Engine and session handling for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import collections
import fcntl
import functools
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

import uuid_utils
from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    MetaData,
    Select,
    TypeDecorator,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(at: datetime | None = None) -> str:
    """A version-7 UUID (RFC 9562): 48 bits of Unix milliseconds (``at``, else now), then
    random bits.

    Ids that follow time keep every index on them growing at one edge: rows made (or
    published, or archived) together sit in the same few pages of each index instead of
    one page each all over it. The archive sweep, which takes a day's stories at a time,
    writes its history and outbox rows in a few pages of their ``article_id`` indexes.
    """
    if at is None:
        return str(uuid_utils.uuid7())
    # The time field counts from 1970: an older story (an archive goes back further) is
    # dated at its start, still before everything published since.
    return str(uuid_utils.uuid7(nanoseconds=max(0, int(at.timestamp() * 1_000_000_000))))


def insert_unless_present(
    session: Session, model: type[Base], on: Sequence[Any] = (), returning: Sequence[Any] = ()
) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's database: rows whose key (any
    unique one, or the columns ``on`` name) is already there are skipped; only the rows
    inserted come back, with their ``returning`` columns."""
    dialect = session.get_bind().dialect.name
    return _insert_unless_present(dialect, model, tuple(on), tuple(returning))


@functools.cache
def _insert_unless_present(
    dialect: str, model: type[Base], on: tuple[Any, ...], returning: tuple[Any, ...]
) -> Any:
    # Built once: SQLAlchemy works out a statement's cache key afresh for each new one.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(model).on_conflict_do_nothing(index_elements=list(on) or None)
    return statement.returning(*returning) if returning else statement


def json_elements(dialect: str, name: str, type_: Any = None) -> Select[Any]:
    """The elements of the JSON array bound as ``name``, as a one-column subquery.

    For ``column IN (...)`` over many values: one parameter and one statement text however
    many there are, where an expanding IN renders a new statement for each count, which
    psycopg then parses again (a fifth of the relay's time under a backlog)."""
    array = bindparam(name, type_=JSON)
    if dialect == "postgresql":
        value: Any = func.json_array_elements_text(array).table_valued("value").c.value
        return select(cast(value, type_) if type_ is not None else value)
    return select(func.json_each(array).table_valued("value").c.value)


def make_engine(url: str, *, wal_autocheckpoint: int | None = None, **kwargs: object) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and writer-first transactions.

    ``wal_autocheckpoint``: SQLite's pages threshold at which a commit copies the WAL back
    into the database file (0: never; see :class:`Checkpoints`).
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _configure_sqlite(engine, wal_autocheckpoint)
        return engine
    kwargs.setdefault("connect_args", {"connect_timeout": 3})
    engine = create_engine(url, **kwargs)
    _ping_after_idle(engine, PING_AFTER_IDLE_S)
    return engine


# A pooled PostgreSQL connection idle for longer than this is tested before it is handed out.
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine, idle_s: float) -> None:
    """Test a pooled connection before use only if it sat idle for ``idle_s`` or more.

    SQLAlchemy's ``pool_pre_ping`` tests every checkout: a round trip, one in seven of an
    article creation's and an eighth of the publisher's time under load. A database that
    restarted while the pool sat idle is still caught before a request uses the dead
    connection; one that restarts under load fails the requests in flight either way (503,
    safe to retry), and the first disconnect SQLAlchemy sees renews the whole pool.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _test_if_idle(dbapi_connection, record, _proxy):
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def _configure_sqlite(engine: Engine, wal_autocheckpoint: int | None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if wal_autocheckpoint is not None:
            cursor.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Several processes write this one file. A writer takes the write lock up front
        # (BEGIN IMMEDIATE) instead of failing when it later tries to write; readers
        # (Database.reader) need no lock at all under WAL.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        if read_only:
            conn.exec_driver_sql("BEGIN")
        else:
            _begin_immediate(conn.connection.driver_connection)


# How long a writer waits for the write lock before giving up, and how often it asks.
LOCK_TIMEOUT = 30.0
LOCK_POLL = (0.0005, 0.004)


def _begin_immediate(dbapi_connection: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, asking again every few milliseconds until the lock is free.

    Writers queued by :class:`WriterQueue` rarely wait here; this is for the rest (a writer
    that opened its own session, another program on the file). SQLite's own busy handler
    backs off to 100 ms sleeps, so a writer that had waited a little woke up long after
    the lock was free. The busy timeout stays for every other statement; this attempt
    alone is made without it.
    """
    deadline = time.monotonic() + LOCK_TIMEOUT
    delay = LOCK_POLL[0]
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: waiters do not march in step
            delay = min(2 * delay, LOCK_POLL[1])
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT * 1000)}")


READ_ONLY = "pressroom_read_only"


def is_postgres(session_or_engine: Session | Engine) -> bool:
    bind = (
        session_or_engine.get_bind()
        if isinstance(session_or_engine, Session)
        else session_or_engine
    )
    return bind.dialect.name == "postgresql"


class FifoLock:
    """A lock handed to its waiters in the order they came.

    ``threading.Lock`` is not fair: a thread that lets it go and asks again at once (a loop
    of transactions, the archive sweep) usually gets it back before a waiting thread is even
    scheduled, and the process's WAL checkpoint thread waited behind thousands of commits.
    Here a release hands the lock straight to the longest waiter.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            handed = threading.Lock()
            handed.acquire()
            self._waiters.append(handed)
        if handed.acquire(timeout=timeout):
            return True
        with self._mutex:
            if handed in self._waiters:
                self._waiters.remove(handed)
                return False
        return True  # handed over as the wait ran out: ours after all

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()  # still held: now by that waiter
            else:
                self._held = False


class WriterQueue:
    """SQLite's writers, one at a time, queued instead of polling the file.

    SQLite has no way to wait for its write lock but to sleep and ask again, and between
    one writer's commit and the next one's question the lock sits idle. Writers that go
    through :meth:`Database.transaction` first take their turn here: the threads of a
    process in order on a :class:`FifoLock`, then the processes on an ``flock`` of a file
    beside the database, which the kernel hands to a waiter the moment it is let go (or its
    holder dies). BEGIN IMMEDIATE then rarely waits; when it does (a writer outside this
    queue), it polls as before.
    """

    def __init__(self, database_file: str | None):
        in_memory = database_file in (None, "", ":memory:")
        self.path = None if in_memory else f"{database_file}-writers"
        # (the threads' lock, the open lock file): set once per process, read as one value
        self._turnstile: tuple[FifoLock, int | None] | None = None
        self._setting_up = threading.Lock()
        _QUEUES.add(self)

    @contextmanager
    def turn(self) -> Iterator[None]:
        threads, fd = self._turnstile or self._set_up()
        if not threads.acquire(timeout=LOCK_TIMEOUT):
            raise TimeoutError(f"no turn to write after {LOCK_TIMEOUT:.0f} s")
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            threads.release()

    def _set_up(self) -> tuple[FifoLock, int | None]:
        with self._setting_up:
            if self._turnstile is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600) if self.path else None
                self._turnstile = (FifoLock(), fd)
            return self._turnstile

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's locks are not ours, nor is its open lock file."""
        if self._turnstile is not None and self._turnstile[1] is not None:
            os.close(self._turnstile[1])  # the parent's flock stays with the parent's copy
        self._turnstile = None
        self._setting_up = threading.Lock()


_QUEUES: weakref.WeakSet[WriterQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for queue in list(_QUEUES):
        queue._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Database:
    """An engine and its session factory, built once per process from settings."""

    def __init__(self, url: str, **engine_kwargs: object):
        path = make_url(url).database
        on_file = url.startswith("sqlite") and path not in (None, "", ":memory:")
        # On a SQLite file commits leave their pages in the WAL, for Checkpoints to copy.
        self.engine = make_engine(url, wal_autocheckpoint=0 if on_file else None, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # For sessions that only read: on SQLite they do not queue for the write lock.
        self.read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self.reader = sessionmaker(self.read_engine, expire_on_commit=False)
        sqlite = self.engine.dialect.name == "sqlite"
        self._writers = WriterQueue(path) if sqlite else None
        self.checkpoints = (
            Checkpoints(path, self._writers) if on_file and path and self._writers else None
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on error."""
        turn = self._writers.turn() if self._writers is not None else nullcontext()
        with turn, self.sessionmaker() as session, session.begin():
            yield session
        if self.checkpoints is not None:
            self.checkpoints.committed()

    def dispose(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()
        self.engine.dispose()


def analyze(db: Database, *tables: str) -> None:
    """On PostgreSQL, refresh the planner's statistics of tables a bulk writer has just grown.

    Autovacuum gets round to it within a minute or so; until then a table that went from
    empty to 300,000 rows is planned as if it held a few: the relay's lookup of each
    article's oldest pending event scanned the whole backlog, 0.8 s a batch instead of 1 ms.
    SQLite plans without statistics unless asked to keep them, so it has nothing to refresh.
    """
    if is_postgres(db.engine):
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {', '.join(tables)}")


class Checkpoints:
    """A thread of the process that copies the WAL into the SQLite file after commits.

    SQLite's own checkpoint runs inside the commit that takes the WAL past 1,000 pages: that
    request waits while the WAL is copied and the file synced, and holds its turn in
    :class:`WriterQueue` meanwhile, so every writer queued behind it waits too. While an
    archive sweep filled the WAL, that was an editor's article creation taking 350 ms. Here
    a commit only tells the thread, which copies (PASSIVE: what no reader still needs, never
    waiting for a writer) at most every ``PAUSE_S``, while the writers go on.

    SQLite starts the WAL over only when a write begins with every frame already copied,
    which never happens while writers keep committing during the copies: the WAL grew by
    every commit's pages (280 MB over a 300,000-story sweep). So once a copy leaves more
    than ``RESTART_FRAMES`` in the WAL, the thread copies the rest in a turn of its own in
    the writers' queue; the next writer starts the WAL over.

    The thread starts on the first commit of each process (a forked worker has none of its
    parent's threads); a checkpoint that fails is retried at the next commit.
    """

    PAUSE_S = 0.1
    RESTART_FRAMES = 1000  # SQLite's own autocheckpoint threshold, in pages

    def __init__(self, path: str, writers: WriterQueue):
        self.path = path
        self.writers = writers
        self._owner_pid = 0
        self._starting = threading.Lock()

    def committed(self) -> None:
        """Called after each commit: the thread will copy it soon."""
        state = self._running()
        with state:
            self._told += 1
            state.notify_all()

    def catch_up(self, timeout: float = LOCK_TIMEOUT) -> None:
        """Wait until every commit told so far is copied (or the thread is gone)."""
        if self._owner_pid != os.getpid():
            return
        with self._state:
            told = self._told
            self._hurry += 1
            self._state.notify_all()
            try:
                self._state.wait_for(lambda: self._copied >= told or self._gone, timeout)
            finally:
                self._hurry -= 1

    def close(self) -> None:
        """One last copy, then the thread ends."""
        if self._owner_pid != os.getpid():
            return
        with self._state:
            self._closing = True
            self._state.notify_all()
        self._thread.join(LOCK_TIMEOUT)
        self._owner_pid = 0

    def _running(self) -> threading.Condition:
        with self._starting:
            if self._owner_pid != os.getpid():
                self._owner_pid = os.getpid()
                self._state = threading.Condition()
                self._told = 0  # commits announced
                self._copied = 0  # of those, how many a finished checkpoint covered
                self._hurry = 0  # callers of catch_up waiting: no pause between copies
                self._closing = False
                self._gone = False  # the thread has ended: nothing to wait for
                self._thread = threading.Thread(
                    target=self._run, name="wal-checkpoint", daemon=True
                )
                self._thread.start()
        return self._state

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(
                self.path, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                self._copy_when_told(connection)
            finally:
                connection.close()
        except Exception:
            log.exception("the WAL checkpoint thread stopped; SQLite's file will lag its WAL")
        finally:
            with self._state:
                self._gone = True
                self._state.notify_all()

    def _copy_when_told(self, connection: sqlite3.Connection) -> None:
        state = self._state
        while True:
            with state:
                state.wait_for(lambda: self._told > self._copied or self._closing)
                covering, closing = self._told, self._closing
            try:
                if self._copy(connection) > self.RESTART_FRAMES:
                    with self.writers.turn():
                        self._copy(connection)
            except (sqlite3.Error, TimeoutError) as exc:
                log.warning("WAL checkpoint failed, the next one will retry: %s", exc)
            with state:
                self._copied = covering
                state.notify_all()
                if closing:
                    return
                # Copies in a burst of commits come at most every PAUSE_S, unless waited for.
                state.wait_for(lambda: self._hurry > 0 or self._closing, self.PAUSE_S)

    @staticmethod
    def _copy(connection: sqlite3.Connection) -> int:
        """A PASSIVE checkpoint; returns how many frames the WAL holds."""
        _busy, frames, _copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames)
