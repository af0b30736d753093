"""Reading what really sits in a Redis queue, as Celery's Redis transport stores it."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis


def queued(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The envelopes waiting in ``queue``, oldest first, each with the task that carries it."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for item in reversed(raw):  # kombu LPUSHes and BRPOPs: the oldest is at the right
        message = json.loads(item)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        [carried] = json.loads(body)[0]  # one argument: the list of envelopes
        for envelope in carried:
            messages.append({"task": message["headers"]["task"], "envelope": envelope})
    return messages


def message_count(redis_url: str, queue: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()
