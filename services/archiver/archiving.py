"""Taking aged stories out of circulation: the archive policy and the sweep.

An article is due when it is published, not evergreen, and either its own ``archive_after``
has passed or, without one, it was published longer ago than its section's age
(ARCHIVE_POLICY, else ARCHIVE_AFTER_DAYS).

The sweep works in chunks, each one short transaction that archives the chunk, audits it and
writes its ``article.archived`` events to the outbox. Killed half-way, it has lost nothing:
committed chunks are done, the open one rolled back, and the next sweep carries on. Two
sweeps at once never archive a story twice: on PostgreSQL each skips rows the other holds;
on SQLite each chunk holds the write lock; and only ``published`` rows are ever picked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, insert, or_, select, true, update
from sqlalchemy.orm import Session

from shared import events
from shared.config import Settings
from shared.db import Database, is_postgres, utcnow
from shared.events import make_envelope
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.models import ArticleStatus as S
from shared.models.article import event_data

AGED = "aged"
HISTORY: Table = ArticleHistory.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
SWEEPER = "archiver:sweep"


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


EVENT_COLUMNS = (
    Article.id, Article.slug, Article.title, Article.summary, Article.section, Article.tags,
    Article.authors, Article.status, Article.published_at, Article.version,
)  # fmt: skip


def archive_chunk(session: Session, settings: Settings, now: datetime, limit: int) -> int:
    """Archive up to ``limit`` due articles in the caller's transaction; returns how many."""
    query = (
        select(*EVENT_COLUMNS)
        .where(due_for_archiving(settings, now))
        .order_by(Article.published_at)
        .limit(limit)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    rows = session.execute(query).all()
    if not rows:
        return 0
    ids = [row.id for row in rows]
    session.execute(
        # By primary key alone: the rows were picked in this transaction and are ours (the
        # write lock on SQLite, FOR UPDATE on PostgreSQL). A status test here made SQLite
        # walk the status index instead of the key, a tenth of a second per chunk.
        update(Article)
        .where(Article.id.in_(ids))
        .values(
            status=S.ARCHIVED,
            archived_at=now,
            archive_reason=AGED,
            version=Article.version + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    # Core inserts (executemany) of the tables: the ORM's bulk path costs more than the rows.
    session.execute(insert(HISTORY), [_history(row.id, now) for row in rows])
    session.execute(insert(OUTBOX), [_event(row, now) for row in rows])
    return len(rows)


def _history(article_id: str, now: datetime) -> dict[str, Any]:
    return {
        "article_id": article_id,
        "actor": SWEEPER,
        "at": now,
        "from_status": S.PUBLISHED,
        "to_status": S.ARCHIVED,
        "reason": AGED,
    }


def _event(row: Any, now: datetime) -> dict[str, Any]:
    data = event_data(row, version=row.version + 1, status=S.ARCHIVED, reason=AGED, origin="sweep")
    envelope = make_envelope(events.ARTICLE_ARCHIVED, data)
    return {
        "event_id": envelope["id"],
        "type": events.ARTICLE_ARCHIVED,
        "article_id": row.id,
        "envelope": envelope,
        "created_at": now,
        "attempts": 0,
    }


def sweep(
    db: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Archive every due article, chunk by chunk; returns how many were archived."""
    now = now or utcnow()
    total = 0
    while True:
        with db.transaction() as session:
            done = archive_chunk(session, settings, now, settings.archive_sweep_chunk)
        if not done:
            return total
        total += done
        if on_chunk is not None:
            on_chunk(done)
