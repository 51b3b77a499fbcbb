"""A hostile review of the changes of session 33 (helper-72): ``git diff b244bcd..``.

1. ``ns:requeued:<producer>`` (``memworker dead requeue`` lists the job so the
   producer's next drain reports it, docs/design.md): a requeue racing a drain, a
   requeued job failing again, an observer drain, two drains of one producer, a
   stale or another producer's entry. Each runs on a standalone server and a cluster.
2. ``embed_items`` stamps item i with now + i microseconds: a call's items keep their
   order and a later call's items are newer.
4. Nested non-string keys are refused, before anything of the call is written.
5. ``copy.deepcopy`` of a handle is the handle; CLI errors hide a URL's password.

The drain of test 1 is the real ``drain_plan`` run step by step on the producer's own
driver against a real server; only the moment of the requeue is chosen.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import pytest
from test_requeue_hostile import _wait_dead, flaky, workers  # noqa: F401
from test_worker import qsettings, rawq  # noqa: F401

from memworker.cli import main
from memworker.errors import ValidationError
from memworker.io.plan import Script, one
from memworker.queue.admin import dead_list, dead_requeue
from memworker.queue.drain import Wait, drain_plan
from memworker.queue.jobs import MARKER_TTL_MS, QueueKeys, embed_items
from memworker.queue.producer import MemoryQueue
from memworker.store.store import ValkeyStore

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import PutOp  # noqa: E402

from memworker.langgraph import QueuedStore  # noqa: E402


def _drain_with_hook(queue: MemoryQueue, before_claim) -> Any:
    """The producer's own drain (``drain_plan``, owner = its producer), run on its
    driver; ``before_claim()`` runs between the drain's final read and its claim."""
    pid = queue.producer_id
    plan = drain_plan(queue.keys, [pid], 30, None, pid)
    reply: Any = None
    while True:
        try:
            step = plan.send(reply)
        except StopIteration as stop:
            return stop.value
        if isinstance(step, Wait):
            time.sleep(step.seconds)
            reply = []
            continue
        if isinstance(step, Script) and step.args[:1] == ["claim"]:
            before_claim()
        reply = queue._driver.run(one(step))


def _wait_not_pending(rawq, keys: QueueKeys, producer: str, job_id: str, timeout: float = 30) -> None:  # noqa: F811
    deadline = time.monotonic() + timeout
    while rawq.zscore(keys.producer(producer).pending, job_id) is not None:
        assert time.monotonic() < deadline, f"{job_id} still pending"
        time.sleep(0.05)


def _ids(report) -> list[str]:
    return [f.job_id for f in report.failed]


# ------------------------------------------------------------------ 1. requeued set
def test_a_requeue_between_a_drains_read_and_its_claim_is_still_reported_once(qsettings, rawq, flaky, workers):  # noqa: F811
    """The drain read the job's failure; the operator requeues it before the drain's
    claim. The claim finds the failure gone (HDEL 0) and does not report it, which is
    right: the job runs again. But the job must then be reported by the producer's
    next drain (committed), or nobody ever tells the producer what became of it."""
    keys = QueueKeys(qsettings.namespace)
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="racer") as queue:
        job_id, (rid,) = queue.enqueue_encode_job(["poison kiwi"])
        assert [e["job_id"] for e in _wait_dead(qsettings, 1)] == [job_id]
        moved: list[int] = []

        def requeue() -> None:
            flaky.clear()
            moved.append(dead_requeue(qsettings))

        first = _drain_with_hook(queue, requeue)
        assert moved == [1]
        _wait_not_pending(rawq, keys, "racer", job_id)
        with ValkeyStore(qsettings) as store:
            assert store.get_record(rid).content == "poison kiwi"  # it committed
        second = queue.drain(timeout=30)
        third = queue.drain(timeout=5)
        reported = _ids(first) + _ids(second) + _ids(third)
        committed = first.committed + second.committed + third.committed
        assert reported.count(job_id) + committed == 1, (
            f"the requeued job was reported {reported.count(job_id)} time(s) failed and "
            f"{committed} time(s) committed (the claim of a failure the requeue had "
            "already cleared still tombstoned the job and dropped its requeued entry)"
        )
        assert committed == 1 and reported == []


def test_a_requeued_job_that_fails_again_is_reported_failed_once_then_committed_once(qsettings, rawq, flaky, workers):  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="again") as queue:
        job_id, (rid,) = queue.enqueue_encode_job(["poison lemon"])
        assert _ids(queue.drain(timeout=30)) == [job_id]
        assert dead_requeue(qsettings) == 1  # still poisoned: it fails again
        assert [e["job_id"] for e in _wait_dead(qsettings, 1)] == [job_id]
        report = queue.drain(timeout=30)
        assert _ids(report) == [job_id] and report.committed == 0 and report.lost == []
        again = queue.drain(timeout=5)
        assert again.failed == [] and again.committed == 0
        assert rawq.zcard(keys.producer("again").requeued) == 0
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        _wait_not_pending(rawq, keys, "again", job_id)
        report = queue.drain(timeout=30)
        assert report.committed == 1 and report.failed == [] and report.lost == []
        assert queue.drain(timeout=5).committed == 0
    with ValkeyStore(qsettings) as store:
        assert store.get_record(rid).content == "poison lemon"


def test_an_observer_drain_reports_a_requeued_commit_and_leaves_it_for_the_owner(qsettings, rawq, flaky, workers):  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="watched") as queue:
        job_id, _ = queue.enqueue_encode_job(["poison mango"])
        assert _ids(queue.drain(timeout=30)) == [job_id]
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        _wait_not_pending(rawq, keys, "watched", job_id)
        with MemoryQueue(qsettings, producer_id="cli") as cli:
            for _ in range(2):  # `memworker drain --producer watched`
                seen = cli.drain_all(timeout=10, consume=False)
                assert seen.failed == [] and seen.lost == []
        observed = queue.drain(timeout=10, consume=False)
        assert observed.committed == 1 and observed.failed == []
        report = queue.drain(timeout=10)
        assert report.committed == 1 and report.failed == [] and report.lost == []
        assert queue.drain(timeout=5).committed == 0
        assert rawq.zcard(keys.producer("watched").requeued) == 0


def test_two_drains_of_one_producer_report_a_requeued_commit_once(qsettings, rawq, flaky, workers):  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="twin") as a, MemoryQueue(qsettings, producer_id="twin") as b:
        jobs = [a.enqueue_encode_job([f"poison nut {i}"])[0] for i in range(4)]
        assert sorted(_ids(a.drain(timeout=30))) == sorted(jobs)
        flaky.clear()
        assert dead_requeue(qsettings) == 4
        for job_id in jobs:
            _wait_not_pending(rawq, keys, "twin", job_id)
        start = threading.Barrier(4)
        reports: list[Any] = []

        def drain(q: MemoryQueue) -> None:
            start.wait()
            reports.append(q.drain(timeout=30))

        threads = [threading.Thread(target=drain, args=(q,)) for q in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.committed for r in reports) == 4
        assert [f for r in reports for f in r.failed] == []
        assert rawq.zcard(keys.producer("twin").requeued) == 0


def test_stale_and_foreign_requeued_entries_neither_hold_nor_feed_a_drain(qsettings, rawq, flaky, workers):  # noqa: F811
    """An entry older than the marker TTL (its job long gone) is not waited for nor
    reported lost; another producer's entry is not this producer's report; neither
    makes the drain hang. The keys share the namespace's hash slot (cluster)."""
    keys = QueueKeys(qsettings.namespace)
    now = int(time.time() * 1000)
    rawq.zadd(keys.producer("alice").requeued, {"ancient-job": now - MARKER_TTL_MS - 60_000})
    rawq.zadd(keys.producer("bob").requeued, {"bobs-job": now})
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="alice") as alice:
        alice.enqueue_encode_job(["apple"])
        report = alice.drain(timeout=10)
        assert report.committed == 1 and report.failed == [] and report.lost == []
        assert alice.drain(timeout=5).failed == []


def test_requeued_keys_share_the_namespaces_hash_slot(qsettings):  # noqa: F811
    from redis.cluster import key_slot

    keys = QueueKeys(qsettings.namespace)
    p = keys.producer("x")
    slots = {key_slot(k.encode()) for k in (p.requeued, p.pending, p.failed, p.committed, p.reported, keys.dead())}
    assert len(slots) == 1


# ------------------------------------------------------------------ 2. created_at
def test_a_calls_items_are_stamped_in_order_and_a_later_call_is_newer():
    first = embed_items([f"t{i}" for i in range(2_000)], 2_000)
    second = embed_items(["later"], 1)
    stamps = [i["created_at"] for i in first]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert second[0]["created_at"] > stamps[-1]
    given = embed_items([{"text": "a", "created_at": "2020-01-01T00:00:00"}, "b"], 2)
    assert given[0]["created_at"] == "2020-01-01T00:00:00"


def test_committed_records_keep_their_calls_order(qsettings, flaky, workers):  # noqa: F811
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="order") as queue:
        _, ids = queue.enqueue_encode_job([f"fruit {i}" for i in range(5)])
        _, later = queue.enqueue_encode_job(["fruit later"])
        assert queue.drain(timeout=30).committed == 2
    with ValkeyStore(qsettings) as store:
        created = [store.get_record(r).created_at for r in [*ids, *later]]
    assert created == sorted(created) and len(set(created)) == 6


# ------------------------------------------------------------------ 4. nested keys
def test_a_nested_non_string_key_refuses_the_whole_call_before_it_is_enqueued(qsettings, rawq):  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="keys") as queue:
        with pytest.raises(ValidationError, match="keys must be strings"):
            queue.enqueue_encode_job([{"text": "fine"}, {"text": "bad", "metadata": {"d": [{1: "x"}]}}])
        assert queue.pending() == [] and rawq.llen(keys.q()) == 0


def test_a_langgraph_batch_with_a_nested_int_key_writes_nothing(qsettings, flaky, workers):  # noqa: F811
    workers(qsettings)
    with QueuedStore(qsettings) as lg:
        lg.put(("n",), "kept", {"v": 1})
        assert lg.get(("n",), "kept").value == {"v": 1}
        with pytest.raises(ValidationError):
            lg.batch([
                PutOp(("n",), "new", {"v": 2}),
                PutOp(("n",), "kept", None),
                PutOp(("n",), "bad", {"v": {"inner": {1: "x"}}}),
            ])  # fmt: skip
        assert lg.get(("n",), "kept").value == {"v": 1}
        assert lg.get(("n",), "new") is None and lg.get(("n",), "bad") is None
        # string keys at every level are still fine
        lg.put(("n",), "deep", {"v": {"inner": {"1": "x"}}})
        assert lg.get(("n",), "deep").value == {"v": {"inner": {"1": "x"}}}
        lg.store.reset()


# ------------------------------------------------------------------ 5. copies, CLI
def test_deepcopy_of_a_structure_holding_the_store_shares_the_working_handle(qsettings, flaky, workers):  # noqa: F811
    workers(qsettings)
    with QueuedStore(qsettings) as lg:
        state = {"store": lg, "notes": [1, 2]}
        copied = copy.deepcopy(state)
        assert copied["store"] is lg and copied["notes"] == [1, 2] and copied["notes"] is not state["notes"]
        copied["store"].put(("n",), "k", {"v": 1})
        assert lg.get(("n",), "k").value == {"v": 1}
        lg.store.reset()


@pytest.mark.parametrize(
    "argv",
    [
        ["drain", "--producer", "redis://u:Hunter2Secret@h", "--timeout", "-1"],
        ["--namespace", "rediss://u:Hunter2Secret@h/0", "status"],
    ],
)
def test_a_cli_error_never_prints_a_password_given_to_another_option(argv, qsettings, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    try:
        main(argv)
    except SystemExit:
        pass
    out = capsys.readouterr()
    assert "Hunter2Secret" not in out.out + out.err
