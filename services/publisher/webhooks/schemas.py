"""Request and response schemas of the webhooks API. No response schema but
WebhookWithSecretSchema carries a secret: it is shown once, on registration and rotation."""

from __future__ import annotations

import re

from marshmallow import Schema, fields, validate

from services.publisher.subscriptions.schemas import SECTION, TAG, topics
from shared.events import ARTICLE_PUBLISHED, EVENT_TYPES
from shared.text import HttpUrl, Text, Whole

URL_MAX = 2000  # the column's size


class WebhookCreateSchema(Schema):
    url = HttpUrl(
        URL_MAX,
        required=True,
        metadata={"description": "Every address its host resolves to must be public (422)."},
    )
    event_types = fields.List(
        Text(validate=validate.OneOf(EVENT_TYPES)),
        load_default=lambda: [ARTICLE_PUBLISHED],
        validate=validate.Length(min=1, max=len(EVENT_TYPES)),
    )
    sections = topics(SECTION, 64)
    tags = topics(TAG, 100)


class WebhookDisableSchema(Schema):
    reason = Text(validate=validate.Length(min=1, max=500), load_default=None)


class WebhookSchema(Schema):
    id = fields.String()
    url = fields.String()
    event_types = fields.List(fields.String())
    sections = fields.List(fields.String())
    tags = fields.List(fields.String())
    enabled = fields.Boolean()
    disabled_reason = fields.String(allow_none=True)
    failing_since = fields.AwareDateTime(allow_none=True)
    previous_secret_until = fields.AwareDateTime(
        allow_none=True, metadata={"description": "the secret before a rotation signs until then"}
    )
    created_at = fields.AwareDateTime()


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(metadata={"description": "whsec_...: shown this once, never again"})


class WebhookListSchema(Schema):
    items = fields.List(fields.Nested(WebhookSchema))


class DeliveryAttemptSchema(Schema):
    at = fields.AwareDateTime()
    outcome = fields.String(metadata={"description": "delivered, retry, failed or gone"})
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    elapsed_ms = fields.Integer(allow_none=True)


class DeliverySchema(Schema):
    id = fields.Integer()
    event_id = fields.String(metadata={"description": "the webhook-id header, kept on retries"})
    kind = fields.String()
    article_id = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "pending, sent, failed, dead or cancelled"})
    due_at = fields.AwareDateTime(metadata={"description": "when a pending one is tried next"})
    sent_at = fields.AwareDateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.AwareDateTime()
    attempts = fields.List(fields.Nested(DeliveryAttemptSchema))


class DeliveryQueryArgsSchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = Text(
        validate=Whole(re.compile(r"\A[0-9]{1,18}\Z"), error="not a cursor of this list"),
        metadata={"description": "The next_cursor of the page before."},
    )


class DeliveryPageSchema(Schema):
    items = fields.List(fields.Nested(DeliverySchema))
    next_cursor = fields.String(allow_none=True)
