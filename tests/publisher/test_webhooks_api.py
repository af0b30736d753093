"""The admins' webhooks API, on a real database and broker, with the notifier's own sender
posting to a real HTTP receiver on loopback: what an admin registers is what receives."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from services.notifier.channels.email import FileMailer
from services.notifier.channels.webhook import HttpWebhookTransport
from services.notifier.sending import Sender
from services.publisher import create_app
from shared.db import utcnow
from shared.models import WebhookEndpoint
from shared.webhooks import verify
from tests.brokers import tasks_sent
from tests.notifier.test_webhook_channel import Receiver
from tests.publisher.helpers import row_counts


@pytest.fixture
def admin(admin_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def local(make_settings, database):  # type: ignore[no-untyped-def]
    """A client of an app that may send to loopback, as tests need (WEBHOOK_ALLOW_PRIVATE)."""
    settings = make_settings(webhook_allow_private=True)
    client = create_app(settings, db=database).test_client()
    client.settings = settings
    return client


def register(client, admin, **body):  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/webhooks", json=body, headers=admin)
    assert response.status_code == 201, response.json
    return response.json


def send_webhooks(database, settings, tmp_path) -> int:  # type: ignore[no-untyped-def]
    """Run the notifier's sender once over due webhooks, as its worker would."""
    transport = HttpWebhookTransport(allow_private=True)
    return Sender(database, settings, FileMailer(tmp_path), transport).send_due("webhook")


def test_registering_shows_the_secret_once(local, admin, receiver):
    created = register(local, admin, url=receiver.url("/hook"), sections=["world"])
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["article.published"]
    assert (created["sections"], created["tags"]) == (["world"], [])
    assert created["enabled"] is True and created["disabled_reason"] is None
    for path in ("/api/v1/webhooks", f"/api/v1/webhooks/{created['id']}"):
        response = local.get(path, headers=admin)
        assert response.status_code == 200
        assert created["secret"] not in response.get_data(as_text=True)
        assert "secret" not in json.dumps(response.json).replace("previous_secret_until", "")
    assert [e["id"] for e in local.get("/api/v1/webhooks", headers=admin).json["items"]] == [
        created["id"]
    ]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("ftp://example.com/hook", "only http and https"),
        ("http://user:password@example.com/hook", "credentials"),
        ("not a url", ""),
    ],
)
def test_an_unsafe_target_is_422_naming_the_url(client, admin, database, url, why):
    before = row_counts(database)
    response = client.post("/api/v1/webhooks", json={"url": url}, headers=admin)
    assert response.status_code == 422, response.json
    assert set(response.json["error"]["details"]) == {"url"}
    assert why in response.json["error"]["details"]["url"][0]
    assert row_counts(database) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_types": ["article.exploded"]}, "event_types"),
        ({"event_types": []}, "event_types"),
        ({"sections": ["World"]}, "sections"),
        ({"tags": ["a b"]}, "tags"),
        ({"secret": "whsec_mine"}, "secret"),
    ],
)
def test_bad_fields_are_422_naming_them(client, admin, body, field):
    response = client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/x", **body}, headers=admin
    )
    assert response.status_code == 422
    assert set(response.json["error"]["details"]) == {field}


def test_webhooks_are_for_admins_only(client, editor):
    assert client.get("/api/v1/webhooks").status_code == 401
    assert client.get("/api/v1/webhooks", headers=editor).status_code == 403
    assert client.post("/api/v1/webhooks", json={"url": "x"}, headers=editor).status_code == 403


def test_an_unknown_endpoint_is_404(client, admin):
    for webhook_id in ("0190b5a4-0000-7000-8000-000000000000", "not-an-id"):
        response = client.get(f"/api/v1/webhooks/{webhook_id}", headers=admin)
        assert response.status_code == 404
        assert response.json["error"]["code"] == "not_found"


def test_a_test_event_arrives_signed_and_its_attempt_is_listed(
    local, admin, receiver, database, redis_url, tmp_path
):
    created = register(local, admin, url=receiver.url("/hook"))
    response = local.post(f"/api/v1/webhooks/{created['id']}/test", headers=admin)
    assert response.status_code == 202
    queued = response.json
    assert (queued["kind"], queued["status"], queued["attempts"]) == ("test", "pending", [])
    assert tasks_sent(redis_url, "notifier") == [("notifier.send", "webhook")]

    assert send_webhooks(database, local.settings, tmp_path) == 1
    [got] = receiver.requests
    verify(created["secret"], got.headers, got.body)
    envelope = json.loads(got.body)
    assert envelope["type"] == "pressroom.test"
    assert envelope["specversion"] == "1.0" and envelope["source"] == "pressroom/publisher"
    assert envelope["data"] == {}
    assert envelope["id"] == got.headers["webhook-id"] == queued["event_id"]

    page = local.get(f"/api/v1/webhooks/{created['id']}/deliveries", headers=admin).json
    [delivery] = page["items"]
    assert (delivery["id"], delivery["status"]) == (queued["id"], "sent")
    [attempt] = delivery["attempts"]
    assert (attempt["outcome"], attempt["status_code"], attempt["error"]) == (
        "delivered",
        200,
        None,
    )
    assert attempt["elapsed_ms"] is not None and attempt["at"]
    assert page["next_cursor"] is None


def test_after_a_rotation_old_and_new_secrets_both_sign(local, admin, receiver, database, tmp_path):
    created = register(local, admin, url=receiver.url("/hook"))
    response = local.post(f"/api/v1/webhooks/{created['id']}/rotate", headers=admin)
    assert response.status_code == 200
    rotated = response.json
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    until = local.get(f"/api/v1/webhooks/{created['id']}", headers=admin).json
    assert until["previous_secret_until"] is not None
    local.post(f"/api/v1/webhooks/{created['id']}/test", headers=admin)
    send_webhooks(database, local.settings, tmp_path)
    [got] = receiver.requests
    verify(rotated["secret"], got.headers, got.body)
    verify(created["secret"], got.headers, got.body)  # receivers switch at their own pace


def test_deliveries_come_newest_first_a_page_at_a_time(local, admin, receiver):
    created = register(local, admin, url=receiver.url("/hook"))
    ids = [
        local.post(f"/api/v1/webhooks/{created['id']}/test", headers=admin).json["id"]
        for _ in range(3)
    ]
    path = f"/api/v1/webhooks/{created['id']}/deliveries"
    first = local.get(f"{path}?limit=2", headers=admin).json
    assert [d["id"] for d in first["items"]] == [ids[2], ids[1]]
    second = local.get(f"{path}?limit=2&cursor={first['next_cursor']}", headers=admin).json
    assert [d["id"] for d in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    bad = local.get(f"{path}?cursor=abc", headers=admin)
    assert bad.status_code == 422 and "cursor" in bad.json["error"]["details"]


def test_disable_and_enable(local, admin, receiver, database):
    created = register(local, admin, url=receiver.url("/hook"))
    path = f"/api/v1/webhooks/{created['id']}"
    disabled = local.post(f"{path}/disable", json={"reason": "moving servers"}, headers=admin)
    assert disabled.status_code == 200
    assert (disabled.json["enabled"], disabled.json["disabled_reason"]) == (
        False,
        "moving servers",
    )
    refused = local.post(f"{path}/test", headers=admin)
    assert refused.status_code == 409
    assert refused.json["error"]["code"] == "endpoint_disabled"

    with database.transaction() as session:  # as the notifier leaves an endpoint that fails
        session.execute(
            update(WebhookEndpoint).values(
                failing_since=utcnow() - timedelta(days=6), disabled_reason="failing since..."
            )
        )
    assert local.get(path, headers=admin).json["failing_since"] is not None
    enabled = local.post(f"{path}/enable", headers=admin)
    assert enabled.status_code == 200
    assert enabled.json["enabled"] is True
    assert (enabled.json["disabled_reason"], enabled.json["failing_since"]) == (None, None)
    plain = local.post(f"{path}/disable", headers=admin).json
    assert plain["disabled_reason"] == "disabled by an admin"


def test_secrets_never_reach_the_logs(local, admin, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    created = register(local, admin, url=receiver.url("/hook"))
    rotated = local.post(f"/api/v1/webhooks/{created['id']}/rotate", headers=admin).json
    local.get("/api/v1/webhooks", headers=admin)
    assert created["secret"] not in caplog.text
    assert rotated["secret"] not in caplog.text


def test_the_operations_are_documented(client):
    spec = client.get("/api/v1/openapi.json").json
    schemas = spec["components"]["schemas"]
    assert {"WebhookCreate", "Webhook", "WebhookWithSecret", "Delivery", "DeliveryPage"} <= set(
        schemas
    )
    assert "secret" not in schemas["Webhook"]["properties"]
    assert "secret" in schemas["WebhookWithSecret"]["properties"]
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/webhooks", "post"),
        ("/api/v1/webhooks", "get"),
        ("/api/v1/webhooks/{webhook_id}", "get"),
        ("/api/v1/webhooks/{webhook_id}/rotate", "post"),
        ("/api/v1/webhooks/{webhook_id}/test", "post"),
        ("/api/v1/webhooks/{webhook_id}/deliveries", "get"),
        ("/api/v1/webhooks/{webhook_id}/disable", "post"),
        ("/api/v1/webhooks/{webhook_id}/enable", "post"),
    ]:
        assert method in paths[path], path
