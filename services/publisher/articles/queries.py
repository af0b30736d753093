"""Reading articles back: filters, cursor pages, the event and history views."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Select, func, literal_column, select, text, tuple_
from sqlalchemy.orm import Session

from shared.bus import ROUTES
from shared.models import (
    Article,
    ArticleHistory,
    ArticleSearch,
    ArticleStatus,
    ConsumedEvent,
    OutboxEvent,
    has_status,
)
from shared.text import in_range, storable


class BadCursor(ValueError):
    pass


def encode_cursor(article: Article, rank: float | None = None) -> str:
    raw = f"{article.created_at.isoformat()}|{article.id}"
    if rank is not None:  # a search's page: the next one starts below this rank
        raw += f"|{rank!r}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, float | None]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, article_id, *rank = raw.split("|")
        if len(rank) > 1:
            raise ValueError(raw)
        return (
            in_range(datetime.fromisoformat(when)),
            storable(article_id),
            float(rank[0]) if rank else None,
        )
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor(cursor) from None


def has_tag(tag: str) -> Any:
    return text("CAST(articles.tags AS jsonb) ? :tag").bindparams(tag=tag)


def _search(words: str) -> tuple[ColumnElement[bool], ColumnElement[float]]:
    """Whether an article matches the words (as a web search reads them: "quoted phrase",
    or, -not) and how well. Words that hold no lexeme (``%``, ``_``, ``the``) match
    nothing; they are not LIKE patterns."""
    document = ArticleSearch.document
    query = func.websearch_to_tsquery(literal_column("'english'::regconfig"), words)
    return document.op("@@")(query), func.ts_rank(document, query, type_=Float)


def list_articles(session: Session, args: dict[str, Any]) -> tuple[list[Article], str | None]:
    """Newest first; with ``q``, best match first (then newest)."""
    rank: ColumnElement[float] | None = None
    query: Select[Any] = select(Article)
    if args.get("status"):
        query = query.where(has_status(ArticleStatus(args["status"])))
    if args.get("section"):
        query = query.where(Article.section == args["section"])
    if args.get("tag"):
        query = query.where(has_tag(args["tag"]))
    if args.get("q"):
        matches, rank = _search(args["q"])
        query = query.join(ArticleSearch, ArticleSearch.article_id == Article.id)
        query = query.add_columns(rank).where(matches)
    if args.get("cursor"):
        created, article_id, after_rank = decode_cursor(args["cursor"])
        if (rank is None) != (after_rank is None):  # a search's cursor on a list, or back
            raise BadCursor(args["cursor"])
        # A row-value comparison is one range on the (created_at, id) index; the same test
        # spelt with OR walked the index from the newest article down to the cursor.
        if rank is None:
            query = query.where(tuple_(Article.created_at, Article.id) < (created, article_id))
        else:
            after = (after_rank, created, article_id)
            query = query.where(tuple_(rank, Article.created_at, Article.id) < after)
    order: list[ColumnElement[Any]] = [Article.created_at.desc(), Article.id.desc()]
    if rank is not None:
        order.insert(0, rank.desc())
    limit = args["limit"]
    rows = list(session.execute(query.order_by(*order).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last[0], last[1] if rank is not None else None)
    return [row[0] for row in rows[:limit]], next_cursor


def event_view(session: Session, article_id: str) -> list[dict[str, Any]]:
    """Each event of the article with, per subscribed consumer, when it was consumed."""
    rows = session.scalars(
        select(OutboxEvent)
        .where(OutboxEvent.article_id == article_id)
        .order_by(OutboxEvent.position)
    ).all()
    consumed: dict[tuple[str, str], datetime] = {
        (c.event_id, c.consumer): c.consumed_at
        for c in session.scalars(
            select(ConsumedEvent).where(ConsumedEvent.event_id.in_([r.event_id for r in rows]))
        )
    }
    return [
        {
            "id": row.event_id,
            "type": row.type,
            "version": row.data["version"],
            "time": row.created_at,
            "relayed_at": row.relayed_at,
            "consumers": [
                {"consumer": name, "consumed_at": consumed.get((row.event_id, name))}
                for name in ROUTES.get(row.type, ())
            ],
        }
        for row in rows
    ]


def history(session: Session, article_id: str) -> list[ArticleHistory]:
    return list(
        session.scalars(
            select(ArticleHistory)
            .where(ArticleHistory.article_id == article_id)
            .order_by(ArticleHistory.id)
        )
    )
