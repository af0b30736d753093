"""The notifier's tasks: thin wrappers around the consumer base and the sender.

``notifier.consume`` writes delivery rows in the ledger transaction; if it wrote any, it
sends ``notifier.send`` tasks after the commit: several, so every notifier process shares
a big fan-out (each claims its own batches). Beat sends one per channel every few seconds for
retries that came due and confirmation emails. Never a task per recipient.
"""

from __future__ import annotations

import functools
import os

from celery import Celery

from services.notifier.channels.email import mailer_for
from services.notifier.channels.webhook import HttpWebhookTransport
from services.notifier.handlers import build_handlers
from services.notifier.sending import Sender
from shared.bus import NOTIFIER, consumer_task
from shared.celery import CONSUMER_TASK_OPTIONS
from shared.consumer import Consumer
from shared.models import Channel
from shared.runtime import Runtime

SEND_TASK = "notifier.send"
# How many senders a fan-out starts; more than the processes x pool size of a usual
# deployment, and a sender that finds nothing to claim ends at once. Each sends both
# channels in turn, so a few webhooks never wait behind a long mailing.
SENDERS = {Channel.WEBHOOK: 1, Channel.EMAIL: 4}
SEND_BUDGET_S = 240.0  # then it hands over to a fresh task, well inside the time limit


def register(app: Celery, runtime: Runtime) -> None:
    def wake(channel: str) -> None:
        for _ in range(SENDERS[Channel(channel)]):
            app.send_task(SEND_TASK, queue=NOTIFIER)

    consumer = Consumer(NOTIFIER, runtime, build_handlers(runtime, wake))

    @functools.cache
    def sender(pid: int) -> Sender:  # one per pool process
        settings = runtime.settings
        return Sender(
            runtime.db,
            settings,
            mailer_for(settings.smtp_url, settings.var_dir / "mail"),
            HttpWebhookTransport(allow_private=settings.webhook_allow_private),
        )

    @app.task(name=consumer_task(NOTIFIER), **CONSUMER_TASK_OPTIONS)
    def consume(envelopes: list[dict] | dict) -> list[str]:
        return consumer.consume_message(envelopes)  # wakes the senders of what it wrote

    @app.task(name=SEND_TASK, acks_late=True, ignore_result=True)
    def send(channel: str | None = None) -> int:
        # Both channels in turn, whichever woke it (older messages name one channel).
        worker = sender(os.getpid())
        attempted = worker.send_all(budget=SEND_BUDGET_S)
        if worker.out_of_time:  # there may be more: a fresh task carries on
            app.send_task(SEND_TASK, queue=NOTIFIER)
        return attempted
