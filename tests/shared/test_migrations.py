"""The migrations build the schema the models describe, and can be walked down and up."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import Base, Database
from shared.migrate import alembic_config, upgrade
from tests.conftest import empty_database


def test_migrated_schema_matches_the_models(database):  # type: ignore[no-untyped-def]
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migrations_walk_down_to_nothing_and_back_up(postgres_server_url):  # type: ignore[no-untyped-def]
    with empty_database(postgres_server_url) as url:
        _walk(Database(url))


def _walk(db: Database) -> None:
    upgrade(db.engine)
    config = alembic_config(db.engine)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(db.engine)
    assert set(Base.metadata.tables) <= set(inspect(db.engine).get_table_names())
    db.dispose()
