"""The exact search path's process-local vector cache (memworker.vectors).

Plain server only (the cache is the no-module path). Writes go through *other*
ValkeyStore objects (other clients, as other processes would), so the searching
store only learns about them from the change log; every search is compared with
a brute-force numpy search over the ground truth read back with get_record.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from memworker import ValidationError, ValkeyStore
from memworker.store import vectors as vectors_module
from memworker.records import record_types

MemoryRecord = record_types()[0]

DIM = 8
T0 = datetime(2024, 3, 1, 9, 0, 0)
SCOPES = ["/", "/a", "/a/b", "/a/c", "/ab", "/b/x/y"]
CATS = ["c1", "c2", "c3"]
SOURCES = [None, "ann", "bob"]


# ============================================================================ fixtures
@pytest.fixture
def factory(plain_server: Any):
    """Stores on the plain server sharing one fresh namespace."""
    namespace = f"t{uuid.uuid4().hex[:12]}"
    made: list[ValkeyStore] = []

    def make(**kwargs: Any) -> ValkeyStore:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("search_mode", "exact")
        store = ValkeyStore(plain_server.url, **kwargs)
        made.append(store)
        return store

    yield make
    if made:
        made[0].reset()
    for store in made:
        store.close()


@pytest.fixture
def rawp(plain_server: Any):
    import valkey

    client = valkey.Valkey(host="127.0.0.1", port=plain_server.port)
    yield client
    client.close()


# ============================================================================ helpers
def rec(
    rid: str,
    seed: int,
    scope: str = "/",
    categories: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    source: str | None = None,
    private: bool = False,
    embedding: Any = "auto",
) -> Any:
    if embedding == "auto":
        embedding = np.random.default_rng(seed).normal(size=DIM).tolist()
    return MemoryRecord(
        id=rid,
        content=f"{rid} #{seed}",
        scope=scope,
        categories=categories or [],
        metadata=metadata or {},
        created_at=T0 + timedelta(seconds=seed),
        embedding=embedding,
        source=source,
        private=private,
    )


def in_scope(scope: str, prefix: str) -> bool:
    return prefix == "/" or scope == prefix or scope.startswith(prefix + "/")


def brute_force(
    truth: list[Any], query: list[float], limit: int, **flt: Any
) -> list[tuple[str, float]]:
    """The expected answer: filter semantics of memworker, cosine in float64."""
    scope = flt.get("scope_prefix") or "/"
    cats = flt.get("categories")
    meta = flt.get("metadata_filter") or {}
    source = flt.get("source")
    include_private = flt.get("include_private", True)
    viewer = flt.get("viewer")
    q = np.asarray(query, dtype=np.float64)
    out = []
    for r in truth:
        if r is None or r.embedding is None or not in_scope(r.scope, scope):
            continue
        if cats and not set(cats) & set(r.categories):
            continue
        if any(k not in r.metadata or r.metadata[k] != v for k, v in meta.items()):
            continue
        if source is not None and r.source != source:
            continue
        if not include_private and r.private and (viewer is None or r.source != viewer):
            continue
        v = np.asarray(r.embedding, dtype=np.float64)
        out.append((r.id, float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))))
    out.sort(key=lambda p: (-p[1], p[0]))
    return out[:limit]


def check(
    searcher: ValkeyStore,
    truth_store: ValkeyStore,
    pool: list[str],
    query: list[float],
    limit: int = 6,
    **flt: Any,
) -> None:
    truth = [truth_store.get_record(i) for i in pool]
    want = brute_force(truth, query, limit, **flt)
    got = searcher.search(query, limit=limit, **flt)
    assert [r.id for r, _ in got] == [i for i, _ in want], flt
    for (_, s), (_, w) in zip(got, want):
        assert s == pytest.approx(w, abs=1e-5)
    for r, _ in got:  # records come back whole and current
        assert r == truth[pool.index(r.id)]


def gen(store: ValkeyStore) -> int:
    return store._vectors.stats()["gen"]


def q(seed: int) -> list[float]:
    return np.random.default_rng(10_000 + seed).normal(size=DIM).tolist()


# ============================================================================ cross-store invalidation
def test_search_sees_writes_of_another_store_without_reloading(factory: Any) -> None:
    searcher, writer = factory(), factory()
    pool = [f"r{i}" for i in range(12)]
    writer.save(
        [rec(i, n, scope=SCOPES[n % 6], categories=[CATS[n % 3]]) for n, i in enumerate(pool[:8])]
    )
    check(searcher, writer, pool, q(1))
    loaded = gen(searcher)
    assert searcher._vectors.stats()["alive"] == 8

    writer.save(
        [rec(i, 100 + n, scope="/a/c", categories=["c2"]) for n, i in enumerate(pool[8:])]
    )  # inserts
    check(searcher, writer, pool, q(2), scope_prefix="/a")
    # an update moving a record to another scope and category, keeping its embedding
    moved = rec("r1", 1, scope="/b/x/y", categories=["c3"], embedding=None)
    writer.update(moved)
    check(searcher, writer, pool, q(3), scope_prefix="/a")
    check(searcher, writer, pool, q(3), scope_prefix="/b", categories=["c3"])
    check(searcher, writer, pool, q(3), categories=["c2"])
    # a re-save with a new embedding: the new vector is used
    writer.save([rec("r2", 2, scope="/a/b", embedding=q(4))])
    hits = searcher.search(q(4), limit=1)
    assert hits[0][0].id == "r2" and hits[0][1] == pytest.approx(1.0, abs=1e-6)
    # deletes by id, by scope, by category
    assert writer.delete(record_ids=["r3", "r9"]) == 2
    check(searcher, writer, pool, q(5))
    writer.delete(scope_prefix="/a/c")
    check(searcher, writer, pool, q(6), limit=20)
    writer.delete(categories=["c3"])
    check(searcher, writer, pool, q(7), limit=20)
    # touch does not log (last_accessed is not cached) but search results stay current
    writer.touch_records(pool)
    check(searcher, writer, pool, q(8), limit=20)
    assert gen(searcher) == loaded  # all of it applied from the change log, no reload


def test_private_and_source_changes_are_seen(factory: Any) -> None:
    searcher, writer = factory(), factory()
    pool = ["p1", "p2", "p3", "p4"]
    writer.save(
        [
            rec("p1", 1, source="ann"),
            rec("p2", 2, source="bob", private=True),
            rec("p3", 3, source=None, private=True),
            rec("p4", 4, source="bob", metadata={"k": 1}),
        ]
    )
    for viewer in (None, "ann", "bob"):
        check(searcher, writer, pool, q(1), include_private=False, viewer=viewer)
    writer.update(rec("p1", 1, source="ann", private=True, embedding=None))  # now private
    writer.update(rec("p2", 2, source="bob", private=False, embedding=None))  # now shared
    writer.update(
        rec("p4", 4, source="ann", metadata={"k": 2}, embedding=None)
    )  # new source, metadata
    for viewer in (None, "ann", "bob"):
        check(searcher, writer, pool, q(2), include_private=False, viewer=viewer)
    check(searcher, writer, pool, q(3), source="ann")
    check(searcher, writer, pool, q(3), source="bob")
    check(searcher, writer, pool, q(3), metadata_filter={"k": 2})
    check(searcher, writer, pool, q(3), metadata_filter={"k": 1})


def test_trimmed_log_forces_a_full_reload(factory: Any, rawp: Any) -> None:
    searcher, writer = factory(), factory()
    pool = [f"t{i}" for i in range(10)]
    writer.save([rec(i, n) for n, i in enumerate(pool[:5])])
    check(searcher, writer, pool, q(1))
    before = gen(searcher)
    writer.save([rec(i, 50 + n) for n, i in enumerate(pool[5:])])
    writer.delete(record_ids=["t0"])
    # what MAXLEN ~ does once the log outgrows its cap: the oldest entries go
    rawp.xtrim(f"{writer.keys.prefix}:changes", maxlen=1, approximate=False)
    check(searcher, writer, pool, q(2), limit=10)
    assert gen(searcher) == before + 1
    # and from there on, incremental again
    writer.save([rec("t0", 99)])
    check(searcher, writer, pool, q(3), limit=10)
    assert gen(searcher) == before + 1


def test_log_entries_are_written_with_the_records(factory: Any, rawp: Any) -> None:
    store = factory()
    key = f"{store.keys.prefix}:changes"
    store.save([rec("a", 1), rec("b", 2)])
    store.update(rec("a", 1, scope="/a", embedding=None))
    store.touch_records(["a", "b"])  # not logged
    assert store.delete(record_ids=["b", "missing"]) == 1
    # one entry per write call, listing the ids it changed
    logged = [fields[b"i"].decode().split("\n") for _, fields in rawp.xrange(key)]
    assert logged == [["a", "b"], ["a"], ["b"]]
    assert rawp.hget(f"{store.keys.prefix}:meta", "log") is not None
    store.delete(record_ids=["a"])  # the namespace is empty: the log goes
    assert not rawp.exists(key) and rawp.hget(f"{store.keys.prefix}:meta", "log") is None


def test_reset_and_emptying_the_namespace_invalidate_every_cache(factory: Any) -> None:
    searcher, writer = factory(), factory()
    pool = ["x1", "x2", "x3"]
    writer.save([rec(i, n) for n, i in enumerate(pool)])
    check(searcher, writer, pool, q(1))
    first = searcher._vectors.stats()["incarnation"]
    writer.reset()
    assert searcher.search(q(1)) == []
    # same ids, new vectors and scopes after the reset: nothing of the old cache survives
    writer.save([rec(i, 40 + n, scope="/new") for n, i in enumerate(pool)])
    check(searcher, writer, pool, q(2), scope_prefix="/new")
    second = searcher._vectors.stats()["incarnation"]
    assert second != first
    # emptying by deletes, then refilling, is a new incarnation too
    writer.delete()
    writer.save([rec("x1", 77, scope="/other")])
    check(searcher, writer, pool, q(3))
    check(searcher, writer, pool, q(3), scope_prefix="/new")
    assert searcher._vectors.stats()["incarnation"] not in (first, second)
    # a new dimension after a reset
    writer.reset()
    writer.save([rec("y", 5, embedding=[0.5, 0.25, 1.0])])
    hits = searcher.search([0.5, 0.25, 1.0])
    assert [r.id for r, _ in hits] == ["y"] and hits[0][1] == pytest.approx(1.0, abs=1e-6)


def test_async_face_shares_the_cache(factory: Any) -> None:
    searcher, writer = factory(), factory()
    pool = [f"a{i}" for i in range(6)]
    writer.save([rec(i, n, categories=[CATS[n % 3]]) for n, i in enumerate(pool[:4])])
    sync_hits = searcher.search(q(1), limit=4)
    loaded = gen(searcher)

    async def main() -> None:
        hits = await searcher.asearch(q(1), limit=4)
        assert [(r.id, s) for r, s in hits] == [(r.id, s) for r, s in sync_hits]
        await writer.asave([rec(i, 20 + n, categories=["c1"]) for n, i in enumerate(pool[4:])])
        truth = [await writer.aget_record(i) for i in pool]
        got = await searcher.asearch(q(2), limit=6, categories=["c1"])
        want = brute_force(truth, q(2), 6, categories=["c1"])
        assert [r.id for r, _ in got] == [i for i, _ in want]
        await searcher.aclose()

    asyncio.run(main())
    check(searcher, writer, pool, q(3), categories=["c1"])
    assert gen(searcher) == loaded


def test_namespace_above_the_limit_bypasses_the_cache(factory: Any) -> None:
    searcher, writer = factory(exact_cache_max_records=5), factory()
    pool = [f"b{i}" for i in range(8)]
    writer.save([rec(i, n, scope=SCOPES[n % 6]) for n, i in enumerate(pool[:4])])
    check(searcher, writer, pool, q(1))
    assert searcher._vectors.stats()["loaded"]
    writer.save([rec(i, 10 + n, scope=SCOPES[n % 6]) for n, i in enumerate(pool[4:])])
    check(searcher, writer, pool, q(2), limit=8)  # 8 > 5: the per-search bulk read
    assert not searcher._vectors.stats()["loaded"]
    check(searcher, writer, pool, q(3), scope_prefix="/a", categories=None)
    writer.delete(record_ids=pool[:4])
    check(searcher, writer, pool, q(4), limit=8)  # back under the limit: cached again
    assert searcher._vectors.stats()["loaded"]
    with pytest.raises(Exception, match="exact_cache_max_records"):
        factory(exact_cache_max_records=-1)


def test_compaction_keeps_results_exact(factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(vectors_module, "COMPACT_MIN_DEAD", 3)
    searcher, writer = factory(), factory()
    pool = [f"k{i}" for i in range(20)]
    writer.save(
        [rec(i, n, scope=SCOPES[n % 6], categories=[CATS[n % 3]]) for n, i in enumerate(pool)]
    )
    check(searcher, writer, pool, q(1))
    writer.delete(record_ids=pool[:14])
    check(searcher, writer, pool, q(2), limit=20)
    stats = searcher._vectors.stats()
    assert stats["rows"] == stats["present"] == 6  # dead rows dropped
    writer.save([rec(i, 200 + n, scope="/a/b", categories=["c1"]) for n, i in enumerate(pool[:5])])
    check(searcher, writer, pool, q(3), limit=20, scope_prefix="/a", categories=["c1", "c2"])


def test_records_older_than_the_log_are_cached_and_replaced(factory: Any, rawp: Any) -> None:
    """Records written before the change log existed: no log, no incarnation."""
    searcher, writer = factory(), factory()
    pool = ["o1", "o2", "o3"]
    writer.save([rec(i, n) for n, i in enumerate(pool)])
    ns = writer.keys.namespace
    rawp.delete(f"{{{ns}}}:changes")
    rawp.hdel(f"{{{ns}}}:meta", "log")
    check(searcher, writer, pool, q(1))
    writer.delete(record_ids=["o2"])  # creates a log: a new incarnation, so a reload
    check(searcher, writer, pool, q(2))
    writer.save([rec("o3", 9, scope="/z")])
    check(searcher, writer, pool, q(3), scope_prefix="/z")


def test_concurrent_searches_while_another_store_writes(factory: Any) -> None:
    searcher, writer = factory(), factory()
    pool = [f"c{i:02d}" for i in range(30)]
    writer.save([rec(i, n) for n, i in enumerate(pool)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def search_loop(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                searcher.search(q(rng.randint(0, 50)), limit=5, scope_prefix=rng.choice(SCOPES))
                if rng.random() < 0.1:
                    searcher._vectors.clear()  # force concurrent reloads too
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=search_loop, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    rng = random.Random(1)
    try:
        for n in range(60):
            rid = rng.choice(pool)
            if rng.random() < 0.3:
                writer.delete(record_ids=[rid])
            else:
                writer.save([rec(rid, 1000 + n, scope=rng.choice(SCOPES))])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    for scope in SCOPES:
        check(searcher, writer, pool, q(7), limit=30, scope_prefix=scope)


# ============================================================================ random interleavings
def test_random_interleavings_match_brute_force(factory: Any, rawp: Any) -> None:
    """Seeded random writes through several stores (sync and async), reads through
    others, occasional trims and resets; every search equals the brute force."""
    rng = random.Random(20261126)
    searchers = [factory(), factory()]
    writers = [factory(), factory()]
    pool = [f"id{i:02d}" for i in range(24)]
    ns = writers[0].keys.namespace
    seeds = iter(range(1, 10**6))

    def random_record(rid: str, embedding: Any = "auto") -> Any:
        src = rng.choice(SOURCES)
        return rec(
            rid,
            next(seeds),
            scope=rng.choice(SCOPES),
            categories=rng.sample(CATS, rng.randint(0, 2)),
            metadata={"m": rng.randint(0, 2)} if rng.random() < 0.7 else {},
            source=src,
            private=rng.random() < 0.3,
            embedding=embedding,
        )

    def random_filter() -> dict[str, Any]:
        flt: dict[str, Any] = {}
        if rng.random() < 0.5:
            flt["scope_prefix"] = rng.choice(SCOPES)
        if rng.random() < 0.3:
            flt["categories"] = rng.sample(CATS, rng.randint(1, 2))
        if rng.random() < 0.2:
            flt["metadata_filter"] = {"m": rng.randint(0, 2)}
        if rng.random() < 0.2:
            flt["source"] = rng.choice(SOURCES[1:])
        if rng.random() < 0.3:
            flt["include_private"] = False
            flt["viewer"] = rng.choice(SOURCES)
        return flt

    for step in range(150):
        writer = rng.choice(writers)
        op = rng.random()
        if op < 0.45:
            writer.save([random_record(i) for i in rng.sample(pool, rng.randint(1, 4))])
        elif op < 0.6:
            try:
                writer.update(random_record(rng.choice(pool), embedding=None))
            except ValidationError:
                pass  # the id does not exist
        elif op < 0.75:
            writer.delete(record_ids=rng.sample(pool, rng.randint(1, 3)))
        elif op < 0.8:
            writer.delete(scope_prefix=rng.choice(SCOPES[1:]), categories=[rng.choice(CATS)])
        elif op < 0.85:
            writer.touch_records(rng.sample(pool, 3))
        elif op < 0.9:
            records = [random_record(i) for i in rng.sample(pool, 2)]
            asyncio.run(writer.asave(records))
            asyncio.run(writer.aclose())
        elif op < 0.95:
            rawp.xtrim(f"{{{ns}}}:changes", maxlen=rng.randint(0, 3), approximate=False)
        elif op < 0.97:
            writer.reset(rng.choice(["/a", None]))
        for searcher in searchers:
            check(searcher, writer, pool, q(step), limit=rng.randint(1, 8), **random_filter())
