"""``pressroom up``: run the whole stack in the foreground and stop all of it together.

Children: the embedded PostgreSQL (when DATABASE_URL is unset) and Redis (when REDIS_URL is
unset), gunicorn serving the publisher, the relay, the archiver and notifier workers, and
Celery beat. Each child's output is prefixed with its name. A child that dies is started
again after a backoff while the others keep running; one that keeps dying (``MAX_CRASHES``
within ``CRASH_WINDOW_S``) stops the stack, with a message naming it. Ctrl-C or SIGTERM
stops every child (its whole process group), the servers last.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from shared import processes
from shared.config import Settings
from shared.db import make_engine
from shared.embedded_postgres import EmbeddedPostgres
from shared.embedded_redis import server_argv, wait_until_ready
from shared.errors import ConfigError
from shared.migrate import upgrade

STOP_GRACE_S = 15
SOCKET_PATH_MAX = 107  # bytes of a unix socket's path on Linux (sun_path is 108)
SERVERS = ("postgres", "redis")  # stopped last, so the others can finish their work
# The workers' and beat's CPU priority (nice): on one machine an editor's request is served
# before background work, which catches up after a burst; the relay, the publisher and the
# servers keep the default.
BACKGROUND = 5

# A child that crashed waits 1, 2, 4... up to BACKOFF_MAX_S before it is started again; the
# MAX_CRASHES-th crash within CRASH_WINDOW_S stops the stack.
BACKOFF_MAX_S = 30.0
MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0


def _prepare_child(sig: int, nice: int) -> Callable[[], None]:
    """Runs in the child before exec: if the supervisor is killed, the kernel ends the child;
    and a background child takes its CPU priority."""

    def arrange() -> None:
        processes.end_with_parent(sig)
        if nice:
            os.nice(nice)
            processes.rank_session(nice)  # each child leads a session of its own

    return arrange


@dataclass
class Child:
    name: str
    argv: list[str]
    # PostgreSQL's "fast" shutdown; on SIGTERM it would wait for every client to leave.
    stop_signal: int = signal.SIGTERM
    popen_user: dict[str, Any] = field(default_factory=dict)
    nice: int = 0
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = field(default=None, repr=False)
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None

    def start(self, env: dict[str, str], out_lock: threading.Lock) -> None:
        self.restart_at = None
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_prepare_child(self.stop_signal, self.nice),
            cwd="/" if self.popen_user else None,
            **self.popen_user,
        )
        self.pump = threading.Thread(target=self._prefix, args=(out_lock,), daemon=True)
        self.pump.start()

    def _prefix(self, out_lock: threading.Lock) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        label = f"{self.name:<9}| ".encode()
        for line in iter(self.proc.stdout.readline, b""):
            with out_lock:
                sys.stdout.buffer.write(label + line)
                sys.stdout.buffer.flush()

    def terminate(self) -> None:
        """Ask the leader to stop: a Celery worker then finishes its tasks (warm shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)

    def crashed(self, now: float) -> bool:
        """Record an unexpected exit; True if it has crashed too often to try again."""
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        backoff = min(BACKOFF_MAX_S, 2.0 ** (len(self.crashes) - 1))
        self.restart_at = now + backoff
        return len(self.crashes) >= MAX_CRASHES

    def kill(self) -> None:
        # The whole group: a Celery worker's pool processes outlive a leader that exited.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        self.proc.poll()  # reap the leader if it has exited
        return True


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def embedded_postgres(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.postgres_dir)


def plan(settings: Settings) -> list[Child]:
    children = []
    if settings.embedded_database:
        server = embedded_postgres(settings)
        children.append(Child("postgres", server.server_argv(), signal.SIGINT, server.popen_user()))
    if settings.embedded_redis:
        children.append(
            Child("redis", server_argv(settings.var_dir / "redis", socket=settings.redis_socket))
        )
    children += [
        Child(
            "publisher",
            _python(
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{settings.port}",
                "--workers",
                str(settings.web_workers),
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--graceful-timeout",
                "10",
                "--no-control-socket",
                "--worker-tmp-dir",
                "/dev/shm" if Path("/dev/shm").is_dir() else "/tmp",
                "services.publisher.wsgi:app",
            ),
        ),
        Child("relay", _python("-m", "services.cli", "relay")),
        Child("archiver", _python("-m", "services.cli", "worker", "archiver"), nice=BACKGROUND),
        Child("notifier", _python("-m", "services.cli", "worker", "notifier"), nice=BACKGROUND),
        Child("beat", _python("-m", "services.cli", "beat"), nice=BACKGROUND),
    ]
    return children


@contextlib.contextmanager
def holding_var_dir(var_dir: Path) -> Iterator[None]:
    """One stack per VAR_DIR: a second one would start a Redis on the same socket and
    append-only file, and, stopping, delete the socket the first one's processes use."""
    var_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(var_dir / "stack.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:  # released by the kernel however this process ends
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"a stack is already running with VAR_DIR={var_dir}; stop it, or give this"
                " one another VAR_DIR (and PORT)"
            ) from None
        yield
    finally:
        os.close(fd)


def check_before_start(settings: Settings) -> None:
    """What would otherwise fail later, as a timeout or a traceback."""
    if settings.embedded_database:
        embedded_postgres(settings).check()
    socket = str(settings.redis_socket)
    if settings.embedded_redis and len(socket.encode()) > SOCKET_PATH_MAX:
        raise ConfigError(
            f"VAR_DIR is too long for the embedded Redis's socket ({socket!r} is over"
            f" {SOCKET_PATH_MAX} bytes): use a shorter VAR_DIR"
        )


def check_database_free(settings: Settings) -> None:
    """The embedded server is the stack's to start: one already running belongs to a
    command run while the stack was down."""
    if not settings.embedded_database:
        return
    server = embedded_postgres(settings)
    server.initialise()
    if server.is_running():
        raise ConfigError(
            f"the embedded PostgreSQL in {server.data_dir} is already running (a pressroom"
            " command using it?): wait for that command to finish, then start again"
        )


def up(settings: Settings) -> int:
    """Run the stack until Ctrl-C, SIGTERM or a child's exit; returns the exit code."""
    check_before_start(settings)
    with holding_var_dir(settings.var_dir):
        check_database_free(settings)
        return _run(settings)


def _run(settings: Settings) -> int:
    env = dict(os.environ, VAR_DIR=str(settings.var_dir), PYTHONUNBUFFERED="1")
    out_lock = threading.Lock()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    children = plan(settings)
    started: list[Child] = []
    code = 0
    try:
        for child in children:
            if stop.is_set():
                break
            child.start(env, out_lock)
            started.append(child)
            if child.name == "postgres":
                embedded_postgres(settings).wait_until_ready(child.proc)
                _say(out_lock, f"embedded PostgreSQL in {settings.postgres_dir}")
            elif child.name == "redis":
                wait_until_ready(settings.redis_client_url, child.proc)
                _say(out_lock, f"embedded redis on {settings.redis_socket}")
            if child.name == _last_server(children):  # the database is up: migrate it
                upgrade_database(settings, out_lock)
        if _last_server(children) is None:
            upgrade_database(settings, out_lock)
        _say(out_lock, f"publisher on http://127.0.0.1:{settings.port} (Ctrl-C stops everything)")
        code = _watch(started, stop, env, out_lock)
    finally:
        _stop_all(started, out_lock)
    return code


def _last_server(children: list[Child]) -> str | None:
    servers = [child.name for child in children if child.name in SERVERS]
    return servers[-1] if servers else None


def upgrade_database(settings: Settings, out_lock: threading.Lock) -> None:
    engine = make_engine(settings.db_url)
    try:
        upgrade(engine)
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"cannot reach the database at {where}: {exc.orig}") from None
    finally:
        engine.dispose()
    _say(out_lock, "database schema is up to date")


def _watch(
    children: list[Child], stop: threading.Event, env: dict[str, str], out_lock: threading.Lock
) -> int:
    """Restart what crashed, after its backoff; returns 1 once a child keeps crashing."""
    while not stop.wait(0.2):
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.kill()  # whatever the crashed leader left of its group
                    _say(out_lock, f"starting {child.name} again")
                    child.start(env, out_lock)
            elif child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                if child.crashed(now):
                    _say(
                        out_lock,
                        f"{child.name} exited with {code} {MAX_CRASHES} times within"
                        f" {CRASH_WINDOW_S:.0f} s; stopping the stack",
                    )
                    return 1
                wait = child.restart_at - now if child.restart_at else 0
                _say(out_lock, f"{child.name} exited with {code}; restarting in {wait:.0f} s")
    return 0


def _stop_all(children: list[Child], out_lock: threading.Lock) -> None:
    # The servers go last, so workers can finish and hand back what they hold.
    for child in reversed(children):
        if child.name not in SERVERS:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    while any(c.group_alive() for c in children if c.name not in SERVERS):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for child in children:
        if child.name in SERVERS:
            child.terminate()
    while any(c.group_alive() for c in children) and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    for child in children:
        if child.group_alive():
            _say(out_lock, f"{child.name} did not stop in time; killing it")
            child.kill()
    for child in children:
        if child.pump is not None:
            child.pump.join(timeout=2)
    _say(out_lock, "stopped")


def _say(out_lock: threading.Lock, message: str) -> None:
    with out_lock:
        sys.stdout.write(f"{'pressroom':<9}| {message}\n")
        sys.stdout.flush()
