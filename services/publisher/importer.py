"""``pressroom import FILE.csv``: load a back catalogue in bulk, with every row checked.

The whole file is read and checked first: a file that cannot be read as CSV (not UTF-8, a
broken quote, no ``title`` and ``body`` columns, nothing in it) stops the import before
anything is written, naming the line. Rows are validated like API input, and each bad one
is reported by the line its record starts on. The good rows then go in as one transaction,
with one multi-row INSERT per table and chunk (articles, history, outbox): an import that
fails part-way leaves nothing behind, so running it again never doubles a story. Each
published row gets its ``article.published`` event (marked ``origin: import`` so the notifier
does not mail subscribers about old stories).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import Schema, ValidationError, pre_load, validate
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from services.publisher.articles.schemas import BODY, SECTION, TITLE
from shared import events
from shared.bus import batched
from shared.content import base_slug, paragraphs_to_html, sanitise_html
from shared.db import Database, analyze, new_id, utcnow
from shared.events import make_envelope
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.text import Tags, Text, When

CHUNK = 1000
HTML_TAG = re.compile(r"<[a-zA-Z][^>]*>")
FIELD_LIMIT = 10 << 20  # characters in one field; a body may hold at most 500,000
csv.field_size_limit(FIELD_LIMIT)
REQUIRED = ("title", "body")


class ImportFailed(Exception):
    """The file cannot be imported at all; nothing was written."""


class ImportRowSchema(Schema):
    class Meta:
        unknown = "exclude"

    title = Text(required=True, validate=TITLE)
    body = Text(required=True, validate=BODY)
    section = Text(load_default=None, allow_none=True, validate=SECTION)
    tags = Tags(load_default=list, validate=validate.Length(max=50))
    published_at = When(load_default=None, allow_none=True)

    @pre_load
    def _from_csv(self, row: dict[str, Any], **_: object) -> dict[str, Any]:
        out = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
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
    rejected: list[Rejected] = field(default_factory=list)


# Given the total size, returns a context manager with ``update(n)`` (click's progress bar).
Progress = Callable[[int], Any]


def _decoded(path: Path, read: list[int]) -> Iterator[str]:
    """The file's lines as text, strictly UTF-8 (a BOM is dropped); ``read[0]`` counts the
    bytes read so far. Decoded line by line, so an error names its own line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            read[0] += len(raw)
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ImportFailed(
                    f"line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column"
                    f" {exc.start + 1}); save the file as UTF-8 and import it again"
                ) from None


def _rows(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | str]]:
    """(line the record starts on, bytes read so far, row or the reason it is malformed).

    csv.reader hands back each blank line as an empty record, so the line a record starts
    on is always the line after the previous record (or blank line) ended.
    """
    read = [0]
    reader = csv.reader(_decoded(path, read))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in REQUIRED if name not in header]
        if not header or missing:
            found = ", ".join(header) or "nothing"
            raise ImportFailed(
                f"line 1: the header must name the columns title and body (found: {found})"
            )
        ended = reader.line_num
        for fields_ in reader:
            start, ended = ended + 1, reader.line_num
            if not fields_:
                continue
            if len(fields_) > len(header):
                extra = f"row: {len(fields_)} fields but the header has {len(header)}"
                yield start, read[0], f"{extra} (a comma in an unquoted field?)"
                continue
            yield start, read[0], dict(zip(header, fields_, strict=False))
    except csv.Error as exc:
        raise ImportFailed(f"line {reader.line_num}: not valid CSV: {exc}") from None


def _describe(error: ValidationError) -> str:
    messages = error.messages if isinstance(error.messages, dict) else {"row": error.messages}
    return "; ".join(f"{name}: {' '.join(map(str, msgs))}" for name, msgs in messages.items())


def import_file(
    db: Database, path: Path, *, status: str = "published", progress: Progress | None = None
) -> ImportReport:
    """Its events go out with the relay, now or when the stack next runs."""
    report = _load(db, path, status, progress)
    if report.imported:
        analyze(db, "articles", "article_history", "outbox")
    return report


def _load(db: Database, path: Path, status: str, progress: Progress | None) -> ImportReport:
    report = ImportReport()
    schema = ImportRowSchema()
    with db.session() as session:
        taken = set(session.scalars(select(Article.slug)))
    rows: list[dict[str, Any]] = []
    bar = progress(path.stat().st_size) if progress else None
    done = 0
    with bar if bar is not None else nullcontext():
        for line, offset, raw in _rows(path):
            if isinstance(raw, str):
                report.rejected.append(Rejected(line, raw))
            else:
                try:
                    rows.append(_article_row(schema.load(raw), status, taken))
                except ValidationError as exc:
                    report.rejected.append(Rejected(line, _describe(exc)))
            if bar is not None:
                bar.update(offset - done)
                done = offset
    if not rows and not report.rejected:
        raise ImportFailed("the file holds no rows to import")
    with db.transaction() as session:  # all of it or nothing
        for chunk in batched(rows, CHUNK):
            _insert(session, list(chunk))
    report.imported = len(rows)
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


def _insert(session: Session, batch: list[dict[str, Any]]) -> None:
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
        envelope = make_envelope(events.ARTICLE_PUBLISHED, data, time=a["created_at"])
        outbox.append(
            {
                "event_id": envelope["id"],
                "type": events.ARTICLE_PUBLISHED,
                "article_id": a["id"],
                "data": envelope["data"],
                "created_at": a["created_at"],
                "attempts": 0,
            }
        )
    session.execute(insert(Article), batch)
    session.execute(insert(ArticleHistory), history)
    if outbox:
        session.execute(insert(OutboxEvent), outbox)
