"""Hostile review of TENANCY and namespace/key isolation of memworker.langgraph.QueuedStore
(a review of 2026-12-06), on real servers and real in-process workers (the fixtures of
test_langgraph.py).

An attacker (an LLM choosing them) controls namespace labels, keys, values, filters
and queries. What must hold:

- two different (namespace, key) pairs never reach one record, and a read, search,
  list, delete or TTL refresh in one namespace never touches another's item
  (prefix-siblings ``("us",)``/``("users",)``, ``("a", "b")``/``("a/b",)``,
  percent-encoded look-alikes, unicode look-alikes, ``*`` labels): checked against
  LangGraph's own ``InMemoryStore`` as the oracle;
- hostile filters match, on both search paths, exactly what the documented (JSON)
  semantics match;
- two ``QueuedStore`` objects of different memworker namespaces on one server are
  fully apart;
- CrewAI's API never deletes LangGraph items (docs/guarantees.md §4, docs/crewai.md
  "Sharing a namespace with LangGraph").

Defects proven (each failed before its fix, session 31): a CrewAI retention policy on
``/`` (or one set under ``/langgraph``) made the workers' sweep delete LangGraph items,
``ttl=None`` ones too; a numpy bool in a filter matched the number 1 or 0, not the bool.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import PutOp  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder, lg, make_store, settings, worker  # noqa: E402,F401

from memworker import worker as worker_mod  # noqa: E402
from memworker.errors import ValidationError  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402
from memworker.settings import Settings  # noqa: E402

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

# Namespaces whose encoded forms, JSON forms or prefixes look alike. LangGraph refuses
# "." and NUL in a label and a "langgraph" root label; everything else is fair game.
NAMESPACES: list[tuple[str, ...]] = [
    ("a",), ("a", "b"), ("a", "b", "c"), ("a/b",), ("a/b", "c"), ("a", "b/c"),
    ("a%2Fb",), ("a%252Fb",), ("a%2fb",), ("a\\b",), ("a b",), ("a+b",), ("ab",),
    ("A",), ("\uff41",), ("a\u200b",), ("\u00e9",), ("e\u0301",),
    ("*",), ("a*",), ("a", "*"), ("*", "b"), ("{a}",), ("a:b",), ("a|b",), ("a,b",),
    ("a\nb",), ("a\x01b",), (" ",), ("a", " "), ("\t",), ("%",), ("%25",), ("%zz",), ("~",), ("-",), ("_",),
    ("us",), ("users",), ("u",), ("u", "sers"), ("users", "u1"), ("users", "u10"),
    ("x" * 200,), ("x" * 199,), ("a", "langgraph"), ("\U0001f642",),
    ('["a"]',), ('a"', "b"), ("a", '"b'),
]  # fmt: skip
# Keys that look like labels, JSON fragments of record_id's text, or each other.
KEYS = ["k", "b", "a/b", '"],"k', '["a","b"],"k"', "*", "K", "k "]
# Prefixes searched and listed (some were never a namespace, some are ones of a string
# but not of a label).
PREFIXES: list[tuple[str, ...]] = sorted(set(NAMESPACES)) + [
    (), ("a", "b", "c", "d"), ("use",), ("user",), ("x" * 100,), ("a%",), ("a%2F",),
    ("\uff41", "b"), ("e",), ("%2",),
]


def _pairs() -> list[tuple[tuple[str, ...], str]]:
    # every namespace with two keys, rotating through KEYS (the first one always "k")
    out = []
    for i, ns in enumerate(NAMESPACES):
        out.append((ns, "k"))
        out.append((ns, KEYS[1 + i % (len(KEYS) - 1)]))
    return out


def _found(items) -> set[tuple[tuple[str, ...], str, int]]:
    return {(tuple(i.namespace), i.key, i.value["i"]) for i in items}


# ----------------------------------------------------------------------------- 1. collisions
def test_look_alike_namespaces_and_keys_never_share_a_record_against_the_oracle(lg):
    """Every (namespace, key) pair is its own item: get, search (with and without a
    query, every prefix), list_namespaces and delete give exactly what LangGraph's
    InMemoryStore gives for the same puts."""
    oracle = InMemoryStore()
    pairs = _pairs()
    ops = [PutOp(ns, key, {"text": "apple", "i": i}) for i, (ns, key) in enumerate(pairs)]
    lg.batch(ops)
    oracle.batch(ops)
    for ns, key in pairs:
        got, want = lg.get(ns, key), oracle.get(ns, key)
        assert (got.namespace, got.key, got.value) == (want.namespace, want.key, want.value), (ns, key)
    # near misses of a stored pair are nothing
    for ns, key in [(("a", "b"), "a/b"), (("a/b",), "k "), (("a", "b"), "K"), (("A",), "b"), (("a",), "k\x00")]:
        assert (lg.get(ns, key) is None) == (oracle.get(ns, key) is None), (ns, key)
    for prefix in PREFIXES:
        want = _found(oracle.search(prefix, limit=1000))
        assert _found(lg.search(prefix, limit=1000)) == want, prefix
        assert _found(lg.search(prefix, query="apple", limit=1000)) == want, prefix
    assert lg.list_namespaces(limit=1000) == oracle.list_namespaces(limit=1000)
    # delete one key of each of a few look-alikes: only that pair goes
    gone = [(("a", "b"), "k"), (("a/b",), "k"), (("us",), "k"), (("*",), "k"), (("\u00e9",), "k")]
    for ns, key in gone:
        lg.delete(ns, key)
        oracle.delete(ns, key)
    for ns, key in pairs:
        assert (lg.get(ns, key) is None) == ((ns, key) in gone), (ns, key)
    for prefix in PREFIXES:
        assert _found(lg.search(prefix, limit=1000)) == _found(oracle.search(prefix, limit=1000)), prefix


LIST_CASES: list[dict] = [
    {"prefix": ("a",)}, {"prefix": ("a", "*")}, {"prefix": ("*",)}, {"prefix": ("*", "b")},
    {"prefix": ("a*",)}, {"prefix": ("a/b",)}, {"prefix": ("a%2Fb",)}, {"prefix": ("us",)},
    {"prefix": ("user",)}, {"prefix": ("users", "*")}, {"prefix": ("*", "*", "*")},
    {"suffix": ("b",)}, {"suffix": ("*",)}, {"suffix": ("b", "c")}, {"suffix": ("sers",)},
    {"suffix": ("*", "c")}, {"prefix": ("a",), "suffix": ("c",)}, {"prefix": ("a", "b"), "suffix": ("b",)},
    {"max_depth": 1}, {"max_depth": 2, "prefix": ("a",)}, {"max_depth": 1, "suffix": ("*",)},
    {"prefix": ("a",), "limit": 2, "offset": 1}, {"prefix": ("*",), "limit": 3, "offset": 5},
    {"prefix": ("users",), "max_depth": 1}, {"prefix": ("x" * 200,)}, {"prefix": ("x" * 199,)},
    {"prefix": ("\uff41",)}, {"prefix": ("e\u0301",)}, {"prefix": ("a\x01b",)},
]  # fmt: skip


def test_list_namespaces_with_hostile_labels_and_wildcards_matches_the_oracle(lg):
    """Labels that are ``*`` themselves, contain ``*``, ``/``, ``%`` or look alike:
    every prefix/suffix/max_depth/limit/offset combination lists exactly what
    InMemoryStore lists, never a namespace outside the prefix."""
    oracle = InMemoryStore()
    ops = [PutOp(ns, "k", {"text": "apple", "i": i}) for i, ns in enumerate(NAMESPACES)]
    lg.batch(ops)
    oracle.batch(ops)
    for case in LIST_CASES:
        kw = dict(case)
        kw.setdefault("limit", 1000)
        assert lg.list_namespaces(**kw) == oracle.list_namespaces(**kw), case


# ----------------------------------------------------------------------------- 2. TTL, delete
def test_refresh_and_delete_in_one_namespace_never_touch_a_prefix_sibling(make_store):
    """A get or search that refreshes TTLs, and a delete, in ``("a",)`` leave the items
    of ``("a", "b")``, ``("ab",)`` and ``("a/b",)`` (same key) as they were: their
    expiries are not moved, they are not deleted."""
    store = make_store(ttl={"default_ttl": 10, "refresh_on_read": True})
    siblings = [("a", "b"), ("ab",), ("a/b",), ("a%2Fb",), ("A",)]
    store.put(("a",), "k", {"text": "apple", "i": 0})
    for i, ns in enumerate(siblings, 1):
        store.put(ns, "k", {"text": "apple", "i": i})
    ids = [record_id(ns, "k") for ns in siblings]
    assert store.get(("a",), "k", refresh_ttl=False) is not None  # committed
    before = store.store.expiries(ids)
    assert all(e is not None for e in before)
    time.sleep(0.05)
    store.get(("a",), "k")  # refreshes ("a",) "k" only
    store.search(("ab",), filter={"i": 99})  # matches nothing: refreshes nothing
    store.search(("a", "b", "c"))
    store.search(("a",), filter={"i": 0}, query="apple")  # ("a",) k only
    assert store.store.expiries(ids) == before
    store.delete(("a",), "k")
    assert store.get(("a",), "k") is None
    for i, ns in enumerate(siblings, 1):
        assert store.get(ns, "k", refresh_ttl=False).value["i"] == i, ns
    assert sorted(store.list_namespaces()) == sorted(siblings)


# ----------------------------------------------------------------------------- 3. filters
# Items whose fields differ only in type or in how they would be encoded.
FILTER_ROWS = {
    "int1": {"text": "apple", "v": 1, "f": "x"},
    "float1": {"text": "apple", "v": 1.0},
    "true": {"text": "apple", "v": True},
    "false": {"text": "apple", "v": False},
    "zero": {"text": "apple", "v": 0},
    "negzero": {"text": "apple", "v": -0.0},
    "str1": {"text": "apple", "v": "1"},
    "null": {"text": "apple", "v": None},
    "missing": {"text": "apple"},
    "list": {"text": "apple", "v": [1, "a", {"b": 1, "c": 2}]},
    "dict": {"text": "apple", "v": {"b": 1, "c": [True]}},
    "big": {"text": "apple", "v": 2**60 + 1},
    "inj": {"text": "apple", "v": "@v:{1} | -@v:{x} *"},
    "dollar": {"text": "apple", "$eq": 1, "$or": [1], "": 5, "a.b": 7, "key": "kk", "ttl": 3, "=v": 9},
}


FILTERS = [
    ({"v": 1}, {"int1", "float1"}),
    ({"v": 1.0}, {"int1", "float1"}),
    ({"v": True}, {"true"}),
    ({"v": False}, {"false"}),
    ({"v": 0}, {"zero", "negzero"}),
    ({"v": -0.0}, {"zero", "negzero"}),
    ({"v": "1"}, {"str1"}),
    ({"v": None}, {"null"}),
    ({"v": {"$eq": None}}, {"null"}),
    ({"v": [1, "a", {"c": 2, "b": 1}]}, {"list"}),  # object key order does not matter
    ({"v": [1.0, "a", {"b": 1, "c": 2.0}]}, {"list"}),
    ({"v": [True, "a", {"b": 1, "c": 2}]}, set()),
    ({"v": {"b": 1}}, {"dict"}),  # a nested dict condition is matched field by field
    ({"v": {"c": [True]}}, {"dict"}),
    ({"v": {"c": [1]}}, set()),
    ({"v": 2**60}, set()),
    ({"v": 2**60 + 1}, {"big"}),
    ({"v": float(2**60)}, set()),
    ({"v": "@v:{1} | -@v:{x} *"}, {"inj"}),
    ({"v": "@v:{1}"}, set()),
    ({"v": {"$gt": 0}}, {"int1", "float1", "big"}),
    ({"v": {"$gte": 0, "$lt": 1}}, {"zero", "negzero"}),
    ({"v": {"$gt": False}}, set()),  # a bool is no number
    ({"v": {"$lt": "2"}}, {"str1"}),
    ({"v": {"$gt": float("-inf")}}, {"int1", "float1", "zero", "negzero", "big"}),
    ({"v": {"$lt": float("inf")}}, {"int1", "float1", "zero", "negzero", "big"}),
    ({"v": {"$ne": 1}}, set(FILTER_ROWS) - {"int1", "float1"}),
    ({"v": {"$ne": None}}, set(FILTER_ROWS) - {"null"}),
    ({"$eq": 1}, {"dollar"}),  # a top-level "$..." key is a field name
    ({"$or": [1]}, {"dollar"}),
    ({"": 5}, {"dollar"}),
    ({"a.b": 7}, {"dollar"}),
    ({"key": "kk"}, {"dollar"}),
    ({"ttl": 3}, {"dollar"}),
    ({"=v": 9}, {"dollar"}),
    ({"f": "x", "v": 1}, {"int1"}),
    ({"f": "x", "v": 1.0, "text": "apple"}, {"int1"}),
]


@pytest.mark.parametrize("flt, keys", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_hostile_filters_match_the_json_semantics_on_both_paths(lg, flt, keys):
    """Values that differ only by type (1, 1.0, True, "1"), -0.0, big ints, object
    key order, query-syntax text, and field names that are operators, empty, dotted
    or the store's own bookkeeping names: the search without a query, with one, and
    with a query nearer to other items all return exactly the documented matches."""
    for key, value in FILTER_ROWS.items():
        lg.put(("f",), key, value)
    lg.put(("f2",), "other", {"text": "apple", "v": 1})  # a sibling namespace: never
    assert {h.key for h in lg.search(("f",), filter=flt, limit=100)} == keys
    assert {h.key for h in lg.search(("f",), query="apple", filter=flt, limit=100)} == keys
    assert {h.key for h in lg.search(("f",), query="harbor engine", filter=flt, limit=100)} == keys


@pytest.mark.parametrize("value", [np.True_, np.False_], ids=["np-true", "np-false"])
def test_a_numpy_bool_filter_value_is_a_bool_not_a_number(lg, value):
    """docs/langgraph.md: "Comparisons are JSON's: ... ``true != 1``", and "a bool
    (numpy's too) is no number". A filter value that is a numpy bool (what pandas or
    numpy code hands over, as the docs say of numpy numbers) must match the items
    whose field is that bool, and never an item whose field is 1 or 0."""
    lg.put(("nb",), "one", {"text": "apple", "v": int(bool(value))})
    lg.put(("nb",), "bool", {"text": "apple", "v": bool(value)})
    for query in (None, "apple"):
        got = {h.key for h in lg.search(("nb",), query=query, filter={"v": value})}
        assert got == {"bool"}, (query, got)


# ----------------------------------------------------------------------------- 4. two namespaces
@pytest.fixture
def other_namespace(server, embedder):
    """A second memworker namespace on the same server, with its own worker."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    other = Settings.from_url(server.url, namespace=ns, search_mode="module" if server.module else "exact")
    ctx = worker_mod.running_worker(other, threads=2, min_backoff_ms=10, max_backoff_ms=50,
                                    max_retries=3, worker_timeout_ms=100)  # fmt: skip
    ctx.__enter__()
    yield other
    ctx.__exit__(None, None, None)


def test_two_stores_of_different_memworker_namespaces_are_fully_apart(lg, other_namespace):
    """The same LangGraph namespaces and keys in two memworker namespaces (one server):
    gets, searches (both paths), filters, list_namespaces, TTL refreshes and deletes
    of one never see or touch the other's items; a namespace's reset leaves the
    other's."""
    with QueuedStore(other_namespace, index={"dims": DIM, "fields": ["text"]},
                     ttl={"default_ttl": 10}) as b:  # fmt: skip
        a = lg
        for ns in [("users", "u1"), ("users", "u2"), ("shared",)]:
            a.put(ns, "k", {"text": "apple", "who": "A"}, ttl=10)
            b.put(ns, "k", {"text": "apple", "who": "B"})
        b.put(("only_b",), "k", {"text": "apple", "who": "B"})
        assert a.get(("users", "u1"), "k").value["who"] == "A"
        assert b.get(("users", "u1"), "k").value["who"] == "B"
        assert a.get(("only_b",), "k") is None
        assert {h.value["who"] for h in a.search((), limit=100)} == {"A"}
        assert {h.value["who"] for h in a.search((), query="apple", limit=100)} == {"A"}
        assert {h.value["who"] for h in b.search((), query="apple", filter={"who": "A"}, limit=100)} == set()
        assert a.search((), filter={"who": "B"}) == []
        assert ("only_b",) not in a.list_namespaces()
        assert ("only_b",) in b.list_namespaces()
        rid = record_id(("users", "u1"), "k")
        exp_b = b.store.expiries([rid])[0]
        time.sleep(0.05)
        a.get(("users", "u1"), "k")  # refreshes A's only
        assert b.store.expiries([rid])[0] == exp_b
        a.delete(("users", "u1"), "k")
        assert a.get(("users", "u1"), "k") is None
        assert b.get(("users", "u1"), "k").value["who"] == "B"
        b.delete(("shared",), "k")
        assert a.get(("shared",), "k").value["who"] == "A"
        b.store.reset()
        assert a.get(("users", "u2"), "k").value["who"] == "A"
        assert b.list_namespaces() == []
        assert sorted(a.list_namespaces()) == [("shared",), ("users", "u2")]


# ----------------------------------------------------------------------------- 5. cross-framework
def _queued_memory(settings, **kw):
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory
    from memworker.crewai.testing import StandInLLM
    from memworker.store.store import ValkeyStore

    class Words:  # CrewAI's embedder interface, never called here
        def __call__(self, texts):
            return [list(map(float, v)) for v in WordEmbedder().encode(list(texts))]

    return QueuedMemory(storage=ValkeyStore(settings), embedder=Words(), llm=StandInLLM(),
                        model_id="memworker-test-words", drain_timeout=60, **kw)  # fmt: skip


@pytest.mark.parametrize("how", ["constructor-root", "set_retention-root", "set_retention-langgraph"])
def test_a_crewai_retention_policy_never_deletes_langgraph_items(lg, settings, how):
    """docs/guarantees.md §4: "In a namespace shared with the LangGraph store (the
    default), CrewAI's API never writes, returns, updates or deletes its items (under
    ``/langgraph``)"; docs/crewai.md: ``forget`` and ``reset`` never delete them (a
    CrewAI ``reset()`` of the root keeps them; ``remember`` under ``/langgraph`` is
    refused). A retention policy set through CrewAI's ``QueuedMemory``
    (``retention={"/": 1}``, ``set_retention("/", 1)``, or
    ``set_retention("/langgraph/users", 1)``, a scope ``remember`` refuses) must
    not make the workers' sweep delete LangGraph items, and a ``ttl=None`` item
    "never expires" (docs/langgraph.md)."""
    lg.put(("users", "u1"), "pref", {"text": "likes green tea"}, ttl=None)
    assert lg.get(("users", "u1"), "pref") is not None
    memory = None
    try:
        try:
            if how == "constructor-root":
                memory = _queued_memory(settings, retention={"/": 1})
            else:
                memory = _queued_memory(settings)
                memory.set_retention("/" if how == "set_retention-root" else "/langgraph/users", 1)
        except ValidationError:
            return  # refused: fine
        # The workers' sweep, two days later (what running workers do every interval).
        lg.store.sweep(now_ms=int(time.time() * 1000) + 2 * 86_400_000)
        assert lg.get(("users", "u1"), "pref") is not None, (
            f"a CrewAI retention policy ({how}) deleted a LangGraph item put with ttl=None"
        )
    finally:
        if memory is not None:
            memory.store.set_retention("/langgraph/users" if how.endswith("langgraph") else "/", None)
            memory.close()
