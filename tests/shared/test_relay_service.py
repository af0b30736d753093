"""``pressroom relay``: woken by commits, publishing what is due, resending what was lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest
import redis as redis_lib
from sqlalchemy import update

from services.archiver.archiving import sweep
from services.publisher.importer import import_file
from services.relay import RelayService
from shared import lifecycle, redelivery
from shared.bus import OUTBOX_CHANNEL, CelerySender
from shared.celery import create_celery
from shared.db import libpq_conninfo, utcnow
from shared.models import Article, ConsumedEvent, OutboxEvent
from shared.models import ArticleStatus as S
from shared.runtime import Runtime
from tests.brokers import queued
from tests.e2e.conftest import wait_for
from tests.publisher.helpers import article


@pytest.fixture
def running_relay(settings) -> Iterator[RelayService]:  # type: ignore[no-untyped-def]
    # A long sweep interval: whatever arrives quickly arrived by notification.
    service = RelayService(Runtime(replace(settings, outbox_sweep_seconds=60)))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.5)  # listening
    yield service
    stop.set()
    thread.join(10)


def publish(database, title: str = "Story", **fields) -> str:  # type: ignore[no-untyped-def]
    with database.transaction() as session:
        article = Article(slug=title.lower().replace(" ", "-"), title=title, **fields)
        session.add(article)
        session.flush()
        if article.status == S.DRAFT:
            lifecycle.transition(session, article, S.PUBLISHED, actor="test")
        return article.id


def test_a_commit_wakes_the_relay_at_once(database, redis_url, running_relay):
    started = time.monotonic()
    article_id = publish(database)
    assert wait_for(lambda: queued(redis_url, "notifier"), 5, 0.01)
    assert time.monotonic() - started < 2  # not the 60 s sweep
    assert [m["envelope"]["subject"] for m in queued(redis_url, "archiver")] == [article_id]


def test_a_steady_stream_of_commits_keeps_waking_the_relay(database, redis_url, running_relay):
    published: list[str] = []

    def editor(n: int) -> None:  # four at once: the relay's passes send several each
        for m in range(50):
            published.append(publish(database, f"Story {n}-{m}"))
            time.sleep(0.01)

    editors = [threading.Thread(target=editor, args=(n,)) for n in range(4)]
    for thread in editors:
        thread.start()
    for thread in editors:
        thread.join()
    # Each within seconds, not at the 60 s sweep.
    assert wait_for(lambda: len(queued_events(redis_url, "archiver")) == 200, 5, 0.05)
    assert sorted(queued_events(redis_url, "archiver")) == sorted(published)


def test_every_writer_of_events_wakes_the_relay(
    client, editor, database, settings, redis_url, running_relay, tmp_path
):
    # The API's one-statement creation, an import and an archive sweep: each wakes the
    # relay once it has committed, well before the 60 s look at the outbox.
    aged = (utcnow() - timedelta(days=400)).isoformat()
    body = article(title="Wakes the relay", status="published", published_at=aged)
    created = client.post("/api/v1/articles", json=body, headers=editor)
    assert created.status_code == 201
    story = created.json["id"]
    assert wait_for(lambda: queued_types(redis_url, story) == ["article.published"], 3, 0.01)

    assert sweep(database, settings) == 1
    assert wait_for(lambda: queued_types(redis_url, story)[-1:] == ["article.archived"], 3, 0.01)

    path = tmp_path / "one.csv"
    path.write_text("title,body\nImported story,A body.\n")
    assert import_file(database, path).imported == 1
    assert wait_for(lambda: len(queued_events(redis_url, "archiver")) == 3, 3, 0.01)


def test_a_write_rolled_back_wakes_no_relay(database, settings):
    with psycopg.connect(libpq_conninfo(settings.db_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        with pytest.raises(RuntimeError), database.transaction() as session:
            article_id = publish_in(session)
            raise RuntimeError("the editor's request failed")
        assert list(listener.notifies(timeout=0.5)) == []
        with database.transaction() as session:
            article_id = publish_in(session)
        assert [n.channel for n in listener.notifies(timeout=2, stop_after=1)] == [OUTBOX_CHANNEL]
    assert article_id


def publish_in(session) -> str:  # type: ignore[no-untyped-def]
    article = Article(slug=f"s-{uuid.uuid4().hex[:8]}", title="Story")
    session.add(article)
    session.flush()
    lifecycle.transition(session, article, S.PUBLISHED, actor="test")
    return article.id


def queued_types(redis_url: str, article_id: str) -> list[str]:
    return [
        message["envelope"]["type"]
        for message in queued(redis_url, "archiver")
        if message["envelope"]["subject"] == article_id
    ]


def queued_events(redis_url: str, queue: str) -> list[str]:
    return [message["envelope"]["subject"] for message in queued(redis_url, queue)]


def test_a_scheduled_story_goes_out_with_no_worker_running(database, redis_url, running_relay):
    with database.transaction() as session:
        session.add(Article(slug="later", title="Later", status=S.SCHEDULED, publish_at=utcnow()))
    assert wait_for(lambda: queued(redis_url, "notifier"), 15, 0.1)
    [message] = queued(redis_url, "notifier")
    assert message["envelope"]["type"] == "article.published"


def test_an_event_a_consumer_lost_is_sent_again_and_only_that(database, settings, redis_url):
    lost, kept = publish(database, "Lost"), publish(database, "Kept")
    RelayService(Runtime(settings)).relay_pending()
    with database.transaction() as session:
        events = {row.article_id: row.event_id for row in session.query(OutboxEvent)}
        for consumer in ("archiver", "notifier"):  # the archiver got both; the notifier one
            for article_id in (lost, kept) if consumer == "archiver" else (kept,):
                session.add(
                    ConsumedEvent(
                        event_id=events[article_id],
                        consumer=consumer,
                        event_type="article.published",
                        article_id=article_id,
                    )
                )
        session.execute(update(OutboxEvent).values(relayed_at=utcnow() - timedelta(minutes=5)))
    redis_lib.Redis.from_url(redis_url).flushdb()  # the broker lost its queues
    sender = CelerySender(create_celery(settings, "test"))
    settle = timedelta(minutes=2)
    resent = redelivery.redeliver_lost(database, sender, lambda q: 0, settle)
    assert resent == {"notifier": 1}
    assert [m["envelope"]["subject"] for m in queued(redis_url, "notifier")] == [lost]
    # Resent once: not again before another settling time has passed...
    assert redelivery.redeliver_lost(database, sender, lambda q: 0, settle) == {}
    # ...and never into a queue that has not drained.
    later = utcnow() + timedelta(minutes=3)
    assert redelivery.redeliver_lost(database, sender, lambda q: 500, settle, now=later) == {}
    assert redelivery.redeliver_lost(database, sender, lambda q: 0, settle, now=later) == {
        "notifier": 1
    }
