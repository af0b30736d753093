"""From an event to what subscribers receive, on a real SMTP server and HTTP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from services.notifier.channels.email import SmtpMailer
from services.notifier.channels.webhook import HttpWebhookTransport
from services.notifier.handlers import build_handlers
from services.notifier.sending import Sender
from shared import events, lifecycle
from shared.consumer import Consumer
from shared.db import utcnow
from shared.models import (
    Article,
    Delivery,
    DeliveryStatus,
    OutboxEvent,
    Subscription,
    WebhookEndpoint,
)
from shared.models import ArticleStatus as S
from shared.runtime import Runtime
from shared.webhooks import new_secret, verify
from tests.notifier.servers import MailSink, Receiver, smtp_sink


@pytest.fixture
def sink() -> Iterator[tuple[MailSink, str]]:
    with smtp_sink() as found:
        yield found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


woken: list[str] = []


@pytest.fixture
def notifier(settings, sink, receiver):  # type: ignore[no-untyped-def]
    woken.clear()
    _, smtp_url = sink
    own = replace(settings, smtp_url=smtp_url, webhook_allow_private=True)
    runtime = Runtime(own)
    consumer = Consumer("notifier", runtime, build_handlers(runtime, woken.append))
    sender = Sender(
        runtime.db,
        own,
        SmtpMailer(smtp_url, local_hostname="pressroom.test"),
        HttpWebhookTransport(allow_private=True),
    )
    return consumer, sender


def subscribe(database, email: str, status: str = "confirmed", **topics: list[str]) -> str:  # type: ignore[no-untyped-def]
    with database.transaction() as session:
        sub = Subscription(email=email, status=status, **topics)
        session.add(sub)
        session.flush()
        return sub.id


def endpoint(database, url: str, types: list[str] | None = None) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    secret = new_secret()
    with database.transaction() as session:
        row = WebhookEndpoint(
            url=url, event_types=types or [events.ARTICLE_PUBLISHED], secret=secret
        )
        session.add(row)
        session.flush()
        return row.id, secret


def publish(  # type: ignore[no-untyped-def]
    database, title: str = "Budget passes", section: str = "politics", tags=(), **data: Any
):
    with database.transaction() as session:
        article = Article(
            slug=title.lower().replace(" ", "-"), title=title, section=section, tags=list(tags)
        )
        session.add(article)
        session.flush()
        lifecycle.transition(session, article, S.PUBLISHED, actor="test", **data)
        return article.id


def outbox(database) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        rows = session.execute(
            select(
                OutboxEvent.event_id,
                OutboxEvent.type,
                OutboxEvent.article_id,
                OutboxEvent.data,
                OutboxEvent.created_at,
            ).order_by(OutboxEvent.position)
        ).all()
    return [events.envelope_of(row) for row in rows]


def deliveries(database) -> list[Delivery]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def test_each_matching_confirmed_subscriber_gets_the_story_once(database, notifier, sink):
    consumer, sender = notifier
    mails, _ = sink
    subscribe(database, "all@example.org")
    subscribe(database, "politics@example.org", sections=["politics"])
    subscribe(database, "sport@example.org", sections=["sport"])
    subscribe(database, "pending@example.org", status="pending")
    subscribe(database, "gone@example.org", status="unsubscribed")
    publish(database)
    [event] = outbox(database)
    consumer.consume(event)
    consumer.consume(event)  # redelivered by the broker: nothing more
    assert sorted(woken) == ["email"]  # once, after the commit: no endpoint matched
    assert sender.send_due("email") == 2
    assert mails.received() == {
        ("all@example.org", "Budget passes"): 1,
        ("politics@example.org", "Budget passes"): 1,
    }
    message = mails.messages[0]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/subscriptions/unsubscribe?token=" in message["List-Unsubscribe"]
    assert sender.send_due("email") == 0  # sent is sent


def test_a_message_of_many_stories_tells_each_subscriber_of_each_matching_one_once(
    database, notifier, sink, receiver
):
    consumer, sender = notifier
    mails, _ = sink
    subscribe(database, "politics@example.org", sections=["politics"])
    subscribe(database, "climate@example.org", tags=["climate"])
    endpoint(database, f"{receiver.url}/hook")
    publish(database, "Budget passes", "politics")
    publish(database, "Floods in the north", "weather", tags=["climate", "uk"])
    publish(database, "Cup final tonight", "sport")
    publish(database, "Old story", "politics", origin="import")
    message = outbox(database)
    assert consumer.consume_message(message) == ["consumed"] * 4
    assert consumer.consume_message(message) == ["duplicate"] * 4  # redelivered
    assert sender.send_due("email") == 2
    assert mails.received() == {
        ("politics@example.org", "Budget passes"): 1,
        ("climate@example.org", "Floods in the north"): 1,
    }
    assert sender.send_due("webhook") == 3  # every new story, the import excepted
    sent = sorted(json.loads(r["body"])["data"]["title"] for r in receiver.requests)
    assert sent == ["Budget passes", "Cup final tonight", "Floods in the north"]


def test_a_story_and_its_retraction_in_one_message_mail_nobody(database, notifier, sink):
    consumer, sender = notifier
    subscribe(database, "reader@example.org")
    article_id = publish(database)
    with database.transaction() as session:
        article = session.get(Article, article_id)
        assert article is not None
        lifecycle.transition(session, article, S.RETRACTED, actor="test", reason="legal")
    assert consumer.consume_message(outbox(database)) == ["consumed"] * 2
    assert sender.send_due("email") == 0
    assert sink[0].messages == []
    assert [d.status for d in deliveries(database)] == [DeliveryStatus.CANCELLED]


def test_an_imported_story_tells_nobody(database, notifier, sink):
    consumer, sender = notifier
    subscribe(database, "all@example.org")
    publish(database, origin="import")
    consumer.consume(outbox(database)[0])
    assert sender.send_due("email") == 0 and sink[0].messages == []
    assert woken == []


def test_a_webhook_gets_the_signed_envelope_with_a_stable_id(database, notifier, receiver):
    consumer, sender = notifier
    _, secret = endpoint(database, f"{receiver.url}/hook")
    publish(database)
    [event] = outbox(database)
    consumer.consume(event)
    assert sender.send_due("webhook") == 1
    [request] = receiver.requests
    verify(secret, request["headers"], request["body"])  # raises if the signature is wrong
    assert request["headers"]["webhook-id"] == event["id"]
    assert json.loads(request["body"])["type"] == "article.published"


def test_a_slow_receiver_does_not_hold_up_the_other_endpoints(database, notifier, receiver):
    consumer, sender = notifier
    endpoint(database, f"{receiver.url}/slow")
    for n in range(5):
        endpoint(database, f"{receiver.url}/fast-{n}")
    others_arrived = []

    def answer_once_the_others_have() -> (
        None
    ):  # or give up after 10 s, as a sequential sender makes it
        others_arrived.append(
            wait_for(lambda: sum(r["path"].startswith("/fast") for r in receiver.requests) == 5)
        )

    receiver.before_answer["/slow"] = answer_once_the_others_have
    publish(database)
    consumer.consume(outbox(database)[0])
    assert sender.send_due("webhook") == 6
    assert others_arrived == [True]
    assert [row.status for row in deliveries(database)] == [DeliveryStatus.SENT] * 6


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_failing_endpoint_is_retried_on_schedule_then_dead(database, notifier, receiver):
    consumer, sender = notifier
    sender.settings = replace(sender.settings, notify_retry_schedule=(60,))
    endpoint(database, f"{receiver.url}/down")
    receiver.status["/down"] = 503
    publish(database)
    consumer.consume(outbox(database)[0])
    sender.send_due("webhook")
    [row] = deliveries(database)
    assert row.status == DeliveryStatus.PENDING and row.due_at > utcnow() + timedelta(seconds=50)
    with database.transaction() as session:  # a minute later
        session.execute(update(Delivery).values(due_at=utcnow()))
    sender.send_due("webhook")
    [row] = deliveries(database)
    assert row.status == DeliveryStatus.DEAD and row.attempts == 2
    assert len(receiver.requests) == 2


def test_410_disables_the_endpoint_and_says_why(database, notifier, receiver):
    consumer, sender = notifier
    endpoint_id, _ = endpoint(database, f"{receiver.url}/gone")
    receiver.status["/gone"] = 410
    publish(database)
    consumer.consume(outbox(database)[0])
    sender.send_due("webhook")
    with database.session() as session:
        row = session.get(WebhookEndpoint, endpoint_id)
    assert row is not None and not row.enabled and "410" in (row.disabled_reason or "")


def test_a_refused_recipient_is_not_retried(database, notifier, sink):
    consumer, sender = notifier
    mails, _ = sink
    mails.refuse["nobody@example.org"] = "550 5.1.1 no such user"
    subscribe(database, "nobody@example.org")
    subscribe(database, "reader@example.org")
    publish(database)
    consumer.consume(outbox(database)[0])
    sender.send_due("email")
    outcome = {d.destination_id: d.status for d in deliveries(database)}
    assert sorted(outcome.values()) == [DeliveryStatus.FAILED, DeliveryStatus.SENT]
    assert mails.received() == {("reader@example.org", "Budget passes"): 1}


def test_a_correction_mails_those_who_got_the_story_once(database, notifier, sink, editor, client):
    consumer, sender = notifier
    mails, _ = sink
    subscribe(database, "reader@example.org")
    article_id = publish(database)
    consumer.consume(outbox(database)[0])
    sender.send_due("email")
    subscribe(database, "later@example.org")  # joined after: never got the story
    plain_edit = client.patch(
        f"/api/v1/articles/{article_id}", json={"summary": "typo fixed"}, headers=editor
    )
    corrected = client.patch(
        f"/api/v1/articles/{article_id}",
        json={"summary": "The vote was 310 to 290.", "correction": "We misreported the vote."},
        headers=editor,
    )
    assert plain_edit.status_code == corrected.status_code == 200
    for event in outbox(database)[1:]:
        consumer.consume(event)
    sender.send_due("email")
    assert mails.received() == {
        ("reader@example.org", "Budget passes"): 1,
        ("reader@example.org", "Correction: Budget passes"): 1,
    }
    text = mails.messages[-1].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "We misreported the vote." in text


def test_a_retraction_cancels_what_was_not_sent(database, notifier, sink, receiver):
    consumer, sender = notifier
    subscribe(database, "reader@example.org")
    endpoint(database, f"{receiver.url}/hook", [events.ARTICLE_RETRACTED])
    article_id = publish(database)
    consumer.consume(outbox(database)[0])
    with database.transaction() as session:
        article = session.get(Article, article_id)
        assert article is not None
        lifecycle.transition(session, article, S.RETRACTED, actor="test", reason="legal")
    consumer.consume(outbox(database)[1])
    sender.send_due("email")
    sender.send_due("webhook")
    assert sink[0].messages == []
    [request] = receiver.requests
    assert json.loads(request["body"])["type"] == "article.retracted"
    statuses = {d.kind: d.status for d in deliveries(database)}
    assert statuses == {"story": DeliveryStatus.CANCELLED, "retraction": DeliveryStatus.SENT}


def test_a_dead_delivery_is_sent_again_by_dlq_replay(database, notifier, receiver, settings):
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT, process_env

    consumer, sender = notifier
    sender.settings = replace(sender.settings, notify_retry_schedule=())
    endpoint(database, f"{receiver.url}/flaky")
    receiver.status["/flaky"] = 503
    publish(database)
    consumer.consume(outbox(database)[0])
    sender.send_due("webhook")
    assert [d.status for d in deliveries(database)] == [DeliveryStatus.DEAD]
    listed = subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", "list"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "delivery #" in listed.stdout and "webhook" in listed.stdout
    replay = subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", "replay", "--deliveries"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "scheduled 1 dead deliveries again" in replay.stdout, replay.stderr
    receiver.status["/flaky"] = 200  # the receiver is fixed
    sender.send_due("webhook")
    assert [d.status for d in deliveries(database)] == [DeliveryStatus.SENT]
