"""Atom feeds of the newest published articles (never archived, retracted or drafts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from feedgen.ext.base import BaseEntryExtension
from feedgen.feed import FeedGenerator
from feedgen.util import xml_elem

from services.publisher.pages.media import video_type
from shared.models import Article
from shared.text import xml_safe

FEED_SIZE = 50


class VideoLink(BaseEntryExtension):
    """An entry's video as ``<link rel="enclosure">``. feedgen 1.0 writes only the ``href`` of
    an entry's links (python-feedgen#135), which would make the enclosure a second
    alternate; this writes the link whole."""

    def __init__(self) -> None:
        self.attributes: dict[str, str] = {}

    def extend_atom(self, entry: Any) -> Any:
        if self.attributes:
            xml_elem("link", entry, **self.attributes)
        return entry


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
        # A video is a large file a reader's app may fetch (RFC 4287 4.2.7.2); a picture is not.
        if kind := video_type(article.media):
            entry.register_extension("video", VideoLink, atom=True, rss=False)
            entry.video.attributes = {"rel": "enclosure", "href": article.media, "type": kind}
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
