"""Versioned writes, tombstones, expiries, retention and the sweep (lua/store.lua),
on real servers with and without the search module (and on clusters).

What LangGraph's write-behind store (``memworker.langgraph``) and the retention
policies stand on: a later version is never overwritten by an earlier one, whatever
the commit order; a versioned delete leaves a tombstone; a record's expiry enters
``{ns}:expiry`` and the sweep deletes what is due with its side indexes.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from memworker.errors import ValidationError
from memworker.records import utcnow

ON_CLUSTER = True

DIM = 4


def rec(rid: str, content: str, *, ver: int | None = None, exp: int | None = None,
        scope: str = "/lg", vec: list[float] | None = None, **extra):  # fmt: skip
    out = {"id": rid, "content": content, "scope": scope, "embedding": vec or [1.0, 0, 0, 0]}
    if ver is not None:
        out["ver"] = ver
    if exp is not None:
        out["exp"] = exp
    out.update(extra)
    return out


def contents(store, scope: str = "/lg") -> list[str]:
    return sorted(r.content for r in store.list_records(scope))


def test_later_version_wins_whatever_the_commit_order(store):
    store.save([rec("k", "v2", ver=2_000)])
    store.save([rec("k", "v1", ver=1_000)])  # committed later, enqueued earlier
    assert contents(store) == ["v2"]
    store.save([rec("k", "v3", ver=3_000)])
    assert contents(store) == ["v3"]
    assert store.count("/lg") == 1


def test_a_versioned_rewrite_keeps_created_at_and_sets_last_accessed(store):
    first = utcnow() - timedelta(days=3)
    store.save([rec("k", "v1", ver=1, created_at=first, last_accessed=first)])
    later = utcnow()
    store.save([rec("k", "v2", ver=2, created_at=later, last_accessed=later)])
    got = store.get_record("k")
    assert got.content == "v2"
    # stored to the microsecond, as given: equal, not "close in time"
    assert got.created_at == first
    assert got.last_accessed == later
    # the tree index still holds one entry for it, under its first creation time
    assert store.count("/") == 1


def _job(store, raw, job_id: str, records: list[dict]):
    from memworker.store import to_rows
    from memworker.store.store import JobWrite

    pending = f"{store.keys.prefix}:test-pending"
    raw.zadd(pending, {job_id: 1})
    return JobWrite(to_rows(records), pending, job_id, [["ZREM", pending, job_id]])


def test_same_id_in_two_jobs_of_one_commit_is_written_once_with_the_later_version(store, raw):
    # The worker's batched commit: two puts of one key in the same script call.
    jobs = [
        _job(store, raw, "j1", [rec("k", "late", ver=20), rec("x", "other", ver=1)]),
        _job(store, raw, "j2", [rec("k", "early", ver=10)]),
    ]
    store.write_jobs(jobs)
    assert contents(store) == ["late", "other"]
    assert store.count("/lg") == 2
    assert store.get_scope_info("/lg").record_count == 2
    store.delete(record_ids=["k", "x"])
    assert store.count("/") == 0
    # without versions, the later record of the call wins and counts once
    store.write_jobs([_job(store, raw, "j3", [rec("u", "a")]), _job(store, raw, "j4", [rec("u", "b")])])
    assert contents(store) == ["b"]
    assert store.count("/") == 1
    assert store.list_scopes("/") == ["/lg"]


def test_versioned_delete_leaves_a_tombstone_that_stops_an_older_write(store):
    store.save([rec("k", "v1", ver=100)])
    assert store.delete_versioned([("k", 200)]) == 1
    assert store.get_record("k") is None
    store.save([rec("k", "stale", ver=150)])  # an older put committed after the delete
    assert store.get_record("k") is None
    store.save([rec("k", "new", ver=300)])
    assert store.get_record("k").content == "new"


def test_versioned_delete_does_not_remove_a_later_version(store):
    store.save([rec("k", "v5", ver=500)])
    assert store.delete_versioned([("k", 400)]) == 0
    assert store.get_record("k").content == "v5"


def test_expiry_index_follows_writes_deletes_and_refresh(store, raw):
    now = int(time.time() * 1000)
    store.save([rec("a", "A", exp=now + 60_000), rec("b", "B")])
    assert store.expiries(["a", "b", "missing"]) == [now + 60_000, None, None]
    # a refresh only touches records that have an expiry
    assert store.set_expiries([("a", now + 120_000), ("b", now + 5)]) == 1
    assert store.expiries(["a", "b"]) == [now + 120_000, None]
    # a rewrite without an expiry takes it out of the index
    store.save([rec("a", "A2")])
    assert store.expiries(["a"]) == [None]
    store.save([rec("c", "C", exp=now + 1)])
    store.delete(record_ids=["c"])
    assert store.expiries(["c"]) == [None]
    assert raw.zcard(store.keys.expiry) == 0


def test_a_refresh_takes_the_ttl_stored_with_the_record_now(store, raw):
    """refresh_expiries sets now + the TTL the stored record carries, read in the same
    atomic step (a record re-put since the reader read it keeps its own TTL); a record
    stored without one takes the reader's fallback; one without an expiry is left."""
    now = int(time.time() * 1000)
    store.save([
        rec("kept", "K", exp=now + 60_000, ttl=60_000),
        rec("old", "O", exp=now + 60_000),  # written before records kept their TTL
        rec("none", "N"),
    ])  # fmt: skip
    later = now + 30_000
    fallbacks = [("kept", later + 1), ("old", later + 2), ("none", later + 3), ("missing", 1)]
    assert store.refresh_expiries(fallbacks, now_ms=later) == 2
    assert store.expiries(["kept", "old", "none", "missing"]) == [later + 60_000, later + 2, None, None]
    assert raw.zscore(store.keys.expiry, "kept") == later + 60_000
    # a re-put with another TTL: a refresh computed from the first keeps the new one
    store.save([rec("kept", "K2", exp=later + 6_000_000, ttl=6_000_000)])
    assert store.refresh_expiries([("kept", later + 1)], now_ms=later + 5) == 1
    assert store.expiries(["kept"]) == [later + 5 + 6_000_000]
    with pytest.raises(ValidationError, match=r"fallbacks\[0\]"):
        store.refresh_expiries([("kept", -1)])
    with pytest.raises(ValidationError, match=r"records\[0\]\.ttl"):
        store.save([rec("t", "T", exp=now, ttl="1")])
    assert asyncio.run(store.arefresh_expiries([("kept", 1)], now_ms=later + 9)) == 1


def test_sweep_deletes_what_is_due_with_its_side_indexes(store):
    now = int(time.time() * 1000)
    store.save(
        [rec(f"e{i}", f"E{i}", exp=now - 1, categories=["x"]) for i in range(5)]
        + [rec("keep", "K", exp=now + 3_600_000, categories=["x"]), rec("plain", "P")]
    )
    assert store.sweep(limit=3, now_ms=now)["expired"] == 3
    assert store.sweep(limit=100, now_ms=now)["expired"] == 2
    assert contents(store) == ["K", "P"]
    assert store.list_categories("/lg") == {"x": 1}
    assert store.sweep(limit=100, now_ms=now) == {"expired": 0, "retained": 0, "tombs": 0, "scanned": 0}


def test_sweep_applies_retention_by_scope(store, raw):
    old = utcnow() - timedelta(days=10)
    new = utcnow() - timedelta(days=1)
    store.save(
        [rec("o1", "old", scope="/crew/a", created_at=old), rec("n1", "new", scope="/crew/a", created_at=new),
         rec("o2", "old elsewhere", scope="/other", created_at=old)]  # fmt: skip
    )
    raw.hset(store.keys.retention, "/crew", "5")
    got = store.sweep(limit=100)
    assert got["retained"] == 1
    assert sorted(r.content for r in store.list_records("/")) == ["new", "old elsewhere"]


def test_sweep_trims_old_tombstones(store, raw):
    store.delete_versioned([("gone", 1)])  # a tombstone dated 1970
    assert raw.zcard(store.keys.tomb) == 1
    assert store.sweep()["tombs"] == 1
    assert raw.zcard(store.keys.tomb) == 0


def test_bad_versions_and_expiries_are_refused_naming_the_field(store):
    with pytest.raises(ValidationError, match=r"records\[0\]\.ver"):
        store.save([rec("k", "v", ver="7")])
    with pytest.raises(ValidationError, match=r"records\[1\]\.exp"):
        store.save([rec("a", "v"), rec("k", "v", exp=-1)])
    with pytest.raises(ValidationError, match=r"versions\[0\]"):
        store.delete_versioned([("k", True)])
    with pytest.raises(ValidationError, match=r"expiries\[0\]"):
        store.set_expiries([("k", 1 << 60)])
    assert store.count() == 0


def test_versioned_records_are_searchable_and_reset_clears_expiry_and_tombs(store, raw):
    now = int(time.time() * 1000)
    store.save([rec("k", "v", ver=5, exp=now + 60_000, vec=[0, 1.0, 0, 0])])
    hits = store.search([0, 1.0, 0, 0], scope_prefix="/lg", limit=5)
    assert [r.content for r, _ in hits] == ["v"]
    store.delete_versioned([("z", 9)])
    store.reset()
    assert raw.exists(store.keys.expiry, store.keys.tomb) == 0


def test_async_faces(store):
    async def main():
        now = int(time.time() * 1000)
        await store.asave([rec("k", "v", ver=1, exp=now - 1)])
        assert await store.aexpiries(["k"]) == [now - 1]
        assert [r.content for r in await store.aget_records(["k", "nope"]) if r] == ["v"]
        assert (await store.asweep(now_ms=now))["expired"] == 1
        assert await store.adelete_versioned([("k", 2)]) == 0
        assert await store.aset_expiries([("k", 1)]) == 0
        await store.aclose()

    asyncio.run(main())
