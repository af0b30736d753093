"""The editors' articles API, through Flask's test client on a real database and broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from services.publisher.articles.queries import _search
from shared.content import SLUG_PROBE
from shared.models import ArticleSearch
from tests.publisher.helpers import article, relayed


def create(client, editor, **overrides):  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/articles", json=article(**overrides), headers=editor)
    assert response.status_code == 201, response.json
    return response.json


def test_create_draft_then_read_it_back(client, editor):
    created = create(client, editor)
    assert created["status"] == "draft"
    assert created["slug"] == "putin-takes-kim-on-a-drive"
    assert created["version"] == 1
    got = client.get(f"/api/v1/articles/{created['id']}", headers=editor)
    assert got.status_code == 200
    assert got.headers["ETag"] == '"1"'
    assert got.json["title"] == "Putin takes Kim on a drive"
    assert got.json["tags"] == ["russia", "north-korea"]
    assert got.json["url"] == "http://pressroom.test/articles/putin-takes-kim-on-a-drive"


def test_body_is_sanitised_on_the_way_in(client, editor):
    created = create(
        client,
        editor,
        body='<p onclick="steal()">Hi <a href="javascript:alert(1)">x</a></p>'
        "<script>alert(1)</script>",
    )
    assert "<script" not in created["body"]
    assert "onclick" not in created["body"]
    assert "javascript:" not in created["body"]
    assert created["body"].startswith("<p>Hi ")


def test_same_title_gets_a_distinct_slug(client, editor):
    first = create(client, editor)
    second = create(client, editor)
    assert first["slug"] == "putin-takes-kim-on-a-drive"
    assert second["slug"] == "putin-takes-kim-on-a-drive-2"


def test_a_title_repeated_many_times_keeps_counting(client, editor):
    # past the first batch of candidates the slug lookup asks for the next batch
    create(client, editor, slug="putin-takes-kim-on-a-drive-23")  # a gap that stays taken
    slugs = [create(client, editor)["slug"] for _ in range(SLUG_PROBE + 5)]
    expected = ["putin-takes-kim-on-a-drive"]
    expected += [f"putin-takes-kim-on-a-drive-{n}" for n in range(2, SLUG_PROBE + 7) if n != 23]
    assert slugs == expected


def test_explicit_slug_that_is_taken_is_a_conflict(client, editor):
    create(client, editor, slug="kim-drive")
    response = client.post("/api/v1/articles", json=article(slug="kim-drive"), headers=editor)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "slug_taken"


def test_publish_now_sets_published_at_and_emits_the_event(client, editor):
    created = create(client, editor, status="published")
    assert created["status"] == "published"
    assert created["published_at"] is not None
    relayed(client)
    events = client.get(f"/api/v1/articles/{created['id']}/events", headers=editor).json["items"]
    assert [e["type"] for e in events] == ["article.published"]
    assert events[0]["relayed_at"] is not None
    assert {c["consumer"] for c in events[0]["consumers"]} == {"archiver", "notifier"}


def test_future_publish_at_schedules_the_article(client, editor):
    when = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    created = create(client, editor, publish_at=when)
    assert created["status"] == "scheduled"
    assert client.get(f"/api/v1/articles/{created['id']}/events", headers=editor).json == {
        "items": []
    }


def test_tags_are_kept_in_one_form_each_once(client, editor):
    created = create(client, editor, tags=["x", "x", "X", " North Korea ", "north-korea"])
    assert created["tags"] == ["x", "north-korea"]
    other = create(client, editor, title="Other", tags=["y"])
    listed = client.get("/api/v1/articles?tag=North%20Korea", headers=editor).json["items"]
    assert [a["id"] for a in listed] == [created["id"]]
    assert other["id"] not in [a["id"] for a in listed]


def test_back_catalogue_keeps_its_published_at(client, editor):
    created = create(client, editor, status="published", published_at="2005-03-01T09:00:00Z")
    assert created["published_at"] == "2005-03-01T09:00:00+00:00"


def test_full_lifecycle_emits_each_event_and_audits_each_change(client, editor):
    aid = create(client, editor)["id"]
    for action in ("publish", "archive", "unarchive", "retract"):
        response = client.post(
            f"/api/v1/articles/{aid}/{action}", json={"reason": f"because {action}"}, headers=editor
        )
        assert response.status_code == 200, response.json
    final = client.get(f"/api/v1/articles/{aid}", headers=editor).json
    assert final["status"] == "retracted"
    assert final["version"] == 5
    events = client.get(f"/api/v1/articles/{aid}/events", headers=editor).json["items"]
    assert [e["type"] for e in events] == [
        "article.published",
        "article.archived",
        "article.unarchived",
        "article.retracted",
    ]
    history = client.get(f"/api/v1/articles/{aid}/history", headers=editor).json["items"]
    assert [(h["from"], h["to"]) for h in history] == [
        (None, "draft"),
        ("draft", "published"),
        ("published", "archived"),
        ("archived", "published"),
        ("published", "retracted"),
    ]
    assert history[2]["reason"] == "because archive"
    assert history[2]["actor"] == "editor:test-editor"


def test_unarchived_story_gets_a_new_archive_date(client, editor, settings):
    aid = create(client, editor, status="published", section="news")["id"]
    client.post(f"/api/v1/articles/{aid}/archive", headers=editor)
    restored = client.post(f"/api/v1/articles/{aid}/unarchive", headers=editor).json
    after = datetime.fromisoformat(restored["archive_after"])
    expected = datetime.now(UTC) + timedelta(days=settings.archive_after_days)
    assert abs((after - expected).total_seconds()) < 60
    assert restored["archived_at"] is None


def test_action_without_a_body_is_accepted(client, editor):
    aid = create(client, editor)["id"]
    assert client.post(f"/api/v1/articles/{aid}/publish", headers=editor).status_code == 200


def test_impossible_transition_is_a_conflict_that_changes_nothing(client, editor):
    aid = create(client, editor)["id"]
    response = client.post(f"/api/v1/articles/{aid}/archive", headers=editor)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "invalid_transition"
    assert client.get(f"/api/v1/articles/{aid}", headers=editor).json["status"] == "draft"


def test_patch_bumps_the_version_and_announces_published_changes(client, editor):
    created = create(client, editor, status="published")
    response = client.patch(
        f"/api/v1/articles/{created['id']}",
        json={"summary": "A new summary"},
        headers={**editor, "If-Match": '"1"'},
    )
    assert response.status_code == 200
    assert response.json["version"] == 2
    assert response.headers["ETag"] == '"2"'
    types = [
        e["type"]
        for e in client.get(f"/api/v1/articles/{created['id']}/events", headers=editor).json[
            "items"
        ]
    ]
    assert types == ["article.published", "article.updated"]


def test_patch_with_a_stale_version_is_refused(client, editor):
    aid = create(client, editor)["id"]
    client.patch(f"/api/v1/articles/{aid}", json={"summary": "one"}, headers=editor)
    stale = client.patch(
        f"/api/v1/articles/{aid}", json={"summary": "two"}, headers={**editor, "If-Match": "1"}
    )
    assert stale.status_code == 412
    assert stale.json["error"]["details"]["current_version"] == 2
    assert client.get(f"/api/v1/articles/{aid}", headers=editor).json["summary"] == "one"


def test_an_action_on_a_version_since_changed_is_refused(client, editor):
    # One editor archives the story she read at version 1; another has corrected it since.
    aid = create(client, editor, status="published")["id"]
    fixed = {"summary": "Corrected", "correction": "The date was wrong."}
    client.patch(f"/api/v1/articles/{aid}", json=fixed, headers=editor)
    stale = client.post(f"/api/v1/articles/{aid}/archive", headers={**editor, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json["error"]["details"]["current_version"] == 2
    assert client.get(f"/api/v1/articles/{aid}", headers=editor).json["status"] == "published"
    current = client.post(f"/api/v1/articles/{aid}/archive", headers={**editor, "If-Match": '"2"'})
    assert current.status_code == 200 and current.json["status"] == "archived"


def test_patch_that_changes_nothing_keeps_the_version(client, editor):
    created = create(client, editor)
    same = client.patch(
        f"/api/v1/articles/{created['id']}", json={"title": created["title"]}, headers=editor
    )
    assert same.json["version"] == 1


def test_retracted_article_cannot_be_edited(client, editor):
    aid = create(client, editor, status="published")["id"]
    client.post(f"/api/v1/articles/{aid}/retract", headers=editor)
    response = client.patch(f"/api/v1/articles/{aid}", json={"title": "New"}, headers=editor)
    assert response.status_code == 409


def test_idempotency_key_replays_the_first_result(client, editor):
    headers = {**editor, "Idempotency-Key": "retry-1"}
    first = client.post("/api/v1/articles", json=article(), headers=headers)
    again = client.post("/api/v1/articles", json=article(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json["id"] == first.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["ETag"] == first.headers["ETag"] == '"1"'  # the retry can edit
    listed = client.get("/api/v1/articles", headers=editor).json["items"]
    assert len(listed) == 1


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_idempotency_key_of_no_use_is_422_naming_the_header(client, editor, key):
    response = client.post(
        "/api/v1/articles", json=article(), headers={**editor, "Idempotency-Key": key}
    )
    assert response.status_code == 422, response.json
    assert set(response.json["error"]["details"]) == {"Idempotency-Key"}


def test_idempotency_key_with_another_body_is_a_conflict(client, editor):
    headers = {**editor, "Idempotency-Key": "retry-2"}
    client.post("/api/v1/articles", json=article(), headers=headers)
    other = client.post("/api/v1/articles", json=article(title="Other"), headers=headers)
    assert other.status_code == 409
    assert other.json["error"]["code"] == "idempotency_key_reused"


def test_list_filters_and_pages_with_a_cursor(client, editor):
    for n in range(5):
        create(client, editor, title=f"Story {n}", section="sport" if n % 2 else "news",
               tags=["football"] if n == 3 else ["misc"])  # fmt: skip
    sport = client.get("/api/v1/articles?section=sport", headers=editor).json["items"]
    assert sorted(a["title"] for a in sport) == ["Story 1", "Story 3"]
    tagged = client.get("/api/v1/articles?tag=football", headers=editor).json["items"]
    assert [a["title"] for a in tagged] == ["Story 3"]
    found = client.get("/api/v1/articles?q=story%204", headers=editor).json["items"]
    assert [a["title"] for a in found] == ["Story 4"]
    seen, cursor = [], None
    while True:
        url = "/api/v1/articles?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=editor).json
        seen += [a["title"] for a in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"Story {n}" for n in (4, 3, 2, 1, 0)]


def test_openapi_document_lists_the_articles_paths(client):
    doc = client.get("/api/v1/openapi.json").json
    assert "/api/v1/articles" in doc["paths"]
    assert "/api/v1/articles/{article_id}/events" in doc["paths"]
    assert client.get("/api/v1/docs").status_code == 200


def titles(client, editor, query: str) -> list[str]:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/articles?{query}", headers=editor)
    assert response.status_code == 200, response.json
    return [a["title"] for a in response.json["items"]]


def test_search_wildcards_are_no_patterns(client, editor):
    create(client, editor, title="Markets rally")
    create(client, editor, title="100% turnout_rate")
    for q in ("%25", "_", "%25%25", "the"):
        assert titles(client, editor, f"q={q}") == []


def test_search_reads_the_body_and_ranks_the_headline_first(client, editor):
    create(client, editor, title="Weather today", body="<p>Floods closed the rail line.</p>")
    create(client, editor, title="Floods close the rail line", body="<p>Trains stopped.</p>")
    create(client, editor, title="Budget", body="<p>Nothing about water.</p>")
    assert titles(client, editor, "q=flooding") == ["Floods close the rail line", "Weather today"]
    assert titles(client, editor, "q=%22rail%20line%22%20-weather") == [
        "Floods close the rail line"
    ]


def test_search_pages_with_a_cursor_in_rank_order(client, editor):
    for n in range(5):
        create(client, editor, title=f"Floods {n}" if n % 2 else f"Story {n}",
               body=f"<p>Floods{' floods' * n}.</p>")  # fmt: skip
    whole = titles(client, editor, "q=floods&limit=100")
    seen, cursor = [], None
    while True:
        url = "/api/v1/articles?q=floods&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=editor).json
        seen += [a["title"] for a in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == whole and len(whole) == 5
    assert set(whole[:2]) == {"Floods 1", "Floods 3"}  # the headline matches rank first
    listing = client.get("/api/v1/articles?limit=2", headers=editor).json["next_cursor"]
    response = client.get(f"/api/v1/articles?q=floods&cursor={listing}", headers=editor)
    assert response.status_code == 422


def test_search_is_served_by_its_index(database):
    matches, _ = _search("floods")
    statement = (
        select(ArticleSearch.article_id)
        .where(matches)
        .compile(database.engine, compile_kwargs={"literal_binds": True})
    )
    with database.transaction() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(session.scalars(text(f"EXPLAIN {statement}")))
    assert "ix_article_search_document" in plan


def test_search_follows_an_edit_and_keeps_an_archived_story(client, editor):
    story = create(client, editor, title="Harbour news", body="<p>Floods in the port.</p>",
                   status="published")  # fmt: skip
    edit = client.patch(
        f"/api/v1/articles/{story['id']}",
        json={"body": "<p>Drought in the port.</p>"},
        headers={**editor, "If-Match": '"1"'},
    )
    assert edit.status_code == 200, edit.json
    assert titles(client, editor, "q=floods") == []
    assert titles(client, editor, "q=drought") == ["Harbour news"]
    archived = client.post(f"/api/v1/articles/{story['id']}/archive", headers=editor)
    assert archived.status_code == 200, archived.json
    assert titles(client, editor, "q=drought&status=archived") == ["Harbour news"]
