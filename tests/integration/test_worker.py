"""Worker side: end to end through real dramatiq worker threads on a real Valkey."""

from __future__ import annotations

import gc
import hashlib
import json
import socket
import threading
import time

import numpy as np
import pytest

from memworker import worker as worker_mod
from memworker.worker import actors as worker_actors
from memworker.worker import broker as worker_broker
from memworker.worker import process as worker_process
from memworker.errors import ConfigError, ValidationError
from memworker.queue.jobs import QueueKeys
from memworker.queue.admin import (
    check_health,
    dead_list,
    dead_purge,
    dead_requeue,
    queue_status,
)
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

DIM = 8


class FakeEmbedder:
    """Deterministic vectors from a hash of the text; optional hooks for failures."""

    dimension = DIM

    def __init__(self) -> None:
        self.calls = 0
        self.fail_times: dict[str, int] = {}  # text -> failures left
        self.gate = threading.Event()
        self.gate.set()

    def encode(self, texts):
        self.calls += 1
        for t in texts:
            if self.fail_times.get(t, 0) > 0:
                self.fail_times[t] -= 1
                raise OSError(f"transient failure embedding {t!r}")
            if t.startswith("B:"):
                self.gate.wait(30)
        return np.stack([vector(t) for t in texts])


def vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def fake():
    embedder = FakeEmbedder()
    worker_mod.set_embedder_factory(lambda: embedder)
    yield embedder
    embedder.gate.set()
    worker_mod.set_embedder_factory(None)


@pytest.fixture
def qsettings(queue_server, namespace) -> Settings:
    return Settings.from_url(queue_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def workers():
    """Start in-process workers: ``start(settings, threads=2, **broker_options)``; stopped at teardown."""
    running = []

    def start(settings, threads=2, **options):
        options.setdefault("min_backoff_ms", 10)
        options.setdefault("max_backoff_ms", 50)
        options.setdefault("max_retries", 3)
        options.setdefault("worker_timeout_ms", 100)
        ctx = worker_mod.running_worker(settings, threads=threads, **options)
        broker, worker = ctx.__enter__()
        running.append(ctx)
        return broker, worker

    def stop_all():
        while running:
            running.pop().__exit__(None, None, None)

    start.stop_all = stop_all
    yield start
    stop_all()


@pytest.fixture
def rawq(queue_server):
    from valkey_servers import raw_client

    client = raw_client(queue_server)
    yield client
    client.close()


def _record(i, dim=DIM, **over):
    rec = {
        "id": f"rec{i}",
        "content": f"saved {i}",
        "scope": "/s",
        "categories": ["c"],
        "embedding": vector(f"saved {i}").tolist(),
    }
    rec.update(over)
    return rec


# ----------------------------------------------------------------------------- end to end
def test_encode_then_drain_then_search_finds_every_record(server, namespace, fake, workers):
    settings = Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )
    texts = [f"memory number {i}" for i in range(30)]
    with MemoryQueue(settings, producer_id="p") as q, ValkeyStore(settings) as store:
        ids = []
        for start in range(0, 30, 7):
            ids += q.enqueue_encode(
                [
                    {"text": t, "scope": "/team/a", "categories": ["k"], "metadata": {"n": 1}}
                    for t in texts[start : start + 7]
                ]
            )
        jobs = q.pending()
        workers(settings, threads=4)
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 5 and report.failed == []
        assert q.pending() == []
        assert store.count() == 30
        for rid, text in zip(ids, texts):
            rec = store.get_record(rid)
            assert rec is not None and rec.content == text and rec.scope == "/team/a"
            hits = store.search(vector(text).tolist(), scope_prefix="/team", limit=1)
            assert hits[0][0].id == rid and hits[0][1] > 0.99
        assert store.list_categories() == {"k": 30}
        store.reset()  # drop the module server's index of this namespace


def test_a_job_commits_in_steps_and_clears_its_pending_mark_with_the_last(
    qsettings, fake, workers, rawq, monkeypatch
):
    """MEMWORKER_COMMIT_STEP=3: a job of 8 records is three atomic writes (the change
    log has one entry per write: 3, 3, then 2 ids). A failure between steps leaves the
    job pending; its retry rewrites the same ids and the counts stay exact."""
    from memworker.store.store import ValkeyStore as Store

    keys = QueueKeys(qsettings.namespace)
    real = Store.write_encoded
    calls: list[int] = []
    pending_when_failed: list[object] = []

    def flaky(self, encoded, extra=(), **kw):
        calls.append(len(encoded))
        if len(calls) == 2:  # the second step of the first attempt
            pending_when_failed.append(rawq.zscore(keys.producer("p").pending, job))
            raise ConnectionError("injected failure between commit steps")
        return real(self, encoded, extra, **kw)

    monkeypatch.setattr(Store, "write_encoded", flaky)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        job = q.enqueue_save([_record(i) for i in range(8)])
        step = worker_process.broker_options({worker_actors.COMMIT_STEP_ENV: "3"})["commit_step"]
        workers(qsettings, commit_step=step)
        report = q.drain(timeout=30, job_ids=[job])
        assert report.committed == 1 and not report.failed
        assert pending_when_failed[0] is not None  # not done while a step was missing
        assert calls == [3, 3, 3, 3, 2]  # failed at the 2nd step, then 3 + 3 + 2
        entries = rawq.xrange(f"{{{qsettings.namespace}}}:changes")
        sizes = [len(e[1][b"i"].split(b"\n")) for e in entries]
        assert sizes == [3, 3, 3, 2]
        assert entries[-1][1][b"i"].split(b"\n") == [b"rec6", b"rec7"]
        assert store.count() == 8 and store.count("/s") == 8 and store.list_categories() == {"c": 8}
    assert worker_process.broker_options({})["commit_step"] == worker_mod.DEFAULT_COMMIT_STEP
    assert worker_process.broker_options({worker_actors.COMMIT_STEP_ENV: "0"})["commit_step"] == 0
    with pytest.raises(ConfigError, match="MEMWORKER_COMMIT_STEP"):
        worker_process.broker_options({worker_actors.COMMIT_STEP_ENV: "-1"})


def test_save_jobs_commit_records(qsettings, fake, workers):
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        q.enqueue_save([_record(i) for i in range(5)])
        q.enqueue_save([_record(i) for i in range(5, 8)])
        jobs = q.pending()
        workers(qsettings)
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 2 and not report.failed
        assert store.count() == 8 and store.count("/s") == 8
        assert store.get_record("rec3").embedding == pytest.approx(vector("saved 3").tolist())
        status = q.status()
        assert status["counters"]["committed"] == 2 and status["counters"]["records"] == 8
        assert status["pending_total"] == 0 and status["depth"] == 0


def test_redelivered_job_counts_exactly_once(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        q.enqueue_save([_record(i, scope="/x/y", categories=["a", "b"]) for i in range(4)])
        # Duplicate the message (same job, a second delivery) before any worker runs.
        (rid,) = rawq.lrange(keys.q(), 0, -1)
        msg = json.loads(rawq.hget(keys.msgs(), rid))
        msg["options"]["redis_message_id"] = "00000000-0000-0000-0000-000000000001"
        rawq.hset(keys.msgs(), "00000000-0000-0000-0000-000000000001", json.dumps(msg))
        rawq.rpush(keys.q(), "00000000-0000-0000-0000-000000000001")
        broker, worker = workers(qsettings)
        broker.join("default", timeout=60_000)  # both deliveries consumed
        worker.join()
        assert q.pending() == []
        assert store.count() == 4 and store.count("/x") == 4 and store.count("/x/y") == 4
        assert store.list_categories("/x") == {"a": 4, "b": 4}
        assert store.list_scopes("/") == ["/x"]
        # Processed twice; the second commit found the job no longer pending and wrote
        # nothing: counted once in the store and in the throughput counters (issue 17.2).
        assert int(rawq.hget(keys.stats, "records")) == 4
        assert int(rawq.hget(keys.stats, "committed")) == 1


def _clients_of(raw):
    """``CLIENT LIST`` of the server, or of every node of a cluster."""
    if hasattr(raw, "get_nodes"):
        return [c for node in raw.get_nodes() for c in raw.client_list(target_nodes=node)]
    return raw.client_list()


def test_idle_worker_is_woken_by_the_enqueue(qsettings, fake, workers, rawq):
    broker, _ = workers(qsettings, worker_timeout_ms=1000)
    with MemoryQueue(qsettings, producer_id="p") as q:
        q.drain(timeout=30, job_ids=[q.enqueue_save([_record(0)])])  # warm up (client, script load)
        blocked_before = broker.woken_fetches
        # Wait until the consumer is parked in BLPOP on the wake list ("b": blocked now;
        # ``cmd`` alone is a connection's last command), on every node of a cluster.
        parked = False
        for _ in range(3000):
            if any(c.get("cmd") == "blpop" and "b" in c.get("flags", "") for c in _clients_of(rawq)):
                parked = True
                break
            threading.Event().wait(0.002)
        assert parked, "the idle consumer never blocked in BLPOP"
        job = q.enqueue_save([_record(1)])
        assert q.drain(timeout=30, job_ids=[job]).committed == 1
    # The job was fetched right after a wake-up token, not by a timed re-poll.
    assert broker.woken_fetches == blocked_before + 1


# ----------------------------------------------------------------------------- failures
def test_dimension_mismatch_is_dead_lettered_and_reported(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    _broker, _ = workers(qsettings)
    with MemoryQueue(qsettings, producer_id="p") as q:
        assert q.drain(timeout=30, job_ids=[q.enqueue_save([_record(0)])]).committed == 1
        bad = q.enqueue_save([_record(1, embedding=[1.0, 0.0, 0.0])])
        report = q.drain(timeout=30, job_ids=[bad])
        assert report.committed == 0 and len(report.failed) == 1
        failed = report.failed[0]
        assert (
            failed.job_id == bad and failed.record_ids == ["rec1"] and "dimension" in failed.error
        )
        assert q.drain(timeout=5).failed == []  # reported once
    assert rawq.zcard(keys.dead()) == 1
    dead = dead_list(qsettings)
    assert dead[0]["job_id"] == bad and dead[0]["record_ids"] == ["rec1"]
    assert fake.calls == 0  # save jobs never embed
    assert rawq.hlen(keys.deliveries) == 0


def test_bad_payload_crafted_by_hand_is_dead_lettered(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q:
        q.enqueue_encode(["a good one"])
        (rid,) = rawq.lrange(keys.q(), 0, -1)
        msg = json.loads(rawq.hget(keys.msgs(), rid))
        msg["args"][0]["v"] = 99
        rawq.hset(keys.msgs(), rid, json.dumps(msg))
        # And a message that is not even JSON.
        rawq.hset(
            keys.msgs(),
            "11111111-1111-1111-1111-111111111111",
            b'{"redis_message_id": "11111111-1111-1111-1111-111111111111", oops',
        )
        rawq.rpush(keys.q(), "11111111-1111-1111-1111-111111111111")
        jobs = q.pending()
        workers(qsettings)
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 0 and len(report.failed) == 1
        assert "schema version 99" in report.failed[0].error
        assert fake.calls == 0
    broker, _ = workers(qsettings)
    broker.join("default", timeout=10_000)
    assert rawq.zcard(keys.dead()) == 2


def test_transient_failure_is_retried_then_commits(qsettings, fake, workers):
    fake.fail_times["flaky"] = 2
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        (rid,) = q.enqueue_encode(["flaky"])
        jobs = q.pending()
        workers(qsettings, max_retries=3)
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 1 and report.failed == []
        assert store.get_record(rid).content == "flaky"
        assert fake.fail_times["flaky"] == 0


def test_exhausted_retries_are_reported(qsettings, fake, workers, rawq):
    fake.fail_times["always"] = 100
    with MemoryQueue(qsettings, producer_id="p") as q:
        (rid,) = q.enqueue_encode(["always"])
        jobs = q.pending()
        workers(qsettings, max_retries=1)
        report = q.drain(timeout=30, job_ids=jobs)
        assert report.committed == 0 and report.failed[0].record_ids == [rid]
        assert "OSError" in report.failed[0].error
    assert rawq.zcard(QueueKeys(qsettings.namespace).dead()) == 1


def test_poison_guard_dead_letters_a_job_delivered_too_often(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        job = q.enqueue_save([_record(0)])
        # Three earlier deliveries that never finished (SIGKILL/OOM).
        rawq.hset(keys.deliveries, f"{job}:0", 3)
        workers(qsettings, max_deliveries=3)
        report = q.drain(timeout=30, job_ids=[job])
        assert report.committed == 0 and report.failed[0].job_id == job
        assert "PoisonJobError" in report.failed[0].error and "4 times" in report.failed[0].error
        assert store.count() == 0
    assert rawq.zcard(keys.dead()) == 1 and rawq.hlen(keys.deliveries) == 0


def test_dead_letters_requeue_and_purge(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        q.drain(timeout=30, job_ids=[q.enqueue_save([_record(0)])])
        bad = [q.enqueue_save([_record(i, embedding=[1.0, 2.0])]) for i in (1, 2)]
        assert len(q.drain(timeout=30, job_ids=bad).failed) == 2
        assert len(dead_list(qsettings)) == 2
        first = dead_list(qsettings)[0]["message_id"]
        # A string is not a list of message ids (its characters would be taken as ids),
        # nor is a number: refused, naming the argument, nothing moved or purged.
        for bad_ids in (first, 5, [first, 5]):
            for call in (dead_purge, dead_requeue):
                with pytest.raises(ValidationError, match=r"message_ids"):
                    call(qsettings, bad_ids)
        assert len(dead_list(qsettings)) == 2
        assert dead_purge(qsettings, [first]) == 1
        # Requeued: the pending mark is back, so the producer's drain waits for it again.
        (left,) = dead_list(qsettings)
        store.reset()  # now any dimension is accepted: the requeued job can commit
        rawq.srem(keys.producers, "p")  # nothing pending or unreported: a sweep forgets p
        assert dead_requeue(qsettings) == 1
        assert rawq.sismember(keys.producers, "p")  # drain_all and status see it again
        report = q.drain(timeout=30, job_ids=[left["job_id"]])
        assert report.committed == 1 and not report.failed
        assert store.get_record(left["record_ids"][0]) is not None
    assert rawq.zcard(keys.dead()) == 0


def test_two_requeues_of_one_dead_letter_queue_it_once(qsettings, fake, workers, rawq):
    """Two `memworker dead requeue` at once: both read the dead letter before either
    moved it. It goes back on the queue once (it was pushed twice: two deliveries)."""
    from memworker.io.plan import one
    from memworker.queue import admin

    keys = QueueKeys(qsettings.namespace)
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="p") as q:
        q.drain(timeout=30, job_ids=[q.enqueue_save([_record(0)])])
        bad = q.enqueue_save([_record(1, embedding=[1.0, 2.0])])
        assert len(q.drain(timeout=30, job_ids=[bad]).failed) == 1
    workers.stop_all()  # nothing consumes the queue: what is on it stays there
    (entry,) = dead_list(qsettings)
    mid = entry["message_id"]
    driver = admin._driver(qsettings)
    try:
        held = admin._requeue_plan(keys, [mid])
        step = next(held)  # its read of the dead letter
        move = held.send(driver.run(one(step)))
        assert dead_requeue(qsettings, [mid]) == 1  # the other requeue, all of it
        try:
            held.send(driver.run(one(move)))
            raise AssertionError("the plan has more steps")
        except StopIteration as stop:
            assert stop.value == 0
    finally:
        driver.close()
    queued = [m.decode() for m in rawq.lrange(keys.q(), 0, -1)]
    assert queued.count(mid) == 1
    assert rawq.zcard(keys.dead()) == 0


# ----------------------------------------------------------------------------- health, status
def test_worker_health_key_and_check(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    assert check_health(qsettings) is False
    workers(qsettings)
    assert check_health(qsettings) is True
    assert check_health(qsettings, host=socket.gethostname()) is True
    assert check_health(qsettings, host="some-other-pod") is False
    status = queue_status(qsettings)
    (info,) = status["workers"]
    assert int(info["pid"]) > 0 and "host" in info and int(info["processed"]) == 0
    assert 0 < rawq.pttl(keys.worker(info["id"])) <= 5000
    with MemoryQueue(qsettings, producer_id="p") as q:
        q.drain(timeout=30, job_ids=[q.enqueue_save([_record(0)])])
        q.drain(timeout=30, job_ids=[q.enqueue_encode_job(["one text", "and two", "three"])[0]])

    def embedded() -> dict:
        (w,) = queue_status(qsettings)["workers"]
        return w if int(w.get("embed_texts", 0)) >= 3 and int(w.get("batched_jobs", 0)) >= 2 else {}

    deadline = time.monotonic() + 15
    while not embedded() and time.monotonic() < deadline:
        time.sleep(0.1)
    info = embedded()  # the inference counters ride on the health record
    assert int(info["embed_batches"]) >= 1 and int(info["embed_texts"]) >= 3
    from memworker.cli import _worker_line

    assert "embedded" in _worker_line(info) and "mean" in _worker_line(info)
    # and the batched path's: both jobs went that way
    assert int(info["batched_jobs"]) == 2 and int(info["batched_commits"]) >= 1
    assert "jobs batched in" in _worker_line(info)
    # and the enqueue-to-commit clock (process-wide: other tests' jobs count too)
    assert int(info["searchable_jobs"]) >= 2 and int(info["searchable_ms_total"]) >= 0
    assert "time to searchable" in _worker_line(info)
    # and the garbage collector's: a worker in an application's own process (this
    # one) leaves its heap as it is; `memworker worker` processes freeze theirs (test_cli)
    assert int(info["gc_frozen"]) == 0 == gc.get_freeze_count() and int(info["gc_full"]) >= 0
    assert "full collections" in _worker_line(info)
    assert _worker_line({"processed": "4"}) == "processed 4"
    workers.stop_all()
    assert check_health(qsettings) is False
    assert not rawq.exists(keys.worker(info["id"]))


def test_dead_worker_messages_are_redelivered(qsettings, fake, workers, rawq):
    """dramatiq maintenance (every dispatch) requeues acks of a broker whose heartbeat expired."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_save([_record(0)])
        # Simulate a worker that fetched the message and died 10 s ago.
        rid = rawq.lpop(keys.q())
        rawq.sadd(f"{keys.dq_namespace}:__acks__.deadbeef.default", rid)
        rawq.zadd(keys.heartbeats, {"deadbeef": 1})
        workers(qsettings)
        assert q.drain(timeout=30, job_ids=[job]).committed == 1
    assert rawq.zscore(keys.heartbeats, "deadbeef") is None


def test_message_orphaned_by_a_lost_fetch_reply_is_requeued(qsettings, fake, workers, rawq, monkeypatch):
    """A fetch whose reply is lost with its connection leaves a message in a LIVE
    worker's acks set that no consumer holds; dramatiq's maintenance never touches a
    live worker. The consumer's reconciliation requeues it."""
    monkeypatch.setattr(worker_broker, "RECONCILE_INTERVAL_S", 0.2)
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_save([_record(0)])
        redis_id = rawq.lpop(keys.q())  # as if fetched: off the queue ...
        rawq.delete(f"{keys.dq_namespace}:default.wake")
        broker, _ = workers(qsettings)
        # ... into the acks set of a live worker, whose consumer never got the reply
        rawq.sadd(f"{keys.dq_namespace}:__acks__.{broker.broker_id}.default", redis_id)
        assert q.drain(timeout=30, job_ids=[job]).committed == 1
    assert broker.orphans_requeued == 1


def test_real_model_end_to_end(qsettings, workers):
    pytest.importorskip("sentence_transformers")
    worker_mod.set_embedder_factory(None)
    from memworker.embedding.model import Embedder

    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        ids = q.enqueue_encode(["The cat sat on the mat.", "Quarterly revenue grew 12 percent."])
        jobs = q.pending()
        workers(qsettings)
        assert q.drain(timeout=120, job_ids=jobs).committed == 1
        query = Embedder().encode(["Where did the cat sit?"])[0]
        hits = store.search(query.tolist(), limit=2)
        assert next(h[0].id for h in hits) == ids[0]
        assert len(store.get_record(ids[1]).embedding) == 384


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_nice_idle_lowers_the_inference_threads_only():
    """The inference threads (one per core, each running the model on one torch
    thread) run at SCHED_IDLE; the other threads of the worker process (job threads)
    keep their priority."""
    import os
    import subprocess
    import sys

    code = """
import os, threading, torch
from memworker.worker import runtime as W
W._nice = "idle"
W.get_batcher().submit(["a text to embed", "and another one"]).result()
def policy(tid):  # field 41 of /proc/<pid>/task/<tid>/stat
    return int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[38])
from memworker.embedding.threads import configure_threads
inference = [t for t in threading.enumerate() if t.name.startswith("memworker-embed")]
idle = [int(t) for t in os.listdir("/proc/self/task") if policy(t) == os.SCHED_IDLE]
print(policy(threading.get_native_id()) == os.SCHED_OTHER,
      all(t.native_id in idle for t in inference),
      len(inference) == configure_threads() and torch.get_num_threads() == 1)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"]


def test_a_committed_job_clears_its_delivery_counter_in_its_commit(qsettings, fake, workers, rawq):
    keys = QueueKeys(qsettings.namespace)
    broker, worker = workers(qsettings)
    hdels: list[tuple] = []
    real_hdel = broker.client.hdel

    def counting_hdel(*args):
        hdels.append(args)
        return real_hdel(*args)

    broker.client.hdel = counting_hdel
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        for i in range(3):
            q.enqueue_encode([{"text": f"text {i}", "scope": "/d"}])
        assert not q.drain(timeout=30).failed and store.count("/d") == 3
        # no HDEL round trip of its own: the commit cleared each counter
        assert hdels == [] and rawq.hlen(keys.deliveries) == 0
        # an attempt that fails (and is retried) is cleared by the middleware
        fake.fail_times["flaky text"] = 2
        q.enqueue_encode([{"text": "flaky text", "scope": "/d"}])
        assert not q.drain(timeout=30).failed and store.count("/d") == 4
        assert hdels and {a[0] for a in hdels} == {keys.deliveries}
        assert rawq.hlen(keys.deliveries) == 0


# ----------------------------------------------------------------------------- queue bookkeeping
class SlowEmbedder(FakeEmbedder):
    """FakeEmbedder that takes ``delay`` seconds per batch and counts each text."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.texts: dict[str, int] = {}
        self._lock = threading.Lock()

    def encode(self, texts):
        with self._lock:
            for t in texts:
                self.texts[t] = self.texts.get(t, 0) + 1
        threading.Event().wait(self.delay)
        return super().encode(texts)


HOSTILE_ID = "00000000-0000-4000-8000-00000000dead"


@pytest.fixture
def slow():
    """A SlowEmbedder (1.5 s per batch) as the workers' model (set before, reset after them)."""
    embedder = SlowEmbedder(1.5)
    worker_mod.set_embedder_factory(lambda: embedder)
    yield embedder
    worker_mod.set_embedder_factory(None)


def test_metadata_cannot_hijack_message_tracking(qsettings, slow, workers, rawq, monkeypatch):
    """A user value that looks like dramatiq's message id (as a metadata value, beside
    nested keys, in the text) must not become the id the worker tracks the message by:
    each job is fetched, embedded and committed once, and the counters say so."""
    monkeypatch.setattr(worker_broker, "RECONCILE_INTERVAL_S", 0.1)
    keys = QueueKeys(qsettings.namespace)
    hostile = [
        {"text": "hostile value", "metadata": {"redis_message_id": HOSTILE_ID}},
        {"text": "hostile nested", "metadata": {"options": {"redis_message_id": HOSTILE_ID}}},
        {"text": f'hostile text "redis_message_id": "{HOSTILE_ID}"'},
        {"text": "hostile key", "metadata": {f'"redis_message_id": "{HOSTILE_ID}"': 1}},
    ]
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        jobs = [q.enqueue_encode_job([item])[0] for item in hostile]
        broker, _ = workers(qsettings, threads=2)
        report = q.drain(timeout=60, job_ids=jobs)
        assert report.committed == len(jobs) and not report.failed
        broker.join("default", timeout=20_000)
        assert store.count() == len(jobs)
    assert slow.texts == {item["text"]: 1 for item in hostile}
    stats = {k.decode(): int(v) for k, v in rawq.hgetall(keys.stats).items()}
    assert stats["committed"] == len(jobs) and stats["records"] == len(jobs)


def _duplicate(rawq, keys, data: bytes) -> str:
    """Put a second delivery of an encoded message on the queue (a new redis id)."""
    msg = json.loads(data)
    rid = "00000000-0000-4000-8000-000000000002"
    msg["options"]["redis_message_id"] = rid
    with rawq.pipeline(transaction=True) as pipe:
        pipe.hset(keys.msgs(), rid, json.dumps(msg))
        pipe.rpush(keys.q(), rid)
        pipe.rpush(keys.wake(), "1")
        pipe.execute()
    return rid


def test_update_after_drain_survives_a_duplicate_delivery(qsettings, fake, workers, rawq):
    """A duplicate delivery of a job that committed (and was reported) writes nothing:
    a user's update made after the drain returned stays, the counters and the drain
    count the job once."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        job, (rid,) = q.enqueue_encode_job([{"text": "original", "metadata": {"n": 1}}])
        (mid,) = rawq.lrange(keys.q(), 0, -1)
        data = rawq.hget(keys.msgs(), mid)
        broker, _ = workers(qsettings)
        assert q.drain(timeout=30, job_ids=[job]).committed == 1
        rec = store.get_record(rid)
        rec.content, rec.metadata = "updated by the user", {"n": 2}
        store.update(rec)
        _duplicate(rawq, keys, data)
        broker.join("default", timeout=20_000)  # the duplicate was consumed (acked)
        after = store.get_record(rid)
        assert after.content == "updated by the user" and after.metadata == {"n": 2}
        report = q.drain(timeout=30, job_ids=[job])
        assert report.committed == 0 and not report.failed and not report.lost
        assert rawq.zscore(keys.producer("p").committed, job) is None  # no marker re-added
    stats = {k.decode(): int(v) for k, v in rawq.hgetall(keys.stats).items()}
    assert stats["committed"] == 1 and stats["records"] == 1
    assert rawq.hlen(keys.deliveries) == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[: len(data) * 3 // 4], id="truncated"),
        pytest.param(lambda data: data.replace(b'"kwargs"', b'"kwargz"'), id="not-a-message"),
        pytest.param(lambda data: data.replace(b'"items"', b'\xff\xfe"items"'), id="bad-utf8"),
    ],
)
def test_undecodable_message_with_a_pending_mark_is_reported_failed(
    qsettings, fake, workers, rawq, corrupt
):
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        job, ids = q.enqueue_encode_job(["will be corrupted " + "x" * 200, "second"])
        (mid,) = rawq.lrange(keys.q(), 0, -1)
        rawq.hset(keys.msgs(), mid, corrupt(rawq.hget(keys.msgs(), mid)))
        workers(qsettings)
        report = q.drain(timeout=15, job_ids=[job])
        assert report.committed == 0 and [f.job_id for f in report.failed] == [job]
        assert "undecodable" in report.failed[0].error
        assert store.count() == 0
        assert q.drain(timeout=5).failed == []  # reported once
    (dead,) = dead_list(qsettings)
    assert dead["message_id"] == mid.decode()
    assert rawq.zcard(keys.producer("p").pending) == 0 and rawq.hlen(keys.msgs()) == 0


def test_a_drain_that_returned_agrees_with_the_dead_letters(
    qsettings, fake, workers, rawq, monkeypatch
):
    """The failure record and the dead-letter entry are one atomic step: a drain that
    reported a job failed finds it in `memworker dead list`, however late the nack."""
    real = worker_mod.WakeConsumer.nack

    def late_nack(self, message):
        threading.Event().wait(1.0)  # a loaded machine: the nack runs late
        return real(self, message)

    monkeypatch.setattr(worker_mod.WakeConsumer, "nack", late_nack)
    fake.fail_times["always"] = 100
    with MemoryQueue(qsettings, producer_id="p") as q:
        job, (rid,) = q.enqueue_encode_job(["always"])
        workers(qsettings, max_retries=0)
        report = q.drain(timeout=30, job_ids=[job])
        assert report.failed[0].record_ids == [rid]
        assert [d["job_id"] for d in dead_list(qsettings)] == [job]


def test_an_update_between_commit_steps_survives_the_jobs_redelivery(
    qsettings, fake, workers, rawq, monkeypatch
):
    """A job's first step is visible before its last: a user who updates such a record
    is not reverted when the job runs again (its commit carries its enqueue time, and
    the write script leaves a record updated after it as it is)."""
    from memworker.store.store import ValkeyStore as Store

    real = Store.write_encoded
    calls: list[int] = []

    def flaky(self, encoded, extra=(), **kw):
        calls.append(len(encoded))
        if len(calls) == 2:  # between the first and second step of the first attempt
            rec = user.get_record("rec0")
            rec.content = "updated between the steps"
            user.update(rec)
            raise ConnectionError("injected failure between commit steps")
        return real(self, encoded, extra, **kw)

    monkeypatch.setattr(Store, "write_encoded", flaky)
    with (
        MemoryQueue(qsettings, producer_id="p") as q,
        ValkeyStore(qsettings) as store,
        ValkeyStore(qsettings) as user,
    ):
        job = q.enqueue_save([_record(i) for i in range(4)])
        workers(qsettings, commit_step=2)  # a job larger than a step: a worker thread
        report = q.drain(timeout=30, job_ids=[job])
        assert report.committed == 1 and not report.failed
        assert calls == [2, 2, 2, 2]  # the retry rewrote the first step
        assert store.get_record("rec0").content == "updated between the steps"
        assert store.get_record("rec1").content == "saved 1"
        assert store.count() == 4 and store.count("/s") == 4 and store.list_categories() == {"c": 4}
        # A job enqueued after the update is newer: it replaces the record.
        later = q.enqueue_save([_record(0, content="saved again")])
        assert q.drain(timeout=30, job_ids=[later]).committed == 1
        assert store.get_record("rec0").content == "saved again"


def test_consumer_close_requeues_hostile_messages_by_their_real_ids(qsettings, fake, rawq):
    """The messages a consumer fetched but never handed out are requeued on close by
    their real redis ids, whatever id-like text their metadata carries."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="pc") as q:
        for i in range(3):
            item = {"text": f"cached {i}", "metadata": {"redis_message_id": HOSTILE_ID}}
            q.enqueue_encode([item])
    broker = worker_mod.make_broker(qsettings, inflight_records=0)  # the per-message cache
    try:
        consumer = broker.consume("default", prefetch=3, timeout=100)
        first = None
        for _ in range(100):
            first = next(consumer)
            if first is not None:
                break
        assert first is not None and first.options["redis_message_id"] != HOSTILE_ID
        assert broker.held_ids() == {m.decode() for m in rawq.hkeys(keys.msgs())}
        consumer.requeue([first])  # what Worker.stop does with its work queue
        consumer.close()
        acks = list(rawq.scan_iter(match=f"{keys.dq_namespace}:__acks__.*"))
        assert rawq.llen(keys.q()) == 3 and sum(rawq.scard(k) for k in acks) == 0
        assert broker.held_ids() == set()
    finally:
        broker.close()
        broker.context.close()
