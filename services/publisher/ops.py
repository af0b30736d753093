"""Ops endpoints: ``GET /ops/queues`` (JSON) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.publisher.auth import current_caller, require_role
from services.publisher.errors import error_response
from services.publisher.state import state
from shared import ops

blp = Blueprint("ops", __name__)


def _snapshot(with_workers: bool) -> ops.Snapshot:
    current = state()
    return ops.snapshot(
        current.db,
        current.settings.redis_client_url,
        current.celery if with_workers else None,
    )


@blp.post("/ops/dead-letters/<int:letter_id>/discard")
@require_role("ops")
def discard_dead_letter(letter_id: int) -> Any:
    """Close a dead letter that can never succeed (JSON ``{"reason": ...}``, required)."""
    body = request.get_json(silent=True) or {}
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        return error_response(
            422, "Say why the letter is discarded.", "validation_failed",
            {"reason": ["A reason of 1 to 500 characters is required."]},
        )  # fmt: skip
    actor = current_caller().actor
    if not ops.discard_dead_letters(state().db, [letter_id], actor, reason.strip()):
        return error_response(404, "No open dead letter with that id.", "not_found")
    return {"id": letter_id, "discarded": True}


@blp.get("/ops/queues")
@require_role("ops")
def queues() -> dict[str, Any]:
    """Per queue depth and oldest message age; outbox backlog and lag; dead letters;
    deliveries per channel and status; workers."""
    return _snapshot(with_workers=True).as_dict()


class SnapshotCollector(Collector):
    """Gauges read from the database and the broker at scrape time, the same in every worker."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = _snapshot(with_workers=False)
        depth = GaugeMetricFamily(
            "pressroom_queue_depth", "Messages waiting in a consumer queue", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "pressroom_queue_oldest_age_seconds",
            "Age of the oldest event waiting in a consumer queue",
            labels=["queue"],
        )
        for queue in snap.queues:
            if queue.depth is None:  # broker down: no sample beats a false 0
                continue
            depth.add_metric([queue.name], queue.depth)
            age.add_metric([queue.name], queue.oldest_age_s or 0.0)
        dead = GaugeMetricFamily(
            "pressroom_dead_letters", "Dead letters not yet replayed", labels=["consumer"]
        )
        for consumer, count in snap.dead_letters.items():
            dead.add_metric([consumer], count)
        deliveries = GaugeMetricFamily(
            "pressroom_deliveries",
            "Notifier deliveries by channel and status (retrying: pending, tried before)",
            labels=["channel", "status"],
        )
        for channel, counts in snap.deliveries.items():
            for status, count in counts.items():
                deliveries.add_metric([channel, status], count)
        yield depth
        yield age
        yield dead
        yield deliveries
        if snap.in_flight is not None:
            yield GaugeMetricFamily(
                "pressroom_in_flight",
                "Messages taken by a worker, not yet acknowledged",
                snap.in_flight,
            )
        yield GaugeMetricFamily(
            "pressroom_outbox_pending", "Events written but not yet relayed", snap.outbox_pending
        )
        yield GaugeMetricFamily(
            "pressroom_outbox_lag_seconds",
            "Age of the oldest event not yet relayed",
            snap.outbox_lag_s or 0.0,
        )
        yield GaugeMetricFamily("pressroom_broker_up", "1 if Redis answers", int(snap.broker_ok))


_registry = CollectorRegistry(auto_describe=False)
_registry.register(SnapshotCollector())


@blp.get("/metrics")
@require_role("ops")
def metrics() -> Response:
    # content_type, not mimetype: the constant carries its charset already, and Flask would add
    # another (Prometheus refuses "mime: duplicate parameter name").
    return Response(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
