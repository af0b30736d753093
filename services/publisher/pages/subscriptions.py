"""The reader's side of subscriptions, as pages that work without JavaScript: the subscribe
form, the confirmation link, and the unsubscribe page with its RFC 8058 one-click POST.

The links carry signed tokens (:mod:`shared.subscriber_tokens`): these pages are never
cached, and send no Referer, so a token does not travel on from them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from services.publisher.pages.views import latest_articles, page_error, sections_of
from services.publisher.state import state
from services.publisher.subscriptions import service
from services.publisher.subscriptions.routes import request_subscription
from services.publisher.subscriptions.schemas import SubscriptionCreateSchema
from shared import subscriber_tokens as tokens
from shared.models import SubscriptionStatus

blp = Blueprint("subscription_pages", __name__, template_folder="templates")
blp.register_error_handler(HTTPException, page_error)

FORM_SCHEMA = SubscriptionCreateSchema()


@blp.after_request
def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blp.errorhandler(tokens.BadToken)
def _link_problem(error: tokens.BadToken) -> tuple[str, int]:
    expired = isinstance(error, tokens.ExpiredToken)
    return _page("link_problem.html", 400, expired=expired)


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("sections", sections_of(latest_articles(limit=20)))
    hours = state().settings.confirm_expires_hours
    return render_template(template, hours=hours, **context), status


def _subscription_named(purpose: str, max_age: int | None) -> str:
    """The subscription id the link's token names; BadToken (a 400 page) if it names none."""
    token = request.args.get("token", "")
    return tokens.read_token(state().settings.secret_key, purpose, token, max_age)


@blp.get("/subscriptions")
def subscribe_page() -> tuple[str, int]:
    return _page("subscribe.html")


@blp.post("/subscriptions")
def subscribe_form() -> Response | tuple[str, int]:
    """The form on the front page and on each story; rate limited like the API."""
    form = {
        "email": request.form.get("email", ""),
        "sections": request.form.getlist("sections"),
        "tags": request.form.getlist("tags"),
    }
    try:
        data = FORM_SCHEMA.load(form)
    except ValidationError as exc:
        errors = {field: _flat(messages) for field, messages in exc.messages_dict.items()}
        ticked = form["sections"]
        offered = sorted(set(sections_of(latest_articles(limit=20))) | set(ticked))
        return _page(
            "subscribe.html",
            422,
            errors=errors,
            email=form["email"],
            sections=offered,
            ticked=ticked,
        )
    request_subscription(data)
    # Redirected, so reloading the page it lands on does not send the form again.
    return redirect(url_for(".check_inbox"), 303)


def _flat(messages: Any) -> list[str]:
    """marshmallow's messages for a field (by list index for list fields) as one list."""
    if isinstance(messages, dict):
        return [m for nested in messages.values() for m in _flat(nested)]
    if isinstance(messages, list):
        return [str(m) for m in messages]
    return [str(messages)]


@blp.get("/subscriptions/check-your-inbox")
def check_inbox() -> tuple[str, int]:
    return _page("subscribe_sent.html", sections=[])


@blp.get("/subscriptions/confirm")
def confirm() -> tuple[str, int]:
    max_age = state().settings.confirm_expires_hours * 3600
    subscription_id = _subscription_named(tokens.CONFIRM, max_age)
    with state().db.transaction() as session:
        subscription = service.confirm(session, subscription_id)
    if subscription is None:
        raise tokens.BadToken("the subscription this link names is gone")
    left = subscription.status == SubscriptionStatus.UNSUBSCRIBED
    topics = [*subscription.sections, *subscription.tags]
    return _page("confirmed.html", left=left, topics=topics)


@blp.route("/subscriptions/unsubscribe", methods=["GET", "POST"])
def unsubscribe() -> tuple[str, int]:
    """GET shows a button and changes nothing (mail scanners follow links); POST, from that
    button or a mail client's one-click (body ``List-Unsubscribe=One-Click``), leaves."""
    subscription_id = _subscription_named(tokens.UNSUBSCRIBE, max_age=None)
    if request.method == "GET":
        return _page("unsubscribe.html", action=request.full_path, sections=[])
    with state().db.transaction() as session:
        service.unsubscribe(session, subscription_id)
    return _page("unsubscribed.html", sections=[])
