"""Taking aged stories out of circulation: the archive policy and the sweep.

An article is due when it is published, not evergreen, and either its own ``archive_after``
has passed or, without one, it was published longer ago than its section's age
(ARCHIVE_POLICY, else ARCHIVE_AFTER_DAYS).

The sweep works in chunks of ARCHIVE_SWEEP_CHUNK stories, each one short transaction
that archives the chunk, audits it and writes its ``article.archived`` events to the
outbox. Killed half-way, it has lost nothing: committed chunks are done, the open one
rolled back, and the next sweep carries on. Two sweeps at once never archive a story
twice: each skips rows the other holds, and only ``published`` rows are ever picked.
"""

from __future__ import annotations

import functools
import json
import operator
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.selectable import TableValuedAlias

from shared import bus, events
from shared.config import Settings
from shared.db import (
    Database,
    UTCDateTime,
    analyze,
    new_id,
    utcnow,
)
from shared.models import Article, ArticleHistory, OutboxEvent, has_status
from shared.models import ArticleStatus as S

AGED = "aged"
ARTICLES: Table = Article.__table__  # type: ignore[assignment]
HISTORY: Table = ArticleHistory.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
SWEEPER = "archiver:sweep"
# The outbox's statistics are refreshed once the sweep has written this many
# events, then each time it has written four times as many as at the last refresh.
ANALYZE_FIRST = 2_000


def due_for_archiving(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """SQL condition: published articles whose archive date has come."""
    return or_(due_by_own_date(now), due_by_age(settings, now))


def due_by_own_date(now: datetime) -> ColumnElement[bool]:
    """Published articles whose own ``archive_after`` has come."""
    return and_(
        has_status(S.PUBLISHED),
        Article.evergreen.is_(False),
        Article.archive_after.is_not(None),
        Article.archive_after <= now,
    )


def due_by_age(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """Published articles without a date of their own, older than their section's age.

    Bounded by the latest of the sections' cutoffs as well, so a walk of the
    (status, published_at) index stops there: without the bound, the chunk that found the
    last due stories went on through every younger one (a million rows, twice a sweep).
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
        has_status(S.PUBLISHED),
        Article.evergreen.is_(False),
        Article.archive_after.is_(None),
        Article.published_at.is_not(None),
        Article.published_at <= max(cutoffs),
        or_(*rules),
    )


class ChunkStatements:
    """The sweep's statements, built once per sweep; a chunk binds only its size and ids.

    Set-based: a chunk's ids are picked once, then one statement archives, audits and
    announces the whole chunk inside the database. Building rows in Python and sending
    them back cost more than everything else together.

    Event ids are made in Python like every other event's (time-ordered, so the outbox's
    event_id index grows at its right edge). They are bound with the chunk's article ids,
    in the chunk's order.
    """

    def __init__(self, settings: Settings, now: datetime):
        # Two walks of an index each, oldest first: a union would do no better, and it
        # cannot lock its rows. The walk by age resumes after the last story a chunk of
        # this sweep picked (``floor``): from the start, each chunk stepped over the index
        # entries of every story archived before it (dead until vacuumed), and picking
        # came to cost a third of a chunk.
        age_key = (ARTICLES.c.published_at, ARTICLES.c.id)
        self.by_age = (
            select(*age_key)
            .where(due_by_age(settings, now), tuple_(*age_key) > tuple_(*FLOOR))
            .order_by(*age_key)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self.by_own_date = (
            select(ARTICLES.c.id)
            .where(due_by_own_date(now))
            .order_by(ARTICLES.c.archive_after)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self.steps = _steps(now)
        self._floor = START
        self._floor_lock = threading.Lock()

    def rewind(self) -> None:
        """Walk by age from the start again, for the stories another transaction (an
        editor's, another sweep's) held while this sweep's walk went past them."""
        with self._floor_lock:
            self._floor = START

    def archive_chunk(self, session: Session, limit: int) -> int:
        """Archive up to ``limit`` due articles in the session's transaction; returns how
        many."""
        connection = session.connection()
        with self._floor_lock:
            after_at, after_id = self._floor
        by_age = connection.execute(
            self.by_age, {"limit": limit, "after_at": after_at, "after_id": after_id}
        ).all()
        if by_age:
            with self._floor_lock:
                self._floor = max(self._floor, tuple(by_age[-1]))
        picked = [id_ for _, id_ in by_age]
        if len(picked) < limit:
            picked += connection.scalars(self.by_own_date, {"limit": limit - len(picked)}).all()
        if not picked:
            return 0
        # [article id, event id] for each, serialised once
        chunk = {"chunk": json.dumps([[id_, new_id()] for id_ in picked])}
        for step in self.steps:
            connection.execute(step, chunk)
        bus.wake_relays(session)
        return len(picked)


# Where the walk by age starts: before every (published_at, id).
START: tuple[datetime, str] = (datetime(1, 1, 1, tzinfo=UTC), "")
FLOOR = (bindparam("after_at", type_=UTCDateTime), bindparam("after_id", type_=Text))


# What the data of an ``article.archived`` event reads of its article.
DATA_COLUMNS = (
    "id",
    "version",
    "slug",
    "title",
    "summary",
    "section",
    "tags",
    "authors",
    "status",
    "published_at",
)


def _steps(now: datetime) -> list[Executable]:
    """One statement: the UPDATE RETURNs what the history and outbox INSERTs read, as
    data-modifying CTEs (8 % faster than probing ``articles`` again for each INSERT), each
    row with its event id and place in the chunk."""
    items = _chunk_items()
    chunk = select(
        items.c.value[0].as_string().label("article_id"),
        items.c.value[1].as_string().label("event_id"),
        items.c.key.label("position"),
    ).subquery("chunk")
    archived = (
        _archive(now)
        .where(ARTICLES.c.id == chunk.c.article_id)
        .returning(*(ARTICLES.c[name] for name in DATA_COLUMNS), chunk.c.event_id, chunk.c.position)
        .cte("archived")
    )
    audit = _audit(select(archived.c.id), now).cte("audit")
    announce = _announce(
        select(archived.c.event_id, archived.c.id, _data_text(archived.c)).order_by(
            archived.c.position
        ),
        now,
    )
    return [announce.add_cte(archived, nest_here=True).add_cte(audit, nest_here=True)]


def _chunk_items() -> TableValuedAlias:
    """The chunk's items, bound as one JSON array, as rows of (``key``: the place in the
    chunk, ``value``: the item). One parameter, not thousands, serialised once by C on our
    side for every statement of the chunk (psycopg dumps an array element by element in
    Python, two fifths of the sweeping process's time; SQLAlchemy's JSON type would dump
    it again for each statement)."""
    chunk, value = bindparam("chunk", type_=Text), column("value", JSON)
    elements = func.json_array_elements(cast(chunk, JSON))
    return elements.table_valued(value, with_ordinality="key").render_derived()


def _archive(now: datetime) -> Update:
    return update(ARTICLES).values(
        status=S.ARCHIVED,
        archived_at=now,
        archive_reason=AGED,
        version=ARTICLES.c.version + 1,
        updated_at=now,
    )


def _audit(article_ids: Select[Any], now: datetime) -> Insert:
    """The audit rows of the articles ``article_ids`` selects."""
    (article_id,) = article_ids.selected_columns
    return insert(HISTORY).from_select(
        ["article_id", "actor", "at", "from_status", "to_status", "reason"],
        article_ids.with_only_columns(
            article_id,
            literal(SWEEPER),
            literal(now, UTCDateTime),
            literal(S.PUBLISHED.value),
            literal(S.ARCHIVED.value),
            literal(AGED),
            maintain_column_froms=True,
        ),
    )


def _announce(rows: Select[Any], now: datetime) -> Insert:
    """The outbox rows of ``rows``: (event id, article id, data), made at ``now``."""
    event_id, article_id, data = rows.selected_columns
    return insert(OUTBOX).from_select(
        ["event_id", "type", "article_id", "data", "created_at", "attempts"],
        rows.with_only_columns(
            event_id,
            literal(events.ARTICLE_ARCHIVED),
            article_id,
            data,
            literal(now, UTCDateTime),
            literal(0),
            maintain_column_froms=True,
        ),
    )


def _data_fields(
    row: Any,
    published_at: ColumnElement[str],
    json_list: Callable[[Any], ColumnElement[Any]],
) -> dict[str, Any]:
    """The data of an archived row's ``article.archived`` event (``row.slug``, ...): SQL
    expressions and plain values. ``published_at`` is the row's date as an ISO 8601 string,
    ``json_list`` a JSON list column with NULL as []. The event's other attributes are the
    outbox row's columns (:func:`shared.events.envelope_of`).

    It must be what :func:`shared.events.make_envelope` with
    :func:`shared.models.article.event_data` builds in Python: a test builds both and
    compares them through :func:`shared.events.parse_envelope`.
    """
    return {
        "schema_version": events.DATA_VERSION,
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
        "reason": AGED,
        "origin": "sweep",
    }


def _data_text(row: Any) -> ColumnElement[Any]:
    """The data written out as JSON text, every value through ``to_json`` (a
    JSON value as it is), then cast to JSON.

    A third of the cost of ``json_build_object``, which on PostgreSQL 15 looks up the type
    of each argument on every row: that was a fifth of a chunk's time.
    """
    utc = func.timezone("UTC", row.published_at)
    fields = _data_fields(
        row,
        published_at=func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        json_list=lambda column: func.coalesce(column, cast("[]", JSON), type_=JSON),
    )
    parts: list[Any] = []
    for n, (key, value) in enumerate(fields.items()):
        parts.append(("{" if n == 0 else ",") + json.dumps(key) + ":")
        if isinstance(value, ColumnElement):
            as_json = value if isinstance(value.type, JSON) else func.to_json(value)
            parts.append(func.coalesce(cast(as_json, Text), "null"))
        else:
            parts.append(json.dumps(value))
    parts.append("}")
    pieces: list[Any] = []
    for part in parts:  # neighbouring constants as one: {"schema_version":1,"article_id":
        if isinstance(part, str) and pieces and isinstance(pieces[-1], str):
            pieces[-1] += part
        else:
            pieces.append(part)
    text = functools.reduce(
        operator.add, (literal(p, Text) if isinstance(p, str) else p for p in pieces)
    )
    return cast(text, JSON)


def sweep(
    db: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Archive every due article, chunk by chunk; returns how many were archived.

    ``ARCHIVE_SWEEP_WORKERS`` threads sweep side by side, each on its own
    connection: a chunk locks only its rows and the others skip them, and one backend runs
    one statement on one core, which at a million rows is what a lone sweep waits on.
    """
    statements = ChunkStatements(settings, now or utcnow())
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
        return _sweep_chunks(db, statements, settings.archive_sweep_chunk, report)

    workers = max(1, settings.archive_sweep_workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="archive-sweep") as pool:
        swept = sum(pool.map(one_worker, range(workers)))
    statements.rewind()  # once more from the start, for what was held as the walk went by
    return swept + one_worker(0)


def _sweep_chunks(
    db: Database,
    statements: ChunkStatements,
    chunk: int,
    on_chunk: Callable[[int], None] | None,
) -> int:
    total = 0
    while True:
        with db.transaction() as session:
            done = statements.archive_chunk(session, max(1, chunk))
        if not done:
            return total
        total += done
        if on_chunk is not None:
            on_chunk(done)
