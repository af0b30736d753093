"""Security headers on every response the publisher sends."""

from __future__ import annotations

from flask import Flask, Response, request

# The reader pages load their style sheet from here, and articles' images and videos from
# anywhere on the web; nothing runs inline (a JSON-LD block is data, never executed), no
# page may be framed, and forms post only here.
PAGES_POLICY = (
    "default-src 'self'; img-src 'self' https: http: data:; media-src 'self' https: http:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI starts itself with an inline script and inline styles.
DOCS_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
DOCS_PATH = "/api/v1/docs"


def _add_headers(response: Response) -> Response:
    docs = request.path.startswith(DOCS_PATH)
    response.headers.setdefault("Content-Security-Policy", DOCS_POLICY if docs else PAGES_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")  # frame-ancestors, for old browsers
    response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    return response


def register_security_headers(app: Flask) -> None:
    app.after_request(_add_headers)
