"""A real browser (headless Chromium) subscribes from the front page, follows the
confirmation link and leaves with the unsubscribe button: no JavaScript needed anywhere."""

from __future__ import annotations

from sqlalchemy import select

from shared.models import Subscription
from shared.subscriber_tokens import CONFIRM, UNSUBSCRIBE, make_token
from tests.publisher.browser import ARTIFACTS, BROWSER_TESTS, launch
from tests.publisher.helpers import article

pytestmark = BROWSER_TESTS


def the_subscription(database) -> Subscription:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return session.scalars(select(Subscription)).one()


def test_subscribe_confirm_and_unsubscribe_in_a_browser(
    client, editor, database, settings, live_server
):
    from playwright.sync_api import sync_playwright

    for section in ("world", "sport"):
        client.post(
            "/api/v1/articles",
            json=article(title=f"A {section} story", section=section, status="published"),
            headers=editor,
        )
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(java_script_enabled=False)  # the forms work without
            tab = context.new_page()
            tab.set_viewport_size({"width": 1000, "height": 900})
            tab.goto(f"{live_server}/")
            form = tab.get_by_role("form", name="Get new stories by email")
            form.get_by_label("world").check()
            form.get_by_label("Email address").fill("Reader@Example.com")
            tab.screenshot(path=str(ARTIFACTS / "subscribe-form.png"), full_page=True)
            form.get_by_role("button", name="Subscribe").click()
            tab.wait_for_load_state()
            assert tab.get_by_role("heading", level=1).inner_text() == "Check your inbox"
            assert tab.url.endswith("/subscriptions/check-your-inbox")

            subscription = the_subscription(database)
            assert subscription.status == "pending"
            assert subscription.requested_sections == ["world"]

            confirm = make_token(settings.secret_key, CONFIRM, subscription.id)
            tab.goto(f"{live_server}/subscriptions/confirm?token={confirm}")
            heading = tab.get_by_role("heading", level=1).inner_text()
            assert heading == "Your subscription is confirmed"
            assert "each new story in world" in tab.content()
            tab.screenshot(path=str(ARTIFACTS / "subscription-confirmed.png"), full_page=True)
            assert the_subscription(database).status == "confirmed"

            leave = make_token(settings.secret_key, UNSUBSCRIBE, subscription.id)
            tab.goto(f"{live_server}/subscriptions/unsubscribe?token={leave}")
            assert the_subscription(database).status == "confirmed"  # a visit changes nothing
            tab.get_by_role("button", name="Unsubscribe").click()
            tab.wait_for_load_state()
            assert tab.get_by_role("heading", level=1).inner_text() == "You are unsubscribed"
            tab.screenshot(path=str(ARTIFACTS / "unsubscribed.png"), full_page=True)
            assert the_subscription(database).status == "unsubscribed"
        finally:
            browser.close()
