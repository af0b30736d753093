"""Related-reads quality: how often a story's "Also read" list stays on its subject, and how
often a story split in two finds its other half first.

On ``--data`` (the BBC set in ../shared/data, five categories), with the category hidden from
every engine (title and body only: no section, no tags, no recency), for this engine's
configuration and, from the same run, three baselines (tuned TF-IDF cosine; the same then LSA
with 100 and with 20 dimensions):

1. precision@5: each story's top 5 (never itself) against the whole file, and the share of
   those 5 that share its category (a short list counts its missing places as misses).
2. twin@1: every story of at least 4 paragraphs is split into two halves (the first keeps
   the title, the second is titled "Part two N", which gives nothing away); the corpus is
   the halves only, as in issue 14's own figures. The share of halves whose first related
   read is their own other half, and precision@5 on that corpus.

Bodies reach the engine as the HTML the importer makes of them (one ``<p>`` per paragraph).
The engine runs in memory here; ``evaluate`` takes lists by id, and ``--stack`` scores lists
read back through the API the same way: the file imported with ``pressroom import`` into a
running stack, then 20 % of it archived through the API (no list may keep an archived story).

Then timing, each the median of ``--runs`` runs in ``--jobs`` processes: the fit (tokenising
included) and every story's list, never itself (a full rebuild's two steps), in wall-clock
seconds and in CPU seconds of this process and its workers (which, unlike the clock, do
not grow with whatever else shares the machine; on two idle cores the wall clock of the
rebuild is a little over half of them); then, for 20
stories held out of a fit, the median time of one new story's vector and list, and of its
exact score against every stored story (how the lists it enters are found). With
``--scale N``, the same on N stories made by mixing the file's paragraphs (each the first
half of one story and the second half of another of its category), which is how the
100,000-story figures are measured. Memory: this process's RSS before a corpus's runs (it
holds the stories), its peak during them, and the peak of its worker processes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import _harness as h
import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from services.archiver.relatedness import (
    Corpus,
    Doc,
    ModelParams,
    RankParams,
    TextModel,
    related_all,
    score_all,
    top_k,
)
from shared.content import paragraphs_to_html

DATA = h.ROOT.parent / "shared" / "data" / "bbc-dev.csv"
K = 5
MIN_PARAGRAPHS = 4
ENGINE = "this engine"
TARGET_PRECISION = 0.96
TARGET_TWIN = 0.60
PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Story:
    id: str
    category: str
    title: str
    text: str  # plain, paragraphs separated by blank lines


@dataclass(frozen=True)
class Figures:
    precision: float  # at K
    twin: float  # NaN without twins


Lists = Mapping[str, Sequence[str]]


def load(path: Path) -> list[Story]:
    with open(path, newline="") as fh:
        return [Story(r["id"], r["category"], r["title"], r["body"]) for r in csv.DictReader(fh)]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH.split(text) if p.strip()]


def halves(stories: Sequence[Story]) -> tuple[list[Story], dict[str, str]]:
    """The two halves of each story of at least MIN_PARAGRAPHS paragraphs, and each half's
    other half."""
    split: list[Story] = []
    twins: dict[str, str] = {}
    for story in stories:
        parts = paragraphs(story.text)
        if len(parts) < MIN_PARAGRAPHS:
            continue
        middle = len(parts) // 2
        first = Story(f"{story.id}#1", story.category, story.title, "\n\n".join(parts[:middle]))
        second = Story(
            f"{story.id}#2",
            story.category,
            f"Part two {len(twins) // 2 + 1}",
            "\n\n".join(parts[middle:]),
        )
        split += [first, second]
        twins[first.id], twins[second.id] = second.id, first.id
    return split, twins


def evaluate(
    lists: Lists, categories: Mapping[str, str], twins: Mapping[str, str] | None = None
) -> Figures:
    """precision@K over every story in ``categories``; twin@1 over those in ``twins``."""
    hits = sum(
        sum(categories.get(other) == category for other in lists.get(story, ())[:K])
        for story, category in categories.items()
    )
    precision = hits / (K * len(categories)) if categories else float("nan")
    if not twins:
        return Figures(precision, float("nan"))
    found = sum(list(lists.get(half, ()))[:1] == [other] for half, other in twins.items())
    return Figures(precision, found / len(twins))


# --------------------------------------------------------------------------------------------
# Engines: each takes the stories and gives every story's top K ids, never itself.


def docs_of(stories: Iterable[Story]) -> Iterator[Doc]:
    """What the importer stores, made as it is read: the title, and the body as HTML
    paragraphs."""
    return (Doc(s.title, paragraphs_to_html(s.text)) for s in stories)


@dataclass
class Timed:
    lists: dict[str, list[str]]
    fit_s: float
    lists_s: float
    fit_cpu: float = float("nan")
    lists_cpu: float = float("nan")


def cpu_seconds() -> float:
    """CPU seconds spent so far by this process and its live children (the worker
    processes): unlike the wall clock, not inflated by whatever else shares the machine."""
    me, times = str(os.getpid()), os.times()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    workers = [pid for pid in pids if h.stat_fields(pid)[1:2] == [me]]
    return times.user + times.system + sum((h.proc_stat(pid) or (0, 0.0))[1] for pid in workers)


def this_engine(
    stories: Sequence[Story], params: ModelParams, rank: RankParams, jobs: int = 1
) -> Timed:
    docs = docs_of(stories)
    start, start_cpu = time.perf_counter(), cpu_seconds()
    vectors = TextModel.fit_transform(docs, params, n_jobs=jobs)[1]
    fitted, fitted_cpu = time.perf_counter(), cpu_seconds()
    corpus = Corpus([s.id for s in stories], vectors, rank=rank)
    found = [related for part in related_all(corpus, K, n_jobs=jobs) for related in part]
    done, done_cpu = time.perf_counter(), cpu_seconds()
    lists = {s.id: [r.id for r in related] for s, related in zip(stories, found, strict=True)}
    return Timed(
        lists, fitted - start, done - fitted, fitted_cpu - start_cpu, done_cpu - fitted_cpu
    )


def baseline(dims: int | None) -> Callable[[Sequence[Story]], dict[str, list[str]]]:
    """Issue 14's baselines: tuned TF-IDF cosine, then LSA with ``dims`` dimensions."""

    def lists(stories: Sequence[Story]) -> dict[str, list[str]]:
        tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2, max_df=0.5)
        vectors = tfidf.fit_transform([f"{s.title}\n{s.text}" for s in stories])
        if dims is not None:
            vectors = normalize(TruncatedSVD(dims, random_state=0).fit_transform(vectors))
        similarity = np.asarray(
            (vectors @ vectors.T).toarray() if dims is None else vectors @ vectors.T
        )
        np.fill_diagonal(similarity, -np.inf)
        best = np.argsort(-similarity, axis=1, kind="stable")[:, :K]
        return {s.id: [stories[j].id for j in row] for s, row in zip(stories, best, strict=True)}

    return lists


def describe(params: ModelParams, rank: RankParams) -> str:
    return (
        f"{ENGINE}: {rank.words:g} x TF-IDF cosine ({params.terms} words a story) + "
        f"{rank.topic:g} x LSA {params.dims} cosine + {rank.theme:g} x shared theme "
        f"({params.themes} themes); candidates: {rank.word_candidates} by key words, "
        f"{rank.topic_candidates} by topic"
    )


def quality(data: list[Story], params: ModelParams, rank: RankParams) -> str:
    split, twins = halves(data)
    categories = {s.id: s.category for s in data}
    split_categories = {s.id: s.category for s in split}
    engines: list[tuple[str, Callable[[Sequence[Story]], Lists]]] = [
        (ENGINE, lambda stories: this_engine(stories, params, rank).lists),
        ("tuned TF-IDF", baseline(None)),
        ("TF-IDF + LSA 100", baseline(100)),
        ("TF-IDF + LSA 20", baseline(20)),
    ]
    rows = []
    for name, engine in engines:
        h.say(f"quality: {name}")
        whole = evaluate(engine(data), categories)
        parts = evaluate(engine(split), split_categories, twins)
        row = [name, h.fmt(whole.precision, 3), h.fmt(parts.precision, 3), h.fmt(parts.twin, 3)]
        if name == ENGINE:
            ok = whole.precision >= TARGET_PRECISION and parts.twin >= TARGET_TWIN
            row.append(h.verdict(ok))
        rows.append(row + [""] * (5 - len(row)))
    rows.append(["target", f"{TARGET_PRECISION:.3f}", "", f"{TARGET_TWIN:.3f}", ""])
    headers = ["engine", f"p@{K}", f"halves p@{K}", "twin@1", ""]
    title = (
        f"Related reads: {len(data):,} stories; halves corpus {len(split):,} halves "
        f"of {len(twins) // 2:,} stories"
    )
    return title + "\n" + h.table(headers, rows)


# --------------------------------------------------------------------------------------------
# Timing


def synthesise(stories: Sequence[Story], count: int, seed: int = 0) -> list[Story]:
    """``count`` stories, each one story's title and first half then the second half of
    another story of its category."""
    rng = random.Random(seed)
    by_category: dict[str, list[Story]] = {}
    for story in stories:
        by_category.setdefault(story.category, []).append(story)
    made = []
    for n in range(count):
        first = rng.choice(stories)
        second = rng.choice(by_category[first.category])
        head, tail = paragraphs(first.text), paragraphs(second.text)
        body = head[: max(1, len(head) // 2)] + tail[len(tail) // 2 :]
        made.append(Story(f"synthetic/{n}", first.category, first.title, "\n\n".join(body)))
    return made


def one_story_ms(
    stories: Sequence[Story], params: ModelParams, rank: RankParams
) -> tuple[float, float]:
    """Median times for a new story (the last 20 held out of the fit): its vector and its
    list, and its exact score against every stored story (which lists it now enters)."""
    held, kept = stories[-20:], stories[:-20]
    model, vectors = TextModel.fit_transform(docs_of(kept), params)
    corpus = Corpus([s.id for s in kept], vectors, rank=rank)
    lists, scores = [], []
    for story in held:
        start = time.perf_counter()
        vector = model.transform(docs_of([story]))
        top_k(vector, corpus, K)
        listed = time.perf_counter()
        score_all(vector.row(0), corpus)
        lists.append(listed - start)
        scores.append(time.perf_counter() - listed)
    return h.median(lists) * 1000, h.median(scores) * 1000


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in MB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> None:
    """Start this process's peak memory (VmHWM) afresh from what it holds now."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def workers_peak_mb() -> float:
    """The largest peak memory among this process's children (the fit's and the rebuild's
    worker processes, which live on between calls)."""
    me = str(os.getpid())
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    children = [pid for pid in pids if h.stat_fields(pid)[1:2] == [me]]
    return max((rss_mb(pid, "VmHWM") for pid in children), default=float("nan"))


def timing(
    sets: Sequence[tuple[str, list[Story]]],
    runs: int,
    jobs: int,
    params: ModelParams,
    rank: RankParams,
) -> str:
    rows = []
    for name, stories in sets:
        fits, lists, cpu = [], [], []
        before = rss_mb()
        reset_peak()
        for run in range(runs):
            h.say(f"timing: {name}, run {run + 1} of {runs}")
            timed = this_engine(stories, params, rank, jobs)
            fits.append(timed.fit_s)
            lists.append(timed.lists_s)
            cpu.append(timed.fit_cpu + timed.lists_cpu)
        one, entering = one_story_ms(stories, params, rank)
        peak = rss_mb(field="VmHWM")
        fit, rebuild = h.median(fits), h.median(lists)
        rows.append(
            [name, f"{len(stories):,}", h.fmt(fit, 2), h.fmt(rebuild, 2),
             h.fmt(fit + rebuild, 2), h.fmt(h.median(cpu), 1),
             h.fmt(rebuild / len(stories) * 1000, 3), h.fmt(one, 1),
             h.fmt(entering, 1), h.fmt(before, 0), h.fmt(peak, 0), h.fmt(workers_peak_mb(), 0)]
        )  # fmt: skip
    headers = [
        "corpus", "stories", "fit s", f"all top-{K} s", "rebuild s", "CPU s", "ms/story",
        "new list ms", "score all ms", "RSS before MB", "peak MB", "workers' peak MB",
    ]  # fmt: skip
    title = (
        f"Timing, median of {runs} runs in {jobs} processes. Memory: this process before the "
        "runs (it holds the stories) and at its peak, and its worker processes' peak"
    )
    return title + "\n" + h.table(headers, rows)


# --------------------------------------------------------------------------------------------
# Through the stack: the same file imported, lists read back through the API, then 20 % archived


def through_the_stack(data_path: Path, share_archived: float = 0.2) -> str:
    """``pressroom import`` of the file (no section column: the category stays hidden),
    ``pressroom related rebuild`` (what an operator runs after a bulk import), every list
    read back with GET /api/v1/articles/{id}; then ``share_archived`` of the stories archived
    through the API, and, once the related-reads process has caught up, every list read
    again: none may hold an archived story, and precision@5 is scored on what is left."""
    import subprocess
    import tempfile

    import httpx
    import psycopg

    from shared.db import libpq_conninfo

    stories = load(data_path)
    category_of_title = {s.title: s.category for s in stories}
    work = Path(tempfile.mkdtemp(prefix="pressroom-quality-"))
    work.chmod(0o755)
    databases = h.Databases(None, "pressroom_quality_")
    url = databases.fresh(work)
    # Title and body only, as in memory: no section, tag or recency boost; nothing aged.
    env = h.stack_env(
        work / "stack", url, RELATED_SECTION_BOOST="0", RELATED_TAG_BOOST="0",
        RELATED_RECENCY="0", ARCHIVE_AFTER_DAYS="36500",
    )  # fmt: skip
    stack = h.Stack(work / "stack", env, h.free_port())

    def cli(*args: str) -> None:
        subprocess.run(
            [h.PYTHON, "-m", "services.cli", *args], cwd=h.ROOT, env=env, check=True,
            capture_output=True, timeout=600,
        )  # fmt: skip

    try:
        stack.start()
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.port}",
            headers={"Authorization": f"Bearer {stack.token()}"},
            timeout=30,
        )
        h.say(f"importing {data_path.name} through pressroom import, then rebuilding")
        cli("import", str(data_path))
        conn = psycopg.connect(libpq_conninfo(url), autocommit=True)

        def settled() -> bool:  # every event consumed, no recomputation waiting
            row = conn.execute(
                "SELECT (SELECT count(*) FROM due_work) + (SELECT count(*) FROM outbox o"
                " WHERE NOT EXISTS (SELECT 1 FROM consumed_events c"
                " WHERE c.event_id = o.event_id AND c.consumer = 'archiver'))"
            ).fetchone()
            return row is not None and row[0] == 0

        h.wait_until(settled, 300, 0.5)
        cli("related", "rebuild")
        ids: dict[str, str] = {}  # article id -> category
        cursor: str | None = ""
        while cursor is not None:
            page = api.get("/api/v1/articles", params={"limit": 100, "cursor": cursor}).json()
            for item in page["items"]:
                if item["title"] in category_of_title:
                    ids[item["id"]] = category_of_title[item["title"]]
            cursor = page.get("next_cursor") or None

        def lists(of: Iterable[str]) -> dict[str, list[str]]:
            return {
                i: [r["id"] for r in api.get(f"/api/v1/articles/{i}").json()["related"]] for i in of
            }

        before = evaluate(lists(ids), ids)
        archived = set(random.Random(5).sample(sorted(ids), round(len(ids) * share_archived)))
        h.say(f"archiving {len(archived)} stories through the API")
        for i in archived:
            api.post(f"/api/v1/articles/{i}/archive", json={"reason": "bench"}).raise_for_status()
        h.wait_until(settled, 300, 0.5)
        left = {i: c for i, c in ids.items() if i not in archived}
        after_lists = lists(left)
        holding = sum(bool(set(items) & archived) for items in after_lists.values())
        after = evaluate(after_lists, left)
    finally:
        stack.stop()
        databases.drop_all()
    rows = [
        [f"{len(ids)} imported, lists read through the API", f"{before.precision:.3f}", "", ""],
        [f"after archiving {len(archived)} ({share_archived:.0%}) through the API",
         f"{after.precision:.3f}", ">= 0.95", h.verdict(after.precision >= 0.95)],
        ["lists holding an archived story", str(holding), "0", h.verdict(holding == 0)],
    ]  # fmt: skip
    return "Through the stack (pressroom import, the API)\n" + h.table(
        ["", "precision@5", "target", ""], rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=int, default=3, help="timing runs (median)")
    parser.add_argument("--scale", type=int, default=0, help="also time N synthetic stories")
    parser.add_argument("--jobs", type=int, default=2, help="processes for fit and rebuild")
    parser.add_argument(
        "--stack", action="store_true", help="only the run through the stack and its API"
    )
    args = parser.parse_args(argv)
    if args.stack:
        print(through_the_stack(args.data))
        return 0
    params, rank = ModelParams(), RankParams()
    data = load(args.data)
    print(describe(params, rank))
    print(quality(data, params, rank))
    print()
    sets = [(args.data.stem, data)]
    if args.scale:
        sets.append((f"synthetic {args.scale:,}", synthesise(data, args.scale)))
    print(timing(sets, args.runs, args.jobs, params, rank))
    return 0


if __name__ == "__main__":
    sys.exit(main())
