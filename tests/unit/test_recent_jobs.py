"""RecentJobs: what a queue's next drain looks for besides its pending set (the jobs
enqueued since the last drain), bounded in number and age so that a job whose reports
may have expired is never called lost. Against real Valkey: test_memory_pressure_hostile.py."""

from __future__ import annotations

import pytest

from memworker.queue import drain as drain_mod
from memworker.queue.drain import RECENT_JOBS, RECENT_MS, RecentJobs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(drain_mod.time, "monotonic", fake.monotonic)
    return fake


def test_take_returns_what_was_added_once_and_in_order(clock):
    recent = RecentJobs()
    for i in range(3):
        recent.add(f"j{i}")
    assert list(recent.take()) == ["j0", "j1", "j2"]
    assert recent.take() == {}


def test_jobs_older_than_their_reports_live_are_not_looked_for(clock):
    """A commit marker and a report tombstone are kept MARKER_TTL_MS: a job enqueued
    longer ago than RECENT_MS may have been reported and its tombstone trimmed, so a
    drain must not look for it (it would be called lost)."""
    recent = RecentJobs()
    recent.add("old")
    clock.now += RECENT_MS / 1000 + 1
    recent.add("young")
    assert list(recent.take()) == ["young"]


def test_at_most_recent_jobs_are_kept_the_oldest_go_first(clock):
    recent = RecentJobs()
    for i in range(RECENT_JOBS + 5):
        recent.add(f"j{i}")
    taken = recent.take()
    assert len(taken) == RECENT_JOBS and "j0" not in taken and f"j{RECENT_JOBS + 4}" in taken


def test_put_back_keeps_the_bound_and_discard_forgets(clock):
    recent = RecentJobs()
    recent.add("a")
    taken = recent.take()
    for i in range(RECENT_JOBS):
        recent.add(f"j{i}")
    recent.put_back(taken)  # the oldest: the first to go over the bound
    again = recent.take()
    assert len(again) == RECENT_JOBS and "a" not in again
    recent.add("b")
    recent.add("c")
    recent.discard(["b", "nope"])
    assert list(recent.take()) == ["c"]
