"""Subscribers' signed links: each opens only its own door, and confirm links age."""

from __future__ import annotations

import time

import pytest

from shared.subscriber_tokens import (
    CONFIRM,
    UNSUBSCRIBE,
    BadToken,
    ExpiredToken,
    make_token,
    read_token,
)

SECRET = "a-secret-key-for-tests-only"
SUBSCRIPTION = "01JD3V7Q9ZK4M8R2T6W0XYB5HC"
DAY = 86_400


def test_a_token_names_its_subscription() -> None:
    token = make_token(SECRET, CONFIRM, SUBSCRIPTION)
    assert read_token(SECRET, CONFIRM, token, max_age=DAY) == SUBSCRIPTION


def test_tokens_fit_in_a_url_unescaped() -> None:
    token = make_token(SECRET, UNSUBSCRIBE, SUBSCRIPTION)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_a_confirm_token_cannot_unsubscribe_and_back() -> None:
    confirm = make_token(SECRET, CONFIRM, SUBSCRIPTION)
    leave = make_token(SECRET, UNSUBSCRIBE, SUBSCRIPTION)
    with pytest.raises(BadToken):
        read_token(SECRET, UNSUBSCRIBE, confirm, max_age=None)
    with pytest.raises(BadToken):
        read_token(SECRET, CONFIRM, leave, max_age=DAY)


def test_altered_truncated_or_forged_tokens_are_bad() -> None:
    token = make_token(SECRET, CONFIRM, SUBSCRIPTION)
    # A character inside the payload: every one of its bits counts (a last base64 one may not).
    flipped = token[:2] + ("A" if token[2] != "A" else "B") + token[3:]
    for bad in (flipped, token[:-4], "", "not-a-token", make_token("other-key", CONFIRM, "x")):
        with pytest.raises(BadToken, match="not valid") as caught:
            read_token(SECRET, CONFIRM, bad, max_age=DAY)
        assert not isinstance(caught.value, ExpiredToken)


def test_an_old_confirm_token_has_expired_but_a_fresh_one_has_not() -> None:
    made_at = time.time() - 2 * DAY
    token = make_token(SECRET, CONFIRM, SUBSCRIPTION, clock=lambda: made_at)
    with pytest.raises(ExpiredToken, match="expired"):
        read_token(SECRET, CONFIRM, token, max_age=DAY)
    assert read_token(SECRET, CONFIRM, token, max_age=3 * DAY) == SUBSCRIPTION


def test_an_unsubscribe_token_still_works_years_later() -> None:
    made_at = time.time() - 5 * 365 * DAY
    token = make_token(SECRET, UNSUBSCRIBE, SUBSCRIPTION, clock=lambda: made_at)
    assert read_token(SECRET, UNSUBSCRIBE, token, max_age=None) == SUBSCRIPTION


def test_an_unknown_purpose_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="purpose"):
        make_token(SECRET, "reset-password", SUBSCRIPTION)
