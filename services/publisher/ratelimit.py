"""Per-address rate limits for the public endpoints that send mail (flask-limiter on Redis).

Counts live in the configured Redis, so every publisher process shares them. When Redis is
away each process counts in its own memory instead (and keeps asking Redis, backing off):
a broker outage must not stop readers from subscribing, nor turn into a 500.

The client address is the connection's (``request.remote_addr``): behind a proxy, the
deployment must make that the reader's address (werkzeug's ProxyFix, gunicorn's
``forwarded_allow_ips``), or every reader shares the proxy's limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from shared.config import Settings

KEY_PREFIX = "pressroom-limits"
REDIS_TIMEOUT_S = 1  # a hung Redis costs a request this long, once: then memory takes over
MESSAGE = "Too many subscription requests from your address; try again later."


def storage_uri(redis_client_url: str) -> str:
    """The Redis URL in the form the ``limits`` library takes: a unix socket is
    ``redis+unix:///path``, where redis-py says ``unix:///path``."""
    if redis_client_url.startswith("unix://"):
        return "redis+" + redis_client_url
    return redis_client_url


def install(app: Flask, settings: Settings, subscribe_endpoints: Iterable[str]) -> Limiter:
    """Limit POSTs to ``subscribe_endpoints`` (already registered), sharing one count per
    address across them: the API and the reader's form are one way to send mail."""
    limiter = Limiter(
        get_remote_address,
        storage_uri=storage_uri(settings.redis_client_url),
        storage_options={
            "socket_connect_timeout": REDIS_TIMEOUT_S,
            "socket_timeout": REDIS_TIMEOUT_S,
        },
        key_prefix=KEY_PREFIX,
        strategy="fixed-window",
        headers_enabled=True,  # Retry-After on a 429, X-RateLimit-* on the others
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.init_app(app)
    # Its before_request hook applies default and application-wide limits, which Pressroom
    # sets none of (a decorated view checks its own limit), yet it resolved and filtered
    # limits for every request: a fifth of what a GET /healthz cost.
    app.before_request_funcs[None].remove(limiter._check_request_limit)
    subscribe = limiter.shared_limit(
        settings.subscribe_rate_limit, scope="subscribe", methods=["POST"], error_message=MESSAGE
    )
    for endpoint in subscribe_endpoints:
        limited: Any = subscribe(app.view_functions[endpoint])  # flask-limiter types it async
        app.view_functions[endpoint] = limited
    return limiter
