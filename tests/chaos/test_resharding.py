"""A namespace's slot moved to another shard while producers enqueue, a worker process
commits and a reader drains and searches its own writes: with Valkey 9's atomic slot
migration (``CLUSTER MIGRATESLOTS``) on a cluster without a search module (Valkey
refuses it while a module that does not declare support for it is loaded, which
RediSearch 2.10 does not), and with ``memworker reshard`` (memworker.reshard: the
source pauses its writes while the slot is copied whole) on a cluster with RediSearch
on every node and a replica of each primary.

The slot moves whole: until the handover the source serves every key of it, then the
target does, so the scripts that touch undeclared keys of the slot never see half of
it (the older key-by-key ``MIGRATE`` would: docs/scaling.md). The exact-search cache
follows the change log, which moves with the slot. (An index left behind by a module
is made again by the first search on the target: tests/integration/test_store_index_moves.py.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from chaos_embedder import vector
from harness import Load, Workers, audit, record, wait_for

from memworker import ValkeyStore
from memworker.queue.producer import MemoryQueue
from memworker.reshard import move_namespace
from memworker.settings import Settings
from memworker.testing import start_cluster


def _migrations_done(source: Any) -> bool:
    states = [m.get(b"state") for m in source.execute_command("CLUSTER", "GETSLOTMIGRATIONS")]
    assert b"failed" not in states, states
    return bool(states) and all(s == b"success" for s in states)


def _atomic_migration(source: Any, target: Any, slot: int, settings: Settings) -> None:
    target_id = target.execute_command("CLUSTER", "MYID")
    source.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", target_id)
    wait_for(lambda: _migrations_done(source), 120, "the slot migration")


def _memworker_reshard(source: Any, target: Any, slot: int, settings: Settings) -> None:
    port = target.connection_pool.connection_kwargs["port"]
    report = move_namespace(settings, f"127.0.0.1:{port}")
    print(f"memworker reshard: {report.keys} keys, the source paused its writes {report.paused_ms} ms")
    assert report.keys > 0 and report.index is True


def test_a_namespace_slot_moves_under_load(ns, workdir):
    _move_under_load(ns, workdir, start_cluster(3, 0), _atomic_migration,
                     "Namespace slot moved to another shard under load (CLUSTER MIGRATESLOTS)")  # fmt: skip


def test_a_namespace_moves_with_the_search_module_under_load(ns, workdir):
    _move_under_load(ns, workdir, start_cluster(3, 1, module=True), _memworker_reshard,
                     "Namespace moved to another shard under load, RediSearch and replicas (memworker reshard)")  # fmt: skip


def _move_under_load(ns: str, workdir: Any, cluster: Any, move: Any, row: str) -> None:
    from redis.cluster import RedisCluster

    settings = Settings.from_url(cluster.url, namespace=ns)
    workers = Workers(cluster.url, ns, workdir)
    rc = RedisCluster(host="127.0.0.1", port=cluster.ports[0], socket_timeout=10)
    tag = "{" + ns + "}"
    source_port = rc.get_node_from_key(tag).port
    target_port = next(p for p in cluster.ports[: cluster.primaries] if p != source_port)
    source = redis.Redis(port=source_port)
    target = redis.Redis(port=target_port)
    misses: list[str] = []
    reads = 0
    errors = 0
    load = Load(
        lambda: MemoryQueue(settings, producer_id="pr"),
        text=lambda tag, n, k: f"moved {tag} {n} {k}",
        scope=lambda tag, n, k: f"/r/{tag}-{n}-{k}",
    )
    stop = load.stopping
    try:
        proc = workers.start(threads=2)
        workers.wait_live(rc)

        def reader() -> None:
            """Read-your-writes across the move: enqueue, drain, then search must find it."""
            nonlocal reads, errors
            q = MemoryQueue(settings, producer_id="reader")
            store = ValkeyStore(settings)
            n = 0
            while not stop.is_set():
                rid, text = f"read-{n}", f"read your writes {n}"
                try:
                    job, _ = q.enqueue_encode_job([{"id": rid, "text": text, "scope": f"/r/{rid}"}])
                    q.drain(timeout=60, job_ids=[job])
                    hits = store.search(vector(text).tolist(), scope_prefix=f"/r/{rid}", limit=3)
                    reads += 1
                    if [r.id for r, _ in hits] != [rid]:
                        misses.append(rid)
                        print(f"missed {rid}: found {[r.id for r, _ in hits]}")
                    n += 1
                except Exception:  # noqa: BLE001 - counted; the same write is tried again
                    errors += 1
                    time.sleep(0.1)
            q.close()
            store.close()

        load.start()
        read_thread = threading.Thread(target=reader, daemon=True)
        read_thread.start()
        time.sleep(3)
        slot = source.execute_command("CLUSTER", "KEYSLOT", tag)
        moved_at = time.time()
        move(source, target, slot, settings)
        migration_s = round(time.time() - moved_at, 2)
        reads_before = reads
        time.sleep(4)
        load.stop(30)
        read_thread.join(30)
        returned, errors = load.returned, errors + load.errors
        jobs = [j for j, _ in returned]
        with MemoryQueue(settings, producer_id="pr") as q:
            report = q.drain(timeout=90, job_ids=jobs)
        a = audit(rc, ns)
        expected = {i for _, ids in returned for i in ids}
        failed_ids = {i for f in report.failed for i in f.record_ids}
        lost = len(expected - a.ids - failed_ids)
        read_ids = {i for i in a.ids if i.startswith("read-")}
        unexpected = a.ids - expected - read_ids
        on_target = int(target.dbsize())
        record(row, injections=1, lost=lost, duplicates=len(unexpected),
               early_returns=len(misses), jobs=len(returned), reads=reads,
               reads_after_move=reads - reads_before, migration_s=migration_s,
               errors=errors, worker_survived=proc.poll() is None)  # fmt: skip
        print(f"moved in {migration_s} s; {len(returned)} jobs, {reads} reads "
              f"({len(misses)} missed), {errors} retried errors")
        assert proc.poll() is None, "the worker did not survive the move\n" + workers.logs()
        assert int(source.dbsize()) == 0 and on_target > 0  # the whole namespace moved
        assert report.failed == [] and lost == 0
        assert a.bad_records == [] and a.categories_ok
        assert unexpected == set() and a.records == len(a.ids)
        assert misses == [] and reads > reads_before  # read-your-writes held on the new shard
    finally:
        load.stop(0)
        workers.close()
        rc.close()
        cluster.stop()
