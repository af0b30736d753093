"""The ``pressroom`` command: parses arguments and calls each service's code, nothing more.

Every command works whether or not ``pressroom up`` is running. With the embedded
PostgreSQL (DATABASE_URL unset) a command uses the stack's server when it runs, and
otherwise starts the server for its own run and stops it after. Commands that need the
broker and find the embedded Redis stopped say so in one line.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click

from shared.config import Settings
from shared.errors import ConfigError
from shared.runtime import Runtime, database_server


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _runtime(name: str = "cli", *, broker: bool = False) -> Iterator[Runtime]:
    """The one runtime a command works with, its database server running meanwhile."""
    settings = _settings()
    try:
        with database_server(settings):
            runtime = Runtime(settings, name)
            try:
                if broker:
                    _check_broker(runtime)
                yield runtime
            finally:
                runtime.close()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _check_broker(runtime: Runtime) -> None:
    import redis

    try:
        runtime.redis.ping()
    except redis.RedisError:
        if runtime.settings.embedded_redis:
            raise click.ClickException(
                "the embedded Redis is not running: start the stack first (make run)"
            ) from None
        raise click.ClickException("the broker at REDIS_URL does not answer") from None


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
    from shared.migrate import upgrade

    with _runtime() as runtime:
        upgrade(runtime.db.engine)
    click.echo("database schema is up to date", err=True)


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(["editor", "admin", "ops"]), required=True)
@click.option("--name", default=None, help="Who or what the token is for.")
def token_create(role: str, name: str | None) -> None:
    """Create a token and print it (only the token, on stdout); it is not shown again."""
    from shared.tokens import create_token

    with _runtime() as runtime, runtime.db.transaction() as session:
        value = create_token(session, role, name)
    click.echo(value)


@token.command("list")
def token_list() -> None:
    """Tokens: id, role, name, when made and when revoked (never the token itself)."""
    from shared.tokens import list_tokens

    with _runtime() as runtime, runtime.db.session() as session:
        tokens = list_tokens(session)
    if not tokens:
        click.echo("no tokens yet: pressroom token create --role editor", err=True)
    for t in tokens:
        revoked = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        click.echo(f"{t.id}  {t.role:<6}  {t.name:<24}  {t.created_at:%Y-%m-%d %H:%M}  {revoked}")


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id (from `token list`)."""
    from shared.tokens import revoke_token

    with _runtime() as runtime, runtime.db.transaction() as session:
        found = revoke_token(session, token_id, actor=f"cli:{_whoami()}")
    if not found:
        raise click.ClickException(f"no active token with id {token_id!r}")
    click.echo(f"revoked {token_id}", err=True)


@main.command()
def relay() -> None:
    """Run the relay: outbox to broker, due publications, resending what was lost."""
    from services.relay import run_relay
    from shared.logs import configure_logging

    with _runtime("relay") as runtime:
        configure_logging(runtime.settings.log_level, runtime.settings.secrets())
        run_relay(runtime)


@main.command()
@click.argument("service", type=click.Choice(["archiver", "notifier"]))
@click.option("--concurrency", "-c", type=int, default=None)
def worker(service: str, concurrency: int | None) -> None:
    """Run a consumer worker on its own queue."""
    from services.workers import run_worker

    with _runtime(service) as runtime:
        run_worker(runtime.settings, service, concurrency)


@main.command()
def beat() -> None:
    """Run Celery beat: the workers' periodic jobs (the archive sweep)."""
    from services.workers import run_beat

    run_beat(_settings())


# Everything after the command name is Celery's (or Flower's), --help included.
PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}
ASKS_FOR_HELP = {"--help", "-h", "--version"}


def _run_celery(args: list[str]) -> None:
    from services.workers import run_celery

    settings = _settings()
    if args and not ASKS_FOR_HELP & set(args):
        runtime = Runtime(settings)
        try:
            _check_broker(runtime)
        finally:
            runtime.close()
    sys.exit(run_celery(settings, args))


@main.command(context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def celery(args: tuple[str, ...]) -> None:
    """Celery's own command line on the configured broker, knowing both queues:
    `pressroom celery inspect active`, `pressroom celery purge`, `pressroom celery --help`."""
    _run_celery(list(args))


@main.command(context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def flower(args: tuple[str, ...]) -> None:
    """Flower on the configured broker, at http://127.0.0.1:5555 (Flower's options, e.g.
    --port=5556, --address=0.0.0.0, --basic-auth=user:pass, follow)."""
    # Flower asks no password by default and can stop workers: loopback unless told.
    _run_celery(["flower", "--address=127.0.0.1", *args])


@main.group()
def archive() -> None:
    """Archiving: the policy sweep, and archiving or restoring one article by hand."""


@archive.command("sweep")
def archive_sweep() -> None:
    """Archive every story past its age now, in the foreground; prints how many."""
    from services.archiver.archiving import sweep

    with _runtime() as runtime:
        archived = sweep(
            runtime.db, runtime.settings, on_chunk=lambda n: click.echo(f"archived {n}", err=True)
        )
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

    with _runtime() as runtime:
        try:
            status = act_by_hand(
                runtime.db, runtime.settings, article, action, reason, actor=f"cli:{_whoami()}"
            )
        except (PressroomError, LookupError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{article}: {status}")


def _whoami() -> str:
    import getpass

    return getpass.getuser()


@main.group()
def related() -> None:
    """The "Also read" lists."""


@related.command("rebuild")
@click.option(
    "--jobs", default=1, show_default=True, type=click.IntRange(1, 16),
    help="processes for the lists: faster on several cores, each holding the corpus",
)  # fmt: skip
def related_rebuild(jobs: int) -> None:
    """Refit the text model on every published story and rebuild every list with it; the
    lists switch over in one transaction, so readers never see them half built."""
    from sqlalchemy import func, select

    from services.archiver.related import RelatedReads
    from shared.models import ArticleStatus, has_status

    with _runtime() as runtime:
        with runtime.db.session() as session:
            total = (
                session.scalar(select(func.count()).where(has_status(ArticleStatus.PUBLISHED))) or 0
            )
        engine = RelatedReads(runtime.db, runtime.settings)
        with click.progressbar(length=total, label="lists", file=sys.stderr) as bar:
            built = engine.rebuild(progress=bar.update, n_jobs=jobs)
    click.echo(f"rebuilt {built} lists", err=True)


@related.command("show")
@click.argument("article")
def related_show(article: str) -> None:
    """An article's list (by id or slug), with scores."""
    from sqlalchemy import or_, select

    from shared.models import Article
    from shared.related_lists import list_of

    with _runtime() as runtime, runtime.db.session() as session:
        found = session.scalar(
            select(Article).where(or_(Article.id == article, Article.slug == article))
        )
        if found is None:
            raise click.ClickException(f"no article with id or slug {article!r}")
        items = list_of(session, found.id)
    click.echo(f"{found.title} ({found.status})")
    if not items:
        click.echo("  no related stories yet")
    for n, item in enumerate(items, 1):
        score = "pinned" if item["score"] is None else f"{item['score']:.3f}"
        click.echo(f"  {n}. {score:>7}  {item['title']}  /articles/{item['slug']}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def queues(as_json: bool) -> None:
    """Queue depth and oldest age, outbox backlog and lag, dead letters, live workers,
    deliveries per channel and status."""
    import json

    from shared import ops

    with _runtime() as runtime:
        snap = ops.snapshot(runtime.db, runtime.settings.redis_client_url, runtime.celery)
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
        click.echo(f"{'deliveries':<10} " + " ".join(f"{s:>9}" for s in ops.DELIVERY_STATES))
        for channel, counts in snap.deliveries.items():
            click.echo(f"{channel:<10} " + " ".join(f"{counts[s]:>9}" for s in ops.DELIVERY_STATES))
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

    from shared.models import DeadLetter

    query = select(DeadLetter).order_by(DeadLetter.id)
    if consumer:
        query = query.where(DeadLetter.consumer == consumer)
    if not show_all:
        query = query.where(DeadLetter.open())
    from shared import ops

    with _runtime() as runtime, runtime.db.session() as session:
        letters = list(session.scalars(query))
        deliveries = [] if consumer == "archiver" else ops.dead_deliveries(runtime.db)
    if not letters and not deliveries:
        click.echo("no dead letters", err=True)
    for d in deliveries:
        click.echo(
            f"delivery #{d.id} {d.channel} {d.kind} event={d.event_id} after {d.attempts}"
            f" attempts\n    {d.last_error}"
        )
    for letter in letters:
        replayed = f" replayed {letter.replayed_at:%Y-%m-%d %H:%M}" if letter.replayed_at else ""
        if letter.discarded_at:
            replayed += f" discarded by {letter.discarded_by}: {letter.discard_reason}"
        click.echo(
            f"#{letter.id} {letter.created_at:%Y-%m-%d %H:%M:%S} {letter.consumer} "
            f"event={letter.event_id or '-'}{replayed}\n    {letter.reason}"
        )


@dlq.command("discard")
@click.option("--id", "ids", type=int, multiple=True, required=True, help="Repeatable.")
@click.option("--reason", required=True, help="Why it can never succeed, for the audit.")
def dlq_discard(ids: tuple[int, ...], reason: str) -> None:
    """Close dead letters that can never succeed: kept, with who and why, no longer counted."""
    from shared import ops

    with _runtime() as runtime:
        count = ops.discard_dead_letters(runtime.db, list(ids), f"cli:{_whoami()}", reason)
    click.echo(f"discarded {count} dead letters")


@dlq.command("replay")
@click.option("--consumer", type=click.Choice(["archiver", "notifier"]))
@click.option("--id", "ids", type=int, multiple=True, help="Only these (repeatable).")
@click.option("--deliveries", is_flag=True, help="Dead deliveries (emails, webhooks) instead.")
def dlq_replay(consumer: str | None, ids: tuple[int, ...], deliveries: bool) -> None:
    """Send dead letters back to their consumer's queue (after the cause is fixed), or with
    --deliveries give dead deliveries a fresh schedule."""
    from shared import ops
    from shared.bus import CelerySender

    if deliveries:
        with _runtime() as runtime:
            count = ops.replay_dead_deliveries(runtime.db, list(ids))
        click.echo(f"scheduled {count} dead deliveries again")
        return

    with _runtime(broker=True) as runtime, _broker_answers("the letters stay to replay"):
        sender = CelerySender(runtime.celery)
        count = ops.replay_dead_letters(runtime.db, sender, consumer, list(ids))
    click.echo(f"replayed {count} dead letters")


class IsoTime(click.ParamType):
    """An ISO 8601 time, with or without seconds and offset (naive is UTC), e.g. as the API
    prints it: 2026-11-26T09:00, 2026-11-26T09:00:00+00:00, 2026-11-26T09:00Z."""

    name = "ISO-8601-time"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-26T09:00", param, ctx)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@main.group()
def events() -> None:
    """The event log (the outbox)."""


@events.command("replay")
@click.option(
    "--since",
    required=True,
    type=IsoTime(),
    help="ISO 8601, e.g. 2026-11-26T09:00 (UTC) or 2026-11-26T09:00:00+01:00",
)
@click.option("--consumer", type=click.Choice(["archiver", "notifier"]))
def events_replay(since: datetime, consumer: str | None) -> None:
    """Resend events since T that a consumer has not consumed (e.g. after Redis lost data)."""
    from shared import ops
    from shared.bus import CelerySender

    then = "run it again once it is back; the ledgers skip what was already sent"
    with _runtime(broker=True) as runtime, _broker_answers(then):
        sent = ops.replay_events(runtime.db, CelerySender(runtime.celery), since, consumer)
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
@click.option(
    "--section-column",
    metavar="NAME",
    default=None,
    help="The column that holds the section, e.g. category (default: section).",
)
def import_csv(path: Path, status: str, section_column: str | None) -> None:
    """Bulk-import articles from a CSV (title, body; optional id, section, tags, published_at).

    The file is checked whole before anything is written, and the good rows go in together
    or not at all. A rerun skips the rows it already imported (known by the file's id
    column, or else by title and published_at)."""
    from services.publisher.importer import ImportFailed, import_file

    with _runtime() as runtime:
        try:
            report = import_file(
                runtime.db,
                path,
                status=status,
                progress=_progress,
                section_column=section_column,
            )
        except ImportFailed as exc:
            raise click.ClickException(f"{path}: {exc}; nothing was imported") from None
    for problem in report.rejected:
        click.echo(f"line {problem.line}: {problem.reason}", err=True)
    click.echo(
        f"imported {report.imported} articles, skipped {report.skipped} already imported,"
        f" rejected {len(report.rejected)} rows",
        err=True,
    )
    click.echo(report.imported)
    if report.rejected and not report.imported:
        sys.exit(1)


def _progress(total_bytes: int):
    return click.progressbar(length=total_bytes, label="importing", file=sys.stderr)


if __name__ == "__main__":
    main()
