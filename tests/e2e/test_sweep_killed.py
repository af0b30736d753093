"""Killing the archiver in the middle of a sweep loses nothing and archives nothing twice."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from services.archiver.archiving import sweep
from shared.celery import create_celery
from shared.db import new_id
from shared.models import Article, ArticleHistory, OutboxEvent
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e
STORIES = 6000


def load_aged_stories(database, count: int) -> None:  # type: ignore[no-untyped-def]
    long_ago = datetime.now(UTC) - timedelta(days=400)
    rows = [
        {"id": new_id(), "slug": f"old-{n}", "title": f"Old {n}", "summary": "", "body": "<p>x</p>",
         "tags": [], "authors": [], "status": "published", "published_at": long_ago,
         "evergreen": False, "version": 1, "created_at": long_ago, "updated_at": long_ago}
        for n in range(count)
    ]  # fmt: skip
    with database.transaction() as session:
        session.execute(insert(Article), rows)


def counts(database) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """(archived stories, distinct stories audited as aged, archived events), in one snapshot."""
    aged = ArticleHistory.reason == "aged"
    query = select(
        select(func.count()).where(Article.status == "archived").scalar_subquery(),
        select(func.count(func.distinct(ArticleHistory.article_id))).where(aged).scalar_subquery(),
        select(func.count()).where(aged).scalar_subquery(),
        select(func.count()).where(OutboxEvent.type == "article.archived").scalar_subquery(),
    )
    with database.session() as session:
        archived, audited, audit_rows, events = session.execute(query).one()
    assert audited == audit_rows, "a story was audited as archived twice"
    return archived, audited, events


def test_a_sweep_killed_half_way_is_finished_by_the_next(database, settings, workers):
    load_aged_stories(database, STORIES)
    slow = replace(settings, archive_sweep_chunk=10)
    workers.start(slow, "archiver")
    worker = workers.procs[0]
    create_celery(slow, "test").send_task("archiver.archive_sweep", queue="archiver")

    assert wait_for(lambda: counts(database)[0] >= 200, 60, 0.01), workers.logs()
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    archived, audited, events = counts(database)
    assert 0 < archived < STORIES, "the kill should land mid-sweep"
    assert archived == audited == events  # every committed chunk is whole

    assert sweep(database, slow) == STORIES - archived
    assert counts(database) == (STORIES, STORIES, STORIES)
