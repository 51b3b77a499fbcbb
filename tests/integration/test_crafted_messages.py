"""Messages whose dramatiq envelope or job was crafted in Valkey (by hand, a buggy
producer, corruption): each is dead-lettered at once and reported failed to its
producer's drain; no worker thread dies, nothing is retried forever, no drain hangs,
and nothing of a refused job is written.

Found by a hostile review (2026-12-05): a ``queue_name`` other than the worker's killed
worker threads (a KeyError in dramatiq) or was redelivered forever; ``items`` of ``5``
was dead-lettered but never reported; a second argument replaced the actor's bound
function; a job with two items of one id ran its consolidation before the commit
refused it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_hostile_input import embedder, qsettings, rawq  # noqa: F401 - fixtures

from memworker import ValkeyStore
from memworker import worker as worker_mod
from memworker.errors import ConfigError, DrainTimeout, JobPayloadError
from memworker.queue.admin import dead_requeue
from memworker.queue.jobs import QueueKeys
from memworker.queue.payload import check_encode_job, job_identity
from memworker.queue.producer import MemoryQueue


def _rewrite(rawq, keys: QueueKeys, job_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the stored dramatiq message of ``job_id`` (parsed JSON)."""
    (rid,) = [r for r in rawq.lrange(keys.q(), 0, -1) if job_id.encode() in rawq.hget(keys.msgs(), r)]
    msg = json.loads(rawq.hget(keys.msgs(), rid))
    change(msg)
    rawq.hset(keys.msgs(), rid, json.dumps(msg))


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg[field] = value

    return change


def _items(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg["args"][0]["items"] = value

    return change


def _extra_arg(msg: dict[str, Any]) -> None:
    msg["args"].append("x")


def _duplicate_item(msg: dict[str, Any]) -> None:
    items = msg["args"][0]["items"]
    items.append(dict(items[0], content="the same id again"))


def _dq(msg: dict[str, Any]) -> None:
    msg["queue_name"] += ".DQ"


CRAFTED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("another queue's name", _set("queue_name", "other"), "queue"),
    ("the delay queue's name", _dq, "queue"),
    ("an actor name that is a number", _set("actor_name", 5), "actor"),
    ("an unknown actor", _set("actor_name", "os.system"), "actor"),
    ("a second argument", _extra_arg, "argument"),
    ("keyword arguments", _set("kwargs", {"_fn": "x"}), "argument"),
    ("items of 5", _items(5), "items"),
    ("items of 1.5", _items(1.5), "items"),
    ("items of true", _items(True), "items"),
    ("items of a string", _items("abc"), "items"),
    ("items of an object", _items({"id": "a"}), "items"),
    ("two items of one id", _duplicate_item, "items[1].id"),
    ("a timestamp that is text", _set("message_timestamp", "soon"), "timestamp"),
    ("a timestamp of NaN", _set("message_timestamp", float("nan")), "timestamp"),
    # past a float's range: math.isfinite raised in the fetch, which was put back and
    # fetched again every second with the good jobs beside it (review helper-99)
    ("a timestamp of 10**400", _set("message_timestamp", 10**400), "timestamp"),
    ("a timestamp of -10**400", _set("message_timestamp", -(10**400)), "timestamp"),
    ("a message id that is a number", _set("message_id", 7), "id"),
]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-message"])
def test_crafted_envelopes_and_jobs_are_dead_lettered_and_reported(qsettings, embedder, rawq, batched) -> None:
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q:
        jobs: dict[str, tuple[str, str]] = {}
        for n, (name, change, needle) in enumerate(CRAFTED):
            job_id, _ = q.enqueue_encode_job([{"id": f"c{n}", "content": f"crafted {n}"}])
            _rewrite(rawq, keys, job_id, change)
            jobs[job_id] = (name, needle)
        # more good jobs than worker threads, after the crafted ones: a dead thread shows
        good = [q.enqueue_encode_job([{"id": f"g{n}", "content": f"good {n}"}])[0] for n in range(4)]
        with worker_mod.running_worker(
            qsettings, threads=2, worker_timeout_ms=100, max_retries=5, min_backoff_ms=60_000,
            **({} if batched else {"inflight_records": 0}),
        ):  # fmt: skip
            report = q.drain(timeout=30, job_ids=[*jobs, *good])
        # A message without its job argument names no job: it cannot be reported (the
        # producer's drain times out naming it), but it is dead-lettered, never retried.
        lost_job, _ = q.enqueue_encode_job([{"id": "n", "content": "no argument"}])
        _rewrite(rawq, keys, lost_job, _set("args", []))
        with worker_mod.running_worker(qsettings, threads=2, worker_timeout_ms=100):
            with pytest.raises(DrainTimeout, match=lost_job):
                q.drain(timeout=3, job_ids=[lost_job])
    failed = {f.job_id: f.error for f in report.failed}
    assert set(failed) == set(jobs), {jobs[j][0] for j in set(jobs) - set(failed)}
    for job_id, (name, needle) in jobs.items():
        assert needle in failed[job_id], (name, failed[job_id])
    assert report.committed == len(good)
    dead = [json.loads(m) for m in rawq.hvals(keys.dead_msgs())]
    assert len(dead) == len(jobs) + 1
    assert all(m.get("options", {}).get("retries", 0) == 0 for m in dead)  # never retried
    # nothing of a refused job was written
    with ValkeyStore(qsettings) as store:
        assert sorted(r.id for r in store.list_records(limit=100)) == ["g0", "g1", "g2", "g3"]
    assert rawq.llen(keys.q()) == 0


@pytest.mark.parametrize("items", [5, 1.5, True, "abc", {"id": "a"}, None])
def test_the_identity_of_a_job_with_odd_items_is_still_read(items: Any) -> None:
    job = {"v": 1, "job": "j1", "producer": "p1", "items": items}
    assert job_identity([job]) == ("j1", "p1", [])


def test_an_encode_job_with_two_items_of_one_id_is_refused_before_any_work() -> None:
    items = [{"id": "a", "content": "one"}, {"id": "b", "content": "two"}, {"id": "a", "content": "three"}]
    with pytest.raises(JobPayloadError, match=r"items\[2\]\.id appears more than once .*items\[0\]"):
        check_encode_job(items)


def _to_delay_queue(rawq, keys: QueueKeys, job_id: str, eta: Any) -> None:
    """Move the stored message of ``job_id`` to its queue's delay queue, due at ``eta``
    (ms), as dramatiq's ``enqueue(message, delay=...)`` writes a retry."""
    (rid,) = [r for r in rawq.lrange(keys.q(), 0, -1) if job_id.encode() in rawq.hget(keys.msgs(), r)]
    msg = json.loads(rawq.hget(keys.msgs(), rid))
    msg["queue_name"] += ".DQ"
    msg["options"]["eta"] = eta
    dq = msg["queue_name"]
    rawq.lrem(keys.q(), 0, rid)
    rawq.hdel(keys.msgs(), rid)
    rawq.hset(keys.msgs(dq), rid, json.dumps(msg))  # Infinity for inf, as Python's json reads it
    rawq.rpush(keys.q(dq), rid)
    rawq.rpush(keys.wake(dq), "1")


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-message"])
def test_a_message_due_far_ahead_is_refused_not_held_in_memory(qsettings, embedder, rawq, batched) -> None:
    """dramatiq holds a message with an ``eta`` in the worker's memory until it is due: a
    forged ``eta`` on the main queue (where no message carries one: a delayed message
    loses it when it moves back) or one on the delay queue that is not a time within
    a day (a retry's backoff is at most an hour) held its job, unacked, for good, and
    its producer's drain waited it out (review helper-98). Such messages are
    dead-lettered and reported failed naming 'eta'; a delay queue message due now
    runs."""
    keys = QueueKeys(qsettings.namespace)
    now = int(time.time() * 1000)
    with MemoryQueue(qsettings, producer_id="p") as q:
        def job(n: int) -> str:
            return q.enqueue_encode_job([{"id": f"e{n}", "content": f"delayed {n}"}])[0]

        forged = []
        for n, eta in enumerate([now + 10**9, 10**18, "soon", None]):
            forged.append(job(n))
            _rewrite(rawq, keys, forged[-1], lambda msg, eta=eta: msg["options"].__setitem__("eta", eta))
        for n, eta in enumerate([now + 3 * 86_400_000, float("inf"), "soon", None, True], start=10):
            forged.append(job(n))
            _to_delay_queue(rawq, keys, forged[-1], eta)
        due = [job(20), job(21)]
        _to_delay_queue(rawq, keys, due[0], now)
        _to_delay_queue(rawq, keys, due[1], now + 1_000)
        good = job(30)
        with worker_mod.running_worker(
            qsettings, threads=2, worker_timeout_ms=100, **({} if batched else {"inflight_records": 0})
        ):
            report = q.drain(timeout=30, job_ids=[*forged, *due, good])
    failed = {f.job_id: f.error for f in report.failed}
    assert set(failed) == set(forged), report
    assert all("'eta'" in error for error in failed.values()), failed
    assert report.committed == 3, report
    with ValkeyStore(qsettings) as store:
        assert sorted(r.id for r in store.list_records(limit=100)) == ["e20", "e21", "e30"]
    assert len(rawq.hvals(keys.dead_msgs())) == len(forged)
    # Requeued from the dead letters, each goes back to the queue due now, the delay
    # queue's too (it came back naming the delay queue and was refused again).
    assert dead_requeue(qsettings) == len(forged)
    with MemoryQueue(qsettings, producer_id="p") as q:
        with worker_mod.running_worker(qsettings, threads=2, worker_timeout_ms=100):
            report = q.drain(timeout=30, job_ids=forged)
    assert report.committed == len(forged) and not report.failed, report
    assert not rawq.hvals(keys.dead_msgs())


@pytest.mark.parametrize("value", [3_600_001, 86_400_000, -1, 1.5, True, "60000"])
def test_a_retry_backoff_the_workers_would_refuse_is_a_config_error(value: Any) -> None:
    """A retry is a delayed message, and the workers refuse one due more than a day
    ahead: ``max_backoff_ms`` is at most an hour, checked before any connection."""
    with pytest.raises(ConfigError, match=r"max_backoff_ms must be an integer >= 0 and <= 3600000"):
        worker_mod.make_broker("redis://127.0.0.1:1/0", max_backoff_ms=value)
