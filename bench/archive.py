"""Archive sweep benchmark: bulk-load, one full sweep, a naive baseline, the publisher's latency.

Each run, on a fresh throwaway database on ``--database-url``'s server, or on an embedded
PostgreSQL the bench starts, dropped at the end:

1. Load: the schema (``shared.migrate.upgrade``), then ``--articles`` published articles with
   short bodies, of which ``--aged`` were published 400-700 days ago (ARCHIVE_AFTER_DAYS=180)
   and the rest within the last 170 days (``--layout``: chronological, the table grown oldest
   first, or interleaved, the aged rows spread through it); plus ``--naive-sample`` more aged
   articles, older than all the others, for the naive loop: ``COPY`` through psycopg, then
   ``VACUUM ANALYZE`` (what autovacuum does soon after a load like this in production).
   Load time is reported.
2. The real stack (``python -m services.cli up``: gunicorn, workers, beat, embedded Redis as
   REDIS_URL is unset) on a free port, an editor token from
   ``python -m services.cli token create --role editor``, then a paced loopback client
   (GET /articles/{slug} of random loaded articles, POST /api/v1/articles publishing) for
   ``--baseline-seconds`` with nothing else running: the baseline latencies.
3. The naive baseline, in the same database (same size, same indexes, same stack and client):
   a child process (this script with ``--naive-child``) selects the due ids, oldest first -
   exactly the naive sample - and, one article at a time, loads it through the ORM and
   archives it with ``shared.lifecycle.transition(..., "archived", reason="aged")``, one commit
   each. Its rate is timed inside the child (interpreter start-up excluded, which favours the
   naive loop, so the ratio errs against the sweep). It runs before the sweep so it is not
   slowed by the relay's backlog of the sweep's events.
4. The sweep: ``python -m services.cli archive sweep`` as a child process with the same
   environment (VAR_DIR, DATABASE_URL, ARCHIVE_AFTER_DAYS), timed from spawn to exit
   (interpreter start-up included), its peak RSS read from ``os.wait4``; the client runs for
   as long as the sweep does. Then the counts are checked (every aged article archived, one
   ``article.archived`` outbox row and one history row with reason ``aged`` each, no
   duplicate), the stack is stopped (SIGTERM) and the sweep is run once more: it must archive
   0, and its time is the command's fixed cost (start-up and one pass over the published rows).

The sweep consumes the aged rows, so it can only be run once per load: every run reloads a
fresh database, and each figure in the tables is the median over ``--runs`` runs.
The stack runs with ARCHIVE_SWEEP_SECONDS=86400 so that beat's own periodic sweep never
competes with the one being timed; the stack's outbox relay (every 5 s) and the archiver
worker do run, and relay the sweep's events while it works, as they would in production.
The client runs in this process and shares the machine's 2 cores with everything else: the
CPU line says how much each part used during the sweep. Before each run the bench waits for
other benchmarks (bench/publish.py, bench/archive.py) to finish and for the machine to idle.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from _harness import (
    ARTICLE_COLUMNS,
    PYTHON,
    ROOT,
    CpuSampler,
    Databases,
    Stack,
    article_payload,
    article_row,
    cmdline,
    flags,
    fmt,
    free_port,
    machine_busy,
    median,
    median_percentile,
    percentile,
    reader,
    say,
    stack_env,
    stat_fields,
    table,
    verdict,
    wait_until,
)
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.engine import make_url

from shared.db import make_engine
from shared.migrate import upgrade
from shared.models import Article, ArticleHistory, OutboxEvent

T = TypeVar("T")

TARGET_RATE = 20_000.0  # archived articles (with their outbox events) per second
TARGET_RSS_MB = 300.0
TARGET_RATIO = 50.0
TARGET_P99_MS = 200.0

ARCHIVE_AFTER_DAYS = 180
SECTIONS = ("news", "sport", "business", "culture")
LOAD_BATCH = 20_000
NAIVE_ACTOR = "bench:naive"
OTHER_BENCHES = ("bench/publish.py", "bench/archive.py")
QUIET_POLL_S = 30.0
QUIET_CORES = 0.3
QUIET_WINDOWS = 5
REQUEST_TIMEOUT_S = 10.0
SWEEP_TIMEOUT_S = 3600.0


# --------------------------------------------------------------------------------------------
# Other benchmarks on the machine


def _parent(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else 0


def _started(pid: int) -> tuple[int, int]:
    fields = stat_fields(pid)
    return (int(fields[19]) if fields else 0), pid  # clock ticks after boot


def other_benchmarks() -> list[str]:
    """Command lines of benchmarks running on this machine, not this one or its ancestors.

    Another bench/archive.py counts only if it started before this one, so two of them
    started together take turns instead of waiting for each other forever."""
    mine = set()
    pid = os.getpid()
    while pid > 1:
        mine.add(pid)
        pid = _parent(pid)
    me = _started(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in mine:
            cmd = cmdline(int(entry))
            if not any(b in cmd for b in OTHER_BENCHES) or "--naive-child" in cmd:
                continue
            if "bench/archive.py" in cmd and _started(int(entry)) > me:
                continue
            found.append(f"{entry}: {cmd.strip()}")
    return found


def wait_for_quiet(timeout: float) -> str:
    """Two cores: never measure while another benchmark runs (poll every 30 s until it has
    finished), then wait up to ``timeout`` for the machine to be idle (under QUIET_CORES busy
    for QUIET_WINDOWS seconds in a row). Returns a warning when it never was."""
    while busy := other_benchmarks():
        say(f"another benchmark is running, waiting {QUIET_POLL_S:.0f} s: {busy[0][:120]}")
        time.sleep(QUIET_POLL_S)
    deadline = time.monotonic() + timeout
    calm = 0
    last = 0.0
    while calm < QUIET_WINDOWS:
        last = machine_busy(1.0)
        calm = calm + 1 if last < QUIET_CORES else 0
        if calm == 0 and time.monotonic() > deadline:
            return f"the machine was not idle before the run ({last:.2f} cores busy)"
        if calm == 0 and int(time.monotonic()) % 30 == 0:
            say(f"waiting for the machine to be idle ({last:.2f} cores busy)")
    return ""


# --------------------------------------------------------------------------------------------
# CPU during the sweep


def sweep_sampler(stack_pid: int | None) -> CpuSampler:
    """CPU seconds of the stack (the supervisor and its descendants), PostgreSQL, everything
    else, this client."""

    def outside(cmd: str) -> str | None:
        if "services.cli archive sweep" in cmd:
            return None  # counted from its own rusage, as "sweep"
        return "postgresql" if cmd.startswith("postgres") else "other"

    return CpuSampler(
        stack_pid, lambda _: "stack", outside, "bench client", ("stack", "postgresql", "other")
    )


# --------------------------------------------------------------------------------------------
# Bulk load

AGED_SPREAD_S = 300 * 86_400  # aged: published 400 to 700 days ago
RECENT_SPREAD_S = 170 * 86_400  # the rest: within the last 170 days (the age is 180)
LAYOUTS = ("chronological", "interleaved")


def published_at(i: int, n: int, m: int, layout: str, now: datetime) -> tuple[bool, datetime]:
    """(aged?, publication time) of the i-th loaded article; exactly ``m`` of ``n`` are aged.

    chronological: rows are inserted oldest first, as a newsroom's table grows, so the aged
    ones are the first ``m`` rows. interleaved: aged rows spread evenly through the table and
    publication times scattered, so every chunk of the sweep touches rows all over the table
    (as after a bulk import of old stories): the worst case for page locality.
    """
    if layout == "chronological":
        if i < m:
            return True, now - timedelta(days=700) + timedelta(seconds=AGED_SPREAD_S * i / m)
        share = (i - m) / max(1, n - m)
        return False, now - timedelta(seconds=RECENT_SPREAD_S * (1 - share) + 60)
    aged = (i + 1) * m // n > i * m // n
    spread = (i * 2_654_435_761) % (AGED_SPREAD_S if aged else RECENT_SPREAD_S)
    return aged, now - timedelta(days=400 if aged else 0, seconds=spread + 60)


def bench_article(i: int, slug: str, published: datetime) -> dict[str, Any]:
    section = SECTIONS[i % len(SECTIONS)]
    return article_row(
        slug,
        f"Bench story {slug}",
        f"Story {i} of the archive benchmark.",
        f"<p>Short body of bench story {i}, in {section}.</p>",
        section,
        published,
    )


def bench_slug(i: int) -> str:
    return f"bench-{i:07d}"


def bench_rows(
    start: int, stop: int, n: int, m: int, layout: str, now: datetime
) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        yield bench_article(i, bench_slug(i), published_at(i, n, m, layout, now)[1])


def load_core(engine: Engine, rows: Iterator[dict[str, Any]], batch: int = LOAD_BATCH) -> int:
    """SQLAlchemy core executemany, one transaction per batch."""
    statement = insert(Article)
    loaded = 0
    while True:
        chunk = [row for _, row in zip(range(batch), rows, strict=False)]
        if not chunk:
            return loaded
        with engine.begin() as conn:
            conn.execute(statement, chunk)
        loaded += len(chunk)


def load_postgres_copy(url: str, n: int, m: int, layout: str, now: datetime) -> None:
    """COPY through psycopg, in one transaction, then VACUUM ANALYZE and a CHECKPOINT."""
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY articles ({', '.join(ARTICLE_COLUMNS)}) FROM STDIN") as cp,
        ):
            for row in bench_rows(0, n, n, m, layout, now):
                row["tags"] = json.dumps(row["tags"])
                row["authors"] = json.dumps(row["authors"])
                cp.write_row([row[c] for c in ARTICLE_COLUMNS])
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE articles")
        # The load's pages are written out now, not by a checkpoint in the middle of the
        # measurements: on a slow disk day it put 300-500 ms on baseline creations.
        conn.execute("CHECKPOINT")


def load(url: str, n: int, m: int, layout: str) -> float:
    """Schema and articles; returns the seconds the articles took (schema excluded)."""
    engine = make_engine(url)
    try:
        upgrade(engine)
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        load_postgres_copy(url, n, m, layout, now)
        return time.perf_counter() - t0
    finally:
        engine.dispose()


def load_naive_sample(url: str, run: int, count: int) -> None:
    """``count`` more aged articles, older than every other one (800 days and more), so the
    naive loop, which takes the oldest due articles first, archives exactly these."""
    engine = make_engine(url)
    old = datetime.now(UTC) - timedelta(days=800)
    rows = (
        bench_article(i, f"naive-{run}-{i:05d}", old - timedelta(minutes=i)) for i in range(count)
    )
    try:
        load_core(engine, rows)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Processes


def sweep_env(var_dir: Path, database_url: str, chunk: int | None) -> dict[str, str]:
    """What the stack and the commands get: REDIS_URL unset (embedded), the policy's age."""
    return stack_env(
        var_dir,
        database_url,
        drop=("ARCHIVE_POLICY", "ARCHIVE_SWEEP_CHUNK"),
        ARCHIVE_AFTER_DAYS=str(ARCHIVE_AFTER_DAYS),
        ARCHIVE_SWEEP_SECONDS="86400",  # beat's own sweep must not race the one timed
        **({} if chunk is None else {"ARCHIVE_SWEEP_CHUNK": str(chunk)}),
    )


# --------------------------------------------------------------------------------------------
# The publisher client: paced, loopback only, bounded


@dataclass
class Latencies:
    get: list[float] = field(default_factory=list)  # seconds, 200s only
    post: list[float] = field(default_factory=list)  # seconds, 201s only
    get_errors: int = 0
    post_errors: int = 0
    late: int = 0  # sends that could not keep the pace (the previous request was too slow)
    seconds: float = 0.0
    first_error: str = ""


class KeepAlive:
    """One keep-alive HTTP/1.1 connection to the publisher on loopback."""

    RETRY = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, float]:
        """(status, seconds from send to the end of the body); retries once on a connection
        the server had closed while it sat idle."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S
                )
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 1 or not isinstance(exc, self.RETRY):
                    raise
                continue
            elapsed = time.perf_counter() - t0
            if response.will_close:
                self.close()
            return response.status, elapsed
        raise AssertionError("unreachable")


class Client:
    """GET /articles/{slug} (random loaded slugs) and POST /api/v1/articles, each paced.

    Each thread keeps one keep-alive connection and sends on a fixed schedule; when a request
    overruns its slot the next one goes at once and the missed slots are dropped (counted as
    ``late``), so a stall never turns into a burst. Latency is measured from send to the end
    of the response body.
    """

    def __init__(
        self,
        port: int,
        token: str,
        articles: int,
        get_rate: float,
        post_rate: float,
        get_threads: int,
        post_threads: int,
        tag: str,
    ):
        self.port = port
        self.token = token
        self.articles = articles
        self.plan = [("get", get_rate / get_threads)] * get_threads
        self.plan += [("post", post_rate / post_threads)] * post_threads
        self.tag = tag
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.result = Latencies()
        self.threads: list[threading.Thread] = []
        self.counter = 0
        self.started = 0.0

    def start(self, max_seconds: float) -> None:
        self.stop_event.clear()
        self.result = Latencies()
        self.started = time.perf_counter()
        deadline = self.started + max_seconds
        self.threads = [
            threading.Thread(
                target=self._run, args=(kind, rate, n, deadline), daemon=True, name=f"{kind}{n}"
            )
            for n, (kind, rate) in enumerate(self.plan)
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> Latencies:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(REQUEST_TIMEOUT_S * 2 + 5)
        self.result.seconds = time.perf_counter() - self.started
        return self.result

    def measure(self, seconds: float) -> Latencies:
        """The latencies of ``seconds`` of sending with nothing else going on."""
        self.start(seconds)
        time.sleep(seconds)
        return self.stop()

    def during(self, work: Callable[[], T]) -> tuple[T, Latencies]:
        """``work()``, and the latencies while it ran."""
        self.start(SWEEP_TIMEOUT_S)
        try:
            result = work()
        finally:
            latencies = self.stop()
        return result, latencies

    def _payload(self) -> bytes:
        with self.lock:
            self.counter += 1
            n = self.counter
        payload = article_payload(
            f"Live story {self.tag} {n}",
            "Filed while the archive sweep ran.",
            "<p>" + "A paragraph of live news copy. " * 30 + "</p>",
            SECTIONS[n % len(SECTIONS)],
            ["bench", "live"],
        )
        return json.dumps(payload).encode()

    def _run(self, kind: str, rate: float, n: int, deadline: float) -> None:
        rng = random.Random(f"{self.tag}-{n}")
        interval = 1.0 / rate
        headers = {"Host": "127.0.0.1"}
        if kind == "post":
            headers["Authorization"] = f"Bearer {self.token}"
            headers["Content-Type"] = "application/json"
        conn = KeepAlive(self.port)
        mine: list[float] = []
        errors = late = 0
        first_error = ""
        slot = time.perf_counter() + interval * rng.random()
        while not self.stop_event.is_set():
            wait = slot - time.perf_counter()
            if wait > 0 and self.stop_event.wait(wait):
                break
            if time.perf_counter() >= deadline:
                break
            if kind == "get":
                slug = bench_slug(rng.randrange(self.articles))
                method, path, body, expect = "GET", f"/articles/{slug}", None, 200
            else:
                method, path, body, expect = "POST", "/api/v1/articles", self._payload(), 201
            try:
                status, elapsed = conn.request(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                status, elapsed = -1, 0.0
                first_error = first_error or f"{method} {path}: {type(exc).__name__}: {exc}"
            if status == expect:
                mine.append(elapsed)
            else:
                errors += 1
                first_error = first_error or f"{method} {path}: HTTP {status}"
            slot += interval
            if slot < time.perf_counter():
                late += 1
                slot = time.perf_counter()
        conn.close()
        with self.lock:
            if kind == "get":
                self.result.get.extend(mine)
                self.result.get_errors += errors
            else:
                self.result.post.extend(mine)
                self.result.post_errors += errors
            self.result.late += late
            self.result.first_error = self.result.first_error or first_error


# --------------------------------------------------------------------------------------------
# The sweep and the naive loop, each a child process


@dataclass
class SweepResult:
    archived: int
    wall: float
    rss_mb: float  # VmHWM of the sweep's own image, sampled from /proc until it exits
    maxrss_mb: float  # ru_maxrss from wait4: also counts the pages shared with this bench at fork
    cpu: float
    chunks: int
    chunk_gaps: list[float]  # seconds between consecutive "archived n" lines
    cores: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.archived / self.wall if self.wall else 0.0


def run_sweep(env: dict[str, str], stack_pid: int | None) -> SweepResult:
    """``python -m services.cli archive sweep``; wall time from spawn to exit, peak memory.

    ru_maxrss (wait4) keeps the high-water mark across fork and exec, so it includes the
    pages the child shared with this bench process (which holds the load's buffers) before it
    exec'd the sweep; the sweep's own peak is VmHWM of its image, sampled every 20 ms."""
    sampler = sweep_sampler(stack_pid)
    before = sampler.snapshot()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON, "-m", "services.cli", "archive", "sweep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    chunk_at: list[float] = []
    other: list[str] = []
    out: list[bytes] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(b"archived "):
                chunk_at.append(time.perf_counter())
            else:
                other.append(line.decode(errors="replace").rstrip())

    def read_out() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    hwm = [0]

    def sample_hwm() -> None:
        for n in itertools.count():
            if proc.returncode is not None:
                return
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        hwm[0] = max(hwm[0], int(line.split()[1]))
            if n % 10 == 0:  # the sweep's backends exit with it, before cores_since
                sampler.follow(before)
            time.sleep(0.02)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out, sample_hwm)]
    for r in readers:
        r.start()
    timer = threading.Timer(SWEEP_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(10)
    cores = sampler.cores_since(before)
    cores["sweep"] = (usage.ru_utime + usage.ru_stime) / wall if wall else 0.0
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep exited with {proc.returncode}:\n" + "\n".join(other[-30:]))
    gaps = [b - a for a, b in itertools.pairwise(chunk_at)]
    return SweepResult(
        archived=int(b"".join(out).strip() or b"0"),
        wall=wall,
        rss_mb=hwm[0] / 1024,  # KiB
        maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        cpu=usage.ru_utime + usage.ru_stime,
        chunks=len(chunk_at),
        chunk_gaps=gaps,
        cores=cores,
    )


@dataclass
class NaiveResult:
    archived: int
    loop_seconds: float
    wall: float

    @property
    def rate(self) -> float:
        return self.archived / self.loop_seconds if self.loop_seconds else 0.0


def run_naive(env: dict[str, str], sample: int) -> NaiveResult:
    t0 = time.perf_counter()
    done = subprocess.run(
        [PYTHON, str(Path(__file__).resolve()), "--naive-child", str(sample)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the naive loop exited with {done.returncode}:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return NaiveResult(int(found["archived"]), float(found["loop_seconds"]), wall)


def naive_child(limit: int) -> None:
    """The baseline: due ids, then each article loaded by the ORM and archived, a commit each."""
    from services.archiver.archiving import due_for_archiving
    from shared.config import Settings
    from shared.db import Database, utcnow
    from shared.lifecycle import transition
    from shared.models import ArticleStatus

    settings = Settings.from_env()
    db = Database(settings.db_url)
    t0 = time.perf_counter()
    with db.session() as session:
        due = due_for_archiving(settings, utcnow())
        ids = list(
            session.scalars(
                select(Article.id).where(due).order_by(Article.published_at).limit(limit)
            )
        )
    for article_id in ids:
        with db.transaction() as session:
            article = session.get(Article, article_id)
            assert article is not None
            transition(session, article, ArticleStatus.ARCHIVED, actor=NAIVE_ACTOR, reason="aged")
    loop_seconds = time.perf_counter() - t0
    db.dispose()
    print(json.dumps({"archived": len(ids), "loop_seconds": loop_seconds}))


# --------------------------------------------------------------------------------------------
# Checks


def counts(url: str) -> dict[str, int]:
    engine = reader(url)
    archived_event = OutboxEvent.type == "article.archived"
    queries = {
        "archived articles": select(func.count()).where(Article.status == "archived"),
        "archived, reason aged": select(func.count()).where(Article.archive_reason == "aged"),
        "aged bench articles still published": select(func.count()).where(
            Article.status == "published",
            Article.slug.like("bench-%"),
            Article.published_at < datetime.now(UTC) - timedelta(days=ARCHIVE_AFTER_DAYS),
        ),
        "article.archived outbox rows": select(func.count()).where(archived_event),
        "  distinct articles": select(func.count(func.distinct(OutboxEvent.article_id))).where(
            archived_event
        ),
        "  relayed by the stack so far": select(func.count()).where(
            archived_event, OutboxEvent.relayed_at.is_not(None)
        ),
        "history rows, reason aged": select(func.count()).where(ArticleHistory.reason == "aged"),
        "  by the sweep": select(func.count()).where(
            ArticleHistory.reason == "aged", ArticleHistory.actor == "archiver:sweep"
        ),
        "  by the naive loop": select(func.count()).where(
            ArticleHistory.reason == "aged", ArticleHistory.actor == NAIVE_ACTOR
        ),
        "articles": select(func.count()).select_from(Article),
    }
    try:
        with engine.connect() as conn:
            return {name: int(conn.execute(q).scalar() or 0) for name, q in queries.items()}
    finally:
        engine.dispose()


def check(found: dict[str, int], expected: dict[str, int]) -> list[str]:
    return [
        f"{name}: expected {want:,}, found {found.get(name, -1):,}"
        for name, want in expected.items()
        if found.get(name) != want
    ]


# --------------------------------------------------------------------------------------------
# One run


@dataclass
class RunResult:
    load_seconds: float
    sweep: SweepResult
    resweep: SweepResult
    naive: NaiveResult
    baseline: Latencies
    during_sweep: Latencies
    during_naive: Latencies
    after_sweep: dict[str, int]
    after_naive: dict[str, int]
    problems: list[str]


def one_run(args: argparse.Namespace, databases: Databases, run: int, base: Path) -> RunResult:
    var_dir = Path(tempfile.mkdtemp(prefix=f"run{run}-", dir=base))
    url = databases.fresh(var_dir)
    stack: Stack | None = None
    client: Client | None = None
    sample, aged = args.naive_sample, args.aged
    try:
        say(f"run {run}: loading {args.articles:,} articles ({aged:,} aged) into {url}")
        load_seconds = load(url, args.articles, aged, args.layout)
        load_naive_sample(url, run, sample)
        say(f"run {run}: loaded in {load_seconds:.1f} s, plus {sample:,} for the naive loop")
        env = sweep_env(var_dir, url, args.chunk)
        port = free_port()
        stack = Stack(var_dir, env, port)
        stack.start()
        token = stack.token()
        say(f"run {run}: stack up on port {port}; baseline client for {args.baseline_seconds} s")
        client = Client(
            port,
            token,
            args.articles,
            args.get_rate,
            args.post_rate,
            args.get_threads,
            args.post_threads,
            f"r{run}-{uuid.uuid4().hex[:6]}",
        )
        client.measure(args.warmup_seconds)  # the workers' start-up, first connections: unmeasured
        baseline = client.measure(args.baseline_seconds)

        say(f"run {run}: naive loop on the {sample:,} oldest aged articles")
        naive, during_naive = client.during(lambda: run_naive(env, sample))
        say(f"run {run}: naive {naive.archived:,} in {naive.loop_seconds:.1f} s")
        after_naive = counts(url)
        problems = check(
            after_naive,
            {
                "archived articles": sample,
                "article.archived outbox rows": sample,
                "history rows, reason aged": sample,
                "  by the naive loop": sample,
                "  by the sweep": 0,
            },
        )
        if naive.archived != sample:
            problems.append(f"the naive loop archived {naive.archived:,}, expected {sample:,}")
        wait_for_relay(url, 120.0)  # the naive loop's events, so the sweep starts on a calm stack

        say(f"run {run}: sweeping")
        stack_pid = stack.pid
        sweep, during_sweep = client.during(lambda: run_sweep(env, stack_pid))
        say(
            f"run {run}: swept {sweep.archived:,} in {sweep.wall:.1f} s "
            f"({sweep.rate:,.0f}/s), peak RSS {sweep.rss_mb:.0f} MB"
        )
        after_sweep = counts(url)
        total = aged + sample
        problems += check(
            after_sweep,
            {
                "archived articles": total,
                "archived, reason aged": total,
                "aged bench articles still published": 0,
                "article.archived outbox rows": total,
                "  distinct articles": total,
                "history rows, reason aged": total,
                "  by the sweep": aged,
                "  by the naive loop": sample,
            },
        )
        if sweep.archived != aged:
            problems.append(f"the sweep printed {sweep.archived:,}, expected {aged:,}")
        for name, result in (
            ("baseline", baseline),
            ("naive loop", during_naive),
            ("sweep", during_sweep),
        ):
            if result.get_errors or result.post_errors:
                problems.append(
                    f"client errors ({name}): {result.get_errors} GET, {result.post_errors} POST;"
                    f" first: {result.first_error}"
                )
        stack.stop()
        # Nothing is due any more: start-up plus one pass over the published rows, on a
        # stopped stack.
        resweep = run_sweep(env, None)
        if resweep.archived != 0:
            problems.append(f"a second sweep archived {resweep.archived:,}, expected 0")
        return RunResult(
            load_seconds,
            sweep,
            resweep,
            naive,
            baseline,
            during_sweep,
            during_naive,
            after_sweep,
            after_naive,
            problems,
        )
    finally:
        if client is not None:
            client.stop()
        if stack is not None:
            stack.stop()
            if args.keep:
                say(f"stack log kept: {stack.log_path}")
        if not args.keep:
            databases.drop(url)


def wait_for_relay(url: str, timeout: float) -> None:
    """Until the stack's relay has sent every outbox event (or ``timeout``)."""
    engine = reader(url)
    pending = select(func.count()).where(OutboxEvent.relayed_at.is_(None))

    def relayed() -> bool:
        with engine.connect() as conn:
            return not conn.execute(pending).scalar()

    try:
        if math.isnan(wait_until(relayed, timeout, 0.5)):
            say(f"the outbox was not drained after {timeout:.0f} s; going on")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Report


def figure(label: str, value: str, target: str = "", ok: bool | None = None) -> list[str]:
    """A row of the sweep's and the naive loop's tables."""
    return [label, value, target, "" if ok is None else verdict(ok)]


def report(args: argparse.Namespace, databases: Databases, runs: list[RunResult]) -> str:
    n = len(runs)
    lines = []
    chunk = args.chunk if args.chunk is not None else "2000 (product default)"
    lines.append(
        f"Archive sweep benchmark: {databases.server_version()},"
        f" Python {platform.python_version()}, {os.cpu_count()} cores,"
        f" {time.strftime('%Y-%m-%d %H:%M')}"
    )
    lines.append(
        f"{args.articles:,} published articles, {args.aged:,} aged ({args.layout} layout);"
        f" ARCHIVE_AFTER_DAYS="
        f"{ARCHIVE_AFTER_DAYS}; ARCHIVE_SWEEP_CHUNK={chunk}; median of {n} run(s), each on a "
        "freshly loaded database (a sweep consumes its aged rows, so it runs once per load)"
    )
    lines.append("")

    load_s = median(r.load_seconds for r in runs)
    lines.append("Load (bulk insert of the articles; schema excluded)")
    method = "COPY via psycopg + VACUUM ANALYZE" if databases.server_url else "core executemany"
    lines.append(
        table(
            ["method", "articles", "seconds", "rows/s"],
            [[method, f"{args.articles:,}", fmt(load_s), fmt(args.articles / load_s, 0)]],
        )
    )
    lines.append("")

    rate = median(r.sweep.rate for r in runs)
    rss = median(r.sweep.rss_mb for r in runs)
    wall = median(r.sweep.wall for r in runs)
    startup = median(r.resweep.wall for r in runs)
    gaps = [g for r in runs for g in r.sweep.chunk_gaps]
    gap_ms = f"{fmt(percentile(gaps, 50) * 1000)} / {fmt(percentile(gaps, 100) * 1000)}"
    lines.append("Sweep (`python -m services.cli archive sweep`, one child process, stack up)")
    lines.append(
        table(
            ["figure", "value", "target", ""],
            [
                figure("archived", f"{median(r.sweep.archived for r in runs):,.0f}"),
                figure("wall seconds (spawn to exit)", fmt(wall, 2)),
                figure(
                    "archived/s, outbox events included",
                    fmt(rate, 0),
                    f">= {TARGET_RATE:,.0f}",
                    rate >= TARGET_RATE,
                ),
                figure(
                    "peak RSS of the sweep (VmHWM), MB",
                    fmt(rss),
                    f"< {TARGET_RSS_MB:.0f}",
                    rss < TARGET_RSS_MB,
                ),
                figure(
                    "  ru_maxrss (wait4), MB, incl. pages shared at fork",
                    fmt(median(r.sweep.maxrss_mb for r in runs)),
                ),
                figure("CPU seconds of the sweep", fmt(median(r.sweep.cpu for r in runs), 2)),
                figure("chunks", f"{median(r.sweep.chunks for r in runs):,.0f}"),
                figure("chunk time p50 / max, ms", gap_ms),
                figure("second sweep, 0 due, stack stopped: wall s", fmt(startup, 2)),
                figure(
                    "archived/s without that fixed cost",
                    fmt(args.aged / max(wall - startup, 1e-9), 0),
                ),
            ],
        )
    )
    cores = {k: median(r.sweep.cores.get(k, 0.0) for r in runs) for k in runs[0].sweep.cores}
    order = ["sweep", "stack", "postgresql", "bench client", "other", "machine busy"]
    lines.append(
        "  CPU during the sweep (cores): "
        + ", ".join(f"{k} {cores[k]:.2f}" for k in order if k in cores)
        + f" (of {os.cpu_count()})"
    )
    lines.append("")

    naive_rate = median(r.naive.rate for r in runs)
    ratio = median(r.sweep.rate / r.naive.rate if r.naive.rate else float("nan") for r in runs)
    lines.append(
        f"Naive loop (the {args.naive_sample:,} oldest aged articles, loaded with the rest and"
        " archived before the sweep, in the same database: ORM load + lifecycle.transition +"
        " commit, one article at a time; stack up, same client running)"
    )
    lines.append(
        table(
            ["figure", "value", "target", ""],
            [
                figure(
                    "naive seconds (loop only)", fmt(median(r.naive.loop_seconds for r in runs), 2)
                ),
                figure("naive archived/s", fmt(naive_rate, 0)),
                figure("sweep archived/s", fmt(rate, 0)),
                figure(
                    "sweep / naive",
                    f"{fmt(ratio)}x",
                    f">= {TARGET_RATIO:.0f}x",
                    ratio >= TARGET_RATIO,
                ),
            ],
        )
    )
    lines.append("")

    lines.append(
        f"Publisher latency, paced client on loopback: GET /articles/{{slug}} {args.get_rate:g}/s"
        f" ({args.get_threads} threads, random loaded slugs), POST /api/v1/articles"
        f" {args.post_rate:g}/s ({args.post_threads} threads)"
    )
    rows = []
    for label, pick in (
        ("baseline (nothing else)", lambda r: r.baseline),
        ("during the sweep", lambda r: r.during_sweep),
        ("during the naive loop", lambda r: r.during_naive),
    ):
        for kind in ("get", "post"):
            samples = [pick(r) for r in runs]
            values = [getattr(s, kind) for s in samples]
            p99 = median_percentile(values, 99, 1000)
            target = verdict(p99 < TARGET_P99_MS) if label == "during the sweep" else ""
            rows.append(
                [
                    f"{'GET page' if kind == 'get' else 'POST article'}, {label}",
                    f"{median(len(v) for v in values):,.0f}",
                    f"{median(getattr(s, kind + '_errors') for s in samples):,.0f}",
                    fmt(median_percentile(values, 50, 1000)),
                    fmt(p99),
                    fmt(median_percentile(values, 100, 1000)),
                    f"< {TARGET_P99_MS:.0f}" if target else "",
                    target,
                ]
            )
    lines.append(
        table(["requests", "n", "errors", "p50 ms", "p99 ms", "max ms", "target", ""], rows)
    )
    late = median(r.during_sweep.late for r in runs)
    lines.append(f"  sends that missed their slot during the sweep (median): {late:,.0f}")
    lines.append("")

    lines.append("Checks (last run)")
    last = runs[-1]
    rows = [[name, f"{last.after_naive.get(name, 0):,}", f"{value:,}"]
            for name, value in last.after_sweep.items()]  # fmt: skip
    lines.append(table(["count", "after the naive loop", "after the sweep"], rows))
    problems = [p for r in runs for p in r.problems]
    lines.append(
        "  all checks passed" if not problems else "  PROBLEMS:\n    " + "\n    ".join(problems)
    )
    lines.append("")

    command = [".venv/bin/python", "bench/archive.py", *flags(args, ("runs", "articles", "aged"))]
    options = (
        "database_url", "naive_sample", "layout", "chunk", "baseline_seconds", "warmup_seconds",
        "get_rate", "post_rate", "get_threads", "post_threads",
    )  # fmt: skip
    command += flags(args, options, parse_args([]))
    lines.append("Reproduce: cd " + shlex.quote(str(ROOT)) + " && " + shlex.join(command))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, each a fresh load (median)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL server URL: a throwaway database is created there and dropped "
        "(default: an embedded PostgreSQL the bench starts)",
    )
    parser.add_argument("--articles", type=int, default=1_000_000)
    parser.add_argument("--aged", type=int, default=300_000)
    parser.add_argument("--naive-sample", type=int, default=5_000)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="chronological",
        help="chronological: rows inserted oldest first, the aged ones first (a table grown "
        "over time); interleaved: aged rows spread through the table (after a bulk import)",
    )
    parser.add_argument("--chunk", type=int, default=None, help="ARCHIVE_SWEEP_CHUNK")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="unmeasured client")
    parser.add_argument("--get-rate", type=float, default=40.0, help="page GETs per second")
    parser.add_argument("--post-rate", type=float, default=5.0, help="article POSTs per second")
    parser.add_argument("--get-threads", type=int, default=2)
    parser.add_argument("--post-threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep VAR_DIRs and databases")
    parser.add_argument(
        "--no-wait", action="store_true", help="do not wait for other benchmarks or idleness"
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for an idle machine before each run (then run anyway, flagged)",
    )
    parser.add_argument("--naive-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.aged <= args.articles:
        parser.error("--aged must be between 1 and --articles")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_child is not None:
        naive_child(args.naive_child)
        return 0

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    databases = Databases(args.database_url, "pressroom_archbench_")
    base = Path(tempfile.mkdtemp(prefix="pressroom-archbench-"))
    runs: list[RunResult] = []
    try:
        for run in range(1, args.runs + 1):
            warning = "" if args.no_wait else wait_for_quiet(args.quiet_timeout)
            if warning:
                say(warning)
            result = one_run(args, databases, run, base)
            if warning:
                result.problems.append(f"run {run}: {warning}")
            runs.append(result)
    finally:
        if not args.keep:
            databases.drop_all()
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"kept {base}")
    print(report(args, databases, runs))
    return 1 if any(r.problems for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
