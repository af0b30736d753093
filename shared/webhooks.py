"""Standard Webhooks signing, and the targets Pressroom may send webhooks to.

Shared: the publisher checks a target and makes a secret when an endpoint is registered,
the notifier checks every resolved address again at send time and signs each delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from secrets import token_bytes

import httpx

from shared.errors import PermanentError, TransientError

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64
TOLERANCE_S = 300  # how old a timestamp receivers accept (the spec's five minutes)
DEFAULT_PORTS = {"http": 80, "https": 443}

# ---------------------------------------------------------------------------------------------
# Signatures


class BadSignature(PermanentError):
    """A webhook whose signature or timestamp does not check out: the receiver must drop it."""


def new_secret() -> str:
    """A fresh endpoint secret, shown to the admin once: ``whsec_`` and base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    """The HMAC key inside a secret: the spec signs with the decoded bytes, not the text."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    content = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: each secret's signature, separated by spaces."""
    if not secrets:
        raise ValueError("a webhook needs at least one secret to sign with")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Check a received webhook as a receiver should, or raise :class:`BadSignature`.

    ``headers`` must look names up case-insensitively or hold them in lower case. The
    timestamp must be recent, which stops an old, captured delivery from being replayed.
    """
    msg_id, stamp, given = (headers.get(f"webhook-{n}") for n in ("id", "timestamp", "signature"))
    if not (msg_id and stamp and given):
        raise BadSignature("webhook-id, webhook-timestamp and webhook-signature are required")
    if not re.fullmatch(r"[0-9]{1,12}", stamp):
        raise BadSignature("webhook-timestamp is not a number of seconds")
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance_s:
        raise BadSignature("webhook-timestamp is too far from now")
    expected = sign(secret, msg_id, int(stamp), body)
    if not any(hmac.compare_digest(expected, sig) for sig in given.split()):
        raise BadSignature("no signature in webhook-signature matches")


# ---------------------------------------------------------------------------------------------
# Safe targets

Resolver = Callable[[str, int], Sequence[str]]


class UnsafeTarget(PermanentError):
    """A webhook URL we refuse to send to; the message says why, fit to show the admin."""


class UnresolvableTarget(TransientError):
    """The URL's host does not resolve now; DNS may come back, so at send time this is retried."""


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, IPv4 and IPv6, in its order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableTarget(f"{host} does not resolve: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_target(url: str, allow_private: bool, resolve: Resolver = system_resolve) -> None:
    """Raise :class:`UnsafeTarget` unless ``url`` is a plain http(s) URL whose host resolves
    to public addresses only (every one of them: DNS may hand out any at send time).

    Call it at registration; the transport checks again each time it connects.
    """
    host, port = target_of(url)
    checked_addresses(host, port, allow_private, resolve)


def target_of(url: str) -> tuple[str, int]:
    """The host and port a webhook URL points at, or :class:`UnsafeTarget` for its form."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise UnsafeTarget("not a valid URL") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise UnsafeTarget("only http and https URLs can receive webhooks")
    if parsed.userinfo:
        raise UnsafeTarget("the URL must not carry credentials (user:password@)")
    if not parsed.host:
        raise UnsafeTarget("the URL names no host")
    return parsed.host, parsed.port or DEFAULT_PORTS[parsed.scheme]


def checked_addresses(host: str, port: int, allow_private: bool, resolve: Resolver) -> list[str]:
    """The addresses ``host`` resolves to, each of them public unless ``allow_private``."""
    addresses = list(resolve(host, port))
    if not addresses:
        raise UnresolvableTarget(f"{host} resolves to no address")
    if allow_private:
        return addresses
    for address in addresses:
        if reason := not_public(address):
            raise UnsafeTarget(f"{host} resolves to {address}, {reason}")
    return addresses


_REASONS = (
    ("is_unspecified", "the unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)


def not_public(address: str) -> str | None:
    """Why ``address`` is no place for a webhook, or None when it is a public one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    for candidate in (ip, *_embedded_ipv4(ip)):
        for flag, reason in _REASONS:
            if getattr(candidate, flag):
                return reason
        if not candidate.is_global:  # e.g. 100.64.0.0/10, shared by carrier-grade NAT
            return "not a public address"
    return None


def _embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one carries (mapped, 6to4, Teredo), which the IPv6 flags miss:
    2002:7f00:1:: is "global" yet leads to 127.0.0.1."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    return [v4 for v4 in found if v4 is not None]


# ---------------------------------------------------------------------------------------------
