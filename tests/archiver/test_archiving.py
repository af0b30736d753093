"""The archive policy and the sweep: what gets archived, once, and how it is recorded."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from services.archiver.archiving import ANALYZE_FIRST, sweep
from shared.db import new_id
from shared.events import ARTICLE_ARCHIVED as ARCHIVED
from shared.events import envelope_of, make_envelope, parse_envelope
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.models.article import event_data
from tests.e2e.conftest import ROOT, process_env
from tests.publisher.helpers import article

NOW = datetime.now(UTC)


@pytest.fixture
def policy(settings):  # type: ignore[no-untyped-def]
    return replace(
        settings,
        archive_after_days=180,
        archive_policy={"news": 30, "sport": 90, "features": None},
    )


def publish(client, editor, title: str, days_ago: float, **extra):  # type: ignore[no-untyped-def]
    published_at = (NOW - timedelta(days=days_ago)).isoformat()
    body = article(title=title, status="published", published_at=published_at, **extra)
    response = client.post("/api/v1/articles", json=body, headers=editor)
    assert response.status_code == 201, response.json
    return response.json


def statuses(database) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return {a.title: a.status for a in session.scalars(select(Article))}


def test_policy_decides_what_is_aged(client, editor, database, policy):
    publish(client, editor, "old news", 40, section="news")
    publish(client, editor, "fresh news", 20, section="news")
    publish(client, editor, "old sport", 100, section="sport")
    publish(client, editor, "recent sport", 80, section="sport")
    publish(client, editor, "ancient feature", 1000, section="features")
    publish(client, editor, "old world", 200, section="world")
    publish(client, editor, "recent world", 100, section="world")
    publish(client, editor, "old unsectioned", 200, section=None)
    publish(client, editor, "evergreen news", 400, section="news", evergreen=True)
    own_past = (NOW - timedelta(days=1)).isoformat()
    own_future = (NOW + timedelta(days=30)).isoformat()
    publish(client, editor, "fresh, own date passed", 1, section="news", archive_after=own_past)
    publish(client, editor, "old, own date ahead", 400, section="news", archive_after=own_future)
    draft = client.post("/api/v1/articles", json=article(title="a draft"), headers=editor)
    assert draft.status_code == 201

    assert sweep(database, policy) == 5
    archived = {t for t, s in statuses(database).items() if s == "archived"}
    assert archived == {
        "old news",
        "old sport",
        "old world",
        "old unsectioned",
        "fresh, own date passed",
    }


def test_sweep_audits_and_announces_each_archived_story_once(client, editor, database, policy):
    aid = publish(client, editor, "old news", 40, section="news")["id"]
    assert sweep(database, policy) == 1
    assert sweep(database, policy) == 0
    stored = client.get(f"/api/v1/articles/{aid}", headers=editor).json
    assert stored["status"] == "archived"
    assert stored["archive_reason"] == "aged"
    assert stored["archived_at"] is not None
    assert stored["version"] == 2
    history = client.get(f"/api/v1/articles/{aid}/history", headers=editor).json["items"]
    assert history[-1] == {
        "at": history[-1]["at"],
        "actor": "archiver:sweep",
        "from": "published",
        "to": "archived",
        "reason": "aged",
    }
    events = client.get(f"/api/v1/articles/{aid}/events", headers=editor).json["items"]
    assert [e["type"] for e in events] == ["article.published", "article.archived"]
    assert events[1]["version"] == 2


def test_swept_events_are_the_envelopes_the_publisher_builds(client, editor, database, policy):
    # The sweep builds its envelopes in SQL; consumers must not be able to tell them apart
    # from those make_envelope builds, whatever the article holds.
    publish(
        client, editor, "Dès l'aube, \"quoted\" C:\\path 🗞", 40, section="news",
        tags=["a", "b"], authors=["Desk", "Ana"], summary="line one\nline two",
    )  # fmt: skip
    publish(client, editor, "no section", 200, section=None, tags=[], authors=[])
    before = datetime.now(UTC)
    assert sweep(database, policy) == 2
    after = datetime.now(UTC)

    with database.session() as session:
        rows = session.scalars(select(OutboxEvent).where(OutboxEvent.type == ARCHIVED)).all()
        assert len(rows) == 2
        for row in rows:
            stored = session.get_one(Article, row.article_id)
            expected = make_envelope(ARCHIVED, event_data(stored, reason="aged", origin="sweep"))
            swept = parse_envelope(envelope_of(row))
            assert swept["id"] == row.event_id
            event_id = uuid.UUID(row.event_id)  # version 7: Unix milliseconds, then random
            assert event_id.version == 7 and event_id.variant == uuid.RFC_4122
            millis = event_id.int >> 80
            assert before.timestamp() * 1000 - 1 <= millis <= after.timestamp() * 1000 + 1
            assert swept["time"] <= datetime.now(UTC)
            assert drop_id_and_time(swept) == drop_id_and_time(parse_envelope(expected))
        assert len({row.event_id for row in rows}) == 2


def drop_id_and_time(envelope: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in envelope.items() if k not in ("id", "time")}


def test_unarchived_story_is_not_archived_again_by_the_next_sweep(client, editor, database, policy):
    aid = publish(client, editor, "old news", 40, section="news")["id"]
    sweep(database, policy)
    restored = client.post(
        f"/api/v1/articles/{aid}/unarchive", json={"reason": "still relevant"}, headers=editor
    )
    assert restored.status_code == 200
    assert sweep(database, policy) == 0
    assert statuses(database)["old news"] == "published"
    history = client.get(f"/api/v1/articles/{aid}/history", headers=editor).json["items"]
    assert history[-1]["reason"] == "still relevant"
    # ...until its new archive date, a full age from the day it was restored
    after = datetime.fromisoformat(restored.json["archive_after"])
    assert after > NOW + timedelta(days=29)
    assert sweep(database, policy, now=after - timedelta(days=1)) == 0
    assert sweep(database, policy, now=after + timedelta(minutes=1)) == 1


def test_sweeps_running_at_once_archive_each_story_once(client, editor, database, policy):
    # three sweeps, each of three workers on PostgreSQL: nine at once over 60 stories
    small_chunks = replace(policy, archive_sweep_chunk=7, archive_sweep_workers=3)
    for n in range(60):
        publish(client, editor, f"old {n}", 40 + n, section="news")
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda: counts.append(sweep(database, small_chunks)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts) == 60
    with database.session() as session:
        audited = session.scalar(
            select(func.count(func.distinct(ArticleHistory.article_id))).where(
                ArticleHistory.reason == "aged"
            )
        )
        rows = session.scalar(select(func.count()).where(ArticleHistory.reason == "aged"))
        events = session.scalar(select(func.count()).where(OutboxEvent.type == "article.archived"))
    assert audited == rows == events == 60


def test_a_story_held_while_the_sweep_went_past_is_archived_by_that_sweep(
    client, editor, database, policy
):
    # An editor's transaction holds the oldest aged story: the first chunk skips it and the
    # walk goes on past it. Released meanwhile, it is still archived before the sweep ends.
    one_by_one = replace(policy, archive_sweep_chunk=2, archive_sweep_workers=1)
    ids = [publish(client, editor, f"old {n}", 100 - n, section="news")["id"] for n in range(6)]
    holder = database.engine.connect()
    held = holder.begin()
    holder.execute(select(Article.id).where(Article.id == ids[0]).with_for_update())
    chunks: list[int] = []

    def after_chunk(rows: int) -> None:
        chunks.append(rows)
        if held.is_active:
            held.commit()  # the editor is done: the walk is already past the story

    try:
        assert sweep(database, one_by_one, on_chunk=after_chunk) == 6
    finally:
        holder.close()
    assert set(statuses(database).values()) == {"archived"}
    assert chunks == [2, 2, 1, 1]  # the last one is the story that was held


def test_a_large_sweep_leaves_the_planner_knowing_the_outbox(database, policy):
    # The relay plans its lookups by the outbox's statistics; a sweep that grows the outbox
    # from nothing must not leave PostgreSQL believing it holds a handful of rows.
    old = NOW - timedelta(days=400)
    rows = [aged_row(f"aged-{n:05d}", old - timedelta(minutes=n)) for n in range(3 * ANALYZE_FIRST)]
    with database.transaction() as session:
        session.execute(insert(Article), rows)
    assert sweep(database, policy) == len(rows)
    with database.session() as session:
        believed = session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'outbox'"))
    assert believed >= ANALYZE_FIRST


def aged_row(slug: str, published: datetime) -> dict[str, Any]:
    return {
        "id": new_id(published), "slug": slug, "title": slug, "summary": "", "body": "<p>x</p>",
        "section": "world", "tags": [], "authors": [], "status": "published",
        "published_at": published, "evergreen": False, "version": 1,
        "created_at": published, "updated_at": published,
    }  # fmt: skip


def test_cli_sweep_prints_how_many_it_archived(client, editor, database, settings):
    publish(client, editor, "old news", 40, section="news")
    publish(client, editor, "fresh news", 1, section="news")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "archive", "sweep"],
        cwd=ROOT,
        env=process_env(settings, ARCHIVE_POLICY="news=30"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_cli_archives_and_restores_one_article_with_a_reason(client, editor, settings):
    created = publish(client, editor, "a story", 1)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "services.cli", "archive", *args],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    archived = run("article", created["slug"], "--reason", "legal hold")
    assert archived.returncode == 0, archived.stderr
    restored = run("restore", created["id"], "--reason", "hold lifted")
    assert restored.returncode == 0, restored.stderr
    history = client.get(f"/api/v1/articles/{created['id']}/history", headers=editor).json
    assert [(h["to"], h["reason"]) for h in history["items"][-2:]] == [
        ("archived", "legal hold"),
        ("published", "hold lifted"),
    ]
    assert history["items"][-1]["actor"].startswith("cli:")
    missing = run("article", "no-such-story", "--reason", "x")
    assert missing.returncode == 1
    assert "no article" in missing.stderr


def test_a_bad_policy_stops_start_up_naming_the_bad_part(settings):
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "archive", "sweep"],
        cwd=ROOT,
        env=process_env(settings, ARCHIVE_POLICY="news=30,sport=ninety"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "sport=ninety" in result.stderr
