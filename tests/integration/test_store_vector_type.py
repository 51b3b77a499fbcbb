"""Vector types: a namespace stores float32 or float16 vectors (``vector_type``).

``auto`` picks float16 where the search module indexes it (RediSearch >= 2.10, whose
index keeps a second copy of every vector) and float32 elsewhere. The type is the
namespace's, stored with its dimension: every process follows the first write.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from test_store import DIM, assert_same, mk, vec

from memworker import Settings, ValkeyStore
from memworker.errors import ConfigError, ValidationError


def f16(values: Any) -> list[float]:
    return np.asarray(values, dtype=np.float32).astype(np.float16).astype(np.float32).tolist()


def stored_bytes(raw: Any, store: ValkeyStore, rid: str) -> bytes:
    return raw.hget(f"{store.keys.prefix}:rec:{rid}", "embedding")


def test_auto_is_float16_with_redisearch_and_float32_without(store_factory, server, raw) -> None:
    store = store_factory()
    want = "float16" if server.module else "float32"
    assert store.vector_type == want
    record = mk("a", seed=1)
    store.save([record])
    assert raw.hget(f"{store.keys.prefix}:meta", "vtype").decode() == want
    assert len(stored_bytes(raw, store, "a")) == DIM * (2 if want == "float16" else 4)
    got = store.get_record("a")
    if want == "float16":
        assert got.embedding == f16(record.embedding)
    else:
        assert got.embedding == np.asarray(record.embedding, dtype=np.float32).tolist()
    [(hit, score)] = store.search(record.embedding, limit=3)
    assert hit.id == "a" and score == pytest.approx(1.0, abs=2e-3)


def test_module_index_has_the_namespace_type(module_server, raw_module) -> None:
    for vtype in ("float16", "float32"):
        store = ValkeyStore(module_server.url, namespace=f"t{uuid.uuid4().hex[:12]}", vector_type=vtype)
        try:
            store.save([mk("a", seed=2), mk("b", seed=3)])
            info = raw_module.execute_command("FT.INFO", store.keys.index)
            other = "FLOAT32" if vtype == "float16" else "FLOAT16"
            assert vtype.upper() in repr(info) and other not in repr(info)
            assert [r.id for r, _ in store.search(vec(3), limit=1)] == ["b"]
            assert store.list_records()[0].embedding is not None
        finally:
            store.reset()
            store.close()


@pytest.mark.parametrize("cache", [True, False], ids=["vector-cache", "scan"])
def test_float16_on_the_exact_path(plain_server, cache: bool) -> None:
    store = ValkeyStore(
        plain_server.url,
        namespace=f"t{uuid.uuid4().hex[:12]}",
        vector_type="float16",
        exact_cache_max_records=10_000 if cache else 0,
    )
    try:
        records = [mk(f"r{i}", scope="/s" if i % 2 else "/t", seed=i) for i in range(40)]
        store.save(records)
        assert store.vector_type == "float16"
        query = vec(7)
        hits = store.search(query, limit=40, min_score=-1.0)
        stored = np.asarray([f16(r.embedding) for r in records], dtype=np.float64)
        q = np.asarray(query, dtype=np.float64)
        expected = stored @ q / (np.linalg.norm(stored, axis=1) * np.linalg.norm(q))
        assert [r.id for r, _ in hits] == [records[i].id for i in np.argsort(-expected)]
        assert [s for _, s in hits] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)
        assert {r.id for r, _ in store.search(query, scope_prefix="/s", limit=40, min_score=-1.0)} == {
            f"r{i}" for i in range(1, 40, 2)
        }
        for r in records[:3]:
            got = store.get_record(r.id)
            assert got.embedding == f16(r.embedding)
            assert_same(got, r)
    finally:
        store.reset()
        store.close()


def test_a_namespace_keeps_the_type_of_its_first_write(server, namespace, raw) -> None:
    first = ValkeyStore(server.url, namespace=namespace, vector_type="float16")
    second = ValkeyStore(server.url, namespace=namespace, vector_type="float32")
    try:
        first.save([mk("a", seed=1)])
        assert second.vector_type == "float16"
        second.save([mk("b", seed=2)])
        assert len(stored_bytes(raw, second, "b")) == 2 * DIM
        assert second.get_record("b").embedding == f16(vec(2))
        assert {r.id for r, _ in second.search(vec(2), limit=2)} == {"a", "b"}
        # After a reset the next first write sets the type again (here `second`, which
        # still knew float16); whatever it is, every store follows it.
        first.reset()
        second.save([mk("c", seed=3)])
        first.save([mk("d", seed=4)])
        vtype = raw.hget(f"{{{namespace}}}:meta", "vtype").decode()
        width = 2 * DIM if vtype == "float16" else 4 * DIM
        assert first.vector_type == second.vector_type == vtype
        assert len(stored_bytes(raw, first, "c")) == len(stored_bytes(raw, first, "d")) == width
        assert {r.id for r, _ in first.search(vec(4), limit=2)} == {"c", "d"}
    finally:
        first.reset()
        first.close()
        second.close()


def test_a_store_that_cached_the_old_type_rewrites_in_the_new_one(server, namespace, raw) -> None:
    old = ValkeyStore(server.url, namespace=namespace, vector_type="float32")
    new = ValkeyStore(server.url, namespace=namespace, vector_type="float16")
    try:
        old.save([mk("a", seed=1)])
        assert old.vector_type == "float32"
        new.reset()  # another process empties the namespace and writes float16 first
        new.save([mk("b", seed=2)])
        old.save([mk("c", seed=3)])  # refused by the script, then redone as float16
        assert len(stored_bytes(raw, old, "c")) == 2 * DIM
        assert old.count() == 2
    finally:
        new.reset()
        old.close()
        new.close()


def test_a_value_beyond_float16_is_refused_before_anything_is_written(server, namespace) -> None:
    store = ValkeyStore(server.url, namespace=namespace, vector_type="float16", batch_size=2)
    try:
        big = vec(5)
        big[3] = 70_000.0
        batch = [mk("ok1", seed=1), mk("ok2", seed=2), mk("ok3", seed=3), mk("bad", embedding=big)]
        with pytest.raises(ValidationError, match=r"records\[3\]\.embedding .*65504"):
            store.save(batch)
        assert store.count() == 0
        store.save([mk("ok1", seed=1)])
        big[3] = 65_504.0  # the largest float16 is accepted
        store.save([mk("edge", embedding=big)])
        assert store.count() == 2
    finally:
        store.reset()
        store.close()


def test_a_query_beyond_float16_is_scaled_in_a_float16_namespace(server, namespace) -> None:
    # on every path: the index's, and the exact one that answers while an index builds
    # (CI once caught the module server still building it). Cosine similarity does not
    # depend on the query's length, so it is scaled before its float16 conversion
    # (until 2026-12-04 a value beyond 65504 was refused).
    store = ValkeyStore(server.url, namespace=namespace, vector_type="float16")
    try:
        store.save([mk("a", seed=1), mk("b", seed=2)])
        query = vec(1)
        want = [(r.id, s) for r, s in store.search(query, limit=2)]
        big = [v * 1e6 for v in query]
        for building in (False, True):
            store._state.index_building = building  # as if FT.INFO still said "indexing"
            got = [(r.id, s) for r, s in store.search(big, limit=2)]
            assert [i for i, _ in got] == [i for i, _ in want] == ["a", "b"]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=2e-3)
    finally:
        store.reset()
        store.close()


def test_vector_type_setting(monkeypatch) -> None:
    monkeypatch.setenv("MEMWORKER_VECTOR_TYPE", "float16")
    assert Settings.from_env().vector_type == "float16"
    assert Settings.resolve("valkey://127.0.0.1:6379").vector_type == "float16"
    assert Settings.resolve("valkey://127.0.0.1:6379", vector_type="float32").vector_type == "float32"
    with pytest.raises(ConfigError, match="vector_type must be one of auto, float32, float16, got 'int8'"):
        Settings(vector_type="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="vector_type"):
        ValkeyStore("valkey://127.0.0.1:1", vector_type="half")  # type: ignore[arg-type]


@pytest.fixture
def raw_module(module_server):
    import valkey

    client = valkey.Valkey(host="127.0.0.1", port=module_server.port)
    yield client
    client.close()
