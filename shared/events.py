"""Event contracts: the CloudEvents 1.0 envelope and the data each article event carries.

Consumers parse with :func:`parse_envelope`; anything that does not parse is a permanent
error for the dead letters. Unknown fields inside ``data`` are kept, so producers can add
fields without breaking older consumers, and fields added later have defaults so events
written by older producers still parse.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate

from shared.db import new_id

SPECVERSION = "1.0"
SOURCE = "pressroom/publisher"
DATA_VERSION = 1

ARTICLE_PUBLISHED = "article.published"
ARTICLE_UPDATED = "article.updated"
ARTICLE_ARCHIVED = "article.archived"
ARTICLE_UNARCHIVED = "article.unarchived"
ARTICLE_RETRACTED = "article.retracted"
EVENT_TYPES = (
    ARTICLE_PUBLISHED,
    ARTICLE_UPDATED,
    ARTICLE_ARCHIVED,
    ARTICLE_UNARCHIVED,
    ARTICLE_RETRACTED,
)


class ArticleEventDataSchema(Schema):
    """``data`` of every article event (version 1)."""

    class Meta:
        unknown = INCLUDE

    schema_version = fields.Integer(load_default=1)
    article_id = fields.UUID(required=True)
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    slug = fields.String(load_default=None)
    title = fields.String(load_default=None)
    summary = fields.String(load_default="")
    section = fields.String(load_default=None, allow_none=True)
    tags = fields.List(fields.String(), load_default=list)
    authors = fields.List(fields.String(), load_default=list)
    status = fields.String(load_default=None)
    published_at = fields.AwareDateTime(load_default=None, allow_none=True)
    reason = fields.String(load_default=None, allow_none=True)
    origin = fields.String(load_default="api")
    correction = fields.String(load_default=None, allow_none=True)  # article.updated only


class EnvelopeSchema(Schema):
    class Meta:
        unknown = RAISE

    specversion = fields.String(required=True, validate=validate.Equal(SPECVERSION))
    id = fields.UUID(required=True)
    source = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    subject = fields.String(required=True)
    time = fields.AwareDateTime(required=True)
    datacontenttype = fields.String(load_default="application/json")
    dataschema = fields.String(load_default=None)
    data = fields.Nested(ArticleEventDataSchema, required=True)


_envelope_schema = EnvelopeSchema()


def make_envelope(
    event_type: str,
    data: dict[str, Any],
    *,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """Build the JSON envelope of a new article event; ``data`` must hold ``article_id``."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    data = {"schema_version": DATA_VERSION, **data}
    return envelope(event_id or new_id(), event_type, data, time or datetime.now(UTC))


def envelope(
    event_id: str, event_type: str, data: dict[str, Any], time: datetime
) -> dict[str, Any]:
    """The envelope of an event: its CloudEvents attributes around its ``data``."""
    return {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "subject": data["article_id"],
        "time": time.astimezone(UTC).isoformat(),
        "datacontenttype": "application/json",
        "dataschema": f"pressroom:{event_type}/v{data.get('schema_version', DATA_VERSION)}",
        "data": data,
    }


def envelope_of(row: Any) -> dict[str, Any]:
    """The envelope of an outbox row (ORM object or plain row): the row holds the event's
    data, and its columns the attributes (``event_id``, ``type``, ``created_at``)."""
    return envelope(row.event_id, row.type, row.data, row.created_at)


def envelopes_in(message_arg: object) -> list[Any]:
    """The envelopes a consumer message (or a dead letter) holds, oldest first: a list, or
    one envelope on its own, as messages sent before batching held."""
    return message_arg if isinstance(message_arg, list) else [message_arg]


def parse_envelope(raw: object) -> dict[str, Any]:
    """Validate an envelope; raises ``ValidationError`` naming each bad field."""
    if not isinstance(raw, dict):
        raise ValidationError({"_schema": ["an event envelope must be a JSON object"]})
    loaded: dict[str, Any] = _envelope_schema.load(raw)
    loaded["id"] = str(loaded["id"])
    loaded["data"]["article_id"] = str(loaded["data"]["article_id"])
    return loaded
