"""The related-reads process: woken by the transactions that ask, restarted when killed."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from services.archiver.runner import Supervisor
from tests.archiver.test_related import TOPICS, ask, publish, titles
from tests.e2e.conftest import wait_for


@pytest.fixture
def runner(settings) -> Iterator[Supervisor]:  # type: ignore[no-untyped-def]
    supervisor = Supervisor(settings)
    supervisor.start()
    yield supervisor
    supervisor.stop()


def test_asked_work_is_done_by_the_process_and_again_after_it_was_killed(
    client, editor, database, runner
):
    ids = {topic: [publish(client, editor, topic, n) for n in range(3)] for topic in TOPICS}
    ask(database, *(i for story in ids.values() for i in story))  # as the consumer does
    first = ids["volcano"][0]
    assert wait_for(lambda: titles(database, first), 60, 0.1)  # its first model, then lists
    assert titles(database, first)[0].startswith("volcano")

    killed = runner.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    assert wait_for(lambda: runner.pid not in (None, killed), 30, 0.1)  # started again
    new = publish(client, editor, "football", 7)
    ask(database, new)
    assert wait_for(lambda: titles(database, new), 30, 0.1)
    assert titles(database, new)[0].startswith("football")
