"""``pressroom import FILE.csv``: load a back catalogue in bulk, with every row checked.

The whole file is read and checked first: a file that cannot be read as CSV (not UTF-8, a
broken quote, no ``title`` and ``body`` columns, nothing in it) stops the import before
anything is written, naming the line. Rows are validated like API input, and each bad one
is reported by the line its record starts on. The good rows then go in as one transaction,
with one multi-row INSERT per table and chunk (articles, history, outbox): an import that
fails part-way leaves nothing behind. Each row has a key (the file's ``id`` column when it
has one, else the title and ``published_at``), stored with its article: a row whose key is
already there is skipped and counted, so running an import again never doubles a story. Each
published row gets its ``article.published`` event (marked ``origin: import`` so the notifier
does not mail subscribers about old stories).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import Schema, ValidationError, pre_load, validate
from sqlalchemy import insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from services.publisher.articles.schemas import BODY, SECTION, TITLE
from shared import bus, events
from shared.bus import batched
from shared.content import base_slug, paragraphs_to_html, sanitise_html
from shared.db import Database, analyze, new_id, utcnow
from shared.events import make_envelope
from shared.models import Article, ArticleHistory, OutboxEvent
from shared.models.article import IMPORTED
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
    id = Text(load_default=None, allow_none=True, validate=validate.Length(max=1000))

    @pre_load
    def _from_csv(self, row: dict[str, Any], **_: object) -> dict[str, Any]:
        out = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        for name in ("section", "published_at", "id"):
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
    skipped: int = 0  # rows imported before (by an earlier run, or higher up the file)
    rejected: list[Rejected] = field(default_factory=list)


def import_key(row: dict[str, Any]) -> str:
    """The row's key across runs: its ``id`` in the file, or its title and date as given."""
    if row.get("id"):
        raw = f"id\x1f{row['id']}"
    else:
        when = row["published_at"].isoformat() if row.get("published_at") else ""
        raw = f"title\x1f{row['title']}\x1f{when}"
    return hashlib.sha256(raw.encode()).hexdigest()


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


def _rows(
    path: Path, section_column: str | None = None
) -> Iterator[tuple[int, int, dict[str, Any] | str]]:
    """(line the record starts on, bytes read so far, row or the reason it is malformed).
    ``section_column``: the column that holds the section (e.g. ``category``).

    csv.reader hands back each blank line as an empty record, so the line a record starts
    on is always the line after the previous record (or blank line) ended.
    """
    read = [0]
    reader = csv.reader(_decoded(path, read))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in REQUIRED if name not in header]
        found = ", ".join(header) or "nothing"
        if not header or missing:
            raise ImportFailed(
                f"line 1: the header must name the columns title and body (found: {found})"
            )
        if section_column is not None and section_column.lower() not in header:
            raise ImportFailed(f"line 1: no column {section_column!r} (found: {found})")
        ended = reader.line_num
        for fields_ in reader:
            start, ended = ended + 1, reader.line_num
            if not fields_:
                continue
            if len(fields_) > len(header):
                extra = f"row: {len(fields_)} fields but the header has {len(header)}"
                yield start, read[0], f"{extra} (a comma in an unquoted field?)"
                continue
            row = dict(zip(header, fields_, strict=False))
            if section_column is not None:
                row["section"] = row.get(section_column.lower(), "").lower()
            yield start, read[0], row
    except csv.Error as exc:
        raise ImportFailed(f"line {reader.line_num}: not valid CSV: {exc}") from None


def _describe(error: ValidationError) -> str:
    messages = error.messages if isinstance(error.messages, dict) else {"row": error.messages}
    return "; ".join(f"{name}: {' '.join(map(str, msgs))}" for name, msgs in messages.items())


def import_file(
    db: Database,
    path: Path,
    *,
    status: str = "published",
    progress: Progress | None = None,
    section_column: str | None = None,
) -> ImportReport:
    """Its events go out with the relay, now or when the stack next runs."""
    report = _load(db, path, status, progress, section_column)
    if report.imported:
        analyze(db, "articles", "article_history", "outbox")
    return report


def _load(
    db: Database, path: Path, status: str, progress: Progress | None, section_column: str | None
) -> ImportReport:
    report = ImportReport()
    schema = ImportRowSchema()
    with db.session() as session:
        taken = set(session.scalars(select(Article.slug)))
        seen = set(session.scalars(select(Article.import_key).where(text(IMPORTED))))
    rows: list[dict[str, Any]] = []
    bar = progress(path.stat().st_size) if progress else None
    done = 0
    with bar if bar is not None else nullcontext():
        for line, offset, raw in _rows(path, section_column):
            if isinstance(raw, str):
                report.rejected.append(Rejected(line, raw))
            else:
                try:
                    row = schema.load(raw)
                except ValidationError as exc:
                    report.rejected.append(Rejected(line, _describe(exc)))
                else:
                    if (key := import_key(row)) in seen:
                        report.skipped += 1
                    else:
                        seen.add(key)
                        rows.append(_article_row(row, key, status, taken))
            if bar is not None:
                bar.update(offset - done)
                done = offset
    if not rows and not report.rejected and not report.skipped:
        raise ImportFailed("the file holds no rows to import")
    with db.transaction() as session:  # all of it or nothing
        for chunk in batched(rows, CHUNK):
            report.imported += _insert(session, list(chunk))
    report.skipped += len(rows) - report.imported
    return report


def _article_row(row: dict[str, Any], key: str, status: str, taken: set[str]) -> dict[str, Any]:
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
        "import_key": key,
    }


# A row another import brought in meanwhile (by the same key) is skipped, not doubled.
_INSERT_NEW = (
    postgresql.insert(Article)
    .on_conflict_do_nothing(index_elements=[Article.import_key], index_where=text(IMPORTED))
    .returning(Article.id)
)


def _insert(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert the articles not already there, with their history and events; returns how
    many went in."""
    inserted = set(session.scalars(_INSERT_NEW, rows))
    batch = [a for a in rows if a["id"] in inserted]
    if not batch:
        return 0
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
    session.execute(insert(ArticleHistory), history)
    if outbox:
        session.execute(insert(OutboxEvent), outbox)
        bus.wake_relays(session)
    return len(batch)
