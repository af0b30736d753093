"""Reading the stored "Also read" lists (the archiver writes them; pages and the API read)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Article, RelatedItem, has_status
from shared.models import ArticleStatus as S


def list_of(session: Session, article_id: str) -> list[dict[str, Any]]:
    """An article's list as readers get it, best first: only stories still published, so
    a story archived a moment ago is never linked while its backfill is on its way."""
    rows = session.execute(
        select(RelatedItem.related_id, RelatedItem.score, Article.slug, Article.title)
        .join(Article, Article.id == RelatedItem.related_id)
        .where(RelatedItem.article_id == article_id, has_status(S.PUBLISHED))
        .order_by(RelatedItem.rank)
    ).all()
    return [{"id": r.related_id, "slug": r.slug, "title": r.title, "score": r.score} for r in rows]
