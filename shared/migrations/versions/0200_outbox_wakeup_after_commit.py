"""The relays are woken after the writer's commit, no longer by a trigger inside it.

The trigger's ``NOTIFY`` made every transaction that wrote an event take PostgreSQL's
notification lock and hold it through its WAL flush, so editors' commits were flushed one
after another instead of together: with 32 editors at once, five of their backends on
average waited for that lock. The writers now notify after their commit
(``shared.bus.wake_relays``).

Revision ID: 0200
Revises: 0190
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0200"
down_revision: str | None = "0190"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION pressroom_outbox_notify()")


def downgrade() -> None:
    op.execute(
        "CREATE FUNCTION pressroom_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM pg_notify('pressroom_outbox', ''); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox"
        " FOR EACH STATEMENT EXECUTE FUNCTION pressroom_outbox_notify()"
    )
