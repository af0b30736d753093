"""Alembic environment: runs against the connection ``shared.migrate`` hands over."""

from alembic import context

from shared import models  # noqa: F401  (registers every table on Base.metadata)
from shared.db import Base

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
