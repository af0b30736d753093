"""What bench/publish.py and bench/archive.py share: the stack, its databases and processes, CPU
accounting from /proc, the figures and the tables.

The scripts run as ``python bench/NAME.py``, so bench/ is first on ``sys.path`` and they import
this module as ``_harness``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from shared.config import normalise_database_url
from shared.db import new_id
from shared.embedded_postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0


def say(message: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Figures and tables


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    """Median of the values that are not NaN; NaN when none are."""
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def median_percentile(samples: Iterable[Sequence[float]], q: float, scale: float = 1.0) -> float:
    """Median over runs of each run's q-th percentile, times ``scale`` (1000: seconds to ms)."""
    return median(percentile(values, q) * scale for values in samples)


def fmt(value: float, digits: int = 1) -> str:
    """A figure with thousands separators; "-" for NaN."""
    return "-" if value != value else f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    """The last column of a figure with a target."""
    return "ok" if ok else "MISS"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for n, row in enumerate([headers, *rows]):
        cells = [
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(row)
        ]
        lines.append(indent + "  ".join(cells).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def flags(
    args: argparse.Namespace, names: Sequence[str], defaults: argparse.Namespace | None = None
) -> list[str]:
    """Command-line options repeating ``args``' values of ``names`` (with ``defaults``, only
    those that differ from them), for the line that reproduces a run."""
    command = []
    for name in names:
        value = getattr(args, name)
        if defaults is None or value != getattr(defaults, name):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            command += ["--" + name.replace("_", "-"), shown]
    return command


# --------------------------------------------------------------------------------------------
# /proc: processes and CPU accounting


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: field 0 is the state, 1 the parent pid ([] if
    the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone."""
    fields = stat_fields(pid)
    if not fields:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores added up."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    total = sum(values[:8])
    return (total - values[3] - values[4]) / CLK_TCK, total / CLK_TCK


def machine_busy(seconds: float) -> float:
    """Cores busy on the whole machine over the next ``seconds``."""
    busy0, total0 = machine_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_seconds()
    return (busy1 - busy0) / max(total1 - total0, 1 / CLK_TCK) * (os.cpu_count() or 1)


@dataclass
class CpuSnapshot:
    at: float
    own: float  # CPU seconds of this process
    machine_busy: float
    machine_total: float
    processes: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (group, s)
    # What CpuSampler.follow saw since: a process that exits before the window's end keeps
    # the seconds it had spent (a PostgreSQL backend closes with its client's connection).
    seen: dict[int, tuple[str, float]] = field(default_factory=dict)


class CpuSampler:
    """CPU seconds by group: the processes below ``root_pid`` (itself included) named by
    ``inside(cmdline)``, any other by ``outside(cmdline)`` (None: not counted), this process
    as ``own``; ``always`` names groups reported even when no process is in them."""

    def __init__(
        self,
        root_pid: int | None,
        inside: Callable[[str], str],
        outside: Callable[[str], str | None] | None,
        own: str,
        always: Sequence[str] = (),
    ) -> None:
        self.root_pid = root_pid
        self.inside = inside
        self.outside = outside
        self.own = own
        self.always = always

    def _group(self, pid: int, parents: dict[int, int]) -> str | None:
        ancestor: int | None = pid
        while ancestor:
            if ancestor == self.root_pid:
                return self.inside(cmdline(pid))
            ancestor = parents.get(ancestor)
        return self.outside(cmdline(pid)) if self.outside is not None else None

    def _processes(self) -> dict[int, tuple[str, float]]:
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (found := proc_stat(int(entry))) is not None:
                parents[int(entry)], cpu[int(entry)] = found
        return {
            pid: (name, seconds)
            for pid, seconds in cpu.items()
            if pid != os.getpid() and (name := self._group(pid, parents)) is not None
        }

    def snapshot(self) -> CpuSnapshot:
        processes = self._processes()
        times = os.times()
        busy, total = machine_seconds()
        return CpuSnapshot(time.monotonic(), times.user + times.system, busy, total, processes)

    def follow(self, window: CpuSnapshot) -> None:
        """Note every process's CPU now, in the window that ``window`` opened: call it now
        and then, and cores_since counts the processes that exit before the window ends."""
        window.seen.update(self._processes())

    def cores_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Cores each group used on average since ``before``, plus "machine busy" and "other
        processes" (busy, less every group). Per process: one that started in the window
        counts from zero; one that exited in it counts what ``follow`` last saw of it."""
        after = self.snapshot()
        elapsed = after.at - before.at
        if elapsed <= 0:
            return {}
        spent = dict.fromkeys(self.always, 0.0)
        for pid, (name, seconds) in (before.seen | after.processes).items():
            started = before.processes.get(pid, (name, 0.0))[1]
            spent[name] = spent.get(name, 0.0) + max(0.0, seconds - started)
        spent[self.own] = after.own - before.own
        cores = {name: seconds / elapsed for name, seconds in spent.items()}
        machine = after.machine_total - before.machine_total
        if machine > 0:
            busy = (after.machine_busy - before.machine_busy) / machine * (os.cpu_count() or 1)
            cores["other processes"] = max(0.0, busy - sum(cores.values()))
            cores["machine busy"] = busy
        return cores


# --------------------------------------------------------------------------------------------
# Databases


class Databases:
    """Throwaway PostgreSQL databases (named ``prefix`` and a random suffix) on
    ``server_url``'s server, or, without one, on an embedded PostgreSQL the bench starts
    (the server ``pressroom up`` runs by default); dropped by ``drop`` or ``drop_all``."""

    def __init__(self, server_url: str | None, prefix: str):
        self.server_url = normalise_database_url(server_url) if server_url else None
        self.prefix = prefix
        self.created: list[str] = []
        self.embedded: EmbeddedPostgres | None = None

    def _server(self) -> str:
        if self.server_url is None:
            base = Path(tempfile.mkdtemp(prefix="pressroom-bench-pg-"))
            base.chmod(0o755)  # reachable by the server's user when run as root
            self.embedded = EmbeddedPostgres(base / "data")
            self.embedded.initialise()
            self.embedded.start()
            self.server_url = self.embedded.url
        return self.server_url

    def fresh(self, var_dir: Path) -> str:
        """The URL of a new, empty database for a run whose VAR_DIR is ``var_dir``."""
        server_url = self._server()
        name = f"{self.prefix}{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        """Drop a database made by ``fresh``."""
        name = make_url(url).database
        if name in self.created:
            self._drop(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            self._drop(name)
        if self.embedded is not None:
            self.embedded.stop()
            shutil.rmtree(self.embedded.data_dir.parent, ignore_errors=True)
            self.embedded, self.server_url = None, None

    def _drop(self, name: str) -> None:
        self.created.remove(name)
        try:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:
            say(f"could not drop database {name}: {exc}")

    def server_version(self) -> str:
        """The database's version, e.g. "PostgreSQL 15.20 (Debian ...)"."""
        engine = create_engine(self._server())
        try:
            with engine.connect() as conn:
                return f"PostgreSQL {conn.execute(text('SHOW server_version')).scalar()}"
        finally:
            engine.dispose()

    def _admin(self, statement: str) -> None:
        engine = create_engine(self._server(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()


def reader(url: str | None) -> Engine:
    """The bench's own reads, on an engine of their own."""
    assert url is not None
    return create_engine(url, pool_pre_ping=True)


# --------------------------------------------------------------------------------------------
# Articles


ARTICLE_COLUMNS = (
    "id", "slug", "title", "summary", "body", "section", "tags", "authors", "media", "status",
    "publish_at", "published_at", "archived_at", "archive_reason", "archive_after", "evergreen",
    "version", "created_at", "updated_at",
)  # fmt: skip
AUTHOR = "Bench Reporter"


def article_row(
    slug: str, title: str, summary: str, body: str, section: str, at: datetime
) -> dict[str, Any]:
    """A published article as an ``articles`` row (ARTICLE_COLUMNS), published, created and
    updated at ``at``, for bulk inserts that bypass the API."""
    return {
        "id": new_id(at),  # time-ordered, as the API and the importer make them
        "slug": slug,
        "title": title,
        "summary": summary,
        "body": body,
        "section": section,
        "tags": ["bench", section],
        "authors": [AUTHOR],
        "media": None,
        "status": "published",
        "publish_at": None,
        "published_at": at,
        "archived_at": None,
        "archive_reason": None,
        "archive_after": None,
        "evergreen": False,
        "version": 1,
        "created_at": at,
        "updated_at": at,
    }


def article_payload(
    title: str, summary: str, body: str, section: str, tags: Sequence[str] | None = None
) -> dict[str, Any]:
    """The JSON body of POST /api/v1/articles publishing an article (tags: bench, section)."""
    return {
        "title": title,
        "summary": summary,
        "body": body,
        "section": section,
        "tags": list(tags) if tags is not None else ["bench", section],
        "authors": [AUTHOR],
        "status": "published",
    }


# --------------------------------------------------------------------------------------------
# Processes and the stack


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_env(
    var_dir: Path, database_url: str, drop: Sequence[str] = (), **extra: str
) -> dict[str, str]:
    """The environment ``pressroom up`` and the other commands get: this one less
    DATABASE_URL, REDIS_URL (so Redis is the embedded one), PUBLIC_BASE_URL, PORT and
    ``drop``; then VAR_DIR, DATABASE_URL and ``extra``."""
    dropped = {"DATABASE_URL", "REDIS_URL", "PUBLIC_BASE_URL", "PORT", *drop}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(VAR_DIR=str(var_dir), DATABASE_URL=database_url, PYTHONUNBUFFERED="1", **extra)
    return env


def spawn(
    argv: Sequence[str], env: dict[str, str], log: Path, mode: str = "ab"
) -> subprocess.Popen[bytes]:
    """A child in its own session (see ``stop_group``), run from the checkout's root, its
    output to ``log`` (appended, or truncated first with mode "wb")."""
    with open(log, mode) as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to a process started in its own session; SIGKILL to its group if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"pid {proc.pid} did not stop in {timeout:.0f} s; killing its group")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(done: Callable[[], bool], timeout: float, interval: float) -> float:
    """Call ``done`` every ``interval`` seconds until it returns true; returns the seconds that
    took, or NaN once ``timeout`` has passed."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            return float("nan")
        time.sleep(interval)
    return time.monotonic() - start


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    """The status of one GET on 127.0.0.1:port, on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Stack:
    """``python -m services.cli up`` (gunicorn, both workers, beat, embedded Redis) with ``env``
    on ``port``, a child in its own session, its output in VAR_DIR/stack.log; stopped with
    SIGTERM."""

    def __init__(self, var_dir: Path, env: dict[str, str], port: int):
        self.var_dir = var_dir
        self.port = port
        self.env = dict(env, PORT=str(port))
        self.log_path = var_dir / "stack.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start it and wait until /readyz answers 200 (errors carry the log's last lines)."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        proc = spawn([PYTHON, "-m", "services.cli", "up"], self.env, self.log_path, "wb")
        self.proc = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the stack exited with {proc.returncode}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                return http_status(self.port, "/readyz") == 200
            return False

        if math.isnan(wait_until(ready, READY_TIMEOUT_S, 0.2)):
            raise TimeoutError(
                f"/readyz not 200 after {READY_TIMEOUT_S:.0f} s:\n{tail(self.log_path)}"
            )

    def token(self, role: str = "editor") -> str:
        """A new API token (``pressroom token create``)."""
        done = subprocess.run(
            [PYTHON, "-m", "services.cli", "token", "create", "--role", role],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
