"""Work to do after a commit: rows with a due time that worker processes claim and lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, UTCDateTime, utcnow


class DueWork(Base):
    """One piece of slow work (a recomputation, a batch of sends), keyed so that asking
    again for work already waiting asks once.

    ``generation`` counts the requests: a worker that finished generation 3 while a fourth
    request came in leaves the row for another run instead of deleting it. ``leased_until``
    is when a claimed row that was never finished (its worker died) becomes due again.
    """

    __tablename__ = "due_work"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("kind", "key"),
        Index("ix_due_work_due", "kind", "due_at"),
    )


class FailedWork(Base):
    """Work that ran out of attempts, with its last error, for ops to read and retry."""

    __tablename__ = "failed_work"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=text("now()")
    )
