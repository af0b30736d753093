"""Engine and session handling for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

import uuid_utils
from sqlalchemy import DateTime, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
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


def insert_unless_present(session: Session, model: type[Base]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's database: rows whose key is
    already there are skipped (with RETURNING, only the rows inserted come back)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(model).on_conflict_do_nothing()


def make_engine(url: str, *, wal_autocheckpoint: int | None = None, **kwargs: object) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and writer-first transactions.

    ``wal_autocheckpoint``: SQLite's pages threshold at which a commit copies the WAL back
    into the database file (0: never; see :func:`checkpoints_in_background`).
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


class WriterQueue:
    """SQLite's writers, one at a time, queued in the kernel instead of polling the file.

    SQLite has no way to wait for its write lock but to sleep and ask again, and between
    one writer's commit and the next one's question the lock sits idle. Writers that go
    through :meth:`Database.transaction` first take their turn here: the threads of a
    process on a lock, then the processes on an ``flock`` of a file beside the database,
    which the kernel hands to the next waiter the moment it is let go (or its holder
    dies). BEGIN IMMEDIATE then rarely waits; when it does (a writer outside this queue),
    it polls as before.
    """

    def __init__(self, database_file: str | None):
        in_memory = database_file in (None, "", ":memory:")
        self.path = None if in_memory else f"{database_file}-writers"
        # (the threads' lock, the open lock file): set once per process, read as one value
        self._turnstile: tuple[threading.Lock, int | None] | None = None
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

    def _set_up(self) -> tuple[threading.Lock, int | None]:
        with self._setting_up:
            if self._turnstile is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600) if self.path else None
                self._turnstile = (threading.Lock(), fd)
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

    def __init__(
        self,
        url: str,
        *,
        wal_autocheckpoint: int | None = None,
        writers: WriterQueue | None = None,
        **engine_kwargs: object,
    ):
        """``writers``: the queue of another Database on the same SQLite file, to take turns
        in with its writers (by default each Database has a queue of its own)."""
        self.engine = make_engine(url, wal_autocheckpoint=wal_autocheckpoint, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # For sessions that only read: on SQLite they do not queue for the write lock.
        self.read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self.reader = sessionmaker(self.read_engine, expire_on_commit=False)
        sqlite = self.engine.dialect.name == "sqlite"
        self._writers = writers or (WriterQueue(self.engine.url.database) if sqlite else None)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on error."""
        turn = self._writers.turn() if self._writers is not None else nullcontext()
        with turn, self.sessionmaker() as session, session.begin():
            yield session

    def dispose(self) -> None:
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


@contextmanager
def checkpoints_in_background(db: Database) -> Iterator[tuple[Database, Callable[[], None]]]:
    """For a bulk writer on a SQLite file: a Database of its own whose commits leave their
    pages in the WAL, and a function to call after each commit, which has a thread copy
    them into the database file while the writer goes on.

    Otherwise the commit that crosses ``wal_autocheckpoint`` copies the WAL and syncs the
    file itself, a fifth of an archive sweep's time, inside its turn for the write lock,
    where every editor's write waits for it. Elsewhere (PostgreSQL, a database in memory)
    this hands back ``db`` and a function that does nothing.
    """
    path = db.engine.url.database
    if is_postgres(db.engine) or path in (None, "", ":memory:"):
        yield db, lambda: None
        return
    writer = Database(
        db.engine.url.render_as_string(hide_password=False),
        wal_autocheckpoint=0,
        writers=db._writers,  # the same turns as the process's other writers
    )
    checkpointer = _Checkpointer(path)
    try:
        yield writer, checkpointer.committed
    finally:
        checkpointer.close()
        writer.dispose()


class _Checkpointer:
    """A thread that copies the WAL into the database file after each commit it is told of.

    While it copies, the writer goes on with its next transaction. But SQLite starts the
    WAL file over only when a write begins with every frame already copied, which never
    happens while copies and writes overlap: the WAL grew by a chunk's pages each chunk
    (280 MB over a 300,000-story sweep). So every ``CATCH_UP``th commit the writer waits
    for the copy to finish, and the WAL stays within that many chunks' pages. (A reader that
    holds an older snapshot keeps its frames from being copied, and the WAL from starting
    over, until it ends; a passive checkpoint copies what it can and the writer goes on.)
    """

    CATCH_UP = 8

    def __init__(self, path: str):
        self.path = path
        self._state = threading.Condition()
        self._told = 0  # commits the writer has announced
        self._copied = 0  # of those, how many a finished checkpoint covered
        self._closing = False
        self._gone = False  # the thread has ended: nothing to wait for
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """Called by the writer after each commit."""
        with self._state:
            self._told += 1
            self._state.notify_all()
            if self._told % self.CATCH_UP == 0:
                self._state.wait_for(lambda: self._copied >= self._told or self._gone, LOCK_TIMEOUT)

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
            log.exception("the WAL checkpoint thread stopped; commits will no longer wait for it")
        finally:
            with self._state:
                self._gone = True
                self._state.notify_all()

    def _copy_when_told(self, connection: sqlite3.Connection) -> None:
        while True:
            with self._state:
                self._state.wait_for(lambda: self._told > self._copied or self._closing)
                covering, closing = self._told, self._closing
            try:  # PASSIVE: copies what no reader still needs, never waits for a writer
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed, the next one will retry: %s", exc)
            with self._state:
                self._copied = covering
                self._state.notify_all()
            if closing:
                return

    def close(self) -> None:
        """One last checkpoint, then the thread ends."""
        with self._state:
            self._closing = True
            self._state.notify_all()
        self._thread.join(LOCK_TIMEOUT)
