"""QueuedMemory's settle thread (``memworker.crewai._settle.Settler``) tells a job's
waiters what became of it exactly as a drain would: committed only with a commit
marker, failed with its failure record, and lost (a failure) with neither.

A review (2026-12-05) found it took "no longer pending, no failure record" for
committed: a job the server lost (a failover to a replica that never saw the commit,
a flushed key) read as saved, and ``remember()`` returned.
"""

from __future__ import annotations

import pytest
from test_hostile_input import embedder, qsettings, rawq  # noqa: F401 - fixtures

from memworker import worker as worker_mod
from memworker.crewai._settle import Settler
from memworker.queue.jobs import LOST_ERROR, QueueKeys
from memworker.queue.producer import MemoryQueue


@pytest.fixture
def settler(qsettings):
    made = Settler(qsettings, "p")
    yield made
    made.close()


def test_a_job_neither_committed_nor_failed_is_lost_not_committed(qsettings, rawq, settler) -> None:
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q:
        job_id, _ = q.enqueue_encode_job([{"id": "r", "content": "lost"}])
    future = settler.watch(job_id)
    # the server loses the job: its pending mark and message go, no commit, no failure
    rawq.zrem(keys.producer("p").pending, job_id)
    rawq.delete(keys.q(), keys.msgs())
    failure = future.result(timeout=10)
    assert failure is not None and failure.job_id == job_id and failure.error == LOST_ERROR


def test_committed_and_failed_jobs_settle_as_before(qsettings, embedder, settler) -> None:
    with MemoryQueue(qsettings, producer_id="p") as q:
        good, _ = q.enqueue_encode_job([{"id": "g", "content": "good"}])
        bad, _ = q.enqueue_encode_job([{"id": "b", "content": "FAIL me"}])
        futures = {good: settler.watch(good), bad: settler.watch(bad)}
        with worker_mod.running_worker(qsettings, threads=2, worker_timeout_ms=100, max_retries=0):
            assert futures[good].result(timeout=30) is None
            failure = futures[bad].result(timeout=30)
    assert failure is not None and failure.job_id == bad and failure.error != LOST_ERROR


def test_a_job_a_drain_reported_first_is_not_called_lost(qsettings, embedder, settler) -> None:
    # a drain of the same producer consumed the commit marker (and tombstoned the job):
    # the settle thread must not turn that into a loss
    with MemoryQueue(qsettings, producer_id="p") as q:
        job_id, _ = q.enqueue_encode_job([{"id": "g", "content": "good"}])
        with worker_mod.running_worker(qsettings, threads=2, worker_timeout_ms=100):
            assert q.drain(timeout=30).committed == 1
        assert settler.watch(job_id).result(timeout=10) is None
