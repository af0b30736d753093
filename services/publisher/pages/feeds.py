"""Atom feeds of the newest published articles (never archived, retracted or drafts)."""

from __future__ import annotations

from datetime import UTC, datetime

from feedgen.feed import FeedGenerator

from shared.models import Article
from shared.text import xml_safe

FEED_SIZE = 50


def atom(articles: list[Article], base: str, section: str | None, self_url: str) -> bytes:
    feed = FeedGenerator()
    title = f"Pressroom: {section}" if section else "Pressroom"
    feed.id(self_url)
    feed.title(title)
    feed.subtitle(f"The latest {section or ''} stories".replace("  ", " "))
    feed.author({"name": "Pressroom"})
    feed.link(href=f"{base}/", rel="alternate")
    feed.link(href=self_url, rel="self")
    feed.language("en")
    feed.updated(max((a.updated_at for a in articles), default=datetime.now(UTC)))
    for article in articles:
        entry = feed.add_entry(order="append")
        entry.id(f"urn:uuid:{article.id}")
        entry.title(xml_safe(article.title))
        entry.link(href=f"{base}/articles/{article.slug}")
        if article.published_at is not None:
            entry.published(article.published_at)
        entry.updated(article.updated_at)
        for name in article.authors or []:
            entry.author({"name": xml_safe(name)})
        if article.summary:
            entry.summary(xml_safe(article.summary))
        entry.content(xml_safe(article.body or ""), type="html")
        for tag in article.tags or []:
            entry.category(term=xml_safe(tag))
    result: bytes = feed.atom_str(pretty=True)
    return result
