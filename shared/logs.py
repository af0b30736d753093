"""Logging for every process: structlog's key=value lines on the standard library's handlers.

No secret reaches a line: tracebacks are printed without their local variables (a frame
holding a URL would print its password), and every configured secret (passwords in
DATABASE_URL, REDIS_URL and SMTP_URL, SECRET_KEY) is masked in whatever is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog

_configured = False


MASK = "***"


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """Masks each of ``secrets`` in the finished line, whoever logged it (a library's
    message, an exception's text, a traceback)."""

    def __init__(self, *args: Any, secrets: Iterable[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, MASK)
        return line


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    shared_processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
            foreign_pre_chain=shared_processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(
                    colors=False, exception_formatter=structlog.dev.plain_traceback
                ),
            ],
            secrets=secrets,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
