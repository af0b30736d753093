"""Bearer-token authentication and role checks for the API."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from services.publisher.errors import fail
from services.publisher.state import state
from shared.tokens import GRANTS, Caller, find_token, hash_token

F = TypeVar("F", bound=Callable[..., Any])


def current_caller() -> Caller:
    caller: Caller = g.caller
    return caller


def _authenticate() -> Caller:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        fail(401, "A bearer token is required.", headers={"WWW-Authenticate": "Bearer"})
    digest = hash_token(token.strip())
    known = state().known_tokens
    caller = known.get(digest)
    if caller is not None:
        return caller
    with state().db.session() as session:
        found = find_token(session, digest)
    if found is None:
        fail(
            401, message="The token is invalid or revoked.", headers={"WWW-Authenticate": "Bearer"}
        )
    caller = Caller(token_id=found.id, name=found.name, role=found.role)
    known.put(digest, caller)
    return caller


def require_role(role: str) -> Callable[[F], F]:
    """Let the view run only for a caller whose token grants ``role``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            caller = _authenticate()
            if role not in GRANTS.get(caller.role, frozenset()):
                fail(403, f"This needs the {role} role; the token has {caller.role}.")
            g.caller = caller
            return view(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate
