"""The OpenAPI document covers the whole API: every route the app registers under /api/v1,
with who may call it, the headers it takes and every response it can give, in the one error
shape. (tests/publisher/test_api_fuzz.py checks the app against what it says.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask

from tests.publisher.helpers import document_only_app

NOT_THE_API = {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/assets/{filename}"}
METHODS = {"get", "post", "put", "patch", "delete"}
WITH_BODY = {"post", "put", "patch"}


@pytest.fixture(scope="module")
def spec_app() -> Flask:
    return document_only_app()


@pytest.fixture(scope="module")
def spec(spec_app: Flask) -> dict[str, Any]:
    response = spec_app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json  # type: ignore[no-any-return]


def routes(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every API route the app serves."""
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        if not path.startswith("/api/") or path in NOT_THE_API:
            continue
        found |= {(path, m.lower()) for m in rule.methods or () if m.lower() in METHODS}
    return found


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = spec["components"][kind][name]
    return node


def test_every_api_route_and_method_is_documented(spec_app, spec):
    served = routes(spec_app)
    documented = {(path, method) for path, method, _ in operations(spec)}
    assert served - documented == set(), "served but not in the OpenAPI document"
    assert documented - served == set(), "in the OpenAPI document but not served"


def test_every_operation_lists_the_responses_it_can_give(spec):
    for path, method, operation in operations(spec):
        label, responses = f"{method.upper()} {path}", operation["responses"]
        assert "default" not in responses, label  # a catch-all would hide an undocumented one
        expected = {"503"}
        if operation.get("security") != []:
            assert operation["security"] == [{"bearer": []}], label
            assert operation["x-role"] in {"editor", "admin", "ops"}, label
            expected |= {"401", "403"}
        if "{" in path:
            expected.add("404")
        if method in WITH_BODY:
            expected |= {"413", "415"}
        if "requestBody" in operation:
            expected |= {"400", "422"}
        if any(p["in"] in ("query", "header") for p in operation.get("parameters", [])):
            expected.add("422")
        assert expected <= set(responses), f"{label} lacks {sorted(expected - set(responses))}"
        assert any(status.startswith("2") for status in responses), label
        for status, response in responses.items():
            if int(status) >= 400:
                content = resolve(spec, response)["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (label, status)


def test_the_error_responses_say_their_headers(spec):
    responses = spec["components"]["responses"]
    assert "WWW-Authenticate" in responses["UNAUTHORIZED"]["headers"]
    assert "Retry-After" in responses["SERVICE_UNAVAILABLE"]["headers"]
    limited = spec["paths"]["/api/v1/subscriptions"]["post"]["responses"]["429"]
    assert "Retry-After" in limited["headers"]


def test_the_public_and_the_guarded_operations(spec):
    roles = {(path, method): op.get("x-role") for path, method, op in operations(spec)}
    assert roles.pop(("/api/v1/subscriptions", "post")) is None
    assert spec["paths"]["/api/v1/subscriptions"]["post"]["security"] == []
    assert {role for (path, _), role in roles.items() if "/webhooks" in path} == {"admin"}
    assert {role for (path, _), role in roles.items() if "/articles" in path} == {"editor"}


def test_the_request_headers_are_parameters_swagger_can_send(spec):
    def headers(path: str, method: str) -> dict[str, Any]:
        parameters = spec["paths"][path][method].get("parameters", [])
        return {p["name"]: p for p in parameters if p["in"] == "header"}

    key = headers("/api/v1/articles", "post")["Idempotency-Key"]
    assert key["schema"]["maxLength"] == 255 and key["description"]
    assert "If-Match" in headers("/api/v1/articles/{article_id}", "patch")
    created = spec["paths"]["/api/v1/articles"]["post"]["responses"]["201"]
    assert created["headers"]["ETag"]["required"] is True
    assert "Idempotent-Replayed" in created["headers"]


def test_formats_and_patterns_are_json_schemas(spec):
    """No apispec "url" format (JSON Schema has none: "uri"), no Python-only anchors \\A \\Z
    (ECMA-262 reads \\A as a letter), and every pattern compiles."""
    text = json.dumps(spec)
    assert '"format": "url"' not in text
    assert "\\\\A" not in text and "\\\\Z" not in text
    for pattern in re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', text):
        re.compile(json.loads(pattern))
    media = spec["components"]["schemas"]["ArticleCreate"]["properties"]["media"]
    assert media["format"] == "uri" and media["pattern"].startswith("^[Hh][Tt][Tt][Pp]")


def test_text_fields_state_the_characters_they_refuse(spec):
    article = spec["components"]["schemas"]["ArticleCreate"]["properties"]
    assert re.fullmatch(article["summary"]["pattern"], "Kim and Putin, on a drive.\n")
    assert not re.fullmatch(article["summary"]["pattern"], "a\x00b")
    assert not re.fullmatch(article["title"]["pattern"], " \t ")
    cursor = {p["name"]: p for p in spec["paths"]["/api/v1/articles"]["get"]["parameters"]}
    assert "next_cursor" in cursor["cursor"]["description"]
    rules = spec["info"]["description"]
    assert "control characters" in rules and "next_cursor" in rules
