"""The article aggregate: the story itself and the audit trail of its status changes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, UTCDateTime, new_id, utcnow

MEDIA_MAX = 2000  # characters of a media URL


class ArticleStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    PUBLISHED = "published"
    ARCHIVED = "archived"
    RETRACTED = "retracted"


PUBLISHED = "status = 'published'"
IMPORTED = "import_key IS NOT NULL"
# Stories an editor is still working on, or has pulled: few, and never on a public page.
UNLISTED = (ArticleStatus.DRAFT, ArticleStatus.SCHEDULED, ArticleStatus.RETRACTED)
IS_UNLISTED = " OR ".join(f"status = '{s.value}'" for s in UNLISTED)


def _where(predicate: str) -> dict[str, Any]:
    """A partial index's predicate."""
    return {"postgresql_where": text(predicate)}


def has_status(status: ArticleStatus) -> ColumnElement[bool]:
    """``status = 'published'``, with the value written into the statement: a partial index
    on those rows serves a query only if the planner can see the value, and PostgreSQL's
    generic plans (psycopg prepares a statement run five times) have only a parameter."""
    return Article.status == literal(status.value, literal_execute=True)


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    section: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    authors: Mapped[list[str]] = mapped_column(JSON, default=list)
    media: Mapped[str | None] = mapped_column(String(MEDIA_MAX))
    status: Mapped[str] = mapped_column(String(16), default=ArticleStatus.DRAFT)
    publish_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archive_reason: Mapped[str | None] = mapped_column(String(500))
    archive_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    evergreen: Mapped[bool] = mapped_column(Boolean, default=False)
    # An editor's say over the "Also read" list: shown first in this order / never shown.
    related_pinned: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    related_excluded: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An imported story's key in its file (a digest of its id, or of its title and date):
    # a rerun of the import skips what it already brought in.
    import_key: Mapped[str | None] = mapped_column(String(64))

    # Each index that holds ``status`` takes a new entry whenever a story changes status,
    # and on PostgreSQL an archived story's new row version enters every index whose
    # predicate it meets. So the indexes on published stories hold published stories
    # alone: archiving one writes only the key, slug and creation entries. A query that
    # should use one says ``status = 'published'`` in its text (:func:`has_status`).
    __table_args__ = (
        # Feeds (newest first) and the archive sweep (oldest first, by age).
        Index("ix_articles_published", "published_at", "id", **_where(PUBLISHED)),
        # A section's feed.
        Index(
            "ix_articles_section_published_at", "section", "published_at", "id", **_where(PUBLISHED)
        ),
        # The sweep's other walk: published stories with an archive date of their own.
        Index(
            "ix_articles_due_own_date",
            "archive_after",
            **_where(f"{PUBLISHED} AND archive_after IS NOT NULL"),
        ),
        # The editors' list, newest first, and its cursor.
        Index("ix_articles_created_at", "created_at", "id"),
        # The same filtered to drafts, scheduled or retracted stories, and beat's
        # publish-due. Published and archived stories are most of the table: the walk
        # above finds them quickly, and archiving a story writes no entry here.
        Index("ix_articles_unlisted", "status", "created_at", "id", **_where(IS_UNLISTED)),
        # Imported stories by their key in the file; the API's own stories have none.
        Index(
            "ix_articles_import_key",
            "import_key",
            unique=True,
            **_where(IMPORTED),
        ),
    )

    def snapshot(self) -> dict[str, Any]:
        """What consumers need to know about the article, as plain JSON values."""
        return event_data(self)


class ArticleSearch(Base):
    """What the editors' text search (``?q=``) looks in, a row per article: the headline
    weighs most, then the summary, then the body (HTML, whose tags the parser reads as tags
    and no dictionary indexes), with the ``english`` configuration every PostgreSQL has.

    Kept by triggers on ``articles`` (migration 0190), on insert and on an edit of the
    title, summary or body, so a status change (archiving) leaves it alone; nothing of
    ours writes it."""

    __tablename__ = "article_search"

    article_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True
    )
    document: Mapped[Any] = mapped_column(TSVECTOR)

    __table_args__ = (Index("ix_article_search_document", "document", postgresql_using="gin"),)


def event_data(article: Any, **overrides: Any) -> dict[str, Any]:
    """The ``data`` of an article event, from an Article or a row with the same columns."""
    published_at = article.published_at
    data = {
        "article_id": article.id,
        "version": article.version,
        "slug": article.slug,
        "title": article.title,
        "summary": article.summary,
        "section": article.section,
        "tags": list(article.tags or []),
        "authors": list(article.authors or []),
        "status": article.status,
        "published_at": published_at.isoformat() if published_at else None,
    }
    data.update(overrides)
    return data


class ArticleHistory(Base):
    """One row per status change: who, when, from, to, why.

    Append-only, and without a foreign key to ``articles``: the trail is only ever written
    in the transaction that changes its article, nothing deletes articles, and an audit
    trail should outlive what it audits rather than be cascaded away with it. The key's
    check cost each archived story an index probe, an eighth of a PostgreSQL sweep.
    """

    __tablename__ = "article_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    article_id: Mapped[str] = mapped_column(String(36), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(500))
