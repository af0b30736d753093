"""The public subscriptions API: POST /api/v1/subscriptions (rate limited per address)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from services.publisher.api import ApiBlueprint
from services.publisher.deliveries import wake_sender
from services.publisher.state import state
from services.publisher.subscriptions import service
from services.publisher.subscriptions.schemas import (
    SubscriptionAcceptedSchema,
    SubscriptionCreateSchema,
)
from shared.models import Channel

blp = ApiBlueprint(
    "subscriptions",
    __name__,
    url_prefix="/api/v1/subscriptions",
    description="Readers' email subscriptions (public, double opt-in)",
)
ACCEPTED = (
    "If the address can receive mail, a confirmation link is on its way to it. "
    "The subscription starts when that link is followed."
)


def request_subscription(data: dict[str, Any]) -> None:
    """A reader's request (validated by SubscriptionCreateSchema), from the API or the
    site's form: recorded, then the confirmation email is sent at once."""
    with state().db.transaction() as session:
        service.subscribe(session, data["email"], data["sections"], data["tags"])
    wake_sender(state().celery, Channel.EMAIL)


@blp.route("", role=None)
class Subscriptions(MethodView):
    @blp.arguments(SubscriptionCreateSchema())
    @blp.response(202, SubscriptionAcceptedSchema)
    @blp.alt_response(
        429,
        description="Too many requests from this address",
        headers={"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    )
    def post(self, data: dict[str, Any]) -> dict[str, str]:
        """Ask for stories by email: sections and tags wanted (none: everything).

        A confirmation email goes to the address; nothing is sent to it until its link is
        followed. The answer is the same whether the address was known or not."""
        request_subscription(data)
        return {"message": ACCEPTED}
