"""Input text that every store and format can hold: no control characters but tab and line
breaks, no lone surrogates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields, validate

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

# What XML 1.0 cannot carry (so neither can an Atom feed): C0 controls other than tab, line
# feed and carriage return, and the two non-characters. PostgreSQL refuses NUL as well.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def storable(value: str) -> str:
    """The string itself, or ValueError if a database could not store it or a feed carry it."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if found := NOT_XML.search(value):
        raise ValueError(f"must not contain control character U+{ord(found.group()):04X}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def xml_safe(value: str) -> str:
    """The string without what XML cannot carry (for text stored before it was refused)."""
    return NOT_XML.sub("", value)


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
    """A string field that refuses text no database can store (PostgreSQL rejects NUL) or
    no feed can carry (control characters)."""

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


class Whole(validate.Validator):
    """A pattern the whole value must match. marshmallow's Regexp searches with ``match``,
    where ``$`` also matches before a final line break: ``"news\\n"`` passed as a section.
    (``regex`` is what apispec reads to document the pattern.)"""

    def __init__(self, regex: re.Pattern[str], error: str):
        self.regex = regex
        self.message = error

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self.message)
        return value
