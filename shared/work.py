"""Slow work after a commit: due rows that any number of worker processes claim.

A consumer's handler runs inside the ledger transaction and only writes rows; what is slow
(network calls, heavy computing) it asks for with :func:`request`, in that same
transaction, so the request commits with the event or not at all. After the commit,
:func:`run_due` (from the consumer task, and periodically from beat) claims due rows with
``FOR UPDATE SKIP LOCKED``, leases them for ``lease`` seconds and runs their handler
outside any transaction of ours; then the row is deleted, or rescheduled with backoff, or,
out of attempts, moved to ``failed_work`` with its last error.

Asking again for work that is already waiting asks once (one row per kind and key: a burst
of edits to one article costs one recomputation). Asking while it runs bumps its
generation, so the run that is under way does not delete it and it runs once more.
A worker killed mid-run leaves the row leased: it is due again when the lease runs out.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, event, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from shared.db import Database, utcnow
from shared.errors import PermanentError
from shared.models import DueWork, FailedWork
from shared.wakeups import notify_after_commit

log = logging.getLogger(__name__)

CHANNEL = "pressroom_due_work"  # NOTIFY'd once a transaction that asked for work commits
PENDING = "pressroom.work.pending"  # session.info: (transaction, its requests by kind and key)

# Seconds before each retry of a failed run; after the last, the work has failed for good.
DEFAULT_BACKOFF = (5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True)
class Claimed:
    """A row claimed for one run."""

    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    generation: int
    attempts: int  # including this one


def request(
    session: Session,
    kind: str,
    key: str,
    payload: dict[str, Any] | None = None,
    due_at: datetime | None = None,
) -> None:
    """Ask for ``kind`` work on ``key`` at ``due_at`` (now), in the caller's transaction.

    Work already waiting keeps its place (the earlier due time) and takes the new payload.
    The requests of one transaction are written together when it commits, in one round
    trip (a consumer asks once per event, up to a hundred in a message), and a runner
    waiting on :data:`CHANNEL` is woken after the commit, once per kind. A rollback writes
    none; a savepoint's rollback is not tracked (nothing here uses savepoints): its
    requests stay.
    """
    transaction = session.get_transaction() or session.begin()
    pending = session.info.get(PENDING)
    if pending is None or pending[0] is not transaction:
        pending = (transaction, {})
        session.info[PENDING] = pending
        if not event.contains(session, "before_commit", _write_requests):
            event.listen(session, "before_commit", _write_requests)
    requests: dict[tuple[str, str], dict[str, Any]] = pending[1]
    due_at = due_at or utcnow()
    waiting = requests.get((kind, key))
    if waiting is not None:  # one row per kind and key: the earlier time, the new payload
        due_at = min(due_at, waiting["due_at"])
    requests[(kind, key)] = {"kind": kind, "key": key, "payload": payload or {}, "due_at": due_at}


def _write_requests(session: Session) -> None:
    pending = session.info.pop(PENDING, None)
    if pending is None or pending[0] is not session.get_transaction() or not pending[1]:
        return
    requests = list(pending[1].values())
    session.execute(_request_statement(), requests)
    for kind in dict.fromkeys(request["kind"] for request in requests):
        notify_after_commit(session, CHANNEL, kind)


@functools.cache
def _request_statement() -> Any:
    """Built once, its values bound at execution: a statement built for each request cost
    more than running it (its cache key worked out afresh): most of what a handler cost."""
    table = DueWork.__table__
    statement = postgresql.insert(DueWork).values(
        {name: bindparam(name, type_=table.c[name].type) for name in _REQUESTED}
        | {"generation": 1, "attempts": 0}
    )
    return statement.on_conflict_do_update(
        index_elements=[DueWork.kind, DueWork.key],
        set_={
            "payload": statement.excluded.payload,
            "due_at": func.least(DueWork.due_at, statement.excluded.due_at),
            "generation": DueWork.generation + 1,
            "attempts": 0,
        },
    )


_REQUESTED = ("kind", "key", "payload", "due_at")


def lease_due(
    db: Database,
    model: Any,
    *conditions: Any,
    limit: int,
    lease: float,
    returning: Sequence[Any],
    now: datetime | None = None,
) -> list[Any]:
    """Lease up to ``limit`` due rows of ``model`` (any table with ``due_at``,
    ``leased_until`` and ``attempts``) that meet ``conditions``, oldest due first, counting
    an attempt; rows another process is claiming right now are skipped, not waited for.
    The lease is committed before this returns, so the work runs outside any transaction."""
    now = now or utcnow()
    due = (
        select(model.id)
        .where(
            *conditions,
            model.due_at <= now,
            or_(model.leased_until.is_(None), model.leased_until <= now),
        )
        .order_by(model.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with db.transaction() as session:
        return list(
            session.execute(
                update(model)
                .where(model.id.in_(due.scalar_subquery()))
                .values(leased_until=now + timedelta(seconds=lease), attempts=model.attempts + 1)
                .returning(*returning)
            ).all()
        )


def retry_delay(attempts: int, backoff: Sequence[float]) -> float | None:
    """Seconds before the next try after ``attempts`` tries, with jitter (so retries of a
    burst do not come back in step); None once ``backoff`` is spent."""
    if attempts > len(backoff):
        return None
    return backoff[attempts - 1] * random.uniform(0.9, 1.1)


def claim(
    db: Database, kind: str, limit: int, lease: float, now: datetime | None = None
) -> list[Claimed]:
    """Lease up to ``limit`` due rows of ``kind`` (see :func:`lease_due`)."""
    rows = lease_due(
        db,
        DueWork,
        DueWork.kind == kind,
        limit=limit,
        lease=lease,
        now=now,
        returning=(
            DueWork.id,
            DueWork.kind,
            DueWork.key,
            DueWork.payload,
            DueWork.generation,
            DueWork.attempts,
        ),
    )
    return [Claimed(*row) for row in rows]


def finish(db: Database, *done: Claimed) -> None:
    """The runs are done: delete their rows, except those asked for again meanwhile, which
    are due again at once with their attempts afresh. One transaction for them all."""
    if not done:
        return
    with db.transaction() as session:
        gone = set(
            session.scalars(
                delete(DueWork)
                .where(
                    tuple_(DueWork.id, DueWork.generation).in_(
                        [(work.id, work.generation) for work in done]
                    )
                )
                .returning(DueWork.id)
            )
        )
        again = [work.id for work in done if work.id not in gone]
        if again:
            session.execute(
                update(DueWork).where(DueWork.id.in_(again)).values(leased_until=None, attempts=0)
            )


def fail(
    db: Database,
    work: Claimed,
    error: str,
    *,
    permanent: bool = False,
    backoff: Sequence[float] = DEFAULT_BACKOFF,
    now: datetime | None = None,
) -> bool:
    """The run failed: retry after the next step of ``backoff`` (with jitter), or, out of
    steps or ``permanent``, move it to ``failed_work``. Returns True if it will be retried."""
    now = now or utcnow()
    delay = None if permanent else retry_delay(work.attempts, backoff)
    retry = delay is not None
    with db.transaction() as session:
        if delay is not None:
            session.execute(
                update(DueWork)
                .where(DueWork.id == work.id)
                .values(due_at=now + timedelta(seconds=delay), leased_until=None, last_error=error)
            )
        else:
            session.execute(delete(DueWork).where(DueWork.id == work.id))
            session.execute(
                insert(FailedWork).values(
                    kind=work.kind,
                    key=work.key,
                    payload=work.payload,
                    attempts=work.attempts,
                    error=error,
                )
            )
    return retry


Handler = Callable[[Claimed], None]


def run_due(
    db: Database,
    kind: str,
    handler: Handler,
    *,
    batch: int = 50,
    lease: float = 120.0,
    backoff: Sequence[float] = DEFAULT_BACKOFF,
) -> int:
    """Run due work of ``kind`` until none is left; returns how many runs finished.

    ``handler`` raises :class:`PermanentError` for work that cannot succeed, anything else
    for a failure worth retrying.
    """
    finished = 0
    while claimed := claim(db, kind, batch, lease):
        finished += sum(_run_one(db, work, handler, backoff) for work in claimed)
    return finished


def run_due_batches(
    db: Database,
    kind: str,
    handler: Callable[[list[Claimed]], None],
    *,
    batch: int = 200,
    lease: float = 120.0,
    backoff: Sequence[float] = DEFAULT_BACKOFF,
) -> int:
    """As :func:`run_due`, a batch at a time, for work that is cheaper together (many
    stories leaving the lists at once). A batch that fails is retried one by one, so one
    bad row does not hold up the others."""
    finished = 0
    while claimed := claim(db, kind, batch, lease):
        try:
            handler(claimed)
        except Exception as exc:
            log.warning(
                "%s: a batch of %d failed (%s: %s); one at a time",
                kind, len(claimed), type(exc).__name__, exc,
            )  # fmt: skip
            for work in claimed:
                finished += _run_one(db, work, lambda w: handler([w]), backoff)
            continue
        finish(db, *claimed)
        finished += len(claimed)
    return finished


def _run_one(db: Database, work: Claimed, handler: Handler, backoff: Sequence[float]) -> int:
    """Run one claimed row; returns 1 if it finished, 0 if it failed (and says so)."""
    try:
        handler(work)
    except PermanentError as exc:
        fail(db, work, str(exc), permanent=True, backoff=backoff)
        log.warning("%s %s failed for good: %s", work.kind, work.key, exc)
        return 0
    except Exception as exc:  # worth another try, later
        retried = fail(db, work, f"{type(exc).__name__}: {exc}", backoff=backoff)
        outcome = "retry" if retried else "gave up"
        log.warning("%s %s failed (%s): %s", work.kind, work.key, outcome, exc)
        return 0
    finish(db, work)
    return 1


def pending(session: Session, kind: str) -> int:
    """Rows of ``kind`` waiting or running, for ops."""
    return int(session.scalar(select(func.count()).where(DueWork.kind == kind)) or 0)
