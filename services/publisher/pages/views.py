"""Reader pages: the article (with the archived banner), the front page, section and tag
pages, and the Atom feeds."""

from __future__ import annotations

import hashlib
import html
import re
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, render_template, request
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from services.publisher.articles.queries import has_tag
from services.publisher.pages import feeds
from services.publisher.pages.media import video_type
from services.publisher.state import state
from shared.content import SECTION_PATTERN, could_be_slug, sanitise_html
from shared.models import Article, has_status
from shared.models import ArticleStatus as S
from shared.related_lists import list_of
from shared.text import tag_form

blp = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

CACHE_SECONDS = 60
PAGE_SIZE = 20
PAGE_NUMBER = re.compile(r"[1-9][0-9]{0,3}")  # ?page=1..9999; anything else is no page
TAGS = re.compile(r"<[^>]+>")


def _latest(
    section: str | None = None,
    tag: str | None = None,
    limit: int = feeds.FEED_SIZE,
    offset: int = 0,
) -> list[Article]:
    query = select(Article).where(has_status(S.PUBLISHED))
    if section is not None:
        query = query.where(Article.section == section)
    if tag is not None:
        query = query.where(has_tag(tag))
    query = query.order_by(Article.published_at.desc(), Article.id.desc())
    with state().db.session() as session:
        return list(session.scalars(query.limit(limit).offset(offset)))


@blp.app_template_filter("html_time")
def html_time(when: datetime) -> str:
    """A ``<time datetime>`` value: UTC to the second (HTML allows no microseconds)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _page_number() -> int:
    page = request.args.get("page", "1")
    if not PAGE_NUMBER.fullmatch(page):
        abort(404)
    return int(page)


def _listing(kind: str, heading: str, *, section: str | None = None, tag: str | None = None,
             feed: str | None = None) -> BaseResponse:  # fmt: skip
    """A page of the newest published stories (front, section or tag), with links to the
    pages before and after it."""
    page = _page_number()
    found = _latest(section, tag, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    articles = found[:PAGE_SIZE]
    if page > 1 and not articles:
        abort(404)
    html_page = render_template(
        "front.html",
        articles=articles,
        heading=heading,
        feed=feed,
        page=page,
        has_next=len(found) > PAGE_SIZE,
        path=request.path,
        base=state().settings.public_base_url,
        sections=sections_of(articles),
        ticked=[section] if section else [],
    )
    return _cacheable(Response(html_page), _listing_etag(f"{kind}-{page}", articles))


def latest_articles(section: str | None = None, limit: int = feeds.FEED_SIZE) -> list[Article]:
    """The newest published stories (of a section), for pages beyond the listings."""
    return _latest(section, limit=limit)


def sections_of(articles: list[Article]) -> list[str]:
    """The sections a subscribe form offers: those of the stories listed with it (the page's
    ETag covers them, so a cached page never offers a stale list)."""
    return sorted({article.section for article in articles if article.section})


def _listing_etag(kind: str, articles: list[Article]) -> str:
    """Changes when any listed story changes (its version) or the list itself does: a
    corrected headline or a retracted story must not be served from a cache."""
    digest = hashlib.blake2b(digest_size=12)
    for article in articles:
        digest.update(f"{article.id}:{article.version};".encode())
    return f"{kind}-{digest.hexdigest()}"


def _cacheable(response: Response, etag: str) -> BaseResponse:
    response.cache_control.public = True
    response.cache_control.max_age = CACHE_SECONDS
    response.set_etag(etag)
    return response.make_conditional(request)


def description(article: Article, length: int = 160) -> str:
    """The summary, or the body's opening words as text (the template escapes it once)."""
    text = article.summary or " ".join(html.unescape(TAGS.sub(" ", article.body or "")).split())
    return text if len(text) <= length else text[: length - 1].rsplit(" ", 1)[0] + "…"


def news_article(article: Article, base: str) -> dict[str, object]:
    """schema.org NewsArticle, for search engines and news readers (JSON-LD, data only)."""
    data: dict[str, object] = {
        "@context": "https://schema.org",
        "@type": "NewsArticle",
        "headline": article.title,
        "url": f"{base}/articles/{article.slug}",
        "dateModified": html_time(article.updated_at),
        "author": [{"@type": "Person", "name": name} for name in article.authors or []],
        "publisher": {"@type": "Organization", "name": "Pressroom", "url": f"{base}/"},
    }
    if article.published_at is not None:
        data["datePublished"] = html_time(article.published_at)
    if article.section:
        data["articleSection"] = article.section
    if article.tags:
        data["keywords"] = list(article.tags)
    if article.media:
        data["video" if video_type(article.media) else "image"] = article.media
    return data


@blp.get("/")
def front_page() -> BaseResponse:
    return _listing("front", "Latest news")


@blp.get("/sections/<section>")
def section_page(section: str) -> BaseResponse:
    if not SECTION_PATTERN.fullmatch(section):
        abort(404)
    feed = f"/sections/{section}/feed.xml"
    return _listing(f"section-{section}", section.capitalize(), section=section, feed=feed)


@blp.get("/tags/<tag>")
def tag_page(tag: str) -> BaseResponse:
    if len(tag) > 100 or tag_form(tag) != tag:
        abort(404)
    return _listing(f"tag-{tag}", f"Stories tagged {tag}", tag=tag)


@blp.get("/articles/<slug>")
def article_page(slug: str) -> BaseResponse:
    if not could_be_slug(slug):  # nothing to look up (and PostgreSQL refuses NUL in text)
        abort(404)
    with state().db.session() as session:
        article = session.scalar(select(Article).where(Article.slug == slug))
        related = list_of(session, article.id) if article is not None else []
    if article is None or article.status in (S.DRAFT, S.SCHEDULED):
        abort(404)
    if article.status == S.RETRACTED:
        page = render_template("retracted.html", article=article)
        return Response(page, status=410)
    page = render_template(
        "article.html",
        article=article,
        # cleaned on the way in; again on the way out
        body=with_also_read(sanitise_html(article.body or ""), related),
        description=description(article),
        base=state().settings.public_base_url,
        is_video=video_type(article.media) is not None,
        json_ld=news_article(article, state().settings.public_base_url),
        related=related[len(ALSO_READ_AFTER) :],
        sections=[article.section] if article.section else [],
        ticked=[article.section],
    )
    listed = ",".join(item["id"] for item in related)  # a new list is a new page
    tag = hashlib.blake2b(listed.encode(), digest_size=6).hexdigest()
    return _cacheable(Response(page), f"{article.id}-v{article.version}-{article.status}-{tag}")


ALSO_READ_AFTER = (2, 5)  # paragraphs after which an "Also read" link goes
ALSO_READ = Markup(
    '<p class="also-read-inline"><strong>Also read:</strong> <a href="/articles/{}">{}</a></p>'
)
PARAGRAPH_END = re.compile(r"</p>", re.IGNORECASE)


def with_also_read(body: str, related: list[dict[str, Any]]) -> Markup:
    """The body with "Also read: <title>" links after its 2nd and 5th paragraphs, as the
    page this was modelled on has them; a story too short for a place gets its link at the
    end."""
    shown = related[: len(ALSO_READ_AFTER)]
    links = [ALSO_READ.format(item["slug"], item["title"]) for item in shown]
    parts = PARAGRAPH_END.split(body)
    out, placed = [], 0
    for n, part in enumerate(parts):
        out.append(part)
        if n < len(parts) - 1:
            out.append("</p>")
            if placed < len(links) and n + 1 == ALSO_READ_AFTER[placed]:
                out.append(str(links[placed]))
                placed += 1
    out += [str(link) for link in links[placed:]]
    return Markup("".join(out))


@blp.get("/feed.xml")
def site_feed() -> BaseResponse:
    return _feed(None)


@blp.get("/sections/<section>/feed.xml")
def section_feed(section: str) -> BaseResponse:
    if not SECTION_PATTERN.fullmatch(section):
        abort(404)
    return _feed(section)


def _feed(section: str | None) -> BaseResponse:
    articles = _latest(section)
    base = state().settings.public_base_url
    # Atom ids are permanent (RFC 4287 4.2.6): from the configured address, never the
    # request's Host header or query string.
    self_url = f"{base}/sections/{section}/feed.xml" if section else f"{base}/feed.xml"
    xml = feeds.atom(articles, base, section, self_url)
    response = Response(xml, mimetype="application/atom+xml")
    return _cacheable(response, _listing_etag(f"feed-{section or ''}", articles))


@blp.errorhandler(HTTPException)
def page_error(error: HTTPException) -> tuple[str, int]:
    code = error.code or 500
    return render_template("error.html", code=code, name=error.name), code
