"""The consumer base: ledger, duplicates, dead letters."""

from __future__ import annotations

import contextlib
import threading

import pytest
from celery.exceptions import Retry
from sqlalchemy import select

from shared import consumer
from shared.celery import CONSUMER_TASK_OPTIONS, create_celery
from shared.consumer import Consumer
from shared.errors import PermanentError, TransientError
from shared.events import make_envelope
from shared.models import ConsumedEvent, DeadLetter


def envelope() -> dict:
    return make_envelope(
        "article.published",
        {"article_id": "0b7f8f7e-2c1e-4a53-9a52-0d6f1d5b8a11", "version": 1, "title": "T"},
    )


def ledger(database) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return [(c.event_id, c.consumer) for c in session.scalars(select(ConsumedEvent))]


def dead_letters(database) -> list[DeadLetter]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(session.scalars(select(DeadLetter)))


def test_an_event_is_handled_once_however_often_it_is_delivered(database):
    handled: list[str] = []
    worker = Consumer(
        "archiver",
        database,
        {"article.published": lambda s, run: handled.extend(e["id"] for e in run)},
    )
    event = envelope()
    assert worker.consume(event) == consumer.CONSUMED
    assert worker.consume(event) == consumer.DUPLICATE
    assert handled == [event["id"]]
    assert ledger(database) == [(event["id"], "archiver")]


def test_each_consumer_keeps_its_own_ledger(database):
    event = envelope()
    Consumer("archiver", database, {}).consume(event)
    assert Consumer("notifier", database, {}).consume(event) == consumer.CONSUMED
    assert sorted(ledger(database)) == [(event["id"], "archiver"), (event["id"], "notifier")]


def test_a_failing_handler_records_nothing(database):
    def boom(session, run):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    event = envelope()
    with contextlib.suppress(RuntimeError):
        Consumer("archiver", database, {"article.published": boom}).consume(event)
    assert ledger(database) == []


def test_an_envelope_that_does_not_parse_goes_to_the_dead_letters(database):
    bad = envelope()
    bad["type"] = "article.exploded"
    del bad["time"]
    assert Consumer("notifier", database, {}).consume(bad) == consumer.DEAD
    [letter] = dead_letters(database)
    assert letter.consumer == "notifier"
    assert letter.event_id == bad["id"]
    assert "type" in letter.reason and "time" in letter.reason
    assert ledger(database) == []


def test_a_message_that_is_not_an_object_is_dead_lettered_too(database):
    assert Consumer("archiver", database, {}).consume("garbage") == consumer.DEAD
    assert dead_letters(database)[0].payload == '"garbage"'


def test_a_message_of_many_events_is_handled_in_order_each_once(database):
    handled: list[str] = []
    worker = Consumer(
        "archiver",
        database,
        {"article.published": lambda s, run: handled.extend(e["id"] for e in run)},
    )
    first, second, third = envelope(), envelope(), envelope()
    assert worker.consume(first) == consumer.CONSUMED
    outcomes = worker.consume_message([first, second, third, second])
    assert outcomes == [
        consumer.DUPLICATE,
        consumer.CONSUMED,
        consumer.CONSUMED,
        consumer.DUPLICATE,
    ]
    assert handled == [first["id"], second["id"], third["id"]]
    assert sorted(ledger(database)) == sorted((e["id"], "archiver") for e in (first, second, third))


def test_a_lone_envelope_as_older_messages_carried_it_is_still_handled(database):
    event = envelope()
    assert Consumer("notifier", database, {}).consume_message(event) == [consumer.CONSUMED]
    assert ledger(database) == [(event["id"], "notifier")]


def test_one_bad_event_in_a_message_does_not_hold_up_the_others(database):
    def refuse_second(session, run):  # type: ignore[no-untyped-def]
        if any(event["data"]["title"] == "bad" for event in run):
            raise PermanentError("cannot handle this one")

    good, bad, garbage, last = envelope(), envelope(), "garbage", envelope()
    bad["data"]["title"] = "bad"
    worker = Consumer("archiver", database, {"article.published": refuse_second})
    outcomes = worker.consume_message([good, bad, garbage, last])
    assert outcomes == [consumer.CONSUMED, consumer.DEAD, consumer.DEAD, consumer.CONSUMED]
    assert sorted(ledger(database)) == sorted([(good["id"], "archiver"), (last["id"], "archiver")])
    reasons = sorted(letter.reason for letter in dead_letters(database))
    assert reasons[0] == "cannot handle this one"
    assert reasons[1].startswith("envelope does not parse")


def test_a_handler_bug_dead_letters_its_event_and_spares_the_rest(database):
    def buggy(session, run):  # type: ignore[no-untyped-def]
        if any(event["data"]["title"] == "bad" for event in run):
            raise ValueError("unexpected None")

    good, bad, last = envelope(), envelope(), envelope()
    bad["data"]["title"] = "bad"
    worker = Consumer("archiver", database, {"article.published": buggy})
    assert worker.consume_message([good, bad, last]) == [
        consumer.CONSUMED, consumer.DEAD, consumer.CONSUMED
    ]  # fmt: skip
    assert sorted(ledger(database)) == sorted([(good["id"], "archiver"), (last["id"], "archiver")])
    [letter] = dead_letters(database)
    assert letter.event_id == bad["id"] and letter.reason == "ValueError: unexpected None"


def test_a_redelivered_message_does_not_dead_letter_twice(database):
    calls: list[str] = []

    def flaky(session, run):  # type: ignore[no-untyped-def]
        calls.extend(event["id"] for event in run)
        if len(calls) == 1:  # the database blinked
            raise TransientError("database restarting")

    event, unknown = envelope(), envelope() | {"type": "nope"}
    worker = Consumer("archiver", database, {"article.published": flaky})
    with pytest.raises(TransientError):  # the task retries the whole message later
        worker.consume_message(["garbage", event, unknown])
    redelivered = worker.consume_message(["garbage", event, unknown])
    assert redelivered == [consumer.DEAD, consumer.CONSUMED, consumer.DEAD]
    assert ledger(database) == [(event["id"], "archiver")]
    assert len(dead_letters(database)) == 2  # "garbage" and the unknown type, once each


def test_a_transient_failure_is_retried_for_as_long_as_it_lasts(database, settings):
    # Once relayed, the broker's message is the events' only copy in flight: however long
    # the database is away, the task must keep trying, a few seconds apart, never give up.
    failures = 20  # at up to 5 s apart, well over a minute away
    calls: list[str] = []

    def database_away(session, run):  # type: ignore[no-untyped-def]
        calls.extend(event["id"] for event in run)
        if len(calls) <= failures:
            raise TransientError("database restarting")

    app = create_celery(settings, "test")
    app.conf.task_always_eager = True  # retries run at once, in this process

    @app.task(name="test.consume", **CONSUMER_TASK_OPTIONS)
    def consume(envelopes):  # type: ignore[no-untyped-def]
        return Consumer("archiver", database, {"article.published": database_away}).consume_message(
            envelopes
        )

    event = envelope()
    with contextlib.suppress(Retry):
        consume.apply(args=[[event]])
    assert len(calls) == failures + 1
    assert ledger(database) == [(event["id"], "archiver")]
    assert CONSUMER_TASK_OPTIONS["retry_backoff_max"] <= 5  # DESIGN: no long countdowns


def test_two_deliveries_at_once_have_one_effect(database):
    # The broker redelivered a message while the first delivery was still being handled
    # (a visibility timeout ran out): the second waits for the first, then skips the event.
    event = envelope()
    effects: list[str] = []
    answers: dict[str, list[str]] = {}
    inside, release = threading.Event(), threading.Event()

    def slow(session, run):  # type: ignore[no-untyped-def]
        effects.append("first")
        inside.set()
        release.wait(5)

    def deliver(name: str, handler) -> threading.Thread:  # type: ignore[no-untyped-def]
        worker = Consumer("archiver", database, {"article.published": handler})
        thread = threading.Thread(target=lambda: answers.update({name: worker.consume(event)}))
        thread.start()
        return thread

    first = deliver("first", slow)
    assert inside.wait(5)
    second = deliver("second", lambda session, run: effects.append("second"))
    second.join(0.5)  # it must wait for the first delivery's transaction
    release.set()
    first.join(30)
    second.join(30)
    assert answers == {"first": consumer.CONSUMED, "second": consumer.DUPLICATE}
    assert effects == ["first"]
    assert ledger(database) == [(event["id"], "archiver")]
