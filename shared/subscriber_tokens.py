"""Signed links for subscribers: confirm a subscription, or leave it.

A token names a subscription and is signed with the app's SECRET_KEY, salted per purpose so a
confirm token can never be used to unsubscribe and the other way round. It carries when it was
made, so a confirm link can expire; an unsubscribe link should work for as long as the mail it
came in is read, so readers pass ``max_age=None`` for it. Nothing is stored: a token is checked
by its signature alone, and confirming or leaving twice is harmless.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from shared.errors import PermanentError

CONFIRM = "confirm"
UNSUBSCRIBE = "unsubscribe"
SALTS = {
    CONFIRM: "pressroom.subscription.confirm",
    UNSUBSCRIBE: "pressroom.subscription.unsubscribe",
}

Clock = Callable[[], float]


class BadToken(PermanentError):
    """A link that was forged, altered, cut short or made for another purpose."""


class ExpiredToken(BadToken):
    """A genuine link that is too old; the page can offer to send a fresh one."""


class _ClockedSigner(TimestampSigner):
    """itsdangerous' signer on a clock we can set, so tests need not wait for links to age."""

    def __init__(self, *args: Any, clock: Clock = time.time, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return int(self.clock())


def _serializer(secret: str, purpose: str, clock: Clock) -> URLSafeTimedSerializer:
    if purpose not in SALTS:
        raise ValueError(f"purpose must be one of {', '.join(SALTS)}")
    return URLSafeTimedSerializer(
        secret,
        salt=SALTS[purpose],
        signer=_ClockedSigner,
        signer_kwargs={"clock": clock, "digest_method": hashlib.sha256},
    )


def make_token(secret: str, purpose: str, subscription_id: str, *, clock: Clock = time.time) -> str:
    """A URL-safe token for ``purpose`` (CONFIRM or UNSUBSCRIBE) naming ``subscription_id``."""
    return _serializer(secret, purpose, clock).dumps(subscription_id)


def read_token(
    secret: str, purpose: str, token: str, max_age: int | None, *, clock: Clock = time.time
) -> str:
    """The subscription id a token names, or :class:`ExpiredToken` when it is older than
    ``max_age`` seconds (None: never), or :class:`BadToken` for anything else wrong with it."""
    try:
        found = _serializer(secret, purpose, clock).loads(token, max_age=max_age)
    except SignatureExpired:
        raise ExpiredToken("this link has expired") from None
    except BadSignature:
        raise BadToken("this link is not valid") from None
    if not isinstance(found, str):
        raise BadToken("this link is not valid")
    return found
