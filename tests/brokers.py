"""Reading what really sits in a Redis queue, as Celery's Redis transport stores it."""

from __future__ import annotations

from typing import Any

import redis

from shared.celery import broker_lists
from shared.ops import carried


def queued(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The envelopes waiting in ``queue``, in the order a worker takes them, each with the
    task that carries it."""
    client = redis.Redis.from_url(redis_url)
    try:
        lists = [client.lrange(key, 0, -1) for key in broker_lists(queue)]
    finally:
        client.close()
    messages = []
    for raw in lists:
        for item in reversed(raw):  # kombu LPUSHes and BRPOPs: the oldest is at the right
            task, envelopes = carried(item)
            messages.extend({"task": task, "envelope": envelope} for envelope in envelopes)
    return messages


def message_count(redis_url: str, queue: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(key)) for key in broker_lists(queue))
    finally:
        client.close()


def tasks_sent(redis_url: str, queue: str) -> list[tuple[str, object]]:
    """(task name, its argument) of each message waiting in ``queue``, oldest first."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = [item for key in broker_lists(queue) for item in client.lrange(key, 0, -1)]
    finally:
        client.close()
    found = []
    for item in reversed(raw):
        task, args = carried(item)
        found.append((task, args[0] if args else None))
    return found
