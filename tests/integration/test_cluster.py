"""memworker on a Valkey Cluster (3 primaries, 3 replicas): the topology is found at
connect or forced by the URL, and every key of a namespace (records, side indexes,
index, change log, queue, dramatiq's keys, markers) lands in one slot, while
namespaces spread over the shards. The store, queue, worker, drain, CLI and CrewAI
suites run on the same clusters (``ON_CLUSTER`` and ``queue_server`` in conftest.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from valkey_servers import raw_client

from memworker import ValkeyStore
from memworker.errors import ConfigError
from memworker.io.redispy import is_cluster
from memworker.queue.producer import MemoryQueue
from memworker.records import record_types
from memworker.settings import Settings
from memworker.worker.process import running_worker

MemoryRecord = record_types()[0]


def test_a_server_started_on_a_port_a_cluster_node_used_is_not_taken_for_one(monkeypatch) -> None:
    """The suite's throwaway servers reuse ports, and the process remembers each
    address's topology: a plain server on the port of a stopped cluster node must be
    asked again, not sent cluster clients ("Cluster mode is not enabled on this node",
    seen once in a clean-clone CI run)."""
    import memworker.testing as testing
    from memworker.io.plan import QUEUE_ERRORS, Script
    from memworker.io.redispy import RedisSyncDriver

    node = testing.start_server(False, cluster=True)
    port = node.port
    try:
        assert is_cluster(Settings.from_url(node.url)) is True  # remembered
    finally:
        node.stop()
    monkeypatch.setattr(testing, "free_port", lambda: port)  # the next server takes it
    plain = testing.start_server(False)
    driver = RedisSyncDriver(Settings.from_url(plain.url), QUEUE_ERRORS)
    try:
        assert plain.port == port
        assert is_cluster(Settings.from_url(plain.url)) is False

        def unknown_op():
            yield Script("queue", ["not-an-op"])

        with pytest.raises(Exception, match="UNKNOWNOP not-an-op$"):
            driver.run(unknown_op())
    finally:
        driver.close()
        plain.stop()


def test_the_topology_is_found_at_connect_or_forced_by_the_url(cluster_plain_server, plain_server) -> None:
    assert is_cluster(Settings.from_url(cluster_plain_server.url)) is True
    assert is_cluster(Settings.from_url(plain_server.url)) is False
    assert Settings.from_url(plain_server.url + "?cluster=yes").cluster is True
    assert Settings.from_url(cluster_plain_server.url + "?cluster=auto").cluster is None
    assert Settings.from_url(plain_server.url + "?cluster=no").cluster is False
    with pytest.raises(ConfigError, match="'cluster' must be 'yes', 'no' or 'auto'"):
        Settings.from_url(plain_server.url + "?cluster=maybe")
    with pytest.raises(ConfigError, match="only database 0"):
        Settings.from_url(f"valkey://127.0.0.1:{cluster_plain_server.port}/3?cluster=yes")
    # forced: a cluster client on the cluster's node, whatever INFO would say
    store = ValkeyStore(cluster_plain_server.url + "?cluster=yes", namespace="forced")
    store.save([MemoryRecord(content="x", embedding=[1.0, 0.0])])
    assert store.count() == 1
    store.reset()
    store.close()


def _keys_by_node(client: Any, pattern: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for key in client.scan_iter(match=pattern):
        name = key.decode()
        out.setdefault(client.get_node_from_key(name).port, []).append(name)
    return out


@pytest.mark.parametrize("kind", ["cluster_plain_server", "cluster_module_server"])
def test_each_namespace_is_one_slot_and_namespaces_spread_over_shards(request, kind) -> None:
    cluster = request.getfixturevalue(kind)
    client = raw_client(cluster)
    names = [f"crew{i}-{kind[8:11]}" for i in range(6)]
    rng = np.random.default_rng(3)
    shards = set()
    try:
        with running_worker(Settings.from_url(cluster.url, namespace=names[0]), threads=2):
            pass  # a worker's keys too (heartbeats, dramatiq's)
        for ns in names:
            settings = Settings.from_url(cluster.url, namespace=ns)
            store = ValkeyStore(settings)
            store.save([
                MemoryRecord(content=f"{ns} {i}", scope=f"/s/{i % 2}", categories=["c"],
                             embedding=rng.random(4).astype(np.float32).tolist())
                for i in range(5)
            ])  # fmt: skip
            with MemoryQueue(settings, producer_id="p") as queue:
                queue.enqueue_save([MemoryRecord(content="queued", embedding=[1.0, 0, 0, 0])])
            by_node = _keys_by_node(client, "{" + ns + "}:*")
            assert len(by_node) == 1, by_node  # one shard holds the whole namespace
            (keys,) = by_node.values()
            assert {client.keyslot(k) for k in keys} == {client.keyslot("{" + ns + "}")}
            assert any(":rec:" in k for k in keys) and any(":dq:" in k for k in keys)
            assert any(":pending:" in k for k in keys) and any(k.endswith(":meta") for k in keys)
            shards.update(by_node)
            if cluster.module:  # the index lives, and answers, on that shard
                node = client.get_node_from_key("{" + ns + "}:idx")
                assert f"{{{ns}}}:idx".encode() in client.execute_command("FT._LIST", target_nodes=node)
                assert len(store.search(rng.random(4).astype(np.float32).tolist(), limit=3)) == 3
            store.reset()
            store.close()
        assert len(shards) >= 2  # six namespaces land on more than one shard
    finally:
        client.close()


def test_a_client_made_after_the_urls_node_died_finds_the_cluster(namespace) -> None:
    """Every client starts from the nodes this process has seen, not only the URL's:
    one made after that node died (a failover) still reaches the cluster."""
    from memworker.testing import start_cluster

    cluster = start_cluster(3, 1)
    try:
        replica = cluster.nodes[-1]  # the URL names a node that then dies
        settings = Settings.from_url(replica.url, namespace=namespace, search_mode="exact")
        with MemoryQueue(settings, producer_id="p") as q:
            q.enqueue_save([MemoryRecord(content="before", embedding=[1.0, 0.0])])
        replica.process.kill()
        replica.process.wait()
        with MemoryQueue(settings, producer_id="p") as q:  # redis-py's cluster client
            q.enqueue_save([MemoryRecord(content="after", embedding=[0.0, 1.0])])
            assert len(q.pending()) == 2
        store = ValkeyStore(settings)  # glide's cluster client
        store.save([MemoryRecord(content="direct", embedding=[1.0, 1.0])])
        assert store.count() == 1
        store.close()
    finally:
        cluster.stop()


def test_a_workers_clock_offset_is_read_from_its_namespaces_primary(cluster_plain_server, namespace) -> None:
    """The server's clock on a cluster is the clock of the node the namespace lives on
    (its scripts read it): the health beat's ``TIME`` goes there, not to any node
    (redis-py's routing for ``TIME``), whose host's clock may differ."""
    import redis

    from memworker.io.redispy import redis_client
    from memworker.queue.jobs import QueueKeys
    from memworker.worker import clock

    settings = Settings.from_url(cluster_plain_server.url, namespace=namespace)
    client = redis_client(settings)
    # a namespace away from the node redis-py would send TIME to (its default node), so
    # that asking any node fails the test
    default = client.get_default_node()
    namespace = next(
        f"{namespace}{i}"
        for i in range(1000)
        if client.get_node_from_key(QueueKeys(f"{namespace}{i}").workers).port != default.port
    )
    key = QueueKeys(namespace).workers
    owner = client.get_node_from_key(key)
    nodes = {p: redis.Redis(port=p) for p in cluster_plain_server.ports}
    name = f"clock-{namespace}"

    def sent() -> dict[int, int]:
        """Commands each node served on ``client``'s named connections (its own count:
        other clients of the shared cluster do not change it)."""
        return {
            p: sum(int(c["tot-cmds"]) for c in n.client_list() if c["name"] == name)
            for p, n in nodes.items()
        }

    saved = clock._offset_ms
    try:
        for primary in client.get_primaries():
            client.execute_command("CLIENT SETNAME", name, target_nodes=primary)
        before = sent()
        for _ in range(12):
            clock.learn_offset(client, key)
        after = sent()
        calls = {p: after[p] - before[p] for p in nodes}
        assert calls[int(owner.port)] == 12, calls
        assert sum(calls.values()) == 12, calls
        assert abs(clock.server_now_ms() - owner.redis_connection.time()[0] * 1000) < 5_000
    finally:
        clock._offset_ms = saved
        client.close()
        for node in nodes.values():
            node.close()
