"""`pressroom up`: the whole stack from one command, and nothing left behind when it stops."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

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


def child_pid(marker: str, argv_part: str) -> int | None:
    """The stack's child whose command line holds ``argv_part`` (its group's leader)."""
    for pid in processes_with(marker):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if argv_part.encode() in command and os.getpgid(pid) == pid:
            return pid
    return None


@pytest.fixture
def var_dir() -> Iterator[Path]:
    """A VAR_DIR the embedded PostgreSQL's user can reach (pytest's own tmp is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="pressroom-stack-"))
    base.chmod(0o755)
    yield base / "var"
    shutil.rmtree(base, ignore_errors=True)


def test_up_serves_the_api_runs_the_workers_and_stops_cleanly(tmp_path, var_dir):
    # On the embedded defaults: its own PostgreSQL and Redis under VAR_DIR. It refuses a
    # second stack on the same VAR_DIR, restarts a child that crashes while the API keeps
    # answering, and leaves nothing behind when it stops.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(VAR_DIR=str(var_dir), PORT=str(port))
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
        # Refused by gunicorn before Flask sees it, and still in the one error shape.
        too_long = httpx.get(f"{base}/articles/{'x' * 9000}", timeout=5)
        assert too_long.status_code == 414
        assert too_long.json()["error"]["code"] == "uri_too_long"
        headers_too_many = httpx.get(
            f"{base}/healthz", headers={f"x-h{n}": "v" for n in range(120)}, timeout=5
        )
        assert headers_too_many.status_code == 431
        assert set(headers_too_many.json()["error"]) == {"code", "message", "details"}
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
        marker = f"VAR_DIR={var_dir}"

        def redis_pid() -> int | None:  # its process title overwrites its environment
            try:
                client = redis.Redis(unix_socket_path=str(var_dir / "redis.sock"))
                return int(client.info("server")["process_id"])
            except redis.RedisError:
                return None

        for part in (" relay", "worker archiver", "worker notifier", " beat", "redis"):
            pid = redis_pid() if part == "redis" else child_pid(marker, part)
            assert pid is not None, f"no child running {part}"
            os.killpg(pid, signal.SIGKILL)
            assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            find = redis_pid if part == "redis" else lambda p=part: child_pid(marker, p)
            assert wait_for(lambda f=find, old=pid: f() not in (None, old), 30), output()
        assert wait_for(ready, 30, 0.5), output()
        again = httpx.post(
            f"{base}/api/v1/articles", json=article(status="published"), headers=headers
        )
        events_url = f"{base}/api/v1/articles/{again.json()['id']}/events"
        assert wait_for(consumed, 60, 0.5), output()

        def also_read(story: dict) -> list[str]:  # the same subject: each other's list
            got = httpx.get(f"{base}/api/v1/articles/{story['id']}", headers=headers).json()
            return [related["id"] for related in got["related"]]

        assert wait_for(lambda: also_read(again.json()) == [created.json()["id"]], 60), output()
        assert also_read(created.json()) == [again.json()["id"]]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()
    text = output()
    for name in ("postgres", "redis", "publisher", "relay", "archiver", "notifier", "beat"):
        assert f"{name:<9}| " in text, f"no output prefixed with {name}"
    assert up.returncode == 0, text[-3000:]
    assert wait_for(lambda: not processes_with(f"VAR_DIR={var_dir}"), 10), "processes left behind"
