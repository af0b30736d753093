"""Article text on the way in: sanitised HTML bodies and unique slugs."""

from __future__ import annotations

import html
import re

import nh3
from slugify import slugify
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Article

ALLOWED_TAGS = {
    "p", "br", "hr", "h2", "h3", "h4", "blockquote", "ul", "ol", "li", "strong", "em", "b", "i",
    "u", "s", "sub", "sup", "a", "figure", "figcaption", "img", "code", "pre", "table", "thead",
    "tbody", "tr", "th", "td", "cite", "q", "abbr", "small", "span",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "abbr": {"title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
}
URL_SCHEMES = {"http", "https", "mailto"}
SLUG_MAX = 80


def sanitise_html(body: str) -> str:
    """Keep the markup an article needs; drop scripts, handlers and unsafe URLs."""
    return nh3.clean(
        body,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
    )


def paragraphs_to_html(text: str) -> str:
    """Plain text with blank lines between paragraphs, as HTML paragraphs."""
    parts = (p.strip() for p in re.split(r"\n\s*\n", text))
    return "".join(f"<p>{html.escape(p)}</p>" for p in parts if p)


def base_slug(title: str) -> str:
    return slugify(title, max_length=SLUG_MAX, word_boundary=True) or "article"


def unique_slug(session: Session, title: str) -> str:
    """A slug from the title, with -2, -3... when it is taken."""
    base = base_slug(title)
    if session.scalar(select(Article.id).where(Article.slug == base)) is None:
        return base  # the usual case: one lookup on the unique index
    taken = set(
        session.scalars(
            select(Article.slug).where((Article.slug == base) | Article.slug.like(f"{base}-%"))
        )
    )
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"
