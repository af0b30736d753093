"""What readers see: article pages with the archived banner, the front page, Atom feeds."""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

import feedparser
import pytest
from sqlalchemy import update

from shared.models import Article
from tests.publisher.helpers import article

BANNER = "This content has been archived. It may no longer be relevant. For the latest news, click:"


@pytest.fixture
def publish(client, editor):  # type: ignore[no-untyped-def]
    def make(**overrides):  # type: ignore[no-untyped-def]
        response = client.post(
            "/api/v1/articles", json=article(status="published", **overrides), headers=editor
        )
        assert response.status_code == 201, response.json
        return response.json

    return make


def page(client, slug: str):  # type: ignore[no-untyped-def]
    return client.get(f"/articles/{slug}")


def test_published_page_has_headline_byline_body_and_metadata(client, publish):
    story = publish(summary="Kim and Putin went for a drive.", media="https://cdn.test/drive.mp4")
    response = page(client, story["slug"])
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "<title>Putin takes Kim on a drive | Pressroom</title>" in html
    assert '<meta name="description" content="Kim and Putin went for a drive.">' in html
    assert f'<link rel="canonical" href="http://pressroom.test/articles/{story["slug"]}">' in html
    assert "<h1>Putin takes Kim on a drive</h1>" in html
    assert "By World desk" in html
    assert '<video controls preload="metadata" src="https://cdn.test/drive.mp4">' in html
    assert "<p>First paragraph.</p><p>Second paragraph.</p>" in html
    assert BANNER not in html
    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_archived_page_shows_the_banner_linking_home(client, editor, publish):
    story = publish()
    client.post(f"/api/v1/articles/{story['id']}/archive", headers=editor)
    html = page(client, story["slug"]).get_data(as_text=True)
    assert BANNER in html
    assert '<a href="http://pressroom.test/">Pressroom</a>' in html  # the site's name
    assert html.index(BANNER) < html.index("<h1>")


def test_etag_changes_with_the_archive_state_and_revalidates(client, editor, publish):
    story = publish()
    first = page(client, story["slug"])
    etag = first.headers["ETag"]
    again = client.get(f"/articles/{story['slug']}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    client.post(f"/api/v1/articles/{story['id']}/archive", headers=editor)
    archived = client.get(f"/articles/{story['slug']}", headers={"If-None-Match": etag})
    assert archived.status_code == 200
    assert archived.headers["ETag"] != etag


def test_retracted_story_is_gone(client, editor, publish):
    story = publish()
    client.post(f"/api/v1/articles/{story['id']}/retract", json={"reason": "legal"}, headers=editor)
    response = page(client, story["slug"])
    assert response.status_code == 410
    assert "withdrawn" in response.get_data(as_text=True)
    assert "First paragraph" not in response.get_data(as_text=True)


def test_drafts_and_scheduled_stories_are_not_public(client, editor):
    draft = client.post("/api/v1/articles", json=article(title="Draft"), headers=editor).json
    later = client.post(
        "/api/v1/articles",
        json=article(title="Later", publish_at="2999-01-01T00:00:00Z"),
        headers=editor,
    ).json
    for slug in (draft["slug"], later["slug"], "never-existed"):
        response = page(client, slug)
        assert response.status_code == 404
        assert response.mimetype == "text/html"


def test_hostile_markup_is_inert_on_the_page(client, publish):
    story = publish(
        title="<script>alert('title')</script>",
        body='<p onmouseover="x()">Hi</p><script>alert(1)</script>'
        '<a href="javascript:evil()">go</a><img src=x onerror="alert(2)">',
    )
    html = page(client, story["slug"]).get_data(as_text=True)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in html
    for bad in ("onmouseover", "onerror", "javascript:"):
        assert bad not in html


def test_front_page_lists_the_latest_published(client, editor, publish):
    publish(title="Front story")
    client.post("/api/v1/articles", json=article(title="Unpublished draft"), headers=editor)
    html = client.get("/").get_data(as_text=True)
    assert "Front story" in html
    assert "Unpublished draft" not in html


@pytest.mark.parametrize("path", ["/", "/feed.xml", "/sections/world/feed.xml"])
def test_listings_are_revalidated_when_a_listed_story_changes(client, editor, publish, path):
    older = publish(title="Older story")
    publish(title="Newer story")  # the newest: what the old ETag was made of
    etag = client.get(path).headers["ETag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304

    client.patch(f"/api/v1/articles/{older['id']}", json={"title": "Corrected"}, headers=editor)
    corrected = client.get(path, headers={"If-None-Match": etag})
    assert corrected.status_code == 200 and "Corrected" in corrected.get_data(as_text=True)

    etag = corrected.headers["ETag"]
    client.post(f"/api/v1/articles/{older['id']}/retract", headers=editor)
    retracted = client.get(path, headers={"If-None-Match": etag})
    assert retracted.status_code == 200 and "Corrected" not in retracted.get_data(as_text=True)
    assert "Newer story" in retracted.get_data(as_text=True)


def test_meta_description_from_the_body_is_escaped_once(client, publish):
    story = publish(summary="", body="<p>Fish &amp; chips <b>tonight</b></p>")
    html = page(client, story["slug"]).get_data(as_text=True)
    assert '<meta name="description" content="Fish &amp; chips tonight">' in html


def test_feed_lists_only_published_stories_and_parses_cleanly(client, editor, publish):
    fresh = publish(title="Fresh story", section="news", tags=["politics"])
    archived = publish(title="Archived story", section="news")
    retracted = publish(title="Retracted story", section="news")
    publish(title="Sport story", section="sport")
    client.post("/api/v1/articles", json=article(title="Draft story"), headers=editor)
    client.post(f"/api/v1/articles/{archived['id']}/archive", headers=editor)
    client.post(f"/api/v1/articles/{retracted['id']}/retract", headers=editor)

    response = client.get("/feed.xml")
    assert response.mimetype == "application/atom+xml"
    feed = feedparser.parse(response.data)
    assert not feed.bozo, feed.bozo_exception
    titles = [e.title for e in feed.entries]
    assert sorted(titles) == ["Fresh story", "Sport story"]
    entry = next(e for e in feed.entries if e.title == "Fresh story")
    assert entry.link == f"http://pressroom.test/articles/{fresh['slug']}"
    assert entry.id == f"urn:uuid:{fresh['id']}"
    assert [t.term for t in entry.tags] == ["politics"]

    news = feedparser.parse(client.get("/sections/news/feed.xml").data)
    assert not news.bozo
    assert [e.title for e in news.entries] == ["Fresh story"]
    assert client.get("/sections/Bad Section!/feed.xml").status_code == 404


ATOM = "{http://www.w3.org/2005/Atom}"


def test_a_video_is_its_entrys_enclosure_in_the_feed(client, publish):
    publish(title="Clip", media="https://cdn.test/drive.mp4?v=2")
    publish(title="Stream", media="https://cdn.test/live/index.m3u8")
    publish(title="Photo", media="https://cdn.test/drive.jpg")
    publish(title="Words")
    root = ElementTree.fromstring(client.get("/feed.xml").data)
    enclosures = {
        entry.findtext(f"{ATOM}title"): [
            (link.get("href"), link.get("type"))
            for link in entry.iter(f"{ATOM}link")
            if link.get("rel") == "enclosure"
        ]
        for entry in root.iter(f"{ATOM}entry")
    }
    assert enclosures == {
        "Clip": [("https://cdn.test/drive.mp4?v=2", "video/mp4")],
        "Stream": [("https://cdn.test/live/index.m3u8", "application/vnd.apple.mpegurl")],
        "Photo": [],  # a picture is no large file to fetch
        "Words": [],
    }


def test_feed_parses_with_text_stored_before_control_characters_were_refused(
    client, publish, database
):
    story = publish(title="Clean title", summary="Clean summary")
    with database.transaction() as session:  # as an older release could have stored it
        session.execute(
            update(Article)
            .where(Article.id == story["id"])
            .values(title="Pasted\x0btitle", summary="Form\x0cfeed", tags=["a\x1bb"])
        )
    feed = feedparser.parse(client.get("/feed.xml").data)
    assert not feed.bozo, feed.bozo_exception
    assert [(e.title, e.summary) for e in feed.entries] == [("Pastedtitle", "Formfeed")]


def test_a_slug_no_database_can_look_up_is_404(client):
    assert client.get("/articles/a%00b").status_code == 404
    assert client.get("/articles/" + "x" * 5000).status_code == 404


def test_feed_holds_the_newest_fifty(client, publish):
    for n in range(55):
        publish(title=f"Story {n}", published_at=f"2026-01-01T00:{n:02d}:00Z")
    feed = feedparser.parse(client.get("/feed.xml").data)
    assert len(feed.entries) == 50
    assert feed.entries[0].title == "Story 54"
    assert feed.entries[-1].title == "Story 5"


def test_a_watch_story_says_watch_once(client, publish):
    story = publish(title="Watch: Kim drives Putin", media="https://cdn.test/drive.mp4")
    html = page(client, story["slug"]).get_data(as_text=True)
    assert "<figcaption>Watch: Kim drives Putin</figcaption>" in html
    other = publish(title="Kim drives Putin", media="https://cdn.test/drive.mp4")
    assert "<figcaption>Watch: Kim drives Putin</figcaption>" in page(client, other["slug"]).text


def test_times_on_pages_carry_no_microseconds(client, publish):
    story = publish(published_at="2026-01-02T03:04:05.678901+01:00")
    for html in (page(client, story["slug"]).text, client.get("/").text):
        assert '<time datetime="2026-01-02T02:04:05Z">' in html
        assert not re.search(r'datetime="[^"]*\.\d', html)


def test_the_sanitiser_leaves_no_link_without_href_nor_image_without_alt(client, publish):
    story = publish(
        body='<p><a href="javascript:evil()">go <b>on</b></a> <img src="https://cdn.test/a.png">'
        ' <img src="https://cdn.test/b.png" alt="A chart"></p>'
    )
    assert story["body"] == (
        '<p>go <b>on</b> <img alt="" src="https://cdn.test/a.png">'
        ' <img src="https://cdn.test/b.png" alt="A chart"></p>'
    )


def test_the_feed_names_itself_from_the_public_address_not_the_request(client, publish):
    publish(section="news")
    for path, own in [
        ("/feed.xml", "/feed.xml"),
        ("/sections/news/feed.xml", "/sections/news/feed.xml"),
    ]:
        response = client.get(f"{path}?utm=x", headers={"Host": "evil.example"})
        feed = feedparser.parse(response.data)
        assert feed.feed.id == f"http://pressroom.test{own}"
        assert {link.href for link in feed.feed.links if link.rel == "self"} == {
            f"http://pressroom.test{own}"
        }


@pytest.mark.parametrize("path", ["/", "/articles/nothing-here", "/feed.xml", "/healthz"])
def test_every_response_carries_security_headers(client, path):
    response = client.get(path)
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"


def test_pages_satisfy_their_policy(client, publish):
    story = publish(media="https://cdn.test/drive.mp4")
    html = page(client, story["slug"]).text
    assert "<style" not in html and " style=" not in html
    scripts = re.findall(r"<script([^>]*)>", html)
    assert scripts == [' type="application/ld+json"']  # data, never run
    assert client.get("/static/site.css").status_code == 200


def test_a_story_carries_news_metadata(client, publish):
    story = publish(
        title="Kim </script> drives", published_at="2026-01-02T03:04:05Z", tags=["russia"]
    )
    html = page(client, story["slug"]).text
    assert '<meta property="article:published_time" content="2026-01-02T03:04:05Z">' in html
    assert '<meta property="og:site_name" content="Pressroom">' in html
    assert '<meta property="article:tag" content="russia">' in html
    block = re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S)
    data = json.loads(block[1])
    assert data["@type"] == "NewsArticle"
    assert data["headline"] == "Kim </script> drives"
    assert data["datePublished"] == "2026-01-02T03:04:05Z"


def test_a_section_has_a_page_linked_from_its_stories(client, publish):
    for n in range(25):
        publish(title=f"World {n}", section="world", published_at=f"2026-01-01T00:{n:02d}:00Z")
    publish(title="Sport story", section="sport")
    story = client.get("/articles/world-3").text
    assert '<a href="/sections/world">world</a>' in story
    first = client.get("/sections/world")
    assert first.status_code == 200
    html = first.text
    assert "World 24" in html and "World 5" in html and "World 4" not in html
    assert html.index("World 24") < html.index("World 23")
    assert "Sport story" not in html
    assert (
        'type="application/atom+xml" title="Pressroom: World" href="/sections/world/feed.xml"'
        in html
    )
    assert '<a rel="next" href="/sections/world?page=2">' in html
    second = client.get("/sections/world?page=2").text
    assert "World 4" in second and "World 0" in second and "World 5" not in second
    assert '<a rel="prev" href="/sections/world">' in second
    assert client.get("/sections/world?page=3").status_code == 404
    assert client.get("/sections/world?page=x").status_code == 404
    assert client.get("/sections/Bad!").status_code == 404


def test_the_front_page_is_paginated(client, publish):
    for n in range(21):
        publish(title=f"Story {n}", published_at=f"2026-01-01T00:{n:02d}:00Z")
    assert "Story 0" not in client.get("/").text
    assert '<a rel="next" href="/?page=2">' in client.get("/").text
    assert "Story 0" in client.get("/?page=2").text


def test_tags_are_shown_and_have_pages(client, publish):
    story = publish(title="Tagged story", tags=["North Korea"])
    publish(title="Other story", tags=["sport"])
    html = page(client, story["slug"]).text
    assert '<a rel="tag" href="/tags/north-korea">north-korea</a>' in html
    tagged = client.get("/tags/north-korea")
    assert tagged.status_code == 200
    assert "Tagged story" in tagged.text and "Other story" not in tagged.text
    assert client.get("/tags/North Korea").status_code == 404
