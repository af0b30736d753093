"""The transactional outbox and its relay, against the real broker and database."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import select

from shared import lifecycle
from shared.bus import MESSAGE_EVENTS, CelerySender, Send
from shared.celery import create_celery
from shared.models import Article, OutboxEvent
from shared.models import ArticleStatus as S
from shared.relay import Relay
from tests.brokers import message_count, queued
from tests.conftest import free_port


def new_article(session, title: str = "Story") -> Article:  # type: ignore[no-untyped-def]
    article = Article(slug=f"s-{title.lower().replace(' ', '-')}", title=title, body="<p>x</p>")
    session.add(article)
    session.flush()
    return article


def relay_for(database, settings) -> Relay:  # type: ignore[no-untyped-def]
    return Relay(database, CelerySender(create_celery(settings, "test")))


def pending(database) -> list[OutboxEvent]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(session.scalars(select(OutboxEvent).where(OutboxEvent.relayed_at.is_(None))))


def test_each_event_reaches_its_queues_in_the_order_written(database, settings, redis_url):
    with database.transaction() as session:
        article = new_article(session)
        for to in (S.PUBLISHED, S.ARCHIVED, S.PUBLISHED, S.RETRACTED):
            lifecycle.transition(session, article, to, actor="test")
    assert relay_for(database, settings).relay() == 4
    archiver = [m["envelope"]["type"] for m in queued(redis_url, "archiver")]
    assert archiver == [
        "article.published",
        "article.archived",
        "article.unarchived",
        "article.retracted",
    ]
    notifier = queued(redis_url, "notifier")
    assert [m["envelope"]["type"] for m in notifier] == ["article.published", "article.retracted"]
    assert {m["task"] for m in notifier} == {"notifier.consume"}
    assert pending(database) == []


def test_broker_down_leaves_events_pending_for_the_next_sweep(database, settings, redis_url):
    with database.transaction() as session:
        lifecycle.transition(session, new_article(session), S.PUBLISHED, actor="test")
    down = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert relay_for(database, down).relay() == 0
    [waiting] = pending(database)
    assert waiting.attempts == 1
    assert queued(redis_url, "archiver") == []
    assert relay_for(database, settings).relay() == 1
    assert [m["envelope"]["id"] for m in queued(redis_url, "archiver")] == [waiting.event_id]


def test_concurrent_relays_send_every_event_in_order(database, settings, redis_url):
    with database.transaction() as session:
        for n in range(30):
            article = new_article(session, f"Story {n}")
            for to in (S.PUBLISHED, S.ARCHIVED, S.PUBLISHED):
                lifecycle.transition(session, article, to, actor="test")
    relays = [
        Relay(database, CelerySender(create_celery(settings, f"r{i}")), batch=7) for i in range(4)
    ]
    threads = [threading.Thread(target=r.relay) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    messages = [m["envelope"] for m in queued(redis_url, "archiver")]
    copies = Counter(m["id"] for m in messages)
    assert len(copies) == 90
    assert len(messages) == 90  # rows locked while sent: none goes twice
    by_article: dict[str, list[str]] = {}
    for m in messages:
        types = by_article.setdefault(m["subject"], [])
        if m["type"] not in types:
            types.append(m["type"])
    assert all(
        types == ["article.published", "article.archived", "article.unarchived"]
        for types in by_article.values()
    )
    assert pending(database) == []


def test_a_backlog_goes_out_in_few_messages_of_many_events(database, settings, redis_url):
    with database.transaction() as session:
        for n in range(2 * MESSAGE_EVENTS + 50):
            article = new_article(session, f"Story {n}")
            lifecycle.transition(session, article, S.PUBLISHED, actor="test")
    assert relay_for(database, settings).relay() == 2 * MESSAGE_EVENTS + 50
    for queue in ("archiver", "notifier"):
        assert message_count(redis_url, queue) == 3
        titles = [m["envelope"]["data"]["title"] for m in queued(redis_url, queue)]
        assert titles == [f"Story {n}" for n in range(2 * MESSAGE_EVENTS + 50)]


class StalledBroker:
    """A sender whose broker takes a connection and then says nothing until released."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    @contextmanager
    def open(self) -> Iterator[Send]:
        def send(queue: str, envelopes: list[dict[str, Any]]) -> None:
            self.reached.set()
            assert self.release.wait(30)

        yield send


def test_a_stalled_broker_holds_up_no_writer(database):
    with database.transaction() as session:
        article = new_article(session)
        lifecycle.transition(session, article, S.PUBLISHED, actor="test")
    broker = StalledBroker()
    relay = Relay(database, broker)
    relaying = threading.Thread(target=relay.relay)
    relaying.start()
    assert broker.reached.wait(10)
    with database.transaction() as session:  # an editor's write while the relay waits
        other = new_article(session, "Other")
        lifecycle.transition(session, other, S.PUBLISHED, actor="test")
    assert relaying.is_alive(), "the write had to wait for the broker"
    broker.release.set()
    relaying.join(30)
    relay.relay()  # as the write's commit wakes the relay service
    assert pending(database) == []


class FailsOnClose:
    """A broker connection that takes every message, then fails as it is handed back."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @contextmanager
    def open(self) -> Iterator[Send]:
        def send(queue: str, envelopes: list[dict[str, Any]]) -> None:
            self.sent += [e["id"] for e in envelopes]

        yield send
        raise ConnectionError("connection reset while closing")


def test_a_failure_after_every_send_keeps_what_was_sent_marked(database):
    with database.transaction() as session:
        lifecycle.transition(session, new_article(session), S.PUBLISHED, actor="test")
    broker = FailsOnClose()
    assert Relay(database, broker).relay() == 1
    assert len(broker.sent) == 2  # archiver and notifier
    assert pending(database) == []


def test_a_sweep_with_a_budget_stops_after_the_batch_that_spends_it(database, settings):
    with database.transaction() as session:
        for n in range(25):
            lifecycle.transition(
                session, new_article(session, f"Story {n}"), S.PUBLISHED, actor="test"
            )
    relay = Relay(database, CelerySender(create_celery(settings, "test")), batch=10)
    assert relay.relay(budget=0) == 10
    assert len(pending(database)) == 15
    assert relay.relay() == 15
