"""The batched path (memworker.worker.batch): many jobs per fetch, embedding batch,
commit script call and ack, with every per-job promise kept. Real Valkey, real
dramatiq worker threads; the SIGKILL case runs a real `memworker worker` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_worker import FakeEmbedder, _record, fake, qsettings, rawq, workers  # noqa: F401

from memworker.queue.admin import check_health
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.store.store import ValkeyStore


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _acks(rawq, keys: QueueKeys) -> int:
    return sum(rawq.scard(k) for k in rawq.scan_iter(match=f"{keys.dq_namespace}:__acks__.*"))


def test_a_backlog_commits_many_jobs_per_script_call(qsettings, fake, workers, rawq):  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        jobs = [q.enqueue_encode_job([f"text {i}"])[0] for i in range(120)]
        broker, _ = workers(qsettings, threads=1)
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 120 and report.failed == []
        counts = broker.batches.counts
        # Every job went the batched way, several per commit (one thread could not
        # have had more than 2 jobs in flight on the per-message path).
        assert counts.committed == 120 and counts.handed_back == 0
        assert counts.calls < 60
        assert fake.calls < 60  # embedding batches across jobs
        assert int(rawq.hget(keys.stats, "committed")) == 120
        assert store.count() == 120
        assert _acks(rawq, keys) == 0 and rawq.hlen(keys.msgs()) == 0
        assert rawq.hlen(keys.deliveries) == 0


def test_one_bad_job_in_a_batch_fails_alone(qsettings, fake, workers, rawq):  # noqa: F811
    """A job whose text the model refuses, and a save job whose vector has another
    dimension, share a fetch with good jobs: the good ones commit together, each bad
    one is failed on its own (the per-message path, with its retries), once."""
    fake.fail_times["poison"] = 1_000
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        good = [q.enqueue_encode_job([f"good {i}"])[0] for i in range(20)]
        bad_text = q.enqueue_encode_job(["poison"])[0]
        good += [q.enqueue_save([_record(i)]) for i in range(5)]
        bad_dim = q.enqueue_save([_record(99, embedding=[1.0, 2.0, 3.0])])
        good += [q.enqueue_encode_job([f"good {i}"])[0] for i in range(20, 40)]
        broker, _ = workers(qsettings, max_retries=1)
        report = q.drain(timeout=30, job_ids=[*good, bad_text, bad_dim])
        assert report.committed == len(good)
        assert sorted(f.job_id for f in report.failed) == sorted([bad_text, bad_dim])
        errors = {f.job_id: f.error for f in report.failed}
        assert "poison" in errors[bad_text] and "dimension" in errors[bad_dim].lower()
        assert store.count() == len(good)  # one record per good job
        counts = broker.batches.counts
        assert counts.committed == len(good) and counts.handed_back == 2
        assert int(rawq.hget(keys.stats, "committed")) == len(good)
        assert int(rawq.hget(keys.stats, "failed")) == 2
        assert rawq.zcard(keys.dead()) == 2


def test_a_duplicate_delivery_in_a_batch_writes_nothing(qsettings, fake, workers, rawq):  # noqa: F811
    """A job whose message is delivered again after it committed (here: its message
    pushed back by hand) is acked by the batched commit and writes, counts and marks
    nothing; the other jobs of that commit are written."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        first = q.enqueue_save([_record(0)])
        (redis_id,) = rawq.lrange(keys.q(), 0, -1)
        body = rawq.hget(keys.msgs(), redis_id)
        broker, _ = workers(qsettings)
        assert q.drain(timeout=30, job_ids=[first]).committed == 1
        workers.stop_all()
        rec = store.get_record("rec0")
        rec.content = "updated by the user"
        store.update(rec)
        # The committed job's message delivered again (as after a lost ack).
        rawq.hset(keys.msgs(), redis_id, body)
        rawq.rpush(keys.q(), redis_id)
        others = [q.enqueue_save([_record(i)]) for i in range(1, 6)]
        broker, _ = workers(qsettings)
        assert q.drain(timeout=30, job_ids=others).committed == 5
        _wait(lambda: rawq.hlen(keys.msgs()) == 0, 10, "the replayed message acked")
        # The counters move after the commit's script returns; the drain and the ack
        # (inside that script) can be seen first.
        _wait(lambda: broker.batches.counts.duplicates == 1, 10, "the duplicate counted")
        assert store.get_record("rec0").content == "updated by the user"
        assert int(rawq.hget(keys.stats, "committed")) == 6
        assert _acks(rawq, keys) == 0


def test_graceful_stop_requeues_the_jobs_not_started(qsettings, fake, workers, rawq):  # noqa: F811
    """A worker stopped with a fetched batch commits the jobs whose embedding started
    and puts the others back on the queue, as first deliveries, at once."""
    keys = QueueKeys(qsettings.namespace)
    fake.gate.clear()  # texts starting with "B:" block in the model until the gate opens
    n = 200
    with MemoryQueue(qsettings, producer_id="p") as q:
        jobs = [q.enqueue_encode_job([f"B: {i}"])[0] for i in range(n)]
        broker, _ = workers(qsettings)
        batches = broker.batches
        _wait(lambda: batches.counts.fetched >= 100 and fake.calls >= 1, 20, "a batch in the model")
        stopper = threading.Thread(target=workers.stop_all)
        stopper.start()
        _wait(lambda: batches.counts.requeued > 0, 20, "the stop to requeue")
        fake.gate.set()
        stopper.join(60)
        assert not stopper.is_alive()
        counts = batches.counts
        assert counts.committed > 0 and counts.committed + counts.requeued == counts.fetched
        # (worker threads may have taken and committed a few during the stop)
        assert rawq.llen(keys.q()) == n - int(rawq.hget(keys.stats, "committed"))
        assert _acks(rawq, keys) == 0  # nothing left held by the stopped worker
        assert rawq.hlen(keys.deliveries) == 0  # the requeued ones are not suspects
        workers(qsettings)
        report = q.drain(timeout=60, job_ids=jobs)
        assert report.committed == n and report.failed == []
        assert int(rawq.hget(keys.stats, "committed")) == n


def test_commit_lanes_keep_the_fetch_order_of_each_record_id(qsettings, fake, workers, rawq):  # noqa: F811
    """Several commit lanes commit side by side, yet the jobs that write one record id
    commit in the order they were enqueued (seen on the producer's done channel, which
    each commit publishes to in its atomic step): single-record jobs on hot ids, and
    two-record jobs whose ids overlap those of jobs another lane may hold (the
    cross-lane wait). The value enqueued last is the one stored."""
    keys = QueueKeys(qsettings.namespace)
    hot = [f"hot{k}" for k in range(6)]
    writes: dict[str, list[str]] = {h: [] for h in hot}  # id -> its jobs, in enqueue order
    last: dict[str, str] = {}
    jobs = []
    pubsub = rawq.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.producer("p").done_channel)
    seen: list[str] = []
    try:
        with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
            for i in range(600):
                if i % 3 == 0:  # filler: its own id
                    jobs.append(q.enqueue_save([_record(1000 + i)]))
                    continue
                pair = [hot[i % 6], hot[(i + 1) % 6]] if i % 3 == 2 else [hot[i % 6]]
                job = q.enqueue_save([_record(0, id=h, content=f"{h} v{i}") for h in pair])
                jobs.append(job)
                for h in pair:
                    writes[h].append(job)
                    last[h] = f"{h} v{i}"
            # Small takes (8 records in flight): the fetches spread over the lanes.
            broker, _ = workers(qsettings, threads=1, commit_threads=3, inflight_records=8)
            report = q.drain(timeout=60, job_ids=jobs)
            assert report.committed == len(jobs) and report.failed == []
            deadline = time.monotonic() + 10
            while len(seen) < len(jobs) and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.1)
                if message is not None:
                    seen.append(message["data"].decode())
            batches = broker.batches
            assert batches.counts.handed_back == 0
            assert sum(batches.lane_commits()) == batches.counts.committed == len(jobs)
            assert sum(1 for n in batches.lane_commits() if n) >= 2  # lanes ran side by side
            assert sorted(seen) == sorted(jobs)
            position = {job: n for n, job in enumerate(seen)}
            for h, order in writes.items():
                assert [position[j] for j in order] == sorted(position[j] for j in order), h
            assert {h: store.get_record(h).content for h in hot} == last
            assert _acks(rawq, keys) == 0 and rawq.hlen(keys.deliveries) == 0
    finally:
        pubsub.close()


def test_one_commit_lane_is_the_old_single_committer(qsettings, fake, workers):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="p") as q:
        jobs = [q.enqueue_encode_job([f"text {i}"])[0] for i in range(40)]
        broker, _ = workers(qsettings, commit_threads=1)
        assert q.drain(timeout=30, job_ids=jobs).committed == 40
        assert broker.batches.lane_commits() == [broker.batches.counts.committed]


def test_the_batched_path_can_be_turned_off(qsettings, fake, workers):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="p") as q:
        jobs = [q.enqueue_encode_job([f"text {i}"])[0] for i in range(10)]
        broker, _ = workers(qsettings, inflight_records=0)
        assert q.drain(timeout=30, job_ids=jobs).committed == 10
        assert broker.batches is None


# ----------------------------------------------------------------------------- SIGKILL
_SLOW = '''
import os, time, hashlib
import numpy as np

class Slow:
    dimension = 8
    model_id = "slow-test"

    def encode(self, texts):
        time.sleep(float(os.environ.get("SLOW_EMBED_S", "0.2")))
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

def make():
    return Slow()
'''


def test_sigkill_with_a_fetched_batch_redelivers_each_job_once(qsettings, rawq, tmp_path):  # noqa: F811
    """A worker process SIGKILLed while it holds a fetched batch (some jobs committed,
    others embedding or waiting): every job it held is delivered again to the next
    worker, and no job is committed twice (the commit and its ack are one step)."""
    (tmp_path / "slow_embedder.py").write_text(_SLOW)
    keys = QueueKeys(qsettings.namespace)
    env = dict(
        os.environ, VALKEY_URL=qsettings.url(redact=False), MEMWORKER_NAMESPACE=qsettings.namespace,
        MEMWORKER_EMBEDDER="slow_embedder:make", PYTHONPATH=str(tmp_path), SLOW_EMBED_S="0.3",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "memworker.cli", "worker", "--processes", "1"]
    n = 300
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        jobs = [q.enqueue_encode_job([f"killed {i}"])[0] for i in range(n)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(lambda: int(rawq.hget(keys.stats, "committed") or 0) > 0, 60, "a first commit")
            held = _acks(rawq, keys)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        committed_before = int(rawq.hget(keys.stats, "committed"))
        assert held > 1 and committed_before < n  # it died holding a batch of several jobs
        env["SLOW_EMBED_S"] = "0"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(lambda: check_health(qsettings), 60, "the second worker")
            report = q.drain(timeout=90, job_ids=jobs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert report.committed == n and report.failed == []
        assert int(rawq.hget(keys.stats, "committed")) == n  # each job counted once
        assert store.count() == n
        assert _acks(rawq, keys) == 0 and rawq.llen(keys.q()) == 0


_ = (FakeEmbedder, Path, pytest)
