"""The transactional outbox, the consumers' ledger and the dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ColumnElement, Index, Integer, String, Text, and_, text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, UTCDateTime, utcnow


class OutboxEvent(Base):
    """An event written in the same transaction as the change it describes.

    ``position`` orders events as they were written; ``relayed_at`` is set once the relay
    has handed the event to every subscribed queue. The row holds the event's ``data``;
    its envelope's other attributes are the row's columns (``event_id``, ``type``,
    ``created_at`` for the time, ``article_id`` for the subject), put around the data as
    it is relayed (:func:`shared.events.envelope_of`).
    """

    __tablename__ = "outbox"

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    article_id: Mapped[str] = mapped_column(String(36), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    relayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # by the relay's search

    __table_args__ = (
        # By position alone: appended at its right edge (article ids are random).
        Index(
            "ix_outbox_pending",
            "position",
            postgresql_where=text("relayed_at IS NULL"),
        ),
    )


class RedeliveryMark(Base):
    """Per consumer, the outbox position up to which every relayed event was consumed (or
    dead-lettered): the relay's search for lost messages starts after it."""

    __tablename__ = "redelivery_marks"

    consumer: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)


class ConsumedEvent(Base):
    """The consumer ledger: one row per (event, consumer), written with the consumer's effect."""

    __tablename__ = "consumed_events"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    article_id: Mapped[str | None] = mapped_column(String(36), index=True)
    consumed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeadLetter(Base):
    """A message a consumer could not handle, kept with the reason for ops to read and replay."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(32), index=True)
    event_id: Mapped[str | None] = mapped_column(String(36))
    payload: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Discarded by ops, who said why: a letter that can never succeed, no longer counted.
    discarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    discarded_by: Mapped[str | None] = mapped_column(String(200))
    discard_reason: Mapped[str | None] = mapped_column(String(500))

    @classmethod
    def open(cls) -> ColumnElement[bool]:
        """Letters still waiting for ops: neither replayed nor discarded."""
        return and_(cls.replayed_at.is_(None), cls.discarded_at.is_(None))
