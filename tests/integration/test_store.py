"""ValkeyStore against CrewAI's StorageBackend contract, on both search paths.

Every test using ``store`` runs twice: on a plain Valkey (the exact numpy path)
and on Valkey with RediSearch (the FT.SEARCH path). Semantics tested are
memworker's (see the module docstrings): scope prefixes by path component,
cosine similarity scores, JSON equality for metadata.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from crewai.memory.storage.backend import EmbeddingDimensionMismatchError

from memworker import ValidationError, ValkeyStore
from memworker.records import record_types
from memworker.testing import ThrowawayCluster

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

MemoryRecord, ScopeInfo = record_types()

DIM = 8
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456)
_clock = itertools.count(1)

FIELDS = (
    "id", "content", "scope", "categories", "importance",
    "created_at", "last_accessed", "source", "private",
)  # fmt: skip


def vec(seed: int, dim: int = DIM) -> list[float]:
    return np.random.default_rng(seed).normal(size=dim).tolist()


def mk(
    rid: str,
    scope: str = "/",
    categories: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    seed: int | None = None,
    embedding: list[float] | None | str = "auto",
    created: datetime | None = None,
    source: str | None = None,
    private: bool = False,
    importance: float = 0.5,
    content: str | None = None,
) -> Any:
    """A record; every call gets a distinct created_at unless one is given."""
    if created is None:
        created = T0 + timedelta(seconds=next(_clock), microseconds=next(_clock))
    if embedding == "auto":
        embedding = vec(seed if seed is not None else zlib.crc32(rid.encode()))
    return MemoryRecord(
        id=rid,
        content=content if content is not None else f"content of {rid}",
        scope=scope,
        categories=list(categories or []),
        metadata=dict(metadata or {}),
        importance=importance,
        created_at=created,
        last_accessed=created,
        embedding=embedding,
        source=source,
        private=private,
    )


def assert_same(got: Any, want: Any, *, embedding: bool = True) -> None:
    """Every field exactly as saved (embedding to float32 precision)."""
    assert got is not None, f"record {want.id} not found"
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), name
    assert type(got.importance) is float
    # JSON equality of the whole tree, with types (1 vs 1.0 vs True) preserved.
    assert json.dumps(got.metadata, sort_keys=True) == json.dumps(want.metadata, sort_keys=True)
    assert got.created_at.tzinfo is None and got.last_accessed.tzinfo is None
    if embedding:
        # bit-exact as float32, or as float16 (vector_type "auto" on RediSearch >= 2.10)
        as32 = np.asarray(want.embedding, dtype=np.float32)
        assert got.embedding in (as32.tolist(), as32.astype(np.float16).astype(np.float32).tolist())


def tol(store: ValkeyStore) -> float:
    """Score tolerance: float16 vectors carry ~1e-3 relative precision."""
    return 2e-3 if store.vector_type == "float16" else 1e-5


def ids(hits: list[tuple[Any, float]]) -> list[str]:
    return [r.id for r, _ in hits]


def id_set(hits: list[tuple[Any, float]]) -> set[str]:
    return {r.id for r, _ in hits}


def everything(
    store: ValkeyStore, query: list[float] | None = None, **kw: Any
) -> list[tuple[Any, float]]:
    """Search with no top-k or score cut-off."""
    kw.setdefault("limit", 1000)
    kw.setdefault("min_score", -2.0)
    return store.search(query or vec(999), **kw)


def ns_keys(raw: Any, store: ValkeyStore) -> list[str]:
    return sorted(k.decode() for k in raw.scan_iter(match=f"{store.keys.prefix}:*"))


def cosine(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    m = matrix.astype(np.float32)
    q = query.astype(np.float32)
    return (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))


# ============================================================================ round trip
def test_round_trip_all_fields(store: ValkeyStore) -> None:
    record = MemoryRecord(
        id="r-1",
        content="The café's wifi password is 'ß日🙂'",
        scope="/org/team/alice",
        categories=["zeta", "alpha", "mid"],
        metadata={
            "nested": {"a": [1, 2.5, "x", None, True], "b": {"c": -3}},
            "int": 1,
            "float": 1.0,
            "bool": True,
            "text": "é",
            "none": None,
        },
        importance=0.1234567890123,
        created_at=datetime(2024, 2, 29, 23, 59, 59, 999999),
        last_accessed=datetime(2024, 3, 1, 0, 0, 0, 1),
        embedding=[0.1, -0.2, 1e-8, 3.3333333333, 7.0, -1e3, 0.5, 2.0 / 3.0],
        source="alice",
        private=True,
    )
    store.save([record])
    assert_same(store.get_record("r-1"), record)
    [(found, score)] = store.search(record.embedding, limit=5)
    assert_same(found, record)
    assert score == pytest.approx(1.0, abs=tol(store))
    [listed] = store.list_records()
    assert_same(listed, record)
    assert store.get_record("missing") is None


def test_round_trip_timestamps_edge_cases(store: ValkeyStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    aware = mk("aware", created=datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=plus2))
    before_epoch = mk("old", created=datetime(1969, 7, 20, 20, 17, 40, 500001))
    store.save([aware, before_epoch])
    got = store.get_record("aware")
    assert got.created_at == datetime(2024, 1, 1, 10, 0, 0, 5)
    assert got.created_at.tzinfo is None
    assert store.get_record("old").created_at == datetime(1969, 7, 20, 20, 17, 40, 500001)
    info = store.get_scope_info("/")
    assert info.oldest_record == datetime(1969, 7, 20, 20, 17, 40, 500001)
    assert info.newest_record == datetime(2024, 1, 1, 10, 0, 0, 5)
    hits = everything(store)
    assert {r.id: r.created_at for r, _ in hits} == {
        "aware": datetime(2024, 1, 1, 10, 0, 0, 5),
        "old": datetime(1969, 7, 20, 20, 17, 40, 500001),
    }


def test_scope_is_normalized(store: ValkeyStore) -> None:
    store.save([mk("a", scope="team/x/"), mk("b", scope="/")])
    assert store.get_record("a").scope == "/team/x"
    assert store.get_record("b").scope == "/"
    assert store.count("/team") == 1
    assert store.count("team/x/") == 1


# ============================================================================ search
def test_search_ranking_is_cosine_similarity(store: ValkeyStore) -> None:
    records = [mk(f"r{i:02d}", seed=i) for i in range(30)]
    store.save(records)
    query = np.random.default_rng(1234).normal(size=DIM)
    # the cosine of the vectors as stored (float16 when the namespace stores float16)
    stored = np.array([r.embedding for r in records], dtype=np.float32)
    probe = query.astype(np.float32)
    if store.vector_type == "float16":
        stored, probe = stored.astype(np.float16), probe.astype(np.float16)
    expected = cosine(stored.astype(np.float64), probe.astype(np.float64))
    order = np.argsort(-expected)

    hits = store.search(query.tolist(), limit=30, min_score=-1.0)
    assert ids(hits) == [records[i].id for i in order]
    for (record, score), i in zip(hits, order):
        assert score == pytest.approx(float(expected[i]), abs=tol(store))
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)

    # limit: the top k, in order
    assert ids(store.search(query.tolist(), limit=5, min_score=-1.0)) == [
        records[i].id for i in order[:5]
    ]
    assert len(store.search(query.tolist(), limit=1, min_score=-1.0)) == 1

    # min_score: everything at or above the threshold, nothing below
    threshold = float((expected[order[2]] + expected[order[3]]) / 2)
    assert ids(store.search(query.tolist(), limit=30, min_score=threshold)) == [
        records[i].id for i in order[:3]
    ]
    # the default min_score (0.0) is "no threshold", as CrewAI means it: negative
    # similarities are kept (LanceDB's 1/(1+d) score is never negative)
    assert id_set(store.search(query.tolist(), limit=30)) == {r.id for r in records}
    assert any(expected < 0)  # the case is exercised
    # cosine is scale-invariant
    scaled = store.search((query * 1000).tolist(), limit=30, min_score=-1.0)
    assert ids(scaled) == ids(hits)


def test_search_empty_store_returns_nothing(store: ValkeyStore) -> None:
    assert store.search(vec(1)) == []
    assert store.search(vec(1, dim=3)) == []  # no dimension is stored yet


def test_search_bad_arguments(store: ValkeyStore) -> None:
    store.save([mk("a")])
    for kwargs in (
        {"limit": 0}, {"limit": -1}, {"limit": 10_001}, {"scope_prefix": "/a//b"},
        {"scope_prefix": "/a/\udfff"}, {"categories": "red"},
    ):  # fmt: skip
        with pytest.raises(ValidationError):
            store.search(vec(1), **kwargs)
    with pytest.raises(ValidationError, match="query_embedding"):
        store.search([float("nan")] * DIM)
    with pytest.raises(ValidationError, match="query_embedding"):
        store.search([0.0] * DIM)


SCOPES = ["/", "/a", "/a/b", "/a/b/c", "/ab", "/a/bc", "/b", "/B"]


def test_search_scope_prefix_by_path_component(store: ValkeyStore) -> None:
    store.save([mk(f"s{i}", scope=s) for i, s in enumerate(SCOPES)])
    by_scope = {s: f"s{i}" for i, s in enumerate(SCOPES)}

    def expect(*scopes: str) -> set[str]:
        return {by_scope[s] for s in scopes}

    everything_ = expect(*SCOPES)
    assert id_set(everything(store)) == everything_
    assert id_set(everything(store, scope_prefix="/")) == everything_
    assert id_set(everything(store, scope_prefix="")) == everything_
    assert id_set(everything(store, scope_prefix="/a")) == expect("/a", "/a/b", "/a/b/c", "/a/bc")
    assert id_set(everything(store, scope_prefix="a/")) == expect("/a", "/a/b", "/a/b/c", "/a/bc")
    assert id_set(everything(store, scope_prefix="/a/b")) == expect("/a/b", "/a/b/c")
    assert id_set(everything(store, scope_prefix="/ab")) == expect("/ab")
    assert id_set(everything(store, scope_prefix="/b")) == expect("/b")  # case-sensitive
    assert id_set(everything(store, scope_prefix="/B")) == expect("/B")
    assert everything(store, scope_prefix="/nope") == []
    assert everything(store, scope_prefix="/a/b/c/d") == []


@pytest.mark.parametrize("path", ["default", "scan"])
def test_search_exclude_scope_by_path_component(store_factory, path: str) -> None:
    """``exclude_scope`` leaves out the scope and everything below it, by path
    component, in the query: the top ``limit`` of the rest come back in full even when
    the excluded records are the nearest (the LangGraph items of a shared namespace
    must not shorten a CrewAI recall). ``scan``: the exact path's bulk read."""
    store = store_factory()
    reader = store_factory(exact_cache_max_records=0) if path == "scan" else store
    store.save([mk(f"s{i}", scope=s) for i, s in enumerate(SCOPES)])
    by_scope = {s: f"s{i}" for i, s in enumerate(SCOPES)}

    def expect(*scopes: str) -> set[str]:
        return {by_scope[s] for s in scopes}

    assert id_set(everything(reader, exclude_scope="/a")) == expect("/", "/ab", "/b", "/B")
    assert id_set(everything(reader, exclude_scope="a/b")) == expect("/", "/a", "/ab", "/a/bc", "/b", "/B")
    assert id_set(everything(reader, scope_prefix="/a", exclude_scope="/a/b")) == expect("/a", "/a/bc")
    assert everything(reader, scope_prefix="/a/b", exclude_scope="/a") == []  # all of it excluded
    assert everything(reader, scope_prefix="/a", exclude_scope="/a") == []
    # beside the searched scope: excludes nothing searched
    assert id_set(everything(reader, scope_prefix="/a", exclude_scope="/b")) == expect("/a", "/a/b", "/a/b/c", "/a/bc")
    assert id_set(everything(reader, exclude_scope="/nope")) == expect(*SCOPES)
    # with other filters, and filled to the limit past nearer excluded records
    near = vec(4242)
    store.save([mk(f"x{i}", scope="/langgraph/u", embedding=near, categories=["k"]) for i in range(20)])
    store.save([mk(f"y{i}", scope="/crew", seed=i, categories=["k"]) for i in range(5)])
    hits = reader.search(near, limit=5, min_score=-2.0, exclude_scope="/langgraph")
    assert len(hits) == 5 and not any(r.scope.startswith("/langgraph") for r, _ in hits)
    hits = reader.search(near, categories=["k"], limit=5, min_score=-2.0, exclude_scope="/langgraph")
    assert id_set(hits) == {f"y{i}" for i in range(5)}
    assert len(reader.search(near, limit=5, min_score=-2.0)) == 5  # without it: the nearest, excluded ones


@pytest.mark.parametrize("bad", ["/", "", "//", 7, "/a\x00"])
def test_search_exclude_scope_refuses_the_root_and_bad_scopes(store: ValkeyStore, bad: Any) -> None:
    """An ``exclude_scope`` that is the root (it would exclude everything, most likely
    a mistake) or not a scope is refused naming the field; nothing else changes."""
    store.save([mk("r1", scope="/a")])
    with pytest.raises(ValidationError, match="exclude_scope"):
        store.search(vec(1), exclude_scope=bad)


def test_search_categories_any_of(store: ValkeyStore) -> None:
    store.save(
        [
            mk("x", categories=["red", "green"]),
            mk("y", categories=["green"]),
            mk("z", categories=["blue"]),
            mk("n", categories=[]),
            mk("c", categories=["Red"]),
        ]
    )
    assert id_set(everything(store, categories=["red"])) == {"x"}
    assert id_set(everything(store, categories=["Red"])) == {"c"}
    assert id_set(everything(store, categories=["green"])) == {"x", "y"}
    assert id_set(everything(store, categories=["red", "blue"])) == {"x", "z"}
    assert id_set(everything(store, categories=["purple"])) == set()
    assert id_set(everything(store, categories=[])) == {"x", "y", "z", "n", "c"}


def test_search_metadata_json_equality(store: ValkeyStore) -> None:
    store.save(
        [
            mk("int", metadata={"k": 1, "t": "x"}),
            mk("float", metadata={"k": 1.0}),
            mk("bool", metadata={"k": True}),
            mk("str", metadata={"k": "1"}),
            mk("int-y", metadata={"k": 1, "t": "y"}),
            mk("nested", metadata={"n": {"a": 1, "b": [1, 2]}}),
            mk("null", metadata={"k": None}),
            mk("none", metadata={}),
        ]
    )
    assert id_set(everything(store, metadata_filter={"k": 1})) == {"int", "float", "int-y"}
    assert id_set(everything(store, metadata_filter={"k": 1.0})) == {"int", "float", "int-y"}
    assert id_set(everything(store, metadata_filter={"k": True})) == {"bool"}
    assert id_set(everything(store, metadata_filter={"k": "1"})) == {"str"}
    assert id_set(everything(store, metadata_filter={"k": 1, "t": "x"})) == {"int"}
    assert id_set(everything(store, metadata_filter={"k": 1, "t": "z"})) == set()
    assert id_set(everything(store, metadata_filter={"n": {"b": [1.0, 2], "a": 1}})) == {"nested"}
    assert id_set(everything(store, metadata_filter={"n": {"a": 1}})) == set()
    assert id_set(everything(store, metadata_filter={"k": None})) == {"null"}
    assert id_set(everything(store, metadata_filter={"missing": 1})) == set()
    with pytest.raises(ValidationError, match="metadata_filter"):
        store.search(vec(1), metadata_filter={"k": float("nan")})


def test_search_source_filter(store: ValkeyStore) -> None:
    store.save(
        [
            mk("a1", source="alice"),
            mk("a2", source="alice", private=True),
            mk("b1", source="bob"),
            mk("A", source="Alice"),
            mk("none", source=None),
        ]
    )
    assert id_set(everything(store, source="alice")) == {"a1", "a2"}
    assert id_set(everything(store, source="Alice")) == {"A"}
    assert id_set(everything(store, source="bob")) == {"b1"}
    assert id_set(everything(store, source="carol")) == set()
    assert id_set(everything(store)) == {"a1", "a2", "b1", "A", "none"}


def test_search_private_visibility(store: ValkeyStore) -> None:
    store.save(
        [
            mk("pub-alice", source="alice"),
            mk("priv-alice", source="alice", private=True),
            mk("priv-bob", source="bob", private=True),
            mk("priv-none", source=None, private=True),
            mk("pub-none", source=None),
        ]
    )
    pubs = {"pub-alice", "pub-none"}
    assert id_set(everything(store)) == pubs | {"priv-alice", "priv-bob", "priv-none"}
    assert id_set(everything(store, include_private=True, viewer="bob")) == pubs | {
        "priv-alice", "priv-bob", "priv-none",
    }  # fmt: skip
    assert id_set(everything(store, include_private=False)) == pubs
    assert id_set(everything(store, include_private=False, viewer="alice")) == pubs | {"priv-alice"}
    assert id_set(everything(store, include_private=False, viewer="bob")) == pubs | {"priv-bob"}
    assert id_set(everything(store, include_private=False, viewer="carol")) == pubs
    assert id_set(everything(store, include_private=False, viewer="")) == pubs
    assert id_set(everything(store, include_private=False, viewer="alice", source="alice")) == {
        "pub-alice", "priv-alice",
    }  # fmt: skip
    assert id_set(everything(store, include_private=False, viewer="bob", source="alice")) == {
        "pub-alice"
    }


@pytest.mark.parametrize("viewer", ["\x00none", "none", "None", "null", "\x00"])
def test_private_records_without_source_are_visible_to_nobody(
    store: ValkeyStore, viewer: str
) -> None:
    store.save([mk("orphan", source=None, private=True), mk("pub")])
    assert id_set(everything(store, include_private=False, viewer=viewer)) == {"pub"}


def test_private_record_of_a_look_alike_source_stays_private(store: ValkeyStore) -> None:
    # A record whose source is a string that looks like the "no source" marker is
    # private to exactly that source, and does not leak to other viewers.
    store.save(
        [mk("odd", source="\x00none", private=True), mk("orphan", source=None, private=True)]
    )
    assert id_set(everything(store, include_private=False, viewer="\x00none")) == {"odd"}
    assert id_set(everything(store, include_private=False, viewer="x")) == set()


def test_search_combined_filters(store: ValkeyStore) -> None:
    rows = []
    for i in range(40):
        rows.append(
            mk(
                f"c{i:02d}",
                scope=["/p", "/p/q", "/pq", "/r"][i % 4],
                categories=[["x"], ["y"], ["x", "y"], []][(i // 4) % 4],
                metadata={"m": i % 3},
                source=["s1", "s2", None][i % 3],
                private=bool(i % 5 == 0),
                seed=i,
            )
        )
    store.save(rows)

    def in_scope(s: str, p: str) -> bool:
        return p == "/" or s == p or s.startswith(p + "/")

    for scope, cats, meta, src, viewer in [
        ("/p", ["x"], {"m": 1}, None, None),
        ("/p", ["y"], None, "s1", "s1"),
        ("/", ["x", "y"], {"m": 0}, "s2", "s2"),
        ("/r", None, {"m": 2}, None, "s1"),
        ("/pq", ["x"], None, None, None),
    ]:
        want = {
            r.id
            for r in rows
            if in_scope(r.scope, scope)
            and (not cats or set(cats) & set(r.categories))
            and (not meta or all(r.metadata.get(k) == v for k, v in meta.items()))
            and (src is None or r.source == src)
            and (not r.private or (viewer is not None and r.source == viewer))
        }
        got = everything(
            store, scope_prefix=scope, categories=cats, metadata_filter=meta,
            source=src, include_private=False, viewer=viewer,
        )  # fmt: skip
        assert id_set(got) == want, (scope, cats, meta, src, viewer)
        # the top 2 are the 2 best of the filtered set, not of the whole store
        top2 = store.search(
            vec(999), scope_prefix=scope, categories=cats, metadata_filter=meta,
            source=src, include_private=False, viewer=viewer, limit=2, min_score=-2.0,
        )  # fmt: skip
        assert ids(top2) == ids(got)[:2]


# ============================================================================ listing, counting
def _tree_data() -> list[Any]:
    return [
        mk("root", scope="/", categories=["r"]),
        mk("a", scope="/a", categories=["x", "y"]),
        mk("ab1", scope="/a/b", categories=["x"]),
        mk("ab2", scope="/a/b", categories=["z"]),
        mk("abc", scope="/a/b/c", categories=[]),
        mk("ad", scope="/a/d", categories=["y"]),
        mk("AB", scope="/ab", categories=["x"]),
        mk("e", scope="/e/f/g", categories=["q", "x"]),
    ]


def test_list_records_newest_first_and_paginated(store: ValkeyStore) -> None:
    rng = np.random.default_rng(7)
    records = [mk(f"l{i:02d}", scope=["/a", "/a/b", "/ab", "/"][i % 4]) for i in range(25)]
    shuffled = [records[i] for i in rng.permutation(len(records))]
    store.save(shuffled[:10])
    store.save(shuffled[10:])
    newest_first = sorted(records, key=lambda r: r.created_at, reverse=True)

    assert [r.id for r in store.list_records()] == [r.id for r in newest_first]
    pages = [store.list_records(limit=10, offset=o) for o in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [r.id for p in pages for r in p] == [r.id for r in newest_first]
    assert store.list_records(offset=25) == []
    assert store.list_records(limit=0) == []
    assert store.list_records(limit=3, offset=1) == store.list_records()[1:4]

    in_a = [r.id for r in newest_first if r.scope in ("/a", "/a/b")]
    assert [r.id for r in store.list_records(scope_prefix="/a")] == in_a
    assert [r.id for r in store.list_records(scope_prefix="/a", limit=4, offset=2)] == in_a[2:6]
    assert [r.id for r in store.list_records(scope_prefix="/ab")] == [
        r.id for r in newest_first if r.scope == "/ab"
    ]
    assert store.list_records(scope_prefix="/zzz") == []
    for got, want in zip(store.list_records(), newest_first):
        assert_same(got, want)


@pytest.mark.parametrize("vector_type", ["float32", "float16"])
def test_list_records_pages_by_sort_equal_the_read_scripts(store_factory, raw, vector_type) -> None:
    """list_records reads pages with SORT_RO ... GET; the read script (used when the
    server refuses SORT_RO) gives the same pages: equal created_at (ties broken by id,
    as the scope's sorted set orders them), float16 and float32 vectors, a record whose
    hash is gone, odd ids."""
    by_sort = store_factory(vector_type=vector_type)
    by_script = store_factory(vector_type=vector_type)
    by_script._state.sort_page = False
    same_time = T0 + timedelta(days=3)
    records = [mk(f"t{i}", scope="/p", created=same_time) for i in range(6)]
    records += [mk(rid, scope="/p/q", metadata={"k": rid}) for rid in ("x*y", "a->b", "#", "é ü", "z")]
    by_sort.save(records)
    raw.delete(by_sort.keys.rec("z"))  # left in the scope's sorted set: skipped by both
    for scope, limit, offset in [(None, 200, 0), ("/p", 4, 0), ("/p", 4, 4), ("/p/q", 2, 1), ("/p", 5, 10), ("/none", 3, 0)]:
        want = by_script.list_records(scope, limit=limit, offset=offset)
        got = by_sort.list_records(scope, limit=limit, offset=offset)
        assert [r.id for r in got] == [r.id for r in want], (scope, limit, offset)
        for a, b in zip(got, want):
            assert_same(a, b)
    assert by_sort._state.sort_page and not by_script._state.sort_page
    ids = [r.id for r in by_sort.list_records("/p", limit=6, offset=0)]
    assert ids[-6:] == sorted(ids[-6:], reverse=True) and "z" not in ids
    for got in by_sort.list_records("/p/q"):
        assert_same(got, next(r for r in records if r.id == got.id))


def test_count(store: ValkeyStore) -> None:
    assert store.count() == 0
    store.save(_tree_data())
    assert store.count() == 8
    assert store.count(None) == 8
    assert store.count("/") == 8
    assert store.count("") == 8
    assert store.count("/a") == 5
    assert store.count("/a/b") == 3
    assert store.count("/a/b/c") == 1
    assert store.count("/ab") == 1
    assert store.count("/e") == 1
    assert store.count("/e/f") == 1
    assert store.count("/nope") == 0


def test_get_scope_info(store: ValkeyStore) -> None:
    data = _tree_data()
    store.save(data)
    created = {r.id: r.created_at for r in data}

    info = store.get_scope_info("/a")
    assert isinstance(info, ScopeInfo)
    assert info.path == "/a"
    assert info.record_count == 5
    assert info.categories == ["x", "y", "z"]
    assert info.oldest_record == created["a"]
    assert info.newest_record == created["ad"]
    assert info.child_scopes == ["/a/b", "/a/d"]

    root = store.get_scope_info("/")
    assert root.record_count == 8
    assert root.categories == ["q", "r", "x", "y", "z"]
    assert root.oldest_record == min(created.values())
    assert root.newest_record == max(created.values())
    assert root.child_scopes == ["/a", "/ab", "/e"]

    deep = store.get_scope_info("/e/f/")
    assert (deep.path, deep.record_count, deep.child_scopes) == ("/e/f", 1, ["/e/f/g"])
    assert deep.oldest_record == deep.newest_record == created["e"]

    leaf = store.get_scope_info("/a/b/c")
    assert (leaf.record_count, leaf.categories, leaf.child_scopes) == (1, [], [])

    empty = store.get_scope_info("/nothing/here")
    assert empty.path == "/nothing/here"
    assert empty.record_count == 0
    assert empty.categories == []
    assert empty.oldest_record is None and empty.newest_record is None
    assert empty.child_scopes == []


def test_get_scope_info_of_empty_store(store: ValkeyStore) -> None:
    info = store.get_scope_info("/")
    assert (info.path, info.record_count, info.categories, info.child_scopes) == ("/", 0, [], [])
    assert info.oldest_record is None and info.newest_record is None


def test_list_scopes(store: ValkeyStore) -> None:
    assert store.list_scopes() == []
    store.save(_tree_data())
    assert store.list_scopes() == ["/a", "/ab", "/e"]
    assert store.list_scopes("/") == ["/a", "/ab", "/e"]
    assert store.list_scopes("/a") == ["/a/b", "/a/d"]
    assert store.list_scopes("/a/") == ["/a/b", "/a/d"]
    assert store.list_scopes("/a/b") == ["/a/b/c"]
    assert store.list_scopes("/a/b/c") == []
    assert store.list_scopes("/e") == ["/e/f"]
    assert store.list_scopes("/e/f") == ["/e/f/g"]
    assert store.list_scopes("/nope") == []


def test_list_categories(store: ValkeyStore) -> None:
    assert store.list_categories() == {}
    store.save(_tree_data() + [mk("dup", scope="/a/d", categories=["y", "y", "w"])])
    assert store.list_categories() == {"r": 1, "x": 4, "y": 3, "z": 1, "q": 1, "w": 1}
    assert store.list_categories("/") == store.list_categories()
    assert store.list_categories("/a") == {"x": 2, "y": 3, "z": 1, "w": 1}
    assert store.list_categories("/a/b") == {"x": 1, "z": 1}
    assert store.list_categories("/a/b/c") == {}
    assert store.list_categories("/ab") == {"x": 1}
    assert store.list_categories("/e/f/g") == {"q": 1, "x": 1}
    assert store.list_categories("/nope") == {}


# ============================================================================ update
def test_update_moves_scope_and_categories(store: ValkeyStore, raw: Any) -> None:
    moving = mk("m", scope="/a/x", categories=["c1", "c2"], seed=11)
    stay = mk("s", scope="/a/y", categories=["c1"], seed=12)
    store.save([moving, stay])
    original_embedding = store.get_record("m").embedding

    moved = moving.model_copy(
        update={"scope": "/b/z", "categories": ["c3"], "embedding": None, "content": "moved"}
    )
    store.update(moved)

    got = store.get_record("m")
    assert (got.scope, got.categories, got.content) == ("/b/z", ["c3"], "moved")
    assert got.embedding == original_embedding  # kept: the update carried none
    assert store.count() == 2
    assert store.count("/a") == 1
    assert store.count("/a/x") == 0
    assert store.count("/b") == 1
    assert store.count("/b/z") == 1
    assert store.list_categories() == {"c1": 1, "c3": 1}
    assert store.list_categories("/a") == {"c1": 1}
    assert store.list_categories("/b") == {"c3": 1}
    assert store.list_scopes() == ["/a", "/b"]
    assert store.list_scopes("/a") == ["/a/y"]
    assert store.list_scopes("/b") == ["/b/z"]
    assert store.get_scope_info("/a").child_scopes == ["/a/y"]
    assert store.get_scope_info("/a/x").record_count == 0

    query = moving.embedding
    assert "m" not in id_set(everything(store, query, scope_prefix="/a"))
    assert "m" not in id_set(everything(store, query, categories=["c2"]))
    hits = store.search(query, scope_prefix="/b", limit=5)
    assert ids(hits) == ["m"]
    assert hits[0][1] == pytest.approx(1.0, abs=tol(store))
    assert ids(store.search(query, categories=["c3"], limit=5)) == ["m"]
    ns = store.keys.namespace
    assert not raw.exists(f"{{{ns}}}:tree:/a/x", f"{{{ns}}}:cats:/a/x", f"{{{ns}}}:children:/a/x")


def test_update_with_embedding_replaces_vector(store: ValkeyStore) -> None:
    store.save([mk("u", seed=1), mk("v", seed=2)])
    new = mk("u", seed=3)
    store.update(new)
    assert_same(store.get_record("u"), new)
    hits = store.search(vec(3), limit=1)
    assert ids(hits) == ["u"] and hits[0][1] == pytest.approx(1.0, abs=tol(store))
    assert store.count() == 2


def test_update_missing_id_without_embedding_writes_nothing(store: ValkeyStore, raw: Any) -> None:
    ghost = mk("ghost", scope="/g", categories=["c"], embedding=None)
    with pytest.raises(ValidationError, match="ghost"):
        store.update(ghost)
    assert store.get_record("ghost") is None
    assert ns_keys(raw, store) == []

    store.save([mk("real", scope="/g", categories=["c"])])
    before = ns_keys(raw, store)
    with pytest.raises(ValidationError):
        store.update(ghost)
    assert ns_keys(raw, store) == before
    assert store.count("/g") == 1
    assert store.list_categories() == {"c": 1}


def test_update_of_missing_id_with_embedding_inserts_it(store: ValkeyStore) -> None:
    rec = mk("new", scope="/n", categories=["k"])
    store.update(rec)
    assert_same(store.get_record("new"), rec)
    assert store.count("/n") == 1
    assert store.list_categories() == {"k": 1}


def test_update_changing_created_at_reorders(store: ValkeyStore) -> None:
    a, b, c = mk("a", scope="/o"), mk("b", scope="/o"), mk("c", scope="/o")
    store.save([a, b, c])
    assert [r.id for r in store.list_records("/o")] == ["c", "b", "a"]
    newest = c.created_at + timedelta(days=1)
    store.update(a.model_copy(update={"created_at": newest, "embedding": None}))
    assert [r.id for r in store.list_records("/o")] == ["a", "c", "b"]
    info = store.get_scope_info("/o")
    assert (info.oldest_record, info.newest_record) == (b.created_at, newest)
    assert store.delete(older_than=c.created_at) == 1  # only b is older than c now
    assert sorted(r.id for r in store.list_records()) == ["a", "c"]


# ============================================================================ idempotent save
def test_save_same_ids_twice_is_idempotent(store: ValkeyStore) -> None:
    data = _tree_data()
    store.save(data)
    state = (
        store.count(),
        store.list_categories(),
        store.list_scopes(),
        store.list_categories("/a"),
    )
    store.save(data)
    store.save(data[:3])
    assert (
        store.count(),
        store.list_categories(),
        store.list_scopes(),
        store.list_categories("/a"),
    ) == state
    assert store.count("/a") == 5

    replaced = mk("ab1", scope="/z", categories=["new"], content="replaced", seed=5)
    store.save([replaced])
    assert_same(store.get_record("ab1"), replaced)
    assert store.count() == 8
    assert store.count("/a/b") == 2
    assert store.count("/z") == 1
    assert store.list_categories()["x"] == 3
    assert store.list_categories()["new"] == 1
    assert ids(store.search(vec(5), limit=1)) == ["ab1"]


def test_save_rejects_duplicate_ids_in_one_batch(store: ValkeyStore) -> None:
    with pytest.raises(ValidationError, match="dup"):
        store.save([mk("dup"), mk("other"), mk("dup")])
    assert store.count() == 0


def test_save_empty_batch_is_a_no_op(store: ValkeyStore, raw: Any) -> None:
    store.save([])
    assert ns_keys(raw, store) == []


@pytest.mark.parametrize(
    "rid", ["a:b", "x y", "{tag}", "é/日/🙂", "*", "-1", "a,b|c", "rec:nested:id", "\\"]
)
def test_unusual_ids(store: ValkeyStore, rid: str) -> None:
    rec = mk(rid, scope="/u", categories=["k"], seed=77)
    store.save([rec, mk("plain", scope="/u", seed=78)])
    assert_same(store.get_record(rid), rec)
    hits = store.search(vec(77), limit=1)
    assert ids(hits) == [rid]
    assert (hits[0][0].content, hits[0][0].scope) == (rec.content, "/u")
    store.touch_records([rid])
    assert store.delete(record_ids=[rid]) == 1
    assert store.get_record(rid) is None
    assert store.count("/u") == 1 and store.list_categories() == {}


def test_batches_larger_than_the_write_chunk(store_factory: Any, raw: Any) -> None:
    store = store_factory(batch_size=3)
    rows = [mk(f"b{i:02d}", scope=["/x", "/y/z"][i % 2], categories=["k"]) for i in range(10)]
    with pytest.raises(ValidationError, match="records\\[10\\]"):
        store.save(rows + [mk("bad", scope="")])
    assert ns_keys(raw, store) == []
    store.save(rows)
    assert store.count() == 10 and store.count("/y") == 5
    assert store.list_categories() == {"k": 10}
    assert len(everything(store)) == 10
    store.save(rows)  # again, across chunks: still exact
    assert store.count() == 10 and store.list_categories("/x") == {"k": 5}
    assert store.delete(categories=["k"]) == 10
    assert [k for k in ns_keys(raw, store) if not k.endswith(":meta")] == []


# ============================================================================ delete
def _delete_data() -> list[Any]:
    rows = []
    scopes = ["/a", "/a/b", "/ab", "/c", "/"]
    for i in range(20):
        rows.append(
            mk(
                f"d{i:02d}",
                scope=scopes[i % 5],
                categories=[["x"], ["y"], ["x", "y"], []][i % 4],
                metadata={"m": i % 3, "even": i % 2 == 0},
                created=T0 + timedelta(days=i),
                seed=i,
            )
        )
    return rows


def _assert_indexes_match(store: ValkeyStore, remaining: list[Any]) -> None:
    """Counts, categories and scopes agree with the records that remain."""
    assert store.count() == len(remaining)
    scopes = {"/", "/a", "/a/b", "/ab", "/c"}
    for scope in scopes:
        inside = [
            r
            for r in remaining
            if scope == "/" or r.scope == scope or r.scope.startswith(scope + "/")
        ]
        assert store.count(scope) == len(inside), scope
        cats: dict[str, int] = {}
        for r in inside:
            for c in set(r.categories):
                cats[c] = cats.get(c, 0) + 1
        assert store.list_categories(scope) == cats, scope
    assert store.list_scopes() == sorted(
        {"/" + r.scope.split("/")[1] for r in remaining if r.scope != "/"}
    )
    assert {r.id for r in store.list_records(limit=1000)} == {r.id for r in remaining}


def _in(scope: str, prefix: str) -> bool:
    return prefix == "/" or scope == prefix or scope.startswith(prefix + "/")


DELETE_CASES: list[tuple[str, dict[str, Any], Any]] = [
    ("ids", {"record_ids": ["d01", "d02", "d02", "missing"]}, lambda r: r.id in ("d01", "d02")),
    ("scope", {"scope_prefix": "/a"}, lambda r: _in(r.scope, "/a")),
    ("scope-ab", {"scope_prefix": "/ab"}, lambda r: r.scope == "/ab"),
    ("categories", {"categories": ["y"]}, lambda r: "y" in r.categories),
    ("categories-any", {"categories": ["x", "nope"]}, lambda r: "x" in r.categories),
    (
        "older_than",
        {"older_than": T0 + timedelta(days=7)},
        lambda r: r.created_at < T0 + timedelta(days=7),
    ),
    (
        "older_than-aware",
        {
            "older_than": (T0 + timedelta(days=3))
            .replace(tzinfo=timezone.utc)
            .astimezone(timezone(timedelta(hours=-5)))
        },
        lambda r: r.created_at < T0 + timedelta(days=3),
    ),
    ("metadata", {"metadata_filter": {"m": 1}}, lambda r: r.metadata["m"] == 1),
    (
        "metadata-2keys",
        {"metadata_filter": {"m": 0, "even": True}},
        lambda r: r.metadata["m"] == 0 and r.metadata["even"],
    ),
    ("metadata-float", {"metadata_filter": {"m": 2.0}}, lambda r: r.metadata["m"] == 2),
    (
        "scope+categories",
        {"scope_prefix": "/a", "categories": ["x"]},
        lambda r: _in(r.scope, "/a") and "x" in r.categories,
    ),
    (
        "ids+scope",
        {"record_ids": ["d00", "d01", "d02", "d05", "d06"], "scope_prefix": "/a"},
        lambda r: r.id in ("d00", "d01", "d02", "d05", "d06") and _in(r.scope, "/a"),
    ),
    (
        "ids+older_than",
        {"record_ids": ["d00", "d04", "d09", "d15"], "older_than": T0 + timedelta(days=9)},
        lambda r: r.id in ("d00", "d04", "d09", "d15") and r.created_at < T0 + timedelta(days=9),
    ),
    (
        "ids+categories",
        {"record_ids": ["d00", "d01", "d02", "d03"], "categories": ["y"]},
        lambda r: r.id in ("d00", "d01", "d02", "d03") and "y" in r.categories,
    ),
    (
        "categories+metadata+older_than",
        {
            "categories": ["x"],
            "metadata_filter": {"even": True},
            "older_than": T0 + timedelta(days=12),
        },
        lambda r: (
            "x" in r.categories and r.metadata["even"] and r.created_at < T0 + timedelta(days=12)
        ),
    ),
    (
        "scope+metadata",
        {"scope_prefix": "/a/b", "metadata_filter": {"m": 0}},
        lambda r: _in(r.scope, "/a/b") and r.metadata["m"] == 0,
    ),
    (
        "scope+older_than",
        {"scope_prefix": "/a", "older_than": T0 + timedelta(days=10)},
        lambda r: _in(r.scope, "/a") and r.created_at < T0 + timedelta(days=10),
    ),
    ("nothing-matches", {"scope_prefix": "/nope"}, lambda r: False),
    # keep_scope: what memworker.crewai's forget/reset use to spare the LangGraph items
    ("keep-a", {"keep_scope": "/a"}, lambda r: not _in(r.scope, "/a")),
    ("scope-a-keep-a/b", {"scope_prefix": "/a", "keep_scope": "/a/b"},
     lambda r: _in(r.scope, "/a") and not _in(r.scope, "/a/b")),
    ("scope-inside-kept", {"scope_prefix": "/a/b", "keep_scope": "/a"}, lambda r: False),
    ("keep-a-spares-ab", {"categories": ["x"], "keep_scope": "/a"},
     lambda r: "x" in r.categories and not _in(r.scope, "/a")),
    ("ids-keep-a", {"record_ids": ["d00", "d01", "d02", "d03"], "keep_scope": "/a"},
     lambda r: r.id in ("d02", "d03")),
    ("empty-id-list", {"record_ids": []}, lambda r: False),
    ("no-criteria", {}, lambda r: True),
]


@pytest.mark.parametrize("name,kwargs,predicate", DELETE_CASES, ids=[c[0] for c in DELETE_CASES])
def test_delete(store: ValkeyStore, name: str, kwargs: dict[str, Any], predicate: Any) -> None:
    data = _delete_data()
    store.save(data)
    doomed = {r.id for r in data if predicate(r)}
    assert store.delete(**kwargs) == len(doomed)
    remaining = [r for r in data if r.id not in doomed]
    _assert_indexes_match(store, remaining)
    for r in data:
        assert (store.get_record(r.id) is None) == (r.id in doomed), r.id
    assert id_set(everything(store)) == {r.id for r in remaining}
    # deleting again finds nothing
    assert store.delete(**kwargs) == 0


# ============================================================================ touch
def test_touch_records(store: ValkeyStore, raw: Any) -> None:
    a, b = mk("a", scope="/t"), mk("b", scope="/t")
    store.save([a, b])
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    store.touch_records(["a", "missing"])
    after = datetime.now(timezone.utc).replace(tzinfo=None)

    got = store.get_record("a")
    slack = timedelta(seconds=1)  # clock granularity between this process and the stamp
    assert before - slack <= got.last_accessed <= after + slack
    assert got.last_accessed > a.last_accessed
    assert got.created_at == a.created_at
    assert_same(store.get_record("b"), b)
    assert store.get_record("missing") is None
    assert not raw.exists(f"{store.keys.prefix}:rec:missing")
    assert store.count() == 2 and store.count("/t") == 2
    store.touch_records([])
    store.touch_records(["nobody"])
    assert store.count() == 2
    # the touched record is still found by search, with its new last_accessed
    [(hit, _)] = store.search(a.embedding, limit=1)
    assert hit.id == "a" and hit.last_accessed == got.last_accessed


# ============================================================================ reset
def test_reset_scope(store: ValkeyStore) -> None:
    store.save(_tree_data())
    store.reset("/a")
    assert store.count() == 3
    assert store.count("/a") == 0
    assert store.count("/ab") == 1
    assert store.list_scopes() == ["/ab", "/e"]
    assert store.list_categories() == {"r": 1, "x": 2, "q": 1}
    assert id_set(everything(store)) == {"root", "AB", "e"}
    with pytest.raises(EmbeddingDimensionMismatchError):
        store.save([mk("other-dim", embedding=vec(1, dim=5))])  # the dimension is kept


def test_reset_of_root_path_is_a_full_reset(store: ValkeyStore, raw: Any) -> None:
    store.save(_tree_data())
    store.reset("/")
    assert store.count() == 0 and ns_keys(raw, store) == []
    store.save([mk("five", embedding=vec(1, dim=5))])
    assert store.count() == 1


def test_full_reset_clears_index_entries_whose_record_is_gone(store: ValkeyStore, raw: Any) -> None:
    """A record hash evicted (maxmemory policy) or deleted by hand leaves its ids in
    the side indexes, where the delete script cannot unindex them: a full reset still
    finishes and leaves no key of the namespace (it looped for ever before)."""
    store.save(_tree_data())
    gone = [r.id for r in _tree_data() if r.scope.startswith("/a")][:3]
    raw.delete(*[store.keys.rec(i) for i in gone])
    store.reset()
    assert store.count() == 0 and store.list_scopes() == [] and store.list_categories() == {}
    assert ns_keys(raw, store) == []
    store.save([mk("after")])
    assert store.count() == 1 and store.count("/a") == 0


def test_reset_all_forgets_the_dimension(store_factory: Any, raw: Any) -> None:
    store = store_factory()
    other = store_factory()
    store.save(_tree_data())
    assert ids(other.search(vec(1), limit=1))  # `other` caches the dimension and index
    store.reset()
    assert store.count() == 0
    assert store.list_categories() == {} and store.list_scopes() == []
    assert ns_keys(raw, store) == []
    assert other.search(vec(1)) == []

    # a different dimension is accepted now, also through a store that knew the old one
    five = mk("five", scope="/v", embedding=vec(3, dim=5))
    other.save([five])
    assert_same(store.get_record("five"), five)
    for s in (store, other):
        hits = s.search(vec(3, dim=5), limit=5)
        assert ids(hits) == ["five"] and hits[0][1] == pytest.approx(1.0, abs=tol(s))
        with pytest.raises(EmbeddingDimensionMismatchError):
            s.search(vec(3))
        with pytest.raises(EmbeddingDimensionMismatchError):
            s.save([mk("eight")])
    assert store.count() == 1


# ============================================================================ dimension guard
def test_dimension_guard(store_factory: Any, raw: Any) -> None:
    store = store_factory()
    store.save([mk("a"), mk("b")])
    with pytest.raises(EmbeddingDimensionMismatchError) as err:
        store.save([mk("c", embedding=vec(1, dim=5))])
    assert "8-dimensional" in str(err.value) and "5-dimensional" in str(err.value)
    assert (err.value.stored_dim, err.value.new_dim) == (8, 5)
    assert isinstance(err.value, ValidationError)
    assert store.count() == 2 and store.get_record("c") is None

    with pytest.raises(EmbeddingDimensionMismatchError):
        store.search(vec(1, dim=5))
    with pytest.raises(EmbeddingDimensionMismatchError):
        store.update(mk("a", embedding=vec(1, dim=5)))
    assert (
        store.get_record("a").embedding is not None and len(store.get_record("a").embedding) == DIM
    )

    second = store_factory()  # a fresh object: must learn the dimension from the server
    with pytest.raises(EmbeddingDimensionMismatchError) as err2:
        second.save([mk("d", embedding=vec(1, dim=12))])
    assert "8-dimensional" in str(err2.value) and "12-dimensional" in str(err2.value)
    third = store_factory()
    with pytest.raises(EmbeddingDimensionMismatchError):
        third.search(vec(1, dim=12))
    assert store.count() == 2


def test_dimension_guard_with_a_stale_cached_dimension(store_factory: Any) -> None:
    """The server-side check: `other` still believes in 5 dimensions after a reset
    done elsewhere and a new 8-dimensional store; its 5-dimensional save must fail
    with the dimension error (not a raw server error) and write nothing."""
    store = store_factory()
    other = store_factory()
    other.save([mk("five", embedding=vec(1, dim=5))])
    store.reset()
    store.save([mk("eight")])
    with pytest.raises(EmbeddingDimensionMismatchError) as err:
        other.save([mk("five-again", embedding=vec(2, dim=5))])
    assert (err.value.stored_dim, err.value.new_dim) == (8, 5)
    assert store.count() == 1 and store.get_record("five-again") is None


def test_expected_vector_dim(store_factory: Any) -> None:
    pinned = store_factory(vector_dim=DIM)
    with pytest.raises(EmbeddingDimensionMismatchError):
        pinned.save([mk("five", embedding=vec(1, dim=5))])
    assert pinned.count() == 0
    pinned.save([mk("eight")])
    assert pinned.count() == 1
    other = store_factory(vector_dim=5)  # the server holds 8: every vector op refuses
    with pytest.raises(EmbeddingDimensionMismatchError):
        other.save([mk("five", embedding=vec(1, dim=5))])
    with pytest.raises(EmbeddingDimensionMismatchError):
        other.search(vec(1, dim=5))
    assert pinned.count() == 1


def test_constructor_rejects_bad_options(server: Any) -> None:
    from memworker import ConfigError

    for kwargs in ({"vector_dim": 0}, {"vector_dim": -3}, {"batch_size": 0}, {"batch_size": 10**6}):
        with pytest.raises(ConfigError):
            ValkeyStore(server.url, namespace="x", **kwargs)
    with pytest.raises(ConfigError, match="namespace"):
        ValkeyStore(server.url, namespace="bad ns")


def test_mixed_dimension_batch_writes_nothing(store: ValkeyStore, raw: Any) -> None:
    with pytest.raises(EmbeddingDimensionMismatchError) as err:
        store.save([mk("a"), mk("b"), mk("c", embedding=vec(1, dim=5))])
    assert "8" in str(err.value) and "5" in str(err.value)
    assert store.count() == 0
    assert ns_keys(raw, store) == []
    # and no dimension was recorded: a 5-dimensional store is still possible
    store.save([mk("d", embedding=vec(1, dim=5))])
    assert store.count() == 1


# ============================================================================ bad input
def _bad(field: str, **changes: Any) -> tuple[str, dict[str, Any]]:
    return field, changes


BAD_INPUT = {
    "nan": _bad("embedding", embedding=[1.0, float("nan")] + [0.0] * (DIM - 2)),
    "inf": _bad("embedding", embedding=[1.0, float("inf")] + [0.0] * (DIM - 2)),
    "metadata-set": _bad("metadata", metadata={"tags": {1, 2}}),
    "metadata-object": _bad("metadata", metadata={"o": object()}),
    "metadata-nan": _bad("metadata", metadata={"x": float("nan")}),
    "scope-empty": _bad("scope", scope=""),
    "scope-double-slash": _bad("scope", scope="/a//b"),
    "scope-control-char": _bad("scope", scope="/a\nb"),
    "importance": _bad("importance", importance=1.5),
    "importance-negative": _bad("importance", importance=-0.1),
    "category-empty": _bad("categories", categories=["ok", ""]),
    "id-empty": _bad("id", id=""),
    "id-too-long": _bad("id", id="x" * 257),
    "id-surrogate": _bad("id", id="bad\ud800"),
    "content-too-large": _bad("content", content="x" * ((1 << 20) + 1)),
    "content-surrogate": _bad("content", content="half \ud800 a pair"),
    "scope-too-long": _bad("scope", scope="/" + "s" * 1024),
    "scope-surrogate": _bad("scope", scope="/a/\udfff"),
    "too-many-categories": _bad("categories", categories=[f"c{i}" for i in range(65)]),
    "category-too-long": _bad("categories", categories=["c" * 257]),
    "category-surrogate": _bad("categories", categories=["\ud800"]),
    "metadata-too-large": _bad("metadata", metadata={"big": "x" * (64 * 1024)}),
    "metadata-surrogate": _bad("metadata", metadata={"k": "\ud800"}),
    "source-surrogate": _bad("source", source="\ud800"),
    "embedding-nan-only": _bad("embedding", embedding=[float("nan")] * DIM),
    "embedding-text": _bad("embedding", embedding="0.0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_raises_and_writes_nothing(store: ValkeyStore, raw: Any, case: str) -> None:
    field, changes = BAD_INPUT[case]
    bad = mk("bad", scope="/s", categories=["c"])
    for name, value in changes.items():
        object.__setattr__(bad, name, value)  # bypass pydantic: the store must check
    with pytest.raises(ValidationError) as err:
        store.save([mk("good1", scope="/s", categories=["c"]), mk("good2"), bad])
    assert f"records[2].{field}" in str(err.value)
    assert store.count() == 0
    assert store.list_categories() == {}
    assert ns_keys(raw, store) == []


# ============================================================================ async twins
def test_async_twins_give_the_same_answers(store: ValkeyStore) -> None:
    data = _tree_data()
    query = vec(4242)

    async def main() -> None:
        await store.asave(data)
        assert await store.acount() == store.count() == 8
        assert await store.acount("/a") == store.count("/a") == 5
        sync_hits = store.search(query, limit=20, min_score=-1.0)
        async_hits = await store.asearch(query, limit=20, min_score=-1.0)
        assert ids(async_hits) == ids(sync_hits)
        # With a module, a search answers on the exact path while FT.INFO says the new
        # index is still building, then on FT.SEARCH: the two searches may take one
        # path each, and a float16 namespace's scores differ by ~1e-4 between them
        assert [s for _, s in async_hits] == pytest.approx([s for _, s in sync_hits], abs=2e-3)
        assert ids(
            await store.asearch(
                query, scope_prefix="/a", categories=["x"], limit=20, min_score=-1.0
            )
        ) == ids(store.search(query, scope_prefix="/a", categories=["x"], limit=20, min_score=-1.0))
        assert_same(await store.aget_record("ab1"), data[2])
        assert await store.aget_record("missing") is None
        assert [r.id for r in await store.alist_records("/a", limit=2, offset=1)] == [
            r.id for r in store.list_records("/a", limit=2, offset=1)
        ]
        assert await store.aget_scope_info("/a") == store.get_scope_info("/a")
        assert await store.alist_scopes("/a") == store.list_scopes("/a") == ["/a/b", "/a/d"]
        assert await store.alist_categories("/a") == store.list_categories("/a")

        await store.aupdate(data[1].model_copy(update={"scope": "/moved", "embedding": None}))
        assert store.get_record("a").scope == "/moved"
        assert await store.acount("/a") == 4

        await store.atouch_records(["ab1", "missing"])
        assert store.get_record("ab1").last_accessed > data[2].last_accessed
        assert store.get_record("missing") is None

        assert await store.adelete(scope_prefix="/a/b") == 3
        assert store.count() == 5
        await store.areset("/e")
        assert await store.acount() == 4
        await store.areset()
        assert await store.acount() == 0
        assert await store.asearch(query) == []
        await store.aclose()

    asyncio.run(main())
    # a second event loop gets its own client
    asyncio.run(_async_count_then_close(store))


async def _async_count_then_close(store: ValkeyStore) -> None:
    assert await store.acount() == 0
    await store.aclose()


# ============================================================================ key hygiene
def test_side_index_keys_are_gone_after_everything_is_deleted(store: ValkeyStore, raw: Any) -> None:
    ns = store.keys.namespace
    data = _delete_data() + _tree_data()
    store.save(data)
    store.update(mk("d03", scope="/moved/deep", categories=["m1", "m2"], embedding=None))
    store.save([mk("d04", scope="/else/where", categories=["k"])])
    store.touch_records(["d05"])
    assert store.delete(record_ids=["d00", "d01"]) == 2
    assert store.delete(scope_prefix="/a/b") > 0
    assert store.delete(categories=["x"]) > 0
    store.reset("/moved")
    assert store.delete(metadata_filter={"m": 1}) > 0
    assert store.delete(older_than=T0 + timedelta(days=365 * 100)) > 0
    remaining = store.count()
    assert store.delete() == remaining
    assert store.count() == 0
    left = [k for k in ns_keys(raw, store) if k != f"{{{ns}}}:meta"]
    assert left == []


def test_reads_do_not_scan(server: Any, namespace: str, store: ValkeyStore) -> None:
    """The reads run as an ACL user refused every keyspace scan (``SCAN``, ``KEYS``,
    ``HSCAN``, ``SSCAN``, ``ZSCAN``): a read that scanned would fail with ``NOPERM``. The
    refusal is this test's own connection's, so nothing else on the shared server can
    make it pass or fail (the server's ``commandstats`` counted every client's scans)."""
    import valkey

    store.save(_tree_data())
    ports = server.ports if isinstance(server, ThrowawayCluster) else [server.port]
    user, password = f"noscan{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rules = ["on", f">{password}", "~*", "&*", "+@all", "-scan", "-keys", "-hscan", "-sscan", "-zscan"]
    nodes = [valkey.Valkey(host="127.0.0.1", port=p) for p in ports]
    for node in nodes:
        node.execute_command("ACL", "SETUSER", user, *rules)
    url = server.url.replace("://", f"://{user}:{password}@", 1)
    reader = ValkeyStore(url, namespace=namespace, search_mode="module" if server.module else "exact")
    try:
        refused = valkey.Valkey(host="127.0.0.1", port=ports[0], username=user, password=password)
        with pytest.raises(valkey.exceptions.NoPermissionError):  # the rule holds
            refused.scan(0)
        refused.close()
        assert id_set(reader.search(vec(1), scope_prefix="/a", categories=["x"]))
        assert reader.list_records("/a")
        assert reader.count("/a") > 0
        assert reader.get_scope_info("/a").record_count > 0
        assert reader.list_scopes("/a")
        assert reader.list_categories("/a")
        assert reader.get_record("a") is not None
    finally:
        reader.close()
        for node in nodes:
            node.execute_command("ACL", "DELUSER", user)
            node.close()


# ============================================================================ module == exact
def test_module_and_exact_paths_agree(plain_server: Any, module_server: Any) -> None:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    exact = ValkeyStore(plain_server.url, namespace=namespace, search_mode="exact")
    # float32 on both sides: the same vectors, so the same ranking to the last digit
    # (float16 rounding could swap near ties); float16 has its own tests.
    module = ValkeyStore(
        module_server.url, namespace=namespace, search_mode="module", vector_type="float32"
    )
    try:
        rng = np.random.default_rng(99)
        rows = [
            mk(
                f"q{i:03d}",
                scope=["/p", "/p/q", "/pq", "/r/s", "/"][i % 5],
                categories=[["x"], ["y"], ["x", "y"], [], ["z"]][int(rng.integers(5))],
                metadata={"m": int(rng.integers(3)), "flag": bool(rng.integers(2))},
                source=["s1", "s2", None][i % 3],
                private=bool(i % 7 == 0),
                seed=1000 + i,
            )
            for i in range(120)
        ]
        exact.save(rows)
        module.save(rows)
        queries = [vec(5000 + j) for j in range(4)]
        filters: list[dict[str, Any]] = [
            {},
            {"scope_prefix": "/p"},
            {"categories": ["x", "z"]},
            {"metadata_filter": {"m": 1, "flag": True}},
            {"source": "s1", "include_private": False, "viewer": "s1"},
            {"scope_prefix": "/p", "categories": ["y"], "include_private": False},
            {"min_score": 0.3},
        ]
        for q in queries:
            for flt in filters:
                for limit in (1, 7, 200):
                    a = exact.search(q, limit=limit, **flt)
                    b = module.search(q, limit=limit, **flt)
                    assert ids(a) == ids(b), (flt, limit)
                    assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)
                    for (ra, _), (rb, _) in zip(a, b):
                        assert_same(rb, ra)
    finally:
        for s in (exact, module):
            s.reset()
            s.close()


def test_round_trip_of_control_characters_and_unicode_through_the_write_script(
    store: ValkeyStore,
) -> None:
    """Text fields travel to the write script as one JSON argument: NUL, control
    characters, line separators, quotes, backslashes and astral characters survive."""
    weird = 'a\x00b\x01c\u2028d\ud7ff\U0001f642 "q" \\ / é'
    cls = record_types()[0]
    record = cls(
        content=weird, scope="/x/é 🙂", categories=[weird],
        metadata={"k": weird, "n": [1, 2.5, None]}, source=weird, embedding=[0.1, 0.2, 0.3],
    )  # fmt: skip
    store.save([record])
    got = store.get_record(record.id)
    assert (got.content, got.categories, got.metadata, got.source, got.scope) == (
        weird, [weird], record.metadata, weird, "/x/é 🙂",
    )  # fmt: skip
    assert store.list_categories() == {weird: 1}


# ============================================================================ records without an embedding
# CrewAI's LanceDB and Qdrant-edge backends store a record whose embedding is missing or
# empty as a zero vector (its EncodingFlow saves embedding=None for a text that embeds to
# nothing): memworker stores such records without an embedding. They are counted, listed,
# read, updated and deleted like any other and never returned by a vector search.
NO_EMBEDDING = {"none": None, "empty": [], "zeros": [0.0] * DIM}


@pytest.mark.parametrize("kind", list(NO_EMBEDDING))
def test_record_without_embedding_is_stored_but_never_searched(
    store: ValkeyStore, raw: Any, kind: str
) -> None:
    empty = NO_EMBEDDING[kind]
    bare = mk("bare", scope="/n/a", categories=["c"], metadata={"k": 1}, embedding=empty)
    store.save([mk("real", scope="/n/a", categories=["c"], metadata={"k": 1}), bare])
    got = store.get_record("bare")
    assert_same(got, bare, embedding=False)
    assert got.embedding is None
    assert store.count() == 2 and store.count("/n") == 2
    assert [r.id for r in store.list_records("/n")] == ["real", "bare"]  # newest first
    assert store.list_records("/n")[1].embedding is None
    assert store.list_categories("/n") == {"c": 2}
    assert store.get_scope_info("/n").record_count == 2
    assert not raw.hexists(store.keys.rec("bare"), "embedding")
    for kw in ({}, {"scope_prefix": "/n"}, {"categories": ["c"]}, {"metadata_filter": {"k": 1}}):
        assert ids(everything(store, vec(7), **kw)) == ["real"], kw
    assert ids(everything(store, store.get_record("real").embedding)) == ["real"]

    # update keeping no embedding (None keeps what is stored: nothing)
    store.update(bare.model_copy(update={"content": "moved", "scope": "/m", "embedding": None}))
    assert store.get_record("bare").content == "moved" and store.get_record("bare").embedding is None
    assert store.count("/m") == 1 and ids(everything(store, vec(7))) == ["real"]
    # gain a real embedding, then lose it again ([] or zeros: no embedding)
    gained = bare.model_copy(update={"scope": "/m", "embedding": vec(5)})
    store.update(gained)
    assert_same(store.get_record("bare"), gained)
    hits = store.search(vec(5), limit=1)
    assert ids(hits) == ["bare"] and hits[0][1] == pytest.approx(1.0, abs=tol(store))
    store.update(bare.model_copy(update={"scope": "/m", "embedding": empty if empty is not None else []}))
    assert store.get_record("bare").embedding is None
    assert ids(everything(store, vec(5))) == ["real"]
    # a real record updated to none
    store.update(store.get_record("real").model_copy(update={"embedding": [0.0] * DIM}))
    assert store.get_record("real").embedding is None
    assert everything(store, vec(5)) == []
    assert store.count() == 2

    assert store.delete(record_ids=["bare"]) == 1
    assert store.count() == 1 and store.get_record("bare") is None
    assert store.delete(scope_prefix="/n") == 1
    assert store.count() == 0


def test_records_without_embedding_do_not_set_the_dimension(store_factory: Any, raw: Any) -> None:
    store = store_factory()
    store.save([mk("a", embedding=None), mk("b", embedding=[])])
    assert store.count() == 2
    assert store.search(vec(1), limit=5) == []
    assert raw.hget(f"{store.keys.prefix}:meta", "dim") is None
    # the first real vector sets it, whatever its dimension
    store.save([mk("c", embedding=vec(1, dim=5))])
    assert ids(store.search(vec(1, dim=5), limit=5)) == ["c"]
    store.save([mk("d", embedding=None)])
    with pytest.raises(EmbeddingDimensionMismatchError):
        store.save([mk("e", embedding=[0.0] * DIM)])  # zeros keep their dimension: 8 is not 5
    assert store.count() == 4


def test_zero_vectors_are_checked_against_the_dimension(store_factory: Any, raw: Any) -> None:
    store = store_factory()
    store.save([mk("a", embedding=[0.0] * 4)])  # like LanceDB: zeros of 4 make a 4-dim store
    assert store.count() == 1
    with pytest.raises(EmbeddingDimensionMismatchError):
        store.save([mk("b")])
    with pytest.raises(EmbeddingDimensionMismatchError):
        store.save([mk("c", embedding=[0.0] * 4), mk("d", embedding=[0.0] * 5)])
    store.save([mk("e", embedding=[1.0, 0.0, 0.0, 0.0]), mk("f", embedding=None)])
    assert ids(store.search([1.0, 0.0, 0.0, 0.0], limit=5)) == ["e"]
    assert store.count() == 3
    assert sorted(r.id for r in store.list_records()) == ["a", "e", "f"]


@pytest.mark.parametrize(
    "embedding, message",
    [
        ([1.0, float("nan")] + [0.0] * (DIM - 2), "non-finite"),
        ([0.0, float("inf")] + [0.0] * (DIM - 2), "non-finite"),
        ([float("nan")] * DIM, "non-finite"),
        ("zeros", "sequence of numbers"),
    ],
)
def test_non_finite_embeddings_stay_errors(store: ValkeyStore, raw: Any, embedding: Any, message: str) -> None:
    bad = mk("bad")
    object.__setattr__(bad, "embedding", embedding)
    with pytest.raises(ValidationError, match=rf"records\[1\]\.embedding.*{message}"):
        store.save([mk("good", embedding=None), bad])
    with pytest.raises(ValidationError, match=message):
        store.update(bad)
    assert ns_keys(raw, store) == []


def test_a_new_index_is_built_with_the_settings_hnsw_build_effort(
    store_factory: Any, server: Any, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EF_CONSTRUCTION of a namespace's index: MEMWORKER_HNSW_EF_CONSTRUCTION (128 by
    default), or the store's argument; bad values are refused before anything is
    written. Without a module there is no index and the setting changes nothing."""
    from memworker import ConfigError

    def built_with(store: ValkeyStore) -> int | None:
        store.save([mk("a", seed=1)])
        if not server.module:
            return None
        node = raw.get_node_from_key(store.keys.index) if hasattr(raw, "get_node_from_key") else None
        info = raw.execute_command("FT.INFO", store.keys.index, **({"target_nodes": node} if node else {}))
        attributes = next(a for a in info[info.index(b"attributes") + 1] if a[1] == b"embedding")
        return int(attributes[attributes.index(b"ef_construction") + 1])

    expect = (lambda n: n) if server.module else (lambda n: None)
    default = store_factory()
    assert built_with(default) == expect(128)
    default.reset()
    monkeypatch.setenv("MEMWORKER_HNSW_EF_CONSTRUCTION", "64")
    from_env = store_factory()
    assert from_env.settings.hnsw_ef_construction == 64
    assert built_with(from_env) == expect(64)
    from_env.reset()
    assert built_with(store_factory(hnsw_ef_construction=300)) == expect(300)
    for bad in ({"hnsw_ef_construction": 0}, {"hnsw_m": "16 EF_RUNTIME"}, {"hnsw_ef_runtime": 5000}):
        with pytest.raises(ConfigError, match=rf"{next(iter(bad))} .*from 1 to 4096"):
            store_factory(**bad)
