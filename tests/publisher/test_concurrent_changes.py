"""Two writers changing one article at once take turns: the second sees what the first did.

On PostgreSQL each request locks the article it changes; on SQLite a write transaction holds
the whole database. Either way the request that comes second must not act on the state it
read before the first committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from shared import lifecycle
from shared.db import Database
from shared.models import Article, ArticleHistory, OutboxEvent
from tests.publisher.helpers import article

HOLD_S = 0.5  # long enough for the racing request to read the article, were it not locked


def racing(request: Callable[[], Any], database: Database, aid: str, change) -> Any:  # type: ignore[no-untyped-def]
    """Send ``request`` while another transaction is making ``change`` to the article."""
    answers: list[Any] = []
    with database.transaction() as session:
        held = session.get_one(Article, aid, with_for_update=True)
        change(session, held)
        racer = threading.Thread(target=lambda: answers.append(request()))
        racer.start()
        racer.join(HOLD_S)
    racer.join(30)
    assert answers, "the racing request never answered"
    return answers[0]


def test_publishing_an_article_someone_is_publishing_is_a_conflict(client, editor, database):
    aid = client.post("/api/v1/articles", json=article(), headers=editor).json["id"]

    def publish(session, held):  # type: ignore[no-untyped-def]
        lifecycle.transition(session, held, "published", actor="desk")

    answer = racing(
        lambda: client.post(f"/api/v1/articles/{aid}/publish", headers=editor),
        database,
        aid,
        publish,
    )

    assert answer.status_code == 409, answer.json
    assert answer.json["error"]["code"] == "invalid_transition"
    with database.sessionmaker() as session:
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

    def retitle(session, held):  # type: ignore[no-untyped-def]
        held.title = "Another desk's headline"
        lifecycle.touch(held)

    answer = racing(
        lambda: client.patch(
            f"/api/v1/articles/{aid}",
            json={"title": "My headline"},
            headers={**editor, "If-Match": '"1"'},
        ),
        database,
        aid,
        retitle,
    )

    assert answer.status_code == 412, answer.json
    current = client.get(f"/api/v1/articles/{aid}", headers=editor).json
    assert (current["title"], current["version"]) == ("Another desk's headline", 2)
