"""Who is told about new stories, and the record of every message sent to them.

The publisher writes subscriptions and webhook endpoints; the notifier reads them and owns
the deliveries: one row per (event, channel, destination, kind), unique, so a redelivered
event never makes a second message, and each row says whether its message went.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, UTCDateTime, new_id, utcnow


class SubscriptionStatus(StrEnum):
    PENDING = "pending"  # waiting for the confirmation link to be followed
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class Subscription(Base):
    """An email address and the topics it wants (none: everything).

    ``requested_*`` hold the topics of the latest request until its confirmation link is
    followed: whoever can send a form cannot change a confirmed reader's topics."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised, lower case
    sections: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    requested_sections: Mapped[list[str]] = mapped_column(JSON, default=list)
    requested_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default=SubscriptionStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    """A system that wants events, signed per Standard Webhooks.

    After a rotation the previous secret signs too until ``previous_secret_until``."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    sections: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Channel(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


class DeliveryKind(StrEnum):
    STORY = "story"  # a new story (email) or its article.published event (webhook)
    CORRECTION = "correction"
    RETRACTION = "retraction"
    CONFIRM = "confirm"  # a double opt-in email
    TEST = "test"  # an admin's test event


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at due_at; retried ones come back here
    SENT = "sent"
    FAILED = "failed"  # permanently: no retry can help
    DEAD = "dead"  # out of attempts; `pressroom dlq replay` sends it again
    CANCELLED = "cancelled"  # its story was retracted, its subscriber left


class Delivery(Base):
    """One message to one destination. Rows with a due time, claimed under a lease by any
    number of notifier processes (:mod:`shared.work`); the message's content is the event
    in the outbox (``event_id``), or ``payload`` for what has no event (confirmations,
    tests)."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    destination_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    article_id: Mapped[str | None] = mapped_column(String(36), index=True)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("event_id", "channel", "destination_id", "kind"),
        Index(
            "ix_deliveries_due",
            "channel",
            "due_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )


class DeliveryAttempt(Base):
    """Each try of a delivery: when, how it went, what the other side answered."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))  # sent, retry, failed, gone
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(1000))
    elapsed_ms: Mapped[int | None] = mapped_column(Integer)
