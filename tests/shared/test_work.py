"""Due work: asked for in a transaction, run once after it, retried, never lost."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from shared import work
from shared.db import utcnow
from shared.errors import PermanentError
from shared.models import DueWork, FailedWork


def ask(database, key: str = "a1", **payload) -> None:  # type: ignore[no-untyped-def]
    with database.transaction() as session:
        work.request(session, "recompute", key, payload)


def test_a_burst_of_requests_for_one_key_runs_once(database):
    for n in range(5):
        ask(database, n=n)
    runs: list[dict] = []
    assert work.run_due(database, "recompute", lambda w: runs.append(w.payload)) == 1
    assert runs == [{"n": 4}]  # the latest payload
    with database.session() as session:
        assert session.scalars(select(DueWork)).all() == []


def test_one_transaction_asking_twice_for_a_key_keeps_the_earlier_time_and_the_new_payload(
    database,
):
    soon = utcnow() + timedelta(seconds=30)
    with database.transaction() as session:
        work.request(session, "recompute", "a1", {"n": 1}, due_at=soon)
        work.request(session, "recompute", "a1", {"n": 2}, due_at=soon + timedelta(hours=1))
        work.request(session, "recompute", "b2", {"n": 3}, due_at=soon)
    with database.session() as session:
        rows = {row.key: row for row in session.scalars(select(DueWork))}
    assert set(rows) == {"a1", "b2"}
    assert rows["a1"].payload == {"n": 2}
    assert abs((rows["a1"].due_at - soon).total_seconds()) < 0.001


def test_a_request_in_a_session_that_had_not_begun_is_written_at_its_commit(database):
    with database.session() as session:
        work.request(session, "recompute", "a1")
        session.commit()
    assert work.run_due(database, "recompute", lambda w: None) == 1


def test_a_request_that_rolls_back_asks_for_nothing(database):
    try:
        with database.transaction() as session:
            work.request(session, "recompute", "a1")
            raise RuntimeError("the event's handler failed")
    except RuntimeError:
        pass
    assert work.run_due(database, "recompute", lambda w: None) == 0


def test_asked_again_while_running_runs_once_more(database):
    ask(database)
    runs: list[int] = []

    def handler(claimed: work.Claimed) -> None:
        runs.append(claimed.generation)
        if len(runs) == 1:
            ask(database)  # an edit arrives while the first run computes

    assert work.run_due(database, "recompute", handler) == 2
    assert runs == [1, 2]


def test_two_workers_never_run_the_same_row_at_once(database):
    for n in range(40):
        ask(database, key=f"a{n}")
    seen: list[str] = []
    lock = threading.Lock()

    def handler(claimed: work.Claimed) -> None:
        with lock:
            seen.append(claimed.key)

    threads = [
        threading.Thread(
            target=work.run_due, args=(database, "recompute", handler), kwargs={"batch": 3}
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == sorted(f"a{n}" for n in range(40))


def test_a_failure_is_retried_later_then_kept_with_its_reason(database):
    ask(database)
    failing = lambda w: (_ for _ in ()).throw(ConnectionError("refused"))  # noqa: E731
    assert work.run_due(database, "recompute", failing, backoff=[60]) == 0
    with database.session() as session:
        [row] = session.scalars(select(DueWork)).all()
    assert row.due_at > utcnow() + timedelta(seconds=50) and "refused" in (row.last_error or "")
    with database.transaction() as session:  # time passes
        row = session.get(DueWork, row.id)
        assert row is not None
        row.due_at = utcnow()
    assert work.run_due(database, "recompute", failing, backoff=[60]) == 0
    with database.session() as session:
        assert session.scalars(select(DueWork)).all() == []
        [failed] = session.scalars(select(FailedWork)).all()
    assert failed.attempts == 2 and "refused" in failed.error


def test_a_permanent_failure_is_not_retried(database):
    ask(database)

    def handler(claimed: work.Claimed) -> None:
        raise PermanentError("no such article")

    work.run_due(database, "recompute", handler)
    with database.session() as session:
        assert session.scalars(select(DueWork)).all() == []
        assert [f.error for f in session.scalars(select(FailedWork))] == ["no such article"]


def test_work_a_dead_worker_held_is_due_again_when_its_lease_runs_out(database):
    ask(database)
    [held] = work.claim(database, "recompute", 10, lease=60)  # then the worker is killed
    assert work.claim(database, "recompute", 10, lease=60) == []
    later = utcnow() + timedelta(seconds=61)
    [again] = work.claim(database, "recompute", 10, lease=60, now=later)
    assert again.key == held.key and again.attempts == 2


def test_batches_run_together_and_a_row_asked_for_again_meanwhile_stays(database):
    for n in range(5):
        ask(database, key=f"a{n}")
    batches: list[list[str]] = []

    def handler(claimed: list[work.Claimed]) -> None:
        batches.append(sorted(c.key for c in claimed))
        if len(batches) == 1:
            ask(database, key="a3")  # edited while its batch ran

    assert work.run_due_batches(database, "recompute", handler, batch=10) == 6
    assert batches == [["a0", "a1", "a2", "a3", "a4"], ["a3"]]
    with database.session() as session:
        assert session.scalars(select(DueWork)).all() == []


def test_a_failing_batch_is_run_one_by_one_so_only_the_bad_row_waits(database, caplog):
    for key in ("good1", "bad", "good2"):
        ask(database, key=key)
    done: list[str] = []

    def handler(claimed: list[work.Claimed]) -> None:
        if any(c.key == "bad" for c in claimed):
            raise RuntimeError("cannot compute this one")
        done.extend(c.key for c in claimed)

    assert work.run_due_batches(database, "recompute", handler, backoff=[60]) == 2
    assert sorted(done) == ["good1", "good2"]
    with database.session() as session:
        [row] = session.scalars(select(DueWork)).all()
    assert row.key == "bad" and row.due_at > utcnow() + timedelta(seconds=50)
    # Ops read why, for the batch and for the row that failed alone.
    said = [r.getMessage() for r in caplog.records if r.name == "shared.work"]
    assert said == [
        "recompute: a batch of 3 failed (RuntimeError: cannot compute this one); one at a time",
        "recompute bad failed (retry): cannot compute this one",
    ]
