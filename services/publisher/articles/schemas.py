"""Request and response schemas of the articles API."""

from __future__ import annotations

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
from shared.text import Flag, Tag, Tags, Text, When, not_blank

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
    body = Text(validate=BODY)
    section = Text(allow_none=True, validate=SECTION)
    tags = Tags(validate=validate.Length(max=50))
    authors = _names(20)
    media = fields.Url(
        allow_none=True, schemes={"http", "https"}, validate=validate.Length(max=MEDIA_MAX)
    )
    publish_at = When(allow_none=True)
    published_at = When(allow_none=True)
    archive_after = When(allow_none=True)
    evergreen = Flag()
    # The "Also read" list, steered: these first, in this order / never these.
    related_pinned = fields.List(fields.UUID(), validate=validate.Length(max=10))
    related_excluded = fields.List(fields.UUID(), validate=validate.Length(max=100))

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
    body = Text(required=True, validate=BODY)
    # No default: a draft given publish_at is a contradiction, where publish_at alone
    # schedules the article.
    status = Text(validate=validate.OneOf(["draft", "scheduled", "published"]))

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
    tag = Tag()
    q = Text(validate=validate.Length(min=1, max=200))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = Text(validate=validate.Length(max=200))


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
    url = fields.Method("_url")
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
