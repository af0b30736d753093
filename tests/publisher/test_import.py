"""`pressroom import FILE.csv`: every good row in, every bad row reported with its line."""

from __future__ import annotations

import csv
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import func, select

from shared.models import Article, OutboxEvent
from tests.brokers import queued
from tests.conftest import SHARED_DATA
from tests.e2e.conftest import ROOT, process_env


def run_import(settings, path):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "import", str(path)],
        cwd=ROOT,
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_reports_each_rejected_row_by_line(tmp_path, settings, database, redis_url):
    path = tmp_path / "articles.csv"
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["title", "body", "section", "tags", "published_at"])
        first = ["Markets rally", "First para.\n\nSecond para.", "business", "stocks; ftse"]
        out.writerow([*first, "2005-01-03T10:00:00Z"])
        out.writerow(["", "A body without a title", "", "", ""])
        out.writerow(["Bad date", "Body", "", "", "last tuesday"])
        same_title = "<p>Same title, <script>x</script>other story</p>"
        out.writerow(["Markets rally", same_title, "", "", ""])
        out.writerow(["Bad section", "Body", "Not Valid!", "", ""])
    result = run_import(settings, path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert "line 5: title:" in result.stderr  # the first record spans lines 2-4
    assert "line 6: published_at:" in result.stderr
    assert "line 8: section:" in result.stderr
    with database.sessionmaker() as session:
        articles = {a.slug: a for a in session.scalars(select(Article))}
        events = session.scalar(select(func.count()).select_from(OutboxEvent))
    assert set(articles) == {"markets-rally", "markets-rally-2"}
    first = articles["markets-rally"]
    assert first.body == "<p>First para.</p><p>Second para.</p>"
    assert first.tags == ["stocks", "ftse"]
    assert first.published_at.year == 2005
    assert "<script" not in articles["markets-rally-2"].body
    # ids follow publication, so the story from 2005 sorts before the one published today
    # in every index on them, however the file was ordered
    assert first.id < articles["markets-rally-2"].id
    assert uuid.UUID(first.id).version == 7
    assert events == 2
    envelopes = [m["envelope"] for m in queued(redis_url, "archiver")]
    assert {e["data"]["origin"] for e in envelopes} == {"import"}


@pytest.mark.skipif(not (SHARED_DATA / "bbc-dev.csv").exists(), reason="needs ../shared/data")
def test_import_loads_the_bbc_sample(settings, database):
    result = run_import(settings, SHARED_DATA / "bbc-dev.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1815"
    with database.sessionmaker() as session:
        slugs = session.scalar(select(func.count(func.distinct(Article.slug))))
    assert slugs == 1815
