"""Settings from the environment: the only module that reads ``os.environ``."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import limits

from shared.errors import ConfigError

NEVER = None  # an archive age of "never" in ARCHIVE_POLICY


def parse_archive_policy(text: str) -> dict[str, int | None]:
    """Parse ``news=30,sport=90,features=never`` into ``{section: days or None}``."""
    policy: dict[str, int | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        section, sep, age = (s.strip() for s in part.partition("="))
        if not sep or not section:
            raise ConfigError(f"ARCHIVE_POLICY: {part!r} is not section=days")
        if age.lower() == "never":
            policy[section] = NEVER
        elif age.isdigit() and int(age) > 0:
            policy[section] = int(age)
        else:
            raise ConfigError(
                f"ARCHIVE_POLICY: {part!r} needs a positive number of days or 'never'"
            )
    return policy


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs given in the common ``postgresql://`` form."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str | None  # None: the embedded PostgreSQL under var_dir
    redis_url: str | None
    public_base_url: str = "http://127.0.0.1:8000"
    secret_key: str = field(default="", repr=False)
    smtp_url: str | None = None
    archive_after_days: int = 180
    archive_policy: dict[str, int | None] = field(default_factory=dict)
    archive_sweep_seconds: int = 600
    archive_sweep_chunk: int = 2000
    archive_sweep_workers: int = 2
    outbox_sweep_seconds: int = 5
    schedule_sweep_seconds: int = 5
    redeliver_after_seconds: int = 120
    webhook_allow_private: bool = False
    mail_from: str = ""
    # seconds before each retry of a failed delivery (NOTIFY_RETRY_SCHEDULE)
    notify_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    confirm_expires_hours: int = 72
    delivery_lease_seconds: int = 120  # a killed sender's batch is due again after this
    related_k: int = 5  # stories in each "Also read" list
    related_section_boost: float = 0.05  # added to the score of a story of the same section
    related_tag_boost: float = 0.02  # per shared tag, up to three
    related_recency: float = 0.1  # share of the score lost by a story far apart in time
    related_refit_growth: float = 0.2  # refit once the corpus grew by this share
    webhook_disable_after_days: int = 5
    # per client address, for the subscribe endpoints (flask-limiter's notation)
    subscribe_rate_limit: str = "5/minute;30/hour"
    port: int = 8000
    web_workers: int = 2
    worker_concurrency: int = 2
    log_level: str = "INFO"

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def postgres_dir(self) -> Path:
        """The embedded PostgreSQL's data directory (and its socket's)."""
        return self.var_dir / "postgres"

    @property
    def db_url(self) -> str:
        """The database to connect to: DATABASE_URL, or the embedded server's socket."""
        if self.database_url is not None:
            return self.database_url
        return f"postgresql+psycopg://postgres@/postgres?host={self.postgres_dir}"

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def redis_socket(self) -> Path:
        return self.var_dir / "redis.sock"

    @property
    def broker_url(self) -> str:
        """The Celery broker: REDIS_URL, or the embedded server's unix socket."""
        return self.redis_url or f"redis+socket://{self.redis_socket}"

    @property
    def redis_client_url(self) -> str:
        """The same server in the form redis-py understands."""
        return self.redis_url or f"unix://{self.redis_socket}"

    def secrets(self) -> list[str]:
        """What no log line may show: the passwords in the service URLs, the secret key."""
        found = [self.secret_key]
        for url in (self.database_url, self.redis_url, self.smtp_url):
            if url and (password := urlsplit(url).password):
                found += [password, quote(password, safe="")]
        return [s for s in found if s]

    def archive_age_days(self, section: str | None) -> int | None:
        """Days after publication at which a story of this section is archived (None: never)."""
        if section is not None and section in self.archive_policy:
            return self.archive_policy[section]
        return self.archive_after_days

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        var_dir = Path(env.get("VAR_DIR") or "var").resolve()
        port = _int(env, "PORT", 8000)
        public_base_url = (env.get("PUBLIC_BASE_URL") or f"http://127.0.0.1:{port}").rstrip("/")
        return cls(
            var_dir=var_dir,
            database_url=_database_url(env.get("DATABASE_URL")),
            redis_url=env.get("REDIS_URL") or None,
            public_base_url=public_base_url,
            secret_key=env.get("SECRET_KEY") or _stored_secret(var_dir),
            smtp_url=env.get("SMTP_URL") or None,
            archive_after_days=_int(env, "ARCHIVE_AFTER_DAYS", 180),
            archive_policy=parse_archive_policy(env.get("ARCHIVE_POLICY", "")),
            archive_sweep_seconds=_int(env, "ARCHIVE_SWEEP_SECONDS", 600),
            archive_sweep_chunk=_int(env, "ARCHIVE_SWEEP_CHUNK", 2000),
            archive_sweep_workers=_int(env, "ARCHIVE_SWEEP_WORKERS", 2),
            outbox_sweep_seconds=_int(env, "OUTBOX_SWEEP_SECONDS", 5),
            schedule_sweep_seconds=_int(env, "SCHEDULE_SWEEP_SECONDS", 5),
            redeliver_after_seconds=_int(env, "REDELIVER_AFTER_SECONDS", 120),
            webhook_allow_private=_bool(env.get("WEBHOOK_ALLOW_PRIVATE")),
            mail_from=env.get("MAIL_FROM") or f"Pressroom <news@{_host(public_base_url)}>",
            notify_retry_schedule=_seconds_list(env, "NOTIFY_RETRY_SCHEDULE")
            or cls.notify_retry_schedule,
            confirm_expires_hours=_int(env, "CONFIRM_EXPIRES_HOURS", 72),
            delivery_lease_seconds=_int(env, "DELIVERY_LEASE_SECONDS", 120),
            related_k=_int(env, "RELATED_K", 5),
            related_section_boost=_float(env, "RELATED_SECTION_BOOST", 0.05),
            related_tag_boost=_float(env, "RELATED_TAG_BOOST", 0.02),
            related_recency=_float(env, "RELATED_RECENCY", 0.1),
            related_refit_growth=_float(env, "RELATED_REFIT_GROWTH", 0.2),
            webhook_disable_after_days=_int(env, "WEBHOOK_DISABLE_AFTER_DAYS", 5),
            subscribe_rate_limit=_rate_limit(env, "SUBSCRIBE_RATE_LIMIT", cls.subscribe_rate_limit),
            port=port,
            web_workers=_int(env, "WEB_CONCURRENCY", 2),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", 2),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
        )


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None


def _host(url: str) -> str:
    host = urlsplit(url).hostname or "localhost"
    return "localhost" if host.replace(".", "").isdigit() else host


def _seconds_list(env: Mapping[str, str], name: str) -> tuple[float, ...]:
    raw = (env.get(name) or "").strip()
    if not raw:
        return ()
    try:
        values = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be seconds separated by commas, not {raw!r}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{name} cannot hold a negative delay")
    return values


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        limits.parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} must be limits like '5/minute;30/hour', not {raw!r}") from None
    return raw


def _database_url(given: str | None) -> str | None:
    if not given:
        return None
    url = normalise_database_url(given)
    if not url.startswith("postgresql"):
        raise ConfigError("DATABASE_URL must be a PostgreSQL URL (postgresql://...)")
    return url


def _stored_secret(var_dir: Path) -> str:
    """The secret key generated into ``VAR_DIR`` on first use, so restarts keep links valid."""
    path = var_dir / "secret_key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
                fh.write(secrets.token_urlsafe(48))
        except FileExistsError:
            pass  # another process of the stack wrote it first
    return path.read_text().strip()
