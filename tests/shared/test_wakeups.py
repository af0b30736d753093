"""Wake-ups after commit: sent once the writer has committed, by a thread per process."""

from __future__ import annotations

import os
import threading
import time

import psycopg
from sqlalchemy.pool import NullPool

from shared.db import Database, libpq_conninfo
from shared.wakeups import notify_after_commit

CHANNEL = "pressroom_test_wakeups"


def listening(database: Database) -> psycopg.Connection:
    conn = psycopg.connect(libpq_conninfo(str(database.engine.url.render_as_string(False))))
    conn.autocommit = True
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def payloads(listener: psycopg.Connection, want: int, timeout: float = 3.0) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        for n in listener.notifies(timeout=max(0.0, deadline - time.monotonic()), stop_after=1):
            seen.add(n.payload)
    return seen


def wake(database: Database, payload: str) -> None:
    with database.transaction() as session:
        notify_after_commit(session, CHANNEL, payload)


def test_every_writer_of_a_burst_is_heard(database):
    with listening(database) as listener:
        writers = [
            threading.Thread(target=lambda n=n: [wake(database, f"w{n}") for _ in range(25)])
            for n in range(8)
        ]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        assert payloads(listener, 8) == {f"w{n}" for n in range(8)}


def test_a_wake_up_is_sent_after_the_commit_not_inside_it(database):
    with listening(database) as listener:
        with database.transaction() as session:
            notify_after_commit(session, CHANNEL, "later")
            assert list(listener.notifies(timeout=0.3)) == []  # not before the commit
        assert payloads(listener, 1) == {"later"}


def test_a_forked_child_sends_its_own_wake_ups(settings):
    # No pool of connections to share across the fork: the child keeps the parent's engine.
    database = Database(settings.db_url, poolclass=NullPool)
    with listening(database) as listener:
        wake(database, "parent")
        assert payloads(listener, 1) == {"parent"}  # its sending thread is alive at the fork
        pid = os.fork()
        if pid == 0:  # the child: a worker process of a prefork pool
            try:
                wake(database, "child")
                time.sleep(1.0)
            finally:
                os._exit(0)
        try:
            assert "child" in payloads(listener, 1, timeout=5)
        finally:
            os.waitpid(pid, 0)
            database.dispose()
