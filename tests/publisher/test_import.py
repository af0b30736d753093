"""`pressroom import FILE.csv`: every good row in, every bad row reported with its line."""

from __future__ import annotations

import csv
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import func, select

from shared.bus import CelerySender
from shared.celery import create_celery
from shared.models import Article, OutboxEvent
from shared.relay import Relay
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
        out.writerow(["Only a script", "<script>alert(1)</script>", "", "", ""])
    result = run_import(settings, path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert "line 5: title:" in result.stderr  # the first record spans lines 2-4
    assert "line 6: published_at:" in result.stderr
    assert "line 8: section:" in result.stderr
    assert "line 9: body: Nothing a reader would see" in result.stderr
    with database.session() as session:
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
    Relay(database, CelerySender(create_celery(settings, "test"))).relay()  # as the relay does
    envelopes = [m["envelope"] for m in queued(redis_url, "archiver")]
    assert {e["data"]["origin"] for e in envelopes} == {"import"}


@pytest.mark.skipif(not (SHARED_DATA / "bbc-dev.csv").exists(), reason="needs ../shared/data")
def test_import_loads_the_bbc_sample(settings, database):
    result = run_import(settings, SHARED_DATA / "bbc-dev.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1815"
    with database.session() as session:
        slugs = session.scalar(select(func.count(func.distinct(Article.slug))))
    assert slugs == 1815


def write_csv(path, rows) -> None:  # type: ignore[no-untyped-def]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def article_count(database) -> int:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(Article)) or 0


def test_a_file_that_is_not_utf8_is_refused_whole_naming_the_line(tmp_path, settings, database):
    path = tmp_path / "latin1.csv"
    rows = [["title", "body"]] + [[f"Story {n}", "Body"] for n in range(1500)]
    write_csv(path, rows)
    with open(path, "ab") as fh:
        fh.write("Caf\u00e9 story,Body\n".encode("latin-1"))
    result = run_import(settings, path)
    assert result.returncode == 1
    assert "line 1502: not UTF-8 text (byte 0xe9 at column 4)" in result.stderr
    assert "nothing was imported" in result.stderr and "Traceback" not in result.stderr
    assert article_count(database) == 0


def test_a_row_with_more_fields_than_the_header_is_rejected_not_cut(tmp_path, settings, database):
    path = tmp_path / "commas.csv"
    path.write_text("title,body\n\n\nComma story,hello, world\nFine story,All here\n")
    result = run_import(settings, path)
    assert result.returncode == 0, result.stderr
    assert "line 4: row: 3 fields but the header has 2" in result.stderr  # after 2 blank lines
    assert result.stdout.strip() == "1"
    with database.session() as session:
        assert session.scalars(select(Article.title)).all() == ["Fine story"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the header must name the columns title and body (found: nothing)"),
        ('{"title": "a json file"}\n', "the header must name the columns title and body"),
        ("headline,text\nA,B\n", "found: headline, text"),
        ("title,body\n", "the file holds no rows to import"),
        ('title,body\n"Open quote,' + "x" * (11 << 20) + "\n", "line 2: not valid CSV"),
    ],
)
def test_a_file_that_is_no_import_fails_with_a_message(tmp_path, settings, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = run_import(settings, path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def run_import_with(settings, path, *options):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "import", str(path), *options],
        cwd=ROOT,
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_rerun_skips_what_it_imported_by_title_and_date(tmp_path, settings, database):
    path = tmp_path / "stories.csv"
    write_csv(
        path,
        [
            ["title", "body", "published_at"],
            ["Markets rally", "Body one", "2005-01-03T10:00:00Z"],
            ["Markets rally", "Another day's rally", "2005-01-04T10:00:00Z"],
            ["Undated story", "Body", ""],
        ],
    )
    first = run_import(settings, path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "3"
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(["A new story", "Body", ""])
    again = run_import(settings, path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "1"
    assert "imported 1 articles, skipped 3 already imported, rejected 0 rows" in again.stderr
    assert article_count(database) == 4
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 4


def test_a_rerun_knows_rows_by_the_files_id_column(tmp_path, settings, database):
    path = tmp_path / "stories.csv"
    write_csv(path, [["id", "title", "body"], ["a-1", "First", "Body"], ["a-2", "Second", "B"]])
    assert run_import(settings, path).stdout.strip() == "2"
    # corrected titles, same ids: still the same stories
    write_csv(path, [["id", "title", "body"], ["a-1", "First!", "Body"], ["a-2", "Second", "B"]])
    again = run_import(settings, path)
    assert again.stdout.strip() == "0", again.stderr
    assert "skipped 2 already imported" in again.stderr
    assert article_count(database) == 2


def test_the_section_can_come_from_a_column_of_another_name(tmp_path, settings, database):
    path = tmp_path / "bbc.csv"
    write_csv(path, [["id", "category", "title", "body"], ["b/1", "Business", "Sales up", "B"]])
    result = run_import_with(settings, path, "--section-column", "category")
    assert result.returncode == 0, result.stderr
    with database.session() as session:
        assert session.scalars(select(Article.section)).all() == ["business"]
    missing = run_import_with(settings, path, "--section-column", "desk")
    assert missing.returncode == 1
    assert "no column 'desk'" in missing.stderr and "Traceback" not in missing.stderr
