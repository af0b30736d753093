"""Two writers changing one article at once take turns: the second sees what the first did.

On PostgreSQL each request locks the article it changes; on SQLite a write transaction holds
the whole database. Either way the request that comes second must not act on the state it
read before the first committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from services.publisher.articles import service
from shared import lifecycle
from shared.db import Database
from shared.models import Article, ArticleHistory, IdempotencyRecord, OutboxEvent
from tests.publisher.helpers import article

HOLD_S = 0.5  # long enough for the racing request to read the article, were it not locked


def racing(request: Callable[[], Any], database: Database, work) -> Any:  # type: ignore[no-untyped-def]
    """Send ``request`` while another transaction is doing ``work`` (not yet committed)."""
    answers: list[Any] = []
    with database.transaction() as session:
        work(session)
        racer = threading.Thread(target=lambda: answers.append(request()))
        racer.start()
        racer.join(HOLD_S)
    racer.join(30)
    assert answers, "the racing request never answered"
    return answers[0]


def test_publishing_an_article_someone_is_publishing_is_a_conflict(client, editor, database):
    aid = client.post("/api/v1/articles", json=article(), headers=editor).json["id"]

    def publish(session):  # type: ignore[no-untyped-def]
        held = session.get_one(Article, aid, with_for_update=True)
        lifecycle.transition(session, held, "published", actor="desk")

    answer = racing(
        lambda: client.post(f"/api/v1/articles/{aid}/publish", headers=editor), database, publish
    )

    assert answer.status_code == 409, answer.json
    assert answer.json["error"]["code"] == "invalid_transition"
    with database.session() as session:
        published = session.query(OutboxEvent).filter_by(article_id=aid).all()
        assert [e.type for e in published] == ["article.published"]
        changes = (
            session.query(ArticleHistory).filter_by(article_id=aid).order_by(ArticleHistory.id)
        )
        assert [(h.from_status, h.to_status) for h in changes] == [
            (None, "draft"),
            ("draft", "published"),
        ]


def test_an_edit_on_a_version_being_replaced_is_refused(client, editor, database):
    aid = client.post("/api/v1/articles", json=article(), headers=editor).json["id"]

    def retitle(session):  # type: ignore[no-untyped-def]
        held = session.get_one(Article, aid, with_for_update=True)
        held.title = "Another desk's headline"
        lifecycle.touch(held)

    answer = racing(
        lambda: client.patch(
            f"/api/v1/articles/{aid}",
            json={"title": "My headline"},
            headers={**editor, "If-Match": '"1"'},
        ),
        database,
        retitle,
    )

    assert answer.status_code == 412, answer.json
    current = client.get(f"/api/v1/articles/{aid}", headers=editor).json
    assert (current["title"], current["version"]) == ("Another desk's headline", 2)


def test_two_stories_with_one_title_at_once_get_two_slugs(client, editor, database):
    def another_desk_creates(session):  # type: ignore[no-untyped-def]
        service.create_article(session, service.prepare(article()), "desk")
        session.flush()  # written, not committed

    answer = racing(
        lambda: client.post("/api/v1/articles", json=article(), headers=editor),
        database,
        another_desk_creates,
    )
    assert answer.status_code == 201, answer.json
    assert answer.json["slug"] == "putin-takes-kim-on-a-drive-2"


def test_a_retry_sent_while_the_first_try_commits_gets_its_answer(client, editor, database):
    # The client gave up waiting and sent its request again, same Idempotency-Key, while the
    # first try was still committing. The first try's answer is borrowed here from an
    # earlier request with the same body under another key.
    body = article(title="First try")
    earlier = client.post("/api/v1/articles", json=body, headers={**editor, "Idempotency-Key": "a"})
    with database.session() as session:
        kept = session.query(IdempotencyRecord).filter_by(key="a").one()

    def first_try_committing(session):  # type: ignore[no-untyped-def]
        session.add(
            IdempotencyRecord(
                token_id=kept.token_id,
                key="b",
                request_hash=kept.request_hash,
                status_code=201,
                response=kept.response,
            )
        )
        session.flush()  # written, not committed

    answer = racing(
        lambda: client.post(
            "/api/v1/articles", json=body, headers={**editor, "Idempotency-Key": "b"}
        ),
        database,
        first_try_committing,
    )
    assert answer.status_code == 201, answer.json
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert answer.json["id"] == earlier.json["id"]
    with database.session() as session:
        assert session.query(Article).filter_by(title="First try").count() == 1
