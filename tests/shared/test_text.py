"""The text rules as the OpenAPI document states them agree with the rules the API applies."""

from __future__ import annotations

import re
import sys

import pytest
from marshmallow import Schema, ValidationError

from shared.text import NOT_BLANK_PATTERN, STORABLE_PATTERN, HttpUrl, not_blank, storable

EVERY_CHARACTER = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]


def _accepted(check, value: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        check(value)
    except (ValueError, ValidationError):
        return False
    return True


def test_the_storable_pattern_is_storable_character_by_character():
    pattern = re.compile(STORABLE_PATTERN)
    for char in EVERY_CHARACTER:
        assert bool(pattern.fullmatch(f"a{char}b")) == _accepted(storable, char), hex(ord(char))


def test_the_not_blank_pattern_is_not_blank_and_storable():
    pattern = re.compile(NOT_BLANK_PATTERN)
    for char in EVERY_CHARACTER:
        expected = _accepted(storable, char) and _accepted(not_blank, char)
        assert bool(pattern.fullmatch(f" {char}\n")) == expected, hex(ord(char))
    assert pattern.fullmatch("\u3000 a \t")
    assert not pattern.fullmatch("\u3000 \t\n")


class Media(Schema):
    media = HttpUrl(100)


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/drive.mp4",
        "HTTP://CDN.EXAMPLE:8080/a/b;c?d=e&f=%20#g",
        "http://127.0.0.1/x",
        "http://localhost",
        "https://[::1]:443/",
        "https://[::ffff:192.0.2.1]/",
    ],
)
def test_http_urls_are_taken(url):
    assert Media().load({"media": url}) == {"media": url}


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cdn.example/drive.mp4",
        "javascript:alert(1)",
        "http://user:password@cdn.example/",
        "http:///no-host",
        "http://:80/no-host",
        "http://cdn.example/a b",
        "http://cdn.example/%zz",
        "http://[::::]/",
        "http://cdn.example/" + "v" * 100,
        "https://cdn.example/\x00",
    ],
)
def test_other_urls_are_not(url):
    with pytest.raises(ValidationError) as raised:
        Media().load({"media": url})
    assert list(raised.value.messages) == ["media"]
