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
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    cast,
    column,
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
from sqlalchemy.sql.selectable import TableValuedAlias

from shared import events
from shared.config import Settings
from shared.db import (
    Database,
    UTCDateTime,
    analyze,
    is_postgres,
    new_id,
    utcnow,
)
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.models import ArticleStatus as S

AGED = "aged"
ARTICLES: Table = Article.__table__  # type: ignore[assignment]
HISTORY: Table = ArticleHistory.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
SWEEPER = "archiver:sweep"
# On PostgreSQL the outbox's statistics are refreshed once the sweep has written this many
# events, then each time it has written four times as many as at the last refresh.
ANALYZE_FIRST = 2_000


def due_for_archiving(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """SQL condition: published articles whose archive date has come."""
    return or_(due_by_own_date(now), due_by_age(settings, now))


def due_by_own_date(now: datetime) -> ColumnElement[bool]:
    """Published articles whose own ``archive_after`` has come."""
    return and_(
        Article.status == S.PUBLISHED,
        Article.evergreen.is_(False),
        Article.archive_after.is_not(None),
        Article.archive_after <= now,
    )


def due_by_age(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """Published articles without a date of their own, older than their section's age.

    Bounded by the latest of the sections' cutoffs as well, so a walk of the
    (status, published_at) index stops there: without the bound, the chunk that found the
    last due stories went on through every younger one (a million rows, a third of a second
    holding SQLite's write lock, twice a sweep).
    """
    rules: list[ColumnElement[bool]] = []
    cutoffs: list[datetime] = []
    for section, days in settings.archive_policy.items():
        if days is not None:
            cutoffs.append(now - timedelta(days=days))
            rules.append(and_(Article.section == section, Article.published_at <= cutoffs[-1]))
    listed = list(settings.archive_policy)
    elsewhere = or_(Article.section.is_(None), Article.section.not_in(listed)) if listed else true()
    cutoffs.append(now - timedelta(days=settings.archive_after_days))
    rules.append(and_(elsewhere, Article.published_at <= cutoffs[-1]))
    return and_(
        Article.status == S.PUBLISHED,
        Article.evergreen.is_(False),
        Article.archive_after.is_(None),
        Article.published_at.is_not(None),
        Article.published_at <= max(cutoffs),
        or_(*rules),
    )


class ChunkStatements:
    """The sweep's statements, built once per sweep; a chunk binds only its size and ids.

    Set-based: a chunk's ids are picked once, then one UPDATE and two INSERT ... SELECT
    statements (on PostgreSQL, one statement of the three) archive, audit and announce the
    whole chunk inside the database. Building
    rows in Python and sending them back cost more than everything else together; building
    the statements again for every chunk cost a tenth of a SQLite sweep.
    """

    def __init__(self, dialect: str, settings: Settings, now: datetime):
        # Two walks of an index each, oldest first: a union would do no better, and on
        # PostgreSQL it cannot lock its rows.
        self.picks = [
            select(ARTICLES.c.id).where(due).order_by(oldest).limit(bindparam("limit"))
            for due, oldest in (
                (due_by_age(settings, now), ARTICLES.c.published_at),
                (due_by_own_date(now), ARTICLES.c.archive_after),
            )
        ]
        if dialect == "postgresql":
            self.picks = [pick.with_for_update(skip_locked=True) for pick in self.picks]
        # By primary key alone: the rows were picked in this transaction and are ours (the
        # write lock on SQLite, FOR UPDATE on PostgreSQL). A status test here made SQLite
        # walk the status index instead of the key, a tenth of a second per chunk.
        in_chunk: ColumnElement[bool] = ARTICLES.c.id.in_(_json_values(dialect, "chunk"))
        archive = (
            update(ARTICLES)
            .where(in_chunk)
            .values(
                status=S.ARCHIVED,
                archived_at=now,
                archive_reason=AGED,
                version=ARTICLES.c.version + 1,
                updated_at=now,
            )
        )
        # The history and outbox rows read the archived rows: on PostgreSQL straight from
        # the UPDATE's RETURNING, all three in one statement (8 % faster than probing
        # ``articles`` again for each INSERT); SQLite has no data-modifying CTEs.
        archived: Any = ARTICLES
        if dialect == "postgresql":
            archived, in_chunk = archive.returning(*ARTICLES.c).cte("archived"), true()
        audit = insert(HISTORY).from_select(
            ["article_id", "actor", "at", "from_status", "to_status", "reason"],
            select(
                archived.c.id,
                literal(SWEEPER),
                literal(now, UTCDateTime),
                literal(S.PUBLISHED.value),
                literal(S.ARCHIVED.value),
                literal(AGED),
            ).where(in_chunk),
        )
        # [article id, event id] pairs, in the chunk's order: event ids are made in Python
        # like every other event's (time-ordered, so the outbox's event_id index grows at
        # its right edge). Drawing them in SQL cost an eighth of a SQLite sweep.
        pairs = _json_pairs(dialect, "events")
        event_id = pairs.c.value[1].as_string()
        announce = insert(OUTBOX).from_select(
            ["event_id", "type", "article_id", "envelope", "created_at", "attempts"],
            select(
                event_id,
                literal(events.ARTICLE_ARCHIVED),
                archived.c.id,
                archived_envelope(dialect, archived.c, event_id, now),
                literal(now, UTCDateTime),
                literal(0),
            )
            .select_from(pairs.join(archived, archived.c.id == pairs.c.value[0].as_string()))
            .order_by(pairs.c.key),
        )
        self.steps: list[Any] = [archive, audit, announce]
        if dialect == "postgresql":
            audited = audit.cte("audit")
            self.steps = [
                announce.add_cte(archived, nest_here=True).add_cte(audited, nest_here=True)
            ]

    def archive_chunk(self, session: Session, limit: int) -> int:
        """Archive up to ``limit`` due articles in the session's transaction; returns how
        many."""
        connection = session.connection()
        ids: list[str] = []
        for pick in self.picks:
            if len(ids) < limit:
                ids += connection.execute(pick, {"limit": limit - len(ids)}).scalars()
        if not ids:
            return 0
        chunk = {"chunk": list(ids), "events": [[id_, new_id()] for id_ in ids]}
        for step in self.steps:
            connection.execute(step, chunk)
        return len(ids)


def _json_values(dialect: str, name: str) -> Select[tuple[Any]]:
    """The strings of a JSON array parameter as a subquery: one bind, not thousands."""
    each = func.json_array_elements_text if dialect == "postgresql" else func.json_each
    return select(each(bindparam(name, type_=JSON)).table_valued("value").c.value)


def _json_pairs(dialect: str, name: str) -> TableValuedAlias:
    """The elements of a JSON array parameter as rows of (``key``: its position, ``value``)."""
    value = column("value", JSON)
    if dialect == "postgresql":
        elements = func.json_array_elements(bindparam(name, type_=JSON))
        return elements.table_valued(value, with_ordinality="key").render_derived()
    return func.json_each(bindparam(name, type_=JSON)).table_valued(column("key", Integer), value)


def archived_envelope(
    dialect: str, row: Any, event_id: ColumnElement[str], now: datetime
) -> ColumnElement[Any]:
    """The ``article.archived`` envelope built in SQL from an archived row's columns
    (``row.slug``, ...) and its event id.

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
        utc = func.timezone("UTC", row.published_at)
        published_at = func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    else:  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
        published_at = func.replace(row.published_at, " ", "T", type_=String) + "+00:00"
    data = {
        "schema_version": const(events.DATA_VERSION),
        "article_id": row.id,
        "version": row.version,
        "slug": row.slug,
        "title": row.title,
        "summary": func.coalesce(row.summary, ""),
        "section": row.section,
        "tags": json_list(row.tags),
        "authors": json_list(row.authors),
        "status": row.status,
        "published_at": published_at,
        "reason": const(AGED),
        "origin": const("sweep"),
    }
    envelope = {
        "specversion": const(events.SPECVERSION),
        "id": event_id,
        "source": const(events.SOURCE),
        "type": const(events.ARTICLE_ARCHIVED),
        "subject": row.id,
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
    statements = ChunkStatements(db.engine.dialect.name, settings, now or utcnow())
    if not is_postgres(db.engine):
        pace = Pace(settings.archive_sweep_chunk, settings.archive_sweep_chunk_ms / 1000)
        try:
            return _sweep_chunks(db, statements, pace, on_chunk)
        finally:  # what it archived is in the database file, not only in the WAL
            if db.checkpoints is not None:
                db.checkpoints.catch_up()
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
        return _sweep_chunks(db, statements, Pace(settings.archive_sweep_chunk, None), report)

    workers = max(1, settings.archive_sweep_workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="archive-sweep") as pool:
        return sum(pool.map(one_worker, range(workers)))


def _sweep_chunks(
    db: Database,
    statements: ChunkStatements,
    pace: Pace,
    on_chunk: Callable[[int], None] | None,
) -> int:
    total = 0
    while True:
        started = time.monotonic()
        with db.transaction() as session:
            done = statements.archive_chunk(session, pace.size)
        if not done:
            return total
        held = time.monotonic() - started  # the write lock's time, not the checkpoint's
        total += done
        if on_chunk is not None:
            on_chunk(done)
        time.sleep(pace.after(done, held))
