"""An event's whole path on real parts: API, outbox, Redis, Celery workers, ledger."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select

from services.publisher import create_app
from shared.bus import CelerySender
from shared.celery import create_celery
from shared.models import DeadLetter, OutboxEvent
from shared.relay import Relay
from tests.brokers import queued
from tests.conftest import RedisServer
from tests.e2e.conftest import ledger, wait_for
from tests.publisher.helpers import article

pytestmark = pytest.mark.e2e


def test_published_article_reaches_both_workers(client, editor, database, settings, workers):
    workers.start(settings)
    created = client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    aid = created.json["id"]

    def both_consumed():  # type: ignore[no-untyped-def]
        items = client.get(f"/api/v1/articles/{aid}/events", headers=editor).json["items"]
        return all(c["consumed_at"] for c in items[0]["consumers"])

    assert wait_for(both_consumed, 60), workers.logs()
    archived = client.post(f"/api/v1/articles/{aid}/archive", headers=editor)
    assert archived.status_code == 200
    event_ids = {
        e["id"] for e in client.get(f"/api/v1/articles/{aid}/events", headers=editor).json["items"]
    }
    assert wait_for(lambda: len(ledger(database)) == 3, 30), workers.logs()
    assert {e for e, _ in ledger(database)} == event_ids


def test_nothing_is_lost_or_doubled_while_redis_is_down(
    database, settings, tmp_path, workers, editor
):
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    own = replace(settings, redis_url=redis_server.url)
    client = create_app(own, db=database).test_client()
    try:
        redis_server.stop()
        ids = []
        for n in range(3):
            response = client.post(
                "/api/v1/articles",
                json=article(title=f"Down {n}", status="published"),
                headers=editor,
            )
            assert response.status_code == 201
            ids.append(response.json["id"])
        with database.session() as session:
            waiting = session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.relayed_at.is_(None))
            )
        assert waiting == 3

        redis_server.start()
        later = client.post(
            "/api/v1/articles", json=article(title="Back", status="published"), headers=editor
        )
        assert later.status_code == 201
        Relay(database, CelerySender(create_celery(own, "test"))).relay()  # as the relay does
        for queue in ("archiver", "notifier"):
            subjects = [m["envelope"]["subject"] for m in queued(redis_server.url, queue)]
            assert sorted(subjects) == sorted([*ids, later.json["id"]])  # each exactly once

        workers.start(own)
        assert wait_for(lambda: len(ledger(database)) == 8, 60), workers.logs()
        with database.session() as session:
            assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0
    finally:
        redis_server.stop()
