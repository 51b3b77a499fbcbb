"""MEMWORKER_COMMIT_REPLICAS=N: an enqueue returns, and a drain reports a commit, only
once N replicas have it (WAIT on the connection that wrote last), on a primary with a
replica and on a Valkey Cluster; fewer replicas in time is a ReplicationTimeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from valkey_servers import raw_client, start_server, stop_server

from memworker.errors import ConfigError, QueueError, ReplicationTimeout
from memworker.keys import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.worker.process import running_worker


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[Any, Any]]:
    primary = start_server("plain")
    replica = start_server("plain", "--replicaof", "127.0.0.1", str(primary.port))
    client = redis.Redis(port=replica.port)
    deadline = time.monotonic() + 20
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    client.close()
    yield primary, replica
    stop_server(replica)
    stop_server(primary)


def test_the_setting_is_read_and_checked() -> None:
    assert Settings.from_env({"MEMWORKER_COMMIT_REPLICAS": "2"}).commit_replicas == 2
    assert Settings.from_env({}).commit_replicas == 0
    with pytest.raises(ConfigError, match="MEMWORKER_COMMIT_REPLICAS must be a whole number"):
        Settings.from_env({"MEMWORKER_COMMIT_REPLICAS": "one"})
    with pytest.raises(ConfigError, match="from 0 to 16"):
        Settings(commit_replicas=17)
    assert issubclass(ReplicationTimeout, QueueError)


def test_enqueue_and_drain_wait_for_the_replica(primary_and_replica, namespace) -> None:
    primary, replica = primary_and_replica
    settings = Settings.from_url(primary.url, namespace=namespace, commit_replicas=1, search_mode="exact")
    keys = QueueKeys(namespace)
    on_replica = redis.Redis(port=replica.port)
    try:
        with MemoryQueue(settings, producer_id="p") as q:
            for i in range(20):
                job, _ = q.enqueue_encode_job([f"text {i}"])
                # read at once on the replica: the enqueue returned only once it was there
                assert on_replica.zscore(keys.producer("p").pending, job) is not None
            assert on_replica.get(keys.synced) is not None
            with running_worker(settings, threads=2):
                report = q.drain(timeout=60)
            assert report.committed == 20 and report.failed == []
            # the drain reported the commits only once the replica had them
            assert on_replica.zcard(keys.producer("p").pending) == 0
    finally:
        on_replica.close()


def test_async_enqueue_waits_for_the_replica(primary_and_replica, namespace) -> None:
    primary, replica = primary_and_replica
    settings = Settings.from_url(primary.url, namespace=namespace, commit_replicas=1)
    on_replica = redis.Redis(port=replica.port)

    async def run() -> str:
        q = MemoryQueue(settings, producer_id="pa")
        try:
            job, _ = await q.aenqueue_encode_job(["async text"])
            return job
        finally:
            await q.aclose()

    try:
        job = asyncio.run(run())
        assert on_replica.zscore(QueueKeys(namespace).producer("pa").pending, job) is not None
    finally:
        on_replica.close()


def test_fewer_replicas_than_asked_is_a_replication_timeout(primary_and_replica, namespace) -> None:
    primary, _ = primary_and_replica
    settings = Settings.from_url(
        primary.url + "?request_timeout_ms=500", namespace=namespace, commit_replicas=2
    )
    keys = QueueKeys(namespace)
    client = redis.Redis(port=primary.port)
    try:
        with MemoryQueue(settings, producer_id="p") as q:
            with pytest.raises(ReplicationTimeout, match=r"enqueue: confirmed by 1 of 2 replica\(s\)"):
                q.enqueue_encode(["not safe yet"])
        assert client.zcard(keys.producer("p").pending) == 1  # queued on the primary
    finally:
        client.close()


def test_commit_replicas_on_a_cluster(cluster_plain_server, namespace) -> None:
    settings = Settings.from_url(
        cluster_plain_server.url, namespace=namespace, commit_replicas=1, search_mode="exact"
    )
    keys = QueueKeys(namespace)
    rc = raw_client(cluster_plain_server)
    try:
        with MemoryQueue(settings, producer_id="p") as q:
            jobs = [q.enqueue_encode_job([f"text {i}"])[0] for i in range(10)]
            primary = rc.get_redis_connection(rc.get_node_from_key(keys.synced))
            replica = primary.info("replication")["slave0"]  # the slot's primary's replica
            on_replica = redis.Redis(host="127.0.0.1", port=int(replica["port"]))
            on_replica.execute_command("READONLY")
            assert all(on_replica.zscore(keys.producer("p").pending, j) is not None for j in jobs)
            on_replica.close()
            with running_worker(settings, threads=2):
                assert q.drain(timeout=60).committed == 10
    finally:
        rc.close()


def test_a_stopped_replica_holds_enqueue_and_drain_and_nothing_is_consumed(primary_and_replica, namespace) -> None:
    """With the replica stopped (SIGSTOP), neither an enqueue nor a drain returns as
    if safe: each raises ReplicationTimeout; the drain consumed nothing, so once the
    replica is back the next drain reports every commit."""
    import os
    import signal

    primary, replica = primary_and_replica
    settings = Settings.from_url(
        primary.url + "?request_timeout_ms=1000", namespace=namespace, commit_replicas=1,
        search_mode="exact",
    )  # fmt: skip
    stats = QueueKeys(namespace).stats
    client = redis.Redis(port=primary.port)
    try:
        with MemoryQueue(settings, producer_id="p") as q, running_worker(settings, threads=2):
            jobs = [q.enqueue_encode_job([f"before {i}"])[0] for i in range(3)]
            deadline = time.monotonic() + 60
            while int(client.hget(stats, "committed") or 0) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(ReplicationTimeout, match=r"enqueue: confirmed by 0 of 1"):
                    q.enqueue_encode(["while the replica is stopped"])
                with pytest.raises(ReplicationTimeout, match=r"drain: confirmed by 0 of 1"):
                    q.drain(timeout=30)
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            report = q.drain(timeout=60, job_ids=jobs)
            assert report.committed == 3 and report.failed == []  # nothing was consumed
            assert q.drain(timeout=60).failed == []
            assert q.status()["producer"]["pending"] == 0  # the fourth job committed too
    finally:
        client.close()
