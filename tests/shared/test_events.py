"""Event contracts: each type survives a JSON round trip; older shapes still parse."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError

from shared.events import EVENT_TYPES, make_envelope, parse_envelope

ARTICLE_ID = str(uuid.uuid4())


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_round_trips_through_json(event_type):
    data = {"article_id": ARTICLE_ID, "version": 3, "title": "T", "tags": ["a"], "section": "news"}
    sent = make_envelope(event_type, data)
    received = parse_envelope(json.loads(json.dumps(sent)))
    assert received["id"] == sent["id"]
    assert received["type"] == event_type
    assert received["subject"] == ARTICLE_ID
    assert received["data"]["article_id"] == ARTICLE_ID
    assert received["data"]["version"] == 3
    assert received["data"]["tags"] == ["a"]


def test_an_older_envelope_without_the_newer_fields_still_parses():
    old = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "pressroom/publisher",
        "type": "article.published",
        "subject": ARTICLE_ID,
        "time": "2026-01-01T00:00:00+00:00",
        "data": {"article_id": ARTICLE_ID, "version": 1},
    }
    parsed = parse_envelope(old)
    assert parsed["data"]["tags"] == []
    assert parsed["data"]["origin"] == "api"


def test_fields_added_by_a_newer_producer_are_kept():
    env = make_envelope("article.updated", {"article_id": ARTICLE_ID, "version": 2, "wordcount": 9})
    assert parse_envelope(env)["data"]["wordcount"] == 9


@given(st.dictionaries(st.sampled_from(["id", "type", "time", "specversion", "data"]), st.text()))
def test_garbage_never_parses_as_an_event(garbage):
    with pytest.raises(ValidationError):
        parse_envelope(garbage)
