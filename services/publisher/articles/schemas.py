"""Request and response schemas of the articles API."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from services.publisher.state import state
from shared.content import (
    SECTION_PATTERN,
    SLUG_LIMIT,
    SLUG_PATTERN,
    sanitise_html,
    shows_something,
)
from shared.db import utcnow
from shared.models.article import MEDIA_MAX
from shared.text import Flag, HttpUrl, Tag, Tags, Text, When, Whole, not_blank

SLUG = validate.Regexp(SLUG_PATTERN, error="lowercase words joined by hyphens")
SECTION = validate.Regexp(SECTION_PATTERN, error="a lowercase section name")


def survives_sanitising(value: str) -> None:
    """A validator: a body that sanitising empties (only a script, only empty paragraphs)
    would be stored as a story with nothing in it. Checked here, at the price of sanitising
    once more than the write does, so the 422 names body alongside any other bad field."""
    if value.strip() and not shows_something(sanitise_html(value)):
        raise ValidationError("Nothing a reader would see is left once unsafe markup is removed.")


TITLE: list[Callable[[Any], Any]] = [validate.Length(min=1, max=300), not_blank]
BODY: list[Callable[[Any], Any]] = [
    validate.Length(min=1, max=500_000),
    not_blank,
    survives_sanitising,
]
CURSOR = Whole(re.compile(r"\A[A-Za-z0-9_-]{0,200}\Z"), error="not a cursor of this list")
CURSOR_RULE = (
    "The next_cursor of the page before, with the same filters (and q); empty or none: the"
    " first page. Any other value is 422 with details.cursor."
)
TAG_RULE = (
    "Compared in its slug form (North Korea is north-korea), which must keep a letter or a"
    " digit: 422 otherwise."
)
YEARS = "Between the years 1900 and 9000 (422 otherwise); without an offset, UTC."
FUTURE = f"a time to come (one in the past is 422). {YEARS}"
PAST = f"now or before (a time to come is 422). {YEARS}"
OTHERS = "Ids of other articles (422 otherwise)."
SHOWS = "HTML. Scripts, handlers and unsafe URLs are removed: text or an image must be left (422)."
# How far an editor's clock may be off ours before a time "now" reads as past or future.
CLOCK_SKEW = timedelta(minutes=1)


def _names(max_items: int) -> fields.List:
    return fields.List(
        Text(validate=validate.Length(min=1, max=100)),
        validate=validate.Length(max=max_items),
    )


class ArticleWriteSchema(Schema):
    """Fields an editor may set on create and on update."""

    title = Text(validate=TITLE)
    slug = Text(validate=[validate.Length(min=1, max=SLUG_LIMIT), SLUG])
    summary = Text(validate=validate.Length(max=2000))
    body = Text(validate=BODY, metadata={"description": SHOWS})
    section = Text(allow_none=True, validate=SECTION)
    tags = Tags(validate=validate.Length(max=50), metadata={"description": TAG_RULE})
    authors = _names(20)
    media = HttpUrl(
        MEDIA_MAX, allow_none=True, metadata={"description": "The story's video or image."}
    )
    publish_at = When(allow_none=True, metadata={"description": f"Schedules: {FUTURE}"})
    published_at = When(
        allow_none=True,
        metadata={"description": f"A back catalogue's date of publication: {PAST}"},
    )
    archive_after = When(allow_none=True, metadata={"description": YEARS})
    evergreen = Flag()
    # The "Also read" list, steered: these first, in this order / never these.
    related_pinned = fields.List(
        fields.UUID(),
        validate=validate.Length(max=10),
        metadata={"description": f"Shown first in its Also read list, in this order. {OTHERS}"},
    )
    related_excluded = fields.List(
        fields.UUID(),
        validate=validate.Length(max=100),
        metadata={"description": f"Never in its Also read list. {OTHERS}"},
    )

    @validates_schema
    def _times_make_sense(self, data: dict, **_: object) -> None:
        now = utcnow()
        if data.get("publish_at") and data["publish_at"] < now - CLOCK_SKEW:
            raise ValidationError(
                "publish_at is in the past: give a future time to schedule, or status"
                " published to publish now (published_at keeps a back catalogue's date)",
                "publish_at",
            )
        if data.get("published_at") and data["published_at"] > now + CLOCK_SKEW:
            raise ValidationError(
                "published_at is in the future, which would pin the story to the top of"
                " every listing until then: give publish_at to schedule it",
                "published_at",
            )


class ArticleCreateSchema(ArticleWriteSchema):
    title = Text(required=True, validate=TITLE)
    body = Text(required=True, validate=BODY, metadata={"description": SHOWS})
    # No default: a draft given publish_at is a contradiction, where publish_at alone
    # schedules the article.
    status = Text(
        validate=validate.OneOf(["draft", "scheduled", "published"]),
        metadata={
            "description": "None: a draft, or scheduled if publish_at is given. scheduled needs"
            " publish_at; published and draft take none (422 otherwise)."
        },
    )

    @validates_schema
    def _status_matches_schedule(self, data: dict, **_: object) -> None:
        if data.get("status") == "scheduled" and not data.get("publish_at"):
            raise ValidationError("a scheduled article needs publish_at", "publish_at")
        if data.get("status") == "published" and data.get("publish_at"):
            raise ValidationError("give publish_at to schedule, or status published", "status")
        if data.get("status") == "draft" and data.get("publish_at"):
            raise ValidationError(
                "a draft has no publish_at: send status scheduled (or no status) to schedule",
                "status",
            )


class ArticleUpdateSchema(ArticleWriteSchema):
    # Marks the edit as a correction: subscribers who got the story are told, with this note.
    correction = Text(validate=validate.Length(min=1, max=500), load_default=None)


class ActionSchema(Schema):
    reason = Text(validate=validate.Length(max=500), load_default=None, allow_none=True)


class ArticleQueryArgsSchema(Schema):
    status = Text(
        validate=validate.OneOf(["draft", "scheduled", "published", "archived", "retracted"])
    )
    section = Text(validate=SECTION)
    tag = Tag(metadata={"description": TAG_RULE})
    q = Text(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "Words to search title, summary and body for, ranked."},
    )
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = Text(validate=CURSOR, metadata={"description": CURSOR_RULE})


class CreateHeadersSchema(Schema):
    idempotency_key = Text(
        data_key="Idempotency-Key",
        validate=validate.Length(min=1, max=255),
        metadata={
            "description": "Any value unique to this article: a retry with the same key and"
            " body is answered as the first request was (Idempotent-Replayed: true), with no"
            " second article; the same key with another body is 409."
        },
    )


class UpdateHeadersSchema(Schema):
    if_match = Text(
        data_key="If-Match",
        metadata={
            "description": 'The version edited, as the ETag gave it ("3"; W/"3" and 3 do too):'
            " 412 if the article has changed since. * or none: no check."
        },
    )


class RelatedSchema(Schema):
    id = fields.String()
    slug = fields.String()
    title = fields.String()
    score = fields.Float(allow_none=True, metadata={"description": "null for a pinned story"})


class ArticleSchema(Schema):
    id = fields.String()
    slug = fields.String()
    title = fields.String()
    summary = fields.String()
    body = fields.String()
    section = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    authors = fields.List(fields.String())
    media = fields.String(allow_none=True)
    status = fields.String()
    publish_at = fields.AwareDateTime(allow_none=True)
    published_at = fields.AwareDateTime(allow_none=True)
    archived_at = fields.AwareDateTime(allow_none=True)
    archive_reason = fields.String(allow_none=True)
    archive_after = fields.AwareDateTime(allow_none=True)
    evergreen = fields.Boolean()
    version = fields.Integer()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()
    url = fields.Method("_url", metadata={"type": "string", "format": "uri"})
    related = fields.List(fields.Nested(RelatedSchema), dump_default=list)
    related_pinned = fields.List(fields.String(), dump_default=list)
    related_excluded = fields.List(fields.String(), dump_default=list)

    def _url(self, article: object) -> str:
        return f"{state().settings.public_base_url}/articles/{article.slug}"  # type: ignore[attr-defined]


class ArticlePageSchema(Schema):
    items = fields.List(fields.Nested(ArticleSchema))
    next_cursor = fields.String(allow_none=True)


class ConsumptionSchema(Schema):
    consumer = fields.String()
    consumed_at = fields.AwareDateTime(allow_none=True)


class EventViewSchema(Schema):
    id = fields.String()
    type = fields.String()
    version = fields.Integer()
    time = fields.AwareDateTime()
    relayed_at = fields.AwareDateTime(allow_none=True)
    consumers = fields.List(fields.Nested(ConsumptionSchema))


class EventListSchema(Schema):
    items = fields.List(fields.Nested(EventViewSchema))


class HistoryEntrySchema(Schema):
    at = fields.AwareDateTime()
    actor = fields.String()
    from_status = fields.String(data_key="from", allow_none=True)
    to_status = fields.String(data_key="to")
    reason = fields.String(allow_none=True)


class HistorySchema(Schema):
    items = fields.List(fields.Nested(HistoryEntrySchema))
