"""The public subscriptions API, on a real database and broker: double opt-in, one subscriber
per address, nothing revealed about who is subscribed, a per-address rate limit."""

from __future__ import annotations

import email
import re
import time
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import select

from services.notifier.channels.email import FileMailer
from services.notifier.channels.webhook import HttpWebhookTransport
from services.notifier.sending import Sender
from services.publisher import create_app
from shared.models import Delivery, Subscription
from tests.brokers import tasks_sent
from tests.publisher.helpers import row_counts

DEAD_REDIS = "redis://127.0.0.1:1/0"


def subscribe(client, **body):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/subscriptions", json=body)


def subscriptions(database) -> list[Subscription]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(session.scalars(select(Subscription)))


def deliveries(database) -> list[Delivery]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def mail_in(directory: Path) -> list[Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(directory.glob("*.eml"))]


def link_in(message: Message, path: str) -> str:
    """The path and query of the first link to ``path`` in the message's text part."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            text = part.get_payload(decode=True).decode()  # type: ignore[union-attr]
            found = re.search(rf"http://pressroom\.test({re.escape(path)}\?token=[\w.\-]+)", text)
            assert found, text
            return found.group(1)
    raise AssertionError("no text part")


def test_a_new_address_is_pending_and_gets_a_confirmation_email_sent_at_once(
    client, database, redis_url
):
    response = subscribe(
        client, email="Reader@Example.COM", sections=["world"], tags=["north-korea"]
    )
    assert response.status_code == 202
    assert "reader@example.com" not in response.get_data(as_text=True).lower()
    [sub] = subscriptions(database)
    assert sub.email == "reader@example.com"
    assert sub.status == "pending"
    assert (sub.requested_sections, sub.requested_tags) == (["world"], ["north-korea"])
    assert (sub.sections, sub.tags) == ([], [])  # nothing takes effect before confirming
    [confirm] = deliveries(database)
    assert (confirm.channel, confirm.kind, confirm.destination_id) == ("email", "confirm", sub.id)
    assert confirm.payload == {}
    assert confirm.status == "pending"
    assert tasks_sent(redis_url, "notifier") == [("notifier.send", "email")]


def test_the_answer_never_tells_whether_the_address_was_known(client, database):
    first = subscribe(client, email="reader@example.com")
    again = subscribe(client, email="READER@example.com", sections=["sport"])
    other = subscribe(client, email="someone.else@example.org")
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json == again.json == other.json
    assert len(subscriptions(database)) == 2
    [sub] = [s for s in subscriptions(database) if s.email == "reader@example.com"]
    assert sub.requested_sections == ["sport"]
    assert [d.kind for d in deliveries(database) if d.destination_id == sub.id] == [
        "confirm",
        "confirm",
    ]


def test_the_confirmation_email_confirms_with_the_topics_asked_for(
    client, database, settings, tmp_path
):
    subscribe(client, email="reader@example.com", sections=["world", "world"], tags=["russia"])
    sender = Sender(database, settings, FileMailer(tmp_path), HttpWebhookTransport())
    assert sender.send_due("email") == 1
    [message] = mail_in(tmp_path)
    assert message["To"] == "reader@example.com"

    page = client.get(link_in(message, "/subscriptions/confirm"))
    assert page.status_code == 200
    assert "Your subscription is confirmed" in page.get_data(as_text=True)
    [sub] = subscriptions(database)
    assert sub.status == "confirmed"
    assert (sub.sections, sub.tags) == (["world"], ["russia"])
    assert sub.confirmed_at is not None


def test_a_confirmed_reader_keeps_the_old_topics_until_the_new_link_is_followed(
    client, database, settings, tmp_path
):
    subscribe(client, email="reader@example.com", sections=["world"])
    sender = Sender(database, settings, FileMailer(tmp_path), HttpWebhookTransport())
    sender.send_due("email")
    [first] = mail_in(tmp_path)
    client.get(link_in(first, "/subscriptions/confirm"))
    for sent in tmp_path.glob("*.eml"):
        sent.unlink()

    subscribe(client, email="reader@example.com", sections=["sport"])  # anyone could send this
    [sub] = subscriptions(database)
    assert (sub.status, sub.sections, sub.requested_sections) == ("confirmed", ["world"], ["sport"])

    sender.send_due("email")
    [second] = mail_in(tmp_path)
    client.get(link_in(second, "/subscriptions/confirm"))
    [sub] = subscriptions(database)
    assert (sub.status, sub.sections) == ("confirmed", ["sport"])


def test_a_reader_who_left_is_pending_again_after_subscribing_again(client, database):
    from shared.subscriber_tokens import UNSUBSCRIBE, make_token

    subscribe(client, email="reader@example.com")
    [sub] = subscriptions(database)
    token = make_token(client.application.extensions["pressroom"].settings.secret_key,
                       UNSUBSCRIBE, sub.id)  # fmt: skip
    client.post(f"/subscriptions/unsubscribe?token={token}")
    assert subscriptions(database)[0].status == "unsubscribed"
    subscribe(client, email="reader@example.com")
    assert subscriptions(database)[0].status == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not an address"}, "email"),
        ({"email": "reader@localhost"}, "email"),
        ({"email": "reader@example.com\r\nBcc: x@example.com"}, "email"),
        ({}, "email"),
        ({"email": "reader@example.com", "sections": ["World"]}, "sections"),
        ({"email": "reader@example.com", "sections": ["world\n"]}, "sections"),
        ({"email": "reader@example.com", "tags": ["north korea"]}, "tags"),
        ({"email": "reader@example.com", "tags": "russia"}, "tags"),
        ({"email": "reader@example.com", "colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_writes_nothing(client, database, body, field):
    before = row_counts(database)
    response = subscribe(client, **body)
    assert response.status_code == 422, response.json
    assert set(response.json["error"]) == {"code", "message", "details"}
    assert set(response.json["error"]["details"]) == {field}
    assert row_counts(database) == before


def test_too_many_requests_from_one_address_are_429_with_retry_after(
    make_settings, database, redis_url
):
    app = create_app(make_settings(subscribe_rate_limit="2/minute"), db=database)
    client = app.test_client()
    assert subscribe(client, email="a@example.com").status_code == 202
    assert subscribe(client, email="b@example.com").status_code == 202
    refused = subscribe(client, email="c@example.com")
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "rate_limited"
    assert set(refused.json["error"]) == {"code", "message", "details"}
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert [s.email for s in subscriptions(database)] == ["a@example.com", "b@example.com"]
    # another address is counted on its own
    other = client.post(
        "/api/v1/subscriptions",
        json={"email": "d@example.com"},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert other.status_code == 202


def test_the_form_and_the_api_share_one_limit(make_settings, database, redis_url):
    app = create_app(make_settings(subscribe_rate_limit="1/minute"), db=database)
    client = app.test_client()
    assert subscribe(client, email="a@example.com").status_code == 202
    page = client.post("/subscriptions", data={"email": "b@example.com"})
    assert page.status_code == 429
    assert page.mimetype == "text/html"
    assert "too often" in page.get_data(as_text=True)
    assert int(page.headers["Retry-After"]) > 0
    # confirming and leaving are never limited: a mail provider's one-click comes from few
    # addresses for many readers
    assert client.get("/subscriptions/unsubscribe?token=x").status_code == 400


def test_with_redis_down_readers_can_still_subscribe(make_settings, database):
    app = create_app(make_settings(redis_url=DEAD_REDIS), db=database)
    started = time.monotonic()
    response = subscribe(app.test_client(), email="reader@example.com")
    assert response.status_code == 202
    assert time.monotonic() - started < 5
    assert [s.email for s in subscriptions(database)] == ["reader@example.com"]
    assert [d.kind for d in deliveries(database)] == ["confirm"]  # beat's sender finds it


def test_the_operation_is_documented_as_public(client):
    spec = client.get("/api/v1/openapi.json").json
    operation = spec["paths"]["/api/v1/subscriptions"]["post"]
    assert operation["security"] == []
    assert "202" in operation["responses"]
    schema = spec["components"]["schemas"]["SubscriptionCreate"]
    assert schema["required"] == ["email"]
    assert schema["properties"]["email"]["format"] == "email"
