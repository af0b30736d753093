"""articles: index published stories by their own archive date (status, archive_after)

The sweep finds stories due by age on (status, published_at), up to the oldest age of
any section, and stories with an ``archive_after`` of their own on this index: one
condition for both made the walk that found the last due stories go on through every
younger published one, a third of a second at a million articles, holding SQLite's write
lock while editors waited. Partial, on the stories that have such a date: the rest (most)
cost it no entry, and archiving one (a new row version on PostgreSQL) writes none.

Revision ID: c4a8e1f2d3b5
Revises: b3f1c7d9e2a4
Create Date: 2026-11-27 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4a8e1f2d3b5"
down_revision: str | None = "b3f1c7d9e2a4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_articles_status_archive_after",
        "articles",
        ["status", "archive_after"],
        sqlite_where=sa.text("archive_after IS NOT NULL"),
        postgresql_where=sa.text("archive_after IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_articles_status_archive_after", table_name="articles")
