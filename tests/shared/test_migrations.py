"""The migrations build the schema the models describe, and can be walked down and up."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, String, column, insert, inspect, select, table

from shared.db import Base, Database, UTCDateTime, new_id
from shared.events import ARTICLE_PUBLISHED, envelope_of, make_envelope
from shared.migrate import alembic_config, upgrade
from shared.models import OutboxEvent
from tests.conftest import empty_database


def test_migrated_schema_matches_the_models(database):  # type: ignore[no-untyped-def]
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migrations_walk_down_to_nothing_and_back_up(tmp_path):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'walk.db'}")
    upgrade(db.engine)
    config = alembic_config(db.engine)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(db.engine)
    assert set(Base.metadata.tables) <= set(inspect(db.engine).get_table_names())
    db.dispose()


# The outbox as it was before its rows held their event's data alone.
ENVELOPES_STORED = "f2b6d8a0c4e1"
OLD_OUTBOX = table(
    "outbox",
    column("event_id", String),
    column("type", String),
    column("article_id", String),
    column("envelope", JSON),
    column("created_at", UTCDateTime),
    column("attempts"),
)


def test_outbox_events_keep_their_envelopes_through_the_data_migration(tmp_path):  # type: ignore[no-untyped-def]
    written = datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC)
    data = {"article_id": new_id(), "version": 3, "title": 'Dès l\'aube "quoted" 🗞'}
    envelope = make_envelope(ARTICLE_PUBLISHED, {**data, "tags": ["a", "b"]}, time=written)
    old_row = {
        "event_id": envelope["id"],
        "type": ARTICLE_PUBLISHED,
        "article_id": data["article_id"],
        "envelope": envelope,
        "created_at": written,
        "attempts": 0,
    }
    with empty_database(tmp_path) as url:
        db = Database(url)
        upgrade(db.engine, ENVELOPES_STORED)
        with db.engine.begin() as connection:
            connection.execute(insert(OLD_OUTBOX), old_row)

        upgrade(db.engine)
        with db.sessionmaker() as session:
            assert envelope_of(session.scalars(select(OutboxEvent)).one()) == envelope

        config = alembic_config(db.engine)
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, ENVELOPES_STORED)
        with db.engine.connect() as connection:
            stored = connection.scalar(select(OLD_OUTBOX.c.envelope))
        assert (json.loads(stored) if isinstance(stored, str) else stored) == envelope
        db.dispose()
