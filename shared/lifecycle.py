"""Status changes of an article: each one checked, audited and announced in one transaction.

Every part of Pressroom that moves an article (the API, the scheduler, the archive sweep)
goes through :func:`transition`, so the history and the outbox can never disagree with the
article's status.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from shared import bus, events
from shared.db import utcnow
from shared.errors import InvalidTransition
from shared.models import Article, ArticleHistory, has_status
from shared.models import ArticleStatus as S

ALLOWED: dict[str, set[str]] = {
    S.DRAFT: {S.SCHEDULED, S.PUBLISHED},
    S.SCHEDULED: {S.DRAFT, S.PUBLISHED},
    S.PUBLISHED: {S.ARCHIVED, S.RETRACTED},
    S.ARCHIVED: {S.PUBLISHED, S.RETRACTED},
    S.RETRACTED: set(),
}

EVENT_OF: dict[tuple[str, str], str | None] = {
    (S.DRAFT, S.PUBLISHED): events.ARTICLE_PUBLISHED,
    (S.SCHEDULED, S.PUBLISHED): events.ARTICLE_PUBLISHED,
    (S.PUBLISHED, S.ARCHIVED): events.ARTICLE_ARCHIVED,
    (S.ARCHIVED, S.PUBLISHED): events.ARTICLE_UNARCHIVED,
    (S.PUBLISHED, S.RETRACTED): events.ARTICLE_RETRACTED,
    (S.ARCHIVED, S.RETRACTED): events.ARTICLE_RETRACTED,
}


# Core, as the outbox's (shared.bus.emit): an audit row is only ever appended.
_WRITE_HISTORY = insert(ArticleHistory)


def record(
    session: Session, article: Article, from_status: str | None, actor: str, reason: str | None
) -> None:
    if article.id is None:
        session.flush()  # a new article gets its id at flush
    session.connection().execute(_WRITE_HISTORY, history_row(article, from_status, actor, reason))


def history_row(
    article: Article, from_status: str | None, actor: str, reason: str | None
) -> dict[str, Any]:
    """The audit row of a change of ``article`` (for a caller that writes it itself)."""
    return {
        "article_id": article.id,
        "actor": actor,
        "at": article.updated_at,
        "from_status": from_status,
        "to_status": article.status,
        "reason": reason,
    }


def touch(article: Article, now: datetime | None = None) -> None:
    article.version = (article.version or 0) + 1
    article.updated_at = now or utcnow()


def transition(
    session: Session,
    article: Article,
    to: str,
    *,
    actor: str,
    reason: str | None = None,
    now: datetime | None = None,
    origin: str = "api",
) -> None:
    """Move ``article`` to status ``to``, audit it and write its event to the outbox."""
    current = article.status
    if to not in ALLOWED[current]:
        raise InvalidTransition(current, to)
    now = now or utcnow()
    article.status = to
    if to == S.PUBLISHED and current in (S.DRAFT, S.SCHEDULED):
        article.published_at = article.published_at or now
        article.publish_at = None
    elif to == S.ARCHIVED:
        article.archived_at = now
        article.archive_reason = reason
    elif current == S.ARCHIVED and to == S.PUBLISHED:
        article.archived_at = None
        article.archive_reason = None
    touch(article, now)
    record(session, article, current, actor, reason)
    event_type = EVENT_OF.get((current, to))
    if event_type:
        announce(session, article, event_type, reason=reason, origin=origin)


def announce(
    session: Session,
    article: Article,
    event_type: str,
    *,
    reason: str | None = None,
    origin: str = "api",
    correction: str | None = None,
) -> None:
    if article.id is None or article.version is None:
        session.flush()  # column defaults fill these in at flush; the snapshot needs them
    bus.emit(session, event_type, announcement(article, reason, origin, correction))


def announcement(
    article: Article, reason: str | None = None, origin: str = "api", correction: str | None = None
) -> dict[str, Any]:
    """The ``data`` of an event about ``article`` as it is now."""
    data = {**article.snapshot(), "reason": reason, "origin": origin}
    if correction:
        data["correction"] = correction
    return data


def publish_due(session: Session, now: datetime | None = None, limit: int = 200) -> list[str]:
    """Publish every scheduled article whose time has come; returns their ids.

    Safe to run from several relays at once: rows held by another are skipped, and a
    published article is no longer ``scheduled``, so it is never published twice.
    """
    now = now or utcnow()
    query = (
        select(Article)
        .where(has_status(S.SCHEDULED), Article.publish_at <= now)
        .order_by(Article.publish_at)
        .limit(limit)
    )
    due = session.scalars(query.with_for_update(skip_locked=True)).all()
    for article in due:
        transition(session, article, S.PUBLISHED, actor="scheduler", now=now)
    return [a.id for a in due]


def unarchive_until(age_days: int | None, now: datetime) -> datetime | None:
    """The new archive date of an unarchived story: a full age from now, so it stays up."""
    return None if age_days is None else now + timedelta(days=age_days)
