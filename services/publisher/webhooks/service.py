"""What admins do to webhook endpoints, as functions of a session: no Flask in here.

The notifier does the sending (signed per Standard Webhooks); here an endpoint is
registered after its URL is checked, given secrets, sent a test, switched off and on, and
its deliveries are read back with every attempt.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.publisher.deliveries import add_delivery
from shared.db import new_id, utcnow
from shared.errors import Conflict
from shared.events import SOURCE, SPECVERSION
from shared.models import Channel, Delivery, DeliveryAttempt, DeliveryKind, WebhookEndpoint
from shared.webhooks import Resolver, check_target, new_secret, system_resolve

# After a rotation the old secret signs too for this long, so receivers can switch over.
ROTATION_OVERLAP = timedelta(hours=24)
TEST_EVENT_TYPE = "pressroom.test"
DISABLED_BY_ADMIN = "disabled by an admin"


class BadCursor(ValueError):
    """A deliveries cursor that is not one this API handed out."""


def register(
    session: Session,
    data: dict[str, Any],
    allow_private: bool,
    resolve: Resolver = system_resolve,
    now: datetime | None = None,
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the caller shows it once). Its URL is checked
    first, before anything is written: :class:`shared.webhooks.UnsafeTarget` for one that
    is not plain http(s) or leads to a private address, ``UnresolvableTarget`` for a host
    that does not resolve. (The notifier checks every address again each time it sends.)"""
    url = data["url"].strip()
    check_target(url, allow_private, resolve)
    endpoint = WebhookEndpoint(
        id=new_id(),
        url=url,
        event_types=list(dict.fromkeys(data["event_types"])),
        sections=data["sections"],
        tags=data["tags"],
        secret=new_secret(),
        enabled=True,
        created_at=now or utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def rotate(endpoint: WebhookEndpoint, now: datetime | None = None) -> None:
    """A new secret; the one it replaces keeps signing for ``ROTATION_OVERLAP``. (Rotating
    again within that time retires the oldest secret at once: two sign, never three.)"""
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = (now or utcnow()) + ROTATION_OVERLAP
    endpoint.secret = new_secret()


def send_test(session: Session, endpoint: WebhookEndpoint, now: datetime | None = None) -> Delivery:
    """Queue a test event to the endpoint: a CloudEvents envelope with empty data, whose id
    is its ``webhook-id``."""
    if not endpoint.enabled:
        raise Conflict(
            "The endpoint is disabled; enable it to send it a test.", "endpoint_disabled"
        )
    event_id = new_id()
    envelope = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": SOURCE,
        "type": TEST_EVENT_TYPE,
        "time": (now or utcnow()).isoformat(),
        "data": {},
    }
    return add_delivery(
        session, Channel.WEBHOOK, endpoint.id, DeliveryKind.TEST, envelope, event_id=event_id
    )


def disable(endpoint: WebhookEndpoint, reason: str | None) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason or DISABLED_BY_ADMIN


def enable(endpoint: WebhookEndpoint) -> None:
    """On again, with a clean slate: the failing streak that may have disabled it is gone."""
    endpoint.enabled = True
    endpoint.disabled_reason = None
    endpoint.failing_since = None


def deliveries(
    session: Session, endpoint_id: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The endpoint's deliveries, newest first, each with its attempts (oldest first), and
    the cursor of the next page (None on the last)."""
    query = select(Delivery).where(
        Delivery.channel == Channel.WEBHOOK, Delivery.destination_id == endpoint_id
    )
    if cursor is not None:
        query = query.where(Delivery.id < _position(cursor))
    rows = list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    attempts: dict[int, list[DeliveryAttempt]] = {row.id: [] for row in page}
    if page:
        for attempt in session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_(list(attempts)))
            .order_by(DeliveryAttempt.at, DeliveryAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    items = [delivery_view(row, attempts[row.id]) for row in page]
    return items, str(page[-1].id) if more else None


def _position(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 18:
        raise BadCursor(cursor)
    return int(cursor)


def delivery_view(row: Delivery, attempts: list[DeliveryAttempt]) -> dict[str, Any]:
    """A delivery as DeliverySchema shows it: its columns and its attempts."""
    columns = {column.key: getattr(row, column.key) for column in Delivery.__table__.columns}
    return {**columns, "attempts": attempts}
