"""The one error shape: ``{"error": {"code", "message", "details"}}`` for every failure."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, NoReturn

from flask import Flask, Response, jsonify, request
from flask_smorest import abort
from marshmallow import Schema, fields
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)

CODES = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    428: "precondition_required",
    429: "rate_limited",
    503: "service_unavailable",
}
DRAIN_LIMIT = 64 << 20


def error_response(
    status: int, message: str, code: str | None = None, details: dict[str, Any] | None = None
) -> Response:
    body = {
        "error": {
            "code": code or CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_")),
            "message": message,
            "details": details or {},
        }
    }
    response = jsonify(body)
    response.status_code = status
    return response


def _details_from_webargs(messages: dict[str, Any]) -> dict[str, Any]:
    """webargs nests messages under the location ("json", "query"); callers want field names."""
    details: dict[str, Any] = {}
    for location, problems in messages.items():
        if isinstance(problems, dict):
            details.update(problems)
        else:
            details[location] = problems
    return details


def from_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    data: dict[str, Any] = getattr(error, "data", None) or {}
    if isinstance(error, RequestEntityTooLarge):
        _drain_request_body()
    if "messages" in data:  # raised by webargs while parsing the request
        if status == 400:
            return error_response(400, "The request body is not valid JSON.", "malformed_json")
        return error_response(
            status,
            "The request has invalid fields.",
            details=_details_from_webargs(data["messages"]),
        )
    message = data.get("message") or error.description or HTTPStatus(status).phrase
    response = error_response(status, str(message), data.get("code"), data.get("details"))
    for name, value in error.get_headers():  # e.g. Allow on a 405
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    for name, value in (data.get("headers") or {}).items():
        response.headers[name] = value
    return response


def _drain_request_body() -> None:
    """Read what the client is still sending, so it receives our 413 instead of a reset."""
    stream = request.environ.get("wsgi.input")
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "")
    remaining = DRAIN_LIMIT if chunked else min(request.content_length or 0, DRAIN_LIMIT)
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 1 << 16))
        if not chunk:
            break
        remaining -= len(chunk)


def fail(status: int, message: str, **extra: Any) -> NoReturn:
    """Stop the request with an error in the one shape (``code``, ``details``, ``headers``)."""
    abort(status, message=message, **extra)
    raise AssertionError("abort returned")  # pragma: no cover


class ErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    """The one error shape, as the OpenAPI document describes it."""

    error = fields.Nested(ErrorDetailSchema, required=True)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        return from_http_exception(error)

    @app.errorhandler(IntegrityError)
    def _conflict(error: IntegrityError) -> Response:
        log.info("integrity conflict: %s", error.orig)
        return error_response(409, "The request conflicts with existing data.", "conflict")

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def _database_down(error: Exception) -> Response:
        log.error("database unavailable: %s", getattr(error, "orig", error))
        response = error_response(503, "The database is unavailable; try again shortly.")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return error_response(500, "Internal error; it has been logged.", "internal_error")
