"""SQLite under several writing processes: every write lands, none waits on a sleeping lock."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from shared.db import Checkpoints, Database, FifoLock, new_id
from shared.migrate import upgrade
from shared.models import Article
from tests.e2e.conftest import ROOT

WRITER = (
    "import sys; from tests.shared.test_db import write_articles; write_articles(*sys.argv[1:])"
)


def write_articles(url: str, prefix: str, count: int | str = 100) -> None:
    count = int(count)
    db = Database(url)
    start = threading.Barrier(4)  # all four ask for their first turn at once
    threads = [
        threading.Thread(target=_write, args=(db, f"{prefix}-{t}", count // 4, start))
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _write(db: Database, prefix: str, count: int, start: threading.Barrier) -> None:
    start.wait()
    for n in range(count):
        with db.transaction() as session:
            session.add(Article(slug=f"{prefix}-{n}", title="t"))


def test_writers_in_several_processes_and_threads_all_commit(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    db = Database(url)
    upgrade(db.engine)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, f"p{p}"], cwd=ROOT) for p in range(3)
    ]
    write_articles(url, "here", 100)  # this process writes beside the others
    try:
        assert [w.wait(60) for w in writers] == [0, 0, 0]
    finally:
        for writer in writers:
            writer.kill()
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(Article)) == 400
    db.dispose()


def test_ids_follow_time_back_past_1970():
    # An archive import goes back further than the id's clock: such stories still get ids,
    # ordered before everything published since.
    ids = [new_id(datetime(year, 6, 1, tzinfo=UTC)) for year in (1955, 2005)] + [new_id()]
    assert ids == sorted(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}


def _in_file_itself(path: str) -> int:
    """Articles in the database file, ignoring its WAL (what a checkpoint has copied)."""
    file_only = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(file_only.execute("SELECT count(*) FROM articles").fetchone()[0])
    finally:
        file_only.close()


def _write_in_forked_child(db: Database, slug: str) -> None:
    with db.transaction() as session:
        session.add(Article(slug=slug, title="t"))
    assert db.checkpoints is not None
    db.checkpoints.catch_up()


def test_commits_reach_the_sqlite_file_without_any_commit_copying_them(tmp_path):  # type: ignore[no-untyped-def]
    path = str(tmp_path / "wal.db")
    db = Database(f"sqlite:///{path}")
    upgrade(db.engine)
    with db.engine.connect() as conn:  # no commit copies the WAL into the file itself...
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    for n in range(2000):  # some 13,000 pages: the WAL is started over along the way...
        with db.transaction() as session:
            session.add(Article(slug=f"a-{n}", title="t"))
    assert os.path.getsize(f"{path}-wal") < 5 * Checkpoints.RESTART_FRAMES * 4096
    # ...and the process's checkpoint thread copies the commits into the file.
    assert db.checkpoints is not None
    db.checkpoints.catch_up()
    assert _in_file_itself(path) == 2000
    # A forked worker (gunicorn's, Celery's) gets a thread of its own.
    child = multiprocessing.get_context("fork").Process(
        target=_write_in_forked_child, args=(db, "from-the-child")
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert _in_file_itself(path) == 2001
    db.dispose()


def test_a_waiting_writer_goes_before_the_holders_next_turn():
    # A thread that lets its turn go and asks again at once must not overtake a thread
    # already waiting (the WAL checkpoint thread behind a loop of commits).
    turn, order = FifoLock(), []
    assert turn.acquire(timeout=1)

    def wait_for_a_turn() -> None:
        assert turn.acquire(timeout=10)
        order.append("waiter")
        turn.release()

    waiter = threading.Thread(target=wait_for_a_turn)
    waiter.start()
    deadline = time.monotonic() + 10
    while not turn._waiters and time.monotonic() < deadline:  # the waiter is in the queue
        time.sleep(0.001)
    turn.release()
    assert turn.acquire(timeout=10)
    order.append("holder, again")
    turn.release()
    waiter.join(10)
    assert order == ["waiter", "holder, again"]
