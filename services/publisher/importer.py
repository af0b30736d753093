"""``pressroom import FILE.csv``: load a back catalogue in bulk, with every row checked.

Rows are validated like API input, inserted in chunks with one multi-row INSERT per table
(articles, history, outbox), and each published row gets its ``article.published`` event
(marked ``origin: import`` so the notifier does not mail subscribers about old stories).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from marshmallow import Schema, ValidationError, fields, pre_load, validate
from sqlalchemy import insert, select

from services.publisher.articles.schemas import SECTION
from shared import events
from shared.bus import CelerySender, Relay
from shared.celery import create_celery
from shared.config import Settings
from shared.content import base_slug, paragraphs_to_html, sanitise_html
from shared.db import Database, analyze, new_id, utcnow
from shared.events import make_envelope
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.text import Text, When

CHUNK = 1000
HTML_TAG = re.compile(r"<[a-zA-Z][^>]*>")
csv.field_size_limit(10 << 20)


class ImportRowSchema(Schema):
    class Meta:
        unknown = "exclude"

    title = Text(required=True, validate=validate.Length(min=1, max=300))
    body = Text(required=True, validate=validate.Length(min=1, max=500_000))
    section = Text(load_default=None, allow_none=True, validate=SECTION)
    tags = fields.List(Text(validate=validate.Length(min=1, max=100)), load_default=list)
    published_at = When(load_default=None, allow_none=True)

    @pre_load
    def _from_csv(self, row: dict[str, Any], **_: object) -> dict[str, Any]:
        out = {
            k.strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k
        }
        for name in ("section", "published_at"):
            if out.get(name) == "":
                out[name] = None
        raw_tags = out.get("tags") or ""
        out["tags"] = [t.strip() for t in re.split(r"[,;|]", raw_tags) if t.strip()]
        return out


@dataclass
class Rejected:
    line: int
    reason: str


@dataclass
class ImportReport:
    imported: int = 0
    relayed: int = 0
    rejected: list[Rejected] = field(default_factory=list)


# Given the total size, returns a context manager with ``update(n)`` (click's progress bar).
Progress = Callable[[int], Any]


def _rows(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(line the record starts on, characters read so far, row) for each CSV record."""
    read = 0

    def lines(fh: TextIO) -> Iterator[str]:
        nonlocal read
        for text in fh:
            read += len(text)
            yield text

    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(lines(fh))
        previous = 1  # the header
        for row in reader:
            yield previous + 1, read, row
            previous = reader.line_num


def _describe(error: ValidationError) -> str:
    messages = error.messages if isinstance(error.messages, dict) else {"row": error.messages}
    return "; ".join(f"{name}: {' '.join(map(str, msgs))}" for name, msgs in messages.items())


def import_file(
    settings: Settings, path: Path, *, status: str = "published", progress: Progress | None = None
) -> ImportReport:
    db = Database(settings.database_url)
    try:
        report = _load(db, path, status, progress)
        if report.imported:
            analyze(db, "articles", "article_history", "outbox")
            report.relayed = Relay(db, CelerySender(create_celery(settings, "import"))).relay()
        return report
    finally:
        db.dispose()


def _load(db: Database, path: Path, status: str, progress: Progress | None) -> ImportReport:
    report = ImportReport()
    schema = ImportRowSchema()
    with db.sessionmaker() as session:
        taken = set(session.scalars(select(Article.slug)))
    batch: list[dict[str, Any]] = []
    bar = progress(path.stat().st_size) if progress else None
    done = 0
    with bar if bar is not None else nullcontext():
        for line, offset, raw in _rows(path):
            try:
                row = schema.load(raw)
            except ValidationError as exc:
                report.rejected.append(Rejected(line, _describe(exc)))
                continue
            batch.append(_article_row(row, status, taken))
            if len(batch) >= CHUNK:
                report.imported += _insert(db, batch)
                batch = []
            if bar is not None:
                bar.update(offset - done)
                done = offset
        if batch:
            report.imported += _insert(db, batch)
    return report


def _article_row(row: dict[str, Any], status: str, taken: set[str]) -> dict[str, Any]:
    now = utcnow()
    body = row["body"]
    body = sanitise_html(body) if HTML_TAG.search(body) else paragraphs_to_html(body)
    slug = base = base_slug(row["title"])
    n = 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    published = status == "published"
    published_at = (row["published_at"] or now) if published else None
    return {
        # An old story imported today sits by its own date in the id indexes, where the
        # archive sweep, which takes the oldest first, finds its neighbours.
        "id": new_id(published_at),
        "slug": slug,
        "title": row["title"],
        "summary": "",
        "body": body,
        "section": row["section"],
        "tags": row["tags"],
        "authors": [],
        "media": None,
        "status": status,
        "published_at": published_at,
        "evergreen": False,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }


def _insert(db: Database, batch: list[dict[str, Any]]) -> int:
    history = [
        {
            "article_id": a["id"],
            "actor": "import",
            "at": a["created_at"],
            "from_status": None,
            "to_status": a["status"],
            "reason": "imported",
        }
        for a in batch
    ]
    outbox = []
    for a in batch:
        if a["status"] != "published":
            continue
        data = {**Article(**a).snapshot(), "reason": None, "origin": "import"}
        envelope = make_envelope(events.ARTICLE_PUBLISHED, data)
        outbox.append(
            {
                "event_id": envelope["id"],
                "type": events.ARTICLE_PUBLISHED,
                "article_id": a["id"],
                "envelope": envelope,
                "created_at": a["created_at"],
                "attempts": 0,
            }
        )
    with db.transaction() as session:
        session.execute(insert(Article), batch)
        session.execute(insert(ArticleHistory), history)
        if outbox:
            session.execute(insert(OutboxEvent), outbox)
    return len(batch)
