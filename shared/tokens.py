"""API tokens: only a SHA-256 of each is stored; the token itself is shown once."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import ApiToken

log = logging.getLogger(__name__)

ROLES = ("editor", "admin", "ops")
# What each role may act as: an admin can do what editors and ops do.
GRANTS: dict[str, frozenset[str]] = {
    "editor": frozenset({"editor"}),
    "ops": frozenset({"ops"}),
    "admin": frozenset({"admin", "editor", "ops"}),
}
PREFIX = "prt_"
# How long a token the database accepted is trusted without asking it again.
TOKEN_CACHE_S = 5.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, role: str, name: str | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name or role, role=role, token_hash=hash_token(token)))
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at)))


def revoke_token(session: Session, token_id: str, actor: str) -> bool:
    """Revoke a live token; False if there is none with that id. Each publisher process
    may still accept it for up to TOKEN_CACHE_S (the README says so)."""
    token = session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
    )
    if token is None:
        return False
    token.revoked_at = utcnow()
    log.warning("token %s (%s, %s) revoked by %s", token.id, token.role, token.name, actor)
    return True


def find_token(session: Session, digest: str) -> ApiToken | None:
    """The live token with this hash (see :func:`hash_token`), if any."""
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    )


@dataclass(frozen=True)
class Caller:
    token_id: str
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


class KnownTokens:
    """Tokens found valid lately, by hash: the lookup was a sixth of an article creation.

    Only a token the database accepted is remembered, and only for ``ttl`` seconds: a token
    revoked in the database stops working within that time; a new one works at once.
    """

    def __init__(self, ttl: float = TOKEN_CACHE_S, size: int = 1024):
        self._cache: TTLCache[str, Caller] = TTLCache(maxsize=size, ttl=ttl)
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe

    def get(self, digest: str) -> Caller | None:
        with self._lock:
            return self._cache.get(digest)

    def put(self, digest: str, caller: Caller) -> None:
        with self._lock:
            self._cache[digest] = caller
