"""The drain barrier: never returns early, never waits for later jobs, reports failures once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from test_worker import FakeEmbedder, _record, fake, qsettings, rawq, workers  # noqa: F401

from memworker.queue.jobs import DrainTimeout, QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.store.store import ValkeyStore


def test_drain_with_nothing_pending_returns_at_once(qsettings):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="p") as q:
        report = q.drain(timeout=1)
    assert report.committed == 0 and report.failed == []


def test_drain_never_returns_while_a_job_is_uncommitted(qsettings, fake, workers):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        jobs = [q.enqueue_save([_record(i)]) for i in range(3)]
        ids = q.enqueue_encode(["one", "two"])
        jobs += [j for j in q.pending() if j not in jobs]
        with pytest.raises(DrainTimeout) as info:
            q.drain(timeout=0.5)  # no worker: nothing can commit
        err = info.value
        assert sorted(err.job_ids) == sorted(jobs)
        assert "no live worker" in str(err) and jobs[0] in str(err)
        assert sorted(q.pending()) == sorted(jobs)  # a timeout consumes nothing
        workers(qsettings)
        # By the ids: a drain's own snapshot, taken after the worker started, could miss
        # jobs that committed before it (a drain counts only the jobs it waited for).
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 4 and report.failed == []
        # Every record is visible the moment drain returns.
        assert store.count() == 5 and all(store.get_record(i) for i in ids)


def test_timeout_names_saturated_workers(qsettings, fake, workers):  # noqa: F811
    fake.gate.clear()  # texts starting with "B:" block inside the model
    workers(qsettings, threads=1)
    with MemoryQueue(qsettings, producer_id="p") as q:
        q.enqueue_encode(["B: blocked"])
        q.enqueue_encode(["queued behind it"])
        with pytest.raises(DrainTimeout, match="1 live worker"):
            q.drain(timeout=0.5)
        fake.gate.set()
        assert q.drain(timeout=30).failed == []


def test_jobs_enqueued_after_the_snapshot_do_not_delay_drain(qsettings, fake, workers, monkeypatch):  # noqa: F811
    """A = save jobs pending at the snapshot; B = encode jobs enqueued during the
    drain, with a worker running, that cannot finish (their texts block in the
    model) until the drain has returned. A livelocking drain would never return."""
    from memworker.queue import drain as queue_mod

    snapshot_taken = threading.Event()
    real_still_pending = queue_mod._still_pending

    def still_pending(*args):
        snapshot_taken.set()  # first called right after the snapshot
        return real_still_pending(*args)

    monkeypatch.setattr(queue_mod, "_still_pending", still_pending)
    fake.gate.clear()
    try:
        with (
            MemoryQueue(qsettings, producer_id="p") as q,
            MemoryQueue(qsettings, producer_id="p") as q2,
        ):
            a_jobs = [q.enqueue_save([_record(i)]) for i in range(3)]
            result: dict = {}
            drained = threading.Event()

            def drain():
                try:
                    result["report"] = q2.drain(timeout=30)
                finally:
                    drained.set()

            thread = threading.Thread(target=drain)
            thread.start()
            assert snapshot_taken.wait(10)
            workers(qsettings, threads=4)
            n = 0
            deadline = time.monotonic() + 60  # past the drain's own timeout (30 s)
            while not drained.wait(0.005):
                q.enqueue_encode([f"B: {n}"])
                n += 1
                assert time.monotonic() < deadline, "drain did not return"
            thread.join()
            report = result["report"]
            assert report.committed == 3 and report.failed == []
            pending = q.pending()
            assert len(pending) == n and not set(a_jobs) & set(pending)  # every B still uncommitted
            fake.gate.set()
            # by id: a B job may commit before a plain drain would take its snapshot
            final = q.drain(timeout=30, job_ids=pending)
            assert final.committed == n and final.failed == [] and q.pending() == []
    finally:
        fake.gate.set()


def test_failures_are_reported_once(qsettings, fake, workers):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="p") as q:
        good = q.enqueue_save([_record(0)])
        bad = q.enqueue_save([_record(1, embedding=[1.0, 2.0, 3.0])])
        jobs = [good, bad]
        workers(qsettings, threads=1)  # in order
        # The first job sets the dimension; the second is then a permanent failure.
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 1
        assert [f.job_id for f in report.failed] == [bad]
        assert q.drain(timeout=5, job_ids=jobs).failed == []


def test_other_producers_do_not_affect_a_drain(qsettings, fake):  # noqa: F811
    with (
        MemoryQueue(qsettings, producer_id="mine") as mine,
        MemoryQueue(qsettings, producer_id="other") as other,
    ):
        other.enqueue_save([_record(0)])
        assert mine.drain(timeout=1).committed == 0  # nothing of mine pending: returns at once
        with pytest.raises(DrainTimeout):
            mine.drain_all(timeout=0.3)


def test_drain_all_waits_for_every_producer(qsettings, fake, workers):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="a") as a, MemoryQueue(qsettings, producer_id="b") as b:
        a.enqueue_save([_record(0)])
        b.enqueue_save([_record(1)])
        bad = b.enqueue_save([_record(2, embedding=[1.0, 0.0])])
        workers(qsettings, threads=1)
        report = a.drain_all(timeout=30)
        assert report.committed + len(report.failed) <= 3
        assert a.pending() == [] and b.pending() == []
        # b's failure (the 2-dim vector came after 8-dim ones) is left for b to consume.
        assert [f.job_id for f in b.drain(timeout=5, job_ids=[bad]).failed] == [bad]


def test_async_drain(qsettings, fake, workers):  # noqa: F811
    async def main():
        q = MemoryQueue(qsettings, producer_id="p")
        await q.aenqueue_encode(["async one"])
        jobs = await q.apending()
        with pytest.raises(DrainTimeout):
            await q.adrain(timeout=0.3)
        workers(qsettings)
        report = await q.adrain(timeout=30, job_ids=jobs)
        await q.aclose()
        return report

    report = asyncio.run(main())
    assert report.committed == 1 and report.failed == []


def test_async_status_and_namespace_drain(qsettings, fake, workers):
    """The async twins of status() and drain_all() give the sync answers."""
    fake.gate.clear()  # texts starting with "B:" wait for the gate in the embedder
    with MemoryQueue(qsettings, producer_id="a1") as one, MemoryQueue(qsettings, producer_id="a2") as two:
        one.enqueue_encode(["B: one"])
        two.enqueue_encode(["B: two"])

        async def before():
            return await one.astatus()

        status = asyncio.run(before())
        assert status == {**one.status(), "workers": status["workers"]}
        assert status["pending"] == {"a1": 1, "a2": 1} and status["producer"] == {"id": "a1", "pending": 1}
        workers(qsettings)

        async def drain_everything():
            asyncio.get_running_loop().call_later(0.3, fake.gate.set)
            report = await one.adrain_all(timeout=30)
            after = await one.astatus()
            await one.aclose()
            return report, after

        report, after = asyncio.run(drain_everything())
        assert report.committed == 2 and not report.failed
        assert after["pending_total"] == 0


def test_a_marker_found_again_after_the_report_is_not_counted_twice(qsettings, fake, workers, rawq):  # noqa: F811
    """A commit marker re-added after a drain reported the job (a duplicate commit by
    a worker of an older release) is consumed, not reported again: each job once."""
    from memworker.queue.jobs import QueueKeys

    keys = QueueKeys(qsettings.namespace)
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_save([_record(0)])
        assert q.drain(timeout=30, job_ids=[job]).committed == 1
        rawq.zadd(keys.producer("p").committed, {job: 1})  # the late duplicate's marker
        report = q.drain(timeout=30, job_ids=[job])
        assert report.committed == 0 and not report.failed and not report.lost
        assert rawq.zscore(keys.producer("p").committed, job) is None  # consumed
        assert q.drain(timeout=30, job_ids=[job]).committed == 0


def test_a_drain_of_many_jobs_reads_each_id_a_bounded_number_of_times(
    qsettings, fake, workers, monkeypatch  # noqa: F811
):
    """A wake-up names its job: the drain drops it instead of re-reading every id it
    still waits for (n wake-ups used to cost n^2/2 id reads)."""
    from memworker.queue import drain as drain_mod

    checked: list[int] = []
    real = drain_mod._check_commands

    def counting(keys, left):
        checked.append(sum(len(ids) for ids in left.values()))
        return real(keys, left)

    monkeypatch.setattr(drain_mod, "_check_commands", counting)
    n = 400
    with MemoryQueue(qsettings, producer_id="p") as q:
        jobs = [q.enqueue_encode_job([f"text {i}"])[0] for i in range(n)]
        # One job at a time, one wake-up each (the per-message path, one thread).
        workers(qsettings, threads=1, inflight_records=0)
        t0 = time.monotonic()
        report = q.drain(timeout=60, job_ids=jobs)
        polls = (time.monotonic() - t0) / (drain_mod.DRAIN_POLL_MS / 1000)
    assert report.committed == n and report.failed == []
    # At most one full read per poll interval (plus the first), never one per wake-up.
    assert len(checked) <= polls + 2, (len(checked), polls)
    assert sum(checked) <= (polls + 2) * n


def test_a_lost_wake_up_does_not_hold_a_drain_among_others(qsettings, rawq):  # noqa: F811
    """drain_all hears every producer's wake-ups. A job whose own wake-up is lost
    (here: committed by hand, no PUBLISH) is still seen, by the full read that runs at
    least every DRAIN_POLL_MS, while other producers' wake-ups keep arriving."""
    keys = QueueKeys(qsettings.namespace)
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            rawq.publish(keys.producer("other").done_channel, "not-ours")
            time.sleep(0.01)

    with MemoryQueue(qsettings, producer_id="a") as a:
        job, _ = a.enqueue_encode_job(["silent"])
        t = threading.Thread(target=chatter, daemon=True)
        t.start()
        try:
            def commit_silently():
                time.sleep(0.3)
                pk = keys.producer("a")
                with rawq.pipeline(transaction=True) as pipe:
                    pipe.zrem(pk.pending, job)
                    pipe.zadd(pk.committed, {job: int(time.time() * 1000)})
                    pipe.execute()

            threading.Thread(target=commit_silently, daemon=True).start()
            report = a.drain_all(timeout=10)  # DrainTimeout if no full read ran
        finally:
            stop.set()
            t.join(2)
    assert report.committed == 1


def _wait_until(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _members(rawq, keys):
    return {m.decode() for m in rawq.smembers(keys.producers)}


def test_the_sweep_forgets_producers_with_nothing_pending_or_unreported(qsettings, fake, workers, rawq):  # noqa: F811
    """Every process is a new producer id and nothing removed one: the producers set,
    read one command per producer by every status(), drain_all() and metrics scrape,
    grew for ever, and so did each producer's commit markers and report tombstones.
    The sweep forgets a producer with nothing pending and no unreported failure; its
    markers expire an hour after its last commit or drain; its next enqueue adds it again."""
    from memworker.io.redispy import redis_client
    from memworker.queue.jobs import MARKER_TTL_MS
    from memworker.worker.sweep import Sweeper

    from memworker.keys import Keys

    keys = QueueKeys(qsettings.namespace)
    lock = Keys(qsettings.namespace).sweep
    rawq.set(lock, "the test")  # the workers' own sweeps wait: the test prunes when it says
    workers(qsettings, threads=1)  # in order
    with (
        MemoryQueue(qsettings, producer_id="done") as done,
        MemoryQueue(qsettings, producer_id="failing") as failing,
        MemoryQueue(qsettings, producer_id="waiting") as waiting,
    ):
        assert done.drain(timeout=30, job_ids=[done.enqueue_save([_record(0)])]).committed == 1
        failing.enqueue_save([_record(1)])
        bad = failing.enqueue_save([_record(2, embedding=[1.0, 2.0, 3.0])])  # wrong dimension
        _wait_until(lambda: failing.pending() == [])
        fake.gate.clear()  # "B:" texts wait for the gate: one job stays pending
        held = waiting.enqueue_encode_job(["B: held"])[0]
        assert _members(rawq, keys) == {"done", "failing", "waiting"}
        # failing's first job committed (its marker waits for a drain); done's was reported
        for marks in (keys.producer("failing").committed, keys.producer("done").reported):
            assert 0 < rawq.pttl(marks) <= MARKER_TTL_MS

        client = redis_client(qsettings)
        with ValkeyStore(qsettings) as store:
            sweeper = Sweeper(store, client, qsettings.namespace, "w")
            assert sweeper.prune_producers() == 1  # the step maybe_sweep() runs (next test)
            assert _members(rawq, keys) == {"failing", "waiting"}
            assert [f.job_id for f in failing.drain(timeout=5).failed] == [bad]
            assert done.status()["pending"] == {"waiting": 1}

            # a forgotten producer is added again by its next enqueue, atomically with it
            again = done.enqueue_encode_job(["B: again"])[0]
            assert "done" in _members(rawq, keys)
            fake.gate.set()
            assert waiting.drain(timeout=30, job_ids=[held]).committed == 1
            assert done.drain(timeout=30, job_ids=[again]).committed == 1
            assert sweeper.prune_producers() == 3
            assert _members(rawq, keys) == set()
            assert done.drain_all(timeout=5).committed == 0
        client.close()


def test_the_sweep_forgets_producers_in_steps(qsettings, rawq):  # noqa: F811
    """Thousands of producers are scanned in steps (SSCAN, one script a step), and a
    producer with a pending mark among them is kept."""
    from memworker.io.redispy import redis_client
    from memworker.worker.sweep import Sweeper

    keys = QueueKeys(qsettings.namespace)
    rawq.sadd(keys.producers, *[f"gone-{i}" for i in range(3000)])
    rawq.zadd(keys.producer("gone-7").pending, {"job": 1})
    client = redis_client(qsettings)
    with ValkeyStore(qsettings) as store:
        assert Sweeper(store, client, qsettings.namespace, "w").maybe_sweep()["producers"] == 2999
    client.close()
    assert _members(rawq, keys) == {"gone-7"}


def test_an_id_given_twice_is_reported_once(qsettings, fake, workers):  # noqa: F811
    """drain(job_ids=[a, a, b, b]): a commit counted once, a failure reported once
    (it was counted twice, and the failure reported as failed and as lost)."""
    with MemoryQueue(qsettings, producer_id="p") as q:
        good = q.enqueue_save([_record(0)])
        bad = q.enqueue_save([_record(1, embedding=[1.0, 2.0, 3.0])])
        workers(qsettings, threads=1)  # in order: the 3-dim vector fails after 8-dim ones
        report = q.drain(timeout=30, job_ids=[good, good, bad, bad])
        assert report.committed == 1
        assert [f.job_id for f in report.failed] == [bad] and report.lost == []


def _hold_first_settle(monkeypatch, release, holding):
    """Make the first drain to settle wait, after its final read, until ``release``;
    ``holding`` is set once it waits."""
    from memworker.queue import drain as queue_mod

    real = queue_mod._settle
    first = threading.Lock()

    def settle(*args, **kwargs):
        out = real(*args, **kwargs)
        if not out[0] and first.acquire(blocking=False):
            holding.set()
            assert release.wait(30)
        return out

    monkeypatch.setattr(queue_mod, "_settle", settle)


@pytest.mark.parametrize("waits", ["snapshot", "ids"])
def test_two_drains_of_one_producer_report_each_job_once(qsettings, fake, workers, monkeypatch, waits):  # noqa: F811
    """Two threads drain one producer at once: both read the same failure and the same
    commit before either consumes them. Each job is reported by one drain only (both
    reported the failure and counted the commit)."""
    with MemoryQueue(qsettings, producer_id="p") as q:
        good = q.enqueue_save([_record(0)])
        bad = q.enqueue_save([_record(1, embedding=[1.0, 2.0, 3.0])])
        jobs = [good, bad]
        workers(qsettings, threads=1)
        while q.pending():
            time.sleep(0.02)
        release, holding = threading.Event(), threading.Event()
        _hold_first_settle(monkeypatch, release, holding)
        given = None if waits == "snapshot" else jobs
        reports: dict = {}

        def first():
            reports["a"] = q.drain(timeout=30, job_ids=jobs)

        held = threading.Thread(target=first)
        held.start()
        assert holding.wait(30)  # the first drain is inside its settle, holding its read
        reports["b"] = q.drain(timeout=30, job_ids=given)
        release.set()
        held.join(30)
        a, b = reports["a"], reports["b"]
        assert a.committed + b.committed == 1
        assert [f.job_id for f in a.failed + b.failed] == [bad]
        assert a.lost == [] and b.lost == []


def test_an_observing_drain_leaves_the_reports_to_the_producer(qsettings, fake, workers, monkeypatch, capsys):  # noqa: F811
    """drain(consume=False), as `memworker drain --producer p` runs it, reports what it
    finds and consumes nothing: p's own drain still reports its failure and commit."""
    from memworker.cli import main

    with MemoryQueue(qsettings, producer_id="p") as q, MemoryQueue(qsettings, producer_id="p") as watcher:
        good = q.enqueue_save([_record(0)])
        bad = q.enqueue_save([_record(1, embedding=[1.0, 2.0, 3.0])])
        workers(qsettings, threads=1)
        seen = watcher.drain(timeout=30, consume=False)
        assert [f.job_id for f in seen.failed] == [bad]
        monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)  # also a cluster's
        assert main(["drain", "--producer", "p"]) == 0
        assert f"failed {bad}" in capsys.readouterr().out
        own = q.drain(timeout=30, job_ids=[good, bad])
        assert own.committed == 1 and [f.job_id for f in own.failed] == [bad]
        assert q.drain(timeout=30, job_ids=[good, bad]).failed == []  # consumed by the owner
