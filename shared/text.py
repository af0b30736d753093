"""Input text that every store and format can hold: no control characters but tab and line
breaks, no lone surrogates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields, validate
from slugify import slugify

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
TAG_MAX = 100

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


def not_blank(value: str) -> None:
    """A validator: text that is only spaces says nothing (a headline of spaces is no title)."""
    if not value.strip():
        raise ValidationError("Must not be blank.")


def tag_form(text: str) -> str:
    """A tag as it is stored and looked up: lowercase words joined by hyphens, so "X", "x"
    and " x " are one tag and "North Korea" is ``north-korea``."""
    return str(slugify(text, max_length=TAG_MAX))


class Tag(Text):
    """A tag of up to :data:`TAG_MAX` characters as given, kept in :func:`tag_form`."""

    def __init__(self, **kwargs: Any):
        # The length is checked on the text as given (the validator, there for the OpenAPI
        # document, sees the tag form, which slugify may have cut).
        super().__init__(validate=validate.Length(min=1, max=TAG_MAX), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        given = super()._deserialize(value, attr, data, **kwargs)
        if len(given) > TAG_MAX:
            raise ValidationError(f"Longer than maximum length {TAG_MAX}.")
        tag = tag_form(given)
        if not tag:
            raise ValidationError("A tag needs a letter or a digit.")
        return tag


class Tags(fields.List):
    """A list of tags, each in :func:`tag_form`, each once, in the order first given."""

    def __init__(self, **kwargs: Any):
        super().__init__(Tag(), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        return list(dict.fromkeys(super()._deserialize(value, attr, data, **kwargs)))


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
