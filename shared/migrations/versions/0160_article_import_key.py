"""An imported article's key in its file, so a rerun of ``pressroom import`` skips it.

Numbered 0160 to keep clear of revisions others number after 0002.

Revision ID: 0160
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0160"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("articles", sa.Column("import_key", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_articles_import_key",
        "articles",
        ["import_key"],
        unique=True,
        postgresql_where=sa.text("import_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_articles_import_key", table_name="articles")
    op.drop_column("articles", "import_key")
