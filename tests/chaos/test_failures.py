"""Jobs that cannot succeed: a poison job (5), a job that kills its worker (6), no
worker at all (7); drain must report them in bounded time, never hang."""

from __future__ import annotations

import time

import pytest
from chaos_embedder import ChaosEmbedder
from harness import HANG_SLACK_S, audit, record

from memworker import worker as worker_mod
from memworker.queue.jobs import DrainTimeout
from memworker.queue.admin import dead_list
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings


@pytest.fixture
def chaos_embedder():
    worker_mod.set_embedder_factory(ChaosEmbedder)
    yield
    worker_mod.set_embedder_factory(None)


def test_poison_job_dead_lettered_others_in_its_batch_commit(chaos_server, ns, chaos_embedder):
    settings = Settings.from_url(chaos_server.url, namespace=ns)
    client = chaos_server.client()
    with MemoryQueue(settings, producer_id="p5") as q:
        poison = q.enqueue_encode_job(["POISON alone"])[0]
        mixed, mixed_ids = q.enqueue_encode_job(["good half", "POISON half"])
        good = [q.enqueue_encode_job([f"good {i}", f"good {i} b"]) for i in range(20)]
        started = time.monotonic()
        with worker_mod.running_worker(settings, threads=4, max_retries=2, min_backoff_ms=50,
                                       max_backoff_ms=200, worker_timeout_ms=100):
            report = q.drain(timeout=60)
        took = time.monotonic() - started
        a = audit(client, ns)
    failed = {f.job_id: f for f in report.failed}
    good_ids = {i for _, ids in good for i in ids}
    failed_ids = {i for f in report.failed for i in f.record_ids}
    lost = len(good_ids - a.ids - failed_ids)
    collateral = len(set(failed) - {poison, mixed})
    record("Poison job (embedder raises)", injections=2, lost=lost,
           duplicates=len(a.ids - good_ids), drain_seconds=round(took, 2),
           good_jobs_failed_with_it=collateral)
    assert {poison, mixed} <= set(failed), report.failed
    assert "PoisonError" in failed[poison].error and failed[mixed].record_ids == mixed_ids
    assert not (set(mixed_ids) & a.ids)  # nothing of the mixed job
    assert lost == 0  # (the drain's own timeout, 60 s, bounds the wait)
    assert {poison, mixed} <= {d["job_id"] for d in dead_list(settings)}


def test_good_request_batched_with_a_poison_text_still_succeeds():
    from concurrent.futures import wait

    from memworker.embedding.batcher import EmbeddingBatcher

    batcher = EmbeddingBatcher(ChaosEmbedder(), max_wait_ms=200)
    try:
        bad = batcher.submit(["POISON x"])
        good = batcher.submit(["fine text"])
        wait([bad, good], timeout=10)
        assert bad.exception() is not None
        assert good.exception() is None
    finally:
        batcher.close(timeout=5)


def test_job_that_kills_its_worker_dead_lettered_after_n_deliveries(chaos_server, ns, cli_workers):
    workers = cli_workers()
    client = chaos_server.client()
    deaths = 0
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p6") as q:
        killer = q.enqueue_encode_job(["KILLME now"])[0]
        good = [q.enqueue_encode_job([f"survivor {i}"]) for i in range(3)]
        jobs = [killer] + [j for j, _ in good]
        proc = workers.start()
        started = time.monotonic()
        report = None
        while time.monotonic() - started < 120:
            try:
                report = q.drain(timeout=1, job_ids=jobs)
                break
            except DrainTimeout:
                pass
            if proc.poll() is not None:  # a supervisor restarts the dead worker
                deaths += 1
                proc = workers.start()
        took = time.monotonic() - started
        a = audit(client, ns)
    hang = int(report is None)
    failed = {f.job_id: f for f in (report.failed if report else [])}
    good_ids = {ids[0] for _, ids in good}
    collateral = [j for j, _ in good if j in failed]
    lost = len(good_ids - a.ids) - len(collateral)
    record("Job that SIGKILLs its worker every time", injections=deaths, lost=lost,
           duplicates=a.records - len(good_ids & a.ids), hangs=hang, drain_seconds=round(took, 1),
           good_jobs_dead_lettered_with_it=len(collateral))
    assert report is not None, "drain never returned"
    assert killer in failed and "PoisonJobError" in failed[killer].error
    assert deaths == worker_mod.DEFAULT_MAX_DELIVERIES
    assert lost == 0
    # A redelivered job runs alone in its process, so the killer takes no good job down.
    assert collateral == [], f"good jobs dead-lettered with the killer: {collateral}"


def test_no_worker_drain_raises_naming_the_jobs(chaos_server, ns):
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="p7") as q:
        jobs = [q.enqueue_encode_job([f"nobody {i}"])[0] for i in range(5)]
        started = time.monotonic()
        with pytest.raises(DrainTimeout) as info:
            q.drain(timeout=1.0)
        took = time.monotonic() - started
    # a hang is a drain far past its timeout (1 s); HANG_SLACK_S absorbs a loaded host
    record("No worker running", injections=1, hangs=int(took > 1.0 + HANG_SLACK_S), early_returns=0,
           drain_seconds=round(took, 2))
    assert sorted(info.value.job_ids) == sorted(jobs) and "no live worker" in str(info.value)
    assert took < 1.0 + HANG_SLACK_S, f"drain(timeout=1) returned after {took:.1f} s"


def test_failure_between_drains_is_reported_by_the_next_drain(chaos_server, ns, chaos_embedder):
    from harness import wait_for

    settings = Settings.from_url(chaos_server.url, namespace=ns)
    with MemoryQueue(settings, producer_id="pf") as q:
        job = q.enqueue_encode_job(["POISON between drains"])[0]
        with worker_mod.running_worker(settings, threads=1, max_retries=0, worker_timeout_ms=100):
            wait_for(lambda: not q.pending(), 20, "the job to fail")
            report = q.drain(timeout=5)
    assert [f.job_id for f in report.failed] == [job]
