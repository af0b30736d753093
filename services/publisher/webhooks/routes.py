"""The webhooks API (admins): /api/v1/webhooks and each endpoint's actions and deliveries.

A secret appears in exactly two answers, the registration's and a rotation's, and never in
a log line: nothing here logs an endpoint.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.publisher.api import ApiBlueprint
from services.publisher.deliveries import wake_sender
from services.publisher.errors import fail
from services.publisher.state import state
from services.publisher.webhooks import service
from services.publisher.webhooks.schemas import (
    DeliveryPageSchema,
    DeliveryQueryArgsSchema,
    DeliverySchema,
    WebhookCreateSchema,
    WebhookDisableSchema,
    WebhookListSchema,
    WebhookSchema,
    WebhookWithSecretSchema,
)
from shared.models import Channel, WebhookEndpoint
from shared.webhooks import UnresolvableTarget, UnsafeTarget

blp = ApiBlueprint(
    "webhooks", __name__, url_prefix="/api/v1/webhooks", description="Admins' webhook endpoints"
)
ADMIN = "admin"


def load_endpoint(session: Session, webhook_id: str, *, to_change: bool = False) -> WebhookEndpoint:
    """The endpoint, or 404; ``to_change``: locked until the transaction ends, so two
    rotations at once do not both keep the same previous secret."""
    try:
        endpoint = session.get(
            WebhookEndpoint, str(uuid.UUID(webhook_id)), with_for_update=to_change
        )
    except ValueError:
        endpoint = None
    if endpoint is None:
        fail(404, f"No webhook endpoint with id {webhook_id}.")
    return endpoint


@blp.route("", role=ADMIN)
class Webhooks(MethodView):
    @blp.response(200, WebhookListSchema)
    def get(self) -> dict[str, Any]:
        """Every endpoint, oldest first, with why it is disabled if it is (no secrets)."""
        with state().db.session() as session:
            query = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)
            return {"items": list(session.scalars(query))}

    @blp.arguments(WebhookCreateSchema())
    @blp.response(201, WebhookWithSecretSchema)
    def post(self, data: dict[str, Any]) -> WebhookEndpoint:
        """Register an endpoint; the answer holds its signing secret, shown this once.

        The URL must be http or https, without credentials, and every address its host
        resolves to must be public."""
        settings = state().settings
        try:
            with state().db.transaction() as session:
                return service.register(session, data, settings.webhook_allow_private)
        except (UnsafeTarget, UnresolvableTarget) as exc:
            fail(422, "The webhook URL cannot be used.", details={"url": [str(exc)]})


@blp.route("/<webhook_id>", role=ADMIN)
class WebhookById(MethodView):
    @blp.response(200, WebhookSchema)
    def get(self, webhook_id: str) -> WebhookEndpoint:
        """One endpoint (no secret)."""
        with state().db.session() as session:
            return load_endpoint(session, webhook_id)


@blp.route("/<webhook_id>/rotate", role=ADMIN)
class RotateWebhook(MethodView):
    @blp.response(200, WebhookWithSecretSchema)
    def post(self, webhook_id: str) -> WebhookEndpoint:
        """A new secret, shown this once; the previous one keeps signing for 24 hours."""
        with state().db.transaction() as session:
            endpoint = load_endpoint(session, webhook_id, to_change=True)
            service.rotate(endpoint)
        return endpoint


@blp.route("/<webhook_id>/test", role=ADMIN)
class TestWebhook(MethodView):
    @blp.response(202, DeliverySchema)
    @blp.alt_response(409, description="The endpoint is disabled")
    def post(self, webhook_id: str) -> dict[str, Any]:
        """Send the endpoint a test event (type pressroom.test); follow it in its deliveries."""
        with state().db.transaction() as session:
            endpoint = load_endpoint(session, webhook_id)
            delivery = service.send_test(session, endpoint)
        wake_sender(state().celery, Channel.WEBHOOK)
        return service.delivery_view(delivery, [])


@blp.route("/<webhook_id>/deliveries", role=ADMIN)
class WebhookDeliveries(MethodView):
    @blp.arguments(DeliveryQueryArgsSchema(), location="query")
    @blp.response(200, DeliveryPageSchema)
    def get(self, args: dict[str, Any], webhook_id: str) -> dict[str, Any]:
        """The endpoint's deliveries, newest first, each with every attempt: when, how it
        went, the status code, the error, how long it took."""
        with state().db.session() as session:
            load_endpoint(session, webhook_id)
            try:
                items, cursor = service.deliveries(
                    session, webhook_id, args["limit"], args.get("cursor")
                )
            except service.BadCursor:
                fail(422, "The cursor is not valid.", details={"cursor": ["invalid"]})
        return {"items": items, "next_cursor": cursor}


@blp.route("/<webhook_id>/disable", role=ADMIN)
class DisableWebhook(MethodView):
    @blp.arguments(WebhookDisableSchema(), required=False)
    @blp.response(200, WebhookSchema)
    def post(self, data: dict[str, Any], webhook_id: str) -> WebhookEndpoint:
        """Stop sending to the endpoint (what is waiting for it is cancelled as it comes due)."""
        with state().db.transaction() as session:
            endpoint = load_endpoint(session, webhook_id, to_change=True)
            service.disable(endpoint, (data or {}).get("reason"))
        return endpoint


@blp.route("/<webhook_id>/enable", role=ADMIN)
class EnableWebhook(MethodView):
    @blp.response(200, WebhookSchema)
    def post(self, webhook_id: str) -> WebhookEndpoint:
        """Send to the endpoint again; clears the reason it was disabled and its failing streak."""
        with state().db.transaction() as session:
            endpoint = load_endpoint(session, webhook_id, to_change=True)
            service.enable(endpoint)
        return endpoint
