"""gunicorn entry point: ``gunicorn services.publisher.wsgi:app``.

Requests gunicorn refuses before they reach Flask (a request line over its limit: 414, too
many or too large headers: 431, a malformed request: 400) get the API's one error shape
instead of gunicorn's HTML page. gunicorn has no setting for that body: its workers write it
with ``gunicorn.util.write_error``, which this module replaces in each worker process.
"""

from __future__ import annotations

import json
import re
import socket

from gunicorn import util

from services.publisher.app import create_app
from shared.processes import freeze_startup_objects


def _code(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "bad_request"


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps(
        {"error": {"code": _code(reason), "message": f"{reason}: {mesg}"[:500], "details": {}}}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + body)


util.write_error = write_json_error

app = create_app()
freeze_startup_objects()  # each worker imports this module after gunicorn forked it
