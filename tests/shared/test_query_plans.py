"""Feeds, the sweep and the editors' filtered lists read the indexes made for them.

At a million stories, a feed that scans the table takes seconds, and a sweep chunk that
does holds SQLite's write lock as long. The indexes are partial, and SQLite uses a partial
index only for a query that carries the terms of its predicate (``has_status``). SQLite has
no statistics here, so its plans follow from the statements alone; PostgreSQL's follow its
statistics, and ``bench/archive.py`` shows them at scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, event

from services.archiver.archiving import sweep
from shared import lifecycle
from shared.db import Database, is_postgres
from tests.publisher.helpers import article


@pytest.fixture(autouse=True)
def _sqlite_only(database: Database) -> None:
    if is_postgres(database.engine):
        pytest.skip("PostgreSQL plans follow its statistics; bench/archive.py shows them")


@contextmanager
def article_reads(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs on ``articles`` run inside the block, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("SELECT") and "FROM articles" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plans(database: Database, reads: list[tuple[str, Any]]) -> list[str]:
    with database.engine.connect() as connection:
        return [
            " / ".join(
                row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", args)
            )
            for sql, args in reads
        ]


def test_feeds_read_the_published_stories_index_in_order(client, editor, database):
    for section in ("news", "sport"):
        body = article(title=f"a {section} story", status="published", section=section)
        assert client.post("/api/v1/articles", json=body, headers=editor).status_code == 201
    for path, index in (
        ("/feed.xml", "ix_articles_published"),
        ("/sections/news/feed.xml", "ix_articles_section_published_at"),
    ):
        with article_reads(database.engine) as reads:
            assert client.get(path).status_code == 200
        assert reads, path
        for plan in plans(database, reads):
            assert f"USING INDEX {index} " in f"{plan} ", (path, plan)
            assert "TEMP B-TREE" not in plan, (path, plan)


def test_the_sweep_walks_its_two_indexes(database, settings):
    with article_reads(database.engine) as reads:
        sweep(database, replace(settings, archive_policy={"news": 30}))
    found = plans(database, reads)
    assert len(found) == 2, found
    assert "USING INDEX ix_articles_published (published_at" in found[0]
    assert "USING INDEX ix_articles_due_own_date (archive_after" in found[1]
    assert not any("TEMP B-TREE" in plan for plan in found), found


def test_drafts_and_scheduled_stories_are_found_without_a_scan(client, editor, database):
    with article_reads(database.engine) as reads:
        assert client.get("/api/v1/articles?status=draft", headers=editor).status_code == 200
    [plan] = plans(database, reads)
    assert "USING INDEX ix_articles_unlisted (status=?)" in plan and "TEMP B-TREE" not in plan

    with article_reads(database.engine) as reads, database.transaction() as session:
        lifecycle.publish_due(session)
    [plan] = plans(database, reads)
    assert "USING INDEX ix_articles_unlisted (status=?)" in plan
