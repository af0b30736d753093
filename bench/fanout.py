"""Fan-out benchmark: one story to 100,000 email subscribers and 1,000 webhook endpoints.

Each run, on a fresh database (``--database-url``'s server, or an embedded PostgreSQL):
the subscribers and endpoints are loaded, then the relay and ``--notifiers`` notifier
workers (one pool process each) start on an embedded Redis, one story is published, and the
clock runs until the last email has reached the SMTP sink and the last webhook the receiver.
Both sinks run in a process of their own (this script with ``--sinks``) and count what
arrives per recipient, so duplicates and losses are counted, not assumed.

The baseline, measured in the same run against the same sink: a plain smtplib loop over
one connection sending prebuilt-per-message two-part (text + HTML) emails, what one
process can push with no bookkeeping at all. With ``--kill``, a second run kills one
notifier with SIGKILL when half the emails have arrived and starts it again.

    .venv/bin/python bench/fanout.py [--subscribers 100000] [--endpoints 1000] [--kill]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _harness import (
    PYTHON,
    Databases,
    fmt,
    free_port,
    say,
    spawn,
    stack_env,
    stop_group,
    table,
    verdict,
    wait_until,
)
from sqlalchemy import insert

from shared import lifecycle
from shared.config import Settings
from shared.db import Database, new_id
from shared.embedded_redis import server_argv, wait_until_ready
from shared.migrate import upgrade
from shared.models import Article, Subscription, WebhookEndpoint
from shared.models import ArticleStatus as S
from shared.webhooks import new_secret

BASELINE_MESSAGES = 3000


# -- the sinks' process


def run_sinks(smtp_port: int, http_port: int, stats: Path) -> None:
    """An aiosmtpd sink and an HTTP receiver that answers 200, counting per recipient;
    the counts go to ``stats`` every half second and at SIGTERM."""
    from aiosmtpd.controller import Controller

    mails: Counter[str] = Counter()
    hooks: Counter[str] = Counter()
    counting = threading.Lock()  # the sinks' threads count while the writer reads

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            with counting:
                for rcpt in envelope.rcpt_tos:
                    mails[rcpt] += 1
            return "250 OK"

    class Hook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with counting:
                hooks[self.path] += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    controller = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    http = ThreadingHTTPServer(("127.0.0.1", http_port), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def write() -> None:
        with counting:
            seen_mails, seen_hooks = Counter(mails), Counter(hooks)
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "mails": sum(seen_mails.values()),
                    "mail_recipients": len(seen_mails),
                    "mail_doubled": sum(n - 1 for n in seen_mails.values() if n > 1),
                    "hooks": sum(seen_hooks.values()),
                    "hook_targets": len(seen_hooks),
                    "hook_doubled": sum(n - 1 for n in seen_hooks.values() if n > 1),
                }
            )
        )
        tmp.replace(stats)

    while not stop.wait(0.5):
        write()
    write()
    controller.stop()
    http.shutdown()


def read_stats(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"mails": 0, "hooks": 0, "mail_recipients": 0, "hook_targets": 0}


# -- the baseline


def two_part(n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Pressroom <news@example.org>"
    message["To"] = f"baseline{n}@example.org"
    message["Subject"] = f"Baseline story {n}"
    text = "A summary of the story, a link to it, and the unsubscribe footer. " * 12
    message.set_content(text)
    message.add_alternative(f"<html><body><p>{text}</p></body></html>", subtype="html")
    return message


def plain_loop_rate(smtp_port: int, count: int) -> float:
    """Messages/s of one smtplib loop over one connection, building each message."""
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="bench.local") as smtp:
        for n in range(count):
            smtp.send_message(two_part(n))
    return count / (time.perf_counter() - started)


# -- one run


def load(db: Database, subscribers: int, endpoints: int, receiver: str) -> None:
    rows = [
        {"id": new_id(), "email": f"reader{n}@example.org", "status": "confirmed",
         "sections": [], "tags": [], "requested_sections": [], "requested_tags": []}
        for n in range(subscribers)
    ]  # fmt: skip
    with db.transaction() as session:
        for start in range(0, len(rows), 10_000):
            session.execute(insert(Subscription), rows[start : start + 10_000])
        session.execute(
            insert(WebhookEndpoint),
            [
                {"id": new_id(), "url": f"{receiver}/h{n}", "event_types": ["article.published"],
                 "sections": [], "tags": [], "secret": new_secret(), "enabled": True}
                for n in range(endpoints)
            ],
        )  # fmt: skip


def publish(db: Database) -> None:
    with db.transaction() as session:
        article = Article(slug=f"story-{new_id()[:8]}", title="Budget passes", section="news")
        session.add(article)
        session.flush()
        lifecycle.transition(session, article, S.PUBLISHED, actor="bench")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e6


def one_run(args: argparse.Namespace, databases: Databases, kill: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pressroom-fanout-"))
    smtp_port, http_port, redis_port = free_port(), free_port(), free_port()
    stats = work / "stats.json"
    sinks = spawn(
        [PYTHON, __file__, "--sinks", str(smtp_port), str(http_port), str(stats)],
        dict(os.environ),
        work / "sinks.log",
    )
    redis = spawn(server_argv(work / "redis", port=redis_port), dict(os.environ), work / "r.log")
    url = databases.fresh(work)
    env = stack_env(
        work,
        url,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
        WEBHOOK_ALLOW_PRIVATE="1",
        WORKER_CONCURRENCY="1",
        DELIVERY_LEASE_SECONDS="30",  # a killed sender's batch comes back sooner than 120 s
        LOG_LEVEL="WARNING",
    )
    settings = Settings.from_env(env)
    db = Database(settings.db_url)
    children = []
    try:
        wait_until_ready(f"redis://127.0.0.1:{redis_port}/0")
        wait_until(lambda: stats.exists(), 30, 0.1)
        baseline = plain_loop_rate(smtp_port, args.baseline_messages)
        upgrade(db.engine)
        say(f"loading {args.subscribers:,} subscribers and {args.endpoints:,} endpoints")
        load(db, args.subscribers, args.endpoints, f"http://127.0.0.1:{http_port}")
        children = [
            spawn([PYTHON, "-m", "services.cli", "relay"], env, work / "relay.log"),
            # As in the stack: beat's periodic send takes a killed sender's rows once their
            # lease has run out.
            spawn([PYTHON, "-m", "services.cli", "beat"], env, work / "beat.log"),
        ]
        notifiers = [
            spawn([PYTHON, "-m", "services.cli", "worker", "notifier"], env, work / f"n{i}.log")
            for i in range(args.notifiers)
        ]
        children += notifiers
        time.sleep(4)  # the workers are up
        before = read_stats(stats)
        started = time.monotonic()
        publish(db)
        peak, killed = 0.0, False
        goal_mails = before["mails"] + args.subscribers
        goal_hooks = before["hooks"] + args.endpoints
        mails_done = hooks_done = float("nan")
        deadline = started + args.timeout
        while time.monotonic() < deadline:
            now = read_stats(stats)
            elapsed = time.monotonic() - started
            if now["hooks"] >= goal_hooks and hooks_done != hooks_done:
                hooks_done = elapsed
            if now["mails"] >= goal_mails:
                mails_done = elapsed
                break
            if kill and not killed and now["mails"] - before["mails"] >= args.subscribers / 2:
                say("killing a notifier with SIGKILL, half way")
                os.killpg(notifiers[0].pid, signal.SIGKILL)
                notifiers[0].wait(10)
                children.append(
                    spawn(
                        [PYTHON, "-m", "services.cli", "worker", "notifier"], env, work / "n9.log"
                    )
                )
                killed = True
            peak = max([peak, *(rss_mb(p.pid) for p in notifiers if p.poll() is None)])
            time.sleep(0.25)
        time.sleep(3 if kill else 1)  # anything doubled arrives by now
        final = read_stats(stats)
        return {
            "baseline": baseline,
            "seconds": mails_done,
            "rate": args.subscribers / mails_done if mails_done == mails_done else float("nan"),
            "hooks_seconds": hooks_done,
            "mails_missing": args.subscribers
            - (final["mail_recipients"] - before["mail_recipients"]),
            "mails_doubled": final["mail_doubled"],
            "hooks_missing": args.endpoints - (final["hook_targets"] - before["hook_targets"]),
            "hooks_doubled": final["hook_doubled"],
            "peak_mb": peak,
            "killed": killed,
        }
    finally:
        for child in children:
            stop_group(child, 20)
        db.dispose()
        databases.drop(url)
        stop_group(sinks, 10)
        stop_group(redis, 10)


def report(runs: list[dict[str, Any]]) -> str:
    rows = []
    for n, run in enumerate(runs, 1):
        ratio = run["rate"] / run["baseline"]
        rows.append(
            [
                f"run {n}{' (notifier killed half way)' if run['killed'] else ''}",
                fmt(run["baseline"], 0),
                fmt(run["rate"], 0),
                f"{ratio:.2f}x {verdict(ratio >= 1.0)}",
                f"{fmt(run['hooks_seconds'])} {verdict(run['hooks_seconds'] < 10)}",
                f"{run['mails_missing']}/{run['mails_doubled']}",
                f"{run['hooks_missing']}/{run['hooks_doubled']}",
                f"{fmt(run['peak_mb'], 0)} {verdict(run['peak_mb'] < 500)}",
            ]
        )
    headers = [
        "", "plain loop msg/s", "ours msg/s", "ratio", "webhooks s", "mail lost/doubled",
        "hooks lost/doubled", "peak MB/notifier",
    ]  # fmt: skip
    return table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sinks", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--endpoints", type=int, default=1_000)
    parser.add_argument("--notifiers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--kill", action="store_true", help="add a run with a notifier killed")
    parser.add_argument("--baseline-messages", type=int, default=BASELINE_MESSAGES)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.sinks:
        run_sinks(int(args.sinks[0]), int(args.sinks[1]), Path(args.sinks[2]))
        return 0
    databases = Databases(args.database_url, "pressroom_fanout_")
    try:
        version = databases.server_version()
        runs = [one_run(args, databases, kill=False) for _ in range(args.runs)]
        if args.kill:
            runs.append(one_run(args, databases, kill=True))
    finally:
        databases.drop_all()
    print(
        f"Fan-out: {args.subscribers:,} email subscribers, {args.endpoints:,} webhook endpoints,"
        f" {args.notifiers} notifier processes; database {version}"
    )
    print(report(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
