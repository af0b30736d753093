"""What editors do to articles, as functions of a session: no Flask in here."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from services.publisher.errors import fail
from shared import bus, events, lifecycle
from shared.config import Settings
from shared.content import base_slug, next_free_slug, sanitise_html, slug_holder
from shared.db import Database, new_id, utcnow
from shared.errors import Conflict, InvalidTransition
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.models import ArticleStatus as S

EDITABLE = (
    "title", "slug", "summary", "body", "section", "tags", "authors", "media",
    "publish_at", "published_at", "archive_after", "evergreen", "related_pinned",
    "related_excluded",
)  # fmt: skip
STEERING = ("related_pinned", "related_excluded")


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    cleaned = {k: v for k, v in data.items() if k in EDITABLE}
    for name in STEERING:
        if name in cleaned:  # ids as text, each once, in the editor's order
            cleaned[name] = list(dict.fromkeys(str(i) for i in cleaned[name]))
    if "body" in cleaned:
        cleaned["body"] = sanitise_html(cleaned["body"])
    if "summary" in cleaned:
        cleaned["summary"] = cleaned["summary"].strip()
    return cleaned


def check_steering(session: Session, fields: dict[str, Any], article_id: str | None) -> None:
    """Pinned and excluded ids must name other articles (422 naming the field)."""
    problems: dict[str, list[str]] = {}
    for name in STEERING:
        ids = fields.get(name) or []
        if not ids:
            continue  # most stories steer nothing: no round trip for them
        known = set(session.scalars(select(Article.id).where(Article.id.in_(ids))))
        unknown = [i for i in ids if i not in known or i == article_id]
        if unknown:
            problems[name] = [f"not another article: {', '.join(unknown)}"]
    if problems:
        fail(422, "The request has invalid fields.", details=problems)


def _ensure_slug_free(session: Session, slug: str, article_id: str | None = None) -> None:
    holder = slug_holder(session, slug)
    if holder is not None and holder != article_id:
        raise Conflict(f"The slug {slug!r} is taken by another article.", "slug_taken")


def prepare(data: dict[str, Any]) -> dict[str, Any]:
    """A create request's fields, cleaned (the body sanitised): work with no database in it,
    done before the transaction (on SQLite a writer holds the whole file's lock)."""
    return {**_clean(data), "status": data.get("status", S.DRAFT)}


ARTICLE_COLUMNS = [column.key for column in Article.__table__.columns]


def create_article(
    session: Session, prepared: dict[str, Any], actor: str, now: datetime | None = None
) -> Article:
    """Create a draft, a scheduled article (publish_at ahead) or a published one, from the
    fields :func:`prepare` made of the request. An editor's own slug that is taken is a
    Conflict; a slug made from the title takes the next free -2, -3..."""
    now = now or utcnow()
    fields = dict(prepared)
    wanted = fields.pop("status")
    unset = dict.fromkeys(ARTICLE_COLUMNS)  # every column given: the insert names them all
    check_steering(session, fields, None)
    article = Article(
        **{
            **unset,
            "summary": "", "tags": [], "authors": [], "related_pinned": [],
            "related_excluded": [],
            "evergreen": False,
            **fields,
        }
    )  # fmt: skip
    article.id, article.status, article.version = new_id(), S.DRAFT, 1
    article.created_at = article.updated_at = now
    publish_at = fields.get("publish_at")
    if publish_at is not None and publish_at > now:
        article.status = S.SCHEDULED
    elif wanted == S.PUBLISHED or publish_at is not None:
        article.status = S.PUBLISHED
        article.published_at = fields.get("published_at") or publish_at or now
        article.publish_at = None
    if article.slug:
        if not _insert(session, article, actor):
            raise Conflict(f"The slug {article.slug!r} is taken by another article.", "slug_taken")
    else:
        article.slug = base = base_slug(article.title)
        while not _insert(session, article, actor):  # taken, maybe a moment ago by another
            article.slug = next_free_slug(session, base)
    return article


def _insert(session: Session, article: Article, actor: str) -> bool:
    """Insert the new article, its history row and, if it is published, its event, unless
    its slug is taken; returns whether it was inserted.

    One statement, the three inserts chained by CTEs: the unique index answers whether the
    slug is free, and the history and outbox rows are made from what the article's insert
    returned, so a taken slug writes none of them. Three round trips were half a creation's
    time under load. The article stays out of the session (nothing of it is left for the
    flush to work out); it is what the API answers.
    """
    params = {key: getattr(article, key) for key in ARTICLE_COLUMNS}
    history = lifecycle.history_row(article, None, actor, "created")
    params.update({f"history_{k}": v for k, v in history.items() if k != "article_id"})
    announce = article.status == S.PUBLISHED
    if announce:
        _, event = bus.outbox_row(events.ARTICLE_PUBLISHED, lifecycle.announcement(article))
        params.update({f"event_{k}": v for k, v in event.items() if k != "article_id"})
    inserted = session.connection().execute(_create_statement(announce), params).first()
    if inserted is not None and announce:
        bus.wake_relays(session)
    return inserted is not None


HISTORY_COLUMNS = ("actor", "at", "from_status", "to_status", "reason")
EVENT_COLUMNS = ("event_id", "type", "data", "created_at")


@functools.cache
def _create_statement(announce: bool) -> Any:
    """Built once per shape, its values bound at execution: building a statement of CTEs
    for each request cost more than the round trips it saves."""
    table = Article.__table__
    new = (
        postgresql.insert(Article)
        .values({name: bindparam(name, type_=table.c[name].type) for name in ARTICLE_COLUMNS})
        .on_conflict_do_nothing(index_elements=[Article.slug])
        .returning(Article.id)
        .cte("new_article")
    )
    statement = select(new.c.id).add_cte(
        _insert_from(new, ArticleHistory, HISTORY_COLUMNS, "history_")
    )
    if announce:
        statement = statement.add_cte(_insert_from(new, OutboxEvent, EVENT_COLUMNS, "event_"))
    return statement


def _insert_from(new: Any, model: Any, names: Sequence[str], prefix: str) -> Any:
    """A CTE inserting a row into ``model``'s table for each id ``new`` returned, its other
    columns ``names`` bound as ``prefix`` + name."""
    table = model.__table__
    values = [bindparam(prefix + name, type_=table.c[name].type) for name in names]
    return (
        insert(model)
        .from_select(["article_id", *names], select(new.c.id, *values))
        .cte(f"new_{table.name}")
    )


def update_article(session: Session, article: Article, data: dict[str, Any], actor: str) -> bool:
    """Apply an editor's partial update; returns whether anything changed. An edit with a
    ``correction`` note is announced as a correction even if no field changed."""
    if article.status == S.RETRACTED:
        raise Conflict("A retracted article cannot be edited.", "article_retracted")
    correction = data.get("correction")
    if correction and article.status != S.PUBLISHED:
        raise Conflict("Only a published story can be corrected.", "not_published")
    changes = {k: v for k, v in _clean(data).items() if getattr(article, k) != v}
    if not changes and not correction:
        return False
    check_steering(session, changes, article.id)
    if "slug" in changes:
        _ensure_slug_free(session, changes["slug"], article.id)
    if "publish_at" in changes and article.status not in (S.DRAFT, S.SCHEDULED):
        raise Conflict("publish_at can only be changed before publication.", "already_published")
    for name, value in changes.items():
        setattr(article, name, value)
    now = utcnow()
    before = article.status
    if "publish_at" in changes:
        article.status = S.SCHEDULED if article.publish_at else S.DRAFT
        if article.publish_at is not None and article.publish_at <= now:
            article.status = before  # due now: publish through the normal transition below
            lifecycle.transition(session, article, S.PUBLISHED, actor=actor, now=now)
            return True
    lifecycle.touch(article, now)
    if article.status != before:
        lifecycle.record(session, article, before, actor, "schedule changed")
    if article.status in (S.PUBLISHED, S.ARCHIVED):
        lifecycle.announce(session, article, events.ARTICLE_UPDATED, correction=correction)
    return True


def act_by_hand(
    db: Database, settings: Settings, article_ref: str, action: str, reason: str, actor: str
) -> str:
    """Apply an action to an article named by id or slug (the CLI's way in); returns its
    status. Its event goes out with the relay, now or when the stack next runs."""
    with db.transaction() as session:
        article = session.scalar(
            select(Article)
            .where((Article.id == article_ref) | (Article.slug == article_ref))
            .with_for_update()  # as the API does: changes to one article take turns
        )
        if article is None:
            raise LookupError(f"no article with id or slug {article_ref!r}")
        apply_action(session, article, action, actor, reason, settings)
        return article.status


ACTIONS = {
    "publish": S.PUBLISHED,
    "archive": S.ARCHIVED,
    "unarchive": S.PUBLISHED,
    "retract": S.RETRACTED,
}


def apply_action(
    session: Session,
    article: Article,
    action: str,
    actor: str,
    reason: str | None,
    settings: Settings,
) -> None:
    """publish, archive, unarchive or retract, with the editor's reason."""
    to = ACTIONS[action]
    if action == "unarchive" and article.status != S.ARCHIVED:
        raise InvalidTransition(article.status, "unarchived")
    if action == "publish" and article.status not in (S.DRAFT, S.SCHEDULED):
        raise InvalidTransition(article.status, to)
    now = utcnow()
    if action == "archive":
        reason = reason or "manual"
    lifecycle.transition(session, article, to, actor=actor, reason=reason, now=now)
    if action == "unarchive":
        # A full new age from today, so the next sweep does not archive it straight back.
        article.archive_after = lifecycle.unarchive_until(
            settings.archive_age_days(article.section), now
        )
