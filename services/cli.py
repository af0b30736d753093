"""The ``pressroom`` command: parses arguments and calls each service's code, nothing more."""

from __future__ import annotations

import sys
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

    sys.exit(run_stack(_settings()))


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


@main.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--status",
    type=click.Choice(["published", "draft"]),
    default="published",
    help="Status of imported rows (published rows keep their published_at).",
)
def import_csv(path: Path, status: str) -> None:
    """Bulk-import articles from a CSV (title, body; optional section, tags, published_at)."""
    from services.publisher.importer import import_file

    settings = _settings()
    report = import_file(settings, path, status=status, progress=_progress)
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
