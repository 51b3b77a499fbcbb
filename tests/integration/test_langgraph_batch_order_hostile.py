"""Review (helper-78): ``QueuedStore.batch`` / ``abatch`` with MIXED ops in one call,
against LangGraph's ``InMemoryStore`` as the reference, on real servers (plain: the
exact search path; module: FT.SEARCH) and real in-process workers with the
deterministic WordEmbedder of test_langgraph.py.

Where docs/langgraph.md documents a difference, the expectation follows the docs:

- a batch's reads see its own puts and deletes (``InMemoryStore`` answers them from
  the state before the batch);
- the later put of a key in one batch wins; across calls "later" is the version (the
  time in microseconds, strictly increasing in a process) a put or delete carries;
- ``limit``, ``offset``, ``max_depth`` are integers >= 0; a namespace is at most 256
  characters percent-encoded: anything else is a ``ValidationError`` and the batch
  writes nothing (``InMemoryStore`` slices with whatever it is given).

``InMemoryStore`` quirks not compared: it keeps a namespace whose items were all
deleted (or that a ``get`` only read) in ``list_namespaces``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import (  # noqa: E402
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder, make_store, settings, worker  # noqa: E402,F401

import memworker.langgraph as lg_mod  # noqa: E402
from memworker.errors import ValidationError  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402

INDEX = {"dims": DIM, "fields": ["text"]}


def _both(make_store, **kw):
    return make_store(**kw), InMemoryStore()


def _state(store: Any, keys: list[tuple[tuple[str, ...], str]]) -> list[Any]:
    out = []
    for ns, key in keys:
        item = store.get(ns, key, refresh_ttl=False)
        out.append(None if item is None else item.value)
    return out


def _nothing_written(lg: QueuedStore, before_depth: int) -> None:
    assert lg.queue.status()["depth"] == before_depth
    assert lg.store.count("/langgraph") == 0
    assert lg.list_namespaces() == []


def _cos(a: str, b: str) -> float:
    va, vb = WordEmbedder().encode([a, b])
    return float(np.dot(va, vb) / (np.linalg.norm(va) * np.linalg.norm(vb)))


# ----------------------------------------------------------------------------- one key, one batch
SEQUENCES = {
    "put-put": [("p", "v1"), ("p", "v2")],
    "put-delete": [("p", "v1"), ("d", None)],
    "put-delete-put": [("p", "v1"), ("d", None), ("p", "v3")],
    "delete-put": [("d", None), ("p", "v2")],
    "delete-missing": [("d", None)],
    "delete-delete": [("d", None), ("d", None)],
}


@pytest.mark.parametrize("face", ["batch", "abatch"])
@pytest.mark.parametrize("seq", list(SEQUENCES), ids=list(SEQUENCES))
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_one_key_written_several_times_in_one_batch_ends_as_in_memory_store(make_store, seq, existing, face):
    lg, oracle = _both(make_store)
    ns = ("one", "key")
    if existing:
        for s in (lg, oracle):
            s.put(ns, "k", {"text": "apple old"})
    ops: list[Any] = []
    for kind, text in SEQUENCES[seq]:
        ops.append(PutOp(ns, "k", None if kind == "d" else {"text": f"banana {text}"}))
    # a get of the key in the same batch, before and after its writes
    ops = [GetOp(ns, "k"), *ops, GetOp(ns, "k")]
    got = lg.batch(ops) if face == "batch" else asyncio.run(lg.abatch(ops))
    oracle.batch(ops)
    final = _state(oracle, [(ns, "k")])[0]
    # the batch's reads see its own writes (documented), wherever they stand in it
    assert [None if r is None else r.value for r in (got[0], got[-1])] == [final, final]
    assert got[1:-1] == [None] * (len(ops) - 2)
    assert _state(lg, [(ns, "k")]) == [final]
    # and a fresh store of the namespace agrees (nothing pending elsewhere)
    other = make_store()
    assert _state(other, [(ns, "k")]) == [final]
    assert lg.store.count("/langgraph") == (0 if final is None else 1)


def test_delete_then_put_of_a_key_in_one_batch_starts_a_new_item_as_separate_calls_do(make_store):
    """A delete followed by a put of the same key in one batch: the item was deleted,
    so the put makes a new item (its own ``created_at``), as the same two ops in two
    calls do and as InMemoryStore does. docs/langgraph.md: ``created_at`` is the first
    put's; the put after a delete is the first put of the new item."""
    lg = make_store()
    ns = ("fresh",)
    lg.put(ns, "sep", {"text": "apple"})
    lg.put(ns, "one", {"text": "apple"})
    first_sep = lg.get(ns, "sep").created_at
    first_one = lg.get(ns, "one").created_at
    time.sleep(0.05)
    mark = datetime.now(timezone.utc)
    # two calls: a new item
    lg.delete(ns, "sep")
    lg.put(ns, "sep", {"text": "banana"})
    sep = lg.get(ns, "sep")
    assert sep.value == {"text": "banana"} and sep.created_at >= mark > first_sep
    # one batch: the same ops
    lg.batch([PutOp(ns, "one", None), PutOp(ns, "one", {"text": "banana"})])
    one = lg.get(ns, "one")
    assert one.value == {"text": "banana"}
    assert one.created_at >= mark > first_one, (
        f"created_at {one.created_at} is the deleted item's ({first_one}), not a new item's"
    )
    # and so a search without a query (newest first) lists it first, as the newest item
    assert [i.key for i in lg.search(ns)] == ["one", "sep"]


# ----------------------------------------------------------------------------- reads of the batch
@pytest.mark.parametrize("face", ["batch", "abatch"])
def test_search_and_list_namespaces_in_the_batch_see_its_puts_and_deletes(make_store, face):
    lg = make_store()
    lg.put(("r", "gone"), "x", {"text": "dog"})
    lg.put(("r", "stay"), "y", {"text": "cherry"})
    ops = [
        SearchOp(("r",), query="apple", limit=10),
        SearchOp(("r",), limit=10),
        ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("r",)),)),
        PutOp(("r", "new"), "a", {"text": "apple banana"}),
        PutOp(("r", "gone"), "x", None),  # the namespace's only item
        PutOp(("r", "stay"), "y2", {"text": "apple"}, index=False),
        ListNamespacesOp(),
    ]
    got = lg.batch(ops) if face == "batch" else asyncio.run(lg.abatch(ops))
    # the query search sees the new embedded item and not the unembedded one
    assert [(i.namespace, i.key) for i in got[0]] == [(("r", "new"), "a"), (("r", "stay"), "y")]
    assert got[0][0].score == pytest.approx(_cos("apple banana", "apple"), abs=1e-3)
    assert sorted((i.namespace, i.key) for i in got[1]) == [
        (("r", "new"), "a"), (("r", "stay"), "y"), (("r", "stay"), "y2"),
    ]  # fmt: skip
    # the namespace emptied by the batch's delete is gone; the new one is listed
    assert got[2] == [("r", "new"), ("r", "stay")]
    assert got[6] == [("r", "new"), ("r", "stay")]


def test_get_of_a_namespace_prefix_or_extension_of_a_stored_item_finds_nothing(make_store):
    lg, oracle = _both(make_store)
    ops = [
        PutOp(("a", "b", "c"), "k", {"text": "apple"}),
        GetOp(("a", "b"), "k"),
        GetOp(("a",), "k"),
        GetOp((), "k"),
        GetOp(("a", "b", "c", "d"), "k"),
        GetOp(("a", "b/c"), "k"),
        GetOp(("a", "b", "c"), "k"),
    ]
    got = lg.batch(ops)
    oracle.batch(ops)
    want = oracle.batch(ops[1:])  # InMemoryStore reads before its puts: ask again after
    assert [None if r is None else r.value for r in got[1:]] == [None if r is None else r.value for r in want]
    assert got[-1].value == {"text": "apple"} and got[-1].namespace == ("a", "b", "c")


# ----------------------------------------------------------------------------- TTL
def test_ttl_and_refresh_ttl_mixed_in_one_batch(make_store):
    lg = make_store(ttl={"default_ttl": 60, "refresh_on_read": False})
    ns = ("ttl",)
    rid = {k: record_id(ns, k) for k in ("t", "none", "was")}
    lg.put(ns, "was", {"text": "apple"}, ttl=10)
    assert lg.get(ns, "was") is not None  # drained: committed
    assert lg.store.expiries([rid["was"]])[0] is not None
    before = int(time.time() * 1000)
    got = lg.batch(
        [
            PutOp(ns, "t", {"text": "banana"}, ttl=5),
            PutOp(ns, "none", {"text": "cherry"}, ttl=None),
            PutOp(ns, "was", {"text": "dog"}, ttl=None),  # a re-put without a TTL: never expires
            GetOp(ns, "t", refresh_ttl=False),
            GetOp(ns, "none", refresh_ttl=True),
            GetOp(ns, "was", refresh_ttl=True),
        ]
    )
    assert [r.value["text"] for r in got[3:]] == ["banana", "cherry", "dog"]
    exp_t, exp_none, exp_was = lg.store.expiries([rid["t"], rid["none"], rid["was"]])
    assert exp_none is None and exp_was is None
    assert exp_t is not None and before + 5 * 60_000 - 1_000 <= exp_t <= int(time.time() * 1000) + 5 * 60_000
    # a refresh in a later batch moves the expiry; refresh_ttl=False in the same batch does not stop it
    time.sleep(0.02)
    lg.batch([GetOp(ns, "t", refresh_ttl=False), GetOp(ns, "t", refresh_ttl=True)])
    (exp_t2,) = lg.store.expiries([rid["t"]])
    assert exp_t2 > exp_t
    # refresh False alone, and the store's refresh_on_read False, keep it
    lg.batch([GetOp(ns, "t", refresh_ttl=False), SearchOp(ns, refresh_ttl=False), GetOp(ns, "t", refresh_ttl=None),
              SearchOp(ns, refresh_ttl=None)])  # fmt: skip
    assert lg.get(ns, "t") is not None and lg.search(ns)
    assert lg.store.expiries([rid["t"]]) == [exp_t2]


def test_a_re_put_without_ttl_in_a_batch_outlives_the_old_items_expiry(make_store):
    lg = make_store()
    ns = ("ttl2",)
    lg.put(ns, "k", {"text": "apple"}, ttl=0.002)  # 120 ms
    lg.batch([PutOp(ns, "k", {"text": "banana"}, ttl=None), GetOp(ns, "k")])
    time.sleep(0.3)
    item = lg.get(ns, "k")
    assert item is not None and item.value == {"text": "banana"}
    assert lg.store.expiries([record_id(ns, "k")]) == [None]


# ----------------------------------------------------------------------------- index modes
def test_index_false_paths_and_defaults_mixed_in_one_batch(make_store):
    lg = make_store()
    ns = ("ix",)
    value = {"text": "apple", "title": "banana cherry"}
    got = lg.batch(
        [
            PutOp(ns, "default", value),
            PutOp(ns, "off", value, index=False),
            PutOp(ns, "title", value, index=["title"]),
            PutOp(ns, "both", value, index=["text", "title"]),
            PutOp(ns, "empty", value, index=[]),
            SearchOp(ns, query="apple", limit=10),
            SearchOp(ns, query="cherry", limit=10),
        ]
    )
    by_apple = {i.key: i.score for i in got[5]}
    by_cherry = {i.key: i.score for i in got[6]}
    assert set(by_apple) == set(by_cherry) == {"default", "title", "both"}
    assert by_apple["default"] == pytest.approx(_cos("apple", "apple"), abs=1e-3)
    assert by_apple["title"] == pytest.approx(_cos("banana cherry", "apple"), abs=1e-3)
    assert by_apple["both"] == pytest.approx(_cos("apple\nbanana cherry", "apple"), abs=1e-3)
    assert by_cherry["title"] == pytest.approx(_cos("banana cherry", "cherry"), abs=1e-3)
    for key in ("off", "empty"):
        assert lg.get(ns, key).value == value


def test_a_re_put_with_index_false_drops_the_items_old_vector(make_store):
    """A put with ``index=False`` stores the value unembedded; a query search returns
    embedded items only (docs), so the re-put item is not found by its old vector."""
    lg = make_store()
    ns = ("ix2",)
    lg.put(ns, "k", {"text": "apple"})
    lg.put(ns, "k2", {"text": "apple"})
    assert {i.key for i in lg.search(ns, query="apple")} == {"k", "k2"}
    got = lg.batch(
        [
            PutOp(ns, "k", {"text": "apple again"}, index=False),
            PutOp(ns, "k2", {"text": "apple", "title": "dog"}, index=["title"]),
            SearchOp(ns, query="apple", limit=10),
        ]
    )
    scores = {i.key: i.score for i in got[2]}
    assert set(scores) == {"k2"}
    assert scores["k2"] == pytest.approx(_cos("dog", "apple"), abs=1e-3)


# ----------------------------------------------------------------------------- concurrency
#: Per caller (thread or task): the ops its next versions are for, in order.
_TAGS: contextvars.ContextVar[Any] = contextvars.ContextVar("tags", default=None)


def _record_versions(monkeypatch) -> list[tuple[int, Any]]:
    """Observe each put's and delete's version (the real ``next_version``) with the op
    it is for: a batch versions its writes in the order of their first occurrence."""
    seen: list[tuple[int, Any]] = []
    lock = threading.Lock()
    real = lg_mod.next_version

    def observed() -> int:
        ver = real()
        tags = _TAGS.get()
        with lock:
            seen.append((ver, next(tags) if tags is not None else None))
        return ver

    monkeypatch.setattr(lg_mod, "next_version", observed)
    return seen


def _ops_for(i: int, ns: tuple[str, ...]) -> tuple[list[Any], Any]:
    """The batch one caller sends: a write of the shared key (a delete every 5th), an
    own key (indexed or not), and reads of both; and the shared key's value it writes."""
    value = None if i % 5 == 4 else {"text": f"apple {i}", "i": i}
    ops = [
        PutOp(ns, "shared", value),
        PutOp(ns, f"own{i}", {"text": "banana", "i": i}, index=False if i % 2 else None),
        GetOp(ns, f"own{i}"),
        GetOp(ns, "shared"),
        SearchOp(ns, filter={"i": i}, limit=5),
    ]
    return ops, value


def _check_caller(i: int, got: list[Any]) -> None:
    assert got[2] is not None and got[2].value == {"text": "banana", "i": i}
    keys = sorted(x.key for x in got[4])
    assert keys in ([f"own{i}"], sorted([f"own{i}", "shared"]))


def _winner(seen: list[tuple[int, Any]]) -> Any:
    shared = [(ver, tag[1]) for ver, tag in seen if tag is not None and tag[0] == "shared"]
    assert shared
    return max(shared, key=lambda p: p[0])[1]


def _tags(value: Any) -> Any:
    return iter([("shared", value), ("own", None)])


@pytest.mark.parametrize("stores", [1, 2], ids=["one-store", "two-stores"])
def test_the_same_mixed_batch_from_many_threads_the_later_version_wins(make_store, monkeypatch, stores):
    seen = _record_versions(monkeypatch)
    made = [make_store() for _ in range(stores)]
    ns = ("threads",)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def run(i: int) -> None:
        try:
            ops, value = _ops_for(i, ns)
            start.wait()
            for _ in range(3):
                _TAGS.set(_tags(value))
                _check_caller(i, made[i % stores].batch(ops))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, repr(errors[0])
    for s in made:
        s.get(ns, "missing")  # each drains its own puts
    want = _winner(seen)
    for s in made:
        item = s.get(ns, "shared")
        assert (None if item is None else item.value) == want
    assert made[0].store.count("/langgraph") == 8 + (0 if want is None else 1)


@pytest.mark.parametrize("stores", [1, 2], ids=["one-store", "two-stores"])
def test_the_same_mixed_abatch_from_many_tasks_the_later_version_wins(make_store, monkeypatch, stores):
    seen = _record_versions(monkeypatch)
    made = [make_store() for _ in range(stores)]
    ns = ("tasks",)

    async def one(i: int) -> None:
        ops, value = _ops_for(i, ns)
        for _ in range(3):
            _TAGS.set(_tags(value))
            _check_caller(i, await made[i % stores].abatch(ops))
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(16)))
        for s in made:
            await s.aget(ns, "missing")

    asyncio.run(main())
    want = _winner(seen)
    for s in made:
        item = s.get(ns, "shared")
        assert (None if item is None else item.value) == want
    assert made[0].store.count("/langgraph") == 16 + (0 if want is None else 1)


@pytest.mark.parametrize("stores", [1, 2], ids=["one-store", "two-stores"])
def test_single_put_and_get_batches_from_many_tasks_the_later_version_wins(make_store, monkeypatch, stores):
    """A batch of one put (and reads) goes through the group commit with other tasks'."""
    seen = _record_versions(monkeypatch)
    made = [make_store() for _ in range(stores)]
    ns = ("group",)

    async def one(i: int) -> None:
        value = None if i % 7 == 6 else {"text": f"cherry {i}", "i": i}
        for _ in range(3):
            _TAGS.set(iter([("shared", value)]))
            got = await made[i % stores].abatch([PutOp(ns, "shared", value), GetOp(ns, "shared")])
            assert got[0] is None
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(24)))
        for s in made:
            await s.aget(ns, "missing")

    asyncio.run(main())
    want = _winner(seen)
    for s in made:
        item = s.get(ns, "shared")
        assert (None if item is None else item.value) == want


# ----------------------------------------------------------------------------- hostile op fields
@pytest.mark.parametrize(
    "bad",
    [
        PutOp(("ok", ""), "k", {"text": "x"}),
        PutOp(("a.b",), "k", {"text": "x"}),
        PutOp(("",), "k", None),
        PutOp((".",), "k", None),
        GetOp(("a", ""), "k"),
        GetOp(("a.b",), "k"),
        SearchOp(("",)),
        SearchOp((".",)),
        ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("a", "")),)),
        ListNamespacesOp(match_conditions=(MatchCondition("suffix", ("x.y",)),)),
    ],
    ids=["put-empty", "put-dot", "del-empty", "del-dot", "get-empty", "get-dot", "search-empty",
         "search-dot", "ln-prefix-empty", "ln-suffix-dot"],
)  # fmt: skip
def test_labels_langgraph_refuses_in_any_op_refuse_the_whole_batch(make_store, bad):
    lg = make_store()
    lg.put(("keep",), "k", {"text": "apple"})
    assert lg.get(("keep",), "k") is not None  # committed: the queue's depth is settled
    depth = lg.queue.status()["depth"]
    ops = [PutOp(("w",), "a", {"text": "apple"}), PutOp(("keep",), "k", None), bad, GetOp(("w",), "a")]
    for call in (lambda: lg.batch(ops), lambda: asyncio.run(lg.abatch(ops))):
        with pytest.raises((InvalidNamespaceError, ValidationError)):
            call()
        assert lg.queue.status()["depth"] <= depth  # nothing enqueued (an earlier job may still be acked)
        assert lg.get(("w",), "a") is None
        assert lg.get(("keep",), "k").value == {"text": "apple"}  # the delete was not applied
        assert lg.list_namespaces() == [("keep",)]


@pytest.mark.parametrize(
    "bad",
    [
        PutOp(("x" * 300,), "k", {"text": "x"}),
        PutOp(tuple("ab" for _ in range(40)), "k", {"text": "x"}),
        PutOp(("é" * 50,), "k", {"text": "x"}),  # 300 characters percent-encoded
        SearchOp(("w",), limit=-1),
        SearchOp(("w",), offset=-3),
        SearchOp(("w",), limit=True),
        SearchOp(("w",), limit=2.0),
        SearchOp(("w",), offset=1.5),
        SearchOp(("w",), limit=None),
        SearchOp(("x" * 300,)),
        ListNamespacesOp(max_depth=-1),
        ListNamespacesOp(max_depth=True),
        ListNamespacesOp(max_depth=1.0),
        ListNamespacesOp(limit=-1),
        ListNamespacesOp(offset=False),
        ListNamespacesOp(match_conditions=(MatchCondition("infix", ("a",)),)),
        PutOp((), "k", {"text": "x"}),
        PutOp(("w",), "", {"text": "x"}),
        PutOp(("w",), 5, None),
        PutOp(("w",), "k", ["not", "a", "dict"]),
        PutOp(("w",), "k", {"text": "x"}, ttl=0),
        PutOp(("w",), "k", {"text": "x"}, ttl=True),
        PutOp(("w",), "k", {"text": "x"}, index="text"),
        GetOp(("w",), ""),
        GetOp(("w",), "a", refresh_ttl="false"),
        SearchOp(("w",), query=5),
        SearchOp(("w",), refresh_ttl="no"),
        SearchOp(("w",), filter={"n": {"$regex": "x"}}),
    ],
    ids=["long-label", "41-labels", "long-encoded", "limit-neg", "offset-neg", "limit-bool", "limit-float",
         "offset-float", "limit-none", "search-long-prefix", "depth-neg", "depth-bool", "depth-float",
         "ln-limit-neg", "ln-offset-bool", "ln-infix", "put-no-label", "put-empty-key", "del-int-key",
         "put-list-value", "put-ttl-0", "put-ttl-bool", "put-index-str", "get-empty-key", "get-refresh-text",
         "search-int-query", "search-refresh-text", "search-bad-operator"],
)  # fmt: skip
def test_a_bad_op_anywhere_refuses_the_batch_before_anything_is_written(make_store, bad):
    lg = make_store()
    depth = lg.queue.status()["depth"]
    ops = [
        PutOp(("w",), "a", {"text": "apple"}),
        PutOp(("w",), "b", {"text": "banana"}, index=False),
        PutOp(("w",), "gone", None),
        bad,
        GetOp(("w",), "a"),
    ]
    with pytest.raises(ValidationError):
        lg.batch(ops)
    with pytest.raises(ValidationError):
        asyncio.run(lg.abatch(ops))
    _nothing_written(lg, depth)


def test_a_long_label_within_the_limit_round_trips_in_a_mixed_batch(make_store):
    lg, oracle = _both(make_store)
    long = ("L" * 250,)
    deep = tuple(f"l{i}" for i in range(31))
    ops = [
        PutOp(long, "k", {"text": "apple"}),
        PutOp(deep, "k", {"text": "banana"}),
        PutOp(("a", "%2E", "%"), "k", {"text": "cherry"}),
    ]
    lg.batch(ops)
    oracle.batch(ops)
    reads = [GetOp(long, "k"), GetOp(deep, "k"), GetOp(("a", "%2E", "%"), "k"), GetOp(("a", "%2E"), "k"),
             ListNamespacesOp(), ListNamespacesOp(max_depth=2), SearchOp(("a",))]  # fmt: skip
    got = lg.batch(reads)
    # InMemoryStore lists a namespace a get only read (its defaultdict): list first
    listed = oracle.batch(reads[4:6])
    want = [*oracle.batch(reads[:4]), *listed, *oracle.batch(reads[6:])]

    assert [None if r is None else (r.namespace, r.value) for r in got[:4]] == [
        None if r is None else (r.namespace, r.value) for r in want[:4]
    ]
    assert got[4] == want[4] and got[5] == want[5]
    assert [(i.namespace, i.key) for i in got[6]] == [(i.namespace, i.key) for i in want[6]]


def _fill(stores: list[Any]) -> None:
    namespaces = [("a",), ("a", "b"), ("a", "b", "c"), ("a", "c"), ("b", "a"), ("b", "c", "a"), ("x", "y", "z", "w"),
                  ("*",), ("a", "*")]  # fmt: skip
    for s in stores:
        s.batch([PutOp(ns, "k", {"text": "apple", "ns": list(ns)}) for ns in namespaces])


CONDITIONS: list[tuple[MatchCondition, ...]] = [
    (),
    (MatchCondition("prefix", ()),),
    (MatchCondition("suffix", ()),),
    (MatchCondition("prefix", ("*",)),),
    (MatchCondition("prefix", ("*", "b")),),
    (MatchCondition("prefix", ("a", "*")),),
    (MatchCondition("prefix", ("*", "*", "*")),),
    (MatchCondition("prefix", ("a", "*", "c")),),
    (MatchCondition("prefix", ("*", "c", "*")),),
    (MatchCondition("prefix", ("*", "*", "*", "*", "*")),),
    (MatchCondition("suffix", ("*",)),),
    (MatchCondition("suffix", ("*", "a")),),
    (MatchCondition("suffix", ("c", "*")),),
    (MatchCondition("suffix", ("*", "*", "*")),),
    (MatchCondition("prefix", ("a",)), MatchCondition("suffix", ("*",))),
    (MatchCondition("prefix", ("*",)), MatchCondition("suffix", ("a",))),
    (MatchCondition("prefix", ("a",)), MatchCondition("prefix", ("*", "b"))),
    (MatchCondition("prefix", ("a",)), MatchCondition("prefix", ("b",))),
    (MatchCondition("prefix", ("b", "*", "a")), MatchCondition("suffix", ("c", "*"))),
]


def test_list_namespaces_wildcards_at_every_position_and_depths_as_in_memory_store(make_store):
    lg, oracle = _both(make_store)
    _fill([lg, oracle])
    ops: list[Any] = []
    for conds in CONDITIONS:
        for depth in (None, 0, 1, 2, 3, 10):
            for limit, offset in ((100, 0), (2, 1), (0, 0), (10**12, 0), (1, 10**12)):
                ops.append(ListNamespacesOp(match_conditions=conds or None, max_depth=depth, limit=limit, offset=offset))
    got, want = lg.batch(ops), oracle.batch(ops)
    diffs = [(op, g, w) for op, g, w in zip(ops, got, want) if g != w]
    assert not diffs, diffs[:3]


def test_search_limit_offset_zero_and_huge_in_a_mixed_batch(make_store):
    lg, oracle = _both(make_store)
    ns = ("s",)
    puts = [PutOp(ns, f"k{i}", {"text": "apple" if i % 2 else "banana", "i": i}) for i in range(5)]
    searches = [
        SearchOp(ns, limit=0),
        SearchOp(ns, limit=0, offset=3),
        SearchOp(ns, offset=0, limit=10**18),
        SearchOp(ns, offset=10**18, limit=10),
        SearchOp(ns, offset=4, limit=10**18),
        SearchOp(ns, query="apple", limit=0),
        SearchOp(ns, query="apple", limit=10**18),
        SearchOp(ns, query="apple", offset=10**18),
        SearchOp(ns, limit=np.int64(2), offset=np.int64(1)),
        SearchOp((), filter={"i": {"$gte": 3}}, limit=10**9),
    ]
    oracle.batch(puts)
    want = oracle.batch(searches)
    got = lg.batch([*puts, *searches])[len(puts):]
    # without a query the order differs (documented: newest first, the batch's items tie): compare sets and sizes
    for i in (0, 1, 2, 3, 4, 8, 9):
        assert len(got[i]) == len(want[i]), (i, searches[i])
    for i in (0, 1, 2, 3, 9):
        assert {x.key for x in got[i]} == {x.key for x in want[i]}, (i, searches[i])
    assert got[5] == [] and got[7] == []
    assert [x.key for x in got[6]] == [x.key for x in sorted(got[6], key=lambda x: -x.score)]
    assert {x.key for x in got[6]} == {f"k{i}" for i in range(5)}
    assert all(x.score == pytest.approx(_cos(x.value["text"], "apple"), abs=1e-3) for x in got[6])


# ----------------------------------------------------------------------------- an embedder in the agent
def test_a_mixed_batch_with_an_agent_side_embedder_later_put_wins_and_bad_ops_embed_nothing(make_store):
    calls: list[list[str]] = []

    def embed(texts):
        calls.append(list(texts))
        return WordEmbedder().encode(list(texts)).tolist()

    lg = make_store(index={"dims": DIM, "embed": embed, "fields": ["text"]})
    ns = ("local",)
    depth = lg.queue.status()["depth"]
    for bad in (SearchOp(ns, limit=-1), ListNamespacesOp(max_depth=-2), GetOp(ns, ""), PutOp((), "z", {"text": "x"})):
        with pytest.raises(ValidationError):
            lg.batch([PutOp(ns, "k", {"text": "apple"}), PutOp(ns, "gone", None), bad])
    assert calls == []  # checked whole before the embedder is called
    _nothing_written(lg, depth)
    got = lg.batch(
        [
            PutOp(ns, "k", {"text": "apple"}),
            PutOp(ns, "j", {"text": "dog"}, index=False),
            PutOp(ns, "k", {"text": "banana"}),  # the later put of k wins
            PutOp(ns, "t", {"text": "x", "title": "cherry"}, index=["title"]),
            GetOp(ns, "k"),
            SearchOp(ns, query="banana", limit=10),
        ]
    )
    assert sorted(t for c in calls for t in c if t != "banana") == ["cherry"]  # only the winners' texts
    assert got[4].value == {"text": "banana"}
    scores = {i.key: i.score for i in got[5]}
    assert set(scores) == {"k", "t"}
    assert scores["k"] == pytest.approx(1.0, abs=1e-3)
    assert scores["t"] == pytest.approx(_cos("cherry", "banana"), abs=1e-3)


def test_ops_with_list_shaped_namespaces_and_conditions_answer_as_tuples_do(make_store):
    lg, oracle = _both(make_store)
    for s in (lg, oracle):
        s.batch([PutOp(("p", "q"), "k", {"text": "apple"}), PutOp(("p", "r", "s"), "k", {"text": "banana"})])
    reads = [
        GetOp(["p", "q"], "k"),
        SearchOp(["p"], limit=10),
        ListNamespacesOp(match_conditions=[MatchCondition("prefix", ["p", "*"])], max_depth=2),
        ListNamespacesOp(match_conditions=[MatchCondition("suffix", ["*", "s"])]),
    ]
    got = lg.batch(reads)
    assert got[0] is not None and got[0].value == {"text": "apple"} and tuple(got[0].namespace) == ("p", "q")
    assert sorted(tuple(i.namespace) for i in got[1]) == [("p", "q"), ("p", "r", "s")]
    assert got[2] == oracle.batch([reads[2]])[0] == [("p", "q"), ("p", "r")]
    assert got[3] == oracle.batch([reads[3]])[0] == [("p", "r", "s")]
