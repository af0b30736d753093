"""Request and response schemas of the subscriptions API (the reader's form loads the same)."""

from __future__ import annotations

from typing import Any

from email_validator import EmailNotValidError, validate_email
from marshmallow import Schema, ValidationError, fields, post_load, validate

from shared.content import SECTION_PATTERN, SLUG_PATTERN
from shared.text import Text, Whole

TOPICS_MAX = 50
SECTION = Whole(SECTION_PATTERN, error="a lowercase section name")
TAG = Whole(SLUG_PATTERN, error="lowercase words joined by hyphens")


class EmailAddress(Text):
    """An address that could receive mail (its syntax: nobody is asked whether it exists),
    normalised and lower-cased, so one reader is one subscription."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault(
            "metadata",
            {
                "format": "email",
                "description": "An address that could receive mail: one at a special-use"
                " domain (.test, .invalid, localhost...) is 422.",
            },
        )
        super().__init__(validate=validate.Length(max=320), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        try:
            return validate_email(text, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise ValidationError(f"Not an email address: {exc}") from None


def topics(pattern: Whole, max_length: int) -> fields.List:
    return fields.List(
        Text(validate=[validate.Length(min=1, max=max_length), pattern]),
        load_default=list,
        validate=validate.Length(max=TOPICS_MAX),
    )


class TopicsSchema(Schema):
    """Sections and tags wanted; none of either means every story."""

    sections = topics(SECTION, 64)
    tags = topics(TAG, 100)

    @post_load
    def _once_each(self, data: dict[str, Any], **_: object) -> dict[str, Any]:
        for name in ("sections", "tags"):
            if name in data:
                data[name] = list(dict.fromkeys(data[name]))
        return data


class SubscriptionCreateSchema(TopicsSchema):
    email = EmailAddress(required=True)


class SubscriptionAcceptedSchema(Schema):
    """The same answer whatever the address: it never tells whether it was known."""

    message = fields.String()
