"""`pressroom up`: the whole stack from one command, and nothing left behind when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import ROOT, wait_for
from tests.publisher.helpers import article

pytestmark = pytest.mark.e2e


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries ``marker``: every process the stack started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_up_serves_the_api_runs_the_workers_and_stops_cleanly(tmp_path, settings):
    # ... and refuses a second stack on the same VAR_DIR, which would take over its Redis.
    var_dir = tmp_path / "stack"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(VAR_DIR=str(var_dir), PORT=str(port), DATABASE_URL=settings.database_url)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    output = lambda: (tmp_path / "up.log").read_text(errors="replace")  # noqa: E731
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, 90, 0.5), output()
        second = subprocess.run(  # the same VAR_DIR: refused, and the first one unharmed
            [sys.executable, "-m", "services.cli", "up"],
            cwd=ROOT, env={**env, "PORT": str(free_port())}, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert "a stack is already running with VAR_DIR=" in second.stderr
        token = subprocess.run(
            [sys.executable, "-m", "services.cli", "token", "create", "--role", "editor"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert token.startswith("prt_") and token.count("\n") == 1
        headers = {"Authorization": f"Bearer {token.strip()}"}
        created = httpx.post(
            f"{base}/api/v1/articles", json=article(status="published"), headers=headers
        )
        assert created.status_code == 201
        events_url = f"{base}/api/v1/articles/{created.json()['id']}/events"

        def consumed() -> bool:
            items = httpx.get(events_url, headers=headers).json()["items"]
            return all(c["consumed_at"] for c in items[0]["consumers"])

        assert wait_for(consumed, 60, 0.5), output()
        assert processes_with(f"VAR_DIR={var_dir}")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()
    text = output()
    for name in ("redis", "publisher", "archiver", "notifier", "beat"):
        assert f"{name:<9}| " in text, f"no output prefixed with {name}"
    assert up.returncode == 0, text[-3000:]
    assert wait_for(lambda: not processes_with(f"VAR_DIR={var_dir}"), 10), "processes left behind"
