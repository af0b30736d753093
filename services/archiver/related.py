"""The "Also read" lists, kept right by events: the database side of the text engine.

The engine (:mod:`services.archiver.relatedness`) scores stories; this keeps what it needs
in the database (the fitted model, a vector per listed story, the lists) and changes the
lists an event affects, and only those:

- a story published or edited gets its vector and its list, and enters every list whose
  last place it now beats (scores are symmetric: its scores against every stored story
  say which); the lists it was in are recomputed, its text having changed;
- a story archived or retracted loses its vector, and every list it was in is recomputed
  without it (backfilled); unarchived, it is as if published again.

Each process caches the model and the vectors, and before every use reads the vectors
written since (``seq``), so it sees every other process's changes. Stories added since the
cache was built sit in a small second corpus beside it, removed ones are excluded; once
they add up, the cache is rebuilt. A list is written with its owner locked (an advisory
lock), so two processes never interleave two versions of one list.

Editors steer a list: ``related_pinned`` stories come first, in their order, while they
are published; ``related_excluded`` never show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from services.archiver import relatedness as engine
from shared.config import Settings
from shared.db import Database, json_elements
from shared.models import Article, ArticleVector, RelatedItem, RelatedModel, has_status
from shared.models import ArticleStatus as S

log = logging.getLogger(__name__)

REBUILD_AFTER = 2_000  # stories changed since the cache was built: build it afresh
OWNER_CANDIDATES = 200  # a story can enter only the lists of the stories nearest to it
FIT_INLINE_UP_TO = 5_000  # published stories a first model is fitted on inside an event
LOCKS = "pressroom:related:"


def rank_params(settings: Settings) -> engine.RankParams:
    return engine.RankParams(
        section_boost=settings.related_section_boost,
        tag_boost=settings.related_tag_boost,
        recency=settings.related_recency,
    )


@dataclass
class Cache:
    """One process's view of one model's vectors: a base corpus and what changed since."""

    model_id: int
    model: engine.TextModel
    rank: engine.RankParams
    base: engine.Corpus
    base_ids: list[str]
    seq: int
    added: dict[str, engine.Vector] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    facets: dict[str, engine.Facets] = field(default_factory=dict)
    _delta: engine.Corpus | None = None

    def delta(self) -> engine.Corpus | None:
        if self._delta is None and self.added:
            ids = list(self.added)
            vectors = self.model.stack([self.added[i] for i in ids])
            self._delta = engine.Corpus(ids, vectors, self._facets(ids), self.rank)
        return self._delta

    def _facets(self, ids: Sequence[str]) -> list[engine.Facets]:
        return [self.facets.get(i, engine.Facets()) for i in ids]

    def apply(self, rows: Iterable[Any], facets: dict[str, engine.Facets]) -> None:
        self.facets.update(facets)
        for row in rows:
            self.seq = max(self.seq, row.seq)
            self.added.pop(row.article_id, None)
            self.removed.add(row.article_id)  # the base's copy, if any, is stale
            if row.vector is not None:
                self.added[row.article_id] = engine.vector_from_bytes(row.vector)
            self._delta = None


class RelatedReads:
    """Built once per archiver process (or CLI run) from its database and settings."""

    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.settings = settings
        self.k = settings.related_k
        self.rank = rank_params(settings)
        self._cache: Cache | None = None

    # -- the event-driven recomputation

    def recompute(self, article_id: str) -> None:
        """Bring every list around ``article_id`` up to date with the story as it is now."""
        self.recompute_many([article_id])

    def recompute_many(self, article_ids: Sequence[str]) -> None:
        """The same for several stories: those no longer listed leave together (an archive
        sweep's thousands of events), then the listed ones are placed together (a burst of
        publications: one pass over the corpus each, one transaction for all)."""
        cache = self._ready()
        if cache is None:
            return  # no model yet: the rebuild job makes one
        with self.db.session() as session:
            articles = {
                a.id: a for a in session.scalars(select(Article).where(Article.id.in_(article_ids)))
            }
        listed = [i for i in article_ids if i in articles and articles[i].status == S.PUBLISHED]
        gone = [i for i in article_ids if i not in listed]
        if gone:
            self.rewrite(self._remove(cache, gone))
        if listed:
            self._place(cache, [articles[i] for i in listed])

    def _remove(self, cache: Cache, article_ids: Sequence[str]) -> set[str]:
        """Take stories out of every list; returns the lists to backfill."""
        with self.db.transaction() as session:
            owners = set(
                session.scalars(
                    select(RelatedItem.article_id).where(RelatedItem.related_id.in_(article_ids))
                )
            )
            session.execute(
                update(ArticleVector)
                .where(
                    ArticleVector.model_id == cache.model_id,
                    ArticleVector.article_id.in_(article_ids),
                    ArticleVector.vector.is_not(None),
                )
                .values(vector=None, seq=func.nextval("article_vectors_seq"))
            )
            session.execute(delete(RelatedItem).where(RelatedItem.article_id.in_(article_ids)))
        return owners - set(article_ids)

    def _place(self, cache: Cache, articles: Sequence[Article]) -> None:
        ids = [a.id for a in articles]
        with self.db.transaction() as session:
            was_in = self._owners_listing(session, ids)
            vectors = cache.model.transform(articles)
            self._store_vectors(
                session, cache.model_id, [(i, vectors.row(n)) for n, i in enumerate(ids)]
            )
        cache = self._refreshed()
        self.rewrite(was_in | set(ids) | self._lists_they_now_enter(cache, ids))

    def rewrite(self, owners: Iterable[str]) -> int:
        """Compute and store the lists of ``owners`` (each locked while written)."""
        owners = sorted(set(owners))
        if not owners:
            return 0
        with self.db.transaction() as session:
            for owner in owners:  # in order: two writers never wait for each other in a ring
                session.execute(select(func.pg_advisory_xact_lock(func.hashtext(LOCKS + owner))))
            cache = self._refreshed(session)
            articles = {
                a.id: a for a in session.scalars(select(Article).where(Article.id.in_(owners)))
            }
            live = [o for o in owners if o in articles and articles[o].status == S.PUBLISHED]
            lists = self._lists(cache, [articles[o] for o in live])
            session.execute(delete(RelatedItem).where(RelatedItem.article_id.in_(owners)))
            rows = [
                {"article_id": owner, "rank": rank, "related_id": rid, "score": score}
                for owner, items in zip(live, lists, strict=True)
                for rank, (rid, score) in enumerate(items)
            ]
            if rows:
                session.execute(insert(RelatedItem), rows)
        return len(live)

    # -- lists

    def _lists(
        self, cache: Cache, articles: Sequence[Article]
    ) -> list[list[tuple[str, float | None]]]:
        """Each article's list: its published pins first, then the best of the rest."""
        if not articles:
            return []
        with self.db.session() as session:
            vectors = self._vectors_of(session, cache, [a.id for a in articles])
        pinned_ok = self._published_of({p for a in articles for p in a.related_pinned or []})
        queries = cache.model.stack([vectors[a.id] for a in articles])
        facets = [engine.Facets(a.section, a.tags or [], a.published_at) for a in articles]
        excluded = [_steered_off(a) | cache.removed for a in articles]
        found = engine.top_k(queries, cache.base, self.k, query_facets=facets, exclude=excluded)
        delta = cache.delta()
        if delta is not None:
            extra = engine.top_k(
                queries,
                delta,
                self.k,
                query_facets=facets,
                exclude=[
                    {a.id, *(a.related_excluded or []), *(a.related_pinned or [])} for a in articles
                ],
            )
            found = [
                sorted(a + b, key=lambda r: -r.score)[: self.k]
                for a, b in zip(found, extra, strict=True)
            ]
        lists = []
        for article, best in zip(articles, found, strict=True):
            pins = [p for p in article.related_pinned or [] if p in pinned_ok and p != article.id]
            items: list[tuple[str, float | None]] = [(p, None) for p in pins]
            items += [(r.id, float(r.score)) for r in best]
            lists.append(items[: max(self.k, len(pins))])
        return lists

    def _lists_they_now_enter(self, cache: Cache, article_ids: Sequence[str]) -> set[str]:
        """The lists whose last place one of ``article_ids`` now beats, or that are not full."""
        with self.db.session() as session:
            vectors = self._vectors_of(session, cache, article_ids)
            candidates: dict[str, float] = {}  # a list owner: the best new score it saw
            step = self._score_block(cache)
            for start in range(0, len(article_ids), step):
                block = article_ids[start : start + step]
                for article_id, scored in zip(
                    block, self._nearest(cache, vectors, block), strict=True
                ):
                    for score, owner in scored:
                        if owner != article_id:
                            candidates[owner] = max(score, candidates.get(owner, score))
            if not candidates:
                return set()
            last = dict(
                session.execute(
                    select(RelatedItem.article_id, func.min(RelatedItem.score))
                    .where(RelatedItem.article_id.in_(candidates), RelatedItem.score.is_not(None))
                    .group_by(RelatedItem.article_id)
                    .having(func.count() >= self.k)
                ).all()
            )
        return {i for i, s in candidates.items() if i not in last or s > (last[i] or 0.0)}

    @staticmethod
    def _score_block(cache: Cache) -> int:
        stories = len(cache.base_ids) + len(cache.added)
        return max(1, engine.SCORE_CELLS // max(stories, 1))

    def _nearest(
        self, cache: Cache, vectors: dict[str, engine.Vector], ids: Sequence[str]
    ) -> list[list[tuple[float, str]]]:
        """Each story's ``OWNER_CANDIDATES`` best-scoring live stories (itself perhaps among
        them), best last: the base corpus's stale copies of changed stories do not count."""
        queries = cache.model.stack([vectors[i] for i in ids])
        facets = [cache.facets.get(i) or engine.Facets() for i in ids]
        found: list[list[tuple[float, str]]] = [[] for _ in ids]
        for corpus, corpus_ids, stale in self._corpora(cache):
            scores = engine.score_many(queries, corpus, facets)
            if stale:
                scores[:, [corpus.position[i] for i in stale if i in corpus.position]] = -np.inf
            for row, story_scores in enumerate(scores):
                top = engine.top_positions(story_scores, OWNER_CANDIDATES)
                top = top[np.isfinite(story_scores[top])]
                found[row] += zip(
                    story_scores[top].tolist(), [corpus_ids[i] for i in top], strict=True
                )
        return [sorted(f)[-OWNER_CANDIDATES:] for f in found]

    @staticmethod
    def _corpora(cache: Cache) -> list[tuple[engine.Corpus, list[str], set[str]]]:
        """The base corpus with the ids whose copy in it is stale, then what changed since."""
        corpora = [(cache.base, cache.base_ids, cache.removed)]
        if (delta := cache.delta()) is not None:
            corpora.append((delta, list(cache.added), set()))
        return corpora

    def _vectors_of(
        self, session: Session, cache: Cache, ids: Sequence[str]
    ) -> dict[str, engine.Vector]:
        rows = session.execute(
            select(ArticleVector.article_id, ArticleVector.vector).where(
                ArticleVector.model_id == cache.model_id,
                ArticleVector.article_id.in_(ids),
                ArticleVector.vector.is_not(None),
            )
        ).all()
        found = {row.article_id: engine.vector_from_bytes(row.vector) for row in rows}
        missing = [i for i in ids if i not in found]
        if missing:  # not vectorised yet (a list asked for early): from the text
            articles = list(session.scalars(select(Article).where(Article.id.in_(missing))))
            vectors = cache.model.transform(articles)
            found.update({a.id: vectors.row(n) for n, a in enumerate(articles)})
        return found

    def _published_of(self, ids: set[str]) -> set[str]:
        if not ids:
            return set()
        with self.db.session() as session:
            return set(
                session.scalars(
                    select(Article.id).where(Article.id.in_(ids), has_status(S.PUBLISHED))
                )
            )

    # -- storage

    @staticmethod
    def _store_vectors(
        session: Session, model_id: int, vectors: Sequence[tuple[str, engine.Vector | None]]
    ) -> None:
        if not vectors:
            return
        statement = postgresql.insert(ArticleVector).values(
            [
                {
                    "model_id": model_id,
                    "article_id": article_id,
                    "vector": None if vector is None else engine.vector_to_bytes(vector),
                }
                for article_id, vector in vectors
            ]
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[ArticleVector.model_id, ArticleVector.article_id],
                set_={
                    "vector": statement.excluded.vector,
                    "seq": func.nextval("article_vectors_seq"),
                },
            )
        )

    @staticmethod
    def _owners_listing(session: Session, article_ids: Sequence[str]) -> set[str]:
        return set(
            session.scalars(
                select(RelatedItem.article_id).where(RelatedItem.related_id.in_(article_ids))
            )
        )

    # -- the cache

    def _ready(self) -> Cache | None:
        """The cache of the active model. With none yet, a small newsroom's first model is
        fitted here and now; a large back catalogue waits for the rebuild job (the hourly
        refit check of :mod:`services.archiver.runner`, or ``pressroom related rebuild``),
        so no event waits on it."""
        if self._cache is None:
            self._cache = self._load()
        if self._cache is None and self._published() <= FIT_INLINE_UP_TO and self.rebuild():
            self._cache = self._load()
        return self._cache

    def _published(self) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).where(has_status(S.PUBLISHED))) or 0)

    def _refreshed(self, session: Session | None = None) -> Cache:
        cache = self._ready()
        assert cache is not None
        if session is None:
            with self.db.session() as own:
                return self._refresh(own, cache)
        return self._refresh(session, cache)

    def _refresh(self, session: Session, cache: Cache) -> Cache:
        active = session.scalar(select(RelatedModel.id).where(RelatedModel.active))
        if active != cache.model_id:  # another process refitted: start over on its model
            self._cache = self._load()
            assert self._cache is not None
            return self._cache
        rows = session.execute(
            select(ArticleVector.article_id, ArticleVector.vector, ArticleVector.seq)
            .where(ArticleVector.model_id == cache.model_id, ArticleVector.seq > cache.seq)
            .order_by(ArticleVector.seq)
        ).all()
        if rows:
            cache.apply(rows, _facets(session, [row.article_id for row in rows]))
        if len(cache.added) + len(cache.removed) > REBUILD_AFTER:
            self._cache = self._load()
            assert self._cache is not None
            return self._cache
        return cache

    def _load(self) -> Cache | None:
        with self.db.session() as session:
            model_row = session.scalar(select(RelatedModel).where(RelatedModel.active))
            if model_row is None:
                return None
            seq = session.scalar(select(func.max(ArticleVector.seq))) or 0
            rows = session.execute(
                select(ArticleVector.article_id, ArticleVector.vector).where(
                    ArticleVector.model_id == model_row.id, ArticleVector.vector.is_not(None)
                )
            ).all()
            ids = [row.article_id for row in rows]
            facets = _facets(session, ids)
        model = engine.TextModel.from_bytes(model_row.state)
        vectors = model.stack([engine.vector_from_bytes(row.vector) for row in rows])
        corpus = engine.Corpus(
            ids, vectors, [facets.get(i, engine.Facets()) for i in ids], self.rank
        )
        return Cache(model_row.id, model, self.rank, corpus, ids, seq, facets=facets)

    # -- the full rebuild (and refit)

    def rebuild(self, progress: Callable[[int], None] | None = None, n_jobs: int = 1) -> int:
        """Fit a new model on every published story, make every vector and list with it,
        and switch to it in one transaction; returns how many lists were built. ``n_jobs``
        above 1 starts processes of its own: for the CLI, not inside a Celery pool process."""
        with self.db.session() as session:
            articles = list(
                session.scalars(select(Article).where(has_status(S.PUBLISHED)).order_by(Article.id))
            )
        if not articles:
            return 0
        model, vectors = engine.TextModel.fit_transform(articles, n_jobs=n_jobs)
        ids = [a.id for a in articles]
        facets = [engine.Facets(a.section, a.tags or [], a.published_at) for a in articles]
        corpus = engine.Corpus(ids, vectors, facets, self.rank)
        by_id = {a.id: a for a in articles}
        with self.db.transaction() as session:
            model_id = session.scalar(
                insert(RelatedModel)
                .values(state=model.to_bytes(), articles=len(articles), active=False)
                .returning(RelatedModel.id)
            )
            session.execute(
                insert(ArticleVector),
                [
                    {
                        "model_id": model_id,
                        "article_id": i,
                        "vector": engine.vector_to_bytes(vectors.row(n)),
                    }
                    for n, i in enumerate(ids)
                ],
            )
            session.execute(delete(RelatedItem))
            done = 0
            for block in engine.related_all(corpus, self.k + 10, n_jobs=n_jobs):
                rows = []
                for owner, found in zip(ids[done : done + len(block)], block, strict=True):
                    steer = by_id[owner]
                    skip = set(steer.related_excluded or []) | set(steer.related_pinned or [])
                    pins = [(p, None) for p in steer.related_pinned or [] if p in by_id]
                    best = [(r.id, float(r.score)) for r in found if r.id not in skip]
                    items = (pins + best)[: max(self.k, len(pins))]
                    rows += [
                        {"article_id": owner, "rank": n, "related_id": rid, "score": score}
                        for n, (rid, score) in enumerate(items)
                    ]
                if rows:
                    session.execute(insert(RelatedItem), rows)
                done += len(block)
                if progress is not None:
                    progress(len(block))
            session.execute(update(RelatedModel).values(active=RelatedModel.id == model_id))
            session.execute(delete(ArticleVector).where(ArticleVector.model_id != model_id))
            session.execute(delete(RelatedModel).where(RelatedModel.id != model_id))
        self._cache = None
        return len(ids)

    def needs_refit(self) -> bool:
        """No model yet, or the corpus grew enough since the active one was fitted."""
        with self.db.session() as session:
            fitted = session.scalar(select(RelatedModel.articles).where(RelatedModel.active))
        now = self._published()
        if fitted is None:
            return now > 0
        return now >= fitted * (1 + self.settings.related_refit_growth) and now - fitted >= 20


def _steered_off(article: Article) -> set[str]:
    """What a list's computed part leaves out: the story itself, its exclusions and its
    pins (which come first on their own)."""
    return {article.id, *(article.related_excluded or []), *(article.related_pinned or [])}


def _bytes(vector: engine.Vector) -> bytes:
    return engine.vector_to_bytes(vector)


def _facets(session: Session, ids: Sequence[str]) -> dict[str, engine.Facets]:
    """The facets of ``ids``, however many: a cache's load asks for every listed story, and
    an expanding IN of 100,000 ids is more parameters than PostgreSQL's protocol carries."""
    if not ids:
        return {}
    rows = session.execute(
        select(Article.id, Article.section, Article.tags, Article.published_at).where(
            Article.id.in_(json_elements("ids"))
        ),
        {"ids": list(ids)},
    ).all()
    return {r.id: engine.Facets(r.section, r.tags or [], r.published_at) for r in rows}
