"""Related-reads speed on a large corpus, with the stack running (issue 14's speed figures).

1. A corpus of ``--articles`` published stories (100,000 by default), made by mixing the
   paragraphs of ``--data`` (each the first half of one story and the second half of another
   of its category, as bench/related_quality.py's ``--scale``), written to a fresh database
   in bulk: the API's own speed is bench/publish.py's business.
2. The full rebuild, ``pressroom related rebuild`` in one process as the related-reads
   process refits (``--rebuild-jobs`` for more), everything included (the stories read, the
   model fitted, every vector and list written): its wall time and the peak memory of its
   process tree, sampled every 0.1 s.
3. Bytes per story: what the lists, the vectors and the model take in the database (tables,
   indexes and TOAST), over the number of published stories.
4. ``pressroom up`` on that database (embedded Redis). After a warm-up, ``--publishes``
   stories published through the API one after another, each timed from its 201 until its
   list is stored: the list and the lists it entered are written in one transaction, so
   that is also when they are. Then ``--archive`` random stories come of age and one sweep
   (``pressroom archive sweep``) archives them: the time from the sweep's start until no
   list names any of them. The related-reads process's peak memory over the whole run.

    .venv/bin/python bench/related_speed.py [--articles 100000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _harness as h
import httpx
import psycopg
from related_quality import DATA, load, synthesise
from sqlalchemy import insert, text

from shared.content import paragraphs_to_html
from shared.db import Database, libpq_conninfo
from shared.models import Article

TARGET_PUBLISH_P99_MS = 150.0
TARGET_REBUILD_S = 120.0
TARGET_REBUILD_MB = 1500.0
TARGET_CLEARED_S = 30.0
LIST_TABLES = ("related_items", "article_vectors", "related_models")


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and every process below it, in MB."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = h.stat_fields(int(entry))
            if len(fields) > 1:
                parents[int(entry)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    total = 0
    for pid in tree:
        fields = h.stat_fields(pid)
        if len(fields) > 21:
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total / 1e6


class PeakSampler:
    """The peak of ``measure()`` while the block runs, sampled every ``every`` seconds."""

    def __init__(self, measure: Callable[[], float], every: float = 0.1):
        self.measure, self.every, self.peak = measure, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.peak = max(self.peak, self.measure())
            except (OSError, ValueError):
                continue

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load_corpus(db: Database, count: int, data: Path) -> None:
    stories = synthesise(load(data), count)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(days=730) / max(count, 1)
    with db.transaction() as session:
        for first in range(0, count, 5_000):
            rows = [
                h.article_row(
                    f"story-{n}", story.title, "", paragraphs_to_html(story.text),
                    story.category, start + n * step,
                )
                for n, story in enumerate(stories[first : first + 5_000], start=first)
            ]  # fmt: skip
            session.execute(insert(Article), rows)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE articles")


def cli(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [h.PYTHON, "-m", "services.cli", *args], cwd=h.ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finished(proc: subprocess.Popen[bytes], what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {err.decode()[-2000:]}")


def bytes_per_story(db: Database) -> tuple[float, int]:
    with db.engine.connect() as conn:
        size = sum(
            conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar() or 0
            for t in LIST_TABLES
        )
        stories = conn.execute(
            text("SELECT count(*) FROM articles WHERE status = 'published'")
        ).scalar()
    return size / max(stories or 1, 1), int(stories or 0)


def wait_for_list(conn: psycopg.Connection, article_id: str, timeout: float = 30.0) -> float:
    """Seconds until ``article_id`` has a stored list (NaN after ``timeout``)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if conn.execute(
            "SELECT 1 FROM related_items WHERE article_id = %s LIMIT 1", (article_id,)
        ).fetchone():
            return time.perf_counter() - started
        time.sleep(0.002)
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--publishes", type=int, default=40)
    parser.add_argument("--archive", type=int, default=1_000)
    parser.add_argument("--rebuild-jobs", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    say = h.say
    work = Path(tempfile.mkdtemp(prefix="pressroom-related-speed-"))
    work.chmod(0o755)
    databases = h.Databases(args.database_url, "pressroom_related_")
    stack: h.Stack | None = None
    try:
        url = databases.fresh(work)
        # Only the stories the bench ages are archived: the corpus spans two years.
        env = h.stack_env(work / "stack", url, ARCHIVE_AFTER_DAYS="36500")
        db = Database(url)
        finished(cli(env, "db", "upgrade"), "db upgrade")
        say(f"loading {args.articles:,} stories")
        load_corpus(db, args.articles, args.data)

        say("full rebuild: pressroom related rebuild")
        started = time.perf_counter()
        rebuild = cli(env, "related", "rebuild", "--jobs", str(args.rebuild_jobs))
        with PeakSampler(lambda: tree_rss_mb(rebuild.pid)) as rebuild_memory:
            finished(rebuild, "related rebuild")
        rebuild_s = time.perf_counter() - started
        per_story, stories = bytes_per_story(db)

        stack = h.Stack(work / "stack", env, h.free_port())
        say("starting the stack")
        stack.start()
        token = stack.token()
        base = f"http://127.0.0.1:{stack.port}"
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
        corpus = synthesise(load(args.data), args.publishes + 5, seed=1)
        conn = psycopg.connect(libpq_conninfo(url), autocommit=True)

        def runner_rss() -> float:
            found = [
                int(p) for p in os.listdir("/proc")
                if p.isdigit() and "multiprocessing.spawn" in h.cmdline(int(p))
                and str(work).encode() in Path(f"/proc/{p}/environ").read_bytes()
            ]  # fmt: skip
            return max((tree_rss_mb(pid) for pid in found), default=0.0)

        def publish(n: int) -> float:
            story = corpus[n]
            reply = api.post(
                "/api/v1/articles",
                json=h.article_payload(
                    f"{story.title} ({n})", "", paragraphs_to_html(story.text), story.category
                ),
            )
            reply.raise_for_status()
            return wait_for_list(conn, reply.json()["id"])

        with PeakSampler(runner_rss, every=0.5) as runner_memory:
            say("warming up: the related-reads process loads the vectors")
            for n in range(5):
                publish(n)
            say(f"{args.publishes} publishes, one at a time")
            times = []
            for n in range(5, 5 + args.publishes):
                times.append(publish(n) * 1000)
                time.sleep(0.2)

            rng = random.Random(7)
            with db.engine.connect() as c:
                ids = [r[0] for r in c.execute(text(
                    "SELECT id FROM articles WHERE status = 'published'"))]  # fmt: skip
            chosen = rng.sample(ids, args.archive)
            with db.engine.begin() as c:
                c.execute(
                    text("UPDATE articles SET archive_after = now() - interval '1 day' "
                         "WHERE id = ANY(:ids)"), {"ids": chosen},
                )  # fmt: skip
            say(f"sweep of {args.archive:,} stories: pressroom archive sweep")
            started = time.perf_counter()
            finished(cli(env, "archive", "sweep"), "archive sweep")
            swept_s = time.perf_counter() - started
            cleared_s = float("nan")
            while time.perf_counter() - started < 300:
                left = conn.execute(
                    "SELECT count(*) FROM related_items WHERE related_id = ANY(%s)", (chosen,)
                ).fetchone()
                if left is not None and left[0] == 0:
                    cleared_s = time.perf_counter() - started
                    break
                time.sleep(0.05)

        p50, p99 = h.percentile(times, 50), h.percentile(times, 99)
        print()
        print(f"Related-reads speed: {stories:,} published stories, the stack running")
        print(f"  reproduce: {h.PYTHON} bench/related_speed.py --articles {args.articles}")
        rows = [
            ["one publish: 201 -> its list and the lists it entered, p50", f"{h.fmt(p50)} ms",
             "", ""],
            ["one publish, p99", f"{h.fmt(p99)} ms", f"< {TARGET_PUBLISH_P99_MS:g} ms",
             h.verdict(p99 < TARGET_PUBLISH_P99_MS)],
            [f"full rebuild (pressroom related rebuild --jobs {args.rebuild_jobs})",
             f"{h.fmt(rebuild_s)} s",
             f"< {TARGET_REBUILD_S:g} s", h.verdict(rebuild_s < TARGET_REBUILD_S)],
            ["full rebuild, peak memory of its processes",
             f"{h.fmt(rebuild_memory.peak, 0)} MB", f"< {TARGET_REBUILD_MB:g} MB",
             h.verdict(rebuild_memory.peak < TARGET_REBUILD_MB)],
            [f"sweep of {args.archive:,}: until no list names one", f"{h.fmt(cleared_s)} s",
             f"< {TARGET_CLEARED_S:g} s", h.verdict(cleared_s < TARGET_CLEARED_S)],
            ["  of which the sweep itself", f"{h.fmt(swept_s)} s", "", ""],
            ["related-reads process, peak memory", f"{h.fmt(runner_memory.peak, 0)} MB", "", ""],
            ["bytes per story (lists, vectors, model)", f"{per_story:,.0f}", "", ""],
        ]  # fmt: skip
        print(h.table(["measure", "figure", "target", ""], rows))
        each = ", ".join(h.fmt(t, 0) for t in sorted(times))
        print(f"  publishes: {len(times)}, each ms: {each}")
        return 0
    finally:
        if stack is not None:
            stack.stop()
        databases.drop_all()


if __name__ == "__main__":
    sys.exit(main())
