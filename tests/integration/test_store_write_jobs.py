"""ValkeyStore.write_jobs, the worker's batched commit: many jobs in one atomic script
call, each job's records and commands only while its pending mark exists, the tail
always. On both server kinds (with and without the search module)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from memworker import ValidationError, ValkeyStore
from memworker.store.codec import to_rows
from memworker.store.store import JobWrite

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

DIM = 8


def _vec(seed: int, dim: int = DIM) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).tolist()


def _rows(ids: list[str], scope: str = "/jobs", dim: int = DIM, content: str = "v1") -> list[Any]:
    return to_rows(
        [
            {"id": i, "content": f"{content} {i}", "scope": scope, "categories": ["c"],
             "embedding": _vec(n, dim)}
            for n, i in enumerate(ids)
        ]
    )  # fmt: skip


def _job(ns: str, job_id: str, ids: list[str], **kw: Any) -> JobWrite:
    pending = f"{{{ns}}}:test-pending"
    marker = f"{{{ns}}}:test-done"
    return JobWrite(_rows(ids, **kw), pending, job_id, [["SADD", marker, job_id]])


def test_jobs_commit_together_and_a_job_not_pending_is_skipped_whole(store: ValkeyStore, raw) -> None:
    ns = store.keys.namespace
    raw.zadd(f"{{{ns}}}:test-pending", {"a": 1, "c": 1})  # "b" is not pending (a duplicate)
    jobs = [_job(ns, "a", ["a1", "a2"]), _job(ns, "b", ["b1"]), _job(ns, "c", ["c1", "c2", "c3"])]
    inserted, skipped = store.write_jobs(jobs, [["SADD", f"{{{ns}}}:test-tail", "x"]])
    assert (inserted, skipped) == (5, [1])
    assert store.count() == 5 and store.get_record("b1") is None
    assert store.get_record("c3").content == "v1 c3"
    assert set(raw.smembers(f"{{{ns}}}:test-done")) == {b"a", b"c"}  # commands of pending jobs only
    assert set(raw.smembers(f"{{{ns}}}:test-tail")) == {b"x"}  # the tail always
    assert store.list_categories() == {"c": 5}
    hits = store.search(_vec(0), scope_prefix="/jobs", limit=10)
    assert {r.id for r, _ in hits} == {"a1", "b1", "c1", "a2", "c2", "c3"} - {"b1"}


def test_every_job_skipped_still_runs_the_tail(store: ValkeyStore, raw) -> None:
    ns = store.keys.namespace
    inserted, skipped = store.write_jobs(
        [_job(ns, "a", ["a1"]), _job(ns, "b", ["b1"])], [["SADD", f"{{{ns}}}:test-tail", "acked"]]
    )
    assert (inserted, skipped) == (0, [0, 1])
    assert store.count() == 0 and set(raw.smembers(f"{{{ns}}}:test-tail")) == {b"acked"}


def test_a_record_updated_after_its_job_was_enqueued_is_left_as_it_is(store: ValkeyStore, raw) -> None:
    """Each job's version is its own pending mark's score: a record a user updated
    after job "old" was enqueued keeps the update; job "new" (enqueued later) writes."""
    ns = store.keys.namespace
    store.save([{"id": "r1", "content": "first", "scope": "/jobs", "embedding": _vec(1)},
                {"id": "r2", "content": "first", "scope": "/jobs", "embedding": _vec(2)}])
    rec = store.get_record("r1")
    rec.content = "updated by the user"
    store.update(rec)
    upd = int(raw.hget(store.keys.rec("r1"), "upd"))
    raw.zadd(f"{{{ns}}}:test-pending", {"old": upd - 1_000, "new": upd + 1_000})
    jobs = [_job(ns, "old", ["r1"], content="old job"), _job(ns, "new", ["r2"], content="new job")]
    assert store.write_jobs(jobs) == (0, [])
    assert store.get_record("r1").content == "updated by the user"
    assert store.get_record("r2").content == "new job r2"
    assert store.count() == 2 and store.list_categories() == {"c": 1}  # r2 now has "c"


def test_one_dimension_per_call(store: ValkeyStore, raw) -> None:
    ns = store.keys.namespace
    raw.zadd(f"{{{ns}}}:test-pending", {"a": 1, "b": 1})
    with pytest.raises(ValidationError, match="dimensions"):
        store.write_jobs([_job(ns, "a", ["a1"]), _job(ns, "b", ["b1"], dim=4)])
    assert store.count() == 0 and raw.zcard(f"{{{ns}}}:test-pending") == 2
    store.write_jobs([_job(ns, "a", ["a1"])])
    with pytest.raises(ValidationError):  # the stored dimension is 8
        store.write_jobs([_job(ns, "b", ["b1"], dim=4)])
    assert store.count() == 1 and set(raw.smembers(f"{{{ns}}}:test-done")) == {b"a"}


def test_the_first_write_of_an_emptied_namespace_is_indexed(store_factory, raw) -> None:
    """After a reset by another store, the first batched commit recreates the index
    and its records are searchable (rewritten unguarded once the index exists)."""
    writer, other = store_factory(), store_factory()
    ns = writer.keys.namespace
    raw.zadd(f"{{{ns}}}:test-pending", {"a": 1})
    writer.write_jobs([_job(ns, "a", ["a1"])])
    other.reset()
    raw.zadd(f"{{{ns}}}:test-pending", {"b": 1, "c": 1})
    assert writer.write_jobs([_job(ns, "b", ["b1"]), _job(ns, "c", ["c1"])]) == (2, [])
    hits = other.search(_vec(0), limit=5)
    assert {r.id for r, _ in hits} == {"b1", "c1"}
    assert set(raw.smembers(f"{{{ns}}}:test-done")) == {b"a", b"b", b"c"}


def test_a_stamped_job_keeps_its_records_from_an_earlier_job_committed_later(store: ValkeyStore, raw) -> None:
    """``JobWrite(stamp=True)`` (a job fetched with a job handed back that writes the
    same id, memworker.worker.batch) stamps its records ``upd`` = its enqueue time: a
    job enqueued earlier that commits later leaves them as they are; a later job still
    writes and keeps the stamp (moved to its own time); an unstamped job over a record
    without a stamp adds none (no field per record)."""
    ns = store.keys.namespace
    pending = f"{{{ns}}}:test-pending"
    raw.zadd(pending, {"a": 1_000, "b": 2_000, "c": 3_000, "a2": 2_500, "d": 4_000})
    b = dataclasses.replace(_job(ns, "b", ["x", "y"], content="B"), stamp=True)
    assert store.write_jobs([b]) == (2, [])
    assert int(raw.hget(store.keys.rec("x"), "upd")) == 2_000
    # "a" was enqueued before "b" and commits after it (handed back): "b" stays
    assert store.write_jobs([_job(ns, "a", ["x"], content="A")]) == (0, [])
    assert store.get_record("x").content == "B x"
    # "c" (later) writes, unstamped, and the record keeps a stamp: its own time
    assert store.write_jobs([_job(ns, "c", ["x"], content="C")]) == (0, [])
    assert store.get_record("x").content == "C x"
    assert int(raw.hget(store.keys.rec("x"), "upd")) == 3_000
    # so "a2" (enqueued between "b" and "c") committing late leaves "c"'s value too
    assert store.write_jobs([_job(ns, "a2", ["x"], content="A2")]) == (0, [])
    assert store.get_record("x").content == "C x"
    # an unstamped job over a record without a stamp adds none
    assert store.write_jobs([_job(ns, "d", ["z"], content="D")]) == (1, [])
    assert raw.hget(store.keys.rec("z"), "upd") is None
    assert store.count() == 3 and store.list_categories() == {"c": 3}
