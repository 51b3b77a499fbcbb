"""A Valkey Cluster primary SIGKILLed under load (3 primaries, 3 replicas): its replica
is promoted, and producers, a worker process and drains follow it by themselves.

Replication is asynchronous: without MEMWORKER_COMMIT_REPLICAS an enqueue the dead
primary acknowledged but never sent to its replica is lost, and the producer's drain
reports that job lost (never committed). With MEMWORKER_COMMIT_REPLICAS=1 (and two
replicas per primary, so the promoted one still has a replica to confirm) an enqueue
returns only once a replica has it, so nothing acknowledged is lost. In both, the
promoted replica holds a prefix of the primary's writes, in which a job's commit and
its ack are one step: a commit lost with the primary is redelivered and committed
again, never duplicated."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from harness import Load, Workers, audit, record, wait_for

from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.testing import start_cluster


def _retrying(fn: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the cluster is failing over
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _slot_owner(client: Any, key: str) -> int:
    slot = client.execute_command("CLUSTER", "KEYSLOT", key)
    for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(primary[1])
    return -1


@pytest.mark.parametrize("replicas", [0, 1])
def test_primary_sigkill_under_load(replicas, ns, workdir):
    from redis.cluster import RedisCluster

    # With N replicas asked, a shard needs N + 1 replicas to keep confirming writes
    # after it lost one node (its promoted replica then has N left).
    cluster = start_cluster(3, replicas + 1)
    settings = Settings.from_url(cluster.url, namespace=ns, commit_replicas=replicas)
    workers = Workers(cluster.url, ns, workdir, MEMWORKER_COMMIT_REPLICAS=str(replicas))
    rc = RedisCluster(host="127.0.0.1", port=cluster.ports[0], socket_timeout=10)
    victim_port = rc.get_node_from_key("{" + ns + "}:meta").port
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    survivor = next(n for n in cluster.nodes[: cluster.primaries] if n.port != victim_port)
    load = Load(
        lambda: MemoryQueue(settings, producer_id="pf"),
        text=lambda tag, n, k: f"failover {tag} {n} {k}",
        scope=lambda tag, n, k: f"/r/{n % 5}",
    )
    try:
        proc = workers.start(threads=2)
        workers.wait_live(rc)
        # PUBLISH reaches every node: listen on one that lives
        load.start(observe=(survivor.port, "{" + ns + "}:done:pf"))
        time.sleep(3)
        crash = time.time()
        victim.process.kill()
        victim.process.wait()
        probe = redis.Redis(port=survivor.port)
        wait_for(lambda: _slot_owner(probe, "{" + ns + "}") not in (victim_port, -1), 60,
                 "the replica's promotion")  # fmt: skip
        promoted_after = round(time.time() - crash, 2)
        present_after = _retrying(lambda: audit(rc, ns).ids)  # before the workers redo anything
        time.sleep(4)
        load.stop()
        returned, done_at = load.returned, load.done_at
        jobs = [j for j, _ in returned]
        with MemoryQueue(settings, producer_id="pf") as q:
            report = _retrying(lambda: q.drain(timeout=60, job_ids=jobs))
        a = _retrying(lambda: audit(rc, ns))
        lost_jobs = set(report.lost)
        expected = {i for _, ids in returned for i in ids}
        failed_ids = {i for f in report.failed for i in f.record_ids}
        reported_lost = {i for j, ids in returned if j in lost_jobs for i in ids}
        silently_lost = len(expected - a.ids - failed_ids - reported_lost)
        by_job = dict(returned)
        lost_commits = [crash - t for j, t in done_at.items()
                        if t < crash and j in by_job and not set(by_job[j]) <= present_after]  # fmt: skip
        window = round(max(lost_commits), 3) if lost_commits else 0.0
        early = sum(1 for j, ids in returned
                    if not set(ids) <= a.ids and j not in {f.job_id for f in report.failed})  # fmt: skip
        record(f"SIGKILL a cluster primary, replica promoted (MEMWORKER_COMMIT_REPLICAS={replicas})",
               injections=1, lost=silently_lost, duplicates=a.records - len(expected & a.ids),
               early_returns=early, jobs=len(returned), jobs_reported_lost=len(lost_jobs),
               commits_redone=len(lost_commits), loss_window_s=window,
               promoted_after_s=promoted_after, enqueue_errors=load.errors,
               worker_survived=proc.poll() is None)  # fmt: skip
        print(f"replicas={replicas}: {len(returned)} jobs, {len(lost_jobs)} reported lost, "
              f"{len(lost_commits)} commits redone, promoted after {promoted_after} s")
        assert proc.poll() is None, "the worker did not survive the failover\n" + workers.logs()
        assert a.bad_records == [] and a.categories_ok
        assert a.records == len(expected & a.ids)  # no duplicate
        assert silently_lost == 0 and early == 0
        if replicas:
            assert lost_jobs == set()  # every acknowledged enqueue survived the failover
    finally:
        load.stop(0)
        workers.close()
        rc.close()
        cluster.stop()
