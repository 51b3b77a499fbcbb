"""A namespace whose index is gone from the server it is on (its slot moved to another
shard of a cluster; RediSearch does not move indexes) or still building: a search
answers on the exact path, right, and the index is made again where the records are."""

from __future__ import annotations

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
