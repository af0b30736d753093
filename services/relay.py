"""``pressroom relay``: the process that moves events from the outbox to the broker.

It sleeps on PostgreSQL's ``LISTEN`` until a writer of events says, once committed, that
it wrote some (:func:`shared.bus.wake_relays`), then relays everything pending. Between
wake-ups it also runs the publisher's periodic jobs, so they need no worker: the
publication of scheduled stories that are due, and the search for events a consumer lost
(:mod:`shared.redelivery`). Several relays may run side by side: each skips the rows
another holds. With no notification it still looks at the outbox every
OUTBOX_SWEEP_SECONDS, in case one was missed while it reconnected or its writer died.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import redis

from shared import lifecycle, redelivery
from shared.bus import OUTBOX_CHANNEL, CelerySender
from shared.celery import broker_lists
from shared.db import libpq_conninfo
from shared.processes import freeze_startup_objects
from shared.relay import Relay
from shared.runtime import Runtime

log = logging.getLogger(__name__)

RELAY_BUDGET_S = 5.0  # one wake-up relays for at most this long before the periodic jobs
REDELIVERY_EVERY_S = 30.0  # or half REDELIVER_AFTER_SECONDS, if that is sooner
RECONNECT_MAX_S = 10.0
# After a wake-up the relay waits for company before it relays: LINGER_STEP_S for each
# event beyond the first that its last pass sent, never more than LINGER_MAX_S. A quiet
# newsroom's event leaves at once; under a burst, one pass sends a batch in a message or
# two per queue instead of a message per event, which is what lets the consumers keep up.
LINGER_STEP_S = 0.005
LINGER_MAX_S = 0.05


def linger_after(previous_pass: int) -> float:
    return min(LINGER_MAX_S, LINGER_STEP_S * max(0, previous_pass - 1))


@dataclass
class Every:
    """A periodic job: due when ``seconds`` have passed since it last ran."""

    seconds: float
    job: Callable[[], object]
    last: float = field(default=float("-inf"))

    def due_in(self, now: float) -> float:
        return self.last + self.seconds - now

    def run_if_due(self, now: float) -> None:
        if self.due_in(now) <= 0:
            self.last = now
            self.job()


class RelayService:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.relay = Relay(runtime.db, CelerySender(runtime.celery))
        settings = runtime.settings
        self.sweep_every = settings.outbox_sweep_seconds
        self.periodic = [
            Every(settings.schedule_sweep_seconds, self.publish_due),
            Every(min(REDELIVERY_EVERY_S, settings.redeliver_after_seconds / 2), self.redeliver),
        ]

    def relay_pending(self) -> int:
        return self.relay.relay(budget=RELAY_BUDGET_S)

    def publish_due(self) -> int:
        with self.runtime.db.transaction() as session:
            published = lifecycle.publish_due(session)
        return len(published)  # their events wake every relay on commit

    def redeliver(self) -> dict[str, int]:
        settle = timedelta(seconds=self.runtime.settings.redeliver_after_seconds)
        return redelivery.redeliver_lost(
            self.runtime.db, CelerySender(self.runtime.celery), self._queue_depth, settle
        )

    def _queue_depth(self, queue: str) -> int | None:
        try:
            client = self.runtime.redis
            return sum(int(client.llen(key)) for key in broker_lists(queue))
        except redis.RedisError:
            return None

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; a database or broker that goes away is waited for."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self._listen(stop)
            except (psycopg.Error, OSError) as exc:
                log.warning("relay lost the database, retrying in %.1fs: %s", backoff, exc)
                stop.wait(backoff)
                backoff = min(RECONNECT_MAX_S, backoff * 2)
            except Exception:  # a bug in a pass: log it and carry on, the outbox keeps it all
                log.exception("relay pass failed")
                stop.wait(backoff)
            else:
                backoff = 0.5

    def _listen(self, stop: threading.Event) -> None:
        with psycopg.connect(
            libpq_conninfo(self.runtime.settings.db_url), autocommit=True, connect_timeout=3
        ) as conn:
            conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            log.info("relay listening for outbox commits")
            previous = 0
            while not stop.is_set():
                previous = self.relay_pending()  # what committed before LISTEN, or meanwhile
                now = time.monotonic()
                for job in self.periodic:
                    job.run_if_due(now)
                wait = min(job.due_in(time.monotonic()) for job in self.periodic)
                # Woken by the first notification (the rest fold into the next pass), or
                # at the latest after a sweep's interval, in case one was missed.
                timeout = max(0.05, min(wait, self.sweep_every))
                woken = sum(1 for _ in conn.notifies(timeout=timeout, stop_after=1))
                # The generator is spent before the linger: sleeping inside it (between its
                # yields) lost the wake-ups of commits made meanwhile, and a relay under a
                # steady stream slept until the sweep's timeout with hundreds pending.
                if woken and (linger := linger_after(previous)):
                    time.sleep(linger)  # transactions committing now join this pass


def run_relay(runtime: Runtime) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service = RelayService(runtime)
    freeze_startup_objects()
    service.run(stop)
