"""Sending what the fan-out wrote: due deliveries, claimed in batches under a lease.

Any number of notifier processes run this side by side (:func:`shared.work.lease_due`
skips rows another holds). A batch goes over ``EMAIL_CONNECTIONS`` SMTP connections (or one
HTTP client with ``WEBHOOK_CONCURRENCY`` POSTs in flight), and each message's outcome is
committed the moment it is known, before that connection sends the next: a worker killed
mid-batch leaves every message it sent marked sent, and the rest due again when the lease
runs out. The messages that can go twice are those a server accepted in the instant before
their worker died, before that commit: at most one per connection or POST in flight.

Each outcome is one statement, committed on its own without waiting for the WAL to reach
disk (``synchronous_commit = off``): a worker that dies loses nothing by it, only a crash of
PostgreSQL itself could forget the last fraction of a second of outcomes (and then resend
those messages).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, literal, select, update

from services.notifier.channels.email import (
    Letterhead,
    Mailer,
    Story,
    confirmation_email,
    correction_email,
    new_story_email,
)
from services.notifier.channels.webhook import Verdict, WebhookMessage, WebhookTransport
from shared import subscriber_tokens as tokens
from shared.config import Settings
from shared.db import Database, make_engine, utcnow
from shared.errors import PermanentError
from shared.events import envelope_of
from shared.models import (
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    OutboxEvent,
    Subscription,
    SubscriptionStatus,
    WebhookEndpoint,
)
from shared.models import DeliveryKind as K
from shared.work import lease_due, retry_delay

log = logging.getLogger(__name__)

BATCH = 200
WEBHOOK_CONCURRENCY = 4  # POSTs in flight per sender: each one a possible duplicate if killed
EMAIL_CONNECTIONS = 3  # SMTP connections per sender, each sending one message at a time
ROTATION_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt, as recorded."""

    verdict: Verdict
    error: str | None = None
    status_code: int | None = None
    elapsed_ms: int | None = None
    retry_after: float | None = None


@dataclass
class Batch:
    """The deliveries claimed together, with what they need loaded once.

    ``lease`` is the ``leased_until`` the claim wrote: the batch's rows are ours while they
    still carry it, and renewing it (:meth:`Sender._held`) says which still do."""

    rows: list[Any]
    events: dict[str, dict[str, Any]]  # event id -> envelope
    lease: datetime | None = None
    renewed: float = field(default_factory=time.monotonic)


class Sender:
    """Sends due deliveries of both channels; built once per worker process."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        mailer: Mailer,
        webhooks: WebhookTransport,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.db = db
        self.settings = settings
        self.mailer = mailer
        self.webhooks = webhooks
        self.clock = clock
        self.letterhead = Letterhead(settings.mail_from, settings.public_base_url)
        self.out_of_time = False  # the last send_due stopped at its budget
        self._outcomes = outcome_engine(db)

    def send_all(self, budget: float | None = None, batch: int = BATCH) -> int:
        """Both channels until neither has anything due, webhooks first: a batch of emails
        goes only when no webhook is due, so a few webhooks never wait behind a mailing of
        a hundred thousand (nor a thousand endpoints behind it, a batch at a time)."""
        started, attempts = time.monotonic(), 0
        self.out_of_time = False
        while True:
            if budget is not None and time.monotonic() - started >= budget:
                self.out_of_time = True
                return attempts
            sent = self._one_batch(Channel.WEBHOOK, batch) or self._one_batch(Channel.EMAIL, batch)
            if not sent:
                return attempts
            attempts += sent

    def _one_batch(self, channel: str, batch: int) -> int:
        claimed = self._claim(channel, batch)
        if claimed.rows:
            if channel == Channel.EMAIL:
                self._send_emails(claimed)
            else:
                self._send_webhooks(claimed)
        return len(claimed.rows)

    def send_due(self, channel: str, budget: float | None = None, batch: int = BATCH) -> int:
        """Send due deliveries of ``channel`` until none is left (or ``budget`` seconds
        have passed); returns how many attempts were made."""
        started, attempts = time.monotonic(), 0
        self.out_of_time = False
        while True:
            if budget is not None and time.monotonic() - started >= budget:
                self.out_of_time = True  # there may be more: the caller hands over
                break
            claimed = self._claim(channel, batch)
            if not claimed.rows:
                break
            attempts += len(claimed.rows)
            if channel == Channel.EMAIL:
                self._send_emails(claimed)
            else:
                self._send_webhooks(claimed)
        return attempts

    # -- claiming

    def _claim(self, channel: str, limit: int) -> Batch:
        rows = lease_due(
            self.db,
            Delivery,
            Delivery.channel == channel,
            Delivery.status == DeliveryStatus.PENDING,
            limit=limit,
            lease=self.settings.delivery_lease_seconds,
            returning=(
                Delivery.id,
                Delivery.event_id,
                Delivery.destination_id,
                Delivery.kind,
                Delivery.payload,
                Delivery.attempts,
                Delivery.leased_until,
            ),
        )
        event_ids = {row.event_id for row in rows if row.payload is None}
        events: dict[str, dict[str, Any]] = {}
        if event_ids:
            with self.db.session() as session:
                for outbox_row in session.execute(
                    select(
                        OutboxEvent.event_id,
                        OutboxEvent.type,
                        OutboxEvent.article_id,
                        OutboxEvent.data,
                        OutboxEvent.created_at,
                    ).where(OutboxEvent.event_id.in_(event_ids))
                ):
                    events[outbox_row.event_id] = envelope_of(outbox_row)
        return Batch(list(rows), events, rows[0].leased_until if rows else None)

    def _held(self, batch: Batch) -> Iterator[Any]:
        """The batch's rows one by one, as long as they are still ours. A slow batch renews
        its lease before a third of it has passed; rows whose lease ran out all the same
        (and that another sender may have claimed) are left alone, never sent twice."""
        lease = self.settings.delivery_lease_seconds
        remaining = list(batch.rows)
        while remaining:
            if time.monotonic() - batch.renewed > lease / 3:
                kept = self._renew(batch, [row.id for row in remaining])
                remaining = [row for row in remaining if row.id in kept]
                if not remaining:
                    return
            yield remaining.pop(0)

    def _renew(self, batch: Batch, ids: list[int]) -> set[int]:
        until = self.clock() + timedelta(seconds=self.settings.delivery_lease_seconds)
        with self.db.transaction() as session:
            kept = session.scalars(
                update(Delivery)
                .where(Delivery.id.in_(ids), Delivery.leased_until == batch.lease)
                .values(leased_until=until)
                .returning(Delivery.id)
            ).all()
        batch.lease, batch.renewed = until, time.monotonic()
        if len(kept) < len(ids):
            log.warning(
                "%d deliveries outlived their lease; left to their new holder", len(ids) - len(kept)
            )
        return set(kept)

    # -- email

    def _destinations(self, model: Any, batch: Batch) -> dict[str, Any]:
        """The batch's subscriptions or endpoints, by id, read once."""
        wanted = {row.destination_id for row in batch.rows}
        with self.db.session() as session:
            return {d.id: d for d in session.scalars(select(model).where(model.id.in_(wanted)))}

    def _send_emails(self, batch: Batch) -> None:
        """Over ``EMAIL_CONNECTIONS`` SMTP connections side by side, each taking the batch's
        next row when it is free: a message's round trips to the server overlap another's
        rendering and recording."""
        subscribers = self._destinations(Subscription, batch)
        rows = self._held(batch)
        taking = threading.Lock()

        def next_row() -> Any:
            with taking:
                return next(rows, None)

        connections = min(EMAIL_CONNECTIONS, len(batch.rows))
        with ThreadPoolExecutor(connections, thread_name_prefix="smtp") as pool:
            for done in [
                pool.submit(self._send_emails_over_one, next_row, subscribers, batch)
                for _ in range(connections)
            ]:
                done.result()

    def _send_emails_over_one(
        self, next_row: Callable[[], Any], subscribers: dict[str, Any], batch: Batch
    ) -> None:
        with self.mailer.open() as send:
            while (row := next_row()) is not None:
                subscriber = subscribers.get(row.destination_id)
                try:
                    message = self._email(row, subscriber, batch)
                except PermanentError as exc:
                    self._record(row, Outcome(Verdict.FAILED, str(exc)), cancel=True)
                    continue
                started = time.monotonic()
                try:
                    send(message)
                except PermanentError as exc:
                    self._record(row, Outcome(Verdict.FAILED, str(exc)))
                except Exception as exc:  # transient: the connection, a 4xx
                    self._record(row, Outcome(Verdict.RETRY, _short(exc)))
                else:
                    elapsed = int((time.monotonic() - started) * 1000)
                    self._record(row, Outcome(Verdict.DELIVERED, elapsed_ms=elapsed))

    def _email(self, row: Any, subscriber: Subscription | None, batch: Batch) -> Any:
        """The message for one delivery; PermanentError if it should not go at all."""
        if subscriber is None:
            raise PermanentError("the subscription is gone")
        if row.kind == K.CONFIRM:
            if subscriber.status == SubscriptionStatus.UNSUBSCRIBED:
                raise PermanentError("unsubscribed before confirming")
            token = tokens.make_token(self.settings.secret_key, tokens.CONFIRM, subscriber.id)
            hours = self.settings.confirm_expires_hours
            return confirmation_email(
                self.letterhead,
                subscriber.email,
                self._link("/subscriptions/confirm", token),
                timedelta(hours=hours),
            )
        if subscriber.status != SubscriptionStatus.CONFIRMED:
            raise PermanentError(f"the subscriber is {subscriber.status}")
        envelope = batch.events.get(row.event_id)
        if envelope is None:
            raise PermanentError("the event is no longer in the outbox")
        data = envelope["data"]
        story = Story(
            headline=data.get("title") or "",
            url=f"{self.settings.public_base_url}/articles/{data.get('slug')}",
            summary=data.get("summary") or None,
            section=data.get("section"),
        )
        unsubscribe = self._link(
            "/subscriptions/unsubscribe",
            tokens.make_token(self.settings.secret_key, tokens.UNSUBSCRIBE, subscriber.id),
        )
        if row.kind == K.CORRECTION:
            note = data.get("correction") or ""
            return correction_email(self.letterhead, subscriber.email, story, note, unsubscribe)
        return new_story_email(self.letterhead, subscriber.email, story, unsubscribe)

    def _link(self, path: str, token: str) -> str:
        return f"{self.settings.public_base_url}{path}?token={token}"

    # -- webhooks

    def _send_webhooks(self, batch: Batch) -> None:
        """Up to ``WEBHOOK_CONCURRENCY`` POSTs in flight, so one slow receiver (the timeout
        is 15 s) holds up one slot, not the batch; outcomes are recorded here as they come,
        and a row is taken from the batch only when a slot is free (its lease still ours)."""
        endpoints = self._destinations(WebhookEndpoint, batch)
        with (
            self.webhooks.open() as deliver,
            ThreadPoolExecutor(WEBHOOK_CONCURRENCY, thread_name_prefix="webhook") as pool,
        ):
            in_flight: dict[Future[Any], tuple[Any, WebhookEndpoint]] = {}
            for row in self._held(batch):
                endpoint = endpoints.get(row.destination_id)
                body = row.payload if row.payload is not None else batch.events.get(row.event_id)
                if endpoint is None or not endpoint.enabled or body is None:
                    why = "the endpoint is disabled" if endpoint else "the endpoint is gone"
                    self._record(row, Outcome(Verdict.FAILED, why), cancel=True)
                    continue
                message = WebhookMessage(
                    url=endpoint.url,
                    msg_id=row.event_id,  # the CloudEvent's id: stable across retries
                    body=json.dumps(body, separators=(",", ":")).encode(),
                    secrets=self._secrets(endpoint),
                )
                in_flight[pool.submit(deliver, message)] = (row, endpoint)
                # Each outcome is recorded as soon as it is known, so a sender killed now
                # leaves unrecorded only the POSTs still in flight (the duplicate window).
                self._record_webhooks(in_flight, [f for f in in_flight if f.done()])
                if len(in_flight) >= WEBHOOK_CONCURRENCY:
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    self._record_webhooks(in_flight, done)
            self._record_webhooks(in_flight, as_completed(list(in_flight)))

    def _record_webhooks(
        self, in_flight: dict[Future[Any], tuple[Any, WebhookEndpoint]], done: Iterable[Future[Any]]
    ) -> None:
        for future in done:
            row, endpoint = in_flight.pop(future)
            result = future.result()  # the transport answers every failure with an outcome
            outcome = Outcome(
                result.verdict, result.error, result.status_code, result.elapsed_ms,
                result.retry_after,
            )  # fmt: skip
            self._record(row, outcome, endpoint=endpoint)

    def _secrets(self, endpoint: WebhookEndpoint) -> tuple[str, ...]:
        now = self.clock()
        previous = endpoint.previous_secret
        until = endpoint.previous_secret_until
        if previous and until is not None and until > now:
            return (endpoint.secret, previous)
        return (endpoint.secret,)

    # -- recording

    def _record(
        self,
        row: Any,
        outcome: Outcome,
        *,
        cancel: bool = False,
        endpoint: WebhookEndpoint | None = None,
    ) -> None:
        """Commit what one attempt came to, before the next message goes: one statement,
        committed on its own (see :func:`outcome_engine`)."""
        now = self.clock()
        values: dict[str, Any] = {"leased_until": None, "last_error": outcome.error}
        if cancel:
            values["status"] = DeliveryStatus.CANCELLED
        elif outcome.verdict == Verdict.DELIVERED:
            values.update(status=DeliveryStatus.SENT, sent_at=now)
        elif outcome.verdict == Verdict.RETRY:
            delay = retry_delay(row.attempts, self.settings.notify_retry_schedule)
            if delay is None:
                values["status"] = DeliveryStatus.DEAD
            else:
                delay = max(delay, outcome.retry_after or 0)
                values["due_at"] = now + timedelta(seconds=delay)
        else:
            values["status"] = DeliveryStatus.FAILED
        moved: Any = update(Delivery).where(Delivery.id == row.id).values(**values)
        if not cancel:  # the attempt is written by the same statement: one round trip
            moved_cte = moved.returning(Delivery.id).cte("moved")
            attempt = {
                "at": now,
                "outcome": outcome.verdict.value,
                "status_code": outcome.status_code,
                "error": (outcome.error or None) and outcome.error[:1000],
                "elapsed_ms": outcome.elapsed_ms,
            }
            columns = [DeliveryAttempt.__table__.c[name] for name in attempt]
            moved = insert(DeliveryAttempt).from_select(
                ["delivery_id", *attempt],
                select(
                    moved_cte.c.id,
                    *(literal(v, c.type) for v, c in zip(attempt.values(), columns, strict=True)),
                ),
            )
        with self._outcomes.connect() as connection:
            connection.execute(moved)
            if endpoint is not None:
                _track_endpoint(connection, endpoint, outcome, now, self._disable_after)
        if values.get("status") == DeliveryStatus.DEAD:
            log.warning(
                "delivery %s is dead after %d attempts: %s", row.id, row.attempts, outcome.error
            )

    @property
    def _disable_after(self) -> timedelta:
        return timedelta(days=self.settings.webhook_disable_after_days)


def outcome_engine(db: Database) -> Engine:
    """Connections to ``db``'s server on which each statement commits on its own, without
    waiting for the WAL to reach disk: a delivery's outcome is one round trip."""
    return make_engine(
        db.engine.url,
        isolation_level="AUTOCOMMIT",
        pool_size=EMAIL_CONNECTIONS,  # one for each sending thread
        connect_args={"connect_timeout": 3, "options": "-c synchronous_commit=off"},
    )


def _track_endpoint(
    session: Any, endpoint: WebhookEndpoint, outcome: Outcome, now: datetime, limit: timedelta
) -> None:
    """A success clears the failing streak; a 410, or failing for longer than ``limit``,
    disables the endpoint, with the reason the admin sees."""
    table = update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id)
    if outcome.verdict == Verdict.DELIVERED:
        if endpoint.failing_since is not None:
            session.execute(table.values(failing_since=None))
            endpoint.failing_since = None
        return
    if outcome.verdict == Verdict.GONE:
        reason = "the receiver answered 410 Gone"
    elif endpoint.failing_since is None:
        endpoint.failing_since = now
        session.execute(table.values(failing_since=now))
        return
    elif now - endpoint.failing_since >= limit:
        reason = f"failing since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC: {outcome.error}"
    else:
        return
    endpoint.enabled = False
    session.execute(table.values(enabled=False, disabled_reason=reason[:500]))
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
