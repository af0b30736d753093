"""The email channel against a real SMTP server (aiosmtpd on loopback): what subscribers get,
over how many connections, and how each kind of refusal is sorted."""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.notifier.channels.email import (
    FileMailer,
    Letterhead,
    MailRefused,
    MailUnavailable,
    RecipientRefused,
    SmtpMailer,
    Story,
    confirmation_email,
    correction_email,
    header_text,
    mailer_for,
    new_story_email,
    parse_smtp_url,
)
from shared.errors import ConfigError, PermanentError, TransientError

LETTERHEAD = Letterhead("Pressroom News <news@mail.example.com>", "https://news.example.com")
STORY = Story(
    headline="Council approves the river crossing",
    url="https://news.example.com/news/council-approves-the-river-crossing",
    summary="The vote was 7 to 2 <after a long night> & a recount.",
    section="Local news",
)
UNSUBSCRIBE = "https://news.example.com/subscriptions/unsubscribe?token=eyJzIjoiMDFK.Zx1a.b-c_d"
USER, PASSWORD = "press", "pa55:w@rd/se cret"
SMTP_URL_PASSWORD = "pa55%3Aw%40rd%2Fse%20cret"
HOST = "pressroom.test"  # our EHLO name, so no test waits on a reverse DNS lookup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """An aiosmtpd handler that keeps every message, the connection it came on, and answers
    RCPT or DATA as a test tells it to."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.peers: list[Any] = []
        self.servers: list[Any] = []
        self.rcpt_answers: dict[str, str] = {}
        self.data_answer = "250 Message accepted for delivery"
        self.hang_up_instead_of_answering = False

    @property
    def connections(self) -> int:
        return len(set(self.peers))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_answers:
            return self.rcpt_answers[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.servers.append(server)
        if not self.data_answer.startswith("250"):
            return self.data_answer
        parsed = BytesParser(policy=policy.default).parsebytes(envelope.content)
        self.messages.append(parsed)
        self.recipients.append(list(envelope.rcpt_tos))
        self.peers.append(session.peer)
        if self.hang_up_instead_of_answering:
            server.transport.close()
        return self.data_answer


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@contextmanager
def smtp_server(sink: Sink, **options: Any) -> Iterator[Controller]:
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def plain(sink: Sink) -> Iterator[Controller]:
    with smtp_server(sink) as controller:
        yield controller


def mailer(controller: Controller, userinfo: str = "", **options: Any) -> SmtpMailer:
    return SmtpMailer(
        f"smtp://{userinfo}127.0.0.1:{controller.port}", local_hostname=HOST, **options
    )


def story_for(to: str, headline: str = STORY.headline) -> EmailMessage:
    story = Story(headline, STORY.url, STORY.summary, STORY.section)
    return new_story_email(LETTERHEAD, to, story, UNSUBSCRIBE)


def bodies(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def secret_free(exc: BaseException) -> bool:
    everything = "".join(traceback.format_exception(exc)) + repr(exc)
    return PASSWORD not in everything and SMTP_URL_PASSWORD not in everything


# --- the messages ---------------------------------------------------------------------------


def test_the_new_story_email_arrives_with_every_header(sink: Sink, plain: Controller) -> None:
    with mailer(plain).open() as send:
        send(story_for("reader@example.org"))

    [got] = sink.messages
    assert got["Subject"] == STORY.headline
    assert got["From"] == LETTERHEAD.from_address
    assert got["To"] == "reader@example.org"
    assert abs(parsedate_to_datetime(got["Date"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert got["Message-ID"].endswith("@news.example.com>")
    assert got["Auto-Submitted"] == "auto-generated"
    assert got["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@mail.example.com?subject=unsubscribe>"
    )
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got.get_content_type() == "multipart/alternative"


def test_the_new_story_email_says_what_and_where(sink: Sink, plain: Controller) -> None:
    with mailer(plain).open() as send:
        send(story_for("reader@example.org"))

    text, html = bodies(sink.messages[0])
    for part in (text, html):
        assert STORY.url in part and UNSUBSCRIBE in part and "Local news" in part
    assert STORY.summary and STORY.summary in text
    assert "&lt;after a long night&gt; &amp; a recount" in html  # escaped in HTML only


def test_a_headline_with_crlf_cannot_add_a_header(sink: Sink, plain: Controller) -> None:
    headline = "Budget passes\r\nBcc: attacker@evil.example\r\n\r\nInjected body"
    with mailer(plain).open() as send:
        send(story_for("reader@example.org", headline))

    [got] = sink.messages
    assert got["Bcc"] is None
    assert got["Subject"] == "Budget passes Bcc: attacker@evil.example Injected body"
    assert sink.recipients == [["reader@example.org"]]


def test_header_text_keeps_every_line_break_out() -> None:
    assert header_text("a\rb\nc\u2028d\x85e\x00f\tg  h ") == "a b c d e f g h"


def test_a_long_unsubscribe_url_stays_followable() -> None:
    url = "https://news.example.com/subscriptions/unsubscribe?token=" + "x" * 300
    raw = new_story_email(LETTERHEAD, "r@example.org", STORY, url).as_string()
    assert f"List-Unsubscribe: <{url}>," in raw


def test_an_unsubscribe_url_that_could_break_the_header_is_refused() -> None:
    for bad in ("mailto:x@example.com", "https://x.example/a b", "https://x.example/>, <evil>"):
        with pytest.raises(ValueError):
            new_story_email(LETTERHEAD, "r@example.org", STORY, bad)


def test_the_correction_email_carries_the_note() -> None:
    note = "An earlier version gave the vote as 6 to 3."
    message = correction_email(LETTERHEAD, "r@example.org", STORY, note, UNSUBSCRIBE)

    assert message["Subject"] == f"Correction: {STORY.headline}"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    for part in bodies(message):
        assert note in part and STORY.url in part and UNSUBSCRIBE in part


def test_the_confirmation_email_has_the_link_and_its_lifetime() -> None:
    link = "https://news.example.com/subscriptions/confirm?token=abc"
    message = confirmation_email(LETTERHEAD, "r@example.org", link, timedelta(hours=48))

    assert message["Subject"] == "Confirm your subscription to Pressroom"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["List-Unsubscribe"] is None  # not a subscriber yet
    for part in bodies(message):
        assert link in part and "2 days" in part


# --- one connection per batch ----------------------------------------------------------------


def test_a_batch_goes_over_one_connection(sink: Sink, plain: Controller) -> None:
    smtp = mailer(plain)
    with smtp.open() as send:
        for n in range(5):
            send(story_for(f"reader{n}@example.org"))
    with smtp.open() as send:
        send(story_for("late@example.org"))

    assert len(sink.messages) == 6
    assert sink.connections == 2


def test_an_empty_batch_opens_no_connection(sink: Sink, plain: Controller) -> None:
    with mailer(plain).open():
        pass
    with socket.create_connection(("127.0.0.1", plain.port)):
        pass  # the server is there: nothing was sent because nothing was asked
    assert sink.connections == 0


def test_a_connection_the_server_dropped_is_opened_again_once(
    sink: Sink, plain: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.notifier.channels.email")
    with mailer(plain).open() as send:
        send(story_for("first@example.org"))
        for server in sink.servers:  # the server hangs up on an idle client
            plain.loop.call_soon_threadsafe(server.transport.close)
        time.sleep(0.2)
        send(story_for("second@example.org"))

    assert [r for [r] in sink.recipients] == ["first@example.org", "second@example.org"]
    assert sink.connections == 2
    assert "reconnecting" in caplog.text  # the drop was met, not dodged


def test_a_connection_lost_after_the_message_went_out_is_not_resent(
    sink: Sink, plain: Controller
) -> None:
    sink.hang_up_instead_of_answering = True
    with mailer(plain).open() as send, pytest.raises(MailUnavailable, match="may have arrived"):
        send(story_for("reader@example.org"))
    assert len(sink.messages) == 1  # taken once, and not sent again on a new connection


# --- refusals, sorted -----------------------------------------------------------------------


def test_a_550_recipient_is_permanent_and_the_batch_goes_on(sink: Sink, plain: Controller) -> None:
    sink.rcpt_answers["gone@example.org"] = "550 5.1.1 <gone@example.org>: no such user"
    with mailer(plain).open() as send:
        with pytest.raises(RecipientRefused) as caught:
            send(story_for("gone@example.org"))
        send(story_for("here@example.org"))

    assert isinstance(caught.value, PermanentError) and caught.value.code == 550
    assert "gone@example.org" not in str(caught.value)  # no subscriber address in logs
    assert [r for [r] in sink.recipients] == ["here@example.org"]
    assert sink.connections == 1


def test_a_451_recipient_is_transient(sink: Sink, plain: Controller) -> None:
    sink.rcpt_answers["busy@example.org"] = "451 4.3.0 try again later"
    with mailer(plain).open() as send, pytest.raises(MailUnavailable) as caught:
        send(story_for("busy@example.org"))
    assert isinstance(caught.value, TransientError) and caught.value.code == 451


def test_a_554_for_the_message_is_permanent(sink: Sink, plain: Controller) -> None:
    sink.data_answer = "554 5.6.0 message refused"
    with mailer(plain).open() as send, pytest.raises(MailRefused) as caught:
        send(story_for("reader@example.org"))
    assert caught.value.code == 554 and not isinstance(caught.value, RecipientRefused)


def test_no_server_is_transient() -> None:
    smtp = SmtpMailer(f"smtp://127.0.0.1:{free_port()}", local_hostname=HOST, timeout=2)
    with smtp.open() as send, pytest.raises(MailUnavailable, match="cannot reach"):
        send(story_for("reader@example.org"))


# --- login and TLS --------------------------------------------------------------------------


# aiosmtpd rightly warns about AUTH without TLS; these tests want plain text to read.
NO_TLS_WARNING = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def with_auth(sink: Sink) -> Iterator[Controller]:
    options = {"authenticator": authenticate, "auth_required": True, "auth_require_tls": False}
    with smtp_server(sink, **options) as controller:
        yield controller


@NO_TLS_WARNING
def test_logging_in_with_the_right_password(sink: Sink, with_auth: Controller) -> None:
    with mailer(with_auth, f"{USER}:{SMTP_URL_PASSWORD}@").open() as send:
        send(story_for("reader@example.org"))
    assert len(sink.messages) == 1


@NO_TLS_WARNING
def test_no_login_is_refused(sink: Sink, with_auth: Controller) -> None:
    with mailer(with_auth).open() as send, pytest.raises(MailUnavailable):
        send(story_for("reader@example.org"))
    assert sink.messages == []


@NO_TLS_WARNING
def test_the_password_never_shows(
    sink: Sink, with_auth: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    smtp = mailer(with_auth, f"{USER}:wrong{SMTP_URL_PASSWORD}@")
    with smtp.open() as send, pytest.raises(MailUnavailable, match="login") as caught:
        send(story_for("reader@example.org"))

    assert caught.value.code == 535 and secret_free(caught.value)
    assert PASSWORD not in repr(smtp) and SMTP_URL_PASSWORD not in repr(smtp.server)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("services.")]
    assert not any(PASSWORD in line or SMTP_URL_PASSWORD in line for line in ours)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here: TLS tests need no files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context that trusts it."""
    cert, key = self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_starttls_then_login(sink: Sink, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls
    options = {"tls_context": server_tls, "require_starttls": True, "auth_required": True}
    with smtp_server(sink, authenticator=authenticate, **options) as controller:
        url = f"smtp://{USER}:{SMTP_URL_PASSWORD}@127.0.0.1:{controller.port}?starttls=1"
        with SmtpMailer(url, tls_context=client_tls, local_hostname=HOST).open() as send:
            send(story_for("reader@example.org"))
    assert len(sink.messages) == 1


def test_implicit_tls(sink: Sink, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls
    with smtp_server(sink, ssl_context=server_tls) as controller:
        url = f"smtps://127.0.0.1:{controller.port}"
        with SmtpMailer(url, tls_context=client_tls, local_hostname=HOST).open() as send:
            send(story_for("reader@example.org"))
    assert len(sink.messages) == 1


def test_a_certificate_nobody_vouches_for_is_refused(
    sink: Sink, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, _ = tls
    with smtp_server(sink, tls_context=server_tls, require_starttls=True) as controller:
        url = f"smtp://127.0.0.1:{controller.port}?starttls=1"
        smtp = SmtpMailer(url, local_hostname=HOST)  # the system's trust store only
        with smtp.open() as send, pytest.raises(MailUnavailable, match="TLS"):
            send(story_for("reader@example.org"))
    assert sink.messages == []


# --- SMTP_URL -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "port", "implicit_tls", "starttls"),
    [
        ("smtp://mail.example.com", 25, False, False),
        ("smtp://mail.example.com?starttls=1", 587, False, True),
        ("smtps://mail.example.com", 465, True, False),
        ("smtp://mail.example.com:2525", 2525, False, False),
    ],
)
def test_smtp_urls(url: str, port: int, implicit_tls: bool, starttls: bool) -> None:
    server = parse_smtp_url(url)
    assert (server.host, server.port) == ("mail.example.com", port)
    assert (server.implicit_tls, server.starttls) == (implicit_tls, starttls)


def test_credentials_in_the_url_are_unquoted() -> None:
    server = parse_smtp_url(f"smtp://{USER}:{SMTP_URL_PASSWORD}@mail.example.com")
    assert (server.username, server.password) == (USER, PASSWORD)


@pytest.mark.parametrize(
    "url",
    [
        f"http://{USER}:{SMTP_URL_PASSWORD}@mail.example.com",
        f"smtp://{USER}:{SMTP_URL_PASSWORD}@mail.example.com:port",
        f"smtps://{USER}:{SMTP_URL_PASSWORD}@mail.example.com?starttls=1",
        f"smtp://{USER}:{SMTP_URL_PASSWORD}@mail.example.com?tls=yes",
        f"smtp://{USER}:{SMTP_URL_PASSWORD}@",
    ],
)
def test_bad_smtp_urls_are_config_errors_that_hide_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SmtpMailer(url)
    assert secret_free(caught.value)


def test_without_smtp_url_mail_goes_to_files(tmp_path: Path) -> None:
    assert isinstance(mailer_for(None, tmp_path), FileMailer)
    assert isinstance(mailer_for("smtp://mail.example.com", tmp_path), SmtpMailer)


# --- files ----------------------------------------------------------------------------------


def test_file_mailer_writes_one_parseable_eml_per_message(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    with FileMailer(folder).open() as send:
        send(story_for("one@example.org"))
        send(story_for("two@example.org", "Second\r\nX-Injected: yes"))

    files = sorted(folder.iterdir())
    assert [f.suffix for f in files] == [".eml", ".eml"]  # nothing half-written left behind
    raw = files[1].read_bytes()
    assert b"\r\n" in raw
    parsed = [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]
    assert [m["To"] for m in parsed] == ["one@example.org", "two@example.org"]
    assert parsed[1]["X-Injected"] is None and parsed[1]["Subject"] == "Second X-Injected: yes"
    assert parsed[0]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert STORY.url in bodies(parsed[0])[0]


def test_file_mailer_in_an_unwritable_place_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(MailUnavailable), FileMailer(blocker / "mail").open():
        pass
