"""merge_enqueues: the enqueues of concurrent callers of one producer as few script
calls as the bounds allow, each job still its own (its four arguments, in order)."""

from __future__ import annotations

from memworker.keys import QueueKeys
from memworker.queue.producer import (
    ENQUEUE_GROUP_BYTES,
    ENQUEUE_GROUP_JOBS,
    enqueue_step,
    merge_enqueues,
)

KEYS = QueueKeys("ns")


def _step(i: int, size: int = 10, producer: str = "p"):
    return enqueue_step(KEYS, producer, f"job{i}", f"msg{i}", b"x" * size)


def test_steps_of_one_producer_become_one_call_with_every_job_in_order() -> None:
    steps = [_step(i) for i in range(5)]
    [(call, jobs)] = merge_enqueues(steps)
    assert jobs == 5
    assert call.name == "queue"
    assert call.args[:7] == steps[0].args[:7]
    assert call.args[7:] == [a for s in steps for a in s.args[7:]]
    assert call.args[7::4] == [f"msg{i}" for i in range(5)]
    assert call.args[10::4] == [f"job{i}" for i in range(5)]


def test_one_step_is_sent_as_it_is() -> None:
    step = _step(0)
    assert [(c.args, n) for c, n in merge_enqueues([step])] == [(step.args, 1)]


def test_calls_are_bounded_in_jobs_and_bytes() -> None:
    steps = [_step(i) for i in range(ENQUEUE_GROUP_JOBS * 2 + 1)]
    assert [n for _, n in merge_enqueues(steps)] == [ENQUEUE_GROUP_JOBS, ENQUEUE_GROUP_JOBS, 1]
    big = ENQUEUE_GROUP_BYTES // 2 + 1
    steps = [_step(0, big), _step(1, big), _step(2, 5), _step(3, ENQUEUE_GROUP_BYTES * 2)]
    calls = merge_enqueues(steps)
    assert [n for _, n in calls] == [1, 2, 1]  # a job over the bound still goes, alone
    assert [a for c, _ in calls for a in c.args[10::4]] == ["job0", "job1", "job2", "job3"]


def test_steps_of_other_keys_are_never_merged() -> None:
    steps = [_step(0), _step(1, producer="q"), _step(2, producer="q"), _step(3)]
    calls = merge_enqueues(steps)
    assert [n for _, n in calls] == [1, 2, 1]
    assert [c.args[6] for c, _ in calls] == ["p", "q", "p"]
