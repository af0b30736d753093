"""Messages the publisher asks the notifier to send: confirmation emails and test events.
No Flask in here: domain code writes the rows, views wake the sender.

The publisher only writes the delivery row, in the caller's transaction; the notifier sends
it. After the commit, :func:`wake_sender` asks the notifier to look now; if the broker is
away, beat's ``notifier.send`` (every few seconds) finds the row anyway.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from shared.bus import NOTIFIER, NOTIFIER_SEND_TASK
from shared.db import new_id, utcnow
from shared.models import Delivery, DeliveryStatus

log = logging.getLogger(__name__)


def add_delivery(
    session: Session,
    channel: str,
    destination_id: str,
    kind: str,
    payload: dict[str, Any],
    event_id: str | None = None,
) -> Delivery:
    """A message due now, in the caller's transaction. Its content is ``payload`` (there is
    no outbox event behind it); ``event_id`` is its unique key and, for a webhook, the
    ``webhook-id`` the receiver deduplicates on."""
    now = utcnow()
    delivery = Delivery(
        event_id=event_id or new_id(),
        channel=channel,
        destination_id=destination_id,
        kind=kind,
        payload=payload,
        status=DeliveryStatus.PENDING,
        attempts=0,
        due_at=now,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery


def wake_sender(celery: Any, channel: str) -> None:
    """Ask the notifier to send due ``channel`` deliveries now; call it after the commit.

    Best effort, and quick to give up: the request that committed the row has done its
    part, and a broker that does not answer must not hold it (kombu's own connection retry
    would wait two seconds)."""
    try:
        with celery.pool.acquire(block=True, timeout=1) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            celery.send_task(
                NOTIFIER_SEND_TASK,
                args=[channel],
                queue=NOTIFIER,
                retry=False,
                ignore_result=True,
                connection=connection,
            )
    except (KombuError, redis.RedisError, OSError) as exc:
        log.warning("could not wake the notifier's %s sender (beat will): %s", channel, exc)
