"""SQLite under several writing processes: every write lands, none waits on a sleeping lock."""

from __future__ import annotations

import multiprocessing
import threading

from sqlalchemy import func, select

from shared.db import Database
from shared.migrate import upgrade
from shared.models import Article


def write_articles(url: str, prefix: str, count: int) -> None:
    db = Database(url)
    threads = [
        threading.Thread(target=_write, args=(db, f"{prefix}-{t}", count // 4)) for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _write(db: Database, prefix: str, count: int) -> None:
    for n in range(count):
        with db.transaction() as session:
            session.add(Article(slug=f"{prefix}-{n}", title="t"))


def test_writers_in_several_processes_and_threads_all_commit(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    db = Database(url)
    upgrade(db.engine)
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=write_articles, args=(url, f"p{p}", 100)) for p in range(3)]
    for writer in writers:
        writer.start()
    write_articles(url, "parent", 100)  # the parent's queue keeps working beside its children
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0, 0, 0]
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(Article)) == 400
    db.dispose()
