"""The publisher's Flask application factory."""

from __future__ import annotations

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from services.publisher import health, ops, ratelimit
from services.publisher.api import PressroomApi
from services.publisher.articles.routes import blp as articles_blp
from services.publisher.errors import error_response, register_error_handlers
from services.publisher.pages import subscriptions as subscription_pages
from services.publisher.pages import views as pages
from services.publisher.security import register_security_headers
from services.publisher.state import PublisherState
from services.publisher.subscriptions.routes import blp as subscriptions_blp
from services.publisher.webhooks.routes import blp as webhooks_blp
from shared.celery import create_celery
from shared.config import Settings
from shared.db import Database
from shared.errors import Conflict, InvalidTransition
from shared.logs import configure_logging

MAX_BODY = 1 << 20  # 1 MiB
# What holds for every operation, stated once at the top of the OpenAPI document.
API_RULES = """\
Every error is `{"error": {"code", "message", "details"}}`; on a 422 `details` names each
field refused, with why.

Request bodies are JSON (`Content-Type: application/json`, else 415) of at most 1 MiB (413,
with a Content-Length or chunked).

Text fields hold no control characters but tab, line feed and carriage return, and no lone
surrogates (`\\ud800` escapes): PostgreSQL cannot store them nor an Atom feed carry them. The
fields' patterns say so; a title or a body must also hold more than white space.

Lists are paged with cursors: give `cursor` the `next_cursor` of the page before, with the
same filters, and nothing else (anything else is 422). The last page's `next_cursor` is
null."""
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "A token from `pressroom token create --role editor|admin|ops`; an admin's"
    " token serves as an editor's and an ops token too.",
}
# The views that send mail to whatever address they are given: one rate limit between them.
SUBSCRIBE_ENDPOINTS = ("subscriptions.Subscriptions", "subscription_pages.subscribe_form")


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.secrets())
    app = Flask(__name__, static_folder=None)  # the pages blueprint serves /static
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        API_TITLE="Pressroom",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/api/v1/docs/assets/",
        API_SPEC_OPTIONS={
            "info": {"description": API_RULES},
            "components": {"securitySchemes": {"bearer": BEARER}},
            "security": [{"bearer": []}],
        },
    )
    db = db or Database(settings.db_url)
    app.extensions["pressroom"] = PublisherState(settings, db, create_celery(settings, "publisher"))

    register_error_handlers(app)
    register_security_headers(app)
    _register_domain_errors(app)
    app.before_request(_require_json_body)
    app.before_request(_limit_body)

    api = PressroomApi(app)
    api.register_blueprint(articles_blp)
    api.register_blueprint(subscriptions_blp)
    api.register_blueprint(webhooks_blp)
    app.register_blueprint(health.blp)
    app.register_blueprint(pages.blp)
    app.register_blueprint(subscription_pages.blp)
    app.register_blueprint(ops.blp)
    ratelimit.install(app, settings, SUBSCRIBE_ENDPOINTS)
    _serve_swagger_assets(app)
    return app


def _require_json_body() -> None:
    """A request that carries a body must say it is JSON (415 otherwise)."""
    if request.method not in ("POST", "PUT", "PATCH") or not request.path.startswith("/api/"):
        return
    has_body = bool(request.content_length) or "chunked" in request.headers.get(
        "Transfer-Encoding", ""
    )
    if has_body and not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json.")


def _limit_body() -> None:
    """A body over the limit is a 413 before any view runs, whether the view would read it
    or not (a view that ignores its body answered 200 to 2 MiB of it), and whether it came
    with a Content-Length or chunked.

    Werkzeug stops reading a stream without a length at ``MAX_CONTENT_LENGTH`` and hands
    back what it read, so the JSON parser saw a cut-off body (400 malformed_json). Such a
    body is read here, up to the limit, and one byte past it decides."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None:
        if request.content_length > limit:
            raise RequestEntityTooLarge()
        return
    if "chunked" not in request.headers.get("Transfer-Encoding", ""):
        return
    if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def _register_domain_errors(app: Flask) -> None:
    @app.errorhandler(Conflict)
    def _conflict(error: Conflict):
        return error_response(409, str(error), error.code)

    @app.errorhandler(InvalidTransition)
    def _transition(error: InvalidTransition):
        return error_response(
            409,
            str(error),
            "invalid_transition",
            {"status": error.current, "wanted": error.wanted},
        )


def _serve_swagger_assets(app: Flask) -> None:
    """Swagger UI's files come from the installed swagger-ui-bundle, never from a CDN."""
    import swagger_ui_bundle
    from flask import send_from_directory

    @app.get("/api/v1/docs/assets/<path:filename>")
    def swagger_assets(filename: str):
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)
