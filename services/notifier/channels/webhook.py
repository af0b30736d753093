"""The webhook channel: the POST (signing and safe targets live in :mod:`shared.webhooks`).

A delivery is signed with every live secret of its endpoint (during a rotation the old and the
new one both sign, so receivers can switch at their own pace), POSTed once with a 15 s timeout
and no redirects followed, and answered with an :class:`Outcome` that says what to do next:
nothing (delivered), retry later, give up, or disable the endpoint (410 Gone).

Safe targets and DNS rebinding: a name that resolved to a public address when the endpoint was
registered may resolve to 127.0.0.1 a minute later. Checking the name again just before the
POST is not enough either, because the HTTP client would resolve it a second time when it
connects. So :class:`HttpWebhookTransport` resolves each name once, at connect time, checks
every address it got, and connects to those checked addresses only (TLS still verifies the
certificate against the name). The price: we bypass the system's happy-eyeballs and connect to
the addresses in resolver order, and a connection kept alive within a batch is trusted for the
rest of that batch. Proxies from the environment are ignored, since through a proxy we could
not see where a connection really goes.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

import httpcore
import httpx

from shared.webhooks import (
    Resolver,
    UnresolvableTarget,
    UnsafeTarget,
    checked_addresses,
    signature_header,
    system_resolve,
    target_of,
)

TIMEOUT_S = 15.0
USER_AGENT = "Pressroom-Webhooks/1"
MAX_RETRY_AFTER_S = 86_400.0  # a receiver cannot park a delivery for longer than a day
MAX_CONNECTIONS = 64  # per batch's client: more than the POSTs a sender has in flight
RESPONSE_READ_LIMIT = 64 * 1024  # read this much of a reply so the connection can be reused

# Delivery


class Verdict(StrEnum):
    """What the fan-out does with a delivery after an attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"  # transient: try again on the schedule (or after retry_after)
    FAILED = "failed"  # permanent: dead letters, with the error
    GONE = "gone"  # 410: the receiver asks us to stop, so disable the endpoint


@dataclass(frozen=True)
class WebhookMessage:
    """One delivery attempt's input. ``msg_id`` must stay the same across retries (receivers
    deduplicate on it) and ``body`` is the exact JSON bytes that are signed and sent."""

    url: str
    msg_id: str
    body: bytes
    secrets: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to, as recorded on the delivery's attempt row."""

    verdict: Verdict
    elapsed_ms: int
    status_code: int | None = None
    error: str | None = None  # short, never a secret or a request header
    retry_after: float | None = None  # seconds, from Retry-After on 429 and 503

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.DELIVERED


Deliver = Callable[[WebhookMessage], Outcome]


class WebhookTransport(Protocol):
    """Sends webhooks; ``open()`` yields a ``deliver`` function for one batch."""

    def open(self) -> AbstractContextManager[Deliver]: ...


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header, either form (delta-seconds or HTTP-date),
    within [0, MAX_RETRY_AFTER_S]; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def classify(status: int, retry_after: str | None, elapsed_ms: int, now: float) -> Outcome:
    """The outcome of a response with this status (the contract in DESIGN.md's Notifications)."""
    outcome = partial(Outcome, elapsed_ms=elapsed_ms, status_code=status)
    if 200 <= status < 300:
        return outcome(Verdict.DELIVERED)
    if status == 410:
        return outcome(Verdict.GONE, error="HTTP 410: the receiver asks us to stop")
    if status in (429, 503):
        wait = parse_retry_after(retry_after, now)
        return outcome(Verdict.RETRY, error=f"HTTP {status}", retry_after=wait)
    if status == 408 or 500 <= status < 600:
        return outcome(Verdict.RETRY, error=f"HTTP {status}")
    if 300 <= status < 400:
        # Permanent: a redirect is the receiver's deliberate answer, and asking again gets it
        # again; the admin fixes the URL and replays the dead letters.
        return outcome(Verdict.FAILED, error=f"HTTP {status}: redirects are not followed")
    return outcome(Verdict.FAILED, error=f"HTTP {status}")


class _CheckedBackend(httpcore.SyncBackend):
    """Connects only to addresses it has just resolved and checked (see the module docstring)."""

    def __init__(self, allow_private: bool, resolve: Resolver):
        self.allow_private = allow_private
        self.resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: httpcore.ConnectError | None = None
        for address in checked_addresses(host, port, self.allow_private, self.resolve):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address to connect to")


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool that uses :class:`_CheckedBackend`.

    httpx has no public switch for the network backend, so the pool it built is replaced by
    one built the same way; tests that refuse a rebinding name fail if this stops working.
    """

    def __init__(self, backend: _CheckedBackend, verify: ssl.SSLContext | bool):
        super().__init__(verify=verify, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            network_backend=backend,
            max_connections=MAX_CONNECTIONS,
        )


class HttpWebhookTransport:
    """Webhooks over HTTP with httpx: one client (and its kept-alive connections) per batch."""

    def __init__(
        self,
        allow_private: bool = False,
        *,
        timeout: float = TIMEOUT_S,
        resolve: Resolver = system_resolve,
        clock: Callable[[], float] = time.time,
        verify: ssl.SSLContext | bool = True,  # a context, for receivers with a private CA
    ):
        self.allow_private = allow_private
        self.timeout = timeout
        self.resolve = resolve
        self.clock = clock
        self.verify = verify

    @contextmanager
    def open(self) -> Iterator[Deliver]:
        backend = _CheckedBackend(self.allow_private, self.resolve)
        transport = _CheckedTransport(backend, self.verify)
        with httpx.Client(
            transport=transport, timeout=self.timeout, follow_redirects=False, trust_env=False
        ) as client:
            yield partial(self._deliver, client)

    def _deliver(self, client: httpx.Client, message: WebhookMessage) -> Outcome:
        started = time.monotonic()
        try:
            target_of(message.url)  # its form; its addresses are checked when connecting
            return self._post(client, message, started)
        except UnsafeTarget as exc:
            return Outcome(Verdict.FAILED, _ms_since(started), error=f"refused: {exc}")
        except UnresolvableTarget as exc:
            return Outcome(Verdict.RETRY, _ms_since(started), error=str(exc))
        except httpx.TimeoutException:
            error = f"no answer within {self.timeout:g} s"
            return Outcome(Verdict.RETRY, _ms_since(started), error=error)
        except httpx.TransportError as exc:
            return Outcome(Verdict.RETRY, _ms_since(started), error=_short(exc))

    def _post(self, client: httpx.Client, message: WebhookMessage, started: float) -> Outcome:
        timestamp = int(self.clock())
        headers = {
            "webhook-id": message.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                message.secrets, message.msg_id, timestamp, message.body
            ),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        with client.stream("POST", message.url, content=message.body, headers=headers) as reply:
            _drain(reply, deadline=started + self.timeout)
            retry_after = reply.headers.get("retry-after")
            return classify(reply.status_code, retry_after, _ms_since(started), self.clock())


def _drain(reply: httpx.Response, deadline: float) -> None:
    """Read a little of the reply's body, so that a small one leaves the connection reusable;
    a large or slow one is cut off (the status has already said what we need)."""
    read = 0
    try:
        for chunk in reply.iter_raw():
            read += len(chunk)
            if read > RESPONSE_READ_LIMIT or time.monotonic() > deadline:
                return
    except httpx.HTTPError:
        return


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _short(exc: Exception) -> str:
    """An error worth recording: its kind and first words, never the request that caused it."""
    text = str(exc).strip() or "no detail"
    return f"{type(exc).__name__}: {text}"[:200]


class NullWebhookTransport:
    """Keeps what it is given and answers with one outcome: for tests of code that sends."""

    def __init__(self, verdict: Verdict = Verdict.DELIVERED):
        self.verdict = verdict
        self.sent: list[WebhookMessage] = []

    @contextmanager
    def open(self) -> Iterator[Deliver]:
        yield self._deliver

    def _deliver(self, message: WebhookMessage) -> Outcome:
        self.sent.append(message)
        return Outcome(self.verdict, 0, status_code=None)
