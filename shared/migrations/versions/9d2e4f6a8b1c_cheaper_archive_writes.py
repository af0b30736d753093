"""articles and history: less to keep up for each story the archive sweep rewrites

- The (status, publish_at) index goes: every story the sweep archived rewrote an entry in
  it, and its one reader, beat's publish-due, finds the few scheduled stories just as well
  through (status, published_at), whose first column is the same.
- article_history loses its foreign key to articles. The trail is written only in the
  transaction that changes its article and nothing deletes articles; the key's check cost a
  PostgreSQL sweep an eighth of its time, and an audit trail should outlive, not cascade
  with, what it audits.

Revision ID: 9d2e4f6a8b1c
Revises: 7c1e2f0a9b3d
Create Date: 2026-11-27 03:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9d2e4f6a8b1c"
down_revision: str | None = "7c1e2f0a9b3d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HISTORY_FK = "fk_article_history_article_id_articles"


def upgrade() -> None:
    op.drop_index("ix_articles_status_publish_at", table_name="articles")
    with op.batch_alter_table("article_history") as batch:
        batch.drop_constraint(HISTORY_FK, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("article_history") as batch:
        batch.create_foreign_key(HISTORY_FK, "articles", ["article_id"], ["id"], ondelete="CASCADE")
    op.create_index("ix_articles_status_publish_at", "articles", ["status", "publish_at"])
