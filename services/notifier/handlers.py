"""What the notifier does with each event type, built from the worker's runtime."""

from __future__ import annotations

from shared.consumer import Handler
from shared.runtime import Runtime


def build_handlers(runtime: Runtime) -> dict[str, Handler]:
    """No effects yet beyond the ledger record."""
    return {}
