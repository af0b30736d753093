"""Full-text search over articles: a GIN index on title, summary and body.

``?q=`` was ``ILIKE '%q%'`` on title and summary: ``%`` and ``_`` matched every story, the
body was never searched and nothing was ranked. The index is on the expression the queries
use (``shared.models.article.SEARCH_DOCUMENT``), with the ``english`` configuration that
every PostgreSQL has built in.

Revision ID: 0002
Revises: 0100
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0100"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration keeps meaning what it meant when written.
SEARCH_DOCUMENT = (
    "((setweight(to_tsvector('english'::regconfig, title::text), 'A'::\"char\")"
    " || setweight(to_tsvector('english'::regconfig, summary), 'B'::\"char\"))"
    " || setweight(to_tsvector('english'::regconfig, body), 'D'::\"char\"))"
)


def upgrade() -> None:
    op.execute(f"CREATE INDEX ix_articles_search ON articles USING gin ({SEARCH_DOCUMENT})")


def downgrade() -> None:
    op.drop_index("ix_articles_search", table_name="articles")
