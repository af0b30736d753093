"""Input text that every store can hold: no NUL characters, no lone surrogates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def storable(value: str) -> str:
    """The string itself, or ValueError if a database could not store it."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def in_range(value: datetime) -> datetime:
    """The datetime itself, or ValueError if it lies outside what Pressroom stores."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year}")
    return value


class Text(fields.String):
    """A string field that refuses text no database can store (PostgreSQL rejects NUL)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return storable(text)
        except ValueError as exc:
            raise ValidationError(f"Text {exc}.") from None


class When(fields.AwareDateTime):
    """An aware datetime (naive ones are taken as UTC) within the years Pressroom stores."""

    def __init__(self, **kwargs: Any):
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        when = super()._deserialize(value, attr, data, **kwargs)
        try:
            return in_range(when)
        except ValueError as exc:
            raise ValidationError(f"Date {exc}.") from None


class Flag(fields.Boolean):
    """JSON true or false, nothing else (``0`` and ``"yes"`` are not booleans)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value
