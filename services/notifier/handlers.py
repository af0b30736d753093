"""What the notifier does with each event type, built from the worker's runtime.

Each handler only writes delivery rows, in the ledger transaction (see
:mod:`services.notifier.fanout`); the sending happens after the commit.
"""

from __future__ import annotations

from services.notifier.fanout import FanOut, Wake
from shared import events
from shared.consumer import Handler
from shared.runtime import Runtime


def build_handlers(runtime: Runtime, wake: Wake) -> dict[str, Handler]:
    """``wake(channel)`` starts senders of a channel once rows wait for them."""
    fanout = FanOut(wake)
    return {
        events.ARTICLE_PUBLISHED: fanout.on_published,
        events.ARTICLE_UPDATED: fanout.on_updated,
        events.ARTICLE_RETRACTED: fanout.on_retracted,
    }
