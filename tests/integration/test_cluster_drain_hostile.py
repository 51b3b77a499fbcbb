"""A hostile review of the drain barrier on a Valkey Cluster while a namespace moves
(``memworker reshard``) and while a primary fails over.

What a drain must do whatever the cluster does meanwhile: report each of its jobs
exactly once (committed, failed or lost), never call a committed job lost, never
return before the job's records are readable, never raise anything but memworker's
errors, and report a job lost with the server rather than skip it.

Reshards run on the session cluster (as tests/integration/test_reshard.py does: only
the test's namespace slot moves); failovers on throwaway clusters of their own.

Defect proven (4 tests failed before its fix, session 31): after a failover a drain's
wake-up subscription stayed on the dead primary (redis-py's cluster pub/sub takes its
node from the slot map, which only a command refreshes) and every retry reached it:
the drain, and every drain after it, raised QueueConnectionLostError with the cluster
healthy again. The subscription now only shortens waits: lost, the drain polls and
subscribes again (memworker.queue.drain._Wakeups).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from test_worker import fake, workers  # noqa: F401

import memworker.reshard as reshard
from memworker.errors import MemworkerError
from memworker.io.plan import QUEUE_ERRORS, Pipeline, Script, one
from memworker.io.redispy import RedisSyncDriver
from memworker.keys import QueueKeys, tag
from memworker.queue.drain import Wait, _replication, drain_plan
from memworker.queue.producer import MemoryQueue
from memworker.reshard import move_namespace
from memworker.settings import Settings
from memworker.store.store import ValkeyStore
from memworker.testing import start_cluster


# ----------------------------------------------------------------------------- helpers
def _target(cluster: Any, namespace: str) -> str:
    """host:port of a primary that does not own the namespace's slot now."""
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        owner = rc.get_node_from_key(tag(namespace))
        other = next(n for n in rc.get_primaries() if n.port != owner.port)
        return f"127.0.0.1:{other.port}"
    finally:
        rc.close()


def _owner_port(cluster: Any, namespace: str) -> int:
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        return int(rc.get_node_from_key(tag(namespace)).port)
    finally:
        rc.close()


def _readable(settings: Settings, record_ids: list[str]) -> list[str]:
    """The ids among ``record_ids`` whose record cannot be read now."""
    with ValkeyStore(settings) as store:
        return [i for i in record_ids if store.get_record(i) is None]


def _settings(cluster: Any, namespace: str, **kw: Any) -> Settings:
    return Settings.from_url(cluster.url, namespace=namespace, search_mode="exact", **kw)


def _drain_in_background(q: Any, out: dict[str, Any]) -> threading.Thread:
    """``q.drain(timeout=60)`` on a thread: its report (or error) lands in ``out``."""

    def wait() -> None:
        try:
            out["report"] = q.drain(timeout=60)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t


# ----------------------------------------------------------------------------- 1 + 5
@pytest.mark.parametrize("phase", ["copy", "handover"])
def test_drains_of_two_producers_across_a_reshard_report_each_job_once(
    cluster_plain_server, namespace, fake, workers, monkeypatch, phase  # noqa: F811
) -> None:
    """Two producers of one namespace enqueue and drain in a loop (half the drains
    with ``job_ids``, half the snapshot + recent-jobs drain) while in-process workers
    commit and the namespace's slot moves; the move is held open for a while in the
    copy (source paused, keys being copied) or right after the hand-over (source's
    keys deleted). Every drain that returns must have its committed jobs readable,
    no job may be reported lost or failed, and over all drains each producer reports
    each of its own jobs exactly once."""
    settings = _settings(cluster_plain_server, namespace)
    workers(settings, threads=2)
    copy, handover = reshard._copy_slot, reshard._wait_handover

    def slow_copy(*args: Any, **kwargs: Any) -> int:
        if phase == "copy":
            time.sleep(1.0)  # writes of the source wait, reads go on
        return copy(*args, **kwargs)

    def slow_handover(*args: Any, **kwargs: Any) -> None:
        handover(*args, **kwargs)
        if phase == "handover":
            time.sleep(1.0)  # source's keys gone, its writes still paused

    monkeypatch.setattr(reshard, "_copy_slot", slow_copy)
    monkeypatch.setattr(reshard, "_wait_handover", slow_handover)
    stop = threading.Event()
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    def producer(name: str) -> None:
        out = results[name] = {"jobs": [], "records": {}, "committed": 0, "lost": [], "failed": [],
                               "drains": 0, "errors": []}  # fmt: skip
        with MemoryQueue(settings, producer_id=name) as q:
            n = 0
            while not stop.is_set() or n < 4:
                batch = []
                for _ in range(3):
                    rid = f"{name}-{n}"
                    job, ids = q.enqueue_encode_job([{"id": rid, "text": f"{name} text {n}", "scope": "/p"}])
                    out["jobs"].append(job)
                    out["records"][job] = ids
                    batch.append(job)
                    n += 1
                try:
                    if n % 2:
                        report = q.drain(timeout=60, job_ids=batch)
                    else:
                        report = q.drain(timeout=60)
                except Exception as exc:  # noqa: BLE001 - recorded, checked below
                    out["errors"].append(repr(exc))
                    if not isinstance(exc, MemworkerError):
                        problems.append(f"{name}: a drain raised a non-memworker error {exc!r}")
                    continue
                out["drains"] += 1
                out["committed"] += report.committed
                out["lost"] += report.lost
                out["failed"] += [f.job_id for f in report.failed]
                if report.lost or report.failed:
                    problems.append(f"{name}: drain reported lost={report.lost} "
                                    f"failed={[(f.job_id, f.error) for f in report.failed]}")  # fmt: skip
                # read-your-writes: what this drain waited for is readable now
                unread = _readable(settings, [r for j in batch for r in out["records"][j]])
                if unread and not report.lost:
                    problems.append(f"{name}: drain returned before {unread} were readable")
            # a last drain settles anything an errored drain left
            final = q.drain(timeout=60)
            out["committed"] += final.committed
            out["lost"] += final.lost
            out["failed"] += [f.job_id for f in final.failed]

    threads = [threading.Thread(target=producer, args=(p,), daemon=True) for p in ("pa", "pb")]
    for t in threads:
        t.start()
    time.sleep(1.5)
    report = move_namespace(settings, _target(cluster_plain_server, namespace))
    assert report.keys > 0
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a producer hung"
    assert problems == []
    for name, out in results.items():
        assert out["drains"] > 0
        assert out["lost"] == [] and out["failed"] == [], name
        # each of its own jobs reported committed exactly once, no other producer's
        assert out["committed"] == len(out["jobs"]), (name, out["committed"], len(out["jobs"]), out["errors"])
        assert _readable(settings, [r for ids in out["records"].values() for r in ids]) == []


# ----------------------------------------------------------------------------- 2
def test_a_drain_waiting_across_a_reshard_finishes_when_the_job_commits(
    cluster_plain_server, namespace, fake, workers  # noqa: F811
) -> None:
    """A drain subscribed (pub/sub) on the old owner before the move, still waiting
    for a job no worker has taken yet: the namespace moves, then a worker starts and
    commits the job on the new owner. The drain must report it committed, once."""
    settings = _settings(cluster_plain_server, namespace)
    out: dict[str, Any] = {}
    with MemoryQueue(settings, producer_id="p") as q:
        job, ids = q.enqueue_encode_job([{"id": "waited", "text": "waited across a move"}])

        t = _drain_in_background(q, out)
        time.sleep(0.5)  # subscribed and polling on the old owner
        move_namespace(settings, _target(cluster_plain_server, namespace))
        time.sleep(0.5)
        workers(settings, threads=2)
        t.join(90)
        assert not t.is_alive(), "the drain hung"
        assert "error" not in out, out.get("error")
        report = out["report"]
        assert (report.committed, report.lost, report.failed) == (1, [], [])
        assert _readable(settings, ids) == []
        again = q.drain(timeout=10, job_ids=[job])
        assert (again.committed, again.lost) == (0, [])  # reported once


# ----------------------------------------------------------------------------- 3
def _drive_with_move_before(settings: Settings, cluster: Any, keys: QueueKeys, owner: str,
                            when: str, **plan_kw: Any) -> Any:  # fmt: skip
    """Run the drain plan on a real driver step by step (as drain_sync does) and move
    the namespace just before the first step matching ``when`` ("multi": the atomic
    final read, "claim": the claim script), so that step meets a MOVED redirection
    with a slot map the client learned before the move."""
    driver = RedisSyncDriver(settings, QUEUE_ERRORS)
    pubsub = driver.client().pubsub(ignore_subscribe_messages=True)
    moved = False
    try:
        driver.guarded(lambda _c: pubsub.subscribe(keys.producer(owner).done_channel))
        plan = drain_plan(keys, [owner], 30, None, owner, *_replication(driver), **plan_kw)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as stop:
                assert moved, "the step was never reached"
                return stop.value
            if isinstance(step, Wait):
                reply = driver.guarded(lambda _c, s=step.seconds: _wait(pubsub, s))
                continue
            hit = (when == "multi" and isinstance(step, Pipeline) and step.atomic) or (
                when == "claim" and isinstance(step, Script) and step.args[:1] == ["claim"])
            if hit and not moved:
                move_namespace(settings, _target(cluster, settings.namespace))
                moved = True
            reply = driver.run(one(step))
    finally:
        pubsub.close()
        driver.close()


def _wait(pubsub: Any, seconds: float) -> list[str]:
    from memworker.queue.drain import _wait_sync

    return _wait_sync(pubsub, seconds)


@pytest.mark.parametrize("when", ["multi", "claim"])
def test_a_moved_redirection_inside_the_final_read_or_the_claim(
    cluster_plain_server, namespace, fake, workers, when  # noqa: F811
) -> None:
    """The slot moves right before the drain's atomic MULTI read, or right before its
    claim script: the client's slot map is stale, the step meets MOVED. The drain must
    either follow it and report the committed job once, or raise a MemworkerError
    (never a redis-py error, never a wrong report)."""
    settings = _settings(cluster_plain_server, namespace)
    keys = QueueKeys(namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        job, ids = q.enqueue_encode_job([{"id": "m", "text": "moved mid drain"}])
        workers(settings, threads=1)
        # wait for the commit without consuming it (an observer)
        q.drain(timeout=30, job_ids=[job], consume=False)
    try:
        report = _drive_with_move_before(settings, cluster_plain_server, keys, "p", when,
                                         also={"p": [job]})  # fmt: skip
    except MemworkerError as exc:  # acceptable: a memworker error, then a retry reports it
        with MemoryQueue(settings, producer_id="p") as q:
            report = q.drain(timeout=30, job_ids=[job])
        print(f"{when}: {exc!r}")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"a non-memworker error left the drain: {type(exc).__module__}.{type(exc).__name__}: {exc}")
    assert (report.committed, report.lost, report.failed) == (1, [], [])
    assert _readable(settings, ids) == []


# ----------------------------------------------------------------------------- 4
def _replicas_of(cluster: Any, primary_port: int) -> list[Any]:
    return [n for n in cluster.nodes[cluster.primaries :]
            if int(redis.Redis(port=n.port).info("replication").get("master_port", -1)) == primary_port]  # fmt: skip


def _repl_offset(port: int, field: str) -> int:
    return int(redis.Redis(port=port).info("replication").get(field, -1))


def _wait_replicated(primary_port: int, replicas: list[Any], timeout: float = 60) -> None:
    """Wait until every replica of ``replicas`` has applied all the primary has written
    so far (the replication offsets, not a sleep)."""
    target = _repl_offset(primary_port, "master_repl_offset")
    deadline = time.monotonic() + timeout
    for node in replicas:
        while _repl_offset(node.port, "slave_repl_offset") < target:
            assert time.monotonic() < deadline, f"replica {node.port} never caught up"
            time.sleep(0.02)


def _most_caught_up(cluster: Any, primary_port: int) -> list[Any]:
    """The primary's replicas, the most up to date first (as Valkey's election ranks
    them): with commit replicas 1 of 2, the one that acknowledged the writes."""
    return sorted(_replicas_of(cluster, primary_port), key=lambda n: -_repl_offset(n.port, "slave_repl_offset"))


def _promote(cluster: Any, victim_port: int, namespace: str, replicas: list[Any] | None = None) -> int:
    """Kill the primary on ``victim_port`` and force its replica to take over at once
    (CLUSTER FAILOVER TAKEOVER); returns the new owner's port."""
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    replicas = replicas or _replicas_of(cluster, victim_port)
    victim.process.kill()
    victim.process.wait()
    replicas[0].process.send_signal(signal.SIGCONT)  # if it was stopped
    redis.Redis(port=replicas[0].port).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    probe = redis.Redis(port=replicas[0].port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        slot = probe.execute_command("CLUSTER", "KEYSLOT", tag(namespace))
        for start, end, primary, *_ in probe.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end and int(primary[1]) != victim_port:
                time.sleep(0.5)
                return int(primary[1])
        time.sleep(0.1)
    raise AssertionError("no promotion")


@pytest.mark.parametrize("refresh", [False, True], ids=["drain-first", "map-refreshed"])
def test_an_unreplicated_enqueue_lost_in_a_failover_is_reported_lost(namespace, fake, workers, refresh) -> None:  # noqa: F811
    """Without commit replicas: the replica is stopped, jobs are enqueued (acknowledged
    by the primary only), the primary dies and the replica takes over without them.
    The producer's drain must report every one of those jobs lost: none silently
    skipped, none committed. ``drain-first``: the drain is the producer's first call
    after the failover; ``map-refreshed``: a plain command ran first (the client
    learned the new owner), which isolates the report from the subscription."""
    cluster = start_cluster(3, 1)
    try:
        settings = _settings(cluster, namespace)
        victim = _owner_port(cluster, namespace)
        replica = _replicas_of(cluster, victim)[0]
        with MemoryQueue(settings, producer_id="p") as q:
            q.enqueue_encode_job([{"id": "before", "text": "replicated"}])
            _wait_replicated(victim, [replica])
            replica.process.send_signal(signal.SIGSTOP)
            # cut its link from the primary's side, so nothing written next sits in
            # the stopped replica's socket buffer
            redis.Redis(port=victim).execute_command("CLIENT", "KILL", "TYPE", "replica")
            jobs = [q.enqueue_encode_job([{"id": f"u{i}", "text": f"unreplicated {i}"}])[0] for i in range(5)]
            _promote(cluster, victim, namespace, [replica])
            workers(settings, threads=2)
            if refresh:  # a plain command first: the client learns the new owner
                q.pending()
            report = q.drain(timeout=60)
        assert (sorted(report.lost), report.committed) == (sorted(jobs), 1), report
    finally:
        workers.stop_all()
        cluster.stop()


@pytest.mark.parametrize("refresh", [False, True], ids=["drain-first", "map-refreshed"])
def test_a_replicated_enqueue_survives_a_failover_and_commits(namespace, fake, workers, refresh) -> None:  # noqa: F811
    """With MEMWORKER_COMMIT_REPLICAS=1 (two replicas per primary): jobs acknowledged
    to the producer, the primary killed before any worker ran, a replica takes over.
    The drain must report every job committed, none lost (``drain-first`` /
    ``map-refreshed`` as above)."""
    cluster = start_cluster(3, 2)
    try:
        settings = _settings(cluster, namespace, commit_replicas=1)
        victim = _owner_port(cluster, namespace)
        with MemoryQueue(settings, producer_id="p") as q:
            done = [q.enqueue_encode_job([{"id": f"r{i}", "text": f"replicated {i}"}]) for i in range(5)]
            _promote(cluster, victim, namespace, _most_caught_up(cluster, victim))
            workers(settings, threads=2)
            if refresh:  # a plain command first: the client learns the new owner
                q.pending()
            try:
                report = q.drain(timeout=60)
            except MemworkerError as exc:
                # the cluster has recovered: does a second drain of this queue work?
                try:
                    again: Any = q.drain(timeout=60)
                except MemworkerError as exc2:
                    again = exc2
                pytest.fail(f"drain after a completed failover raised {exc!r}; a second drain: {again!r}")
        assert (report.committed, report.lost, report.failed) == (5, [], [])
        assert _readable(settings, [i for _, ids in done for i in ids]) == []
    finally:
        workers.stop_all()
        cluster.stop()


@pytest.mark.parametrize("replicas", [0, 1])
def test_a_drain_waiting_across_a_failover_finishes(namespace, fake, workers, replicas) -> None:  # noqa: F811
    """A drain is waiting (subscribed on the namespace's primary) for a job no worker
    has taken; the primary is killed and its replica promoted within seconds, then a
    worker starts. The drain's timeout (60 s) is far longer than the failover: it
    must report the job committed (or, unreplicated, lost), not give up on the dead
    node."""
    cluster = start_cluster(3, replicas + 1)
    try:
        settings = _settings(cluster, namespace, commit_replicas=replicas)
        victim = _owner_port(cluster, namespace)
        out: dict[str, Any] = {}
        with MemoryQueue(settings, producer_id="p") as q:
            job, ids = q.enqueue_encode_job([{"id": "w", "text": "waited across a failover"}])
            _wait_replicated(victim, _replicas_of(cluster, victim))

            t = _drain_in_background(q, out)
            time.sleep(0.5)
            _promote(cluster, victim, namespace)
            workers(settings, threads=2)
            t.join(90)
            assert not t.is_alive(), "the drain hung past its timeout"
            assert "error" not in out, f"the drain failed: {out.get('error')!r}"
            report = out["report"]
            assert report.committed + len(report.lost) == 1
            if replicas:
                assert (report.committed, report.lost) == (1, [])
    finally:
        workers.stop_all()
        cluster.stop()
