"""Real processes: Celery workers started the way `pressroom worker` starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.config import Settings
from shared.models import ConsumedEvent

ROOT = Path(__file__).resolve().parents[2]


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        VAR_DIR=str(settings.var_dir),
        DATABASE_URL=settings.database_url,
        PYTHONUNBUFFERED="1",
        WORKER_CONCURRENCY="1",
        **extra,
    )
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    return env


class Workers:
    """The relay and the archiver and notifier workers as real processes, stopped at the end
    of the test."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, settings: Settings, *services: str) -> None:
        extra = {
            "ARCHIVE_SWEEP_CHUNK": str(settings.archive_sweep_chunk),
            "REDELIVER_AFTER_SECONDS": str(settings.redeliver_after_seconds),
            "DELIVERY_LEASE_SECONDS": str(settings.delivery_lease_seconds),
            "WEBHOOK_ALLOW_PRIVATE": "1" if settings.webhook_allow_private else "0",
            "NOTIFY_RETRY_SCHEDULE": ",".join(map(str, settings.notify_retry_schedule)),
        }
        if settings.smtp_url:
            extra["SMTP_URL"] = settings.smtp_url
        for service in services or ("relay", "archiver", "notifier"):
            log = open(self.tmp_path / f"{service}.log", "ab")  # noqa: SIM115 (closed with the process)
            command = [service] if service == "relay" else ["worker", service]
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.cli", *command],
                    cwd=ROOT,
                    env=process_env(settings, **extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs = []

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp_path.glob("*.log"))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    running = Workers(tmp_path)
    yield running
    running.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 30, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


def ledger(database) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return {(c.event_id, c.consumer) for c in session.scalars(select(ConsumedEvent))}
