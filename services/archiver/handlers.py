"""What the archiver does with each event type (none yet beyond the ledger record)."""

from __future__ import annotations

from shared.consumer import Handler

HANDLERS: dict[str, Handler] = {}
