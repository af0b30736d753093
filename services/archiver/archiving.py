"""Taking aged stories out of circulation: the archive policy and the sweep.

An article is due when it is published, not evergreen, and either its own ``archive_after``
has passed or, without one, it was published longer ago than its section's age
(ARCHIVE_POLICY, else ARCHIVE_AFTER_DAYS).

The sweep works in chunks (see :class:`Pace` for their size), each one short transaction
that archives the chunk, audits it and writes its ``article.archived`` events to the
outbox. Killed half-way, it has lost nothing: committed chunks are done, the open one
rolled back, and the next sweep carries on. Two sweeps at once never archive a story
twice: on PostgreSQL each skips rows the other holds; on SQLite each chunk holds the
write lock; and only ``published`` rows are ever picked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Select,
    String,
    Table,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from shared import events
from shared.config import Settings
from shared.db import (
    Database,
    UTCDateTime,
    analyze,
    checkpoints_in_background,
    is_postgres,
    utcnow,
)
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.models import ArticleStatus as S

AGED = "aged"
HISTORY: Table = ArticleHistory.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
SWEEPER = "archiver:sweep"
# On PostgreSQL the outbox's statistics are refreshed once the sweep has written this many
# events, then each time it has written four times as many as at the last refresh.
ANALYZE_FIRST = 2_000


def due_for_archiving(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """SQL condition: published articles whose archive date has come."""
    own_date = and_(Article.archive_after.is_not(None), Article.archive_after <= now)
    by_age = [Article.archive_after.is_(None), Article.published_at.is_not(None)]
    rules: list[ColumnElement[bool]] = [own_date]
    for section, days in settings.archive_policy.items():
        if days is not None:
            cutoff = now - timedelta(days=days)
            rules.append(and_(*by_age, Article.section == section, Article.published_at <= cutoff))
    listed = list(settings.archive_policy)
    elsewhere = or_(Article.section.is_(None), Article.section.not_in(listed)) if listed else true()
    cutoff = now - timedelta(days=settings.archive_after_days)
    rules.append(and_(*by_age, elsewhere, Article.published_at <= cutoff))
    return and_(Article.status == S.PUBLISHED, Article.evergreen.is_(False), or_(*rules))


def archive_chunk(session: Session, settings: Settings, now: datetime, limit: int) -> int:
    """Archive up to ``limit`` due articles in the caller's transaction; returns how many.

    Set-based: the chunk's ids are picked once, then one UPDATE and two INSERT ... SELECT
    statements archive, audit and announce the whole chunk inside the database. Building
    rows in Python and sending them back cost more than everything else together.
    """
    picked = (
        select(Article.id)
        .where(due_for_archiving(settings, now))
        .order_by(Article.published_at)
        .limit(limit)
    )
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        picked = picked.with_for_update(skip_locked=True)
    ids = session.scalars(picked).all()
    if not ids:
        return 0
    in_chunk = Article.id.in_(_members(dialect, list(ids)))
    session.execute(
        # By primary key alone: the rows were picked in this transaction and are ours (the
        # write lock on SQLite, FOR UPDATE on PostgreSQL). A status test here made SQLite
        # walk the status index instead of the key, a tenth of a second per chunk.
        update(Article)
        .where(in_chunk)
        .values(
            status=S.ARCHIVED,
            archived_at=now,
            archive_reason=AGED,
            version=Article.version + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        insert(HISTORY).from_select(
            ["article_id", "actor", "at", "from_status", "to_status", "reason"],
            select(
                Article.id,
                literal(SWEEPER),
                literal(now, UTCDateTime),
                literal(S.PUBLISHED.value),
                literal(S.ARCHIVED.value),
                literal(AGED),
            ).where(in_chunk),
        )
    )
    # The event id is drawn once per row in a materialised CTE: both the column and the
    # envelope read it, and an inlined subquery would draw two different ids.
    drawn = (
        select(_time_ordered_uuid(dialect, utcnow()).label("event_id"), *ENVELOPE_COLUMNS)
        .where(in_chunk)
        .cte("drawn")
        .prefix_with("MATERIALIZED")
    )
    session.execute(
        insert(OUTBOX).from_select(
            ["event_id", "type", "article_id", "envelope", "created_at", "attempts"],
            select(
                drawn.c.event_id,
                literal(events.ARTICLE_ARCHIVED),
                drawn.c.id,
                archived_envelope(dialect, drawn, now),
                literal(now, UTCDateTime),
                literal(0),
            ).order_by(drawn.c.published_at),
        )
    )
    return len(ids)


def _members(dialect: str, ids: list[str]) -> Select[tuple[Any]]:
    """The chunk's ids as a subquery over one JSON parameter, not thousands of binds."""
    each = func.json_array_elements_text if dialect == "postgresql" else func.json_each
    return select(each(bindparam("chunk", ids, type_=JSON)).table_valued("value").c.value)


def _time_ordered_uuid(dialect: str, now: datetime) -> ColumnElement[str]:
    """A version-7 UUID (RFC 9562): 48 bits of Unix milliseconds, then random bits.

    The outbox's unique index on event_id then grows at its right edge, as its position
    index does, instead of taking each chunk's rows at random places all over a large index.
    """
    millis = f"{int(now.timestamp() * 1000):012x}"
    prefix = f"{millis[:8]}-{millis[8:]}-7"
    if dialect == "postgresql":
        # gen_random_uuid() is xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx: keep its last 22 chars
        random_tail = func.substr(cast(func.gen_random_uuid(), String), 16, type_=String)
        return literal(prefix, String) + random_tail

    def hex_(n: int) -> ColumnElement[str]:
        return func.lower(func.hex(func.randomblob(n)), type_=String)

    variant = func.substr("89ab", 1 + func.abs(func.random()) % 4, 1, type_=String)
    return (
        literal(prefix, String) + func.substr(hex_(2), 2, type_=String) + "-" + variant
        + func.substr(hex_(2), 2, type_=String) + "-" + hex_(6)
    )  # fmt: skip


ENVELOPE_COLUMNS = (
    Article.id, Article.slug, Article.title, Article.summary, Article.section, Article.tags,
    Article.authors, Article.status, Article.published_at, Article.version,
)  # fmt: skip


def archived_envelope(dialect: str, row: Any, now: datetime) -> ColumnElement[Any]:
    """The ``article.archived`` envelope built in SQL from an archived row's columns.

    It must be what :func:`shared.events.make_envelope` with
    :func:`shared.models.article.event_data` builds in Python: a test builds both and
    compares them through :func:`shared.events.parse_envelope`.
    """
    postgres = dialect == "postgresql"
    build = func.json_build_object if postgres else func.json_object

    def const(value: str | int) -> ColumnElement[Any]:
        # Inline, not bound: PostgreSQL cannot type a parameter given to json_build_object.
        return literal_column(str(value) if isinstance(value, int) else f"'{value}'")

    def json_list(column: Any) -> ColumnElement[Any]:
        return (
            func.coalesce(column, cast("[]", JSON))
            if postgres
            else func.json(func.coalesce(column, "[]"))
        )

    published_at: ColumnElement[str]
    if postgres:
        utc = func.timezone("UTC", row.c.published_at)
        published_at = func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    else:  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
        published_at = func.replace(row.c.published_at, " ", "T", type_=String) + "+00:00"
    data = {
        "schema_version": const(events.DATA_VERSION),
        "article_id": row.c.id,
        "version": row.c.version,
        "slug": row.c.slug,
        "title": row.c.title,
        "summary": func.coalesce(row.c.summary, ""),
        "section": row.c.section,
        "tags": json_list(row.c.tags),
        "authors": json_list(row.c.authors),
        "status": row.c.status,
        "published_at": published_at,
        "reason": const(AGED),
        "origin": const("sweep"),
    }
    envelope = {
        "specversion": const(events.SPECVERSION),
        "id": row.c.event_id,
        "source": const(events.SOURCE),
        "type": const(events.ARTICLE_ARCHIVED),
        "subject": row.c.id,
        "time": const(now.astimezone(UTC).isoformat()),
        "datacontenttype": const("application/json"),
        "dataschema": const(f"pressroom:{events.ARTICLE_ARCHIVED}/v{events.DATA_VERSION}"),
        "data": build(*_pairs(data, const)),
    }
    return build(*_pairs(envelope, const))


def _pairs(fields: dict[str, Any], const: Callable[[str], ColumnElement[Any]]) -> list[Any]:
    return [part for key, value in fields.items() for part in (const(key), value)]


class Pace:
    """How many rows the next chunk takes, and how long the sweep waits before taking it.

    On PostgreSQL a chunk locks only its own rows, so chunks are ``ceiling`` rows
    (ARCHIVE_SWEEP_CHUNK). On SQLite a chunk holds the database's only write lock, so
    chunks are sized to last about ``target`` seconds (ARCHIVE_SWEEP_CHUNK_MS), like
    pt-archiver's ``--chunk-time``: the size follows the measured rate, at most doubling
    per step, never above ``ceiling``. After each one the sweep steps aside for a tenth of
    the time it held the lock, so the writers queued behind it (shared.db.WriterQueue)
    get their turn before its next chunk.
    """

    def __init__(self, ceiling: int, target_seconds: float | None):
        self.ceiling = max(1, ceiling)
        self.target = target_seconds
        self.size = self.ceiling if target_seconds is None else min(self.ceiling, 500)

    def after(self, rows: int, seconds: float) -> float:
        """Record a chunk; returns how long to pause before the next one."""
        if self.target is None:
            return 0.0
        if rows >= self.size and seconds > 0:
            fitted = int(rows * self.target / seconds)
            self.size = max(1, min(self.ceiling, 2 * self.size, fitted))
        return seconds / 10


def sweep(
    db: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Archive every due article, chunk by chunk; returns how many were archived.

    On PostgreSQL ``ARCHIVE_SWEEP_WORKERS`` threads sweep side by side, each on its own
    connection: a chunk locks only its rows and the others skip them, and one backend runs
    one statement on one core, which at a million rows is what a lone sweep waits on.
    """
    now = now or utcnow()
    if not is_postgres(db.engine):
        pace = Pace(settings.archive_sweep_chunk, settings.archive_sweep_chunk_ms / 1000)
        with checkpoints_in_background(db) as (writer, committed):
            return _sweep_chunks(writer, settings, now, pace, on_chunk, committed)
    reported = threading.Lock()
    total, analyzed_at = 0, 0

    def report(rows: int) -> None:
        nonlocal total, analyzed_at
        with reported:
            total += rows
            stale = total >= max(ANALYZE_FIRST, 4 * analyzed_at)
            if stale:
                analyzed_at = total
            if on_chunk is not None:
                on_chunk(rows)
        if stale:  # the outbox has grown fourfold since: keep the relay's plans right
            analyze(db, "outbox")

    def one_worker(_: int) -> int:
        return _sweep_chunks(db, settings, now, Pace(settings.archive_sweep_chunk, None), report)

    workers = max(1, settings.archive_sweep_workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="archive-sweep") as pool:
        return sum(pool.map(one_worker, range(workers)))


def _sweep_chunks(
    db: Database,
    settings: Settings,
    now: datetime,
    pace: Pace,
    on_chunk: Callable[[int], None] | None,
    committed: Callable[[], None] | None = None,
) -> int:
    total = 0
    while True:
        started = time.monotonic()
        with db.transaction() as session:
            done = archive_chunk(session, settings, now, pace.size)
        if not done:
            return total
        held = time.monotonic() - started  # the write lock's time, not the checkpoint's
        if committed is not None:
            committed()
        total += done
        if on_chunk is not None:
            on_chunk(done)
        time.sleep(pace.after(done, held))
