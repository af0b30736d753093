"""What ops see and can do: queue depth and age, dead letters, metrics, replays."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select, update

from services.publisher import create_app
from shared import ops
from shared.bus import CelerySender, Send, emit
from shared.celery import create_celery
from shared.consumer import Consumer
from shared.db import new_id, utcnow
from shared.events import make_envelope
from shared.models import DeadLetter, OutboxEvent
from tests.brokers import queued
from tests.e2e.conftest import ROOT, process_env
from tests.publisher.helpers import article, relayed


@pytest.fixture
def ops_headers(ops_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ops_token}"}


@pytest.fixture
def sender(settings) -> CelerySender:  # type: ignore[no-untyped-def]
    return CelerySender(create_celery(settings, "test"))


def test_queues_show_depth_age_and_dead_letters(client, editor, ops_headers, database):
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    Consumer("notifier", database, {}).consume({"not": "an event"})
    snap = client.get("/ops/queues", headers=ops_headers).json
    depth = {q["name"]: q["depth"] for q in snap["queues"]}
    assert depth == {"archiver": 1, "notifier": 1}
    ages = [q["oldest_age_s"] for q in snap["queues"]]
    assert all(0 <= age < 60 for age in ages)
    assert snap["outbox_pending"] == 0
    assert snap["dead_letters"] == {"archiver": 0, "notifier": 1}
    assert snap["broker_ok"] is True
    assert snap["workers"] == []


def test_a_dead_letter_that_can_never_succeed_is_discarded_with_its_reason(
    client, ops_headers, editor, database, settings
):
    Consumer("notifier", database, {}).consume({"not": "an event"})
    with database.session() as session:
        [letter] = session.scalars(select(DeadLetter)).all()
    url = f"/ops/dead-letters/{letter.id}/discard"
    assert client.post(url, json={}, headers=ops_headers).status_code == 422
    assert client.post(url, json={"reason": "junk"}, headers=editor).status_code == 403
    assert (
        client.post(url, json={"reason": "a test's junk"}, headers=ops_headers).status_code == 200
    )
    assert client.post(url, json={"reason": "again"}, headers=ops_headers).status_code == 404
    snap = client.get("/ops/queues", headers=ops_headers).json
    assert snap["dead_letters"] == {"archiver": 0, "notifier": 0}  # the gauge falls
    listed = subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", "list", "--all"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "discarded by" in listed.stdout and "a test's junk" in listed.stdout


def test_queues_are_for_ops_only(client, editor):
    assert client.get("/ops/queues", headers=editor).status_code == 403
    assert client.get("/metrics").status_code == 401


def test_metrics_are_prometheus_text(client, editor, ops_headers):
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    response = client.get("/metrics", headers=ops_headers)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    text = response.get_data(as_text=True)
    assert 'pressroom_queue_depth{queue="archiver"} 1.0' in text
    assert "pressroom_outbox_pending 0.0" in text
    assert "pressroom_broker_up 1.0" in text


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run does)",
)
def test_a_scrape_passes_promtool(client, editor, ops_headers, database):
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    Consumer("notifier", database, {}).consume({"not": "an event"})  # every family has a value
    scrape = client.get("/metrics", headers=ops_headers).get_data()
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape, capture_output=True, timeout=60
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_dead_letters_can_be_replayed_to_their_queue(database, sender, redis_url):
    Consumer("archiver", database, {}).consume({"id": "x", "type": "article.exploded"})
    assert ops.replay_dead_letters(database, sender) == 1
    assert [m["envelope"] for m in queued(redis_url, "archiver")] == [
        {"id": "x", "type": "article.exploded"}
    ]
    assert ops.replay_dead_letters(database, sender) == 0  # each is replayed once


class StraightToAWorker:
    """A broker whose worker takes each message the moment it is sent."""

    def __init__(self, worker: Consumer):
        self.worker = worker

    @contextlib.contextmanager
    def open(self) -> Iterator[Send]:
        yield lambda queue, envelopes: self.worker.consume_message(envelopes)


def test_a_replayed_letter_that_fails_again_at_once_is_kept(database):
    still_broken = Consumer("archiver", database, {})
    still_broken.consume({"id": "x", "type": "article.exploded"})
    assert ops.replay_dead_letters(database, StraightToAWorker(still_broken)) == 1
    with database.session() as session:
        letters = session.scalars(select(DeadLetter).order_by(DeadLetter.id)).all()
    assert [letter.replayed_at is None for letter in letters] == [False, True]
    assert ops.replay_dead_letters(database, StraightToAWorker(still_broken)) == 1


def test_a_replay_the_broker_refuses_leaves_the_letters_to_replay(database):
    class BrokerDown:
        @contextlib.contextmanager
        def open(self) -> Iterator[Send]:
            raise ConnectionError("broker down")
            yield  # pragma: no cover

    Consumer("archiver", database, {}).consume({"id": "x", "type": "article.exploded"})
    with pytest.raises(ConnectionError):
        ops.replay_dead_letters(database, BrokerDown())
    with database.session() as session:
        [letter] = session.scalars(select(DeadLetter)).all()
    assert letter.replayed_at is None


def test_a_whole_message_dead_lettered_by_an_older_worker_goes_back_event_by_event(
    database, sender, redis_url
):
    first, second = (
        make_envelope("article.published", {"article_id": new_id(), "version": 1}) for _ in range(2)
    )
    with database.transaction() as session:  # as a worker from before batching kept it
        session.add(
            DeadLetter(consumer="archiver", payload=json.dumps([first, second]), reason="x")
        )
    assert ops.replay_dead_letters(database, sender) == 1
    replayed = [m["envelope"] for m in queued(redis_url, "archiver")]
    assert replayed == [first, second]
    assert Consumer("archiver", database, {}).consume_message(replayed) == ["consumed"] * 2


def test_events_lost_by_the_broker_are_resent_until_consumed(
    client, editor, database, sender, redis_url
):
    since = datetime.now(UTC) - timedelta(minutes=1)
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    [message] = queued(redis_url, "archiver")
    redis.Redis.from_url(redis_url).flushdb()  # a Redis without persistence restarted

    assert ops.replay_events(database, sender, since) == {"archiver": 1, "notifier": 1}
    assert [m["envelope"]["id"] for m in queued(redis_url, "archiver")] == [
        message["envelope"]["id"]
    ]
    Consumer("archiver", database, {}).consume(message["envelope"])
    assert ops.replay_events(database, sender, since, "archiver") == {"archiver": 0}


def test_queues_command_prints_the_same_snapshot(client, editor, settings):
    import json
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT, process_env

    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "queues", "--json"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    assert {q["name"]: q["depth"] for q in snap["queues"]} == {"archiver": 1, "notifier": 1}
    table = subprocess.run(
        [sys.executable, "-m", "services.cli", "queues"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "archiver" in table.stdout and "outbox pending: 0" in table.stdout


DEAD_BROKER = "redis://127.0.0.1:1/0"


def test_with_the_broker_down_depths_are_unknown_not_zero(make_settings, database, ops_token):
    app = create_app(make_settings(redis_url=DEAD_BROKER), db=database)
    headers = {"Authorization": f"Bearer {ops_token}"}
    snap = app.test_client().get("/ops/queues", headers=headers).json
    assert snap["broker_ok"] is False
    assert [q["depth"] for q in snap["queues"]] == [None, None]
    assert snap["in_flight"] is None
    text = app.test_client().get("/metrics", headers=headers).get_data(as_text=True)
    assert "pressroom_broker_up 0.0" in text
    assert "pressroom_queue_depth{" not in text


def test_cli_says_the_broker_is_down_in_a_line_and_fails(make_settings, database):
    settings = make_settings(redis_url=DEAD_BROKER)
    Consumer("archiver", database, {}).consume({"id": "x", "type": "article.exploded"})
    with database.transaction() as session:  # relayed, then lost by a broker
        emit(session, "article.published", {"article_id": new_id(), "version": 1})
        session.execute(update(OutboxEvent).values(relayed_at=utcnow()))
    since = "2000-01-01"
    for args in (["queues"], ["dlq", "replay"], ["events", "replay", "--since", since]):
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "broker" in result.stderr
    with database.session() as session:
        [letter] = session.scalars(select(DeadLetter)).all()
    assert letter.replayed_at is None  # still there to replay


@pytest.mark.parametrize(
    "since",
    [
        "{minute}",  # the --help example's form: no seconds, no offset (UTC)
        "{second}+00:00",  # as the API prints times
        "{second}Z",
        "{local}+02:00",
    ],
)
def test_events_replay_takes_iso_times_with_or_without_offset(
    client, editor, settings, redis_url, since
):
    then = datetime.now(UTC) - timedelta(minutes=2)
    forms = {
        "minute": then.strftime("%Y-%m-%dT%H:%M"),
        "second": then.strftime("%Y-%m-%dT%H:%M:%S"),
        "local": (then + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    redis.Redis.from_url(redis_url).flushdb()
    args = ["events", "replay", "--since", since.format(**forms)]
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "archiver: resent 1 events" in result.stdout


def test_events_replay_names_a_time_it_cannot_read(settings):
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "events", "replay", "--since", "last tuesday"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "is not an ISO 8601 time, e.g. 2026-11-26T09:00" in result.stderr


def _deliveries(database, channel: str, *states: tuple[str, int]) -> None:  # type: ignore[no-untyped-def]
    """Delivery rows of ``channel``, one per (status, attempts)."""
    from shared.models import Delivery

    with database.transaction() as session:
        for status, attempts in states:
            session.add(
                Delivery(
                    event_id=new_id(),
                    channel=channel,
                    destination_id=new_id(),
                    kind="story",
                    status=status,
                    attempts=attempts,
                )
            )


def test_queues_and_metrics_count_deliveries_per_channel_and_status(client, database, ops_headers):
    _deliveries(
        database,
        "email",
        ("pending", 0), ("pending", 0), ("pending", 2), ("sent", 1), ("dead", 8),
    )  # fmt: skip
    _deliveries(database, "webhook", ("failed", 1), ("sent", 1), ("sent", 3), ("cancelled", 0))
    snap = client.get("/ops/queues", headers=ops_headers).json
    assert snap["deliveries"] == {
        "email": {"pending": 2, "retrying": 1, "sent": 1, "failed": 0, "dead": 1, "cancelled": 0},
        "webhook": {"pending": 0, "retrying": 0, "sent": 2, "failed": 1, "dead": 0, "cancelled": 1},
    }
    text = client.get("/metrics", headers=ops_headers).get_data(as_text=True)
    assert 'pressroom_deliveries{channel="email",status="retrying"} 1.0' in text
    assert 'pressroom_deliveries{channel="email",status="pending"} 2.0' in text
    assert 'pressroom_deliveries{channel="webhook",status="sent"} 2.0' in text
    assert 'pressroom_deliveries{channel="webhook",status="dead"} 0.0' in text


def test_queues_command_shows_deliveries(client, database, settings):
    _deliveries(database, "email", ("pending", 2), ("sent", 1))
    table = subprocess.run(
        [sys.executable, "-m", "services.cli", "queues"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines() if line}
    assert lines["deliveries"][:5] == ["pending", "retrying", "sent", "failed", "dead"]
    assert lines["email"][:5] == ["0", "1", "1", "0", "0"]
    assert lines["webhook"][:5] == ["0", "0", "0", "0", "0"]
