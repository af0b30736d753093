"""Publish benchmark (``make bench``): the real stack, on loopback, with a table per part.

1. Creations: 32 concurrent clients POST ~3 KB articles for a fixed time; creations/s and
   p50/p99 latency, beside GET /healthz of the same server in the same run.
2. End to end: articles published at a paced rate (50/s); latency from the client receiving
   the API's 201 to the event's row in each consumer's ledger (``consumed_events``).
3. Drain: 20,000 events queued while no worker runs, then the real workers drain them;
   events/s per consumer (up to 100 events a message) against Celery's own floor here, one
   event per task (a no-op task app built with ``shared.celery.create_celery``, drained by 1
   and by 2 worker processes, once set up as ``pressroom worker`` runs and once bare: no task
   events, WARNING logs).

Parts 1 and 2 run against ``python -m services.cli up`` (gunicorn, both workers, beat,
embedded Redis) on a free port and a fresh VAR_DIR; part 3 starts the embedded Redis and the
workers (``python -m services.cli worker ...``) itself. Embedded PostgreSQL by default;
``--database-url postgresql://...`` creates throwaway databases on that server and drops them.
Every figure is the median of ``--runs`` runs.

The load generator runs on the same machine as the server and competes with it for the CPU:
each table says how much CPU the generator itself used, and warns when processes outside the
bench and its stack took CPU during a measurement. It is a minimal HTTP/1.1 keep-alive client
on asyncio: on this 2-core machine httpx in 32 threads tops out near 1,800 requests/s using a
whole core (asyncio httpx near 700/s), which would measure the client instead of /healthz;
``--client httpx`` selects it anyway for part 1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import html
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis
from _harness import (
    PYTHON,
    ROOT,
    CpuSampler,
    Databases,
    Stack,
    article_payload,
    article_row,
    flags,
    fmt,
    free_port,
    machine_busy,
    median,
    median_percentile,
    percentile,
    reader,
    say,
    spawn,
    stack_env,
    stop_group,
    table,
    verdict,
    wait_until,
)
from celery import Celery
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.engine import make_url

from shared import events
from shared.bus import CONSUMERS, MESSAGE_EVENTS, ROUTES, CelerySender
from shared.celery import broker_lists, create_celery
from shared.config import Settings
from shared.db import Database, make_engine, new_id, utcnow
from shared.embedded_redis import server_argv, wait_until_ready
from shared.migrate import upgrade
from shared.models import Article, ConsumedEvent, OutboxEvent
from shared.relay import Relay

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bbc-dev.csv"

TARGET_CREATIONS_PER_S = 400.0
TARGET_CREATE_P99_MS = 150.0
TARGET_E2E_P50_MS = 25.0
TARGET_E2E_P99_MS = 150.0
WARM_UP_S = 2.0  # of load before the first counted run of parts 1 and 2
RECIPE_FLOOR = {1: 1000.0, 2: 2200.0}  # RECIPES.md: no-op tasks/s for 1 and 2 processes

NOOP_QUEUE = "bench-noop"
NOOP_TASK = "bench.noop"
REQUEST_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# Article bodies


@dataclass
class Corpus:
    """Realistic articles: title, ~3 KB of HTML, section."""

    items: list[tuple[str, str, str]]
    source: str

    @property
    def mean_body_bytes(self) -> float:
        return statistics.fmean(len(body.encode()) for _, body, _ in self.items)

    def payload(self, n: int, tag: str) -> dict[str, Any]:
        title, body, section = self.items[n % len(self.items)]
        # unique titles, as a newsroom's are
        return article_payload(
            f"{title} ({tag}-{n})", f"Bench story {n} in {section}.", body, section
        )


def _html_body(paragraphs: Sequence[str], limit: int = 3100) -> str:
    parts: list[str] = []
    size = 0
    for i, paragraph in enumerate(paragraphs):
        escaped = html.escape(paragraph)
        if i == 1:
            escaped += ' <a href="https://www.bbc.co.uk/news">More from the newsroom</a>.'
        chunk = f"<p>{escaped}</p>\n" if i != 2 else f"<h2>In brief</h2>\n<p>{escaped}</p>\n"
        if size + len(chunk) > limit and parts:
            break
        parts.append(chunk)
        size += len(chunk)
    return "".join(parts)


def load_corpus(path: Path, limit: int = 600) -> Corpus:
    if path.is_file():
        csv.field_size_limit(10 << 20)
        items = []
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                paragraphs = [p.strip() for p in re.split(r"\n\s*\n", row["body"]) if p.strip()]
                body = _html_body(paragraphs)
                if len(body) >= 2400:
                    items.append((row["title"].strip(), body, row["category"].strip() or "news"))
                if len(items) >= limit:
                    break
        if items:
            return Corpus(items, f"{path} ({len(items)} articles)")
    rng = random.Random(2026)
    words = [
        "minister", "council", "market", "league", "season", "report", "growth", "police",
        "court", "school", "film", "company", "shares", "budget", "election", "players",
        "coach", "record", "museum", "festival", "research", "data", "city", "village",
        "transport", "energy", "prices", "health", "service", "weather", "storm", "local",
    ]  # fmt: skip
    items = []
    for n in range(200):
        paragraphs = [
            " ".join(rng.choice(words) for _ in range(rng.randint(40, 70))).capitalize() + "."
            for _ in range(8)
        ]
        title = " ".join(rng.choice(words) for _ in range(6)).capitalize()
        items.append((f"{title} {n}", _html_body(paragraphs), rng.choice(["news", "sport"])))
    return Corpus(items, "generated text (no bbc-dev.csv found)")


# --------------------------------------------------------------------------------------------
# HTTP load generation


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request: ``body(n)`` builds the n-th body (None for a GET)."""

    method: str
    path: str
    expect: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Callable[[int], bytes] | None = None

    def raw(self, n: int) -> bytes:
        content = self.body(n) if self.body is not None else b""
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.body is not None:
            lines.append(f"Content-Length: {len(content)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def article_spec(token: str, corpus: Corpus, tag: str) -> RequestSpec:
    """POST /api/v1/articles publishing the n-th corpus article, titles unique per tag."""
    return RequestSpec(
        "POST",
        "/api/v1/articles",
        201,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        lambda n: json.dumps(corpus.payload(n, tag)).encode(),
    )


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    It spends about a tenth of the CPU httpx does per request, which matters here: the load
    generator shares two cores with the server it measures.
    """

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                self.writer.write(data)
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                    elif name == b"transfer-encoding":
                        raise ValueError("chunked responses are not supported")
                payload = await self.reader.readexactly(length) if length else b""
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, payload


CLIENT_ERRORS = (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError)


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    cpu: dict[str, float] = field(default_factory=dict)  # group -> cores used on average

    def record(self, ok: bool, latency: float) -> None:
        if ok:
            self.latencies.append(latency)
            self.ok += 1
        else:
            self.errors += 1

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


async def _closed_loop_raw(
    port: int, spec: RequestSpec, clients: int, duration: float
) -> LoadResult:
    counter = itertools.count()
    result = LoadResult()
    conns = [RawConnection(port) for _ in range(clients)]
    for conn in conns:  # connected before the clock starts
        await conn.connect()
    start = time.perf_counter()
    stop = start + duration

    async def client(conn: RawConnection) -> None:
        while True:
            data = spec.raw(next(counter))
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            try:
                status, _ = await conn.request(data)
            except CLIENT_ERRORS:
                result.errors += 1
                continue
            result.record(status == spec.expect, time.perf_counter() - t0)

    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        for conn in conns:
            conn.close()
    result.elapsed = time.perf_counter() - start
    return result


def _closed_loop_httpx(port: int, spec: RequestSpec, clients: int, duration: float) -> LoadResult:
    counter = itertools.count()
    lock = threading.Lock()
    result = LoadResult()
    ready = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        mine = LoadResult()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT_S) as http:
            http.get("/healthz")  # connected before the clock starts
            ready.wait()
            while True:
                with lock:
                    n = next(counter)
                content = spec.body(n) if spec.body is not None else None
                t0 = time.perf_counter()
                if t0 >= stop_at[0]:
                    break
                try:
                    response = http.request(
                        spec.method, spec.path, headers=spec.headers, content=content
                    )
                except httpx.HTTPError:
                    mine.errors += 1
                    continue
                mine.record(response.status_code == spec.expect, time.perf_counter() - t0)
        with lock:
            result.latencies.extend(mine.latencies)
            result.ok += mine.ok
            result.errors += mine.errors

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=60)
    start = time.perf_counter()
    stop_at[0] = start + duration
    for t in threads:
        t.join(timeout=duration + REQUEST_TIMEOUT_S + 10)
    result.elapsed = time.perf_counter() - start
    return result


def closed_loop(
    port: int, spec: RequestSpec, clients: int, duration: float, client: str, sampler: CpuSampler
) -> LoadResult:
    before = sampler.snapshot()
    if client == "httpx":
        result = _closed_loop_httpx(port, spec, clients, duration)
    else:
        result = asyncio.run(_closed_loop_raw(port, spec, clients, duration))
    result.cpu = sampler.cores_since(before)
    return result


# --------------------------------------------------------------------------------------------
# CPU by role


def _role(cmdline: str) -> str:
    """The stack's process a command line belongs to."""
    if "gunicorn" in cmdline:
        return "publisher"
    for service in ("archiver", "notifier"):
        if f"worker {service}" in cmdline:
            return service
    if "--noop-worker" in cmdline:
        return "no-op worker"
    if "services.cli beat" in cmdline:
        return "beat"
    if "services.cli relay" in cmdline:
        return "relay"
    if "multiprocessing.spawn" in cmdline:  # the archiver's related-reads process
        return "related reads"
    if "redis-server" in cmdline:
        return "redis"
    if "services.cli up" in cmdline:
        return "supervisor"
    return "other stack"


def stack_sampler(root_pid: int | None, database_url: str = "") -> CpuSampler:
    """CPU seconds by role (publisher, workers, redis, postgresql, this load generator): the
    processes below ``root_pid`` by their command line, PostgreSQL's backends by the database
    in their process title."""
    title = f" {make_url(database_url).database} " if database_url.startswith("postgres") else ""

    def backend(cmdline: str) -> str | None:
        return "postgresql" if title in cmdline else None

    return CpuSampler(root_pid, _role, backend if title else None, "load generator")


CPU_ORDER = (
    "publisher",
    "archiver",
    "notifier",
    "no-op worker",
    "related reads",
    "relay",
    "beat",
    "redis",
    "postgresql",
    "supervisor",
    "other stack",
    "load generator",
    "other processes",
    "machine busy",
)
NOISY_CORES = 0.25  # CPU used by processes outside the bench and its stack


def cpu_line(samples: Sequence[dict[str, float]]) -> str:
    names = [n for n in CPU_ORDER if any(n in s for s in samples)]
    parts = [f"{n} {median([s.get(n, 0.0) for s in samples]):.2f}" for n in names]
    line = ", ".join(parts) + f"  (cores, of {os.cpu_count()})"
    other = max((s.get("other processes", 0.0) for s in samples), default=0.0)
    if other > NOISY_CORES:
        line += f"\n  WARNING: other processes used up to {other:.2f} cores: figures are disturbed"
    return line


# --------------------------------------------------------------------------------------------
# Ledgers


def routed_types(consumer: str) -> list[str]:
    return [t for t, queues in ROUTES.items() if consumer in queues]


def ledger_counts(engine: Engine, since: datetime | None = None) -> dict[str, int]:
    query = select(ConsumedEvent.consumer, func.count()).group_by(ConsumedEvent.consumer)
    if since is not None:
        query = query.where(ConsumedEvent.consumed_at >= since)
    with engine.connect() as conn:
        found = {str(c): int(n) for c, n in conn.execute(query)}
    return {c: found.get(c, 0) for c in CONSUMERS}


def wait_caught_up(engine: Engine, timeout: float) -> float:
    """Wait until every consumer's ledger has each outbox event routed to it; returns seconds
    waited (NaN on timeout)."""
    with engine.connect() as conn:
        expected = {
            c: int(
                conn.scalar(
                    select(func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.type.in_(routed_types(c)))
                )
                or 0
            )
            for c in CONSUMERS
        }
    counts: dict[str, int] = {}

    def caught_up() -> bool:
        counts.update(ledger_counts(engine))
        return all(counts[c] >= expected[c] for c in CONSUMERS)

    waited = wait_until(caught_up, timeout, 0.25)
    if math.isnan(waited):
        say(f"consumers did not catch up in {timeout:.0f} s: {counts} of {expected}")
    return waited


# --------------------------------------------------------------------------------------------
# Part 1: creations vs /healthz


@dataclass
class Part1:
    creations: list[LoadResult] = field(default_factory=list)
    health: list[LoadResult] = field(default_factory=list)
    catch_up: list[float] = field(default_factory=list)


def run_part1(
    stack: Stack, token: str, corpus: Corpus, args: argparse.Namespace, engine: Engine
) -> Part1:
    health = RequestSpec("GET", "/healthz", 200)
    sampler = stack_sampler(stack.pid, stack.database_url)

    def load(spec: RequestSpec, seconds: float) -> LoadResult:
        return closed_loop(stack.port, spec, args.clients, seconds, args.client, sampler)

    def creations() -> RequestSpec:  # titles unique per run
        return article_spec(token, corpus, uuid.uuid4().hex[:6])

    result = Part1()
    say(f"part 1: warming up ({WARM_UP_S:g} s of each, not counted)")
    load(creations(), WARM_UP_S)
    load(health, 1.0)
    wait_caught_up(engine, args.drain_timeout)
    for run in range(1, args.runs + 1):
        c = load(creations(), args.duration)
        result.creations.append(c)
        waited = wait_caught_up(engine, args.drain_timeout)
        result.catch_up.append(waited)
        h = load(health, args.duration)
        result.health.append(h)
        say(
            f"part 1 run {run}/{args.runs}: creations {c.rate:.1f}/s p50 {c.p50_ms:.1f} ms "
            f"p99 {c.p99_ms:.1f} ms err {c.errors}; consumers caught up {waited:.1f} s later; "
            f"healthz {h.rate:.1f}/s p99 {h.p99_ms:.1f} ms err {h.errors}"
        )
    return result


def load_row(
    label: str, results: Sequence[LoadResult], target: str = "", ok: bool | None = None
) -> list[str]:
    """A row of part 1's table: medians over runs, errors added up."""
    return [
        label,
        fmt(median(r.rate for r in results)),
        fmt(median(r.p50_ms for r in results)),
        fmt(median(r.p99_ms for r in results)),
        str(sum(r.errors for r in results)),
        target,
        "" if ok is None else verdict(ok),
    ]


def print_part1(result: Part1, args: argparse.Namespace) -> None:
    c, h = result.creations, result.health
    c_rate, h_rate = median(r.rate for r in c), median(r.rate for r in h)
    ok = c_rate >= TARGET_CREATIONS_PER_S and median(r.p99_ms for r in c) < TARGET_CREATE_P99_MS
    target = f">= {TARGET_CREATIONS_PER_S:.0f}/s, p99 < {TARGET_CREATE_P99_MS:.0f} ms"
    rows = [
        load_row("POST /api/v1/articles (201)", c, target, ok),
        load_row("GET /healthz (200)", h),
    ]
    print(
        f"\nPart 1. Creations vs /healthz: {args.clients} concurrent keep-alive clients "
        f"({args.client} client), {args.duration:g} s per measurement, median of {args.runs}"
    )
    print(table(["request", "req/s", "p50 ms", "p99 ms", "errors", "target", ""], rows))
    print(f"  creations / healthz: {fmt(100 * c_rate / h_rate if h_rate else float('nan'))} %")
    print("  per run, creations/s: " + ", ".join(fmt(r.rate) for r in c))
    print("  per run, healthz/s:   " + ", ".join(fmt(r.rate) for r in h))
    print(
        "  consumers caught up after each creation run (s): "
        + ", ".join(fmt(x) for x in result.catch_up)
    )
    print(f"  CPU during creations: {cpu_line([r.cpu for r in c])}")
    print(f"  CPU during healthz:   {cpu_line([r.cpu for r in h])}")
    print(
        "  The load generator runs on the same 2 cores as the server: its CPU above is taken "
        "from the server."
    )


# --------------------------------------------------------------------------------------------
# Part 2: end to end, 201 -> ledger


@dataclass
class Part2Run:
    sent: int
    ok: int
    achieved_rate: float
    api_latencies: list[float]
    e2e_ms: dict[str, list[float]]  # client's 201 -> ledger row
    commit_ms: dict[str, list[float]]  # outbox row written (server clock) -> ledger row
    missing: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)


async def _paced(
    port: int, spec: RequestSpec, rate: float, duration: float, conns: int = 16
) -> tuple[int, list[tuple[str, float, float]], float]:
    """Open loop: request i starts at t0 + i/rate whatever the earlier ones are doing."""
    pool: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(conns):
        conn = RawConnection(port)
        await conn.connect()
        pool.put_nowait(conn)
    answered: list[tuple[str, float, float]] = []  # article id, wall time of the 201, latency
    failures = 0

    async def one(n: int) -> None:
        nonlocal failures
        conn = await pool.get()
        try:
            t0 = time.perf_counter()
            status, body = await conn.request(spec.raw(n))
            at = time.time()
            latency = time.perf_counter() - t0
        except CLIENT_ERRORS:
            failures += 1
            return
        finally:
            pool.put_nowait(conn)
        if status != spec.expect:
            failures += 1
            return
        answered.append((json.loads(body)["id"], at, latency))

    total = max(1, round(rate * duration))
    tasks = []
    start = time.perf_counter() + 0.05
    for n in range(total):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return total, answered, elapsed


def _ledger_rows(
    engine: Engine, article_ids: Sequence[str]
) -> dict[tuple[str, str], tuple[float, float]]:
    """(article id, consumer) -> (consumed_at, the event's outbox created_at) as Unix times."""
    found: dict[tuple[str, str], tuple[float, float]] = {}
    with engine.connect() as conn:
        for i in range(0, len(article_ids), 500):
            chunk = list(article_ids[i : i + 500])
            query = (
                select(
                    ConsumedEvent.article_id,
                    ConsumedEvent.consumer,
                    ConsumedEvent.consumed_at,
                    OutboxEvent.created_at,
                )
                .join(OutboxEvent, OutboxEvent.event_id == ConsumedEvent.event_id)
                .where(ConsumedEvent.article_id.in_(chunk))
            )
            for article_id, consumer, at, written in conn.execute(query):
                key = (str(article_id), str(consumer))
                if key not in found or at.timestamp() < found[key][0]:
                    found[key] = (at.timestamp(), written.timestamp())
    return found


def _wait_for_ledgers(
    engine: Engine, article_ids: Sequence[str], timeout: float
) -> dict[tuple[str, str], tuple[float, float]]:
    """``_ledger_rows`` once every consumer has recorded every article, or after ``timeout``."""
    rows: dict[tuple[str, str], tuple[float, float]] = {}

    def all_recorded() -> bool:
        rows.update(_ledger_rows(engine, article_ids))
        return len(rows) >= len(article_ids) * len(CONSUMERS)

    wait_until(all_recorded, timeout, 0.25)
    return rows


def run_part2(
    stack: Stack, token: str, corpus: Corpus, args: argparse.Namespace, engine: Engine
) -> list[Part2Run]:
    runs = []
    sampler = stack_sampler(stack.pid, stack.database_url)
    # As part 1: the first events after a start also wait for the workers' own start.
    say(f"part 2: warming up ({WARM_UP_S:g} s at the rate, not counted)")
    asyncio.run(_paced(stack.port, article_spec(token, corpus, "warm"), args.rate, WARM_UP_S))
    wait_caught_up(engine, args.drain_timeout)
    for run in range(1, args.runs + 1):
        spec = article_spec(token, corpus, uuid.uuid4().hex[:6])
        before = sampler.snapshot()
        sent, answered, elapsed = asyncio.run(_paced(stack.port, spec, args.rate, args.duration))
        cpu = sampler.cores_since(before)
        rows = _wait_for_ledgers(engine, [a for a, _, _ in answered], args.drain_timeout)
        e2e: dict[str, list[float]] = {c: [] for c in CONSUMERS}
        from_commit: dict[str, list[float]] = {c: [] for c in CONSUMERS}
        missing = dict.fromkeys(CONSUMERS, 0)
        for article_id, at, _ in answered:
            for consumer in CONSUMERS:
                found = rows.get((article_id, consumer))
                if found is None:
                    missing[consumer] += 1
                else:
                    e2e[consumer].append((found[0] - at) * 1000)
                    from_commit[consumer].append((found[0] - found[1]) * 1000)
        api = [x for _, _, x in answered]
        result = Part2Run(
            sent, len(answered), len(answered) / elapsed, api, e2e, from_commit, missing, cpu
        )
        runs.append(result)
        say(
            f"part 2 run {run}/{args.runs}: {len(answered)}/{sent} published at "
            f"{result.achieved_rate:.1f}/s; "
            + "; ".join(
                f"{c} p50 {percentile(e2e[c], 50):.1f} ms p99 {percentile(e2e[c], 99):.1f} ms"
                for c in CONSUMERS
            )
        )
    return runs


def print_part2(runs: list[Part2Run], args: argparse.Namespace) -> None:
    print(
        f"\nPart 2. End to end, client's 201 -> row in the consumer's ledger, "
        f"{args.rate:g} publishes/s for {args.duration:g} s, median of {args.runs}"
    )
    rows = []
    for consumer in CONSUMERS:
        e2e = [r.e2e_ms[consumer] for r in runs]
        commit = [r.commit_ms[consumer] for r in runs]
        p50, p99 = median_percentile(e2e, 50), median_percentile(e2e, 99)
        rows.append(
            [
                consumer,
                fmt(p50),
                fmt(p99),
                fmt(median_percentile(e2e, 100)),
                fmt(median_percentile(e2e, 0)),
                str(sum(r.missing[consumer] for r in runs)),
                f"p50 < {TARGET_E2E_P50_MS:.0f} ms, p99 < {TARGET_E2E_P99_MS:.0f} ms",
                verdict(p50 < TARGET_E2E_P50_MS and p99 < TARGET_E2E_P99_MS),
                fmt(median_percentile(commit, 50)),
                fmt(median_percentile(commit, 99)),
            ]
        )
    headers = ["consumer", "p50 ms", "p99 ms", "max ms", "min ms", "missing", "target", ""]
    print(table([*headers, "outbox row->ledger p50", "p99"], rows))
    for consumer in CONSUMERS:
        print(
            f"  per run, {consumer} p50/p99 ms: "
            + ", ".join(
                f"{fmt(percentile(r.e2e_ms[consumer], 50))}/"
                f"{fmt(percentile(r.e2e_ms[consumer], 99))}"
                for r in runs
            )
        )
    api = [r.api_latencies for r in runs]
    print(
        f"  publishes: {sum(r.ok for r in runs)} of {sum(r.sent for r in runs)} answered 201, "
        f"achieved {fmt(median(r.achieved_rate for r in runs))}/s; API latency at this rate "
        f"p50 {fmt(median_percentile(api, 50, 1000))} ms, "
        f"p99 {fmt(median_percentile(api, 99, 1000))} ms"
    )
    print(
        "  (the relay, woken by the commit, can hand the event to the broker before the client "
        "has read the 201, and a fast consumer record it: negative values are real; "
        "outbox row->ledger starts at the outbox row's created_at instead, on the server's clock)"
    )
    print(f"  CPU: {cpu_line([r.cpu for r in runs])}")


# --------------------------------------------------------------------------------------------
# Part 3: drain rate vs Celery's floor


def noop_app(settings: Settings) -> Celery:
    """Celery's floor: the consumers' broker settings, a task that does nothing."""
    app = create_celery(settings, "bench-noop")
    app.conf.task_default_queue = NOOP_QUEUE

    @app.task(name=NOOP_TASK, acks_late=True, ignore_result=True)
    def noop(envelope: dict) -> None:
        return None

    return app


FLOORS = {
    False: "as our workers run (task events, their log level)",
    True: "bare (no task events, WARNING log)",
}


def worker_argv(name: str, concurrency: int, level: str, events: bool) -> list[str]:
    """The flags services.workers.run_worker passes to Celery (events and level aside)."""
    argv = [
        "worker",
        "--queues", NOOP_QUEUE,
        "--hostname", f"{name}-{os.getpid()}@%h",
        "--concurrency", str(concurrency),
        "--loglevel", level,
        "--without-mingle",
        "--without-gossip",
    ]  # fmt: skip
    return [*argv, "--task-events"] if events else argv


def noop_worker_main(concurrency: int, bare: bool) -> None:
    """``bench/publish.py --noop-worker N [--noop-bare]``: the floor's worker.

    By default it is set up as ours are (services.workers.run_worker: same Celery settings,
    structlog set-up, level and task events); bare turns off task events and per-task logs.
    """
    from shared.logs import configure_logging

    settings = Settings.from_env()
    level = "WARNING" if bare else settings.log_level
    configure_logging(level)
    app = noop_app(settings)
    if bare:
        app.conf.worker_send_task_events = False
    app.worker_main(worker_argv("noop", concurrency, level, events=not bare))


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting on a Celery queue (every priority) plus those taken but not acked."""
    pipe = client.pipeline(transaction=False)
    for key in broker_lists(queue):
        pipe.llen(key)
    pipe.hlen("unacked")
    return sum(int(n) for n in pipe.execute())


class Broker:
    """The embedded redis-server, on a unix socket under VAR_DIR, as `pressroom up` runs it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            server_argv(self.settings.var_dir / "redis", socket=self.settings.redis_socket),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until_ready(self.settings.redis_client_url, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 10)
            self.proc = None


@dataclass
class Drain:
    events: int
    rate: float  # events/s between the first and the last ledger row (or queue movement)
    wall: float  # seconds from starting the workers to the last row
    complete: bool
    cpu: dict[str, float] = field(default_factory=dict)


def enqueue_events(db: Database, settings: Settings, corpus: Corpus, n: int) -> tuple[float, float]:
    """Insert n published articles with their outbox rows, then relay them with the product's
    Relay; returns (insert seconds, relay seconds)."""
    t0 = time.monotonic()
    now = utcnow()
    tag = uuid.uuid4().hex[:6]
    for start in range(0, n, 1000):
        articles, outbox = [], []
        for i in range(start, min(n, start + 1000)):
            title, body, section = corpus.items[i % len(corpus.items)]
            row = article_row(f"bench-{tag}-{i}", f"{title} ({tag}-{i})", "", body, section, now)
            articles.append(row)
            data = {**Article(**row).snapshot(), "reason": None, "origin": "api"}
            envelope = events.make_envelope(events.ARTICLE_PUBLISHED, data, time=now)
            outbox.append(
                {
                    "event_id": envelope["id"],
                    "type": events.ARTICLE_PUBLISHED,
                    "article_id": row["id"],
                    "data": envelope["data"],
                    "created_at": now,
                    "attempts": 0,
                }
            )
        with db.transaction() as session:
            session.execute(insert(Article), articles)
            session.execute(insert(OutboxEvent), outbox)
    t1 = time.monotonic()
    sent = Relay(db, CelerySender(create_celery(settings, "bench-relay"))).relay()
    if sent != n:
        raise RuntimeError(f"the relay sent {sent} of {n} events")
    return t1 - t0, time.monotonic() - t1


def run_workers(
    argvs: Sequence[list[str]],
    env: dict[str, str],
    log: Path,
    done: Callable[[float], bool],
    timeout: float,
    interval: float,
    database_url: str = "",
) -> tuple[dict[str, float], float]:
    """Start worker processes and call ``done(seconds since they were started)`` every
    ``interval`` until it returns true or ``timeout`` passes (an exited worker is an error);
    stop them. Returns the cores used meanwhile and the seconds it all took."""
    sampler = stack_sampler(os.getpid(), database_url)
    before = sampler.snapshot()
    started = time.monotonic()
    procs = [spawn(argv, env, log) for argv in argvs]

    def finished() -> bool:
        if done(time.monotonic() - started):
            return True
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {proc.returncode}; see {log}")
        return False

    try:
        wait_until(finished, timeout, interval)
        return sampler.cores_since(before), time.monotonic() - started
    finally:
        for proc in procs:
            stop_group(proc)


def drain_consumers(
    engine: Engine,
    env: dict[str, str],
    consumers: Sequence[str],
    n: int,
    timeout: float,
    log: Path,
) -> dict[str, Drain]:
    since = utcnow()
    baseline = ledger_counts(engine, since)
    done_at: dict[str, float] = {}

    def all_done(elapsed: float) -> bool:
        counts = ledger_counts(engine, since)
        for c in consumers:
            if c not in done_at and counts[c] - baseline[c] >= n:
                done_at[c] = elapsed
        return len(done_at) == len(consumers)

    argvs = [[PYTHON, "-m", "services.cli", "worker", c] for c in consumers]
    cpu, elapsed = run_workers(argvs, env, log, all_done, timeout, 0.25, str(engine.url))
    results = {}
    with engine.connect() as conn:
        for c in consumers:
            first, last, count = conn.execute(
                select(
                    func.min(ConsumedEvent.consumed_at),
                    func.max(ConsumedEvent.consumed_at),
                    func.count(),
                ).where(ConsumedEvent.consumer == c, ConsumedEvent.consumed_at >= since)
            ).one()
            span = (last - first).total_seconds() if first is not None else 0.0
            rate = (count - 1) / span if span > 0 else float("nan")
            results[c] = Drain(int(count), rate, done_at.get(c, elapsed), c in done_at, cpu)
    return results


def drain_floor(
    settings: Settings,
    env: dict[str, str],
    n: int,
    concurrency: int,
    bare: bool,
    timeout: float,
    log: Path,
) -> tuple[Drain, float]:
    """n no-op tasks drained by `concurrency` worker processes; returns (drain, sends/s)."""
    app = noop_app(settings)
    payload = events.make_envelope(
        events.ARTICLE_PUBLISHED,
        {"article_id": new_id(), "version": 1, "title": "x" * 60, "tags": ["bench"]},
    )
    t0 = time.monotonic()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task(
                NOOP_TASK,
                args=[payload],
                queue=NOOP_QUEUE,
                ignore_result=True,
                retry=False,
                producer=producer,
            )
    send_rate = n / (time.monotonic() - t0)
    client = redis.Redis.from_url(settings.redis_client_url)
    first: tuple[float, int] | None = None  # (seconds, depth) when the queue first moved
    finished: float | None = None

    def drained(elapsed: float) -> bool:
        nonlocal first, finished
        depth = queue_depth(client, NOOP_QUEUE)
        if first is None and depth < n:
            first = (elapsed, depth)
        if depth == 0:
            finished = elapsed
        return depth == 0

    argv = [PYTHON, str(Path(__file__).resolve()), "--noop-worker", str(concurrency)]
    try:
        cpu, elapsed = run_workers(
            [[*argv, "--noop-bare"] if bare else argv], env, log, drained, timeout, 0.01
        )
    finally:
        client.close()
    if first is None or finished is None:
        return Drain(0, float("nan"), elapsed, False), send_rate
    span = finished - first[0]
    rate = first[1] / span if span > 0 else float("nan")
    return Drain(n, rate, finished, True, cpu), send_rate


@dataclass
class Part3Run:
    floor: dict[tuple[bool, int], Drain]  # (bare, processes)
    send_rate: float
    alone: dict[str, Drain]
    together: dict[str, Drain]
    insert_s: float
    relay_s: float


def run_part3(
    databases: Databases, corpus: Corpus, args: argparse.Namespace, workdir: Path
) -> list[Part3Run]:
    runs = []
    n = args.events
    for run in range(1, args.runs + 1):
        var_dir = workdir / f"drain-{run}"
        var_dir.mkdir(parents=True)
        url = databases.fresh(var_dir)
        env = stack_env(var_dir, url)
        settings = Settings.from_env(env)
        log = var_dir / "workers.log"
        broker = Broker(settings)
        db = Database(settings.db_url)
        engine = reader(settings.db_url)
        try:
            broker.start()
            migrate = make_engine(settings.db_url)
            try:
                upgrade(migrate)
            finally:
                migrate.dispose()
            floor: dict[tuple[bool, int], Drain] = {}
            send_rates = []
            for bare in FLOORS:
                for procs in (1, 2):
                    say(
                        f"part 3 run {run}/{args.runs}: floor {FLOORS[bare]}, "
                        f"{n} no-op tasks, {procs} process(es)"
                    )
                    floor[bare, procs], sent = drain_floor(
                        settings, env, n, procs, bare, args.drain_timeout, log
                    )
                    send_rates.append(sent)
            say(f"part 3 run {run}/{args.runs}: queueing {n} events for each consumer")
            insert_s, relay_s = enqueue_events(db, settings, corpus, n)
            alone: dict[str, Drain] = {}
            for consumer in CONSUMERS:
                say(f"part 3 run {run}/{args.runs}: {consumer} alone drains {n} events")
                alone.update(drain_consumers(engine, env, [consumer], n, args.drain_timeout, log))
            say(f"part 3 run {run}/{args.runs}: queueing {n} more, both consumers drain at once")
            enqueue_events(db, settings, corpus, n)
            together = drain_consumers(engine, env, CONSUMERS, n, args.drain_timeout, log)
        finally:
            engine.dispose()
            db.dispose()
            broker.stop()
        result = Part3Run(floor, median(send_rates), alone, together, insert_s, relay_s)
        runs.append(result)
        say(
            f"part 3 run {run}/{args.runs}: floor {floor[False, 1].rate:.0f}/s (1 proc), "
            f"{floor[False, 2].rate:.0f}/s (2 procs), bare {floor[True, 1].rate:.0f}/s, "
            f"{floor[True, 2].rate:.0f}/s; alone "
            + ", ".join(f"{c} {d.rate:.0f}/s" for c, d in alone.items())
            + "; together "
            + ", ".join(f"{c} {d.rate:.0f}/s" for c, d in together.items())
        )
    return runs


def print_part3(runs: list[Part3Run], args: argparse.Namespace) -> None:
    conc = Settings.from_env().worker_concurrency
    procs = conc if conc in (1, 2) else 2
    floor = {k: median([r.floor[k].rate for r in runs]) for k in runs[0].floor}
    base, bare = floor[False, procs], floor[True, procs]
    print(
        f"\nPart 3. Drain: {args.events:,} events queued, then the workers started "
        f"(`pressroom worker`, concurrency {conc}); median of {args.runs}"
    )

    def done(drains: Sequence[Drain]) -> str:
        return "" if all(d.complete for d in drains) else "TIMEOUT"

    rows = []
    for (is_bare, p), rate in floor.items():
        rows.append(
            [
                f"Celery floor, no-op task, {p} process{'es' if p > 1 else ''}, "
                + ("bare" if is_bare else "as ours run"),
                fmt(rate, 0),
                f"{RECIPE_FLOOR[p]:,.0f}",
                "",
                "",
                done([r.floor[is_bare, p] for r in runs]),
            ]
        )

    def ours(label: str, rate: float, drains: Sequence[Drain]) -> list[str]:
        return [label, fmt(rate, 0), "", f"{fmt(rate / base, 2)} x", f"{fmt(rate / bare, 2)} x",
                done(drains)]  # fmt: skip

    for c in CONSUMERS:
        rows.append(ours(f"{c} alone", median([r.alone[c].rate for r in runs]),
                         [r.alone[c] for r in runs]))  # fmt: skip
    total = 0.0
    for c in CONSUMERS:
        rate = median([r.together[c].rate for r in runs])
        total += rate
        rows.append(ours(f"{c}, both consumers at once", rate, [r.together[c] for r in runs]))
    rows.append(ours("both consumers, combined", total, []))
    print(
        table(["drain (events/s)", "events/s", "recipe", f"vs floor {procs}p", "vs bare", ""], rows)
    )
    print(
        f"  floor 'as ours run': the same Celery settings (shared.celery.create_celery), flags, "
        f"structlog set-up, level {Settings.from_env().log_level} and task events as "
        f"`pressroom worker`; 'bare': no task events, WARNING; ratios are against {procs} "
        f"process{'es' if procs > 1 else ''}, our workers' concurrency"
    )
    print(
        f"  per run, archiver alone: {', '.join(fmt(r.alone[CONSUMERS[0]].rate, 0) for r in runs)}"
    )
    print(
        f"  CPU, floor as ours run, {procs} processes: "
        f"{cpu_line([r.floor[False, procs].cpu for r in runs])}"
    )
    for c in CONSUMERS:
        print(f"  CPU, {c} alone: {cpu_line([r.alone[c].cpu for r in runs])}")
    print(f"  CPU, both at once: {cpu_line([r.together[CONSUMERS[0]].cpu for r in runs])}")
    print(
        "  rates run from the first to the last ledger row (queue depth for the floor), so "
        "worker start-up is not counted"
    )
    print(
        f"  enqueue: bulk insert {fmt(median([args.events / r.insert_s for r in runs]), 0)} "
        f"articles/s; Relay (shared.bus) {fmt(median([args.events / r.relay_s for r in runs]), 0)}"
        f" events/s (to {len(CONSUMERS)} queues, {MESSAGE_EVENTS} events a message); "
        f"no-op send_task {fmt(median([r.send_rate for r in runs]), 0)}/s (recipe: ~1,800/s)"
    )


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pressroom publish benchmark: creations/s, end-to-end latency, drain rate."
    )
    parser.add_argument("--runs", type=int, default=3, help="repeat each measurement (median)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server URL: throwaway databases are created on it and dropped "
        "(default: an embedded PostgreSQL the bench starts)",
    )
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,2")
    parser.add_argument("--clients", type=int, default=32, help="part 1 concurrent clients")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="part 1 load generator: raw asyncio HTTP/1.1 (default, cheap) or httpx in threads",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="part 2 publishes per second")
    parser.add_argument("--events", type=int, default=20_000, help="part 3 events to drain")
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="hard limit on each wait, seconds"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV of articles")
    parser.add_argument("--keep", action="store_true", help="keep the temporary VAR_DIRs")
    parser.add_argument("--noop-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--noop-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.part_set = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.part_set <= {"1", "2", "3"}:
        parser.error("--parts takes a comma-separated subset of 1,2,3")
    return args


def reproduce(args: argparse.Namespace) -> list[str]:
    """The command line that repeats this run: every option that differs from its default."""
    return [
        ".venv/bin/python",
        "bench/publish.py",
        *flags(args, ("runs", "duration")),
        "--parts",
        ",".join(sorted(args.part_set)),
        *flags(
            args,
            ("database_url", "clients", "client", "rate", "events", "drain_timeout"),
            parse_args([]),
        ),
    ]


def tree_state() -> str:
    """The commit measured, and whether the working tree had changes."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return done.stdout.strip()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.noop_worker is not None:
        noop_worker_main(args.noop_worker, args.noop_bare)
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    databases = Databases(args.database_url, "pressroom_bench_")
    corpus = load_corpus(args.data)
    settings = Settings.from_env(stack_env(Path("/nonexistent"), "postgresql://unused@/none"))
    workdir = Path(tempfile.mkdtemp(prefix="pressroom-bench-"))
    command = reproduce(args)
    busy = machine_busy(2.0)
    header = [
        "Pressroom publish benchmark",
        f"  reproduce: {shlex.join(command)}   (make bench = the defaults, embedded PostgreSQL)",
        f"  tree: {tree_state()}",
        f"  machine: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}; database {databases.server_version()}; "
        "broker embedded redis-server on a unix socket",
        f"  publisher: gunicorn, {settings.web_workers} gthread workers x 4 threads; workers: "
        f"concurrency {settings.worker_concurrency}; log level {settings.log_level}",
        f"  article bodies: {corpus.source}, mean {corpus.mean_body_bytes:,.0f} bytes of HTML",
        f"  load generator: {args.client} client, in this process, on the same machine",
        f"  machine busy before the bench started: {busy:.2f} cores (2 s sample)",
    ]
    if busy > NOISY_CORES:
        header.append("  WARNING: the machine is not idle: other work will disturb the figures")
    print("\n".join(header), flush=True)
    stack: Stack | None = None
    try:
        if args.part_set & {"1", "2"}:
            var_dir = workdir / "stack"
            stack = Stack(var_dir, stack_env(var_dir, databases.fresh(var_dir)), free_port())
            say(f"starting the stack: VAR_DIR={var_dir} PORT={stack.port}")
            stack.start()
            token = stack.token()
            engine = reader(stack.database_url)
            try:
                if "1" in args.part_set:
                    print_part1(run_part1(stack, token, corpus, args, engine), args)
                if "2" in args.part_set:
                    print_part2(run_part2(stack, token, corpus, args, engine), args)
            finally:
                engine.dispose()
                say("stopping the stack (SIGTERM)")
                stack.stop()
        if "3" in args.part_set:
            print_part3(run_part3(databases, corpus, args, workdir), args)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if stack is not None:
            stack.stop()
        databases.drop_all()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nreproduce: {shlex.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
