"""The reader's subscription pages: the form on the site, the confirmation link, the
unsubscribe page and its RFC 8058 one-click POST."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from shared.models import Delivery, Subscription
from shared.subscriber_tokens import CONFIRM, UNSUBSCRIBE, make_token
from tests.publisher.helpers import article, row_counts


@pytest.fixture
def subscriber(client, database):  # type: ignore[no-untyped-def]
    """A pending subscription asked for through the API."""
    response = client.post(
        "/api/v1/subscriptions", json={"email": "reader@example.com", "sections": ["world"]}
    )
    assert response.status_code == 202
    with database.session() as session:
        return session.scalars(select(Subscription)).one()


def subscription(database) -> Subscription:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return session.scalars(select(Subscription)).one()


def statuses(database) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return [(d.kind, d.status) for d in session.scalars(select(Delivery).order_by(Delivery.id))]


def token(settings, purpose: str, subscription_id: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
    return make_token(settings.secret_key, purpose, subscription_id, **kwargs)


def text_of(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True)


# -- the form


def form_in(html: str) -> str:
    found = re.search(r'<form class="subscribe".*?</form>', html, re.S)
    assert found, html
    return found.group()


def test_the_front_page_offers_a_form_with_the_sections_listed(client, editor):
    for section in ("world", "sport"):
        client.post(
            "/api/v1/articles", json=article(section=section, status="published"), headers=editor
        )
    form = form_in(text_of(client.get("/")))
    assert 'action="/subscriptions"' in form and 'method="post"' in form
    assert 'name="email"' in form
    assert re.findall(r'name="sections" value="([^"]+)"', form) == ["sport", "world"]
    assert "checked" not in form
    assert "<script" not in text_of(client.get("/"))


def test_a_story_offers_its_own_section_ticked(client, editor):
    story = client.post(
        "/api/v1/articles", json=article(section="world", status="published"), headers=editor
    ).json
    form = form_in(text_of(client.get(f"/articles/{story['slug']}")))
    assert '<input type="checkbox" name="sections" value="world" checked>' in form


def test_the_form_subscribes_and_shows_the_same_page_for_any_address(client, database):
    pages = []
    for address in ("reader@example.com", "reader@example.com", "other@example.org"):
        response = client.post(
            "/subscriptions", data={"email": address, "sections": ["world", "sport"]}
        )
        assert response.status_code == 303
        assert response.headers["Location"] == "/subscriptions/check-your-inbox"
        page = client.get(response.headers["Location"])
        assert page.status_code == 200
        pages.append(text_of(page))
    assert "Check your inbox" in pages[0]
    assert pages[0] == pages[1] == pages[2]
    assert "reader@example.com" not in pages[0]
    with database.session() as session:
        subs = {s.email: s for s in session.scalars(select(Subscription))}
    assert set(subs) == {"reader@example.com", "other@example.org"}
    assert subs["reader@example.com"].requested_sections == ["world", "sport"]
    assert statuses(database) == [("confirm", "pending")] * 3


def test_an_invalid_address_shows_the_form_again_with_the_message(client, database):
    before = row_counts(database)
    response = client.post("/subscriptions", data={"email": "not-an-address", "sections": "world"})
    assert response.status_code == 422
    html = text_of(response)
    assert 'role="alert"' in html and "email address must have an @-sign" in html
    assert 'value="not-an-address"' in html  # what the reader typed, to correct it
    assert '<input type="checkbox" name="sections" value="world" checked>' in html
    assert row_counts(database) == before


def test_a_tampered_section_is_422_too(client, database):
    response = client.post(
        "/subscriptions", data={"email": "reader@example.com", "sections": "<b>x</b>"}
    )
    assert response.status_code == 422
    assert "<b>x</b>" not in text_of(response)  # escaped, not markup
    assert row_counts(database)["subscriptions"] == 0


# -- confirming


def test_the_confirm_link_confirms_and_says_so(client, database, settings, subscriber):
    response = client.get(f"/subscriptions/confirm?token={token(settings, CONFIRM, subscriber.id)}")
    assert response.status_code == 200
    html = text_of(response)
    assert "Your subscription is confirmed" in html
    assert "each new story in world" in html
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    confirmed = subscription(database)
    assert (confirmed.status, confirmed.sections) == ("confirmed", ["world"])
    again = client.get(f"/subscriptions/confirm?token={token(settings, CONFIRM, subscriber.id)}")
    assert again.status_code == 200
    assert subscription(database).confirmed_at == confirmed.confirmed_at


def test_an_altered_or_forged_confirm_link_is_400_and_changes_nothing(
    client, database, settings, subscriber
):
    good = token(settings, CONFIRM, subscriber.id)
    for bad in (
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        make_token("another-secret", CONFIRM, subscriber.id),
        token(settings, UNSUBSCRIBE, subscriber.id),  # made for the other purpose
        "",
    ):
        response = client.get(f"/subscriptions/confirm?token={bad}")
        assert response.status_code == 400
        assert "This link is not valid" in text_of(response)
    assert subscription(database).status == "pending"


def test_an_expired_confirm_link_says_so_and_offers_the_form(
    client, database, settings, subscriber
):
    hours = settings.confirm_expires_hours
    old = token(settings, CONFIRM, subscriber.id, clock=lambda: 1e9)  # 2001
    response = client.get(f"/subscriptions/confirm?token={old}")
    assert response.status_code == 400
    html = text_of(response)
    assert "This link has expired" in html
    assert f"work for {hours} hours" in html
    assert 'action="/subscriptions"' in html
    assert subscription(database).status == "pending"


def test_a_confirm_link_does_not_bring_back_a_reader_who_left(
    client, database, settings, subscriber
):
    client.post(f"/subscriptions/unsubscribe?token={token(settings, UNSUBSCRIBE, subscriber.id)}")
    response = client.get(f"/subscriptions/confirm?token={token(settings, CONFIRM, subscriber.id)}")
    assert response.status_code == 200
    assert "This subscription was cancelled" in text_of(response)
    assert subscription(database).status == "unsubscribed"


# -- leaving


def test_the_unsubscribe_page_shows_a_button_and_changes_nothing(
    client, database, settings, subscriber
):
    link = f"/subscriptions/unsubscribe?token={token(settings, UNSUBSCRIBE, subscriber.id)}"
    response = client.get(link)
    assert response.status_code == 200
    html = text_of(response)
    form = re.search(r'<form class="unsubscribe" method="post" action="([^"]+)">', html)
    assert form and form.group(1).replace("&amp;", "&") == link
    assert '<button type="submit">Unsubscribe</button>' in html
    assert subscription(database).status == "pending"
    assert statuses(database) == [("confirm", "pending")]


def test_one_click_unsubscribes_at_once_and_cancels_what_is_waiting(
    client, database, settings, subscriber
):
    link = f"/subscriptions/unsubscribe?token={token(settings, UNSUBSCRIBE, subscriber.id)}"
    response = client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert "You are unsubscribed" in text_of(response)
    left = subscription(database)
    assert left.status == "unsubscribed" and left.unsubscribed_at is not None
    assert statuses(database) == [("confirm", "cancelled")]
    assert client.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200


def test_unsubscribe_links_never_expire(client, database, settings, subscriber):
    old = token(settings, UNSUBSCRIBE, subscriber.id, clock=lambda: 1e9)
    assert client.post(f"/subscriptions/unsubscribe?token={old}").status_code == 200
    assert subscription(database).status == "unsubscribed"


def test_a_bad_unsubscribe_link_is_400_and_changes_nothing(client, database, settings, subscriber):
    forged = make_token("another-secret", UNSUBSCRIBE, subscriber.id)
    for method in (client.get, client.post):
        response = method(f"/subscriptions/unsubscribe?token={forged}")
        assert response.status_code == 400
        assert "This link is not valid" in text_of(response)
    assert subscription(database).status == "pending"
