"""``memworker reshard``: a namespace's slot moved whole to another primary with one
script on the source (memworker.reshard), on the test clusters with and without
RediSearch (which refuses Valkey's atomic slot migration). The move under load is in
tests/chaos/test_resharding.py."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from memworker import ValkeyStore
from memworker.cli import EXIT_OK, EXIT_USAGE, main
from memworker.errors import ConfigError
from memworker.keys import tag
from memworker.queue.producer import MemoryQueue
from memworker.records import record_types
from memworker.reshard import ReshardError, move_namespace
from memworker.settings import Settings

MemoryRecord = record_types()[0]


@pytest.fixture(params=["cluster_plain_server", "cluster_module_server"], ids=["plain", "module"])
def cluster(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def _where(cluster, namespace: str) -> tuple[redis.Redis, redis.Redis, int, str]:
    """(source, another primary, slot, the other primary's host:port)."""
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        owner = rc.get_node_from_key(tag(namespace))
        slot = rc.keyslot(tag(namespace))
        other = next(n for n in rc.get_primaries() if n.port != owner.port)
        return redis.Redis(port=owner.port), redis.Redis(port=other.port), slot, f"127.0.0.1:{other.port}"
    finally:
        rc.close()


def _saved(cluster, namespace: str, n: int) -> tuple[Settings, redis.Redis, redis.Redis, int, str]:
    """A namespace of ``n`` records: its settings, source, another primary, slot, target."""
    settings = Settings.from_url(cluster.url, namespace=namespace)
    with ValkeyStore(settings) as store:
        store.save(_records(n))
    return (settings, *_where(cluster, namespace))


def _keys(node: redis.Redis, slot: int) -> int:
    return int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))


def _writes_at_once(node: redis.Redis, namespace: str) -> None:
    """The node takes a write within a second (a paused one would make it wait)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    quick = redis.Redis(port=node.connection_pool.connection_kwargs["port"], socket_timeout=1,
                        retry=Retry(NoBackoff(), 0))  # fmt: skip
    try:
        quick.set(f"{tag(namespace)}:after", 1)
    finally:
        quick.close()


def _records(n: int, dims: int = 16) -> list:
    rng = np.random.default_rng(5)
    return [MemoryRecord(id=f"r{i}", content=f"memory {i}", scope=f"/s/{i % 4}", categories=["c"],
                         embedding=rng.random(dims).astype(np.float32).tolist())
            for i in range(n)]  # fmt: skip


def test_a_namespace_moves_whole_with_its_queue_and_index(cluster, namespace) -> None:
    settings = Settings.from_url(cluster.url, namespace=namespace)
    records = _records(300)
    with ValkeyStore(settings) as store:
        store.save(records)
        before = [r.id for r, _ in store.search(records[42].embedding, scope_prefix="/s/2", limit=5)]
    with MemoryQueue(settings, producer_id="p") as q:
        q.enqueue_encode([{"text": "waiting for a worker", "scope": "/q"}])  # no worker: stays queued
    source, target, slot, to = _where(cluster, namespace)
    keys_before = _keys(source, slot)

    report = move_namespace(settings, to)

    assert (report.slot, report.target, report.keys) == (slot, to, keys_before)
    assert (_keys(source, slot), _keys(target, slot)) == (0, keys_before)
    assert report.index is (True if cluster.module else None)
    if cluster.module:
        assert tag(namespace).encode() + b":idx" not in source.execute_command("FT._LIST")
        assert tag(namespace).encode() + b":idx" in target.execute_command("FT._LIST")
    with ValkeyStore(settings) as store:  # a new client finds the namespace on the target
        assert store.count() == 300
        assert [r.id for r, _ in store.search(records[42].embedding, scope_prefix="/s/2", limit=5)] == before
    with MemoryQueue(settings, producer_id="p") as q:
        assert q.status()["depth"] == 1  # the queued job moved with the namespace
    again = move_namespace(settings, to)  # already there: nothing to do
    assert (again.keys, again.source, again.target) == (0, to, to)


def test_a_move_whose_copy_fails_leaves_the_namespace_whole_on_its_source(cluster, namespace) -> None:
    settings, source, target, slot, to = _saved(cluster, namespace, 50)
    keys_before = _keys(source, slot)
    old = target.config_get("maxmemory")["maxmemory"]
    target.config_set("maxmemory", 1)  # every RESTORE on the target fails (OOM)
    try:
        with pytest.raises(ReshardError, match="failed, nothing moved") as failed:
            move_namespace(settings, to)
    finally:
        target.config_set("maxmemory", old)
    # the server's answer, not the client's copy of the command (RESTORE's key names
    # and DUMP payload, with the records' text, printed to the terminal)
    text = str(failed.value)
    assert "maxmemory" in text and "RESTORE" not in text and ":rec:" not in text and text.isprintable()
    assert (_keys(source, slot), _keys(target, slot)) == (keys_before, 0)
    assert f"[{slot}-<-".encode() not in target.execute_command("CLUSTER", "NODES")  # the import ended
    with ValkeyStore(settings) as store:
        assert store.count() == 50


def test_a_copy_that_would_outlast_the_pause_moves_nothing(cluster_plain_server, namespace) -> None:
    settings, source, target, slot, to = _saved(cluster_plain_server, namespace, 20)
    with pytest.raises(ReshardError, match="outlast the pause"):
        move_namespace(settings, to, pause_ms=1)
    assert _keys(source, slot) > 0 and _keys(target, slot) == 0
    _writes_at_once(source, namespace)
    with ValkeyStore(settings) as store:
        assert store.count() == 20


def test_an_interrupted_copy_moves_nothing(cluster_plain_server, namespace, monkeypatch) -> None:
    """Ctrl-C after the copy, before the hand-over: the target's copies are removed,
    the source takes writes again, and the interrupt goes on."""
    import memworker.reshard as reshard

    settings, source, target, slot, to = _saved(cluster_plain_server, namespace, 20)
    copy = reshard._copy_slot

    def copy_then_interrupt(*args, **kwargs):
        copy(*args, **kwargs)
        assert _keys(target, slot) > 0
        raise KeyboardInterrupt

    monkeypatch.setattr(reshard, "_copy_slot", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        move_namespace(settings, to)
    assert _keys(source, slot) > 0 and _keys(target, slot) == 0
    _writes_at_once(source, namespace)
    with ValkeyStore(settings) as store:
        assert store.count() == 20


def test_a_target_that_holds_keys_of_the_slot_is_refused(cluster, namespace) -> None:
    settings, source, target, slot, to = _saved(cluster, namespace, 5)
    source_id = source.execute_command("CLUSTER", "MYID")
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    pipe = target.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command("SET", f"{tag(namespace)}:stray", 1)  # what an interrupted move leaves
    pipe.execute()
    try:
        with pytest.raises(ReshardError, match="already holds keys of slot"):
            move_namespace(settings, to)
        with ValkeyStore(settings) as store:
            assert store.count() == 5
    finally:
        pipe = target.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command("DEL", f"{tag(namespace)}:stray")
        pipe.execute()
        target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def test_the_cli_moves_a_namespace_and_names_a_wrong_target(cluster_plain_server, namespace, capsys) -> None:
    url = cluster_plain_server.url
    with ValkeyStore(url, namespace=namespace) as store:
        store.save(_records(3))
    _, _, slot, to = _where(cluster_plain_server, namespace)
    assert main(["reshard", "--url", url, "--namespace", namespace, "--to", "127.0.0.1:1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--to '127.0.0.1:1' is not a primary" in err and "primaries: 127.0.0.1:" in err
    assert main(["reshard", "--url", url, "--namespace", namespace, "--to", to, "--pause-ms", "0"]) == EXIT_USAGE
    assert "pause_ms must be an integer from 1 to 3600000 (ms), got 0" in capsys.readouterr().err
    assert main(["reshard", "--url", url, "--namespace", namespace, "--to", to]) == EXIT_OK
    assert f"slot {slot} moved from" in capsys.readouterr().out


def test_reshard_needs_a_cluster(plain_server, namespace) -> None:
    with pytest.raises(ConfigError, match="standalone server"):
        move_namespace(Settings.from_url(plain_server.url, namespace=namespace), "127.0.0.1:1")
