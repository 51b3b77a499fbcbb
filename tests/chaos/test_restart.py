"""Valkey SIGKILLed and restarted (same port, same --dir: the AOF is replayed) under
load, with appendfsync always and everysec (4); and what drain says of a lost job."""

from __future__ import annotations

import time

import pytest
from harness import ChaosServer, Load, Workers, audit, record, wait_for

from memworker.queue.producer import MemoryQueue


def _retrying(fn, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the server is down or restarting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_valkey_sigkill_under_load(fsync, ns, workdir):
    server = ChaosServer(extra=("--appendonly", "yes", "--appendfsync", fsync)).start()
    workers = Workers(server.url, ns, workdir)
    client = server.client()
    load = Load(
        lambda: MemoryQueue(server.url, namespace=ns, producer_id="p4"),
        text=lambda tag, n, k: f"{fsync} {tag} {n} {k}",
        scope=lambda tag, n, k: f"/r/{n % 5}",
    )
    try:
        proc = workers.start(threads=2)
        workers.wait_live(client)
        load.start(observe=(server.port, f"{{{ns}}}:done:p4"))
        time.sleep(3)
        crash = time.time()
        server.kill()
        time.sleep(0.5)
        server.start()
        client = server.client()
        present_after = audit(client, ns).ids  # before the workers redo anything
        time.sleep(3)
        load.stop(10)
        returned, done_at, enqueue_errors = load.returned, load.done_at, load.errors
        jobs = [j for j, _ in returned]
        with MemoryQueue(server.url, namespace=ns, producer_id="p4") as q:
            report = _retrying(lambda: q.drain(timeout=60, job_ids=jobs), 90)
        a = audit(client, ns)
        expected = {i for _, ids in returned for i in ids}
        failed_ids = {i for f in report.failed for i in f.record_ids}
        lost = len(expected - a.ids - failed_ids)
        committed_before = {j: t for j, t in done_at.items() if t < crash}
        by_job = dict(returned)
        lost_commits = [crash - t for j, t in committed_before.items()
                        if j in by_job and not set(by_job[j]) <= present_after]
        window = round(max(lost_commits), 3) if lost_commits else 0.0
        early = sum(1 for j, ids in returned if not set(ids) <= a.ids and j not in
                    {f.job_id for f in report.failed}) if report else 0
        record(f"Valkey SIGKILL + restart (appendfsync {fsync})", injections=1, lost=lost,
               duplicates=a.records - len(expected & a.ids), early_returns=early,
               loss_window_s=window, commits_lost_at_restart=len(lost_commits),
               jobs_reported_lost=len(report.lost) if report is not None else 0,
               jobs=len(returned), enqueue_errors=enqueue_errors,
               worker_survived=proc.poll() is None, fsync=fsync)
        print(f"appendfsync {fsync}: measured loss window {window} s "
              f"({len(lost_commits)} of {len(committed_before)} commits before the crash lost)")
        assert proc.poll() is None, "the worker did not survive the restart"
        assert a.bad_records == [] and a.categories_ok
        assert a.records == len(expected & a.ids)
        if fsync == "always":
            assert lost == 0 and lost_commits == [] and early == 0
    finally:
        load.stop(0)
        workers.close()
        server.stop()


def test_drain_does_not_report_a_lost_job_committed(ns):
    server = ChaosServer(extra=("--appendonly", "yes", "--appendfsync", "everysec")).start()
    try:
        client = server.client()
        client.config_set("appendonly", "no")  # the next writes never reach the AOF: lost at restart
        with MemoryQueue(server.url, namespace=ns, producer_id="pl") as q:
            job, ids = q.enqueue_encode_job(["lost with the crash"])
        server.kill()
        server.start()
        client = server.client()
        assert client.zcard(f"{{{ns}}}:pending:pl") == 0  # the enqueue really was lost
        with MemoryQueue(server.url, namespace=ns, producer_id="pl") as q:
            report = q.drain(timeout=2, job_ids=[job])
        assert not client.exists(f"{{{ns}}}:rec:{ids[0]}")
        assert report.committed == 0, "drain reported a lost job as committed"
    finally:
        server.stop()
