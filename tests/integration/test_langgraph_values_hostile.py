"""What memworker.langgraph.QueuedStore stores and returns, against LangGraph's own
``InMemoryStore`` (the oracle), on real servers and real in-process workers (the
fixtures of test_langgraph.py). A review of the value round trip.

The rule each put is checked against (docs/langgraph.md, "How LangGraph's model maps
onto the store" and "Limits"): a value comes back from ``get`` and ``search`` exactly as
``InMemoryStore`` returns it (types, nesting and field order; the one documented JSON
round-trip difference: a tuple comes back as a list), or the put is refused at once
with memworker's ``ValidationError`` naming the put and its value. Never accepted and
then changed, lost, or failed in the worker (a dead letter, ``JobFailedError``), and
never another item corrupted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import time
import uuid
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import InvalidNamespaceError, PutOp  # noqa: E402
from langgraph.store.base.embed import get_text_at_path  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder, lg, make_store, settings, worker  # noqa: E402,F401

from memworker.errors import JobFailedError, ValidationError  # noqa: E402
from memworker.queue.admin import dead_list  # noqa: E402

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

NS = ("vals", "v")


# ----------------------------------------------------------------------------- helpers
def _json_expected(value: Any) -> Any:
    """What the docs promise back for a put value: the value, a tuple as a list."""
    if isinstance(value, tuple):
        return [_json_expected(v) for v in value]
    if isinstance(value, list):
        return [_json_expected(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_expected(v) for k, v in value.items()}
    return value


def diff(got: Any, want: Any, where: str = "value") -> str | None:
    """The first difference of ``got`` from ``want`` by type and value (``1`` vs
    ``1.0`` vs ``True``, ``-0.0`` vs ``0.0``, key types and field order), or None."""
    if type(want) is dict:
        if type(got) is not dict:
            return f"{where}: {type(got).__name__} for a dict"
        if list(got) != list(want) or [type(k) for k in got] != [type(k) for k in want]:
            return f"{where}: keys {list(got)[:6]!r} for {list(want)[:6]!r}"
        for k in want:
            d = diff(got[k], want[k], f"{where}[{k!r}]")
            if d:
                return d
        return None
    if type(want) is list:
        if type(got) is not list or len(got) != len(want):
            return f"{where}: {type(got).__name__} of {len(got) if hasattr(got, '__len__') else '?'} for a list of {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            d = diff(g, w, f"{where}[{i}]")
            if d:
                return d
        return None
    if type(want) is float:
        if type(got) is not float or got != want or math.copysign(1, got) != math.copysign(1, want):
            return f"{where}: {got!r} ({type(got).__name__}) for {want!r}"
        return None
    if type(want) in (int, str, bool, type(None)):
        if type(got) is not type(want) or got != want:
            return f"{where}: {str(got)[:40]!r} ({type(got).__name__}) for {str(want)[:40]!r} ({type(want).__name__})"
        return None
    # a subclass of a JSON type (IntEnum, a str enum, numpy's float64): its JSON round trip
    if got != want:
        return f"{where}: {got!r} for {want!r}"
    return None


def _oracle_value(namespace: tuple[str, ...], key: str, value: dict[str, Any]) -> Any:
    oracle = InMemoryStore()
    oracle.put(namespace, key, value)
    got = oracle.get(namespace, key)
    assert got is not None
    [hit] = oracle.search(namespace)
    assert hit.value == got.value
    return _json_expected(got.value)


def check_round_trip(store, namespace, key, value, *, index=None, must_accept: bool) -> str | None:
    """Put ``value`` and compare get and search with the oracle. Returns a problem or None.
    A refusal is fine unless ``must_accept`` (plain JSON within the documented limits)."""
    depth = store.queue.status()["depth"]
    kw = {} if index is None else {"index": index}
    try:
        store.put(namespace, key, value, **kw)
    except ValidationError as exc:
        if must_accept:
            return f"refused plain JSON within the limits: {exc}"
        if not str(exc).startswith(f"put of {key!r}") and "value" not in str(exc):
            return f"refused without naming the put or its value: {exc}"
        if store.queue.status()["depth"] != depth:
            return "refused, yet something was enqueued"
        return None
    except Exception as exc:  # noqa: BLE001 - what the review looks for
        return f"put raised {type(exc).__name__} (not memworker's ValidationError): {exc!s:.120}"
    want = _oracle_value(namespace, key, value)
    try:
        item = store.get(namespace, key)
        hits = [h for h in store.search(namespace, limit=100) if h.key == key]
    except JobFailedError as exc:
        return f"accepted, then failed in the worker: {exc!s:.200}"
    if item is None:
        return "accepted, then get returned None (lost)"
    d = diff(item.value, want)
    if d:
        return f"get changed it: {d}"
    if len(hits) != 1:
        return f"search found {len(hits)} items of the key"
    d = diff(hits[0].value, want)
    if d:
        return f"search changed it: {d}"
    return None


@dataclasses.dataclass
class Point:
    x: int = 1


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def _deep(levels: int) -> Any:
    """A value of ``levels`` levels: the value dict is level 1, each list one more."""
    inner: Any = "bottom"
    for _ in range(levels - 1):
        inner = [inner]
    return inner


# Plain JSON within the documented limits: must round-trip exactly.
PLAIN: list[tuple[str, Any]] = [
    ("int 2**63-1", 2**63 - 1), ("int 2**63", 2**63), ("int -2**63-1", -(2**63) - 1),
    ("int 2**64", 2**64), ("int 2**64+1", 2**64 + 1), ("int -2**64", -(2**64)),
    ("int 2**53+1", 2**53 + 1), ("int 10**30", 10**30), ("int 10**308", 10**308),
    ("-0.0", -0.0), ("1e308", 1e308), ("max float", 1.7976931348623157e308),
    ("5e-324", 5e-324), ("-5e-324", -5e-324), ("0.1+0.2", 0.1 + 0.2), ("1/3", 1 / 3),
    ("2.0**-1022", 2.0**-1022), ("float 1e16", 1e16), ("float 2**53+1", float(2**53 + 1)),
    ("float 1.0", 1.0), ("float 0.0", 0.0), ("float 123456789.12345678", 123456789.12345678),
    ("true", True), ("false", False), ("null", None), ("0", 0),
    ("empty dict", {}), ("empty list", []), ("empty string", ""),
    ("list of empties", [{}, [], "", None, 0, -0.0]),
    ("NUL", "\x00"), ("a NUL b", "a\x00b"), ("u2028", "line\u2028sep\u2029"), ("BOM", "\ufeffbom"),
    ("max code point", "\U0010ffff"), ("controls", "\x01\x1b[31m\x7f\x85"), ("quotes", '"\\/</script>'),
    ("noncharacter", "\ufffe\uffff"), ("combining", "e\u0301"),
    ("nested huge int", {"x": 10**400}), ("list of huge ints", [10**400, -(10**400)]),
    ("nested big ints", {"a": [2**64, {"b": -(2**70)}]}),
    ("int of 4300 digits nested", [10**4299]),
    ("mixed list", [1, 1.0, True, "1", None, [1], {"1": 1}]),
    ("large array", list(range(5000))),
    ("large float array", [i / 7 for i in range(2000)]),
    ("deep 31 levels", _deep(31)),
    ("dict with odd keys", {"": 1, ".": 2, "a.b": 3, "$": 4, "=x": 5, "\x00": 6, "*": 7, "{": 8, "}": 9,
                            "/": 10, ":": 11, "\u2028": 12, "\ufeff": 13, "key": 14, "ttl": 15}),
    ("field order kept", {"z": 1, "a": 2, "m": 3}),
]  # fmt: skip

# Not JSON, or past a documented limit: InMemoryStore accepts each; QueuedStore may
# refuse it (ValidationError naming the put) or keep it exactly, nothing else.
NOT_JSON: list[tuple[str, Any]] = [
    ("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf")), ("nested nan", [float("nan")]),
    ("nested inf", {"x": float("inf")}),
    ("lone surrogate", "\ud800"), ("lone low surrogate", "a\udfffb"), ("nested lone surrogate", ["\udbff"]),
    ("datetime", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)), ("date", dt.date(2024, 1, 1)),
    ("bytes", b"abc"), ("bytearray", bytearray(b"x")), ("set", {1, 2}), ("frozenset", frozenset({1})),
    ("Decimal", decimal.Decimal("1.1")), ("complex", 1j), ("object", object()), ("dataclass", Point()),
    ("uuid", uuid.UUID(int=1)), ("enum", Color.RED), ("numpy int64", np.int64(3)),
    ("numpy float32", np.float32(1.5)), ("numpy array", np.arange(3)),
    ("tuple", (1, "a")), ("nested tuple", {"t": (1, (2, 3))}),
    ("IntEnum", Level.HIGH), ("numpy float64", np.float64(2.5)),
    ("int of 4301 digits nested", [10**4300]),
    ("deep 33 levels", _deep(33)),
    ("nested tuple key", {(1, 2): "x"}),
]  # fmt: skip


def _pydantic_model() -> Any:
    pydantic = pytest.importorskip("pydantic")

    class M(pydantic.BaseModel):
        a: int = 1

    return M()


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("indexed", [False, True], ids=["save-path", "encode-path"])
def test_plain_json_values_round_trip_exactly(make_store, settings, indexed):
    """Each plain JSON value within the documented limits, under a value field: get and
    search return it exactly as InMemoryStore does (ints past 2**63 and 2**64, -0.0,
    5e-324, NUL, U+2028, a BOM, empty containers, 31 levels deep...)."""
    store = make_store()
    problems = []
    for i, (name, v) in enumerate(PLAIN):
        value = {"text": f"apple {i}", "v": v} if indexed else {"v": v}
        problem = check_round_trip(store, NS, f"k{i}", value, must_accept=True)
        if problem:
            problems.append(f"{name}: {problem}")
    # nothing put earlier was changed by a later put (another item corrupted)
    for i, (name, v) in enumerate(PLAIN):
        item = store.get(NS, f"k{i}")
        value = {"text": f"apple {i}", "v": v} if indexed else {"v": v}
        if item is None or diff(item.value, _json_expected(value)):
            problems.append(f"{name}: changed after later puts")
    assert dead_list(settings) == []
    assert not problems, "\n".join(problems)


def test_extreme_values_as_whole_top_level_fields(make_store, settings):
    """Numbers and strings as top-level value fields (they get range and filter tokens),
    and as the whole of a field's list."""
    store = make_store()
    value = {
        "i63": 2**63, "i64": 2**64 + 1, "neg": -(2**64) - 1, "big": 10**308, "mz": -0.0, "tiny": 5e-324,
        "max": 1.7976931348623157e308, "fl": 0.1 + 0.2, "nul": "\x00", "ls": "\u2028", "bom": "\ufeff",
        "e": {}, "l": [], "s": "", "n": None, "t": True, "f": False, "z": 0, "one": 1.0,
    }  # fmt: skip
    problem = check_round_trip(store, NS, "top", value, must_accept=True)
    assert problem is None, problem
    # the filters on them find it (the tokens stored are of the stored value)
    for field in ("i63", "i64", "neg", "big", "mz", "tiny", "max", "fl", "nul", "ls", "bom", "s", "n", "t", "z", "one"):
        got = [h.key for h in store.search(NS, filter={field: value[field]})]
        assert got == ["top"], (field, value[field])
    assert [h.key for h in store.search(NS, filter={"i64": {"$gt": 2**64}})] == ["top"]
    assert [h.key for h in store.search(NS, filter={"tiny": {"$gt": 0}})] == ["top"]
    assert store.search(NS, filter={"mz": {"$lt": 0}}) == []
    assert dead_list(settings) == []


def test_non_json_values_are_refused_at_put_or_kept_exactly(make_store, settings):
    """NaN, inf, lone surrogates, datetime, bytes, set, Decimal, objects, pydantic
    models, non-string keys inside a value, past 32 levels: InMemoryStore keeps each.
    QueuedStore may refuse the put (ValidationError naming it) but must never accept
    one and hand back something else, lose it, or fail in the worker."""
    store = make_store()
    problems = []
    cases = NOT_JSON + [("pydantic model", _pydantic_model())]
    for indexed in (False, True):
        for i, (name, v) in enumerate(cases):
            value = {"text": f"apple {i}", "v": v} if indexed else {"v": v}
            problem = check_round_trip(store, NS, f"n{indexed:d}{i}", value, must_accept=False)
            if problem:
                problems.append(f"{name} ({'indexed' if indexed else 'unindexed'}): {problem}")
    assert dead_list(settings) == []
    assert not problems, "\n".join(problems)


NESTED_KEYS = [
    ("int key", {1: "x"}), ("bool key", {True: "x"}), ("None key", {None: "x"}), ("float key", {1.5: "x"}),
    ("int and str keys that collide", {1: "int", "1": "str"}), ("int key in a list", [{2: "y"}]),
]  # fmt: skip


@pytest.mark.parametrize("indexed", [False, True], ids=["save-path", "encode-path"])
def test_non_string_keys_inside_a_value_are_refused_not_turned_into_strings(make_store, settings, indexed):
    """A dict inside a value with int, bool, None or float keys: InMemoryStore keeps
    them as they are. JSON turns them into strings ({1: "int", "1": "str"} even loses
    one entry). A top-level one is refused ("field names must be strings"); the docs
    promise a value comes back exactly as put, so a nested one must be refused too,
    not accepted and handed back changed."""
    store = make_store()
    problems = []
    for i, (name, v) in enumerate(NESTED_KEYS):
        value = {"text": f"apple {i}", "v": v} if indexed else {"v": v}
        problem = check_round_trip(store, NS, f"nk{i}", value, must_accept=False)
        if problem:
            problems.append(f"{name}: {problem}")
    assert dead_list(settings) == []
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "value",
    [
        {1: "x"}, {(1, 2): "x"}, {None: 1}, {True: 1},
        {"ok": 1, 2: "x"},
        {"v": float("nan")}, {"v": float("inf")}, {"v": 10**400}, {"\ud800": 1}, {"v": "\udc00"},
    ],
    ids=["int-key", "tuple-key", "none-key", "bool-key", "mixed-keys", "nan", "inf", "int-past-float64",
         "surrogate-field", "surrogate-value"],
)  # fmt: skip
def test_top_level_values_langgraph_accepts_are_refused_at_put_naming_it(lg, value):
    """A top-level value InMemoryStore accepts but JSON or the range tokens cannot hold:
    ValidationError at the put, naming it and its value; nothing enqueued."""
    oracle = InMemoryStore()
    oracle.put(NS, "k", value)
    assert oracle.get(NS, "k").value == value or value.get("v") != value.get("v")  # NaN != NaN
    depth = lg.queue.status()["depth"]
    with pytest.raises(ValidationError, match=r"^(put of 'k': value|value of 'k')"):
        lg.put(NS, "k", value, index=False)
    with pytest.raises(ValidationError, match=r"^(put of 'k': value|value of 'k')"):
        lg.put(NS, "k", {**value, "text": "apple"})
    assert lg.queue.status()["depth"] == depth
    assert lg.get(NS, "k") is None


def test_a_whole_empty_value_round_trips(lg, settings):
    """``{}`` is a value (InMemoryStore keeps it): stored, returned as ``{}``, listed."""
    problem = check_round_trip(lg, NS, "empty", {}, must_accept=True)
    assert problem is None, problem
    assert lg.list_namespaces() == [NS]
    assert dead_list(settings) == []


# ----------------------------------------------------------------------------- overwrites
def test_the_same_key_put_with_other_types_keeps_only_the_latest(lg, settings):
    """A key put again with the field as another JSON type (1, 1.0, "1", True, null,
    [1], {"1": 1}), then without it: get returns the latest exactly, and a filter on an
    earlier value (stale tokens) no longer finds it on either search path."""
    versions = [1, 1.0, "1", True, None, [1], {"1": 1}, 2**64, -0.0, "x"]
    for i, v in enumerate(versions):
        value = {"text": "apple", "v": v, f"only{i}": i}
        lg.put(NS, "k", value)
        item = lg.get(NS, "k")
        assert diff(item.value, value) is None, (v, diff(item.value, value))
        for query in (None, "apple"):
            assert [h.key for h in lg.search(NS, query=query, filter={"v": v})] == ["k"], (v, query)
            assert [h.key for h in lg.search(NS, query=query, filter={f"only{i}": i})] == ["k"]
            if i:
                assert lg.search(NS, query=query, filter={f"only{i - 1}": i - 1}) == [], (v, query)
    lg.put(NS, "k", {"text": "apple", "w": "x"})
    for query in (None, "apple"):
        for flt in ({"v": "x"}, {"v": {"$gte": 0}}, {"v": {"$lt": "z"}}, {"only9": 9}):
            assert lg.search(NS, query=query, filter=flt) == [], (flt, query)
    assert lg.get(NS, "k").value == {"text": "apple", "w": "x"}
    # a number that became a string is out of a numeric range (stale range tokens)
    lg.put(NS, "r", {"n": 5}, index=False)
    lg.put(NS, "r", {"n": "5"}, index=False)
    assert lg.search(NS, filter={"n": {"$gt": 1}}) == []
    assert lg.search(NS, filter={"n": 5}) == []
    assert dead_list(settings) == []


def test_delete_then_put_is_a_new_item_and_timestamps_follow_the_docs(lg):
    """docs/langgraph.md "Times": created_at is the first put's, updated_at the latest
    put's. A read (with a TTL refresh) changes neither; a put after a delete is a new item
    (its own created_at)."""
    lg.put(NS, "k", {"text": "apple"}, ttl=60)
    first = lg.get(NS, "k")
    time.sleep(0.02)
    again = lg.get(NS, "k")  # refresh_ttl: True by default
    [hit] = lg.search(NS)
    assert (again.created_at, again.updated_at) == (first.created_at, first.updated_at)
    assert (hit.created_at, hit.updated_at) == (first.created_at, first.updated_at)
    assert first.updated_at == first.created_at
    time.sleep(0.02)
    lg.put(NS, "k", {"text": "banana", "n": 2}, ttl=60)
    second = lg.get(NS, "k")
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    lg.delete(NS, "k")
    assert lg.get(NS, "k") is None
    time.sleep(0.02)
    lg.put(NS, "k", {"x": 1}, index=False)
    third = lg.get(NS, "k")
    assert third.value == {"x": 1}
    assert third.created_at > second.updated_at
    assert third.updated_at == third.created_at
    for t in (first.created_at, second.updated_at, third.created_at):
        assert t.utcoffset() == dt.timedelta(0)


# ----------------------------------------------------------------------------- keys, labels
KEYS = ["k", "k\x00", "k ", "k/", "k*", "k.", "k:", "{k}", "*", ".", "/", ":", "{", "}", "\x00", "\ufeff",
        "\u2028", "\U0001f642", "K", "k" * 4096, "e\u0301", "\u00e9", "%", "%00", "k\x00x"]  # fmt: skip
LABELS = ["a", "a:b", "a/b", "a*", "*", "{", "}", "{a}", "%", "%2F", "\u2028", "\ufeff", "\U0001f642",
          "a ", " ", "x" * 40, "a%00", "a\x01", "\x7f"]  # fmt: skip


def test_prefix_like_keys_and_labels_stay_apart(lg, settings):
    """Keys and labels that look like other keys' prefixes, with NUL, ``.``/``/``/``:``,
    braces, ``*``, unicode: each item keeps its own value (no two share a record) and
    get, search and list_namespaces answer as InMemoryStore does."""
    oracle = InMemoryStore()
    puts = []
    for i, key in enumerate(KEYS):
        puts.append((("keys",), key, {"i": i, "key": key}))
    for j, label in enumerate(LABELS):
        puts.append(((label,), "k", {"j": j, "label": label}))
        puts.append((("p", label), "k\x00", {"j": j, "nested": label}))
    lg.batch([PutOp(ns, k, v, index=False) for ns, k, v in puts])
    for ns, k, v in puts:
        oracle.put(ns, k, v)
    for ns, k, v in puts:
        got = lg.get(ns, k)
        assert got is not None and got.value == v and got.key == k and got.namespace == ns, (ns, k)
    assert lg.get(("keys",), "k\x00x\x00") is None and lg.get(("a",), "k\x00") is None
    for ns in {ns for ns, _, _ in puts}:
        got = sorted((h.key, str(h.value)) for h in lg.search(ns, limit=100))
        want = sorted((h.key, str(h.value)) for h in oracle.search(ns, limit=100))
        assert got == want, ns
    assert sorted(lg.list_namespaces(limit=1000)) == sorted(oracle.list_namespaces(limit=1000))
    for prefix in [("p",), ("a",), ("*",), ("p", "*"), ("a\x01",), ("x" * 40,)]:
        got = lg.list_namespaces(prefix=prefix, limit=1000)
        assert got == oracle.list_namespaces(prefix=prefix, limit=1000), prefix
        assert [h.key for h in lg.search(prefix, limit=100)] != [] or oracle.search(prefix) == [], prefix
    for suffix in [("a",), ("*",), ("\x7f",)]:
        assert lg.list_namespaces(suffix=suffix, limit=1000) == oracle.list_namespaces(suffix=suffix, limit=1000)
    assert dead_list(settings) == []


@pytest.mark.parametrize("labels", [("",), ("a", ""), ("a.b",), ("langgraph",), (), ("a\x00",), ("\x00",)])
def test_labels_langgraph_refuses_are_refused(lg, labels):
    """Empty labels, ``.``, NUL, the reserved root, no label: refused by both stores."""
    with pytest.raises((InvalidNamespaceError, ValidationError)):
        InMemoryStore().put(labels, "k", {"v": 1})
    with pytest.raises((InvalidNamespaceError, ValidationError)):
        lg.put(labels, "k", {"v": 1})


def test_keys_past_the_documented_limits_are_validation_errors(lg):
    """docs: keys any non-empty string of at most 4,096 characters of valid unicode."""
    depth = lg.queue.status()["depth"]
    for key in ("", "k" * 4097, "\ud800", "a\udfff"):
        with pytest.raises(ValidationError):
            lg.put(NS, key, {"v": 1})
    assert lg.queue.status()["depth"] == depth


# ----------------------------------------------------------------------------- index paths
def _embed_fn(texts: list[str]) -> list[list[float]]:
    return WordEmbedder().encode(list(texts)).tolist()


INDEX_CASES = [
    ("dollar", ["$"], {"a": "apple", "n": 10**30, "z": "\x00\u2028"}),
    ("wildcard list", ["a.b[*]"], {"a": {"b": ["apple", "banana"]}}),
    ("last element", ["l[-1]"], {"l": ["dog", "apple"]}),
    ("top [-1] on a dict", ["[-1]"], {"l": ["apple"]}),
    ("multi field", ["{a,b}"], {"a": "apple", "b": "cherry", "c": "dog"}),
    ("star", ["*"], {"a": "apple", "b": 2**64}),
    ("huge nested int", ["v[0]"], {"v": [10**400]}),
    ("NUL text", ["t"], {"t": "apple\x00banana"}),
    ("empty list", ["l[*]"], {"l": []}),
    ("number leaf", ["n"], {"n": -0.0}),
    ("bool leaf", ["b"], {"b": True}),
    ("dict leaf", ["d"], {"d": {"apple": 1, "z": [1.5]}}),
]  # fmt: skip


@pytest.mark.parametrize("name,fields,value", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_index_paths_into_extreme_values_embed_what_in_memory_store_embeds(make_store, settings, name, fields, value):
    """A put's index paths (``$``, ``a.b[*]``, ``[-1]``, ``{a,b}``, ``*``) into such a
    value: the value comes back exactly; a query search returns the item when the
    paths hold a text (``get_text_at_path``; ``$`` the whole value, as the docs say:
    InMemoryStore reads a per-put ``"$"`` as a field named "$"), with InMemoryStore's
    score when it is one text, and not when they hold none (documented: a query
    returns embedded items only)."""
    store = make_store(index={"dims": DIM, "fields": ["text"]})
    oracle = InMemoryStore(index={"dims": DIM, "embed": _embed_fn, "fields": ["text"]})
    store.put(NS, "k", value, index=fields)
    oracle.put(NS, "k", value, index=fields)
    got = store.get(NS, "k")
    assert got is not None and diff(got.value, value) is None, diff(got.value, value)
    want = [h for h in oracle.search(NS, query="apple") if h.score is not None]
    hits = store.search(NS, query="apple")
    texts = [t for f in fields for t in get_text_at_path(value, f) if t.strip()]
    assert [h.key for h in hits] == (["k"] if texts else []), (name, texts, hits)
    if len(texts) == 1 and want:
        assert hits[0].score == pytest.approx(want[0].score, abs=1e-3)
    elif len(texts) == 1:  # "$": the score of the whole value's text
        q, t = WordEmbedder().encode(["apple", texts[0]]).astype(np.float64)
        assert hits[0].score == pytest.approx(float(q @ t), abs=1e-3)
    assert dead_list(settings) == []


@pytest.mark.parametrize(
    "fields,value",
    [
        (["$"], {"d": dt.datetime(2024, 1, 1)}),
        (["$"], {"s": {1, 2}}),
        (["$"], {"m": {1: "a", "b": 2}}),
        (["$"], {"n": float("nan")}),
        (["$"], {"n": 10**4300}),
        (["d"], {"d": {"when": dt.date(2024, 1, 1)}}),
        (["v[0]"], {"v": [10**4300]}),
    ],
    ids=["datetime", "set", "mixed-key-types", "nan", "int-of-4301-digits", "path-to-a-dict-with-a-date",
         "path-to-an-int-of-4301-digits"],
)  # fmt: skip
def test_an_indexed_path_over_a_non_json_value_is_a_validation_error(make_store, fields, value):
    """With ``$`` (the whole value, LangGraph's default) or a path to a dict or a number
    indexed, a value that is not JSON (or an int too long for JSON) is refused as
    memworker's ValidationError naming the put, as it is unindexed: not the TypeError
    or ValueError of building the indexed text (InMemoryStore's own failure)."""
    store = make_store(index={"dims": DIM, "fields": fields})
    depth = store.queue.status()["depth"]
    # "put of 'k': ..." or, for what the walk of the value refuses first, "value of 'k' ..."
    with pytest.raises(ValidationError, match=r"^(put|value) of 'k'"):
        store.put(NS, "k", value)
    with pytest.raises(ValidationError, match=r"^(put|value) of 'k'"):
        store.put(NS, "k", value, index=False)  # refused unindexed, as the docs say
    assert store.queue.status()["depth"] == depth
