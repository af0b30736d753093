"""API tokens: only a SHA-256 of each is stored; the token itself is shown once."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiToken

ROLES = ("editor", "admin", "ops")
# What each role may act as: an admin can do what editors and ops do.
GRANTS: dict[str, frozenset[str]] = {
    "editor": frozenset({"editor"}),
    "ops": frozenset({"ops"}),
    "admin": frozenset({"admin", "editor", "ops"}),
}
PREFIX = "prt_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, role: str, name: str | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name or role, role=role, token_hash=hash_token(token)))
    return token


def find_token(session: Session, token: str) -> ApiToken | None:
    return session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    )
