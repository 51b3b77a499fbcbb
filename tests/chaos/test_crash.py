"""Worker crashes: SIGKILL mid-embedding (1), after the commit before the ack (2),
connection killed around the commit script (3), SIGTERM with prefetched jobs (8),
a job longer than the heartbeat timeout (9). Real `memworker worker` processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from harness import audit, record, wait_for

from memworker.queue.producer import MemoryQueue


def _acked(client, ns):
    """Message ids held (fetched, unacked) by any broker, by acks key."""
    out = {}
    for key in client.scan_iter(f"{{{ns}}}:dq:__acks__.*"):
        out[key.decode()] = {m.decode() for m in client.smembers(key)}
    return out


def _message_id(client, ns, job_id):
    """The dramatiq (redis) message id carrying a job, or None once it was acked."""
    for redis_id, data in client.hgetall(f"{{{ns}}}:dq:default.msgs").items():
        if job_id.encode() in data:
            return redis_id.decode()
    return None


def _stats(client, ns, name):
    return int(client.hget(f"{{{ns}}}:stats", name) or 0)


def test_sigkill_during_embedding_every_job_redelivered_once(chaos_server, ns, workdir, cli_workers):
    gate = workdir / "gate"
    gate.mkdir()
    workers = cli_workers(MEMWORKER_CHAOS_GATE=str(gate))
    client = chaos_server.client()
    rounds, per_round, held_total = 3, 6, 0
    record_ids: list[str] = []
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p1") as q:
        proc = workers.start()
        workers.wait_live(client)
        for r in range(rounds):
            (gate / "open").unlink(missing_ok=True)
            for i in range(per_round):
                record_ids += q.enqueue_encode([f"GATE round {r} job {i}", f"plain {r} {i}"])
            wait_for(lambda: (gate / f"started-{proc.pid}").exists(), 30, "the worker to block in encode")
            held_total += sum(len(v) for v in _acked(client, ns).values())
            workers.kill(proc)  # SIGKILL while it embeds
            (gate / "open").touch()
            proc = workers.start()
            report = q.drain(timeout=90)
            assert report.committed == per_round and report.failed == []
        a = audit(client, ns)
    lost = len(set(record_ids) - a.ids)
    dups = a.records - len(set(record_ids))
    record("SIGKILL worker during embedding", injections=rounds, lost=lost, duplicates=dups,
           jobs_held_by_killed_worker=held_total)
    assert lost == 0 and dups == 0 and a.bad_records == [] and a.tree_root == a.records
    assert a.categories_ok


@pytest.mark.parametrize("path", ["per-message", "batched"])
def test_sigkill_after_commit_before_ack_leaves_no_duplicate(chaos_server, ns, workdir, cli_workers, path):
    """Per-message path: a worker killed between a commit and its ack leaves the job
    unacked; its redelivery writes and counts nothing. Batched path: the commit and
    the ack are one atomic step, so no kill can land between them."""
    workers = cli_workers(MEMWORKER_INFLIGHT_RECORDS="0" if path == "per-message" else "256")
    client = chaos_server.client()
    iterations, before_ack, after_ack = 4, 0, 0
    record_ids: list[str] = []
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p2") as q:
        sub = client.pubsub(ignore_subscribe_messages=True)
        sub.subscribe(f"{{{ns}}}:done:p2")
        q.pending()  # the queue's connection is open before the count below
        sub.get_message(timeout=1)  # and the subscription's
        for it in range(iterations):
            # Enqueued before the worker starts, so that every connection of this
            # process (the queue's pool and its script connection) is open at the count.
            job, ids = q.enqueue_encode_job(
                [{"text": f"after exec {it} {k}", "scope": f"/it/{it}", "categories": ["x", f"c{it}"]}
                 for k in range(5)])
            record_ids += ids
            ours = int(client.info("clients")["connected_clients"])
            proc = workers.start()
            workers.wait_live(client)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = sub.get_message(timeout=1)
                if msg and msg["data"].decode() == job:
                    os.kill(proc.pid, signal.SIGKILL)  # the commit is visible: kill before/after ack
                    break
            else:
                raise AssertionError("commit never published")
            proc.wait(10)
            # What the worker wrote before it died (an ack already on the wire) is still
            # run by Valkey, which then closes the connection: wait for all of them to
            # close, else an ack landing after the look below is taken for a kill
            # before the ack.
            wait_for(lambda: int(client.info("clients")["connected_clients"]) <= ours, 15,
                     "the dead worker's connections closed")
            # Was THIS job's message still unacked? (Other ids in the acks sets can be
            # earlier jobs that this worker took over from the previous dead one.)
            held = set().union(*_acked(client, ns).values())
            if _message_id(client, ns, job) in held:
                before_ack += 1
            else:
                after_ack += 1
        sub.close()
        workers.start()
        # Redelivery of the unacked ones: every job re-runs and rewrites the same ids.
        wait_for(lambda: not any(_acked(client, ns).values()) and client.llen(f"{{{ns}}}:dq:default") == 0,
                 60, "every unacked job redelivered and acked")
        assert q.drain(timeout=30).failed == []
        a = audit(client, ns)
    committed = _stats(client, ns, "committed")
    lost = len(set(record_ids) - a.ids)
    dups = a.records - len(set(record_ids))
    name = ("SIGKILL worker after commit, before ack" if path == "per-message"
            else "SIGKILL worker at a batched commit (commit and ack one step)")
    record(name, injections=iterations, lost=lost,
           duplicates=dups, killed_before_ack=before_ack, killed_after_ack=after_ack,
           commits_run=committed)
    assert lost == 0 and dups == 0 and a.bad_records == [] and a.categories_ok
    assert a.tree_root == a.records == 5 * iterations
    # Each unacked job was delivered again, and its second commit found its pending
    # mark gone: it wrote, marked and counted nothing (issue 17.2), so each job counts once.
    assert committed == iterations
    assert int(client.hget(f"{{{ns}}}:cats:/", "x")) == 5 * iterations
    if path == "per-message":
        assert before_ack >= 1, "no kill landed between commit and ack: the fault was not injected"
    else:
        assert before_ack == 0, "a batched commit was visible before its ack"


@pytest.mark.parametrize("jobs,per_job", [(40, 50), (600, 1)], ids=["large-jobs", "multi-job-commits"])
def test_client_kill_around_commit_no_partial_no_duplicate(chaos_server, ns, workdir, cli_workers,
                                                           jobs, per_job):
    """CLIENT KILL of the worker's connection while it runs a commit script: 50-record
    jobs (committed in steps) and single-text jobs (many per commit call): whole jobs
    or nothing, never a duplicate."""
    workers = cli_workers()
    client = chaos_server.client()
    client.client_setname("chaos-killer")
    record_ids: list[str] = []
    kills = 0
    stop = threading.Event()

    def killer():
        nonlocal kills
        while not stop.is_set():
            for c in client.client_list():
                if c.get("name") != "chaos-killer" and c.get("cmd") in ("evalsha", "eval", "fcall"):
                    try:
                        client.client_kill_filter(_id=c["id"])
                        kills += 1
                    except Exception:  # noqa: BLE001 - already gone
                        pass
            time.sleep(0.005)

    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p3") as q:
        for j in range(jobs):
            record_ids += q.enqueue_encode(
                [{"text": f"kill conn {j} {k} " + "x" * (k * 20), "scope": f"/j/{j % 7}",
                  "categories": [f"c{k % 3}"], "metadata": {"j": j}} for k in range(per_job)])
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        workers.start()
        try:
            report = q.drain(timeout=150)
        finally:
            stop.set()
            t.join(5)
        a = audit(client, ns)
    failed_ids = {i for f in report.failed for i in f.record_ids}
    lost = len(set(record_ids) - a.ids - failed_ids)
    dups = a.records - len(set(record_ids))
    name = ("CLIENT KILL of worker connection at commit" if per_job > 1
            else "CLIENT KILL during multi-job commits (single-text jobs)")
    record(name, injections=kills, lost=lost,
           duplicates=dups, partial_records=len(a.bad_records), jobs_failed=len(report.failed),
           commits_run=_stats(client, ns, "committed"))
    assert kills > 0
    assert a.bad_records == [] and a.categories_ok and a.tree_root == a.records
    assert lost == 0 and dups == 0
    assert not (failed_ids & a.ids), "a job reported failed left records"


def test_sigterm_with_prefetched_jobs_processed_plus_requeued_is_enqueued(
        chaos_server, ns, workdir, cli_workers):
    workers = cli_workers()
    client = chaos_server.client()
    n = 30
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p8") as q:
        proc = workers.start(threads=2)
        workers.wait_live(client)
        jobs = [q.enqueue_encode_job([f"SLOW300 term {i}"])[0] for i in range(n)]
        wait_for(lambda: _stats(client, ns, "committed") >= 3, 30, "a few commits")
        held = sum(len(v) for v in _acked(client, ns).values())
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        processed = n - len(q.pending())
        requeued = client.llen(f"{{{ns}}}:dq:default")
        still_held = sum(len(v) for v in _acked(client, ns).values())
        workers.start()
        report = q.drain(timeout=60, job_ids=jobs)
        a = audit(client, ns)
    record("SIGTERM with prefetched jobs", injections=1, lost=n - a.records,
           duplicates=a.records - n, processed=processed, requeued=requeued,
           held_at_sigterm=held, held_after_exit=still_held, exit_code=proc.returncode)
    assert processed + requeued + still_held == n
    assert proc.returncode == 0
    assert report.committed == n and a.records == n


def test_job_longer_than_heartbeat_timeout_not_run_twice(chaos_server, ns, workdir, cli_workers):
    calls = workdir / "calls.jsonl"
    workers = cli_workers(MEMWORKER_CHAOS_CALLS=str(calls))
    client = chaos_server.client()
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p9") as q:
        workers.start(threads=1)
        workers.wait_live(client)
        jobs = [q.enqueue_encode_job([f"SLOW6500 long {i}"])[0] for i in range(3)]
        wait_for(lambda: sum(len(v) for v in _acked(client, ns).values()) >= 2, 20, "prefetch full")
        workers.start(threads=2)  # a peer whose maintenance could steal the busy worker's jobs
        report = q.drain(timeout=90, job_ids=jobs)
        a = audit(client, ns)
    runs: dict[str, list[tuple[float, float, int]]] = {}
    for line in calls.read_text().splitlines():
        c = json.loads(line)
        for t in c["texts"]:
            if t.startswith("SLOW6500"):
                runs.setdefault(t, []).append((c["start"], c["end"], c["pid"]))
    twice = sum(len(v) - 1 for v in runs.values())
    overlapping = sum(1 for v in runs.values() for x in v for y in v if x < y and y[0] < x[1])
    record("Job longer than heartbeat timeout", injections=len(jobs), duplicates=a.records - 3,
           lost=3 - a.records, concurrent_runs=overlapping, extra_runs=twice,
           commits_run=_stats(client, ns, "committed"))
    assert report.committed == 3 and a.records == 3
    assert overlapping == 0 and twice == 0


def test_consumer_close_requeues_its_fetched_but_unhanded_messages(chaos_server, ns):
    """Deterministic form of the SIGTERM race above: fetch 3, hand out 1, close."""
    from memworker.settings import Settings
    from memworker.worker.actors import make_broker

    settings = Settings.from_url(chaos_server.url, namespace=ns)
    client = chaos_server.client()
    with MemoryQueue(settings, producer_id="pc") as q:
        for i in range(3):
            q.enqueue_encode([f"cached {i}"])
    broker = make_broker(settings, inflight_records=0)  # the per-message consumer's cache
    try:
        consumer = broker.consume("default", prefetch=3, timeout=100)
        first = wait_for(lambda: next(consumer), 10, "a message")
        consumer.requeue([first])  # what Worker.stop does with its work queue
        consumer.close()
        held = sum(len(v) for v in _acked(client, ns).values())
        assert client.llen(f"{{{ns}}}:dq:default") == 3 and held == 0
    finally:
        broker.close()
        broker.context.close()
