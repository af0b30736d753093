"""The "Also read" lists, kept by events on the real database: what editors and readers see."""

from __future__ import annotations

import threading

import pytest

from services.archiver.handlers import JOB
from services.archiver.related import RelatedReads
from shared import work
from shared.related_lists import list_of

TOPICS = {
    "rates": "The central bank raised interest rates again as inflation stayed high. "
    "Mortgage rates, bank lending and inflation figures worried markets and savers.",
    "football": "The striker scored twice as the football club won the league match. "
    "The manager praised the goalkeeper, the striker and the league table.",
    "volcano": "The volcano erupted, sending ash over the island. Flights were cancelled "
    "and villagers fled the ash cloud and the lava from the volcano.",
}


def body(topic: str, n: int) -> str:
    return f"<p>{TOPICS[topic]}</p><p>Report number {n} on this.</p><p>{TOPICS[topic]}</p>"


def publish(client, editor, topic: str, n: int, **fields) -> str:  # type: ignore[no-untyped-def]
    response = client.post(
        "/api/v1/articles",
        json={
            "title": f"{topic} story {n}",
            "body": body(topic, n),
            "status": "published",
            **fields,
        },
        headers=editor,
    )
    assert response.status_code == 201, response.json
    return str(response.json["id"])


@pytest.fixture
def engine(database, settings) -> RelatedReads:  # type: ignore[no-untyped-def]
    return RelatedReads(database, settings)


def events_handled(database, engine: RelatedReads) -> None:  # type: ignore[no-untyped-def]
    """What the archiver does after each event's commit: run the due recomputations."""
    work.run_due(database, JOB, lambda job: engine.recompute(job.key))


def ask(database, *article_ids: str) -> None:  # type: ignore[no-untyped-def]
    with database.transaction() as session:
        for article_id in article_ids:
            work.request(session, JOB, article_id)


def titles(database, article_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return [item["title"] for item in list_of(session, article_id)]


@pytest.fixture
def corpus(client, editor, database, engine) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    ids = {topic: [publish(client, editor, topic, n) for n in range(4)] for topic in TOPICS}
    engine.rebuild()
    return ids


def test_a_story_lists_its_own_subject_first_and_never_itself(database, corpus):
    listed = titles(database, corpus["rates"][0])
    assert listed and "rates story 0" not in listed
    assert all(t.startswith("rates") for t in listed[:3])


def test_a_new_story_gets_its_list_and_enters_the_lists_it_belongs_in(
    client, editor, database, engine, corpus
):
    new = publish(client, editor, "volcano", 9)
    ask(database, new)
    events_handled(database, engine)
    assert titles(database, new)[0].startswith("volcano")
    assert any("volcano story 9" in titles(database, other) for other in corpus["volcano"])


def test_an_archived_story_leaves_every_list_and_they_are_backfilled(
    client, editor, database, engine, corpus
):
    gone = corpus["football"][1]
    assert any("football story 1" in titles(database, i) for i in corpus["football"])
    assert client.post(f"/api/v1/articles/{gone}/archive", headers=editor).status_code == 200
    ask(database, gone)
    events_handled(database, engine)
    for other in corpus["football"]:
        if other != gone:
            listed = titles(database, other)
            assert "football story 1" not in listed
            assert len(listed) == min(engine.k, 10)  # backfilled: still full
    assert client.post(f"/api/v1/articles/{gone}/unarchive", headers=editor).status_code == 200
    ask(database, gone)
    events_handled(database, engine)
    assert any("football story 1" in titles(database, i) for i in corpus["football"])


def test_editors_pin_and_exclude(client, editor, database, engine, corpus):
    story, pin, unwanted = corpus["rates"][0], corpus["volcano"][0], corpus["rates"][1]
    patched = client.patch(
        f"/api/v1/articles/{story}",
        json={"related_pinned": [pin], "related_excluded": [unwanted]},
        headers=editor,
    )
    assert patched.status_code == 200
    ask(database, story)
    events_handled(database, engine)
    got = client.get(f"/api/v1/articles/{story}", headers=editor).json["related"]
    assert got[0]["id"] == pin and got[0]["score"] is None
    assert unwanted not in [item["id"] for item in got]
    assert all(item["score"] is not None for item in got[1:])


def test_a_pin_that_is_not_an_article_is_a_422_naming_the_field(client, editor, corpus):
    story = corpus["rates"][0]
    bogus = "01a2351d-379c-72a3-95c6-a1f0119418f1"
    response = client.patch(
        f"/api/v1/articles/{story}", json={"related_pinned": [bogus]}, headers=editor
    )
    assert response.status_code == 422
    assert "related_pinned" in response.json["error"]["details"]


def test_the_reader_page_links_also_read_between_paragraphs(client, database, corpus):
    story = corpus["volcano"][0]
    with database.session() as session:
        first = list_of(session, story)[0]
    page = client.get("/articles/volcano-story-0").get_data(as_text=True)
    assert f'<strong>Also read:</strong> <a href="/articles/{first["slug"]}">' in page


@pytest.mark.parametrize(
    "text",
    [
        "",
        "word",
        "经济增长放缓央行宣布降息" * 20,  # Chinese
        "مرحبا بالعالم " * 30,  # Arabic
        "words and more words " * 23_000,  # about 480 KB
    ],
)
def test_odd_bodies_still_get_a_list_and_nothing_breaks(
    client, editor, database, engine, corpus, text
):
    response = client.post(
        "/api/v1/articles",
        json={"title": "Odd one", "body": f"<p>{text or 'a'}</p>", "status": "published"},
        headers=editor,
    )
    assert response.status_code == 201
    ask(database, response.json["id"])
    events_handled(database, engine)  # no exception: a list, possibly empty


def test_two_workers_recomputing_one_story_at_once_leave_one_consistent_list(
    database, settings, corpus
):
    story = corpus["rates"][2]
    engines = [RelatedReads(database, settings) for _ in range(2)]
    threads = [threading.Thread(target=e.recompute, args=(story,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    listed = titles(database, story)
    assert len(listed) == len(set(listed)) and listed


def test_facets_of_more_stories_than_a_statement_has_parameters(client, editor, database):
    # A cache's load asks for every listed story's facets: 100,000 of them in a large
    # newsroom, past the 65,535 parameters PostgreSQL's protocol allows in one statement.
    from services.archiver.related import _facets

    story = publish(client, editor, "rates", 1)
    wanted = [story, *(f"00000000-0000-0000-0000-{n:012d}" for n in range(70_000))]
    with database.session() as session:
        found = _facets(session, wanted)
    assert list(found) == [story]


def test_a_pinned_story_that_is_archived_drops_out_of_the_list(
    client, editor, database, engine, corpus
):
    story, pin = corpus["rates"][0], corpus["volcano"][0]
    client.patch(f"/api/v1/articles/{story}", json={"related_pinned": [pin]}, headers=editor)
    ask(database, story)
    events_handled(database, engine)
    assert client.get(f"/api/v1/articles/{story}", headers=editor).json["related"][0]["id"] == pin
    archived = client.post(f"/api/v1/articles/{pin}/archive", json={}, headers=editor)
    assert archived.status_code == 200
    ask(database, pin)  # as the archiver does on article.archived
    events_handled(database, engine)
    listed = [
        r["id"] for r in client.get(f"/api/v1/articles/{story}", headers=editor).json["related"]
    ]
    assert pin not in listed and len(listed) == 5
