"""Dead letters can be discarded, with who and why.

Revision ID: 0170
Revises: 0160
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db

revision: str = "0170"
down_revision: str | None = "0160"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("discarded_at", shared.db.UTCDateTime(timezone=True)))
    op.add_column("dead_letters", sa.Column("discarded_by", sa.String(length=200)))
    op.add_column("dead_letters", sa.Column("discard_reason", sa.String(length=500)))


def downgrade() -> None:
    op.drop_column("dead_letters", "discard_reason")
    op.drop_column("dead_letters", "discarded_by")
    op.drop_column("dead_letters", "discarded_at")
