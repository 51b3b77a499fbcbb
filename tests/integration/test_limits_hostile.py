"""Size and shape limits an LLM or a user controls (a hostile review of 2026-12-06):
huge strings, very many entries, huge page arguments, numbers at the edges, on real
servers (standalone, with and without RediSearch) and real in-process workers.

The rules checked: bad input raises an ``Exception`` (never a ``RuntimeError``) whose
message names the field and the limit, and nothing is written (the keyspace is read
through a raw client); a read with a huge argument answers or refuses, never crashes;
memory stays proportional to the input's documented limits; a worker survives a job
that passed the producer's checks however big it is.
"""

from __future__ import annotations

import math
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

from memworker import worker as worker_mod
from memworker.errors import ValidationError
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.validate import MAX_CONTENT_BYTES, MAX_METADATA_BYTES

DIM = 8
MB = 1_000_000


def vec(i: int) -> list[float]:
    v = [0.1] * DIM
    v[i % DIM] = 1.0
    return v


def rec(rid: str, **over: Any) -> dict[str, Any]:
    out = {"id": rid, "content": "text", "scope": "/a", "categories": ["c"],
           "metadata": {"k": 1}, "embedding": vec(len(rid))}  # fmt: skip
    out.update(over)
    return out


def keys_of(raw, namespace: str) -> set[bytes]:
    return set(raw.scan_iter(match=f"{namespace}*", count=1000))


def refused(exc: BaseException) -> None:
    """An error of the project's kind: an Exception, never a RuntimeError (CrewAI
    drops saves that raise one; RecursionError is one)."""
    assert isinstance(exc, ValidationError), repr(exc)
    assert not isinstance(exc, RuntimeError), repr(exc)


# ----------------------------------------------------------------------------- store writes
HUGE_FIELDS = [
    ("content", {"content": "x" * (50 * MB)}, rf"records\[1\]\.content is 50000000 bytes, the limit is {MAX_CONTENT_BYTES}"),
    ("id", {"id": "i" * MB}, r"records\[1\]\.id is 1000000 characters, the limit is 256"),
    ("scope", {"scope": "/" + "s" * MB}, r"records\[1\]\.scope is 1000001 characters, the limit is 1024"),
    ("category", {"categories": ["c" * MB]}, r"records\[1\]\.categories\[0\] is 1000000 characters, the limit is 256"),
    ("categories", {"categories": [f"c{i}" for i in range(100_000)]},
     r"records\[1\]\.categories has 100000 entries, the limit is 64"),
    ("metadata keys", {"metadata": {f"k{i}": i for i in range(100_000)}},
     rf"records\[1\]\.metadata is \d+ bytes of JSON, the limit is {MAX_METADATA_BYTES}"),
    ("metadata key", {"metadata": {"k" * MB: 1}},
     rf"records\[1\]\.metadata is \d+ bytes of JSON, the limit is {MAX_METADATA_BYTES}"),
    ("metadata wide list", {"metadata": {"k": [0] * 1_000_000}}, r"records\[1\]\.metadata holds more values"),
    ("metadata nan", {"metadata": {"k": math.nan}}, r"records\[1\]\.metadata is not JSON-serializable"),
    ("metadata inf", {"metadata": {"k": [math.inf]}}, r"records\[1\]\.metadata is not JSON-serializable"),
    ("metadata 5000-digit int", {"metadata": {"k": 10**5000}}, r"records\[1\]\.metadata is not JSON-serializable"),
    ("source", {"source": "u" * MB}, r"records\[1\]\.source has 1000000 characters, the limit is 1024"),
    ("content surrogate", {"content": "a\ud800b"}, r"records\[1\]\.content is not valid unicode text"),
]  # fmt: skip


@pytest.mark.parametrize("over,needle", [(o, n) for _, o, n in HUGE_FIELDS], ids=[i for i, _, _ in HUGE_FIELDS])
def test_a_huge_field_in_a_batch_is_refused_naming_it_and_nothing_is_written(store, raw, namespace, over, needle):
    store.save([rec("seed")])
    before = keys_of(raw, namespace)
    with pytest.raises(Exception) as info:
        store.save([rec("good"), rec("bad", **over), rec("after")])
    refused(info.value)
    assert info.match(needle)
    assert keys_of(raw, namespace) == before
    assert store.get_record("good") is None and store.count() == 1


def test_metadata_floats_at_the_edges_round_trip_and_filter(store) -> None:
    store.save([rec("r", metadata={"neg0": -0.0, "big": 1e308, "tiny": 5e-324, "huge": 2**64 + 1})])
    got = store.get_record("r").metadata
    assert got == {"neg0": -0.0, "big": 1e308, "tiny": 5e-324, "huge": 2**64 + 1}
    assert [r.id for r, _ in store.search(vec(1), metadata_filter={"neg0": 0}, limit=5)] == ["r"]
    assert [r.id for r, _ in store.search(vec(1), metadata_filter={"huge": 2**64 + 1}, limit=5)] == ["r"]
    assert store.search(vec(1), metadata_filter={"huge": 2**64}, limit=5) == []


# ----------------------------------------------------------------------------- store reads
def test_reads_of_huge_shape_answer_or_refuse_cleanly_and_write_nothing(store, raw, namespace) -> None:
    store.save([rec(f"r{i}", metadata={"k": i, "=n": i}) for i in range(12)])
    before = keys_of(raw, namespace)
    # answered: many categories, metadata pairs, ranges, a 1 MB metadata key
    assert len(store.search(vec(1), categories=[f"x{i}" for i in range(100_000)] + ["c"], limit=5)) == 5
    assert store.search(vec(1), metadata_filter={f"k{i}": i for i in range(10_000)}, limit=5) == []
    assert store.search(vec(1), metadata_filter={"k" * MB: 1}, limit=5) == []
    ranges = {f"=m{i}": (0, True, 10, True) for i in range(2000)}
    assert store.search(vec(1), metadata_ranges=ranges, limit=5) == []
    full = store.search(vec(1), metadata_ranges={"=n": (-math.inf, True, math.inf, True)}, limit=20)
    assert len(full) == 12
    assert store.search(vec(1), metadata_filter={"k": 2**70}, limit=5) == []
    assert store.search(vec(1), min_score=math.inf, limit=5) == []
    assert len(store.search(vec(1), min_score=-math.inf, limit=5)) == 5
    assert len(store.list_records("/", limit=10**12, offset=0)) == 12
    assert store.list_records("/", limit=10, offset=10**12) == []
    assert store.list_records("/", limit=2**63 - 1, offset=2**63 - 1) == []
    assert store.get_record("x" * MB) is None
    assert store.get_records([f"none{i}" for i in range(100_000)]) == [None] * 100_000
    # refused, naming the argument and the limit
    cases = [
        (lambda: store.search(vec(1), metadata_filter={"k": 10**5000}, limit=5), r"metadata_filter\['k'\]"),
        (lambda: store.search(vec(1), source="u" * MB, limit=5), r"source has 1000000 characters, the limit is 1024"),
        (lambda: store.search(vec(1), scope_prefix="/a" * 500_000, limit=5), r"scope_prefix is 1000000 characters, the limit is 1024"),
        (lambda: store.search(vec(1), limit=10**12), r"limit must be an integer from 1 to 10000"),
        (lambda: store.search(vec(1), limit=-1), r"limit must be an integer from 1 to 10000"),
        (lambda: store.search(vec(1), metadata_ranges={"=n": (math.nan, True, 1, True)}), r"low must be a number"),
        (lambda: store.search(vec(1), metadata_ranges={"=n": (0, True, 10**400, True)}), r"high is beyond the float64 range"),
        (lambda: store.list_records("/", limit=2**63, offset=0), r"limit must be from"),
        (lambda: store.list_records("/", limit=10, offset=-(2**64)), r"offset must be from"),
        (lambda: store.count("/a" * 500_000), r"scope_prefix is 1000000 characters, the limit is 1024"),
        (lambda: store.list_scopes("/a" * 500_000), r"parent is 1000000 characters, the limit is 1024"),
        (lambda: store.list_categories("/a" * 500_000), r"scope_prefix is 1000000 characters, the limit is 1024"),
        (lambda: store.get_scope_info("/a" * 500_000), r"scope is 1000000 characters, the limit is 1024"),
        (lambda: store.reset("/a" * 500_000), r"scope_prefix is 1000000 characters, the limit is 1024"),
        (lambda: store.search([0.5] * 1_000_000, limit=5), r"dimension"),
    ]  # fmt: skip
    _each_refused(cases)
    assert store.count() == 12
    assert keys_of(raw, namespace) == before


def _each_refused(cases) -> None:
    """Each call raises a refusal whose message matches its pattern."""
    for call, needle in cases:
        with pytest.raises(Exception) as info:
            call()
        refused(info.value)
        assert info.match(needle), (needle, str(info.value)[:200])


# ----------------------------------------------------------------------------- the queue
@pytest.fixture
def qsettings(plain_server, namespace) -> Settings:
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def qraw(plain_server):
    import redis

    client = redis.Redis(host="127.0.0.1", port=plain_server.port)
    yield client
    client.close()


def test_enqueues_of_huge_shape_are_refused_whole_and_enqueue_nothing(qsettings, qraw, namespace) -> None:
    with MemoryQueue(qsettings, producer_id="p") as q:
        cases = [
            (lambda: q.enqueue_encode(["t"] * 100_000), r"items has 100000 entries, the limit per job is 1000"),
            (lambda: q.enqueue_encode(["x" * (50 * MB)]), r"items\[0\]\.content is 50000000 bytes, the limit is 1048576"),
            (lambda: q.enqueue_encode([{"text": "t", "metadata": {"k": math.nan}}]), r"items\[0\]\.metadata is not JSON"),
            (lambda: q.enqueue_encode([{"text": "t", "id": "i" * MB}]), r"items\[0\]\.id is 1000000 characters"),
            (lambda: q.enqueue_encode([{"text": "t", "scope": "/" + "s" * MB}]), r"items\[0\]\.scope is 1000001 characters"),
            (lambda: q.enqueue_encode([{"text": "t\ud800"}]), r"items\[0\]\.content is not valid unicode"),
            # each job within max_items, but 900 KB texts: the first job is over max_job_bytes
            (lambda: q.enqueue_encode(["y" * 900_000, "z" * 900_000]), r"job is \d+ bytes encoded, the limit \(max_job_bytes\) is 1048576"),
            # 200 good chunks, the last one bad: nothing of the call is enqueued
            (lambda: q.enqueue_encode_jobs([["ok"]] * 200 + [["a" * 600_000, "b" * 600_000]]), r"max_job_bytes"),
            (lambda: q.enqueue_save([rec("good"), rec("bad", content="x" * (2 * MB))]), r"records\[1\]\.content is 2000000 bytes"),
            (lambda: q.drain(timeout=math.nan), r"timeout"),
            (lambda: q.drain(timeout=10**400), r"timeout"),
        ]  # fmt: skip
        _each_refused(cases)
        assert q.pending() == []
    keys = QueueKeys(namespace)
    assert qraw.llen(keys.q()) == 0 and qraw.hlen(keys.msgs()) == 0


class _Embedder:
    dimension = DIM

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.texts = 0

    def encode(self, texts):
        with self.lock:
            self.texts += len(texts)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, t in zip(out, texts):
            row[:] = 0.1
            row[len(t) % DIM] = 1.0
        return out


@pytest.fixture
def qembedder():
    made = _Embedder()
    worker_mod.set_embedder_factory(lambda: made)
    yield made
    worker_mod.set_embedder_factory(None)


def test_a_worker_commits_a_huge_job_that_passed_a_generous_producer_and_carries_on(
    qsettings, qembedder, qraw, namespace
) -> None:
    """A producer may raise ``max_job_bytes`` and ``max_items`` (no upper bound): a
    24 MB job of 1 MiB texts (more than the worker's 16 MiB in-flight budget) and a job
    of 5,000 items pass its checks; the worker commits both, and a small job after them."""
    from memworker import ValkeyStore

    with MemoryQueue(qsettings, producer_id="p", max_job_bytes=64 * 1024 * 1024, max_items=5000) as q:
        big, big_ids = q.enqueue_encode_job([chr(ord("a") + i) * MAX_CONTENT_BYTES for i in range(24)])
        many, many_ids = q.enqueue_encode_job([f"item {i}" for i in range(5000)])
        small, small_ids = q.enqueue_encode_job(["after"])
        with worker_mod.running_worker(qsettings, threads=2, worker_timeout_ms=100, max_retries=1,
                                       min_backoff_ms=10):  # fmt: skip
            report = q.drain(timeout=240, job_ids=[big, many, small])
    assert report.failed == [] and report.committed == 3
    store = ValkeyStore(qsettings)
    try:
        assert store.count() == 24 + 5000 + 1
        got = store.get_record(big_ids[-1])
        assert got is not None and len(got.content) == MAX_CONTENT_BYTES
        assert store.get_record(small_ids[0]).content == "after"
    finally:
        store.reset()
        store.close()
    keys = QueueKeys(namespace)
    assert qraw.hlen(keys.dead_msgs()) == 0


# ----------------------------------------------------------------------------- LangGraph
langgraph_base = pytest.importorskip("langgraph.store.base")
from langgraph.store.base import ListNamespacesOp, MatchCondition, PutOp, SearchOp  # noqa: E402
from test_langgraph import embedder  # noqa: E402,F401
from test_langgraph import lg, make_store, settings, worker  # noqa: E402,F401


def test_langgraph_reads_of_huge_shape_answer_and_numbers_at_the_edges_are_exact(lg) -> None:  # noqa: F811
    lg.put(("a",), "k1", {"text": "apple", "n": 2**64 + 1, "z": -0.0, "big": 1e308})
    lg.put(("a",), "k2", {"text": "dog", "n": 5})
    assert lg.get(("a",), "k1").value == {"text": "apple", "n": 2**64 + 1, "z": -0.0, "big": 1e308}
    assert [h.key for h in lg.search(("a",), filter={"n": 2**64 + 1})] == ["k1"]
    assert lg.search(("a",), filter={"n": 2**64}) == []  # 2**64 and 2**64+1 are one float64
    assert [h.key for h in lg.search(("a",), filter={"n": {"$gt": 2**64}})] == ["k1"]
    assert [h.key for h in lg.search(("a",), filter={"z": 0})] == ["k1"]
    assert [h.key for h in lg.search(("a",), filter={"big": {"$gte": 1e308, "$lt": math.inf}})] == ["k1"]
    assert lg.search(("a",), filter={"n": 10**5000}) == []
    assert len(lg.search(("a",), limit=10**12)) == 2
    assert len(lg.search(("a",), query="apple", limit=10**30)) == 2
    assert lg.search(("a",), query="apple", offset=10**12) == []
    assert len(lg.search(("a",), query="apple " * 2_000_000)) == 2  # a 12 MB query
    assert lg.search(("a",), filter={f"f{i}": i for i in range(10_000)}) == []
    assert lg.search(("a",), query="dog", filter={f"f{i}": {"$gt": i, "$lt": i + 1} for i in range(3000)}) == []
    assert lg.list_namespaces(max_depth=10**12) == [("a",)]
    assert lg.list_namespaces(suffix=tuple(f"x{i}" for i in range(100_000))) == []
    assert lg.list_namespaces(limit=10**12, offset=10**12) == []


def _deep(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    cur = d
    for _ in range(depth):
        cur["x"] = {}
        cur = cur["x"]
    return d


def _cyclic() -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["c"] = c
    return c


BAD_READS = [
    ("filter depth 10k", SearchOp(("a",), filter=_deep(10_000)), r"filter\['x'\] is nested more than 32 levels"),
    ("filter cyclic", SearchOp(("a",), filter=_cyclic()), r"filter\['c'\] is nested more than 32 levels"),
    ("filter 100k keys", SearchOp(("a",), filter={f"f{i}": i for i in range(100_000)}), r"filter holds more values"),
    ("filter range 10**400", SearchOp(("a",), filter={"n": {"$gt": 10**400}}), r"beyond the float64 range"),
    ("limit nan", SearchOp(("a",), limit=math.nan), r"search limit must be an integer >= 0"),
    ("limit bool", SearchOp(("a",), limit=True), r"search limit must be an integer >= 0"),
    ("offset float", SearchOp(("a",), offset=1.0), r"search offset must be an integer >= 0"),
    ("max_depth huge negative", ListNamespacesOp(max_depth=-(10**12)), r"max_depth must be an integer >= 0"),
]  # fmt: skip


@pytest.mark.parametrize("op,needle", [(o, n) for _, o, n in BAD_READS], ids=[i for i, _, _ in BAD_READS])
def test_langgraph_a_batch_with_a_huge_bad_read_writes_nothing(lg, op, needle) -> None:  # noqa: F811
    lg.put(("a",), "victim", {"text": "apple"})
    assert lg.get(("a",), "victim") is not None  # committed (a read drains)
    before = lg.store.count("/")
    with pytest.raises(Exception) as info:
        lg.batch([PutOp(("a",), "new", {"text": "dog"}), PutOp(("a",), "victim", None), op])
    refused(info.value)
    assert info.match(needle)
    assert lg.get(("a",), "new") is None and lg.get(("a",), "victim") is not None
    assert lg.store.count("/") == before


BAD_PUTS = [
    ("value depth 10k", {"v": _deep(10_000)}, r"nested more than 32 levels"),
    ("value cyclic", {"v": _cyclic()}, r"nested more than 32 levels"),
    ("value nan", {"v": math.nan}, r"value is not JSON-serializable"),
    ("value 5000-digit int", {"v": 10**5000}, r"value is not JSON-serializable"),
    ("value 100k fields", {f"f{i}": i for i in range(100_000)}, r"holds more values than fit in 65536 bytes"),
    ("value field surrogate", {"\ud800": 1}, r"not valid unicode"),
]  # fmt: skip


@pytest.mark.parametrize("value,needle", [(v, n) for _, v, n in BAD_PUTS], ids=[i for i, _, _ in BAD_PUTS])
def test_langgraph_a_batch_of_many_puts_one_bad_writes_nothing(lg, value, needle) -> None:  # noqa: F811
    ops = [PutOp(("b",), f"k{i}", {"text": "dog"}) for i in range(2000)] + [PutOp(("b",), "bad", value)]
    with pytest.raises(Exception) as info:
        lg.batch(ops)
    refused(info.value)
    assert info.match(needle)
    assert lg.get(("b",), "k0") is None and lg.store.count("/") == 0


# ----------------------------------------------------------------------------- LangGraph defects
def test_langgraph_a_put_with_a_huge_key_is_refused_naming_the_key(lg) -> None:  # noqa: F811
    """docs/langgraph.md: "keys any non-empty string". A 100 KB key with a value of one
    small field is refused as "value is 100020 bytes of JSON": the error blames the
    value, which is 8 bytes; the user cannot tell the key is what is too long."""
    with pytest.raises(Exception) as info:
        lg.put(("a",), "K" * 100_000, {"v": 1})
    refused(info.value)
    message = str(info.value)
    assert "key" in message.split(":", 1)[-1], message  # past the "put of 'KKK...':" head
    assert lg.queue.pending() == [] and lg.store.count("/") == 0  # nothing enqueued, nothing written


def test_langgraph_a_refused_put_with_a_repeated_index_path_stays_within_its_limits_in_memory(lg) -> None:  # noqa: F811
    """A 48 KB value (within the 64 KiB limit) put with ``index=["text"] * 1000`` joins
    1,000 copies of its text (48 MB) before the put is refused for the indexed text's
    size; ``index=["text"] * 20_000`` takes ~1 GB for one put of a 48 KB value. The text
    built for one put should stay bounded by the content limit (stop collecting past
    MAX_CONTENT_BYTES, or take each path once)."""
    value = {"text": "apple " * 8000}
    tracemalloc.start()
    try:
        try:
            lg.put(("a",), "dup", value, index=["text"] * 1000)
        except ValidationError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_CONTENT_BYTES, f"peak {peak / MB:.0f} MB for one put of a 48 KB value"


def test_langgraph_a_value_too_big_is_refused_naming_the_value_and_its_limit(lg) -> None:  # noqa: F811
    """A 2 MB ``text`` field: the value's documented limit is 64 KiB of JSON
    (docs/langgraph.md, Limits), but the error says "content is 2000000 bytes, the
    limit is 1048576": a field LangGraph users do not have, and a limit that, once
    met, still refuses the put."""
    with pytest.raises(Exception) as info:
        lg.put(("a",), "big", {"text": "x" * (2 * MB)})
    refused(info.value)
    assert "content" not in str(info.value) and str(MAX_METADATA_BYTES) in str(info.value), str(info.value)
    assert lg.queue.pending() == [] and lg.store.count("/") == 0  # nothing enqueued, nothing written


@pytest.mark.parametrize("where", ["search", "list_namespaces"])
def test_langgraph_a_prefix_of_100k_labels_is_refused_naming_the_prefix(lg, where) -> None:  # noqa: F811
    """A search's ``namespace_prefix`` or a list_namespaces ``prefix`` of 100,000
    labels is refused as "namespace has 100000 labels": the error names neither
    argument (``_prefix_scope`` passes its ``where`` only to the length check)."""
    prefix = tuple(f"x{i}" for i in range(100_000))
    with pytest.raises(Exception) as info:
        if where == "search":
            lg.batch([SearchOp(prefix)])
        else:
            lg.batch([ListNamespacesOp(match_conditions=(MatchCondition("prefix", prefix),))])
    refused(info.value)
    assert "prefix" in str(info.value), str(info.value)
