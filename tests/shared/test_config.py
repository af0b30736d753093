"""Settings from the environment."""

from __future__ import annotations

import pytest

from shared.config import Settings, parse_archive_policy
from shared.errors import ConfigError


def test_archive_policy_parses_days_and_never():
    assert parse_archive_policy("news=30, sport=90,features=never") == {
        "news": 30,
        "sport": 90,
        "features": None,
    }


@pytest.mark.parametrize(
    ("text", "bad_part"),
    [("news=thirty", "news=thirty"), ("news", "news"), ("=5", "=5"), ("sport=0", "sport=0")],
)
def test_a_bad_policy_names_the_bad_part(text, bad_part):
    with pytest.raises(ConfigError, match=bad_part):
        parse_archive_policy(text)


def test_defaults_live_under_var_dir(tmp_path):
    settings = Settings.from_env({"VAR_DIR": str(tmp_path)})
    assert settings.embedded_database
    assert (
        settings.db_url == f"postgresql+psycopg://postgres@/postgres?host={tmp_path / 'postgres'}"
    )
    assert settings.broker_url == f"redis+socket://{tmp_path / 'redis.sock'}"
    assert settings.archive_age_days("news") == 180
    assert len(settings.secret_key) > 40
    assert Settings.from_env({"VAR_DIR": str(tmp_path)}).secret_key == settings.secret_key


def test_postgres_urls_use_psycopg_3(tmp_path):
    env = {"VAR_DIR": str(tmp_path), "DATABASE_URL": "postgresql://u@h:5432/d"}
    assert Settings.from_env(env).database_url == "postgresql+psycopg://u@h:5432/d"


def test_a_database_url_that_is_not_postgresql_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="PostgreSQL"):
        Settings.from_env({"VAR_DIR": str(tmp_path), "DATABASE_URL": "sqlite:///x.db"})


def test_section_policy_overrides_the_default_age(tmp_path):
    env = {"VAR_DIR": str(tmp_path), "ARCHIVE_POLICY": "news=30,features=never"}
    settings = Settings.from_env(env)
    assert settings.archive_age_days("news") == 30
    assert settings.archive_age_days("features") is None
    assert settings.archive_age_days("sport") == 180


def test_a_bad_number_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="ARCHIVE_AFTER_DAYS"):
        Settings.from_env({"VAR_DIR": str(tmp_path), "ARCHIVE_AFTER_DAYS": "soon"})


def test_the_subscribe_rate_limit_is_configurable(tmp_path):
    assert Settings.from_env({"VAR_DIR": str(tmp_path)}).subscribe_rate_limit == "5/minute;30/hour"
    env = {"VAR_DIR": str(tmp_path), "SUBSCRIBE_RATE_LIMIT": "2/second"}
    assert Settings.from_env(env).subscribe_rate_limit == "2/second"


def test_a_rate_limit_that_does_not_parse_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="SUBSCRIBE_RATE_LIMIT"):
        Settings.from_env({"VAR_DIR": str(tmp_path), "SUBSCRIBE_RATE_LIMIT": "lots"})
