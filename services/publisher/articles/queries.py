"""Reading articles back: filters, cursor pages, the event and history views."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select, text, tuple_
from sqlalchemy.orm import Session

from shared.bus import ROUTES
from shared.models import (
    Article,
    ArticleHistory,
    ArticleStatus,
    ConsumedEvent,
    OutboxEvent,
    has_status,
)
from shared.text import in_range, storable


class BadCursor(ValueError):
    pass


def encode_cursor(article: Article) -> str:
    raw = f"{article.created_at.isoformat()}|{article.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, article_id = raw.partition("|")
        return in_range(datetime.fromisoformat(when)), storable(article_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor(cursor) from None


def _has_tag(tag: str) -> Any:
    return text("CAST(articles.tags AS jsonb) ? :tag").bindparams(tag=tag)


def list_articles(session: Session, args: dict[str, Any]) -> tuple[list[Article], str | None]:
    query: Select[tuple[Article]] = select(Article)
    if args.get("status"):
        query = query.where(has_status(ArticleStatus(args["status"])))
    if args.get("section"):
        query = query.where(Article.section == args["section"])
    if args.get("tag"):
        query = query.where(_has_tag(args["tag"]))
    if args.get("q"):
        pattern = f"%{args['q']}%"
        query = query.where(or_(Article.title.ilike(pattern), Article.summary.ilike(pattern)))
    if args.get("cursor"):
        created, article_id = decode_cursor(args["cursor"])
        # A row-value comparison is one range on the (created_at, id) index; the same test
        # spelt with OR walked the index from the newest article down to the cursor.
        query = query.where(tuple_(Article.created_at, Article.id) < tuple_(created, article_id))
    limit = args["limit"]
    rows: list[Article] = list(
        session.scalars(
            query.order_by(Article.created_at.desc(), Article.id.desc()).limit(limit + 1)
        )
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


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
