"""The engine, sessions and column types every service uses (PostgreSQL)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
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
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, make_url
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
    """Timezone-aware datetimes, always handed out in UTC."""

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
    return _insert_unless_present(model, tuple(on), tuple(returning))


@functools.cache
def _insert_unless_present(
    model: type[Base], on: tuple[Any, ...], returning: tuple[Any, ...]
) -> Any:
    # Built once: SQLAlchemy works out a statement's cache key afresh for each new one.
    statement = postgresql.insert(model).on_conflict_do_nothing(index_elements=list(on) or None)
    return statement.returning(*returning) if returning else statement


def json_elements(name: str, type_: Any = None) -> Select[Any]:
    """The elements of the JSON array bound as ``name``, as a one-column subquery.

    For ``column IN (...)`` over many values: one parameter and one statement text however
    many there are, where an expanding IN renders a new statement for each count, which
    psycopg then parses again (a fifth of the relay's time under a backlog)."""
    array = bindparam(name, type_=JSON)
    value: Any = func.json_array_elements_text(array).table_valued("value").c.value
    return select(cast(value, type_) if type_ is not None else value)


def make_engine(url: str | URL, **kwargs: object) -> Engine:
    """An engine on a PostgreSQL URL; pooled connections idle for a while are tested first."""
    kwargs.setdefault("connect_args", {"connect_timeout": 3})
    kwargs.setdefault("hide_parameters", True)  # a failed statement's values stay out of logs
    engine = create_engine(url, **kwargs)
    _ping_after_idle(engine, PING_AFTER_IDLE_S)
    return engine


def libpq_conninfo(url: str) -> str:
    """A SQLAlchemy database URL as libpq takes it (no driver suffix), for a raw psycopg
    connection such as one that LISTENs."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# A pooled connection idle for longer than this is tested before it is handed out.
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


class Database:
    """An engine and its session factory, built once per process from settings."""

    def __init__(self, url: str, **engine_kwargs: object):
        self.engine = make_engine(url, **engine_kwargs)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on error; then what was
        asked for with :func:`after_commit` runs."""
        with self.session() as session, session.begin():
            yield session
        _run_after_commit(session)  # its connection back in the pool: this may take one

    @contextmanager
    def autocommit(self) -> Iterator[Session]:
        """A session in which each statement commits on its own, for work that is a single
        statement (or several, each whole by itself): no ``BEGIN`` and ``COMMIT`` round trips
        around it, two of an article creation's three. What was asked for with
        :func:`after_commit` runs at the end, also after an error: what ran has committed."""
        session = self.session(bind=self._autocommit)
        try:
            with session:
                yield session
        finally:
            _run_after_commit(session)

    def dispose(self) -> None:
        self.engine.dispose()


AFTER_COMMIT = "pressroom.after_commit"  # session.info: {key: callback}


def after_commit(
    session: Session, callback: Callable[[], object], key: Hashable | None = None
) -> None:
    """Run ``callback`` once the transaction of a :meth:`Database.transaction` (or the
    statements of a :meth:`Database.autocommit`) session has committed, never if it rolls
    back; once per ``key`` (the callback itself by default) however often it is asked."""
    session.info.setdefault(AFTER_COMMIT, {}).setdefault(callback if key is None else key, callback)


def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(AFTER_COMMIT, {}).values():
        try:
            callback()
        except Exception:  # the rows are committed: whatever waits on them looks again later
            log.exception("after-commit work failed; left to the periodic jobs")


def analyze(db: Database, *tables: str) -> None:
    """On PostgreSQL, refresh the planner's statistics of tables a bulk writer has just grown.

    Autovacuum gets round to it within a minute or so; until then a table that went from
    empty to 300,000 rows is planned as if it held a few: the relay's lookup of each
    article's oldest pending event scanned the whole backlog, 0.8 s a batch instead of 1 ms.
    """
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE {', '.join(tables)}")
