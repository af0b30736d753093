"""The email channel: the messages subscribers get, and the ways they leave (SMTP, files).

Messages are multipart text and HTML from the Jinja2 templates in ``templates/email/``. Every
message to a subscriber carries the one-click unsubscribe headers (RFC 2369 and RFC 8058);
the confirmation mail does not, since its reader has not subscribed yet.

A :class:`Mailer` sends a batch over one connection and sorts what goes wrong: a
:class:`MailUnavailable` (transient: the server, the network, the login, or a 4xx) is retried
on the schedule; a :class:`MailRefused` (a 5xx for this recipient or this message) is not.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import headerregistry, policy
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jinja2
import markupsafe

from shared.errors import ConfigError, PermanentError, PressroomError, TransientError

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


# Long header lines are folded only at 998 characters (RFC 5322's hard limit): at the usual 78,
# the email package turns a long unsubscribe URL into encoded-words that no client can follow.
class _Headers(headerregistry.HeaderRegistry):
    """The standard registry, its header classes made once: the stock one builds a new
    class for every header it parses, a fifth of the cost of a message in a fan-out."""

    @functools.cache  # noqa: B019 (one registry, for the life of the process)
    def __getitem__(self, name: str) -> type[headerregistry.BaseHeader]:
        return super().__getitem__(name)


POLICY = policy.default.clone(max_line_length=998, header_factory=_Headers())
# What must never reach a header: C0 and C1 controls (CR and LF above all), DEL, and the
# Unicode line and paragraph separators.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class Letterhead:
    """What every message shares: who it is from and the site its links lead to."""

    from_address: str  # e.g. "Pressroom <news@example.com>"
    public_base_url: str  # e.g. "https://news.example.com"
    site_name: str = "Pressroom"

    @property
    def site_domain(self) -> str:
        """The public site's host, for Message-IDs that say where they were made."""
        return urlsplit(self.public_base_url).hostname or "localhost"

    @property
    def mail_domain(self) -> str:
        """The From address's domain: the one that can receive the mailto unsubscribe."""
        return parseaddr(self.from_address)[1].rpartition("@")[2] or self.site_domain


@dataclass(frozen=True)
class Story:
    """What a subscriber is told about a story."""

    headline: str
    url: str  # the reader page
    summary: str | None = None
    section: str | None = None


def header_text(value: str) -> str:
    """``value`` on one line: control characters and runs of white space become one space, so
    a headline with CR/LF in it cannot start a header of its own."""
    return " ".join(CONTROLS.sub(" ", value).split())


def new_story_email(
    letterhead: Letterhead,
    to: str,
    story: Story,
    unsubscribe_url: str,
    *,
    now: datetime | None = None,
) -> EmailMessage:
    """The mail about a new story; its subject is the headline."""
    context = {"unsubscribe_url": unsubscribe_url, **_story_context(story)}
    message = _message(letterhead, to, story.headline, "new_story", context, now)
    _add_unsubscribe(message, letterhead, unsubscribe_url)
    return message


def correction_email(
    letterhead: Letterhead,
    to: str,
    story: Story,
    note: str,
    unsubscribe_url: str,
    *,
    now: datetime | None = None,
) -> EmailMessage:
    """The one mail about a correction, for those who were sent the story."""
    context = {"unsubscribe_url": unsubscribe_url, "note": note, **_story_context(story)}
    subject = f"Correction: {story.headline}"
    message = _message(letterhead, to, subject, "correction", context, now)
    _add_unsubscribe(message, letterhead, unsubscribe_url)
    return message


def confirmation_email(
    letterhead: Letterhead,
    to: str,
    confirm_url: str,
    expires_in: timedelta,
    *,
    now: datetime | None = None,
) -> EmailMessage:
    """The double opt-in mail: nothing else is sent until its link is followed."""
    context = {"confirm_url": confirm_url, "expires": _duration(expires_in)}
    subject = f"Confirm your subscription to {letterhead.site_name}"
    return _message(letterhead, to, subject, "confirm", context, now)


def _story_context(story: Story) -> dict[str, str | None]:
    return {
        "headline": header_text(story.headline),
        "url": story.url,
        "summary": story.summary,
        "section": story.section,
    }


def _message(
    letterhead: Letterhead,
    to: str,
    subject: str,
    template: str,
    context: Mapping[str, str | None],
    now: datetime | None,
) -> EmailMessage:
    text, html = _render(template, {"site_name": letterhead.site_name, **context})
    message = EmailMessage(policy=POLICY)
    message["Subject"] = header_text(subject)
    message["From"] = letterhead.from_address
    message["To"] = to
    message["Date"] = format_datetime((now or datetime.now(UTC)).astimezone(UTC), usegmt=True)
    message["Message-ID"] = make_msgid(domain=letterhead.site_domain)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: out-of-office robots stay quiet
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _add_unsubscribe(message: EmailMessage, letterhead: Letterhead, url: str) -> None:
    """RFC 2369's List-Unsubscribe and RFC 8058's one-click POST to the same URL."""
    if urlsplit(url).scheme not in ("http", "https") or re.search(r"[\s<>,]", url):
        raise ValueError("an unsubscribe URL is an http(s) URL without spaces, <, > or commas")
    mailto = f"mailto:unsubscribe@{letterhead.mail_domain}?subject=unsubscribe"
    message["List-Unsubscribe"] = f"<{url}>, <{mailto}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"


@functools.cache
def _templates() -> jinja2.Environment:
    """Built on first use, not at import; HTML templates escape what they are given."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(name: str, context: Mapping[str, str | None]) -> tuple[str, str]:
    """The text and HTML bodies. A fan-out renders each story once: the bodies differ per
    recipient only by their links (the unsubscribe URL), put in after rendering."""
    links = {k: v for k, v in context.items() if k.endswith("_url") and k != "url"}
    placeholders = {k: f"\x00{k}\x00" for k in links}
    text, html = _render_cached(name, tuple(sorted({**context, **placeholders}.items())))
    for key, value in links.items():
        text = text.replace(placeholders[key], value or "")
        html = html.replace(placeholders[key], str(markupsafe.escape(value or "")))
    return text, html


@functools.lru_cache(maxsize=64)
def _render_cached(name: str, context: tuple[tuple[str, str | None], ...]) -> tuple[str, str]:
    env, values = _templates(), dict(context)
    text = env.get_template(f"email/{name}.txt").render(values)
    html = env.get_template(f"email/{name}.html").render(values)
    return text.strip() + "\n", html


def _duration(span: timedelta) -> str:
    """A link's lifetime as a reader says it: "24 hours", "7 days", "90 minutes"."""
    minutes = max(1, round(span.total_seconds() / 60))
    if minutes >= 2 * 1440 and minutes % 1440 == 0:
        count, unit = minutes // 1440, "day"
    elif minutes >= 60 and minutes % 60 == 0:
        count, unit = minutes // 60, "hour"
    else:
        count, unit = minutes, "minute"
    return f"{count} {unit}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# Sending


class MailUnavailable(TransientError):
    """The message could not be handed over now (connection, TLS, login, an SMTP 4xx)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class MailRefused(PermanentError):
    """The server refused this message for good (an SMTP 5xx for its content)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class RecipientRefused(MailRefused):
    """The server refused this recipient for good (e.g. 550: no such mailbox)."""


Send = Callable[[EmailMessage], None]


class Mailer(Protocol):
    """Sends mail; ``open()`` yields a ``send`` function for one batch."""

    def open(self) -> AbstractContextManager[Send]: ...


def mailer_for(smtp_url: str | None, mail_dir: Path) -> Mailer:
    """SMTP when SMTP_URL is set; otherwise one ``.eml`` file per message in ``mail_dir``."""
    return SmtpMailer(smtp_url) if smtp_url else FileMailer(mail_dir)


@dataclass(frozen=True)
class SmtpServer:
    """Where SMTP_URL points: ``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://``.

    Ports default to 465 for smtps (TLS from the first byte), 587 with STARTTLS, else 25.
    """

    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def secret_forms(self) -> list[str]:
        """The password as it could show up in text: plain, URL-quoted, or in AUTH's base64."""
        if not self.password:
            return []
        plain = f"\0{self.username or ''}\0{self.password}".encode()
        return [
            self.password,
            quote(self.password, safe=""),
            base64.b64encode(self.password.encode()).decode(),
            base64.b64encode(plain).decode(),
        ]


def parse_smtp_url(url: str) -> SmtpServer:
    """The server SMTP_URL names, or ConfigError (whose message never repeats the URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigError("SMTP_URL must start with smtp:// or smtps://")
    query = parse_qs(parts.query)
    if set(query) - {"starttls"}:
        raise ConfigError("SMTP_URL takes one option, starttls=1")
    starttls = query.get("starttls", ["0"])[-1].lower() in ("1", "true", "yes", "on")
    if parts.scheme == "smtps" and starttls:
        raise ConfigError("SMTP_URL: smtps:// is TLS already; starttls=1 is for smtp://")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("SMTP_URL has an invalid port") from None
    if not parts.hostname:
        raise ConfigError("SMTP_URL names no host")
    default_port = 465 if parts.scheme == "smtps" else 587 if starttls else 25
    return SmtpServer(
        host=parts.hostname,
        port=port or default_port,
        implicit_tls=parts.scheme == "smtps",
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class _SMTP(smtplib.SMTP):
    """smtplib's client, noting when the message itself went out: a connection lost before
    then lost nothing, one lost after may have delivered it."""

    data_sent = False

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_sent = True
        return super().data(msg)


class _SMTPS(smtplib.SMTP_SSL, _SMTP):
    """The same, over TLS from the first byte."""


class SmtpMailer:
    """Mail over SMTP: one connection per batch, opened on the first message."""

    def __init__(
        self,
        smtp_url: str,
        *,
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,  # the EHLO name; None asks the system (getfqdn)
    ):
        self.server = parse_smtp_url(smtp_url)
        self.timeout = timeout
        # smtplib's own default context for STARTTLS checks no certificate: never use it.
        self.tls_context = tls_context or ssl.create_default_context()
        self.local_hostname = local_hostname

    def __repr__(self) -> str:
        return f"SmtpMailer({self.server.where})"

    @contextmanager
    def open(self) -> Iterator[Send]:
        batch = _SmtpBatch(self)
        try:
            yield batch.send
        finally:
            batch.close()

    def connect(self) -> _SMTP:
        """A connection, through TLS and logged in as SMTP_URL says."""
        server = self.server
        smtp: _SMTP
        if server.implicit_tls:
            smtp = _SMTPS(
                server.host,
                server.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self.tls_context,
            )
        else:
            smtp = _SMTP(server.host, server.port, self.local_hostname, self.timeout)
        try:
            if server.starttls:
                smtp.starttls(context=self.tls_context)
            if server.username is not None:
                smtp.login(server.username, server.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


class _SmtpBatch:
    """One batch's connection. A connection that already carried mail and is found dropped
    (idle timeout, a per-connection limit, a 421) before the next message went out is opened
    again, once; a connection lost after the message went out is not retried here, since the
    server may have taken it."""

    def __init__(self, mailer: SmtpMailer):
        self.mailer = mailer
        self.smtp: _SMTP | None = None
        self.carried = 0  # messages the open connection has taken
        self.data_sent = False  # whether the last attempt got as far as the message itself

    def send(self, message: EmailMessage) -> None:
        try:
            self._send(message)
            return
        except OSError as exc:  # smtplib's errors are OSErrors too
            recipients = _recipients(message)
            error = sorted_error(exc, self.mailer.server, recipients, self.data_sent)
        # Raised out here, so neither smtplib's error (with the server's words) nor anything
        # it holds rides along as this one's context.
        raise error

    def _send(self, message: EmailMessage) -> None:
        for may_retry in (True, False):
            smtp = self._connection()
            smtp.data_sent = False
            try:
                smtp.send_message(message)
            except OSError as exc:
                self.data_sent = smtp.data_sent
                if not _connection_lost(exc):
                    raise
                idle_drop = self._dropped_while_idle(exc)
                self.close()
                if not (may_retry and idle_drop):
                    raise
                where = self.mailer.server.where
                log.info("SMTP server %s dropped the connection; reconnecting", where)
                continue
            self.carried += 1
            return

    def _dropped_while_idle(self, exc: OSError) -> bool:
        """A lost connection the server dropped between messages: it had carried mail, and
        lost nothing of this one (no data went out, no timeout leaves it in doubt)."""
        return self.carried > 0 and not self.data_sent and not isinstance(exc, TimeoutError)

    def _connection(self) -> _SMTP:
        if self.smtp is None:
            self.smtp = self.mailer.connect()
            self.carried = 0
        return self.smtp

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except OSError:
            smtp.close()


def _connection_lost(exc: OSError) -> bool:
    """Whether the connection is gone, or in a state we cannot trust, after this error."""
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException):
        return smtp_code(exc) == 421  # "service not available, closing channel"
    return True  # a socket error or a timeout


def smtp_code(exc: BaseException) -> int | None:
    """The SMTP reply code an smtplib error carries, if any (a refused recipient's too)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return int(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        return int(next(iter(exc.recipients.values()))[0])
    return None


def sorted_error(
    exc: OSError, server: SmtpServer, recipients: Sequence[str], data_sent: bool
) -> PressroomError:
    """Our error for an smtplib or socket one: transient unless a 5xx answered this recipient
    or this message. Its text names no recipient and no password."""
    code, reply = smtp_code(exc), _scrub(_reply(exc), [*server.secret_forms(), *recipients])
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and code and code >= 500 and code != 530:
        return RecipientRefused(f"SMTP {code} for the recipient: {reply}", code)
    if isinstance(exc, smtplib.SMTPDataError) and code and code >= 500:
        return MailRefused(f"SMTP {code} for the message: {reply}", code)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return MailUnavailable(f"SMTP login to {server.where} refused: {code} {reply}", code)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        after = " after the message went out: it may have arrived" if data_sent else ""
        return MailUnavailable(f"SMTP server {server.where} closed the connection{after}")
    if isinstance(exc, smtplib.SMTPException):
        return MailUnavailable(f"SMTP {code or 'error'} from {server.where}: {reply}", code)
    if isinstance(exc, ssl.SSLError):
        return MailUnavailable(f"TLS with {server.where} failed: {exc.reason or 'no detail'}")
    return MailUnavailable(f"cannot reach SMTP server {server.where}: {_os_reason(exc)}")


def _reply(exc: OSError) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        raw = exc.smtp_error
    elif isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        raw = next(iter(exc.recipients.values()))[1]
    else:
        raw = str(exc)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return header_text(text)[:200]


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _recipients(message: EmailMessage) -> list[str]:
    fields = [str(v) for name in ("To", "Cc", "Bcc") for v in message.get_all(name, [])]
    return [address for _, address in getaddresses(fields) if address]


class FileMailer:
    """Mail as files: one RFC 5322 ``.eml`` per message, for running without an SMTP server.

    Each file is written under a dot-name and renamed into place, so a reader that lists
    ``*.eml`` never sees half a message. No fsync: a killed process loses nothing the kernel
    has; a power cut may, which is fine for a development mailbox.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    @contextmanager
    def open(self) -> Iterator[Send]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MailUnavailable(f"cannot create {self.directory}: {_os_reason(exc)}") from None
        yield self.write

    def write(self, message: EmailMessage) -> None:
        name = f"{time.time_ns()}-{uuid.uuid4().hex}.eml"  # in the order written, never clashing
        temporary = self.directory / f".{name}.part"
        try:
            temporary.write_bytes(message.as_bytes(policy=message.policy.clone(linesep="\r\n")))
            os.replace(temporary, self.directory / name)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise MailUnavailable(f"cannot write to {self.directory}: {_os_reason(exc)}") from None


class MemoryMailer:
    """Keeps what it is given: the null mailer, for tests of code that sends mail."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    @contextmanager
    def open(self) -> Iterator[Send]:
        yield self.sent.append
