"""What readers do to their subscription, as functions of a session: no Flask in here.

Double opt-in: a request only records the topics asked for (``requested_*``) and queues a
confirmation email; the topics take effect when its signed link is followed. So whoever can
post a form can neither subscribe someone else nor change a confirmed reader's topics.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from services.publisher.deliveries import add_delivery
from shared.db import new_id, utcnow
from shared.models import (
    Channel,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Subscription,
    SubscriptionStatus,
)

S = SubscriptionStatus


def subscribe(
    session: Session,
    email: str,
    sections: list[str],
    tags: list[str],
    now: datetime | None = None,
) -> str:
    """Record a request for ``email`` (normalised) and queue its confirmation email; returns
    the subscription's id. One statement whether the address is new or known (two requests
    for a new address at once make one subscriber, never a conflict). A reader who had left
    is pending again; a confirmed one keeps getting the old topics until confirming."""
    now = now or utcnow()
    insert = postgresql.insert(Subscription).values(
        id=new_id(),
        email=email,
        sections=[],
        tags=[],
        requested_sections=sections,
        requested_tags=tags,
        status=S.PENDING,
        created_at=now,
        updated_at=now,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[Subscription.email],
        set_={
            "requested_sections": insert.excluded.requested_sections,
            "requested_tags": insert.excluded.requested_tags,
            "status": case(
                (Subscription.status == S.UNSUBSCRIBED, S.PENDING.value),
                else_=Subscription.status,
            ),
            "updated_at": now,
        },
    ).returning(Subscription.id)
    subscription_id: str = session.execute(upsert).scalar_one()
    add_delivery(session, Channel.EMAIL, subscription_id, DeliveryKind.CONFIRM, {})
    return subscription_id


def confirm(
    session: Session, subscription_id: str, now: datetime | None = None
) -> Subscription | None:
    """Follow a confirmation link: the subscription takes the topics last asked for.
    Returns it (None if it is gone). Harmless twice. A reader who left since the link was
    sent stays unsubscribed: only a new request (and its link) brings them back."""
    now = now or utcnow()
    subscription = session.get(Subscription, subscription_id, with_for_update=True)
    if subscription is None or subscription.status == S.UNSUBSCRIBED:
        return subscription
    if subscription.status != S.CONFIRMED:
        subscription.status = S.CONFIRMED
        subscription.confirmed_at = now
        subscription.unsubscribed_at = None
    subscription.sections = list(subscription.requested_sections)
    subscription.tags = list(subscription.requested_tags)
    subscription.updated_at = now
    return subscription


def unsubscribe(session: Session, subscription_id: str, now: datetime | None = None) -> bool:
    """Leave at once: no further email, and what is waiting to go is cancelled. Returns
    whether there was such a subscription. Harmless twice."""
    now = now or utcnow()
    subscription = session.get(Subscription, subscription_id, with_for_update=True)
    if subscription is None:
        return False
    if subscription.status != S.UNSUBSCRIBED:
        subscription.status = S.UNSUBSCRIBED
        subscription.unsubscribed_at = now
        subscription.updated_at = now
    session.execute(
        update(Delivery)
        .where(
            Delivery.channel == Channel.EMAIL,
            Delivery.destination_id == subscription.id,
            Delivery.status == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.CANCELLED, last_error="the subscriber unsubscribed")
    )
    return True
