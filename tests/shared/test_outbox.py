"""The transactional outbox and its relay, against the real broker and database."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from services.archiver.celery_app import create_app
from shared import lifecycle
from shared.bus import MESSAGE_EVENTS, SWEEP_LOCK, BackgroundRelay, CelerySender, Relay, Send
from shared.celery import beat_schedule, create_celery
from shared.db import utcnow
from shared.models import Article, OutboxEvent
from shared.models import ArticleStatus as S
from shared.runtime import Runtime
from tests.brokers import message_count, queued
from tests.conftest import free_port
from tests.e2e.conftest import ROOT, process_env


def new_article(session, title: str = "Story") -> Article:  # type: ignore[no-untyped-def]
    article = Article(slug=f"s-{title.lower().replace(' ', '-')}", title=title, body="<p>x</p>")
    session.add(article)
    session.flush()
    return article


def relay_for(database, settings) -> Relay:  # type: ignore[no-untyped-def]
    return Relay(database, CelerySender(create_celery(settings, "test")))


def pending(database) -> list[OutboxEvent]:  # type: ignore[no-untyped-def]
    with database.sessionmaker() as session:
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
    if database.engine.dialect.name == "postgresql":
        assert len(messages) == 90  # rows locked while sent: none goes twice
    assert max(copies.values()) <= len(relays)  # at worst once per relay
    # On SQLite a relay does not hold the write lock while it sends, so two relays may both
    # send an event; the consumers' ledgers skip the second. Order per article holds.
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


def test_relay_after_commit_sends_what_many_writers_commit_once_each(database, settings, redis_url):
    background = BackgroundRelay(relay_for(database, settings))

    def writer(w: int) -> None:
        for n in range(10):
            with database.transaction() as session:
                article = new_article(session, f"Story {w}-{n}")
                lifecycle.transition(session, article, S.PUBLISHED, actor="test")
                lifecycle.transition(session, article, S.ARCHIVED, actor="test")
            background.submit([article.id])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert background.flush()
    assert pending(database) == []
    by_article: dict[str, list[str]] = {}
    for m in queued(redis_url, "archiver"):
        by_article.setdefault(m["envelope"]["subject"], []).append(m["envelope"]["type"])
    assert len(by_article) == 60
    assert all(types == ["article.published", "article.archived"] for types in by_article.values())


FORKED_RELAY = """
import os, sys
from shared.bus import MESSAGE_EVENTS, BackgroundRelay, CelerySender, Relay, Send
from shared.celery import beat_schedule, create_celery
from shared.db import utcnow
from shared.config import Settings
from shared.db import Database

settings = Settings.from_env()
db = Database(settings.database_url)
background = BackgroundRelay(Relay(db, CelerySender(create_celery(settings, "forked"))))
background.submit([])  # the relay thread starts here, in the parent
assert background.flush()
db.dispose()
pid = os.fork()
if pid == 0:  # a worker forked after the app was loaded
    background.submit([sys.argv[1]])
    os._exit(0 if background.flush() else 1)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_relay_after_commit_runs_again_in_a_forked_worker(database, settings, redis_url):
    # gunicorn loads the app, then forks its workers: each needs a relay thread of its own.
    # Forked from a fresh interpreter, not from this test process and its many threads.
    with database.transaction() as session:
        article = new_article(session)
        lifecycle.transition(session, article, S.PUBLISHED, actor="test")
    forked = subprocess.run(
        [sys.executable, "-c", FORKED_RELAY, article.id],
        cwd=ROOT,
        env=process_env(settings),
        timeout=60,
    )
    assert forked.returncode == 0
    assert pending(database) == []
    assert [m["envelope"]["subject"] for m in queued(redis_url, "notifier")] == [article.id]


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


def test_a_periodic_job_is_taken_before_a_backlog_of_events(database, settings, redis_url):
    # A due publication sent by beat must not wait for the archiver to drain an archive
    # sweep's 300,000 events: a worker takes it first, then the events, still in order.
    with database.transaction() as session:
        for n in range(2 * MESSAGE_EVENTS):
            article = new_article(session, f"Story {n}")
            lifecycle.transition(session, article, S.PUBLISHED, actor="test")
    relay_for(database, settings).relay()
    app = create_celery(settings, "beat")
    due = beat_schedule(settings)["publish-due"]
    app.send_task(due["task"], **due["options"])
    assert message_count(redis_url, "archiver") == 3
    taken = []
    with app.connection_for_read() as conn, conn.SimpleQueue("archiver", no_ack=True) as queue:
        for _ in range(3):
            message = queue.get(timeout=5)
            taken.append(message.headers["task"])
            if message.headers["task"] == "archiver.consume":
                titles = [e["data"]["title"] for e in message.payload[0][0]]
                assert titles[0] == f"Story {MESSAGE_EVENTS * (len(taken) - 2)}"
    assert taken == ["pressroom.publish_due", "archiver.consume", "archiver.consume"]


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
    relaying = threading.Thread(target=Relay(database, broker).relay, args=([article.id],))
    relaying.start()
    assert broker.reached.wait(10)
    with database.transaction() as session:  # an editor's write while the relay waits
        other = new_article(session, "Other")
        lifecycle.transition(session, other, S.PUBLISHED, actor="test")
    assert relaying.is_alive(), "the write had to wait for the broker"
    broker.release.set()
    relaying.join(30)
    assert [row.article_id for row in pending(database)] == [other.id]  # left to its relay


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


def test_one_periodic_sweep_relays_at_a_time(database, settings, redis_url):
    with database.transaction() as session:
        for n in range(3):
            lifecycle.transition(
                session, new_article(session, f"Story {n}"), S.PUBLISHED, actor="test"
            )
    with database.transaction() as session:  # older than the relay thread's share
        session.execute(update(OutboxEvent).values(created_at=utcnow() - timedelta(minutes=1)))
    outbox_sweep = create_app(settings).tasks["pressroom.outbox_sweep"]
    held = Runtime(settings).redis.lock(SWEEP_LOCK, timeout=30)
    assert held.acquire(blocking=False)  # another worker's sweep is relaying
    assert outbox_sweep() == 0
    assert len(pending(database)) == 3 and queued(redis_url, "archiver") == []
    held.release()
    assert outbox_sweep() == 3
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
