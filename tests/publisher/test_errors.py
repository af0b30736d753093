"""Bad input gets a 4xx in the one error shape and changes nothing; a dead database is a 503."""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from services.publisher import create_app
from shared.db import PING_AFTER_IDLE_S, Database, utcnow
from shared.models import ApiToken
from shared.tokens import KnownTokens
from tests.publisher.helpers import article, row_counts


def assert_error(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.json["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


@pytest.fixture
def unchanged(database):  # type: ignore[no-untyped-def]
    """Fails the test if the request under test wrote anything."""
    before = row_counts(database)
    yield
    assert row_counts(database) == before


def test_malformed_json_is_400(client, editor, unchanged):
    response = client.post(
        "/api/v1/articles",
        data=b"{not json",
        headers={**editor, "Content-Type": "application/json"},
    )
    assert_error(response, 400, "malformed_json")


def test_wrong_content_type_is_415(client, editor, unchanged):
    response = client.post(
        "/api/v1/articles", data="title=x", headers={**editor, "Content-Type": "text/plain"}
    )
    assert_error(response, 415)


def test_invalid_fields_are_422_naming_each_field(client, editor, unchanged):
    response = client.post("/api/v1/articles", json={"title": "", "body": 5}, headers=editor)
    error = assert_error(response, 422, "validation_failed")
    assert set(error["details"]) == {"title", "body"}


def test_unknown_field_is_422(client, editor, unchanged):
    response = client.post("/api/v1/articles", json=article(colour="red"), headers=editor)
    assert "colour" in assert_error(response, 422)["details"]


def test_bad_values_are_422(client, editor, unchanged):
    response = client.post(
        "/api/v1/articles",
        json=article(media="javascript:alert(1)", section="Not A Section", tags="x"),
        headers=editor,
    )
    assert set(assert_error(response, 422)["details"]) == {"media", "section", "tags"}


def test_missing_token_is_401(client, unchanged):
    response = client.post("/api/v1/articles", json=article())
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_invalid_token_is_401(client, unchanged):
    response = client.get("/api/v1/articles", headers={"Authorization": "Bearer nope"})
    assert_error(response, 401)


def test_a_revoked_token_stops_working_within_the_cache_time(app, client, editor, database):
    app.extensions["pressroom"].known_tokens = KnownTokens(ttl=0.3)
    assert client.get("/api/v1/articles", headers=editor).status_code == 200
    with database.transaction() as session:
        session.execute(update(ApiToken).values(revoked_at=utcnow()))
    time.sleep(0.4)
    assert_error(client.get("/api/v1/articles", headers=editor), 401)


def test_wrong_role_is_403(client, ops_token, unchanged):
    response = client.post(
        "/api/v1/articles", json=article(), headers={"Authorization": f"Bearer {ops_token}"}
    )
    assert_error(response, 403, "forbidden")


def test_admin_may_do_what_an_editor_does(client, admin_token):
    response = client.post(
        "/api/v1/articles", json=article(), headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert response.status_code == 201


def test_unknown_article_is_404(client, editor, unchanged):
    assert_error(client.get(f"/api/v1/articles/{uuid.uuid4()}", headers=editor), 404)
    assert_error(client.post(f"/api/v1/articles/{uuid.uuid4()}/publish", headers=editor), 404)


def test_body_over_one_mebibyte_is_413(client, editor, unchanged):
    big = b'{"title": "' + b"a" * (2 << 20) + b'"}'
    response = client.post(
        "/api/v1/articles", data=big, headers={**editor, "Content-Type": "application/json"}
    )
    assert_error(response, 413)


def test_a_body_over_the_limit_is_413_where_the_view_ignores_its_body(client, admin_token):
    """Rotating a webhook's secret reads no body; 2 MiB of one is refused all the same."""
    response = client.post(
        f"/api/v1/webhooks/{uuid.uuid4()}/rotate",
        data=b"[" + b"0," * (1 << 20) + b"0]",
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    assert_error(response, 413)


def test_bad_cursor_is_422(client, editor):
    assert_error(client.get("/api/v1/articles?cursor=%%%", headers=editor), 422)


def test_unreachable_database_is_503(settings):
    dead = Database("postgresql+psycopg://pressroom@127.0.0.1:1/none")
    client = create_app(settings, db=dead).test_client()
    response = client.get("/api/v1/articles", headers={"Authorization": "Bearer whatever"})
    assert_error(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "5"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["checks"]["database"] is False


def test_a_request_after_the_database_dropped_its_connections_succeeds(client, editor, database):
    assert client.get("/api/v1/articles", headers=editor).status_code == 200  # pooled now
    admin = Database(database.engine.url.render_as_string(hide_password=False))
    with admin.transaction() as session:  # as a restart or a failover would
        dropped = session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state = 'idle'"
            )
        ).all()
    admin.dispose()
    assert dropped
    time.sleep(PING_AFTER_IDLE_S + 0.2)  # the pool sat idle meanwhile
    response = client.post("/api/v1/articles", json=article(), headers=editor)
    assert response.status_code == 201, response.json
    assert client.get("/api/v1/articles", headers=editor).status_code == 200


def test_ready_when_database_and_broker_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"] == {"database": True, "broker": True}


@pytest.mark.parametrize(
    "bad",
    [
        {"archive_after": "0001-01-01T00:00:00+01:00"},
        {"publish_at": "9999-12-31T23:59:59-01:00"},
        {"title": "NUL \x00 inside"},
        {"tags": ["a\x00"]},
        {"title": "pasted\x0bfrom a word processor"},  # no feed can carry it
        {"authors": ["Desk\x1b[31m"]},
        {"media": "https://cdn.test/" + "v" * 2000 + ".mp4"},  # longer than the column
        {"evergreen": 0},
        {"evergreen": "yes"},
    ],
)
def test_values_no_store_can_hold_are_422(client, editor, unchanged, bad):
    response = client.post("/api/v1/articles", json=article(**bad), headers=editor)
    assert set(assert_error(response, 422)["details"]) == set(bad)


def test_json_nested_deeper_than_a_parser_goes_is_400(client, editor, database):
    created = client.post("/api/v1/articles", json=article(), headers=editor).json
    before = row_counts(database)
    deep = b"[" * 100_000 + b"]" * 100_000
    headers = {**editor, "Content-Type": "application/json"}
    assert_error(client.post("/api/v1/articles", data=deep, headers=headers), 400, "malformed_json")
    response = client.patch(f"/api/v1/articles/{created['id']}", data=deep, headers=headers)
    assert_error(response, 400, "malformed_json")
    assert row_counts(database) == before


def test_lone_surrogate_is_422(client, editor, unchanged):
    raw = b'{"title": "a\\ud800", "body": "<p>x</p>"}'
    response = client.post(
        "/api/v1/articles", data=raw, headers={**editor, "Content-Type": "application/json"}
    )
    assert "title" in assert_error(response, 422)["details"]


def test_queries_with_unstorable_text_are_4xx(client, editor):
    assert_error(client.get("/api/v1/articles?q=%00", headers=editor), 422)
    assert_error(client.get("/api/v1/articles/%00", headers=editor), 404)
    crafted = "MDAwMS0wMS0wMVQwMDowMDowMCswMTowMHx4"  # "0001-01-01T00:00:00+01:00|x"
    assert_error(client.get(f"/api/v1/articles?cursor={crafted}", headers=editor), 422)


def test_unsupported_method_is_405_with_allow(client, editor):
    response = client.delete("/api/v1/articles", headers=editor)
    assert_error(response, 405)
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_json_with_an_integer_too_long_to_convert_is_400(client, editor, database):
    created = client.post("/api/v1/articles", json=article(), headers=editor).json
    before = row_counts(database)
    huge = b'{"title": "x", "body": "y", "version": ' + b"9" * 5000 + b"}"
    headers = {**editor, "Content-Type": "application/json"}
    assert_error(client.post("/api/v1/articles", data=huge, headers=headers), 400, "malformed_json")
    response = client.patch(f"/api/v1/articles/{created['id']}", data=huge, headers=headers)
    assert_error(response, 400, "malformed_json")
    publish = client.post(f"/api/v1/articles/{created['id']}/publish", data=huge, headers=headers)
    assert_error(publish, 400, "malformed_json")
    assert row_counts(database) == before


@pytest.mark.parametrize(
    "bad", [{"slug": "nl-twin\n"}, {"section": "news\n"}, {"slug": "\nnl-twin"}]
)
def test_a_trailing_or_leading_newline_is_no_slug_or_section(client, editor, unchanged, bad):
    response = client.post("/api/v1/articles", json=article(**bad), headers=editor)
    assert set(assert_error(response, 422)["details"]) == set(bad)


def test_a_section_with_a_newline_in_the_url_is_404_not_500(client, editor):
    assert client.get("/sections/zzz%0A/feed.xml").status_code == 404
    assert_error(client.get("/api/v1/articles?section=news%0A", headers=editor), 422)


@pytest.mark.parametrize(
    "bad", [{"title": "   "}, {"title": "\t\n"}, {"body": ""}, {"body": "  \n "}, {"tags": ["!!"]}]
)
def test_blank_title_or_body_and_empty_tags_are_422(client, editor, unchanged, bad):
    response = client.post("/api/v1/articles", json=article(**bad), headers=editor)
    assert set(assert_error(response, 422)["details"]) == set(bad)


def test_blank_title_on_update_is_422(client, editor, database):
    created = client.post("/api/v1/articles", json=article(), headers=editor).json
    before = row_counts(database)
    response = client.patch(
        f"/api/v1/articles/{created['id']}", json={"title": " "}, headers=editor
    )
    assert "title" in assert_error(response, 422)["details"]
    assert row_counts(database) == before


EMPTIED_BY_SANITISING = [
    "<script>alert(1)</script>",
    "<p> </p>",
    "<p>&nbsp;</p><br><hr>",
    '<style>p { color: red }</style><p><a href="javascript:alert(1)"></a></p>',
    '<img src="javascript:alert(1)" alt="a src=">',
]


@pytest.mark.parametrize("body", EMPTIED_BY_SANITISING)
def test_a_body_that_sanitising_empties_is_422(client, editor, unchanged, body):
    response = client.post("/api/v1/articles", json=article(body=body), headers=editor)
    details = assert_error(response, 422, "validation_failed")["details"]
    assert set(details) == {"body"}
    assert "unsafe markup" in " ".join(details["body"])


@pytest.mark.parametrize("body", EMPTIED_BY_SANITISING)
def test_a_body_that_sanitising_empties_is_422_on_update(client, editor, database, body):
    created = client.post("/api/v1/articles", json=article(), headers=editor).json
    before = row_counts(database)
    url = f"/api/v1/articles/{created['id']}"
    response = client.patch(url, json={"body": body}, headers=editor)
    assert set(assert_error(response, 422)["details"]) == {"body"}
    assert row_counts(database) == before
    kept = client.get(url, headers=editor).json
    assert (kept["body"], kept["version"]) == (created["body"], created["version"])


def test_a_body_that_is_only_a_picture_is_accepted(client, editor):
    body = '<figure><img src="https://cdn.test/flood.jpg" alt="The flood"></figure>'
    response = client.post("/api/v1/articles", json=article(body=body), headers=editor)
    assert response.status_code == 201, response.json


def _in(**delta: float) -> str:
    return (utcnow() + timedelta(**delta)).isoformat()


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        ({"status": "draft", "publish_at": _in(days=30)}, "status", "a draft has no publish_at"),
        ({"publish_at": _in(days=-3)}, "publish_at", "publish_at is in the past"),
        ({"status": "published", "published_at": _in(days=3)}, "published_at", "future"),
    ],
)
def test_times_that_contradict_the_status_are_422_saying_why(
    client, editor, unchanged, bad, field, says
):
    response = client.post("/api/v1/articles", json=article(**bad), headers=editor)
    details = assert_error(response, 422)["details"]
    assert set(details) == {field}
    assert says in " ".join(details[field])


def test_a_past_publish_at_on_update_is_422(client, editor, database):
    created = client.post("/api/v1/articles", json=article(publish_at=_in(days=1)), headers=editor)
    assert created.json["status"] == "scheduled"
    before = row_counts(database)
    response = client.patch(
        f"/api/v1/articles/{created.json['id']}", json={"publish_at": _in(days=-2)}, headers=editor
    )
    assert "publish_at" in assert_error(response, 422)["details"]
    assert row_counts(database) == before


def test_a_chunked_body_over_one_mebibyte_is_413_too(client, editor, unchanged):
    big = b'{"title": "' + b"a" * (2 << 20) + b'"}'
    response = client.post(
        "/api/v1/articles",
        input_stream=io.BytesIO(big),
        headers={**editor, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert_error(response, 413)


def test_a_chunked_body_under_the_limit_is_read_whole(client, editor):
    body = json.dumps(article(body="<p>" + "b" * 490_000 + "</p>", summary="s" * 2000)).encode()
    response = client.post(
        "/api/v1/articles",
        input_stream=io.BytesIO(body),
        headers={**editor, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 201, response.json
