"""outbox: index pending events by position alone

The pending index was keyed by (article_id, position). Article ids are random, so every
event written dirtied a random page of it, which cost the archive sweep a fifth of its
time. The relay finds an article's pending events through ix_outbox_article_id (an
article has a handful of events); what needs a pending index is the sweep's scan in
position order, and that one is appended to at its right edge.

Revision ID: 7c1e2f0a9b3d
Revises: 4b4d5b651d09
Create Date: 2026-11-26 21:25:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c1e2f0a9b3d"
down_revision: str | None = "4b4d5b651d09"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("relayed_at IS NULL")


def upgrade() -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["position"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["article_id", "position"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )
