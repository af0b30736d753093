"""The "Also read" engine without a database: what a reader would notice in the lists."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.archiver.relatedness import (
    Corpus,
    CorruptState,
    Doc,
    Facets,
    ModelParams,
    RankParams,
    TextModel,
    Vectors,
    plain_text,
    related_all,
    score_all,
    top_k,
    vector_from_bytes,
    vector_to_bytes,
)

SUBJECTS = {
    "football": [
        "striker goal penalty keeper league match stadium fans referee",
        "midfielder transfer club manager season cup final goal",
        "defender injury squad coach tactics league title match",
    ],
    "markets": [
        "shares investors stock exchange index traders profits bank",
        "interest rates inflation central bank economists bonds currency",
        "quarterly earnings revenue shareholders dividend stock merger",
    ],
    "elections": [
        "voters ballot candidate campaign parliament polls minister",
        "election turnout constituency party leader manifesto vote",
        "coalition government opposition debate referendum seats",
    ],
    "cooking": [
        "recipe oven flour butter sugar bake dough kitchen chef",
        "soup onions garlic simmer stock herbs pepper salt kitchen",
        "pastry cream chocolate dessert whisk eggs vanilla chef",
    ],
}


def story(subject: str, n: int) -> Doc:
    """A story on ``subject``: three paragraphs drawn from its vocabulary, varied by ``n``."""
    lines = SUBJECTS[subject]
    body = "".join(f"<p>{lines[(n + i) % 3]} {lines[(n + 2 * i) % 3]}</p>" for i in range(3))
    return Doc(f"{subject.title()} story {n}", body)


def newsroom() -> tuple[list[str], list[Doc]]:
    ids, docs = [], []
    for subject in SUBJECTS:
        for n in range(6):
            ids.append(f"{subject}-{n}")
            docs.append(story(subject, n))
    return ids, docs


def corpus_of(docs: list[Doc], ids: list[str], **rank: object) -> tuple[TextModel, Corpus]:
    model, vectors = TextModel.fit_transform(docs)
    return model, Corpus(ids, vectors, rank=replace(RankParams(), **rank))  # type: ignore[arg-type]


def subject_of(id_: str) -> str:
    return id_.split("-")[0]


def all_lists(corpus: Corpus, k: int) -> list[list[str]]:
    return [[r.id for r in related] for part in related_all(corpus, k) for related in part]


def test_stories_list_stories_on_their_own_subject_first() -> None:
    ids, docs = newsroom()
    _, corpus = corpus_of(docs, ids)
    for id_, related in zip(ids, all_lists(corpus, 5), strict=True):
        assert len(related) == 5
        assert all(subject_of(other) == subject_of(id_) for other in related), (id_, related)


def test_a_new_story_is_related_with_the_fitted_model_and_no_refit() -> None:
    ids, docs = newsroom()
    model, corpus = corpus_of(docs, ids)
    new = Doc("Cup final", "<p>The striker scored a late penalty as the keeper dived.</p>")
    [related] = top_k(model.transform([new]), corpus, 3)
    assert [subject_of(r.id) for r in related] == ["football"] * 3
    unrelated = Doc("Bake off", "<p>Whisk the eggs with sugar and butter in the oven.</p>")
    [other] = top_k(model.transform([unrelated]), corpus, 3)
    assert [subject_of(r.id) for r in other] == ["cooking"] * 3


def test_the_rest_of_a_split_story_comes_first() -> None:
    ids, docs = newsroom()
    first = Doc("Harbour fire", "<p>Fire at Kilmarnock harbour: Dunmore trawler lost.</p>")
    rest = Doc("Part two", "<p>Crews from Dunmore fought the Kilmarnock blaze for hours.</p>")
    _, corpus = corpus_of([*docs, first, rest], [*ids, "first", "rest"])
    lists = dict(zip(corpus.ids, all_lists(corpus, 3), strict=True))
    assert lists["first"][0] == "rest"
    assert lists["rest"][0] == "first"


def test_a_story_is_never_in_its_own_list_and_k_is_kept() -> None:
    ids, docs = newsroom()
    model, corpus = corpus_of(docs, ids)
    for k in (1, 3, 7):
        lists = all_lists(corpus, k)
        assert all(len(related) == k for related in lists)
        assert all(id_ not in related for id_, related in zip(ids, lists, strict=True))
    found = top_k(model.transform(docs[:2]), corpus, 4, exclude=[[ids[0]], [ids[1], ids[2]]])
    assert ids[0] not in [r.id for r in found[0]]
    assert {ids[1], ids[2]}.isdisjoint(r.id for r in found[1])
    assert all(len(related) == 4 for related in found)
    assert all(related == [] for related in all_lists(corpus, 0))


def test_lists_are_best_first_and_scores_are_the_exact_symmetric_ones() -> None:
    ids, docs = newsroom()
    model, corpus = corpus_of(docs, ids)
    vectors = model.transform(docs)
    for i, related in enumerate(top_k(vectors, corpus, 5, exclude=[[id_] for id_ in ids])):
        scores = [r.score for r in related]
        assert scores == sorted(scores, reverse=True)
        exact = score_all(vectors.row(i), corpus)
        for r in related:
            j = corpus.ids.index(r.id)
            assert r.score == pytest.approx(exact[j], rel=1e-5)
            assert score_all(vectors.row(j), corpus)[i] == pytest.approx(r.score, rel=1e-5)


CHINESE = "<p>北京市政府宣布新的地铁线路将于明年开通。市民出行将更加方便。</p>"
ARABIC = "<p>أعلنت الحكومة عن خطة جديدة لدعم المزارعين في المناطق الريفية هذا العام.</p>"
MIB = "<p>" + "goal striker keeper " * (1024 * 1024 // 20) + "</p>"
BAD_BODIES = {
    "empty": "",
    "markup only": "<p></p><br/>",
    "one word": "goal",
    "stop words only": "<p>the and of it is</p>",
    "Chinese": CHINESE,
    "Arabic": ARABIC,
    "1 MiB": MIB,
    "control characters": "\x00\x01 goal \ufffe",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_give_lists_without_error(body: str) -> None:
    ids, docs = newsroom()
    model, corpus = corpus_of([*docs, Doc("Odd", body)], [*ids, "odd"])
    lists = dict(zip(corpus.ids, all_lists(corpus, 5), strict=True))
    assert len(lists["odd"]) <= 5
    assert all(len(related) == 5 for id_, related in lists.items() if id_ != "odd")
    [as_query] = top_k(model.transform([Doc("Odd", body)]), corpus, 5)
    assert len(as_query) <= 5


def test_a_huge_body_is_cut_and_still_read_as_what_it_is() -> None:
    ids, docs = newsroom()
    model, corpus = corpus_of(docs, ids)
    assert len(plain_text("Title", MIB, ModelParams().max_chars)) <= ModelParams().max_chars
    [related] = top_k(model.transform([Doc("Goals", MIB)]), corpus, 3)
    assert [subject_of(r.id) for r in related] == ["football"] * 3


def test_stories_without_a_known_word_have_empty_lists_and_are_never_listed() -> None:
    ids, docs = newsroom()
    _, corpus = corpus_of([*docs, Doc("", ""), Doc("", CHINESE)], [*ids, "blank", "zh"])
    lists = dict(zip(corpus.ids, all_lists(corpus, 30), strict=True))
    assert lists["blank"] == []
    assert lists["zh"] == []  # its characters are in no other story
    assert all({"blank", "zh"}.isdisjoint(related) for related in lists.values())


def test_stories_in_other_scripts_find_each_other() -> None:
    ids, docs = newsroom()
    more = "<p>上海的新地铁线路今年开通。北京市民也在等待。</p>"  # no sentence in common
    arabic = ARABIC.replace("هذا العام", "في الشتاء")
    extra = [Doc("", CHINESE), Doc("", more), Doc("", ARABIC), Doc("", arabic)]
    _, corpus = corpus_of([*docs, *extra], [*ids, "zh-1", "zh-2", "ar-1", "ar-2"])
    lists = dict(zip(corpus.ids, all_lists(corpus, 1), strict=True))
    assert lists["zh-1"] == ["zh-2"]
    assert lists["ar-1"] == ["ar-2"]


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_tiny_corpora(size: int) -> None:
    docs = [
        Doc("Harbour fire", "<p>A fire at the harbour destroyed a trawler.</p>"),
        Doc("Harbour blaze", "<p>The trawler fire at the harbour burned all night.</p>"),
        Doc("Cake", "<p>Bake the cake with butter and sugar.</p>"),
    ][:size]
    ids = [str(i) for i in range(size)]
    model, corpus = corpus_of(docs, ids)
    lists = all_lists(corpus, 5)
    assert len(lists) == size
    if size >= 2:
        assert lists[0][:1] == ["1"]
        assert lists[1][:1] == ["0"]
    if size <= 1:
        assert lists == [[]] * size
    [new] = top_k(model.transform([Doc("Fire", "<p>Harbour trawler fire.</p>")]), corpus, 5)
    assert [r.id for r in new][:1] == (["0"] if size else [])


def test_vectors_round_trip_through_bytes_with_the_same_scores() -> None:
    ids, docs = newsroom()
    model, vectors = TextModel.fit_transform(docs)
    stored = [vector_to_bytes(vectors.row(i)) for i in range(len(vectors))]
    again = model.stack([vector_from_bytes(b) for b in stored])
    before, after = Corpus(ids, vectors), Corpus(ids, again)
    assert np.array_equal(again.dense, vectors.dense)
    assert (again.words != vectors.words).nnz == 0
    for i in range(len(ids)):
        assert np.array_equal(
            score_all(vectors.row(i), before), score_all(vector_from_bytes(stored[i]), after)
        )
    assert all_lists(before, 5) == all_lists(after, 5)
    assert max(len(b) for b in stored) <= 7 + 4 * model.dense_size + 8 * ModelParams().terms


def test_the_model_round_trips_through_bytes() -> None:
    _, docs = newsroom()
    model = TextModel.fit(docs)
    loaded = TextModel.from_bytes(model.to_bytes())
    new = [Doc("Cup final", "<p>The striker scored a penalty.</p>"), docs[5]]
    a, b = model.transform(new), loaded.transform(new)
    assert loaded.params == model.params
    assert np.array_equal(a.dense, b.dense)
    assert (a.words != b.words).nnz == 0


CORRUPT_VECTORS = {
    "empty": b"",
    "short header": b"\x01\x02",
    "unknown version": b"\x02" + b"\x00" * 6,
    "shorter than its header says": b"\x01\x01\x00\x05\x00\x00\x00",
}


@pytest.mark.parametrize("data", CORRUPT_VECTORS.values(), ids=CORRUPT_VECTORS.keys())
def test_corrupt_vectors_are_refused(data: bytes) -> None:
    with pytest.raises(CorruptState):
        vector_from_bytes(data)


def test_corrupt_models_and_foreign_vectors_are_refused() -> None:
    _, docs = newsroom()
    model = TextModel.fit(docs)
    with pytest.raises(CorruptState):
        TextModel.from_bytes(model.to_bytes()[:100])
    with pytest.raises(CorruptState):
        TextModel.from_bytes(b"not a model")
    small = TextModel.fit(docs[:3])
    foreign = small.transform(docs[:1]).row(0)
    with pytest.raises(CorruptState):
        model.stack([foreign])


WHEN = datetime(2025, 3, 1, tzinfo=UTC)


def boosted_corpus(**rank: object) -> tuple[TextModel, Corpus, list[str]]:
    """Football stories, half in section "sport" with tag "cup", half in "local"; each
    published a day after the one before."""
    ids, docs = newsroom()
    facets = [
        Facets(
            section="sport" if i % 2 else "local",
            tags=("cup",) if i % 2 else ("town",),
            published_at=WHEN + timedelta(days=i),
        )
        for i in range(len(ids))
    ]
    model, vectors = TextModel.fit_transform(docs)
    return model, Corpus(ids, vectors, facets, replace(RankParams(), **rank)), ids  # type: ignore[arg-type]


def football_query(model: TextModel) -> Vectors:
    return model.transform([Doc("Match", "<p>The striker scored a goal in the league match.</p>")])


def sections(related: list[str]) -> list[str]:
    """The sections boosted_corpus gave these football stories."""
    return ["sport" if int(id_.split("-")[1]) % 2 else "local" for id_ in related]


@pytest.mark.parametrize("boost", ["add", "multiply"])
def test_a_section_boost_puts_the_same_section_first(boost: str) -> None:
    model, plain, _ = boosted_corpus()
    query = football_query(model)
    [unboosted] = top_k(query, plain, 3, query_facets=[Facets(section="sport")])
    assert sections([r.id for r in unboosted]) != ["sport"] * 3
    _, corpus, _ = boosted_corpus(section_boost=5.0, boost=boost)
    [related] = top_k(query, corpus, 3, query_facets=[Facets(section="sport")])
    assert sections([r.id for r in related]) == ["sport"] * 3
    assert all(subject_of(r.id) == "football" for r in related)


def test_a_tag_boost_puts_shared_tags_first_and_is_off_by_default() -> None:
    model, plain, _ = boosted_corpus()
    query, tagged = football_query(model), [Facets(tags=("town", "x"))]
    [unboosted] = top_k(query, plain, 3, query_facets=tagged)
    [again] = top_k(query, plain, 3)
    assert [r.id for r in unboosted] == [r.id for r in again]
    _, corpus, _ = boosted_corpus(tag_boost=2.0)
    [related] = top_k(query, corpus, 3, query_facets=tagged)
    assert sections([r.id for r in related]) == ["local"] * 3


def test_recency_prefers_stories_published_close_in_time() -> None:
    model, plain, _ = boosted_corpus()
    query = football_query(model)
    late = [Facets(published_at=WHEN + timedelta(days=5))]
    [unboosted] = top_k(query, plain, 3, query_facets=late)
    _, corpus, _ = boosted_corpus(recency=0.9, recency_half_life_days=1.0)
    [related] = top_k(query, corpus, 3, query_facets=late)
    days = [int(r.id.split("-")[1]) for r in related]  # football story n is out on day n
    assert days != [int(r.id.split("-")[1]) for r in unboosted]
    assert days == [5, 4, 3]
