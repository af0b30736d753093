"""Full-text search documents in a table of their own, kept by triggers.

An index on the search expression over ``articles`` took a new entry, its document stemmed
afresh, whenever a story's row changed: archiving a story (a status change, which no
PostgreSQL row update can make in place while indexes name ``status``) cost 0.45 ms instead
of 0.02 ms for a 2 KB body, most of the archive sweep's time. Here a story's document is
computed when it is created and when its title, summary or body change, and nothing else
touches it. Triggers rather than the writers keep it, so the API, the import and any SQL of
an operator's all do.

Revision ID: 0190
Revises: 0180
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0190"
down_revision: str | None = "0180"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration keeps meaning what it meant when written.
DOCUMENT = (
    "setweight(to_tsvector('english', {row}title), 'A')"
    " || setweight(to_tsvector('english', {row}summary), 'B')"
    " || setweight(to_tsvector('english', {row}body), 'D')"
)
OLD_INDEX = (
    "((setweight(to_tsvector('english'::regconfig, title::text), 'A'::\"char\")"
    " || setweight(to_tsvector('english'::regconfig, summary), 'B'::\"char\"))"
    " || setweight(to_tsvector('english'::regconfig, body), 'D'::\"char\"))"
)

# New stories, a statement's at a time (an import's COPY or a batch is one pass).
ON_INSERT = f"""
CREATE FUNCTION pressroom_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO article_search (article_id, document)
    SELECT id, {DOCUMENT.format(row="")} FROM inserted;
    RETURN NULL;
END
$$;
CREATE TRIGGER article_search_inserted AFTER INSERT ON articles
REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
EXECUTE FUNCTION pressroom_search_inserted();
"""
# An edit of what search reads (an UPDATE trigger with a column list takes no transition
# table, so row by row: editors' edits come one story at a time).
ON_EDIT = f"""
CREATE FUNCTION pressroom_search_edited() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE article_search SET document = {DOCUMENT.format(row="NEW.")}
    WHERE article_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER article_search_edited AFTER UPDATE OF title, summary, body ON articles
FOR EACH ROW WHEN (
    OLD.title IS DISTINCT FROM NEW.title
    OR OLD.summary IS DISTINCT FROM NEW.summary
    OR OLD.body IS DISTINCT FROM NEW.body
)
EXECUTE FUNCTION pressroom_search_edited();
"""


def upgrade() -> None:
    op.create_table(
        "article_search",
        sa.Column("article_id", sa.String(length=36), nullable=False),
        sa.Column("document", postgresql.TSVECTOR(), nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["articles.id"],
            name=op.f("fk_article_search_article_id_articles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("article_id", name=op.f("pk_article_search")),
    )
    op.execute(
        f"INSERT INTO article_search (article_id, document)"
        f" SELECT id, {DOCUMENT.format(row='')} FROM articles"
    )
    op.create_index(
        "ix_article_search_document", "article_search", ["document"], postgresql_using="gin"
    )
    op.drop_index("ix_articles_search", table_name="articles")
    op.execute(ON_INSERT)
    op.execute(ON_EDIT)


def downgrade() -> None:
    op.execute("DROP TRIGGER article_search_edited ON articles")
    op.execute("DROP FUNCTION pressroom_search_edited()")
    op.execute("DROP TRIGGER article_search_inserted ON articles")
    op.execute("DROP FUNCTION pressroom_search_inserted()")
    op.execute(f"CREATE INDEX ix_articles_search ON articles USING gin ({OLD_INDEX})")
    op.drop_table("article_search")
