"""Input text that every store and format can hold: no control characters but tab and line
breaks, no lone surrogates."""

from __future__ import annotations

import ipaddress
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
# The same rules as the OpenAPI document states them, in JSON Schema's regex dialect (ECMA-262,
# which Python's re reads alike here): text of characters storable() keeps; and text with at
# least one of them that is not white space (str.isspace), as not_blank() asks.
_UNSTORABLE = r"\x00-\x08\x0B\x0C\x0E-\x1F\uFFFE\uFFFF"
_SPACE = r"\t-\r\x1C-\x20\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
STORABLE_PATTERN = f"^[^{_UNSTORABLE}]*$"
NOT_BLANK_PATTERN = f"^[^{_UNSTORABLE}]*[^{_UNSTORABLE}{_SPACE}][^{_UNSTORABLE}]*$"


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


# An http(s) URL. The OpenAPI document says it as format uri (RFC 3986) with HTTP_URL, its
# pattern: http or https, and an authority that starts with a host and has no user:password@
# (which has no place in a media or webhook URL). Python's re has no RFC 3986 check of its own,
# so RFC_3986_HTTP_URL is the grammar's http URLs (IPv6 literals checked by ipaddress): a URL
# the document calls valid is one the API takes, and the other way round.
HTTP_URL = re.compile(r"\A[Hh][Tt][Tt][Pp][Ss]?://[^@/?#\s:][^@/?#\s]*(?:[/?#]\S*)?\Z")
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_REG_NAME = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
RFC_3986_HTTP_URL = re.compile(
    rf"[Hh][Tt][Tt][Pp][Ss]?://(?:{_REG_NAME}|\[(?P<ip>[0-9A-Fa-f:.]+)\])(?::[0-9]*)?"
    rf"(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)
URL_ERROR = (
    "Not an http(s) URL: only http and https URLs are taken, with a host and no credentials"
    " (user:password@)."
)


def _rfc_3986(url: str) -> None:
    """A validator: ``url``, if HTTP_URL's shape (which Whole reports on), is an http(s) URL
    as RFC 3986 spells one."""
    found = RFC_3986_HTTP_URL.fullmatch(url)
    if found is None and HTTP_URL.fullmatch(url):
        raise ValidationError(URL_ERROR)
    if found and found["ip"]:
        try:
            ipaddress.IPv6Address(found["ip"])
        except ValueError:
            raise ValidationError("The host is not an IPv6 address.") from None


class HttpUrl(Text):
    """An http(s) URL (:data:`HTTP_URL`) of up to ``max_length`` characters."""

    def __init__(self, max_length: int, **kwargs: Any):
        metadata = {"format": "uri", **kwargs.pop("metadata", {})}
        super().__init__(
            validate=[validate.Length(max=max_length), Whole(HTTP_URL, URL_ERROR), _rfc_3986],
            metadata=metadata,
            **kwargs,
        )


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
