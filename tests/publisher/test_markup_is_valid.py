"""Every page a reader can reach passes the Nu Html Checker (vnu), and the Atom feeds are
well-formed XML with what RFC 4287 requires of a feed and its entries.

The pages are rendered by the app from real content: a "Watch:" story with a video, tags and a
summary; a story with an image; a hostile body (a javascript: link, an image without alt, a
script, handlers); an archived story under its banner; "Also read" links in and after bodies;
a withdrawn story; the front page and its second page, a section and a tag page; the
subscription pages from the form to unsubscribed, and the pages of a link forged, expired or
followed after leaving; an error page. vnu runs once over all of them (one JVM start, some
seconds).

The checker is the ``vnu-jar`` npm package, which ``.ci/run`` installs under ``.ci/vnu`` at a
pinned version; it runs on the machine's Java. Without either that test is skipped, except in
CI, where a checker that went missing must fail rather than pass unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.archiver.related import RelatedReads
from shared.models import Subscription
from shared.subscriber_tokens import CONFIRM, UNSUBSCRIBE, make_token
from tests.publisher.helpers import article

VNU_JAR = Path(__file__).resolve().parents[2] / ".ci/vnu/node_modules/vnu-jar/build/dist/vnu.jar"
JAVA = shutil.which("java")
ATOM = "{http://www.w3.org/2005/Atom}"
HOSTILE_BODY = (
    '<p>Read <a href="javascript:alert(1)">this</a> and <a href="https://example.org/">that'
    '</a>.</p><p><img src="https://cdn.example/chart.png"> <img src="x.png" onerror="alert(1)">'
    '</p><script>alert(1)</script><p style="color:red" onclick="alert(1)">Styled</p>'
    "<table><tr><td>cell</td></tr></table><p>Last <b>bold</b> <q>words</q>.</p>"
)

NEEDS_VNU = pytest.mark.skipif(
    not (JAVA and VNU_JAR.exists()) and not os.environ.get("CI"),
    reason=f"the Nu Html Checker needs java and {VNU_JAR} (.ci/run installs vnu-jar there)",
)


@pytest.fixture
def stories(client, editor, database, settings) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    def publish(**fields: Any) -> dict[str, Any]:
        response = client.post(
            "/api/v1/articles", json=article(status="published", **fields), headers=editor
        )
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.json  # type: ignore[no-any-return]

    earlier = [  # enough for the front page to have a second page
        publish(title=f"Earlier story {n}", section="sport", tags=["round-up"])["id"]
        for n in range(20)
    ]
    # Pinned "Also read" stories: two go into the body, after its 2nd and 5th paragraphs (or
    # at its end), the rest in the list below it.
    made = {
        "video": publish(
            title="Watch: Kim drives Putin around Pyongyang",
            summary="The two leaders took turns at the wheel & waved to crowds.",
            media="https://cdn.example/drive.mp4",
            tags=["russia", "North Korea"],
            related_pinned=earlier[:4],
        ),
        "image": publish(title="Markets rally", media="https://cdn.example/markets.jpg"),
        "hostile": publish(
            title="A <b>hostile</b> body & more", body=HOSTILE_BODY, related_pinned=earlier[4:7]
        ),
        "archived": publish(title="Old news", summary="From long ago.", related_pinned=earlier[:1]),
        "withdrawn": publish(title="Withdrawn story"),
    }
    RelatedReads(database, settings).rebuild()  # the lists, as the archiver keeps them
    for name, action in (("archived", "archive"), ("withdrawn", "retract")):
        path = f"/api/v1/articles/{made[name]['id']}/{action}"
        assert client.post(path, json={}, headers=editor).status_code == 200
    return made


@pytest.fixture
def subscription_links(client, database, settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    response = client.post(
        "/api/v1/subscriptions", json={"email": "reader@example.com", "sections": ["world"]}
    )
    assert response.status_code == 202
    with database.session() as session:
        subscription_id = session.scalars(select(Subscription.id)).one()
    links = {
        purpose: make_token(settings.secret_key, purpose, subscription_id)
        for purpose in (CONFIRM, UNSUBSCRIBE)
    }
    long_ago = time.time() - (settings.confirm_expires_hours + 1) * 3600
    links["expired"] = make_token(
        settings.secret_key, CONFIRM, subscription_id, clock=lambda: long_ago
    )
    return links


def pages(client, stories, links) -> Iterator[tuple[str, int, str]]:  # type: ignore[no-untyped-def]
    """(name, status, HTML) of each page, in the order a reader might meet them."""
    gets = {
        "front": "/",
        "front-page-2": "/?page=2",
        "section": "/sections/world",
        "tag": "/tags/north-korea",
        **{f"story-{name}": f"/articles/{story['slug']}" for name, story in stories.items()},
        "subscribe": "/subscriptions",
        "check-your-inbox": "/subscriptions/check-your-inbox",
        "confirmed": f"/subscriptions/confirm?token={links[CONFIRM]}",
        "link-not-valid": "/subscriptions/confirm?token=nonsense",
        "link-expired": f"/subscriptions/confirm?token={links['expired']}",
        "unsubscribe": f"/subscriptions/unsubscribe?token={links[UNSUBSCRIBE]}",
        "not-found": "/articles/no-such-story",
    }
    for name, path in gets.items():
        response = client.get(path)
        yield name, response.status_code, response.get_data(as_text=True)
    refused = client.post("/subscriptions", data={"email": "not an address"})
    yield "subscribe-refused", refused.status_code, refused.get_data(as_text=True)
    left = client.post(
        f"/subscriptions/unsubscribe?token={links[UNSUBSCRIBE]}",
        data={"List-Unsubscribe": "One-Click"},
    )
    yield "unsubscribed", left.status_code, left.get_data(as_text=True)
    again = client.get(f"/subscriptions/confirm?token={links[CONFIRM]}")
    yield "confirmed-after-leaving", again.status_code, again.get_data(as_text=True)


def nu_html_checker(files: list[Path]) -> dict[str, list[str]]:
    """vnu's errors for each file that has any, run once over all of them."""
    assert JAVA and VNU_JAR.exists(), f"no java or no {VNU_JAR}: .ci/run installs vnu-jar"
    run = subprocess.run(
        [JAVA, "-jar", str(VNU_JAR), "--errors-only", "--format", "json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(run.stderr or run.stdout)  # vnu writes its report to stderr
    found: dict[str, list[str]] = {}
    for message in report["messages"]:
        name = Path(message.get("url", "?")).name
        where = f"line {message.get('lastLine', '?')}"
        extract = message.get("extract", "").strip()
        found.setdefault(name, []).append(f"{where}: {message['message']}  [{extract}]")
    assert found or run.returncode == 0, run.stderr
    return found


@NEEDS_VNU
def test_every_reader_page_passes_the_nu_html_checker(
    client, stories, subscription_links, tmp_path
):  # type: ignore[no-untyped-def]
    files, statuses = [], {}
    for name, status, html in pages(client, stories, subscription_links):
        statuses[name] = status
        assert html.lstrip().startswith("<!doctype html>"), (name, html[:200])
        path = tmp_path / f"{name}.html"
        path.write_text(html, encoding="utf-8")
        files.append(path)
    # Each page is the one meant, not an error page standing in for it.
    assert statuses == {
        **dict.fromkeys(statuses, 200),
        "story-withdrawn": 410,
        "link-not-valid": 400,
        "link-expired": 400,
        "not-found": 404,
        "subscribe-refused": 422,
    }
    errors = nu_html_checker(files)
    report = "\n".join(f"{name}:\n  " + "\n  ".join(lines) for name, lines in errors.items())
    print(report)
    assert not errors, f"the Nu Html Checker found errors:\n{report}"


def _text(element: ET.Element, tag: str) -> str:
    found = element.findall(ATOM + tag)
    assert len(found) == 1, f"{element.tag} has {len(found)} {tag}, not one"
    return (found[0].text or "").strip()


def _is_date(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None  # RFC 3339 carries an offset
    except ValueError:
        return False


@pytest.mark.parametrize("path", ["/feed.xml", "/sections/world/feed.xml"])
def test_the_feeds_are_well_formed_atom(client, stories, path):
    """RFC 4287's musts: one id, title and updated on the feed and on each entry, an author
    for each entry, an alternate link where there is no content; and a self link."""
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "application/atom+xml"
    feed = ET.fromstring(response.data)  # raises if it is not well-formed
    assert feed.tag == ATOM + "feed"
    assert _text(feed, "id").startswith("http://pressroom.test/") and _text(feed, "title")
    assert _is_date(_text(feed, "updated"))
    links = {link.get("rel", "alternate"): link.get("href") for link in feed.findall(ATOM + "link")}
    assert links["self"] == f"http://pressroom.test{path}"
    entries = feed.findall(ATOM + "entry")
    assert entries, "the feed lists no story"
    for entry in entries:
        assert _text(entry, "id").startswith("urn:uuid:") and _text(entry, "title")
        assert _is_date(_text(entry, "updated"))
        assert entry.findall(ATOM + "author") or feed.findall(ATOM + "author")
        alternates = [
            link
            for link in entry.findall(ATOM + "link")
            if link.get("rel", "alternate") == "alternate"
        ]
        assert alternates and alternates[0].get("href", "").startswith("http://pressroom.test/")
        for content in entry.findall(ATOM + "content"):
            assert content.get("type") in ("text", "html", "xhtml")
    titles = {_text(entry, "title") for entry in entries}
    assert "Old news" not in titles and "Withdrawn story" not in titles
