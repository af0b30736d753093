"""What the archiver does with each event type, built from the worker's runtime.

Every article event asks for its related reads to be recomputed: a due-work row, written
in the ledger transaction (a burst of edits to one story asks once), which wakes the
related-reads process (:mod:`services.archiver.runner`) when it commits. Nothing heavy runs
in the pool, so a backlog of recomputation never keeps the next events from their ledger.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared import events, work
from shared.consumer import Handler

# The due work the handlers ask for: recompute the lists around one story (key: its id).
# Defined here, not beside the recomputation, so the worker never loads the numerical stack.
JOB = "related.article"


def build_handlers() -> dict[str, Handler]:
    def recompute_around(session: Session, run: list[dict[str, Any]]) -> None:
        for event in run:
            work.request(session, JOB, event["data"]["article_id"])

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
