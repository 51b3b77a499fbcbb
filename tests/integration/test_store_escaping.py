"""Property tests: no user string can change a query's structure, on both search paths.

Scopes, categories, metadata keys and values, sources and viewers are drawn from
strings full of query syntax (``| } { \\ * => $ @ - , . / :``), spaces, unicode
and case variants. For random filters, the search result (with a limit above the
number of records) must be exactly the set of records matching the filter as
computed in Python; counts, category counts and deletes must agree too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memworker import ValkeyStore
from memworker.records import record_types

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

MemoryRecord = record_types()[0]

DIM = 6
T0 = datetime(2024, 1, 1)
CHARS = list("|}{\\*=>$@-,./: aAbB") + ["é", "É", "ß", "日", "🙂"]
NASTY = st.text(alphabet=st.sampled_from(CHARS), min_size=1, max_size=12)
COMPONENT = st.text(
    alphabet=st.sampled_from([c for c in CHARS if c != "/"]), min_size=1, max_size=6
)
SCOPE = st.lists(COMPONENT, min_size=0, max_size=3).map(lambda parts: "/" + "/".join(parts))
SCALAR = st.one_of(NASTY, st.integers(0, 2), st.booleans(), st.just(1.0), st.just(0.0))


@st.composite
def datasets(draw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Record specs whose values come from a small pool of nasty strings and their
    case variants, so that near-collisions (``a``/``A``, ``ß``/``SS``) are common."""
    base = draw(st.lists(NASTY, min_size=2, max_size=4, unique=True))
    words = sorted(set(base) | {w.swapcase() for w in base} | {w.upper() for w in base})
    comps = sorted({w.replace("/", "") for w in words} - {""}) or ["x"]
    word = st.sampled_from(words)
    record = st.fixed_dictionaries(
        {
            "scope": st.lists(st.sampled_from(comps), min_size=0, max_size=3).map(
                lambda parts: "/" + "/".join(parts)
            ),
            "categories": st.lists(word, min_size=0, max_size=3, unique=True),
            "metadata": st.dictionaries(word, st.one_of(word, SCALAR), min_size=0, max_size=3),
            "source": st.one_of(st.none(), word),
            "private": st.booleans(),
        }
    )
    return draw(st.lists(record, min_size=1, max_size=6)), words


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def embedding(i: int) -> list[float]:
    return np.abs(np.random.default_rng(i).normal(size=DIM)).tolist()


QUERY = [1.0] * DIM


def build(specs: list[dict[str, Any]]) -> list[Any]:
    return [
        MemoryRecord(
            id=f"r{i}",
            content=f"record {i}",
            created_at=T0 + timedelta(minutes=i),
            last_accessed=T0,
            embedding=embedding(i),
            **spec,
        )
        for i, spec in enumerate(specs)
    ]


def ancestors(scope: str) -> list[str]:
    parts = scope.split("/")[1:] if scope != "/" else []
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def in_scope(scope: str, prefix: str | None) -> bool:
    return prefix is None or prefix == "/" or scope == prefix or scope.startswith(prefix + "/")


def canon(value: Any) -> tuple[str, Any]:
    """JSON equality: 1 == 1.0, True != 1, "1" != 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    if value is None:
        return ("null", None)
    return ("str", value)


def matches(record: Any, flt: dict[str, Any]) -> bool:
    if not in_scope(record.scope, flt.get("scope_prefix")):
        return False
    cats = flt.get("categories")
    if cats and not set(cats) & set(record.categories):
        return False
    meta = flt.get("metadata_filter") or {}
    for key, value in meta.items():
        if key not in record.metadata or canon(record.metadata[key]) != canon(value):
            return False
    if flt.get("source") is not None and record.source != flt["source"]:
        return False
    if not flt.get("include_private", True) and record.private:
        viewer = flt.get("viewer")
        if viewer is None or record.source != viewer:
            return False
    return True


def draw_filter(
    data: st.DataObject, records: list[Any], words: list[str], *, search: bool = True
) -> dict[str, Any]:
    """A filter built mostly from values present in the records, sometimes from
    their case variants or new strings."""
    scopes = sorted({a for r in records for a in ancestors(r.scope)})
    cats = sorted({c for r in records for c in r.categories})
    pairs = [(k, v) for r in records for k, v in r.metadata.items()]
    sources = sorted({r.source for r in records if r.source is not None})

    def known_or_new(known: list[Any], new: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(st.sampled_from(known), new) if known else new

    word = st.one_of(NASTY, st.sampled_from(words))

    flt: dict[str, Any] = {}
    if data.draw(st.booleans(), "use scope"):
        variant = st.sampled_from(words).map(
            lambda w: "/" + w.replace("/", "") if w.strip("/") else "/x"
        )
        flt["scope_prefix"] = data.draw(
            st.one_of(
                st.sampled_from(scopes), st.sampled_from(scopes).map(str.swapcase), SCOPE, variant
            ),
            "scope_prefix",
        )
    if data.draw(st.booleans(), "use categories"):
        flt["categories"] = data.draw(
            st.lists(known_or_new(cats, word), min_size=1, max_size=3), "categories"
        )
    if data.draw(st.booleans(), "use metadata"):
        pair = st.tuples(word, st.one_of(SCALAR, word))
        chosen = data.draw(st.lists(known_or_new(pairs, pair), min_size=1, max_size=2), "metadata")
        flt["metadata_filter"] = dict(chosen)
    if search:
        if data.draw(st.booleans(), "use source"):
            flt["source"] = data.draw(known_or_new(sources, word), "source")
        if data.draw(st.booleans(), "hide private"):
            flt["include_private"] = False
            flt["viewer"] = data.draw(st.one_of(st.none(), known_or_new(sources, word)), "viewer")
    return flt


@SETTINGS
@given(dataset=datasets(), data=st.data())
def test_search_results_are_exactly_the_filtered_records(
    store: ValkeyStore, dataset: tuple[list[dict[str, Any]], list[str]], data: st.DataObject
) -> None:
    specs, words = dataset
    store.reset()
    records = build(specs)
    store.save(records)
    for _ in range(4):
        flt = draw_filter(data, records, words)
        expected = {r.id for r in records if matches(r, flt)}
        hits = store.search(QUERY, limit=len(records) + 5, min_score=-2.0, **flt)
        got = [r.id for r, _ in hits]
        assert len(got) == len(set(got))
        assert set(got) == expected, flt
        # every returned record really is inside the filter, as stored
        by_id = {r.id: r for r in records}
        for record, _ in hits:
            assert record.scope == by_id[record.id].scope
            assert record.categories == by_id[record.id].categories
            assert record.source == by_id[record.id].source
            assert matches(record, flt)
        # a tight limit returns the best of the filtered set
        top = store.search(QUERY, limit=1, min_score=-2.0, **flt)
        assert [r.id for r, _ in top] == got[:1]


@SETTINGS
@given(dataset=datasets(), data=st.data())
def test_counts_listing_and_delete_with_nasty_values(
    store: ValkeyStore, dataset: tuple[list[dict[str, Any]], list[str]], data: st.DataObject
) -> None:
    specs, words = dataset
    store.reset()
    records = build(specs)
    store.save(records)
    for scope in sorted({a for r in records for a in ancestors(r.scope)}):
        inside = [r for r in records if in_scope(r.scope, scope)]
        assert store.count(scope) == len(inside)
        counts: dict[str, int] = {}
        for r in inside:
            for c in r.categories:
                counts[c] = counts.get(c, 0) + 1
        assert store.list_categories(scope) == counts
        children = sorted(
            {
                a
                for r in inside
                for a in ancestors(r.scope)
                if a != scope and a.rsplit("/", 1)[0] == ("" if scope == "/" else scope)
            }
        )
        assert store.list_scopes(scope) == children
        info = store.get_scope_info(scope)
        assert (info.path, info.record_count, info.child_scopes) == (scope, len(inside), children)
        assert info.categories == sorted(counts)
        assert [r.id for r in store.list_records(scope, limit=100)] == [
            r.id for r in sorted(inside, key=lambda r: r.created_at, reverse=True)
        ]

    flt = draw_filter(data, records, words, search=False)
    doomed = {r.id for r in records if matches(r, flt)}
    assert store.delete(**flt) == len(doomed)
    assert {r.id for r in store.list_records(limit=100)} == {r.id for r in records} - doomed
    assert store.count() == len(records) - len(doomed)
