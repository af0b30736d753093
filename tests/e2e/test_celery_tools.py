"""Celery's own tools and Flower through ``pressroom``, on the broker the stack is configured
with and nothing typed: real workers, a real Redis, a real Flower."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.brokers import message_count
from tests.conftest import free_port
from tests.e2e.conftest import ROOT, process_env, wait_for
from tests.publisher.helpers import article, relayed

pytestmark = pytest.mark.e2e


def pressroom(settings, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_celery_inspect_reaches_both_workers(settings, workers):
    workers.start(settings, "archiver", "notifier")

    def both_answer() -> str:
        result = pressroom(settings, "celery", "inspect", "ping", "--timeout", "2")
        answered = result.returncode == 0 and all(
            f"{name}-" in result.stdout for name in ("archiver", "notifier")
        )
        return result.stdout if answered else ""

    assert wait_for(both_answer, 60, 1), workers.logs()


def test_celery_purge_empties_both_queues_untold(client, editor, settings, redis_url):
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    assert [message_count(redis_url, q) for q in ("archiver", "notifier")] == [1, 1]
    result = pressroom(settings, "celery", "purge", "--force")
    assert result.returncode == 0, result.stderr
    assert [message_count(redis_url, q) for q in ("archiver", "notifier")] == [0, 0]


@pytest.mark.parametrize("command", [["celery", "inspect", "active"], ["flower"]])
def test_with_the_embedded_redis_stopped_it_says_how_to_start_it(make_settings, tmp_path, command):
    stopped = make_settings(redis_url=None, var_dir=tmp_path)
    result = pressroom(stopped, *command)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: the embedded Redis is not running: start the stack first (make run)"
    ]


@pytest.fixture
def flower(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "flower", f"--port={port}"],
        cwd=ROOT, env=process_env(settings), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def test_flower_shows_both_queues_on_the_configured_broker(client, editor, flower):
    client.post("/api/v1/articles", json=article(status="published"), headers=editor)
    relayed(client)
    health = wait_for(lambda: _get(f"{flower}/healthcheck"), 60, 0.5)
    assert health is not None and health.text == "OK"
    page = httpx.get(f"{flower}/broker", timeout=10).text
    waiting = dict(re.findall(r'<tr id="(\w+)">\s*<td>\w+</td>\s*<td[^>]*>(\d+)</td>', page))
    assert waiting == {"archiver": "1", "notifier": "1"}, page
