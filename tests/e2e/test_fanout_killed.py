"""Exactly one message per subscriber per story, while a notifier is killed mid-fan-out and
the event is delivered again: counted at a real SMTP server and a real HTTP receiver."""

from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import replace

import pytest
from sqlalchemy import func, insert, select

from services.notifier.sending import EMAIL_CONNECTIONS, WEBHOOK_CONCURRENCY
from shared.bus import CelerySender
from shared.celery import create_celery
from shared.db import new_id
from shared.events import envelope_of
from shared.models import Delivery, OutboxEvent, Subscription, WebhookEndpoint
from shared.relay import Relay
from shared.webhooks import new_secret
from tests.e2e.conftest import wait_for
from tests.notifier.servers import Receiver, smtp_sink
from tests.publisher.helpers import article

pytestmark = pytest.mark.e2e
SUBSCRIBERS = 1500
ENDPOINTS = 20


def sent(database) -> int:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return int(session.scalar(select(func.count()).where(Delivery.status == "sent")) or 0)


def test_a_notifier_killed_mid_fan_out_loses_and_doubles_nothing(
    client, editor, database, settings, workers
):
    with smtp_sink() as (mails, smtp_url), Receiver() as receiver:
        own = replace(
            settings, smtp_url=smtp_url, webhook_allow_private=True, delivery_lease_seconds=3
        )
        with database.transaction() as session:
            session.execute(
                insert(Subscription),
                [
                    {"id": new_id(), "email": f"r{n}@example.org", "status": "confirmed",
                     "sections": [], "tags": [], "requested_sections": [], "requested_tags": []}
                    for n in range(SUBSCRIBERS)
                ],
            )  # fmt: skip
            for n in range(ENDPOINTS):
                session.add(
                    WebhookEndpoint(
                        url=f"{receiver.url}/h{n}",
                        event_types=["article.published"],
                        secret=new_secret(),
                    )
                )
        workers.start(own, "relay", "notifier", "notifier")
        victim = workers.procs[1]
        created = client.post("/api/v1/articles", json=article(status="published"), headers=editor)
        assert created.status_code == 201
        assert wait_for(lambda: sent(database) >= 200, 60, 0.02), workers.logs()
        os.killpg(victim.pid, signal.SIGKILL)  # mid-batch, its lease still held
        victim.wait(10)
        workers.start(own, "notifier")

        assert wait_for(lambda: len(mails.messages) >= SUBSCRIBERS, 120, 0.5), workers.logs()
        assert wait_for(lambda: len(receiver.requests) >= ENDPOINTS, 30, 0.5), workers.logs()

        # The same event once more, as a broker restart or a replay would bring it.
        with database.session() as session:
            row = session.execute(
                select(
                    OutboxEvent.event_id,
                    OutboxEvent.type,
                    OutboxEvent.article_id,
                    OutboxEvent.data,
                    OutboxEvent.created_at,
                )
            ).one()
        with CelerySender(create_celery(own, "test")).open() as send:
            send("notifier", [envelope_of(row)])
        Relay(database, CelerySender(create_celery(own, "test"))).relay()
        wait_for(lambda: False, 5)  # time for a duplicate to show, if there were one

        per_reader = Counter(m["To"] for m in mails.messages)
        missing = SUBSCRIBERS - len(per_reader)
        doubled = sum(n - 1 for n in per_reader.values())
        assert missing == 0
        # The one window left: a message the server accepted just before its worker died,
        # before its outcome was committed. At most one per connection of the victim, and
        # one per webhook it had in flight (the README's guarantees).
        assert doubled <= EMAIL_CONNECTIONS, f"{doubled} duplicates"
        per_endpoint = Counter(r["path"] for r in receiver.requests)
        assert len(per_endpoint) == ENDPOINTS and max(per_endpoint.values()) <= 2
        assert sum(per_endpoint.values()) - ENDPOINTS <= WEBHOOK_CONCURRENCY
