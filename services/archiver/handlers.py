"""What the archiver does with each event type, built from the worker's runtime.

Every article event asks for its related reads to be recomputed: a due-work row, written
in the ledger transaction (a burst of edits to one story asks once). Right after the commit
the same task runs one batch of what is due, oldest first; beat's periodic run takes what is
left, so a backlog never keeps the next message's events from their ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from services.archiver.related import JOB
from shared import events, work
from shared.consumer import Handler, after_commit


def build_handlers(run_due: Callable[[], object]) -> dict[str, Handler]:
    """``run_due`` runs the due recomputations (after each commit that asked for some)."""

    def recompute_around(session: Session, event: dict[str, Any]) -> None:
        work.request(session, JOB, event["data"]["article_id"])
        after_commit(session, run_due)

    return {
        event_type: recompute_around
        for event_type in (
            events.ARTICLE_PUBLISHED,
            events.ARTICLE_UPDATED,
            events.ARTICLE_ARCHIVED,
            events.ARTICLE_UNARCHIVED,
            events.ARTICLE_RETRACTED,
        )
    }
