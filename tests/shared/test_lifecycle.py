"""Status changes and scheduled publishing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from shared import lifecycle
from shared.errors import InvalidTransition
from shared.models import Article, OutboxEvent
from shared.models import ArticleStatus as S

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def scheduled(session, title: str, at: datetime) -> Article:  # type: ignore[no-untyped-def]
    article = Article(slug=title.lower(), title=title, body="", status=S.SCHEDULED, publish_at=at)
    session.add(article)
    return article


def published_events(database) -> list[str]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(
            session.scalars(
                select(OutboxEvent.article_id).where(OutboxEvent.type == "article.published")
            )
        )


def test_only_due_articles_are_published_and_only_once(database):
    with database.transaction() as session:
        due = scheduled(session, "Due", NOW - timedelta(minutes=1))
        scheduled(session, "Later", NOW + timedelta(hours=1))
    with database.transaction() as session:
        assert lifecycle.publish_due(session, NOW) == [due.id]
    with database.transaction() as session:
        assert lifecycle.publish_due(session, NOW) == []  # a second beat, a restart: nothing
    assert published_events(database) == [due.id]
    with database.session() as session:
        article = session.get(Article, due.id)
        assert article is not None
        assert article.status == S.PUBLISHED
        assert article.published_at == NOW


def test_sweeps_running_at_once_publish_each_article_once(database):
    with database.transaction() as session:
        for n in range(40):
            scheduled(session, f"Story{n}", NOW - timedelta(seconds=n))

    def sweep() -> None:
        with database.transaction() as session:
            lifecycle.publish_due(session, NOW, limit=7)

    for _ in range(4):
        threads = [threading.Thread(target=sweep) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    events = published_events(database)
    assert len(events) == len(set(events)) == 40


def test_a_retracted_article_cannot_come_back(database):
    with database.transaction() as session:
        article = scheduled(session, "Gone", NOW)
        lifecycle.transition(session, article, S.PUBLISHED, actor="t")
        lifecycle.transition(session, article, S.RETRACTED, actor="t")
        with pytest.raises(InvalidTransition):
            lifecycle.transition(session, article, S.PUBLISHED, actor="t")
