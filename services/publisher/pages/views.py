"""Reader pages: the article (with the archived banner), the front page, and the Atom feeds."""

from __future__ import annotations

import hashlib
import html
import re

from flask import Blueprint, Response, abort, render_template, request
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from services.publisher.pages import feeds
from services.publisher.state import state
from shared.content import SECTION_PATTERN, could_be_slug, sanitise_html
from shared.models import Article, has_status
from shared.models import ArticleStatus as S

blp = Blueprint("pages", __name__, template_folder="templates")

CACHE_SECONDS = 60
VIDEO = re.compile(r"\.(mp4|webm|ogv|m3u8)(\?|$)", re.IGNORECASE)
TAGS = re.compile(r"<[^>]+>")


def latest_articles(section: str | None = None, limit: int = feeds.FEED_SIZE) -> list[Article]:
    query = select(Article).where(has_status(S.PUBLISHED))
    if section is not None:
        query = query.where(Article.section == section)
    query = query.order_by(Article.published_at.desc(), Article.id.desc()).limit(limit)
    with state().db.session() as session:
        return list(session.scalars(query))


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


@blp.get("/")
def front_page() -> BaseResponse:
    articles = latest_articles(limit=20)
    page = render_template(
        "front.html",
        articles=articles,
        base=state().settings.public_base_url,
        sections=sections_of(articles),
    )
    return _cacheable(Response(page), _listing_etag("front", articles))


@blp.get("/articles/<slug>")
def article_page(slug: str) -> BaseResponse:
    if not could_be_slug(slug):  # nothing to look up (and PostgreSQL refuses NUL in text)
        abort(404)
    with state().db.session() as session:
        article = session.scalar(select(Article).where(Article.slug == slug))
    if article is None or article.status in (S.DRAFT, S.SCHEDULED):
        abort(404)
    if article.status == S.RETRACTED:
        page = render_template("retracted.html", article=article)
        return Response(page, status=410)
    page = render_template(
        "article.html",
        article=article,
        body=sanitise_html(article.body or ""),  # cleaned on the way in; again on the way out
        description=description(article),
        base=state().settings.public_base_url,
        is_video=bool(article.media and VIDEO.search(article.media)),
        related=[],
        sections=[article.section] if article.section else [],
        ticked=[article.section],
    )
    return _cacheable(Response(page), f"{article.id}-v{article.version}-{article.status}")


@blp.get("/feed.xml")
def site_feed() -> BaseResponse:
    return _feed(None)


@blp.get("/sections/<section>/feed.xml")
def section_feed(section: str) -> BaseResponse:
    if not SECTION_PATTERN.match(section):
        abort(404)
    return _feed(section)


def _feed(section: str | None) -> BaseResponse:
    articles = latest_articles(section)
    xml = feeds.atom(articles, state().settings.public_base_url, section, request.url)
    response = Response(xml, mimetype="application/atom+xml")
    return _cacheable(response, _listing_etag(f"feed-{section or ''}", articles))


@blp.errorhandler(HTTPException)
def page_error(error: HTTPException) -> tuple[str, int]:
    code = error.code or 500
    return render_template("error.html", code=code, name=error.name), code
