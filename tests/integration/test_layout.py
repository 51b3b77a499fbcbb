"""Key layout 2 (``{ns}:...``): data of layout 1 (``ns:...``) is refused by the store,
the queue and the worker with an error naming ``memworker migrate``, and that command
moves it (records, side indexes, queue keys; the index rebuilt) without loss."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from memworker import ValkeyStore
from memworker.cli import main
from memworker.errors import ConfigError
from memworker.keys import Keys
from memworker.layout import LayoutError, migrate
from memworker.queue.producer import MemoryQueue
from memworker.records import record_types
from memworker.worker.actors import make_broker

MemoryRecord = record_types()[0]


def _records(n: int) -> list[Any]:
    rng = np.random.default_rng(7)
    return [
        MemoryRecord(id=f"r{i}", content=f"memory {i}", scope=f"/crew/{i % 3}",
                     categories=["c"], embedding=rng.random(8).astype(np.float32).tolist())
        for i in range(n)
    ]  # fmt: skip


def _make_layout_1(server: Any, raw: Any, namespace: str, n: int = 12) -> list[Any]:
    """A namespace as layout 1 wrote it: the same keys without the hash tag, the index
    named ``ns:idx`` over ``ns:rec:``, ``layout`` 1 in its meta hash, a queued job."""
    records = _records(n)
    store = ValkeyStore(server.url, namespace=namespace)
    store.save(records)
    store.close()
    queue = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    queue.enqueue_encode(["a queued text"])
    queue.close()
    keys = Keys(namespace)
    if server.module:
        raw.execute_command("FT.DROPINDEX", keys.index)
    for key in list(raw.scan_iter(match=keys.prefix + ":*")):
        raw.rename(key, namespace + key.decode()[len(keys.prefix) :])
    raw.hset(f"{namespace}:meta", "layout", "1")
    if server.module:
        raw.execute_command(
            "FT.CREATE", f"{namespace}:idx", "ON", "HASH", "PREFIX", "1", f"{namespace}:rec:",
            "SCHEMA", "content", "TEXT",
        )  # fmt: skip
    return records


def _tagged(raw: Any, namespace: str) -> list[bytes]:
    return list(raw.scan_iter(match="{" + namespace + "}:*"))


def test_store_queue_and_worker_refuse_layout_1_and_write_nothing(server, raw, namespace) -> None:
    _make_layout_1(server, raw, namespace)
    store = ValkeyStore(server.url, namespace=namespace)
    with pytest.raises(LayoutError, match=f"memworker migrate --namespace {namespace}"):
        store.count()
    with pytest.raises(LayoutError):
        store.save(_records(1))
    store.close()
    queue = MemoryQueue(server.url, namespace=namespace, producer_id="p2")
    with pytest.raises(LayoutError):
        queue.enqueue_encode(["x"])
    queue.close()
    with pytest.raises(LayoutError):
        make_broker(ValkeyStore(server.url, namespace=namespace).settings)
    assert _tagged(raw, namespace) == []  # nothing written in the new layout
    assert isinstance(LayoutError(namespace), ConfigError)


def test_migrate_moves_everything_and_the_store_serves_it(server, raw, namespace, capsys) -> None:
    records = _make_layout_1(server, raw, namespace)
    before = sorted(k.decode() for k in raw.scan_iter(match=namespace + ":*"))
    assert main(["--url", server.url, "--namespace", namespace, "migrate", "--dry-run"]) == 0
    assert "would move" in capsys.readouterr().out
    assert sorted(k.decode() for k in raw.scan_iter(match=namespace + ":*")) == before

    assert main(["--url", server.url, "--namespace", namespace, "migrate"]) == 0
    out = capsys.readouterr().out
    assert f"moved {len(before)} key(s)" in out
    assert ("the vector index is rebuilt" in out) == server.module
    assert list(raw.scan_iter(match=namespace + ":*")) == []
    assert sorted(k.decode()[len(namespace) + 2 :] for k in _tagged(raw, namespace)) == sorted(
        k[len(namespace) :] for k in before
    )
    keys = Keys(namespace)
    assert raw.hget(keys.meta, "layout") == b"2"
    store = ValkeyStore(server.url, namespace=namespace)
    assert store.count() == len(records)
    hits = store.search(records[4].embedding, limit=1)
    assert hits[0][0].id == records[4].id
    assert store.list_scopes("/crew") == ["/crew/0", "/crew/1", "/crew/2"]
    if server.module:
        assert f"{namespace}:idx".encode() not in raw.execute_command("FT._LIST")
        assert keys.index.encode() in raw.execute_command("FT._LIST")
    store.close()
    queue = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    assert queue.status()["depth"] == 1  # the queued job moved with its queue
    queue.close()


def test_migrate_refuses_while_old_workers_live_and_on_a_key_in_both_layouts(server, raw, namespace) -> None:
    _make_layout_1(server, raw, namespace, n=3)
    raw.zadd(f"{namespace}:workers", {"w1": int(time.time() * 1000)})
    client = raw
    with pytest.raises(ConfigError, match="stop them before"):
        migrate(client, namespace)
    raw.delete(f"{namespace}:workers")
    raw.set("{" + namespace + "}:stats", "written by a newer worker")
    raw.hset(f"{namespace}:stats", "committed", "1")
    with pytest.raises(ConfigError, match="exists in both layouts"):
        migrate(client, namespace)
    assert raw.get("{" + namespace + "}:stats") == b"written by a newer worker"  # not overwritten
