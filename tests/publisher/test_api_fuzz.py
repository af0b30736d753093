"""Fuzz every documented operation of the publisher API with Schemathesis.

The requests come from the app's own OpenAPI document (``/api/v1/openapi.json``): Schemathesis'
boundary-value ("coverage") cases, then generated valid and invalid requests, each sent to the
WSGI app in-process with a token of the role the document names for the operation (``x-role``:
an editor's for articles, an admin's for webhooks, none for the public subscriptions, whose rate
limit is lifted here). Every response must

* never be a 5xx (``not_a_server_error``);
* for a 4xx or 5xx, carry the one error shape ``{"error": {"code", "message", "details"}}``
  (``error_shape`` below);
* match what the document says: a status code it lists (there is no catch-all ``default``),
  content type, headers and body schema (``status_code_conformance``,
  ``content_type_conformance``, ``response_headers_conformance``,
  ``response_schema_conformance``);
* reject requests the document calls invalid with a 4xx (``negative_data_rejection``), and
  accept those it calls valid (``documented_valid_is_accepted`` below), but for the rules no
  JSON Schema can state, which the document says in words; answer undeclared methods with 405
  and ``Allow`` (``unsupported_method``) and refuse the request without or with a wrong token
  (``ignored_auth``).

Values that break back ends like this one (NUL, date-times whose UTC conversion leaves
datetime's range, cursors that decode to such values) are mixed into generated strings through a
Schemathesis dictionary, so a small, bounded and derandomized run still reaches them. Lone
surrogates cannot go through Schemathesis (it only generates UTF-8-encodable text), so one
plain test below sends them by hand.

Schemathesis' fixture-based loader (``schemathesis.pytest.from_fixture``) fails on the pinned
pytest 9.2 (it uses ``Function._nodeid``, which pytest 9.2 removed), so the document is loaded
once at import from an app that is only asked for its OpenAPI document, and each request goes
to the ``fuzz_client`` fixture's app (real database and broker) through ``app=``.
"""

from __future__ import annotations

import base64
import json
import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.publisher import create_app
from tests.publisher.helpers import article, document_only_app

SPEC_PATH = "/api/v1/openapi.json"
MAX_EXAMPLES = 60  # generated requests per operation, on top of the coverage cases


def _cursor(created_at: str, article_id: str) -> str:
    """A list cursor in the publisher's own encoding (services/publisher/articles/queries.py)."""
    raw = f"{created_at}|{article_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


HOSTILE_VALUES = [
    "\x00",
    "a\x00b",
    "0001-01-01T00:00:00+01:00",  # before datetime.min once converted to UTC
    "9999-12-31T23:59:59-01:00",  # after datetime.max once converted to UTC
    _cursor("0001-01-01T00:00:00+01:00", "x"),
    _cursor("2020-01-01T00:00:00+00:00", "\x00"),
]
BODY_FIELDS = (
    "title", "slug", "summary", "body", "section", "tags[*]", "authors[*]", "media",
    "publish_at", "published_at", "archive_after", "reason",
)  # fmt: skip
HOSTILE = {"dictionary": "hostile", "probability": 0.25}

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240601,
        "dictionaries": {"hostile": {"values": HOSTILE_VALUES}},
        # Query and path strings draw from the dictionary by type, body fields by path; each
        # value only goes where it keeps a valid request valid (or an invalid one invalid).
        "parameters": {f"body.{name}": HOSTILE for name in BODY_FIELDS},
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # Each operation's token is added below (_auth); generating Authorization too
            # would make Schemathesis expect a 401 for requests that carry a valid token.
            "with-security-parameters": False,
            "dictionaries": {"string": HOSTILE},
        },
        # Values captured from earlier responses (random UUIDs, timestamps) would feed into later
        # requests and make runs differ; existing_ids below gives real ids instead.
        "phases": {
            phase: {"extra-data-sources": {"responses": False}}
            for phase in ("examples", "coverage", "fuzzing")
        },
        "checks": {
            # Run as documented_valid_is_accepted below, which knows the rules no schema
            # states. With the right token a valid request is never a 401 or 403; 404, 409
            # and 412 answer state (an id that is no article, a taken slug, a stale If-Match).
            "positive_data_acceptance": {
                "enabled": False,
                "expected-statuses": ["2xx", "404", "409", "412"],
            },
            # Any 4xx is a rejection: the default list lacks 413, the answer to a body over the
            # 1 MiB limit whatever it contains. A 5xx fails `not_a_server_error` anyway.
            "negative_data_rejection": {"expected-statuses": ["4xx"]},
        },
    }
)


# URLs (format uri, with the document's http(s) pattern) are drawn with addresses or localhost
# for hosts: a webhook URL is resolved when it is registered, and the fuzzer must not wait on
# DNS (the fuzzed app allows private targets). Other hosts come from the coverage phase.
schemathesis.openapi.format(
    "uri",
    st.builds(
        "{}://{}{}/{}".format,
        st.sampled_from(["http", "https"]),
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "192.0.2.7"]),
        st.sampled_from(["", ":8080"]),
        st.from_regex(r"[A-Za-z0-9._~-]{0,30}", fullmatch=True),
    ),
)
schema = schemathesis.openapi.from_wsgi(SPEC_PATH, document_only_app(), config=CONFIG)


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx and 5xx body is ``{"error": {"code": str, "message": str, "details": {}}}``."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"error body is {content_type!r}"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {response.text[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body!r}"
    error = body["error"]
    assert isinstance(error, dict), f"not the error shape: {body!r}"
    assert set(error) == {"code", "message", "details"}, f"not the error shape: {body!r}"
    assert isinstance(error["code"], str) and error["code"], f"bad error code: {body!r}"
    assert isinstance(error["message"], str) and error["message"], f"bad message: {body!r}"
    assert isinstance(error["details"], dict), f"details is not an object: {body!r}"
    return None


# Rules of valid requests that JSON Schema cannot state (the fields' descriptions do): a cursor
# is one the same list handed out; times are relative to now and within the years stored;
# status goes with publish_at; a tag must keep a letter or digit once in its slug form; the
# articles "Also read" is steered to must exist; a body must show something once sanitised; an
# email address must be able to receive mail and a webhook's host must resolve. A
# documented-valid request refused with a 422 naming only these fields is no mismatch; one
# naming any other field is.
UNSTATED_RULES = {
    "cursor", "publish_at", "published_at", "archive_after", "status", "tag", "tags",
    "related_pinned", "related_excluded", "body", "email", "url",
}  # fmt: skip


def documented_valid_is_accepted(ctx: CheckContext, response: Response, case: Case) -> None:
    """Schemathesis' ``positive_data_acceptance``, less the rules in UNSTATED_RULES, on the
    requests whose every part is valid (Schemathesis may call a request positive whose
    headers are, with a body that is not)."""
    if case.meta is None or any(c.mode.is_negative for c in case.meta.components.values()):
        return
    try:
        positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if response.status_code == 422:
            details = response.json()["error"]["details"]
            if details and set(details) <= UNSTATED_RULES:
                return
        raise


@pytest.fixture
def fuzz_client(make_settings, database):  # type: ignore[no-untyped-def]
    """The app under test: subscriptions without their rate limit (the fuzzer sends hundreds
    from one address, and 429 would hide every other answer), webhooks to private addresses
    (see the ``uri`` strategy)."""
    settings = make_settings(subscribe_rate_limit="100000/minute", webhook_allow_private=True)
    app = create_app(settings, db=database)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture
def tokens(editor_token: str, admin_token: str) -> dict[str, str]:
    """Each role's token, for the operations the document gives that role."""
    return {"editor": editor_token, "admin": admin_token}


def _created(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return str(response.json["id"])


@pytest.fixture
def existing_ids(fuzz_client, tokens: dict[str, str]) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Articles in each status and webhook endpoints enabled and disabled, by path parameter,
    so that operations on one get past the 404."""
    post, editor = fuzz_client.post, {"Authorization": f"Bearer {tokens['editor']}"}
    articles = [
        _created(post("/api/v1/articles", json=article(title="Fuzz draft"), headers=editor)),
        *(
            _created(post("/api/v1/articles", json=article(title=title, **fields), headers=editor))
            for title, fields in [
                ("Fuzz published", {"status": "published"}),
                ("Fuzz scheduled", {"publish_at": "2999-01-01T00:00:00Z"}),
                ("Fuzz archived", {"status": "published"}),
            ]
        ),
    ]
    _created(post(f"/api/v1/articles/{articles[3]}/archive", json={}, headers=editor))
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    webhooks = [
        _created(post("/api/v1/webhooks", json={"url": f"http://127.0.0.1:9/{n}"}, headers=admin))
        for n in range(2)
    ]
    _created(post(f"/api/v1/webhooks/{webhooks[1]}/disable", json={}, headers=admin))
    return {"article_id": articles, "webhook_id": webhooks}


def _steer(case: Case, existing_ids: dict[str, list[str]]) -> None:
    """Point most generated ids at real articles and endpoints; drop undeclared query
    parameters."""
    for name, ids in existing_ids.items():
        if not isinstance((case.path_parameters or {}).get(name), str):
            continue
        # A function of the whole generated request, so the choice is as reproducible as the
        # case (shrinking replays it) yet varies even when the generated id does not; one
        # request in five keeps its generated id and exercises the 404 path.
        body = case.body if isinstance(case.body, (dict, list, str, bytes, int, float)) else None
        seen = repr((case.path_parameters, case.query, body)).encode("utf-8", "surrogatepass")
        pick = zlib.crc32(seen) % (len(ids) + 1)
        if pick < len(ids):
            case.path_parameters[name] = ids[pick]
    if case.query:
        # OpenAPI does not forbid undeclared query parameters, and the API ignores them by
        # design (webargs), so a request that only adds one is not invalid.
        declared = {parameter.name for parameter in case.operation.query}
        for name in [name for name in case.query if name not in declared]:
            del case.query[name]
    case.meta  # noqa: B018 - re-validates the edited case, so negative checks judge what is sent


def _auth(case: Case, tokens: dict[str, str]) -> dict[str, str]:
    """The token of the role the document gives the operation; none for a public one."""
    role = case.operation.definition.raw.get("x-role")
    return {"Authorization": f"Bearer {tokens[role]}"} if role else {}


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        # The app, its database and the existing rows are shared by all of an operation's
        # examples on purpose: state the API builds up is part of what is fuzzed.
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
    ],
)
@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case, fuzz_client, tokens, existing_ids):
    _steer(case, existing_ids)
    case.call_and_validate(
        app=fuzz_client.application,
        headers=_auth(case, tokens),
        additional_checks=[error_shape, documented_valid_is_accepted],
    )


@pytest.mark.parametrize("field", ["title", "body"])
def test_lone_surrogate_in_a_json_string_is_a_client_error(client, editor, field):
    """JSON may escape a lone surrogate, which no UTF-8 text can hold: a 4xx, not a 5xx."""
    payload = json.dumps({**article(), field: "a\ud800"})  # sent as the escape "a\\ud800"
    response = client.post(
        "/api/v1/articles", data=payload, headers={**editor, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert set(response.json["error"]) == {"code", "message", "details"}
