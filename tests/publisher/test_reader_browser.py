"""A real browser (headless Chromium) reads an archived story and a fresh one."""

from __future__ import annotations

from tests.publisher.browser import ARTIFACTS, BROWSER_TESTS, launch
from tests.publisher.helpers import article

BANNER = "This content has been archived. It may no longer be relevant."

pytestmark = BROWSER_TESTS


def test_banner_is_visible_only_on_the_archived_story(client, editor, live_server):
    from playwright.sync_api import sync_playwright

    old = client.post(
        "/api/v1/articles",
        json=article(title="An old story", status="published", published_at="2020-01-01T09:00:00Z"),
        headers=editor,
    ).json
    fresh = client.post(
        "/api/v1/articles", json=article(title="A fresh story", status="published"), headers=editor
    ).json
    client.post(f"/api/v1/articles/{old['id']}/archive", json={"reason": "aged"}, headers=editor)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = launch(p)
        try:
            tab = browser.new_page(viewport={"width": 1000, "height": 800})
            tab.goto(f"{live_server}/articles/{old['slug']}")
            banner = tab.get_by_role("note")
            assert banner.is_visible()
            assert BANNER in banner.inner_text()
            home = banner.get_by_role("link")
            assert home.get_attribute("href") == "http://pressroom.test/"
            assert tab.title() == "An old story | Pressroom"
            tab.screenshot(path=str(ARTIFACTS / "archived-story.png"), full_page=True)

            tab.goto(f"{live_server}/articles/{fresh['slug']}")
            assert tab.get_by_role("heading", level=1).inner_text() == "A fresh story"
            assert tab.get_by_role("note").count() == 0
            assert BANNER not in tab.content()
            tab.screenshot(path=str(ARTIFACTS / "fresh-story.png"), full_page=True)
        finally:
            browser.close()
