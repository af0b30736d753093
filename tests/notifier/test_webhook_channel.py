"""The webhook channel against a real HTTP receiver on loopback: what arrives, signed how, and
what each kind of answer means for the delivery."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.notifier.channels.webhook import (
    MAX_RETRY_AFTER_S,
    HttpWebhookTransport,
    Outcome,
    Verdict,
    WebhookMessage,
    parse_retry_after,
)
from shared.webhooks import (
    BadSignature,
    UnresolvableTarget,
    UnsafeTarget,
    check_target,
    new_secret,
    sign,
    system_resolve,
    verify,
)

BODY = b'{"specversion":"1.0","type":"article.published","id":"evt_1"}'
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


def in_two_minutes() -> str:
    return formatdate(time.time() + 120, usegmt=True)


# What the receiver answers on each path: status and extra headers (or how to make them).
ANSWERS: dict[str, tuple[int, dict[str, str | Callable[[], str]]]] = {
    "/ok": (200, {}),
    "/accepted": (204, {}),
    "/moved": (302, {"Location": "/ok"}),
    "/bad": (400, {}),
    "/timeout": (408, {}),
    "/gone": (410, {}),
    "/busy": (429, {"Retry-After": "7"}),
    "/broken": (500, {}),
    "/unavailable": (503, {"Retry-After": in_two_minutes}),
}


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (the timeout test) is no error worth printing


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1 (a random port) that keeps every request it gets."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.server = QuietServer(("127.0.0.1", 0), self._handler_class())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def connections(self) -> set[tuple[str, int]]:
        return {request.peer for request in self.requests}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.requests.append(Received(self.path, headers, body, self.client_address))
                if self.path == "/slow":
                    time.sleep(1.0)
                status, extra = ANSWERS.get(self.path, (200, {}))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value if isinstance(value, str) else value())
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def message(url: str, *secrets: str, msg_id: str = "msg_2b7Kq") -> WebhookMessage:
    return WebhookMessage(url=url, msg_id=msg_id, body=BODY, secrets=secrets or (new_secret(),))


def deliver_one(transport: HttpWebhookTransport, msg: WebhookMessage) -> Outcome:
    with transport.open() as deliver:
        return deliver(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- signatures ---------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secrets_are_whsec_base64_of_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32


def test_delivery_arrives_signed_with_its_id_and_headers(receiver: Receiver) -> None:
    secret = new_secret()
    outcome = deliver_one(HttpWebhookTransport(True), message(receiver.url("/ok"), secret))

    assert outcome.verdict is Verdict.DELIVERED and outcome.status_code == 200
    assert outcome.error is None and outcome.elapsed_ms >= 0
    [got] = receiver.requests
    assert got.body == BODY
    assert got.headers["webhook-id"] == "msg_2b7Kq"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "Pressroom-Webhooks/1"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5
    verify(secret, got.headers, got.body)


def test_during_a_rotation_old_and_new_secrets_both_sign(receiver: Receiver) -> None:
    old, new = new_secret(), new_secret()
    deliver_one(HttpWebhookTransport(True), message(receiver.url("/ok"), old, new))

    [got] = receiver.requests
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    verify(old, got.headers, got.body)
    verify(new, got.headers, got.body)
    with pytest.raises(BadSignature):
        verify(new_secret(), got.headers, got.body)


def test_the_webhook_id_stays_the_same_on_a_retry(receiver: Receiver) -> None:
    transport = HttpWebhookTransport(True)
    deliver_one(transport, message(receiver.url("/broken"), msg_id="msg_same"))
    deliver_one(transport, message(receiver.url("/ok"), msg_id="msg_same"))
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["msg_same", "msg_same"]


def test_verify_refuses_altered_bodies_stale_timestamps_and_missing_headers() -> None:
    secret, now = new_secret(), 1_700_000_000
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now)}
    headers["webhook-signature"] = sign(secret, "msg_1", now, BODY)
    verify(secret, headers, BODY, now=now + 10)

    with pytest.raises(BadSignature, match="matches"):
        verify(secret, headers, BODY + b" ", now=now)
    with pytest.raises(BadSignature, match="too far"):
        verify(secret, headers, BODY, now=now + 301)
    with pytest.raises(BadSignature, match="required"):
        verify(secret, {"webhook-id": "msg_1"}, BODY, now=now)


# --- what each answer means -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "verdict", "status"),
    [
        ("/ok", Verdict.DELIVERED, 200),
        ("/accepted", Verdict.DELIVERED, 204),
        ("/moved", Verdict.FAILED, 302),
        ("/bad", Verdict.FAILED, 400),
        ("/timeout", Verdict.RETRY, 408),
        ("/gone", Verdict.GONE, 410),
        ("/busy", Verdict.RETRY, 429),
        ("/broken", Verdict.RETRY, 500),
        ("/unavailable", Verdict.RETRY, 503),
    ],
)
def test_answers_are_sorted(receiver: Receiver, path: str, verdict: Verdict, status: int) -> None:
    secret = new_secret()
    outcome = deliver_one(HttpWebhookTransport(True), message(receiver.url(path), secret))

    assert (outcome.verdict, outcome.status_code) == (verdict, status)
    assert (outcome.error is None) == (verdict is Verdict.DELIVERED)
    assert secret not in (outcome.error or "")


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    outcome = deliver_one(HttpWebhookTransport(True), message(receiver.url("/moved")))
    assert "redirect" in (outcome.error or "")
    assert [r.path for r in receiver.requests] == ["/moved"]


def test_429_and_503_carry_retry_after_in_both_forms(receiver: Receiver) -> None:
    transport = HttpWebhookTransport(True)
    assert deliver_one(transport, message(receiver.url("/busy"))).retry_after == 7
    from_date = deliver_one(transport, message(receiver.url("/unavailable"))).retry_after
    assert from_date == pytest.approx(120, abs=3)
    assert deliver_one(transport, message(receiver.url("/broken"))).retry_after is None


def test_a_receiver_slower_than_the_timeout_is_retried(receiver: Receiver) -> None:
    started = time.monotonic()
    outcome = deliver_one(HttpWebhookTransport(True, timeout=0.3), message(receiver.url("/slow")))

    assert outcome.verdict is Verdict.RETRY and outcome.status_code is None
    assert outcome.error == "no answer within 0.3 s"
    assert time.monotonic() - started < 0.9


def test_a_refused_connection_is_retried() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    outcome = deliver_one(HttpWebhookTransport(True), message(url))
    assert outcome.verdict is Verdict.RETRY and outcome.status_code is None
    assert "ConnectError" in (outcome.error or "")


def test_one_connection_serves_a_whole_batch(receiver: Receiver) -> None:
    transport = HttpWebhookTransport(True)
    with transport.open() as deliver:
        outcomes = [deliver(message(receiver.url("/ok"), msg_id=f"msg_{n}")) for n in range(5)]
    with transport.open() as deliver:
        deliver(message(receiver.url("/ok")))

    assert all(outcome.ok for outcome in outcomes)
    assert len(receiver.requests) == 6
    assert len(receiver.connections) == 2  # one per batch


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), ("-5", None), ("soon", None), (None, None)],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=time.time()) == seconds


def test_retry_after_as_a_date_is_counted_from_now_and_bounded() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == 90
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0
    assert parse_retry_after("999999999", now) == MAX_RETRY_AFTER_S


# --- safe targets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fd00::1]/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
        ("http://[2002:7f00:1::]/hook", "2002:7f00:1::"),
        ("http://100.64.0.1/hook", "not a public address"),
        ("http://localhost/hook", "loopback"),
    ],
)
def test_private_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        check_target(url, allow_private=False)
    check_target(url, allow_private=True)


def test_any_private_address_among_several_refuses_the_name() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return [PUBLIC_V4, PUBLIC_V6, "10.0.0.7"]

    with pytest.raises(UnsafeTarget, match=r"hooks\.example\.com resolves to 10\.0\.0\.7"):
        check_target("https://hooks.example.com/in", False, resolve)


def test_a_name_with_only_public_addresses_is_accepted() -> None:
    check_target("https://hooks.example.com/in", False, lambda host, port: [PUBLIC_V4, PUBLIC_V6])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/in", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("https://user:hunter2@hooks.example.com/in", "credentials"),
        ("https://token@hooks.example.com/in", "credentials"),
        ("https:///in", "no host"),
    ],
)
def test_urls_of_the_wrong_form_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason) as caught:
        check_target(url, allow_private=True)
    assert "hunter2" not in str(caught.value)


def test_a_name_that_does_not_resolve_is_transient() -> None:
    with pytest.raises(UnresolvableTarget):
        system_resolve("no-such-host.invalid", 443)


def test_send_time_refuses_a_private_target(receiver: Receiver) -> None:
    outcome = deliver_one(HttpWebhookTransport(False), message(receiver.url("/ok")))
    assert outcome.verdict is Verdict.FAILED
    assert "loopback" in (outcome.error or "")
    assert receiver.requests == []


def test_send_time_refuses_a_name_rebound_to_loopback(receiver: Receiver) -> None:
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])

    def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    url = receiver.url("/ok", host="hooks.example.com")
    check_target(url, allow_private=False, resolve=rebinding)  # at registration: public
    outcome = deliver_one(HttpWebhookTransport(False, resolve=rebinding), message(url))

    assert outcome.verdict is Verdict.FAILED and "127.0.0.1" in (outcome.error or "")
    assert receiver.requests == []


def test_the_transport_connects_to_the_address_it_checked(receiver: Receiver) -> None:
    # The system resolver knows nothing of this name: only the checked address can be used.
    def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "hooks.example.com" else []

    url = receiver.url("/ok", host="hooks.example.com")
    outcome = deliver_one(HttpWebhookTransport(True, resolve=resolve), message(url))

    assert outcome.ok
    assert receiver.requests[0].headers["host"] == f"hooks.example.com:{receiver.port}"
