"""Concurrent writers: the side indexes stay exact.

Threads save, update, touch and delete overlapping ids (drawn from a small pool)
with random scopes and categories, on one shared store or on several store
objects (several clients). Afterwards every side-index answer (counts per
scope, category counts, child scopes, scope info, listings, search) must equal
the ground truth computed from ``get_record`` of every id in the pool.
"""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from memworker import ValidationError, ValkeyStore
from memworker.records import record_types

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

MemoryRecord = record_types()[0]

DIM = 4
POOL = [f"id{i:02d}" for i in range(16)]
SCOPES = ["/", "/a", "/a/b", "/a/c", "/ab", "/b/x/y"]
ALL_SCOPES = sorted({"/", "/a", "/a/b", "/a/c", "/ab", "/b", "/b/x", "/b/x/y"})
CATS = ["c1", "c2", "c3", "c4"]
T0 = datetime(2024, 6, 1)
THREADS = 8
OPS_PER_THREAD = 60


def make(rng: random.Random, rid: str) -> Any:
    return MemoryRecord(
        id=rid,
        content=f"{rid} {rng.random()}",
        scope=rng.choice(SCOPES),
        categories=rng.sample(CATS, rng.randint(0, 3)),
        created_at=T0
        + timedelta(seconds=rng.randint(0, 10**6), microseconds=rng.randint(0, 999_999)),
        embedding=[rng.uniform(0.1, 1.0) for _ in range(DIM)],
    )


def churn(store: ValkeyStore, seed: int, errors: list[BaseException]) -> None:
    """One thread's mix of writes; every call must either succeed or raise for a known reason."""
    rng = random.Random(seed)
    try:
        for _ in range(OPS_PER_THREAD):
            op = rng.random()
            if op < 0.5:
                store.save([make(rng, rid) for rid in rng.sample(POOL, rng.randint(1, 4))])
            elif op < 0.75:
                store.delete(record_ids=rng.sample(POOL, rng.randint(1, 3)))
            elif op < 0.85:
                moved = make(rng, rng.choice(POOL)).model_copy(update={"embedding": None})
                try:
                    store.update(moved)
                except ValidationError:
                    pass  # the id was not there (deleted by another thread): nothing written
            elif op < 0.92:
                store.touch_records(rng.sample(POOL, 3))
            elif op < 0.97:
                store.delete(scope_prefix=rng.choice(SCOPES[1:]), categories=[rng.choice(CATS)])
            else:
                store.delete(scope_prefix=rng.choice(SCOPES[1:]))
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def run_threads(stores: list[ValkeyStore], base_seed: int) -> None:
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=churn, args=(stores[i % len(stores)], base_seed + i, errors))
        for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    assert errors == [], errors


def in_scope(scope: str, prefix: str) -> bool:
    return prefix == "/" or scope == prefix or scope.startswith(prefix + "/")


def assert_indexes_match_records(store: ValkeyStore, raw: Any) -> None:
    records = [r for r in (store.get_record(rid) for rid in POOL) if r is not None]
    assert store.count() == len(records)
    for scope in ALL_SCOPES:
        inside = [r for r in records if in_scope(r.scope, scope)]
        cats: dict[str, int] = {}
        for r in inside:
            for c in set(r.categories):
                cats[c] = cats.get(c, 0) + 1
        depth = 0 if scope == "/" else scope.count("/")
        children = sorted(
            {
                "/" + "/".join(r.scope.split("/")[1 : depth + 2])
                for r in inside
                if r.scope.count("/") > depth and r.scope != "/"
            }
        )
        assert store.count(scope) == len(inside), scope
        assert store.list_categories(scope) == cats, scope
        assert store.list_scopes(scope) == children, scope
        info = store.get_scope_info(scope)
        assert info.record_count == len(inside), scope
        assert info.categories == sorted(cats), scope
        assert info.child_scopes == children, scope
        assert info.oldest_record == (min(r.created_at for r in inside) if inside else None), scope
        assert info.newest_record == (max(r.created_at for r in inside) if inside else None), scope
        listed = store.list_records(scope, limit=100)
        assert sorted(r.id for r in listed) == sorted(r.id for r in inside), scope
        assert [r.created_at for r in listed] == sorted(
            (r.created_at for r in inside), reverse=True
        )
        hits = store.search([1.0] * DIM, scope_prefix=scope, limit=100, min_score=-2.0)
        assert sorted(r.id for r, _ in hits) == sorted(r.id for r in inside), scope
    # no record hash outside the pool's live ids, no side-index key of an empty scope
    ns = store.keys.namespace
    keys = {k.decode() for k in raw.scan_iter(match=f"{{{ns}}}:*")}
    assert {k for k in keys if k.startswith(f"{{{ns}}}:rec:")} == {f"{{{ns}}}:rec:{r.id}" for r in records}
    live = {a for r in records for a in ALL_SCOPES if in_scope(r.scope, a)}
    assert {k.split(":tree:", 1)[1] for k in keys if ":tree:" in k} == live
    assert {k.split(":cats:", 1)[1] for k in keys if ":cats:" in k} == {
        s for s in live if any(r.categories for r in records if in_scope(r.scope, s))
    }
    assert {k.split(":children:", 1)[1] for k in keys if ":children:" in k} == {
        s for s in live if any(r.scope != s and in_scope(r.scope, s) for r in records)
    }


def test_threads_on_one_shared_store(store: ValkeyStore, raw: Any) -> None:
    run_threads([store], base_seed=100)
    assert_indexes_match_records(store, raw)
    # the indexes are still exact after everything is deleted
    store.delete(record_ids=POOL)
    assert_indexes_match_records(store, raw)
    assert store.count() == 0


def test_threads_on_two_store_objects(store_factory: Any, raw: Any) -> None:
    stores = [store_factory(), store_factory()]
    run_threads(stores, base_seed=200)
    for s in stores:
        assert_indexes_match_records(s, raw)


def test_concurrent_async_saves_and_deletes(store: ValkeyStore, raw: Any) -> None:
    async def main() -> None:
        rng = random.Random(7)
        tasks = []
        for i in range(60):
            if i % 3 == 2:
                tasks.append(store.adelete(record_ids=rng.sample(POOL, 2)))
            else:
                tasks.append(store.asave([make(rng, rid) for rid in rng.sample(POOL, 3)]))
        await asyncio.gather(*tasks)
        await store.aclose()

    asyncio.run(main())
    assert_indexes_match_records(store, raw)


def test_same_id_saved_concurrently_is_counted_once(store_factory: Any) -> None:
    """Many clients racing to insert the same ids: each id is counted exactly once."""
    stores = [store_factory() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def save_all(s: ValkeyStore, seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait(30)
            for _ in range(10):
                s.save(
                    [
                        make(rng, rid).model_copy(update={"scope": "/same", "categories": ["k"]})
                        for rid in POOL
                    ]
                )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save_all, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert stores[0].count() == stores[0].count("/same") == len(POOL)
    assert stores[0].list_categories() == {"k": len(POOL)}
    assert stores[0].list_scopes() == ["/same"]
    vectors = np.array([stores[0].get_record(rid).embedding for rid in POOL])
    assert vectors.shape == (len(POOL), DIM)
