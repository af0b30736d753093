"""The ``pressroom`` command: parses arguments and calls each service's code, nothing more."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click

from shared.config import Settings
from shared.errors import ConfigError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """Pressroom: publishing back end. Every command reads the same environment as `up`."""


@main.command()
def up() -> None:
    """Start the whole stack in the foreground (Ctrl-C stops it)."""
    from services.stack import up as run_stack

    try:
        code = run_stack(_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    from shared.db import make_engine
    from shared.migrate import upgrade

    engine = make_engine(_settings().database_url)
    upgrade(engine)
    click.echo("database schema is up to date", err=True)


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(["editor", "admin", "ops"]), required=True)
@click.option("--name", default=None, help="Who or what the token is for.")
def token_create(role: str, name: str | None) -> None:
    """Create a token and print it (only the token, on stdout); it is not shown again."""
    from shared.db import Database
    from shared.tokens import create_token

    database = Database(_settings().database_url)
    with database.transaction() as session:
        value = create_token(session, role, name)
    click.echo(value)


@main.command()
@click.argument("service", type=click.Choice(["archiver", "notifier"]))
@click.option("--concurrency", "-c", type=int, default=None)
def worker(service: str, concurrency: int | None) -> None:
    """Run a consumer worker on its own queue."""
    from services.workers import run_worker

    run_worker(_settings(), service, concurrency)


@main.command()
def beat() -> None:
    """Run Celery beat: outbox sweep, due publications, archive sweep."""
    from services.workers import run_beat

    run_beat(_settings())


@main.group()
def archive() -> None:
    """Archiving: the policy sweep, and archiving or restoring one article by hand."""


@archive.command("sweep")
def archive_sweep() -> None:
    """Archive every story past its age now, in the foreground; prints how many."""
    from services.archiver.archiving import sweep
    from shared.db import Database

    settings = _settings()
    database = Database(settings.database_url)
    archived = sweep(database, settings, on_chunk=lambda n: click.echo(f"archived {n}", err=True))
    click.echo(archived)


@archive.command("article")
@click.argument("article")
@click.option("--reason", required=True, help="Why, for the audit trail.")
def archive_article(article: str, reason: str) -> None:
    """Archive one article (by id or slug) now."""
    _article_action(article, "archive", reason)


@archive.command("restore")
@click.argument("article")
@click.option("--reason", required=True, help="Why, for the audit trail.")
def archive_restore(article: str, reason: str) -> None:
    """Unarchive one article (by id or slug); it gets a new archive date a full age away."""
    _article_action(article, "unarchive", reason)


def _article_action(article: str, action: str, reason: str) -> None:
    from services.publisher.articles.service import act_by_hand
    from shared.errors import PressroomError

    settings = _settings()
    try:
        status = act_by_hand(settings, article, action, reason, actor=f"cli:{_whoami()}")
    except (PressroomError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{article}: {status}")


def _whoami() -> str:
    import getpass

    return getpass.getuser()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def queues(as_json: bool) -> None:
    """Queue depth and oldest age, outbox backlog and lag, dead letters, live workers."""
    import json

    from shared import ops
    from shared.celery import create_celery
    from shared.db import Database

    settings = _settings()
    snap = ops.snapshot(
        Database(settings.database_url),
        settings.redis_client_url,
        create_celery(settings, "cli"),
    )
    if as_json:
        click.echo(json.dumps(snap.as_dict(), indent=2))
    else:
        click.echo(f"{'queue':<10} {'depth':>7} {'oldest':>9}  dead letters")
        for q in snap.queues:
            depth = "?" if q.depth is None else str(q.depth)
            age = f"{q.oldest_age_s:.1f}s" if q.oldest_age_s is not None else "-"
            click.echo(f"{q.name:<10} {depth:>7} {age:>9}  {snap.dead_letters.get(q.name, 0)}")
        lag = f"{snap.outbox_lag_s:.1f}s" if snap.outbox_lag_s is not None else "-"
        in_flight = "?" if snap.in_flight is None else snap.in_flight
        click.echo(f"in flight: {in_flight}   outbox pending: {snap.outbox_pending} (lag {lag})")
        click.echo(f"workers: {', '.join(snap.workers) or 'none answering'}")
    if not snap.broker_ok:
        raise click.ClickException("the broker is not answering: queue depths are unknown")


@contextlib.contextmanager
def _broker_answers(then: str) -> Iterator[None]:
    """A broker that does not answer is a one-line error, not a traceback."""
    from kombu.exceptions import OperationalError

    try:
        yield
    except OperationalError as exc:
        raise click.ClickException(f"the broker did not answer ({exc}); {then}") from None


@main.group()
def dlq() -> None:
    """Dead letters: messages a consumer could not handle, with the reason."""


@dlq.command("list")
@click.option("--consumer", type=click.Choice(["archiver", "notifier"]))
@click.option("--all", "show_all", is_flag=True, help="Include those already replayed.")
def dlq_list(consumer: str | None, show_all: bool) -> None:
    """List dead letters, oldest first."""
    from sqlalchemy import select

    from shared.db import Database
    from shared.models import DeadLetter

    query = select(DeadLetter).order_by(DeadLetter.id)
    if consumer:
        query = query.where(DeadLetter.consumer == consumer)
    if not show_all:
        query = query.where(DeadLetter.replayed_at.is_(None))
    with Database(_settings().database_url).sessionmaker() as session:
        for letter in session.scalars(query):
            replayed = (
                f" replayed {letter.replayed_at:%Y-%m-%d %H:%M}" if letter.replayed_at else ""
            )
            click.echo(
                f"#{letter.id} {letter.created_at:%Y-%m-%d %H:%M:%S} {letter.consumer} "
                f"event={letter.event_id or '-'}{replayed}\n    {letter.reason}"
            )


@dlq.command("replay")
@click.option("--consumer", type=click.Choice(["archiver", "notifier"]))
@click.option("--id", "ids", type=int, multiple=True, help="Only these (repeatable).")
def dlq_replay(consumer: str | None, ids: tuple[int, ...]) -> None:
    """Send dead letters back to their consumer's queue (after the cause is fixed)."""
    from shared import ops
    from shared.bus import CelerySender
    from shared.celery import create_celery
    from shared.db import Database

    settings = _settings()
    sender = CelerySender(create_celery(settings, "cli"))
    with _broker_answers("the letters stay to replay"):
        count = ops.replay_dead_letters(
            Database(settings.database_url), sender, consumer, list(ids)
        )
    click.echo(f"replayed {count} dead letters")


@main.group()
def events() -> None:
    """The event log (the outbox)."""


@events.command("replay")
@click.option("--since", required=True, type=click.DateTime(), help="UTC, e.g. 2026-11-26T09:00")
@click.option("--consumer", type=click.Choice(["archiver", "notifier"]))
def events_replay(since: datetime, consumer: str | None) -> None:
    """Resend events since T that a consumer has not consumed (e.g. after Redis lost data)."""
    from shared import ops
    from shared.bus import CelerySender
    from shared.celery import create_celery
    from shared.db import Database

    settings = _settings()
    sender = CelerySender(create_celery(settings, "cli"))
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
    with _broker_answers("run it again once it is back; the ledgers skip what was already sent"):
        sent = ops.replay_events(Database(settings.database_url), sender, since, consumer)
    for queue, count in sent.items():
        click.echo(f"{queue}: resent {count} events")


@main.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--status",
    type=click.Choice(["published", "draft"]),
    default="published",
    help="Status of imported rows (published rows keep their published_at).",
)
def import_csv(path: Path, status: str) -> None:
    """Bulk-import articles from a CSV (title, body; optional section, tags, published_at).

    The file is checked whole before anything is written, and the good rows go in together
    or not at all."""
    from services.publisher.importer import ImportFailed, import_file

    settings = _settings()
    try:
        report = import_file(settings, path, status=status, progress=_progress)
    except ImportFailed as exc:
        raise click.ClickException(f"{path}: {exc}; nothing was imported") from None
    for problem in report.rejected:
        click.echo(f"line {problem.line}: {problem.reason}", err=True)
    click.echo(
        f"imported {report.imported} articles, rejected {len(report.rejected)} rows, "
        f"relayed {report.relayed} events",
        err=True,
    )
    click.echo(report.imported)
    if report.rejected and not report.imported:
        sys.exit(1)


def _progress(total_bytes: int):
    return click.progressbar(length=total_bytes, label="importing", file=sys.stderr)


if __name__ == "__main__":
    main()
