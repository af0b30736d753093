"""Article text on the way in: sanitised HTML bodies and unique slugs."""

from __future__ import annotations

import functools
import html
import itertools
import re

import nh3
from slugify import slugify
from sqlalchemy import bindparam, select
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
SLUG_MAX = 80  # of a slug made from a title; an editor's own may be longer
SLUG_LIMIT = 200  # the column's size
SLUG_PROBE = 20  # slugs asked about at once when a title repeats
# Lowercase words joined by hyphens; a section is one such name of up to 64 characters.
# Anchored with \Z, not $: $ also matches before a trailing newline, which let "news\n"
# be stored beside "news" (escaping ARCHIVE_POLICY) and reach an ETag header (a 500).
SLUG_PATTERN = re.compile(r"\A[a-z0-9]+(?:-[a-z0-9]+)*\Z")
SECTION_PATTERN = re.compile(r"\A[a-z0-9][a-z0-9-]{0,63}\Z")


# Tags as nh3 writes them: attributes always double-quoted, with ``>`` and ``"`` escaped.
LINK = re.compile(r"<a(\s[^>]*)?>(.*?)</a>", re.DOTALL)
IMAGE = re.compile(r"<img(\s[^>]*)?>")
HAS_HREF = re.compile(r'\shref="')
HAS_ALT = re.compile(r'\salt="')
ATTRIBUTE_NAME = re.compile(r'\s([a-z-]+)="[^"]*"')
ANY_TAG = re.compile(r"<[^>]*>")


# The request's validation and its write sanitise the same body: the second is a lookup.
# A few entries cover the requests a process serves at once; bodies are at most 500 KB.
@functools.lru_cache(maxsize=8)
def sanitise_html(body: str) -> str:
    """Keep the markup an article needs; drop scripts, handlers and unsafe URLs.

    A link whose URL was dropped (``javascript:``) is left as its text, not an ``<a>``
    without ``href``; an image without ``alt`` gets ``alt=""`` (decorative), as HTML asks."""
    clean = nh3.clean(
        body,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
    )
    clean = LINK.sub(lambda m: m[0] if HAS_HREF.search(m[1] or "") else m[2], clean)
    return IMAGE.sub(
        lambda m: m[0] if HAS_ALT.search(m[1] or "") else f'<img alt=""{m[1] or ""}>', clean
    )


def shows_something(clean: str) -> bool:
    """Whether a sanitised body gives a reader anything: text other than spaces, or a
    picture. What is left of ``<script>...</script>`` or ``<p>&nbsp;</p>`` does not."""
    for image in IMAGE.finditer(clean):
        if "src" in ATTRIBUTE_NAME.findall(image[1] or ""):
            return True
    return bool(html.unescape(ANY_TAG.sub("", clean)).strip())


def paragraphs_to_html(text: str) -> str:
    """Plain text with blank lines between paragraphs, as HTML paragraphs."""
    parts = (p.strip() for p in re.split(r"\n\s*\n", text))
    return "".join(f"<p>{html.escape(p)}</p>" for p in parts if p)


def could_be_slug(text: str) -> bool:
    """Whether ``text`` has the shape of a slug (what a reader's URL must hold to be looked up)."""
    return len(text) <= SLUG_LIMIT and SLUG_PATTERN.match(text) is not None


def base_slug(title: str) -> str:
    return slugify(title, max_length=SLUG_MAX, word_boundary=True) or "article"


# Built once: SQLAlchemy works out a statement's cache key afresh for each new one.
_HOLDER = select(Article.id).where(Article.slug == bindparam("slug"))


def slug_holder(session: Session, slug: str) -> str | None:
    """The id of the article that has this slug, if one does."""
    return session.execute(_HOLDER, {"slug": slug}).scalar()


def next_free_slug(session: Session, base: str) -> str:
    """The first of ``base-2``, ``base-3``... that no article has, for a title whose own
    slug ``base`` is taken.

    Candidates are asked about ``SLUG_PROBE`` at a time by exact value, on the unique index.
    (Asking for ``slug LIKE 'base-%'`` instead scanned the whole table on PostgreSQL, whose
    index serves LIKE only under the C collation: 0.4 s for each repeated title among a
    million stories.)
    """
    for start in itertools.count(2, SLUG_PROBE):
        candidates = [f"{base}-{n}" for n in range(start, start + SLUG_PROBE)]
        taken = set(session.scalars(select(Article.slug).where(Article.slug.in_(candidates))))
        for candidate in candidates:
            if candidate not in taken:
                return candidate
    raise AssertionError("unreachable: the candidates never run out")
