"""The articles API: /api/v1/articles and its sub-resources."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from flask import Response, jsonify, request
from flask.views import MethodView
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.publisher.api import ApiBlueprint
from services.publisher.articles import queries, service
from services.publisher.articles.schemas import (
    ActionSchema,
    ArticleCreateSchema,
    ArticlePageSchema,
    ArticleQueryArgsSchema,
    ArticleSchema,
    ArticleUpdateSchema,
    CreateHeadersSchema,
    EventListSchema,
    HistorySchema,
    UpdateHeadersSchema,
)
from services.publisher.auth import current_caller
from services.publisher.errors import fail
from services.publisher.state import state
from shared.models import Article, IdempotencyRecord
from shared.related_lists import list_of

blp = ApiBlueprint(
    "articles", __name__, url_prefix="/api/v1/articles", description="Editors' articles API"
)
EDITOR = "editor"
ETAG = {
    "ETag": {
        "description": 'The article\'s version ("3"): send it back in If-Match to edit',
        "schema": {"type": "string"},
        "required": True,
    }
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "true: the answer to an earlier request with this Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def load_article(session: Session, article_id: str, *, to_change: bool = False) -> Article:
    """The article, or 404. ``to_change``: its row locked until the transaction ends, so
    two requests that change one article take turns and the second sees what the first
    did: no event emitted twice, no If-Match check passed on a version another request is
    replacing."""
    try:
        article = session.get(Article, str(uuid.UUID(article_id)), with_for_update=to_change)
    except ValueError:
        article = None
    if article is None:
        fail(404, f"No article with id {article_id}.")
    return article


def _etag(article: Article) -> dict[str, str]:
    return {"ETag": f'"{article.version}"'}


def _check_if_match(article: Article, header: str | None) -> None:
    if header is None or header.strip() == "*":
        return
    wanted = header.strip().removeprefix("W/").strip('"')
    if wanted != str(article.version):
        fail(
            412,
            f"The article is at version {article.version}, not {wanted}.",
            details={"current_version": article.version},
        )


def _fingerprint() -> str:
    body = request.get_json(silent=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(session: Session, key: str) -> Response | None:
    record = session.get(IdempotencyRecord, (current_caller().token_id, key))
    if record is None:
        return None
    if record.request_hash != _fingerprint():
        fail(
            409,
            "This Idempotency-Key was used with a different request body.",
            code="idempotency_key_reused",
        )
    response = jsonify(record.response)
    response.status_code = record.status_code
    response.headers["Idempotent-Replayed"] = "true"
    # The ETag too, as the first answer had it: a retry that got through must be able to edit.
    response.headers["ETag"] = f'"{record.response["version"]}"'
    return response


def _create(prepared: dict[str, Any], key: str | None) -> Article | Response:
    """The new article, or the replayed answer to an Idempotency-Key already used."""
    if not key:  # the article, its history and its event are inserted by one statement
        with state().db.autocommit() as session:
            return service.create_article(session, prepared, current_caller().actor)
    with state().db.transaction() as session:
        if key and (replayed := _replay(session, key)) is not None:
            return replayed
        article = service.create_article(session, prepared, current_caller().actor)
        if key:
            session.add(
                IdempotencyRecord(
                    token_id=current_caller().token_id,
                    key=key,
                    request_hash=_fingerprint(),
                    status_code=201,
                    response=ArticleSchema().dump(article),
                )
            )
    return article


def _replay_committed(key: str) -> Response | None:
    with state().db.session() as session:
        return _replay(session, key)


@blp.route("", role=EDITOR)
class Articles(MethodView):
    @blp.arguments(ArticleQueryArgsSchema(), location="query")
    @blp.response(200, ArticlePageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List articles, newest first, filtered by status, section, tag or text."""
        with state().db.session() as session:
            try:
                items, cursor = queries.list_articles(session, args)
            except queries.BadCursor:
                fail(422, "The cursor is not valid.", details={"cursor": ["invalid"]})
        return {"items": items, "next_cursor": cursor}

    @blp.arguments(ArticleCreateSchema())
    @blp.arguments(CreateHeadersSchema(), location="headers")
    @blp.response(201, ArticleSchema, headers={**ETAG, **REPLAYED})
    @blp.alt_response(
        409, description="The slug given is taken, or Idempotency-Key was used with another body"
    )
    def post(self, data: dict[str, Any], headers: dict[str, Any]) -> Any:
        """Create a draft, schedule it (publish_at) or publish it now (status: published)."""
        key = headers.get("idempotency_key")
        prepared = service.prepare(data)
        try:
            article = _create(prepared, key)
        except IntegrityError:
            # A request with the same Idempotency-Key was committing at the same moment and
            # got there first: answer as it was answered. (A slug taken meanwhile is no error:
            # create_article takes the next free one.) Failing that, try once more.
            if key and (replayed := _replay_committed(key)) is not None:
                return replayed
            article = _create(prepared, key)
        if isinstance(article, Response):
            return article
        return article, 201, _etag(article)


@blp.route("/<article_id>", role=EDITOR)
class ArticleById(MethodView):
    @blp.response(200, ArticleSchema, headers=ETAG)
    def get(self, article_id: str) -> Any:
        """One article, with ``related``: its "Also read" list."""
        with state().db.session() as session:
            article = load_article(session, article_id)
            article.related = list_of(session, article.id)  # type: ignore[attr-defined]
        return article, 200, _etag(article)

    @blp.arguments(ArticleUpdateSchema(), required=False)
    @blp.arguments(UpdateHeadersSchema(), location="headers")
    @blp.response(200, ArticleSchema, headers=ETAG)
    @blp.alt_response(
        409,
        description="The slug given is taken, the article is retracted, a correction of a story"
        " not published, or publish_at changed after publication",
    )
    @blp.alt_response(412, description="If-Match names a version that is no longer current")
    def patch(self, data: dict[str, Any], headers: dict[str, Any], article_id: str) -> Any:
        """Change some fields; send If-Match with the version you edited to avoid lost updates."""
        with state().db.transaction() as session:
            article = load_article(session, article_id, to_change=True)
            _check_if_match(article, headers.get("if_match"))
            service.update_article(session, article, data, current_caller().actor)
        return article, 200, _etag(article)


def _action_view(action: str) -> type[MethodView]:
    class ActionView(MethodView):
        @blp.arguments(ActionSchema(), required=False)
        @blp.arguments(UpdateHeadersSchema(), location="headers")
        @blp.response(200, ArticleSchema, headers=ETAG)
        @blp.alt_response(409, description="Not a change the article's status allows")
        @blp.alt_response(412, description="If-Match names a version that is no longer current")
        def post(self, data: dict[str, Any], headers: dict[str, Any], article_id: str) -> Any:
            with state().db.transaction() as session:
                article = load_article(session, article_id, to_change=True)
                _check_if_match(article, headers.get("if_match"))
                service.apply_action(
                    session,
                    article,
                    action,
                    current_caller().actor,
                    (data or {}).get("reason"),
                    state().settings,
                )
            return article, 200, _etag(article)

    ActionView.__name__ = f"{action.capitalize()}Article"
    ActionView.post.__doc__ = (
        f"{action.capitalize()} the article; emits its event. Send If-Match with the version"
        " you saw to act only on that version."
    )
    return ActionView


for _action in service.ACTIONS:
    blp.route(f"/<article_id>/{_action}", role=EDITOR)(_action_view(_action))


@blp.route("/<article_id>/events", role=EDITOR)
class ArticleEvents(MethodView):
    @blp.response(200, EventListSchema)
    def get(self, article_id: str) -> dict[str, Any]:
        """Events emitted for the article and when each consumer handled them."""
        with state().db.session() as session:
            load_article(session, article_id)
            return {"items": queries.event_view(session, article_id)}


@blp.route("/<article_id>/history", role=EDITOR)
class ArticleHistoryView(MethodView):
    @blp.response(200, HistorySchema)
    def get(self, article_id: str) -> dict[str, Any]:
        """Audit trail of status changes: who, when, from, to, why."""
        with state().db.session() as session:
            load_article(session, article_id)
            return {"items": queries.history(session, article_id)}
