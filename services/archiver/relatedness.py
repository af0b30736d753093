"""How related two stories are: the text model behind the "Also read" lists, with no database.

An article is read as its title and body (HTML, tags stripped, cut at ``max_chars``) and
turned into a vector of three parts, each scored by a dot product between two vectors:

- words: sublinear TF-IDF over hashed words (English stop words out, ``min_df`` and
  ``max_df`` relative to the corpus the model was fitted on), kept as the article's
  ``terms`` heaviest words. Shared rare words (names, places, figures) are what tell the
  rest of the same story from another story on the same subject, so this part carries
  most of the weight: it puts the other half of a split story first.
- topic: latent semantic analysis (truncated SVD of the TF-IDF matrix, ``dims``
  dimensions). Few dimensions keep only broad subjects; they pull in stories that share
  the subject but not the vocabulary, which words alone miss.
- theme: soft membership of the topic vector in a handful of broad themes (k-means on the
  topic vectors, a softmax at ``theme_temperature``), the way a paper has a handful of
  desks. Sharing a theme is a sharper signal than a cosine near the edge of one, so it
  keeps the lower places of a list on the story's own desk, where the plain topic cosine
  lets in neighbours from the desk next door.

The words carry three quarters of the score, so they decide the first places (a story's
other half comes first about as often as with words alone); the topic and theme share the
rest, which settles the lower places, where word overlap is thin and noisy. The theme does
most of that: the topic cosine alone lets in stories from the desk next door, but beside
the theme it ranks stories within a desk. More weight on the two pushes the rest of the
story down the list. Word-and-bigram features were tried and left out: they spread a
story's names over more features, so its halves found each other less often, for little
gain in topic. Weighting the title, idf powers and centring the vectors moved nothing that
mattered. The count of themes suits a paper with a handful of desks; one with many more
may want more of them.

Two scores are only comparable under one fitted model: a model is refitted as the corpus
grows, and every vector is made again with the new one. New articles are vectorised with
the fitted model (unknown words are simply not counted), without a refit.

Lists come from ``top_k`` in two steps, so that a rebuild of a large corpus does not score
every pair of stories. Candidates first: the stories with most weight on the query's
heaviest words (one sparse product with the stored words, by at most ``search_terms`` of
the query's words, none in more than ``search_df_cap`` stories: those carry most of the
cosine, and the rest of the same story shares them), and, in a corpus small enough to
search whole, the nearest by topic and theme. Then the exact score of each candidate,
the boosts, and the cut to k. A story outside the candidates cannot be listed even if a
boost would lift it: boosts re-rank what the text finds. Text scores are symmetric, so
``score_all`` (one story against every stored story, exactly) tells which lists a new
story now belongs in.

Vectors and the model go to bytes without pickle (``vector_to_bytes``,
``TextModel.to_bytes``): reading them back runs no code, so a corrupt or hostile row can
only fail with ``CorruptState``.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import re
import struct
import zipfile
from collections.abc import Collection, Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, TypeVar

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize as _normalize
from sklearn.utils.parallel import Parallel, delayed

from shared.errors import PermanentError

# --------------------------------------------------------------------------------------------
# Inputs


class HasText(Protocol):
    """What the model reads of an article (an ``Article`` row will do)."""

    @property
    def title(self) -> str | None: ...

    @property
    def body(self) -> str | None: ...


class HasFacets(Protocol):
    """What the boosts read of an article (an ``Article`` row will do)."""

    @property
    def section(self) -> str | None: ...

    @property
    def tags(self) -> Sequence[str] | None: ...

    @property
    def published_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class Doc:
    title: str
    body: str  # HTML or plain text


@dataclass(frozen=True)
class Facets:
    section: str | None = None
    tags: Sequence[str] = ()
    published_at: datetime | None = None


class CorruptState(PermanentError):
    """Stored vector or model bytes that cannot be read back."""


TAG = re.compile(r"<[^>]*>")
# Han and kana are written without spaces: each character becomes a word of its own.
CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
TOKEN = r"(?u)\b\w\w+\b|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
HTML_PER_CHAR = 4  # raw HTML read per character of text kept: markup is dropped after


def plain_text(title: str | None, body: str | None, max_chars: int) -> str:
    """Title and body as one plain text of at most ``max_chars`` characters."""
    raw = (body or "")[: max_chars * HTML_PER_CHAR]
    text = f"{title or ''}\n{html.unescape(TAG.sub(' ', raw))}"[:max_chars]
    return CJK.sub(r" \1 ", text) if CJK.search(text) else text


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class ModelParams:
    """How text becomes a vector; fixed for the life of a fitted model."""

    max_chars: int = 20_000  # of title and body text: a few thousand words say what it is
    min_df: int = 2  # a word in one story only links nothing
    max_df: float = 0.5  # a word in most stories says nothing
    small_corpus: int = 10  # fitted on fewer stories than this, every word counts
    hash_bits: int = 20  # 2**20 buckets: few collisions among a newsroom's words
    terms: int = 128  # words kept per story: nearly all of a story's weight
    dims: int = 20  # topic dimensions: broad subjects only
    themes: int = 6  # a handful of desks
    theme_temperature: float = 0.1


@dataclass(frozen=True)
class RankParams:
    """How vectors and facets become a ranked list; free to change without a refit."""

    words: float = 0.75  # weight of the TF-IDF cosine
    topic: float = 0.125  # weight of the topic cosine
    theme: float = 0.125  # weight of shared theme membership
    section_boost: float = 0.0  # same section
    tag_boost: float = 0.0  # per shared tag, up to tag_boost_cap tags
    tag_boost_cap: int = 3
    boost: Literal["add", "multiply"] = "add"  # boosts added to, or multiplying, the score
    recency: float = 0.0  # share of the score lost by a story published far apart in time
    recency_half_life_days: float = 30.0  # apart by this much, it loses half of that share
    # Candidates, scored exactly: the stories with most weight on the query's heaviest words,
    word_candidates: int = 60
    search_terms: int = 24
    search_df_cap: int = 1_000  # a word in more stories is not searched by (cost)
    # and, in a corpus of up to topic_search_up_to stories, the nearest by topic and theme
    # (a search of every story: beyond that size it costs more than it finds).
    topic_candidates: int = 20
    topic_search_up_to: int = 20_000

    def __post_init__(self) -> None:
        if self.boost not in ("add", "multiply"):
            raise ValueError(f"boost must be add or multiply, not {self.boost!r}")
        if min(self.words, self.topic, self.theme) < 0 or not 0 <= self.recency <= 1:
            raise ValueError("weights must not be negative, and recency lies in 0..1")


# --------------------------------------------------------------------------------------------
# Vectors


@dataclass(frozen=True)
class Vector:
    """One article: topic and theme parts, then its kept words and their weights."""

    dense: np.ndarray  # float32
    terms: np.ndarray  # int32, ascending
    weights: np.ndarray  # float32, unit length (or empty)


@dataclass(frozen=True)
class Vectors:
    """Many articles' vectors, one row each, under one model."""

    dense: np.ndarray  # (n, topic_dims + themes) float32
    words: sp.csr_matrix  # (n, vocabulary) float32, rows of unit length or empty
    topic_dims: int  # the dense part's first columns are the topic, the rest the themes

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def row(self, i: int) -> Vector:
        start, end = self.words.indptr[i], self.words.indptr[i + 1]
        return Vector(
            dense=self.dense[i].copy(),
            terms=self.words.indices[start:end].astype(np.int32),
            weights=self.words.data[start:end].astype(np.float32),
        )


VECTOR_HEADER = struct.Struct("<BHI")  # format version, dense length, number of words
VECTOR_VERSION = 1


def vector_to_bytes(vector: Vector) -> bytes:
    """7 bytes of header, then float32 dense, int32 terms and float32 weights."""
    head = VECTOR_HEADER.pack(VECTOR_VERSION, len(vector.dense), len(vector.terms))
    return b"".join(
        [
            head,
            vector.dense.astype("<f4").tobytes(),
            vector.terms.astype("<i4").tobytes(),
            vector.weights.astype("<f4").tobytes(),
        ]
    )


def vector_from_bytes(data: bytes) -> Vector:
    try:
        version, dense, nnz = VECTOR_HEADER.unpack_from(data)
    except struct.error:
        raise CorruptState("a stored vector is shorter than its header") from None
    if version != VECTOR_VERSION:
        raise CorruptState(f"a stored vector has format version {version}")
    if len(data) != VECTOR_HEADER.size + 4 * dense + 8 * nnz:
        raise CorruptState("a stored vector's length does not match its header")
    at = VECTOR_HEADER.size
    values = np.frombuffer(data, "<f4", dense, at).astype(np.float32)
    terms = np.frombuffer(data, "<i4", nnz, at + 4 * dense).astype(np.int32)
    weights = np.frombuffer(data, "<f4", nnz, at + 4 * dense + 4 * nnz).astype(np.float32)
    return Vector(values, terms, weights)


# --------------------------------------------------------------------------------------------
# The text model


_Rows = TypeVar("_Rows", np.ndarray, sp.csr_matrix)


def _unit_rows(rows: _Rows) -> _Rows:
    """Rows scaled to unit length (zero rows stay zero), also when there are none."""
    return rows if 0 in rows.shape else _normalize(rows)


def _hasher(params: ModelParams) -> HashingVectorizer:
    return HashingVectorizer(
        n_features=2**params.hash_bits,
        token_pattern=TOKEN,
        stop_words="english",
        alternate_sign=False,
        norm=None,
        dtype=np.float32,
    )


def _count_chunk(docs: Sequence[tuple[str, str]], params: ModelParams) -> sp.csr_matrix:
    if not docs:
        return sp.csr_matrix((0, 2**params.hash_bits), dtype=np.float32)
    texts = [plain_text(title, body, params.max_chars) for title, body in docs]
    return _hasher(params).transform(texts).tocsr()


COUNT_IN_PARALLEL_FROM = 2_000  # articles: fewer are read faster than processes start
CHUNK = 4_096  # articles read at a time: bounds the text held in memory


def _chunks(docs: Iterable[HasText]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for doc in docs:
        chunk.append((doc.title or "", doc.body or ""))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _counts(docs: Iterable[HasText], params: ModelParams, n_jobs: int) -> list[sp.csr_matrix]:
    """Word counts of each article in hash buckets, a chunk of articles at a time, read as
    they come (in ``n_jobs`` processes): one matrix per chunk."""
    few = isinstance(docs, Sized) and len(docs) < COUNT_IN_PARALLEL_FROM
    if n_jobs == 1 or few:
        parts = [_count_chunk(chunk, params) for chunk in _chunks(docs)]
    else:
        tasks = (delayed(_count_chunk)(chunk, params) for chunk in _chunks(docs))
        parts = list(Parallel(n_jobs=n_jobs, return_as="generator")(tasks))
    return parts or [_count_chunk([], params)]


def _df_bounds(n: int, params: ModelParams) -> tuple[int, int]:
    """Least and most stories a kept word may occur in, for a corpus of ``n``."""
    if n < params.small_corpus:
        return 1, max(n, 1)
    return params.min_df, max(params.min_df, int(params.max_df * n))


HEAVIEST_ROWS = 8_192  # rows at a time: bounds the working arrays


def _heaviest(matrix: sp.csr_matrix, count: int) -> sp.csr_matrix:
    """Each row's ``count`` largest entries (all of a row that has fewer), indices sorted."""
    if matrix.shape[0] > HEAVIEST_ROWS:
        parts = range(0, matrix.shape[0], HEAVIEST_ROWS)
        return sp.vstack([_heaviest(matrix[i : i + HEAVIEST_ROWS], count) for i in parts])
    nnz = np.diff(matrix.indptr)
    keep = np.ones(matrix.nnz, bool)
    for row in np.flatnonzero(nnz > count).tolist():
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        surplus = end - start - count
        keep[start + np.argpartition(matrix.data[start:end], surplus - 1)[:surplus]] = False
    indptr = np.r_[0, np.cumsum(keep)][matrix.indptr]
    kept = (matrix.data[keep], matrix.indices[keep], indptr)
    return sp.csr_matrix(kept, shape=matrix.shape)


def _keep_top(words: sp.csr_matrix, terms: int) -> sp.csr_matrix:
    """Each row's ``terms`` heaviest words, rescaled to unit length."""
    kept = _unit_rows(_heaviest(words, terms)).astype(np.float32)
    kept.sort_indices()
    return kept


@dataclass(frozen=True, eq=False)
class TextModel:
    """A fitted model: which hash buckets are words, their idf, the topic axes, the themes."""

    params: ModelParams
    buckets: np.ndarray  # int64, ascending: the hash buckets kept, in vocabulary order
    idf: np.ndarray  # float32 per kept bucket
    axes: np.ndarray  # (dims, vocabulary) float32: the SVD's components
    centroids: np.ndarray  # (themes, dims) float32
    fitted_on: int = 0  # articles

    @property
    def vocabulary(self) -> int:
        return len(self.buckets)

    @property
    def dense_size(self) -> int:
        return int(self.axes.shape[0] + self.centroids.shape[0])

    @classmethod
    def fit(
        cls, docs: Sequence[HasText], params: ModelParams | None = None, n_jobs: int = 1
    ) -> TextModel:
        return cls.fit_transform(docs, params, n_jobs)[0]

    @classmethod
    def fit_transform(
        cls, docs: Iterable[HasText], params: ModelParams | None = None, n_jobs: int = 1
    ) -> tuple[TextModel, Vectors]:
        """The model fitted on ``docs``, and their vectors (read once, as they come, for
        both: a generator of rows will do)."""
        params = params or ModelParams()
        parts = _counts(docs, params, n_jobs)
        n = sum(part.shape[0] for part in parts)
        df = np.zeros(2**params.hash_bits, np.int64)
        for part in parts:
            df += np.bincount(part.indices, minlength=len(df))
        least, most = _df_bounds(n, params)
        buckets = np.flatnonzero((df >= least) & (df <= most))
        idf = (np.log((1 + n) / (1 + df[buckets])) + 1).astype(np.float32)
        words_only = cls(params, buckets, idf, np.zeros((0, len(buckets)), np.float32), _none())
        tfidf = words_only._tfidf(parts)
        axes = _topic_axes(tfidf, params.dims)
        topics = _unit_rows(tfidf @ axes.T).astype(np.float32)
        model = cls(params, buckets, idf, axes, _themes(topics, params.themes), n)
        return model, model._vectors(tfidf, topics)

    def stack(self, vectors: Sequence[Vector]) -> Vectors:
        """Vectors made one at a time (read back from storage, say) as one block."""
        if any(len(v.dense) != self.dense_size for v in vectors):
            raise CorruptState("a vector's dense part does not fit this model")
        terms = np.concatenate([v.terms for v in vectors] or [np.zeros(0, np.int32)])
        if len(terms) and (terms.min() < 0 or terms.max() >= self.vocabulary):
            raise CorruptState("a vector names a word outside this model's vocabulary")
        dense = np.zeros((len(vectors), self.dense_size), np.float32)
        for i, v in enumerate(vectors):
            dense[i] = v.dense
        indptr = np.concatenate([[0], np.cumsum([len(v.terms) for v in vectors])])
        weights = np.concatenate([v.weights for v in vectors] or [np.zeros(0, np.float32)])
        shape = (len(vectors), self.vocabulary)
        words = sp.csr_matrix((weights, terms, indptr.astype(np.int64)), shape=shape)
        words.sort_indices()
        return Vectors(dense, words, self.axes.shape[0])

    def transform(self, docs: Iterable[HasText], n_jobs: int = 1) -> Vectors:
        tfidf = self._tfidf(_counts(docs, self.params, n_jobs))
        return self._vectors(tfidf, _unit_rows(tfidf @ self.axes.T).astype(np.float32))

    def _tfidf(self, parts: list[sp.csr_matrix]) -> sp.csr_matrix:
        """Sublinear TF-IDF of the kept words, rows of unit length; ``parts`` is emptied as
        it is read, so that the counts and the TF-IDF are never both held whole."""
        pieces = []
        while parts:
            pieces.append(self._tfidf_part(parts.pop(0)))
        return sp.vstack(pieces, format="csr")

    def _tfidf_part(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        column = np.full(counts.shape[1], -1, np.int32)
        column[self.buckets] = np.arange(len(self.buckets), dtype=np.int32)
        mapped = column[counts.indices]
        kept = mapped >= 0
        indptr = np.r_[0, np.cumsum(kept)][counts.indptr]
        mapped = mapped[kept]
        values = (1 + np.log(counts.data[kept])) * self.idf[mapped]
        shape = (counts.shape[0], len(self.buckets))
        tfidf = sp.csr_matrix((values.astype(np.float32), mapped, indptr), shape=shape)
        tfidf.sort_indices()
        return _unit_rows(tfidf).astype(np.float32)

    def _vectors(self, tfidf: sp.csr_matrix, topics: np.ndarray) -> Vectors:
        themes = np.zeros((topics.shape[0], self.centroids.shape[0]), np.float32)
        if len(self.centroids):
            signal = np.abs(topics).sum(axis=1) > 0
            logits = topics[signal] @ self.centroids.T / self.params.theme_temperature
            logits -= logits.max(axis=1, keepdims=True)
            themes[signal] = _unit_rows(np.exp(logits))
        words = _keep_top(tfidf, self.params.terms)
        return Vectors(np.hstack([topics, themes]), words, self.axes.shape[0])

    def to_bytes(self) -> bytes:
        """The model as an ``.npz`` archive, read back without pickle."""
        out = io.BytesIO()
        np.savez(
            out,
            params=np.array(json.dumps(asdict(self.params))),
            fitted_on=np.array(self.fitted_on),
            buckets=self.buckets,
            idf=self.idf,
            axes=self.axes,
            centroids=self.centroids,
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TextModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                params = ModelParams(**json.loads(str(z["params"])))
                model = cls(
                    params,
                    z["buckets"].astype(np.int64),
                    z["idf"].astype(np.float32),
                    z["axes"].astype(np.float32),
                    z["centroids"].astype(np.float32),
                    int(z["fitted_on"]),
                )
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise CorruptState(f"stored model cannot be read: {exc}") from None
        themes_fit = len(model.centroids) == 0 or model.centroids.shape[1] == len(model.axes)
        if not (len(model.idf) == model.axes.shape[1] == model.vocabulary and themes_fit):
            raise CorruptState("stored model's parts disagree on their sizes")
        if (
            model.vocabulary
            and not 0 <= model.buckets.min() <= model.buckets.max() < 2**params.hash_bits
        ):
            raise CorruptState("stored model names words outside its hash space")
        return model


def _none() -> np.ndarray:
    return np.zeros((0, 0), np.float32)


SVD_ROWS = 30_000


def _topic_axes(tfidf: sp.csr_matrix, dims: int) -> np.ndarray:
    """The SVD's axes; fewer (or none) when the corpus is too small to have that many."""
    dims = min(dims, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
    if dims < 1 or tfidf.nnz == 0:
        return np.zeros((0, tfidf.shape[1]), np.float32)
    if tfidf.shape[0] > SVD_ROWS:  # a sample finds the same broad subjects, sooner
        tfidf = tfidf[np.random.default_rng(0).choice(tfidf.shape[0], SVD_ROWS, replace=False)]
    with np.errstate(invalid="ignore", divide="ignore"):  # explained variance of a tiny corpus
        svd = TruncatedSVD(dims, algorithm="randomized", random_state=0).fit(tfidf)
    return svd.components_.astype(np.float32)


def _themes(topics: np.ndarray, themes: int) -> np.ndarray:
    """k-means centroids of the topic vectors; none when there are too few stories."""
    signal = topics[np.abs(topics).sum(axis=1) > 0]
    distinct = len(np.unique(signal.round(4), axis=0)) if len(signal) else 0
    themes = min(themes, distinct)
    if themes < 2 or topics.shape[1] == 0:
        return np.zeros((0, topics.shape[1]), np.float32)
    return KMeans(themes, n_init=3, random_state=0).fit(signal).cluster_centers_.astype(np.float32)


# --------------------------------------------------------------------------------------------
# A corpus and its lists


@dataclass(frozen=True)
class Related:
    id: str
    score: float


@dataclass(frozen=True)
class _Facets:
    """Facets as arrays, coded with the corpus's own section and tag numbers."""

    sections: np.ndarray  # int64 per story, -1: none (or one no stored story has)
    tags: sp.csr_matrix  # (stories, corpus tags) 0/1
    days: np.ndarray  # float64 days since 1970, NaN: not known


def _days(when: datetime | None) -> float:
    if when is None:
        return math.nan
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() / 86_400


class Corpus:
    """The stories that lists are drawn from, and how they are ranked.

    Holds the word weights twice (by story and by word) and the weighted dense parts:
    about 2 KB per story at the default 128 words.
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: Vectors,
        facets: Sequence[HasFacets] | None = None,
        rank: RankParams | None = None,
    ) -> None:
        n = len(vectors)
        if len(ids) != n or (facets is not None and len(facets) != n):
            raise ValueError("ids, vectors and facets must have one entry per story")
        self.ids = list(ids)
        self.position = {id_: i for i, id_ in enumerate(self.ids)}
        self.rank = rank or RankParams()
        self.topic_dims = vectors.topic_dims
        self.words = vectors.words.astype(np.float32, copy=False).tocsr()
        self.words.sort_indices()
        self.by_word = self.words.T.tocsr()
        self.df = np.diff(self.by_word.indptr)
        self.dense = self.weighted(vectors.dense)
        self.searchable = np.flatnonzero(np.diff(self.words.indptr) > 0)
        self.sections = _codes(f.section for f in facets or () if f.section)
        self.tags = _codes(t for f in facets or () for t in f.tags or ())
        self.facets = self.coded(facets, n)

    def __len__(self) -> int:
        return len(self.ids)

    def weighted(self, dense: np.ndarray) -> np.ndarray:
        """Dense parts scaled so that one dot product adds the weighted topic and theme."""
        scale = np.full(dense.shape[1], math.sqrt(self.rank.theme), np.float32)
        scale[: self.topic_dims] = math.sqrt(self.rank.topic)
        return (dense * scale).astype(np.float32)

    def coded(self, facets: Sequence[HasFacets] | None, n: int) -> _Facets:
        shape = (n, max(len(self.tags), 1))
        if facets is None:
            no_tags = sp.csr_matrix(shape, dtype=np.float32)
            return _Facets(np.full(n, -1, np.int64), no_tags, np.full(n, np.nan))
        sections = np.array([self.sections.get(f.section or "", -1) for f in facets], np.int64)
        rows, cols = [], []
        for i, f in enumerate(facets):
            for tag in set(f.tags or ()) & self.tags.keys():
                rows.append(i)
                cols.append(self.tags[tag])
        ones = np.ones(len(rows), np.float32)
        tags = sp.csr_matrix((ones, (rows, cols)), shape=shape, dtype=np.float32)
        days = np.array([_days(f.published_at) for f in facets], np.float64)
        return _Facets(sections, tags, days)


def _codes(names: Iterable[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(set(names)))}


@dataclass(frozen=True)
class _Queries:
    words: sp.csr_matrix
    dense: np.ndarray  # weighted as the corpus's
    facets: _Facets


def _queries(corpus: Corpus, vectors: Vectors, facets: Sequence[HasFacets] | None) -> _Queries:
    same_words = vectors.words.shape[1] == corpus.words.shape[1]
    if not same_words or vectors.dense.shape[1] != corpus.dense.shape[1]:
        raise ValueError("queries and corpus must come from the same model")
    words = vectors.words.astype(np.float32).tocsr()
    words.sort_indices()
    return _Queries(words, corpus.weighted(vectors.dense), corpus.coded(facets, len(vectors)))


# --------------------------------------------------------------------------------------------
# Candidates, then exact scores


Pairs = tuple[np.ndarray, np.ndarray]  # (query row, stored story) of each pair
NO_PAIRS: Pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def top_positions(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` largest of ``scores`` (all of them if fewer)."""
    if len(scores) <= count:
        return np.arange(len(scores))
    return np.argpartition(-scores, count - 1)[:count]


def _near_in_topic(corpus: Corpus, q: _Queries, live: np.ndarray) -> Pairs:
    """Each live query with the stories nearest to it by topic and theme."""
    count, pool = corpus.rank.topic_candidates, corpus.searchable
    if count <= 0 or len(pool) > corpus.rank.topic_search_up_to or q.dense.shape[1] == 0:
        return NO_PAIRS
    closeness = q.dense[live] @ corpus.dense[pool].T
    if len(pool) > count:
        nearest = np.argpartition(-closeness, count - 1, axis=1)[:, :count]
    else:
        nearest = np.broadcast_to(np.arange(len(pool)), closeness.shape)
    return np.repeat(live, nearest.shape[1]), pool[nearest.ravel()]


SEARCH_WORK = 4_000_000  # stories looked at per sparse product: bounds its memory


def _sharing_key_words(corpus: Corpus, q: _Queries, live: np.ndarray) -> Pairs:
    """Each live query with the stories that have most weight on its ``search_terms``
    heaviest words. Those carry most of its TF-IDF cosine, so the stories found include
    the rest of the same story, which the broad topic cannot tell from its neighbours."""
    rank, words = corpus.rank, q.words[live]
    common = corpus.df[words.indices] > rank.search_df_cap
    if common.any():  # too common to search by; they still count in the score
        words = words.copy()
        words.data[common] = 0
        words.eliminate_zeros()
    heavy = _heaviest(words, rank.search_terms)
    work = np.cumsum(np.add.reduceat(np.r_[corpus.df[heavy.indices], 0], heavy.indptr[:-1]))
    queries: list[np.ndarray] = []
    found: list[np.ndarray] = []
    start = 0
    while start < len(live):
        end = max(start + 1, int(np.searchsorted(work, work[start] + SEARCH_WORK)))
        hits = (heavy[start:end] @ corpus.by_word).tocsr()
        for i in range(hits.shape[0]):
            row = slice(hits.indptr[i], hits.indptr[i + 1])
            best = hits.indices[row][top_positions(hits.data[row], rank.word_candidates)]
            queries.append(np.full(len(best), live[start + i]))
            found.append(best)
        start = end
    return np.concatenate(queries or [NO_PAIRS[0]]), np.concatenate(found or [NO_PAIRS[1]])


def _candidates(corpus: Corpus, q: _Queries, block: np.ndarray) -> Pairs:
    """(query, story) pairs worth an exact score, for the query rows in ``block``, sorted."""
    live = block[np.diff(q.words.indptr)[block] > 0]  # a story with no known word has no list
    if len(live) == 0 or len(corpus.searchable) == 0:
        return NO_PAIRS
    by_topic, by_words = _near_in_topic(corpus, q, live), _sharing_key_words(corpus, q, live)
    n = len(corpus)
    codes = np.sort(np.r_[by_topic[0] * n + by_topic[1], by_words[0] * n + by_words[1]])
    codes = codes[np.r_[True, codes[1:] != codes[:-1]][: len(codes)]]  # each pair once
    return codes // n, codes % n


WORD_BLOCK = 2**23  # query word weights spread out at once (32 MB of float32)


class _Spread:
    """Scratch space where a few queries' word weights are spread out over the vocabulary,
    so that a story's words can look theirs up; cleared after each use, never reallocated."""

    def __init__(self, vocabulary: int, queries: int) -> None:
        self.vocabulary = max(vocabulary, 1)
        self.rows = max(1, min(queries, WORD_BLOCK // self.vocabulary))  # one story: one row
        self.cells = np.zeros(self.rows * self.vocabulary, np.float32)

    def word_scores(
        self, corpus: Corpus, words: sp.csr_matrix, rows: np.ndarray, cands: np.ndarray
    ) -> np.ndarray:
        """TF-IDF cosine of query ``rows[i]`` (a row of ``words``) with stored story
        ``cands[i]``, which has at least one word; ``rows`` ascending."""
        out = np.zeros(len(rows))
        bounds = np.searchsorted(rows, np.arange(0, words.shape[0] + self.rows, self.rows))
        for chunk, (a, b) in enumerate(itertools.pairwise(bounds)):
            if a == b:
                continue
            first = chunk * self.rows
            mine = words[first : first + self.rows]
            owners = np.repeat(np.arange(mine.shape[0]), np.diff(mine.indptr))
            places = owners * self.vocabulary + mine.indices
            self.cells[places] = mine.data
            theirs = corpus.words[cands[a:b]]
            at = np.repeat((rows[a:b] - first) * self.vocabulary, np.diff(theirs.indptr))
            at += theirs.indices
            products = self.cells[at]
            products *= theirs.data
            out[a:b] = np.add.reduceat(products, theirs.indptr[:-1])
            self.cells[places] = 0
        return out


def _boosted(
    text: np.ndarray, corpus: Corpus, q: _Queries, rows: np.ndarray, cands: np.ndarray
) -> np.ndarray:
    """The text score of each (query ``rows[i]``, story ``cands[i]``) pair with the section,
    tag and recency boosts."""
    rank = corpus.rank
    section: np.ndarray | None = None
    tags: np.ndarray | None = None
    if rank.section_boost:
        ours = q.facets.sections[rows]
        section = (ours >= 0) & (ours == corpus.facets.sections[cands])
    if rank.tag_boost:
        both = q.facets.tags[rows].multiply(corpus.facets.tags[cands])
        tags = np.asarray(both.sum(axis=1)).ravel()
    gap = np.abs(q.facets.days[rows] - corpus.facets.days[cands]) if rank.recency else None
    return _with_boosts(rank, text, section, tags, gap)


def _with_boosts(
    rank: RankParams,
    text: np.ndarray,
    same_section: np.ndarray | None,
    shared_tags: np.ndarray | None,
    days_apart: np.ndarray | None,
) -> np.ndarray:
    """The boosts applied to text scores, given (in the same shape) whether each pair shares
    its section, how many tags it shares and how many days lie between its stories (NaN:
    not known); None for a boost that is off."""
    section: np.ndarray | float = 0.0
    tags: np.ndarray | float = 0.0
    if same_section is not None:
        section = rank.section_boost * same_section
    if shared_tags is not None:
        tags = rank.tag_boost * np.minimum(shared_tags, rank.tag_boost_cap)
    add = rank.boost == "add"
    score = text + section + tags if add else text * (1 + section) * (1 + tags)
    if days_apart is not None:  # a story of unknown date is taken as close in time
        gap = np.nan_to_num(days_apart, nan=0.0)
        score = score * (1 - rank.recency * (1 - np.exp2(-gap / rank.recency_half_life_days)))
    return np.asarray(score, dtype=np.float64)


def _lists(
    corpus: Corpus, q: _Queries, block: np.ndarray, k: int, excluded: np.ndarray, spread: _Spread
) -> list[list[Related]]:
    """The lists of the query rows in ``block``, leaving out ``excluded`` (query * n + story)."""
    rows, cands = _candidates(corpus, q, block)
    if len(excluded):
        keep = ~np.isin(rows * len(corpus) + cands, excluded)
        rows, cands = rows[keep], cands[keep]
    dense = np.einsum("ij,ij->i", q.dense[rows], corpus.dense[cands], dtype=np.float64)
    words = spread.word_scores(corpus, q.words[block[0] : block[-1] + 1], rows - block[0], cands)
    text = corpus.rank.words * words + dense
    score = _boosted(text, corpus, q, rows, cands)
    ok = text > 0
    rows, cands, score = rows[ok], cands[ok], score[ok]
    order = np.lexsort((cands, -score, rows))  # ties: the earlier story first
    rows, cands, score = rows[order], cands[order], score[order]
    firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
    place = np.arange(len(rows)) - np.repeat(firsts, np.diff(np.r_[firsts, len(rows)]))
    top = place < k
    lists: dict[int, list[Related]] = {int(r): [] for r in block}
    for r, c, s in zip(rows[top].tolist(), cands[top].tolist(), score[top].tolist(), strict=True):
        lists[r].append(Related(corpus.ids[c], s))
    return [lists[int(r)] for r in block]


# --------------------------------------------------------------------------------------------
# Lists


BLOCK = 256  # queries at a time: one step's memory stays in the tens of MB


def iter_top_k(
    queries: Vectors,
    corpus: Corpus,
    k: int,
    *,
    query_facets: Sequence[HasFacets] | None = None,
    exclude: Sequence[Collection[str]] | None = None,
    block: int = BLOCK,
) -> Iterator[list[list[Related]]]:
    """``top_k`` a block of queries at a time, for callers that store lists as they come."""
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError("exclude must have one entry per query")
    q = _queries(corpus, queries, query_facets)
    n, at = len(corpus), corpus.position
    spread = _Spread(corpus.words.shape[1], min(block, len(queries)))
    for start in range(0, len(queries), block):
        rows = np.arange(start, min(start + block, len(queries)))
        if k <= 0 or n == 0:
            yield [[] for _ in rows]
            continue
        mine = [(r, exclude[r]) for r in rows.tolist()] if exclude is not None else []
        excluded = [r * n + at[i] for r, ids in mine for i in ids if i in at]
        yield _lists(corpus, q, rows, k, np.array(excluded, np.int64), spread)


def top_k(
    queries: Vectors,
    corpus: Corpus,
    k: int,
    *,
    query_facets: Sequence[HasFacets] | None = None,
    exclude: Sequence[Collection[str]] | None = None,
    block: int = BLOCK,
) -> list[list[Related]]:
    """Each query's ``k`` most related stories of ``corpus``, best first, leaving out the ids
    in ``exclude[i]`` (its own, say); empty for a story with no word the model knows."""
    blocks = iter_top_k(queries, corpus, k, query_facets=query_facets, exclude=exclude, block=block)
    return [related for part in blocks for related in part]


PARALLEL_FROM = 20_000  # stories: below this, starting processes costs more than it saves


def related_all(
    corpus: Corpus, k: int, block: int = BLOCK, n_jobs: int = 1
) -> Iterator[list[list[Related]]]:
    """Every stored story's list, never itself, a block at a time and in order (a full
    rebuild); in ``n_jobs`` processes, which share the corpus's arrays through memory maps."""
    n = len(corpus)
    if n_jobs == 1 or n < PARALLEL_FROM:
        yield from _related_span(corpus, k, 0, n, block)
        return
    step = math.ceil(n / (4 * n_jobs) / block) * block
    spans = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_related_span)(corpus, k, start, min(start + step, n), block)
        for start in range(0, n, step)
    )
    for span in spans:
        yield from span


def _related_span(
    corpus: Corpus, k: int, first: int, end: int, block: int
) -> list[list[list[Related]]]:
    q = _Queries(corpus.words, corpus.dense, corpus.facets)
    n, spread = len(corpus), _Spread(corpus.words.shape[1], min(block, end - first))
    blocks = []
    for start in range(first, end, block):
        rows = np.arange(start, min(start + block, end))
        if k > 0:
            blocks.append(_lists(corpus, q, rows, k, rows * n + rows, spread))
        else:
            blocks.append([[] for _ in rows])
    return blocks


def score_all(query: Vector, corpus: Corpus, facets: HasFacets | None = None) -> np.ndarray:
    """One story's exact score against every stored story (-inf where the text relates
    nothing). Scores are symmetric: the lists a new story now belongs in are those whose
    last score it beats."""
    return score_many(_one(query, corpus), corpus, None if facets is None else [facets])[0]


SCORE_CELLS = 4_000_000  # query-story scores held at once (32 MB): callers pass blocks


def score_many(
    queries: Vectors, corpus: Corpus, facets: Sequence[HasFacets] | None = None
) -> np.ndarray:
    """``score_all`` of several stories at once, a row each: a few products of the whole
    block with the corpus instead of a pass over it per story. Memory is queries x stories:
    more than ``SCORE_CELLS // len(corpus)`` queries at a time is the caller's choice."""
    n, rank = len(corpus), corpus.rank
    if n == 0 or len(queries) == 0:
        return np.zeros((len(queries), n))
    q = _queries(corpus, queries, facets)
    words = (q.words @ corpus.by_word).toarray().astype(np.float64)
    text = rank.words * words + (q.dense @ corpus.dense.T).astype(np.float64)
    section = tags = gap = None
    if rank.section_boost:
        ours = q.facets.sections[:, None]
        section = (ours >= 0) & (ours == corpus.facets.sections[None, :])
    if rank.tag_boost:
        tags = (q.facets.tags @ corpus.facets.tags.T).toarray()
    if rank.recency:
        gap = np.abs(q.facets.days[:, None] - corpus.facets.days[None, :])
    score = _with_boosts(rank, text, section, tags, gap)
    score[text <= 0] = -np.inf
    return score


def _one(vector: Vector, corpus: Corpus) -> Vectors:
    indptr = np.array([0, len(vector.terms)], np.int64)
    shape = (1, corpus.words.shape[1])
    words = sp.csr_matrix((vector.weights, vector.terms, indptr), shape=shape)
    return Vectors(vector.dense[None, :].astype(np.float32), words, corpus.topic_dims)
