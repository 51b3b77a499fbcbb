"""A namespace whose index is gone from the server it is on (its slot moved to another
shard of a cluster; RediSearch does not move indexes) or still building: a search
answers on the exact path, right, and the index is made again where the records are."""

from __future__ import annotations

import time

import numpy as np
import pytest

from memworker import ValkeyStore
from memworker.records import record_types

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

MemoryRecord = record_types()[0]


def test_a_search_after_the_index_vanished_is_right_and_rebuilds_it(server, store, raw) -> None:
    if not server.module:
        pytest.skip("an index exists only with a search module")
    rng = np.random.default_rng(11)
    records = [
        MemoryRecord(id=f"r{i}", content=f"memory {i}", scope="/a", categories=["c"],
                     embedding=rng.random(16).astype(np.float32).tolist())
        for i in range(60)
    ]  # fmt: skip
    store.save(records)
    query = records[17].embedding
    before = [r.id for r, _ in store.search(query, limit=5)]
    assert before[0] == "r17"
    node = raw.get_node_from_key(store.keys.index) if hasattr(raw, "get_node_from_key") else None
    options = {"target_nodes": node} if node is not None else {}
    raw.execute_command("FT.DROPINDEX", store.keys.index, **options)  # what a shard move leaves
    after = [r.id for r, _ in store.search(query, limit=5)]
    assert after == before  # the exact path, not an empty answer
    assert store.keys.index.encode() in raw.execute_command("FT._LIST", **options)  # made again
    assert store.ensure_index() is True
    assert [r.id for r, _ in store.search(query, limit=5)] == before
    other = ValkeyStore(server.url, namespace=store.keys.namespace)  # a process that never saw it
    assert [r.id for r, _ in other.search(query, limit=5)] == before
    other.close()


def test_an_index_dropped_while_it_was_building_is_made_again(server, store, raw) -> None:
    """The store thought its index was still scanning (FT.INFO) when it vanished: the
    next search answers on the exact path instead of failing on FT.INFO."""
    if not server.module:
        pytest.skip("an index exists only with a search module")
    records = [MemoryRecord(id=f"b{i}", content=f"m {i}", embedding=[float(i == j) for j in range(8)])
               for i in range(8)]  # fmt: skip
    store.save(records)
    store._state.index_building = True  # as right after FT.CREATE over existing records
    node = raw.get_node_from_key(store.keys.index) if hasattr(raw, "get_node_from_key") else None
    raw.execute_command("FT.DROPINDEX", store.keys.index, **({"target_nodes": node} if node else {}))
    assert [r.id for r, _ in store.search(records[3].embedding, limit=1)] == ["b3"]
    assert store.ensure_index() is True


class _FtInfoCalls:
    """FT.INFO calls naming one index, seen by MONITOR on the node that owns it.

    Only calls naming this index count: the session's module server is shared, and any
    other store's first write checks its own index with FT.INFO (INFO commandstats counted
    those too, and the count was off by one when one landed in the window)."""

    def __init__(self, raw, index: str) -> None:
        import valkey

        if hasattr(raw, "get_node_from_key"):
            self._node = raw.get_node_from_key(index)
            self._client = valkey.Valkey(host=self._node.host, port=self._node.port)
        else:
            self._node = None
            self._client = valkey.Valkey(connection_pool=raw.connection_pool)
        self._raw, self._index, self.calls = raw, index, 0
        self._monitor = self._client.monitor()
        self._monitor.__enter__()

    def count(self) -> int:
        """Reads what the node ran up to now (an ECHO marks the end) and returns the total."""
        mark = f"ft-info-count-{id(self)}-{self.calls}-{time.monotonic_ns()}"
        self._raw.execute_command("ECHO", mark, **({"target_nodes": self._node} if self._node else {}))
        while True:
            command = self._monitor.next_command()["command"]
            if mark in command:
                return self.calls
            name, _, rest = command.partition(" ")
            if name.upper() == "FT.INFO" and self._index in rest:
                self.calls += 1

    def close(self) -> None:
        self._monitor.__exit__(None, None, None)
        self._client.close()


def test_a_store_checks_an_index_another_store_made_again_before_trusting_it(
    server, store, store_factory, raw
) -> None:
    """A namespace moved shard: the first store there made the index again, and it scans
    the records in the background. A store that searched the old index must not take
    FT.SEARCH's answer from the new one before FT.INFO says it is built ({ns}:idxgen)."""
    if not server.module:
        pytest.skip("an index exists only with a search module")
    records = [MemoryRecord(id=f"g{i}", content=f"m {i}", embedding=[float(i == j) for j in range(8)])
               for i in range(8)]  # fmt: skip
    store.save(records)
    # Wait until the module indexed them: a store that found its index still scanning
    # checks FT.INFO again at its next search (a loaded CI host counted that one).
    assert store.ensure_index() is True
    query = records[5].embedding
    assert [r.id for r, _ in store.search(query, limit=1)] == ["g5"]
    calls = _FtInfoCalls(raw, store.keys.index)
    try:
        before = calls.count()
        assert [r.id for r, _ in store.search(query, limit=1)] == ["g5"]
        assert calls.count() == before  # no new index: no check
        node = raw.get_node_from_key(store.keys.index) if hasattr(raw, "get_node_from_key") else None
        raw.execute_command("FT.DROPINDEX", store.keys.index, **({"target_nodes": node} if node else {}))
        other = store_factory()  # the first store on the new shard makes the index again
        assert other.ensure_index() is True
        before = calls.count()
        assert [r.id for r, _ in store.search(query, limit=1)] == ["g5"]
        assert calls.count() == before + 1  # checked once, then trusted
        assert [r.id for r, _ in store.search(query, limit=1)] == ["g5"]
        assert calls.count() == before + 1
    finally:
        calls.close()


def test_a_search_right_after_another_store_made_the_index_again_is_right(
    server, store, store_factory, raw
) -> None:
    """The same with an index that is most likely still scanning (5,000 records) when
    the older store searches: its answer comes from the exact path until the scan ends."""
    if not server.module:
        pytest.skip("an index exists only with a search module")
    rng = np.random.default_rng(3)
    records = [MemoryRecord(id=f"s{i}", content=f"m {i}", scope=f"/s/{i}",
                            embedding=rng.random(16).astype(np.float32).tolist())
               for i in range(5_000)]  # fmt: skip
    for i in range(0, len(records), 1_000):
        store.save(records[i : i + 1_000])
    probes = [records[i] for i in range(0, 5_000, 250)]
    assert all([r.id for r, _ in store.search(p.embedding, scope_prefix=p.scope, limit=1)] == [p.id]
               for p in probes)  # fmt: skip
    node = raw.get_node_from_key(store.keys.index) if hasattr(raw, "get_node_from_key") else None
    raw.execute_command("FT.DROPINDEX", store.keys.index, **({"target_nodes": node} if node else {}))
    other = store_factory()
    other.search(probes[0].embedding, limit=1)  # finds no index: makes it, does not wait
    found = [[r.id for r, _ in store.search(p.embedding, scope_prefix=p.scope, limit=1)] for p in probes]
    assert found == [[p.id] for p in probes]
