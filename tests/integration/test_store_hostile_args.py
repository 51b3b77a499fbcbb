"""Hostile arguments to the store's API (a review of 2026-12-04): each is a
``ValidationError`` naming the argument, never a raw ``TypeError`` /
``OverflowError`` or a silent wrong answer, and nothing is written or deleted.

- ``include_private`` must be a real boolean: the string ``"false"`` is truthy and
  showed every source's private records.
- ``record_ids`` must be a list of strings: a bare string was iterated, so
  ``delete(record_ids="r1")`` deleted the records ``"r"`` and ``"1"``.
- Numbers beyond float64 (``10**400``) and datetimes whose UTC is out of range: an
  ``OverflowError``, and a metadata number under a range key passed the producer's
  checks and failed in the worker (a poison job, retried as if transient).
- A float16 namespace: a vector whose values all underflow float16 (< 6e-8) became
  zeros, stored as an embedding and scored NaN.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from test_store import mk, vec

from memworker import ValkeyStore
from memworker.errors import ValidationError
from memworker.queue.producer import MemoryQueue

HUGE = 10**400


# ----------------------------------------------------------------------------- privacy
@pytest.mark.parametrize("value", ["false", "False", "0", "", 0, 1, None, [], "no"])
def test_include_private_must_be_a_real_boolean(store, value: Any) -> None:
    store.save([mk("pub", seed=1), mk("priv", seed=2, source="alice", private=True)])
    with pytest.raises(ValidationError, match=r"include_private must be a boolean"):
        store.search(vec(2), include_private=value, viewer="bob")
    assert [r.id for r, _ in store.search(vec(2), include_private=False, viewer="bob")] == ["pub"]


def test_include_private_accepts_booleans_and_numpy_booleans(store) -> None:
    store.save([mk("pub", seed=1), mk("priv", seed=2, source="alice", private=True)])
    hidden = store.search(vec(2), include_private=np.bool_(False), viewer="bob")
    shown = store.search(vec(2), include_private=np.bool_(True), viewer="bob")
    assert {r.id for r, _ in hidden} == {"pub"} and {r.id for r, _ in shown} == {"pub", "priv"}


# ----------------------------------------------------------------------------- record ids
@pytest.mark.parametrize("value", ["r1", b"r1", 5, {"r": 1}, ["r", 5], ["r", None]])
def test_record_ids_must_be_a_list_of_strings(store, value: Any) -> None:
    store.save([mk("r", seed=1), mk("1", seed=2), mk("r1", seed=3)])
    with pytest.raises(ValidationError, match=r"record_ids"):
        store.delete(record_ids=value)
    with pytest.raises(ValidationError, match=r"record_ids"):
        store.get_records(value)
    with pytest.raises(ValidationError, match=r"record_ids"):
        store.touch_records(value)
    assert sorted(r.id for r in store.list_records()) == ["1", "r", "r1"]
    assert store.delete(record_ids=("r1",)) == 1  # any sequence of strings
    assert sorted(r.id for r in store.list_records()) == ["1", "r"]


def test_save_takes_a_list_of_records_not_one_record_or_a_string(store) -> None:
    """``save(record)`` used to iterate the record (a dict's keys, a model's fields, a
    string's characters) and blame ``records[0].id``: the error now names the argument."""
    from memworker.records import record_types

    one = mk("r", seed=1)
    model = record_types()[0](id="m", content="c", embedding=vec(2))
    for value in (one, model, "abc", b"abc", 5, None):
        with pytest.raises(ValidationError, match=r"^records must be a list of records"):
            store.save(value)
    assert store.count() == 0
    store.save(iter([one]))  # any iterable of records
    assert store.count() == 1


def test_async_record_ids_must_be_a_list_of_strings(store) -> None:
    store.save([mk("r", seed=1), mk("1", seed=2), mk("r1", seed=3)])

    async def main() -> None:
        with pytest.raises(ValidationError, match=r"record_ids"):
            await store.adelete(record_ids="r1")
        with pytest.raises(ValidationError, match=r"record_ids"):
            await store.atouch_records("r1")
        with pytest.raises(ValidationError, match=r"record_ids"):
            await store.aget_records("r1")
        await store.aclose()

    asyncio.run(main())
    assert store.count() == 3


# ----------------------------------------------------------------------------- overflow
def plain(rid: str, seed: int, **fields: Any) -> dict[str, Any]:
    """A record as a dict (CrewAI's ``MemoryRecord`` refuses some of these values itself;
    the store takes dicts too)."""
    record: dict[str, Any] = mk(rid, seed=seed).model_dump()
    record["embedding"] = vec(seed)  # model_dump leaves it out
    record.update(fields)
    return record


def test_numbers_beyond_float64_are_validation_errors_and_nothing_is_written(store) -> None:
    with pytest.raises(ValidationError, match=r"records\[1\]\.importance must be from 0 to 1"):
        store.save([mk("ok", seed=1), plain("bad", 2, importance=HUGE)])
    with pytest.raises(ValidationError, match=r"records\[1\]\.metadata\['=n'\] .*float64"):
        store.save([mk("ok", seed=1), plain("bad", 2, metadata={"=n": HUGE})])
    with pytest.raises(ValidationError, match=r"records\[0\]\.metadata\['=n'\] .*float64"):
        store.save([plain("bad", 2, metadata={"=n": -HUGE})])
    assert store.count() == 0
    # an integer that float64 holds (rounded) is fine, and so is a huge one under a key
    # with no range tokens (equality only)
    store.save([plain("big", 3, metadata={"=n": 10**300, "n": HUGE})])
    hits = store.search(vec(3), metadata_ranges={"=n": (1e299, True, None, True)})
    assert [r.id for r, _ in hits] == ["big"]
    assert [r.id for r, _ in store.search(vec(3), metadata_filter={"n": HUGE})] == ["big"]


@pytest.mark.parametrize("bound", [HUGE, -HUGE], ids=["huge", "-huge"])
def test_a_range_bound_beyond_float64_is_a_validation_error(store, bound: int) -> None:
    store.save([mk("a", seed=1, metadata={"=n": 5})])
    with pytest.raises(ValidationError, match=r"metadata_ranges\['=n'\] low .*float64"):
        store.search(vec(1), metadata_ranges={"=n": (bound, True, None, True)})
    with pytest.raises(ValidationError, match=r"metadata_ranges\['=n'\] high .*float64"):
        store.search(vec(1), metadata_ranges={"=n": (None, True, bound, True)})


EARLY = datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))


@pytest.mark.parametrize("created", [EARLY, "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-05:00"])
def test_a_datetime_whose_utc_is_out_of_range_is_a_validation_error(store, created: Any) -> None:
    with pytest.raises(ValidationError, match=r"records\[0\]\.created_at is out of range"):
        store.save([plain("a", 1, created_at=created, last_accessed=None)])
    with pytest.raises(ValidationError, match=r"older_than is out of range"):
        store.delete(older_than=created)
    assert store.count() == 0


def test_enqueue_refuses_a_number_the_worker_could_not_index(plain_server, namespace) -> None:
    """The producer checks what the worker will index: a range key's number beyond
    float64 used to pass enqueue and fail every worker attempt."""
    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
        with pytest.raises(ValidationError, match=r"items\[1\]\.metadata\['=n'\] .*float64"):
            q.enqueue_encode([{"text": "fine"}, {"text": "x", "metadata": {"=n": HUGE}}])
        with pytest.raises(ValidationError, match=r"items\[0\]\.importance must be from 0 to 1"):
            q.enqueue_encode([{"text": "x", "importance": HUGE}])
        with pytest.raises(ValidationError, match=r"records\[0\]\.metadata\['=n'\] .*float64"):
            q.enqueue_save([{"id": "a", "content": "x", "embedding": [1.0, 0.5],
                             "metadata": {"=n": HUGE}}])  # fmt: skip
        assert q.pending() == []


# ----------------------------------------------------------------------------- other arguments
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"min_score": "0.5"}, "min_score"),
        ({"min_score": None}, "min_score"),
        ({"min_score": math.nan}, "min_score"),
        ({"min_score": True}, "min_score"),
        ({"categories": 5}, "categories"),
        ({"metadata_ranges": [("=n", (1, True, 2, True))]}, "metadata_ranges"),
    ],
)
def test_search_arguments_of_the_wrong_type_are_named(store, kwargs: dict[str, Any], needle: str) -> None:
    store.save([mk("a", seed=1)])
    with pytest.raises(ValidationError, match=needle):
        store.search(vec(1), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"limit": "2"}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"offset": 10**20}, "offset"),
        ({"offset": "1"}, "offset"),
    ],
)
def test_list_records_arguments_are_checked(store, kwargs: dict[str, Any], needle: str) -> None:
    store.save([mk("a", seed=1)])
    with pytest.raises(ValidationError, match=needle):
        store.list_records(**kwargs)
    assert [r.id for r in store.list_records(limit=0)] == []  # "nothing", as before
    assert [r.id for r in store.list_records(offset=-1)] == []  # as CrewAI's LanceDB backend
    assert [r.id for r in store.list_records(limit=5, offset=0)] == ["a"]


# ----------------------------------------------------------------------------- float16
def test_a_vector_that_underflows_float16_is_refused(server, namespace) -> None:
    store = ValkeyStore(server.url, namespace=namespace, vector_type="float16", batch_size=2)
    try:
        tiny = [1e-8] * len(vec(1))
        with pytest.raises(ValidationError, match=r"records\[2\]\.embedding .*float16"):
            store.save([mk("ok1", seed=1), mk("ok2", seed=2), mk("tiny", embedding=tiny)])
        assert store.count() == 0
        # one value big enough to survive is enough (the rest round to zero, as any
        # float16 conversion of small values does)
        store.save([mk("ok1", seed=1), mk("edge", embedding=[1e-4] + tiny[1:])])
        assert store.count() == 2
    finally:
        store.reset()
        store.close()


def test_a_tiny_query_ranks_as_its_direction_in_a_float16_namespace(server, namespace) -> None:
    """Cosine similarity does not depend on the query's length: a query whose values
    would all underflow float16 (or overflow it) is scaled first, on every path."""
    dim = len(vec(1))
    store = ValkeyStore(server.url, namespace=namespace, vector_type="float16")
    try:
        x = [1.0] + [0.0] * (dim - 1)
        y = [0.0, 1.0] + [0.0] * (dim - 2)
        store.save([mk("x", embedding=x), mk("y", embedding=y)])
        for scale in (1e-9, 1.0, 1e6):
            for building in (False, True):
                store._state.index_building = building  # the exact path while an index builds
                hits = store.search([v * scale for v in x], limit=2)
                assert [r.id for r, _ in hits] == ["x", "y"], (scale, building)
                assert all(math.isfinite(s) for _, s in hits)
                assert hits[0][1] == pytest.approx(1.0, abs=2e-3)
                assert hits[1][1] == pytest.approx(0.0, abs=2e-3)
    finally:
        store.reset()
        store.close()


def test_a_stored_float16_vector_of_zeros_never_scores_nan(server, namespace, raw) -> None:
    """A record an older version stored with a float16 vector of zeros (its values
    underflowed) is left out of vector search, on both paths, never scored NaN."""
    dim = len(vec(1))
    store = ValkeyStore(server.url, namespace=namespace, vector_type="float16")
    try:
        store.save([mk("a", seed=1), mk("z", seed=2)])
        raw.hset(f"{store.keys.prefix}:rec:z", "embedding", np.zeros(dim, dtype="<f2").tobytes())
        fresh = ValkeyStore(server.url, namespace=namespace, vector_type="float16")
        try:
            for building in (False, True):
                fresh._state.index_building = building
                hits = fresh.search(vec(1), limit=5)
                assert all(math.isfinite(s) for _, s in hits), hits
                assert [r.id for r, _ in hits][:1] == ["a"]
        finally:
            fresh.close()
    finally:
        store.reset()
        store.close()


# ----------------------------------------------------------------------------- metadata size
def test_the_metadata_limit_counts_utf8_bytes_not_characters(store) -> None:
    """40,000 characters of two bytes each: 80,000 bytes of JSON, over the 64 KiB
    limit (it counted characters, so four times the limit got through)."""
    with pytest.raises(ValidationError, match=r"records\[0\]\.metadata is 8\d{4} bytes of JSON, the limit is 65536"):
        store.save([plain("a", 1, metadata={"k": "é" * 40_000})])
    assert store.count() == 0
    store.save([plain("a", 1, metadata={"k": "é" * 30_000})])  # 60,000 bytes: fine
    assert store.get_record("a").metadata == {"k": "é" * 30_000}


def test_numbers_of_int_and_float_subclasses_get_range_tokens(store) -> None:
    """numpy's float64 is a float (JSON writes it as a number): a range filter missed
    it, as it took only values of type int or float exactly."""
    store.save([plain("np", 1, metadata={"=n": np.float64(2.5)}), plain("py", 2, metadata={"=n": 3})])
    hits = store.search(vec(1), metadata_ranges={"=n": (2, True, 4, True)}, limit=5)
    assert sorted(r.id for r, _ in hits) == ["np", "py"]
    assert store.get_record("np").metadata == {"=n": 2.5}


def test_a_source_longer_than_the_limit_is_refused_and_nothing_is_written(store) -> None:
    """``source`` (the agent or user a private memory belongs to) had no limit: a
    megabyte stored with every record and hashed at every query."""
    from memworker.store.validate import MAX_SOURCE_LENGTH

    long = "a" * (MAX_SOURCE_LENGTH + 1)
    with pytest.raises(ValidationError, match=rf"records\[1\]\.source .*{MAX_SOURCE_LENGTH}"):
        store.save([mk("ok", seed=1), mk("long", seed=2, source=long, private=True)])
    assert store.list_records() == []
    for kwargs in ({"source": long}, {"viewer": long}):
        with pytest.raises(ValidationError, match=rf"{next(iter(kwargs))} .*{MAX_SOURCE_LENGTH}"):
            store.search(vec(1), **kwargs)
    edge = "a" * MAX_SOURCE_LENGTH
    store.save([mk("edge", seed=3, source=edge, private=True)])
    assert [r.id for r, _ in store.search(vec(3), viewer=edge)] == ["edge"]


def test_visible_categories_never_name_another_sources_private_records(store) -> None:
    """Category names are written by people or LLMs from a memory's text: a private
    record's categories ("hiv-positive-diagnosis") were shown to other sources through
    the category counters (deep recall's scope info, consolidation's field inference)."""
    store.save([
        mk("pub", "/team", ["roadmap"], seed=1),
        mk("both", "/team/x", ["roadmap", "budget"], seed=2),
        mk("alice", "/team", ["hiv-positive-diagnosis"], seed=3, source="alice", private=True),
        mk("bob", "/team/y", ["bob-only"], seed=4, source="bob", private=True),
        mk("nobody", "/team", ["ownerless"], seed=5, private=True),
    ])  # fmt: skip
    assert set(store.list_categories("/team")) == {
        "roadmap", "budget", "hiv-positive-diagnosis", "bob-only", "ownerless"}  # fmt: skip
    assert store.visible_categories("/team", viewer="bob") == {"roadmap": 2, "budget": 1, "bob-only": 1}
    assert store.visible_categories("/team", viewer=None) == {"roadmap": 2, "budget": 1}
    assert store.visible_categories("/team/x", viewer="alice") == {"roadmap": 1, "budget": 1}
    assert store.visible_categories("/nothing", viewer="bob") == {}
    with pytest.raises(ValidationError, match="viewer"):
        store.visible_categories("/team", viewer=5)
    assert asyncio.run(store.avisible_categories("/team", viewer="alice"))["hiv-positive-diagnosis"] == 1
    # scope names too: a private record's scope is not listed to others
    assert store.list_scopes("/team") == ["/team/x", "/team/y"]
    assert store.visible_scopes("/team", viewer=None) == ["/team/x"]
    assert store.visible_scopes("/team", viewer="bob") == ["/team/x", "/team/y"]
    assert store.visible_scopes("/", viewer=None) == ["/team"]
    assert asyncio.run(store.avisible_scopes("/team/x", viewer="bob")) == []
    assert store.visible_summary("/team", viewer=None) == ({"roadmap": 2, "budget": 1}, ["/team/x"])


# ------------------------------------------------------- error codes quoting an id
@pytest.mark.parametrize(
    "rid", ["VTYPEMISMATCH float32 float16", "x DIMMISMATCH 3 4", "DIMMISMATCH: 9 9", "NOTPENDING j", "NOTFOUND"]
)
def test_an_id_quoted_in_a_script_error_is_not_read_as_its_code(store, rid: str) -> None:
    # update() of a missing record without an embedding: the script refuses it with
    # "NOTFOUND <id>". An id that spells another error code was read as that code: a
    # dimension error that set the namespace's dimension to 3, or a vector type retry.
    store.save([mk("real", seed=1)])
    with pytest.raises(ValidationError, match=r"does not exist and has no embedding"):
        store.update(mk(rid, embedding=None))
    assert store.get_record(rid) is None
    # the namespace's dimension is unchanged: a search and a save of its own dimension work
    store.save([mk("after", seed=2)])
    assert {r.id for r, _ in store.search(vec(2), limit=5)} == {"real", "after"}


# ------------------------------------------------------------ sweep, delete_versioned
@pytest.mark.parametrize("limit", [10**30, "x", -1, 0, True, 1.5, None, 10_001])
def test_sweep_limit_is_an_integer_from_1_to_10000(store, limit: Any) -> None:
    store.save([{"id": "r", "content": "x", "embedding": vec(1), "exp": 1}])  # due long ago
    with pytest.raises(ValidationError, match=r"limit must be an integer from 1 to 10000"):
        store.sweep(limit=limit)
    assert store.get_record("r") is not None  # nothing swept
    assert store.sweep(limit=10_000)["expired"] == 1


@pytest.mark.parametrize("now_ms", [-1, "x", 1.5, True, 10**30])
def test_sweep_now_is_an_integer_time(store, now_ms: Any) -> None:
    with pytest.raises(ValidationError, match=r"now_ms must be an integer"):
        store.sweep(now_ms=now_ms)


@pytest.mark.parametrize(
    "versions, needle",
    [("ab", r"versions must be a list of \(id, integer\) pairs"),
     (b"ab", r"versions must be a list"),
     ({"r": 1}, r"versions must be a list"),
     (5, r"versions must be a list"),
     (["ab"], r"versions\[0\] must be an \(id, integer\) pair"),
     ([("r", 1, 2)], r"versions\[0\] must be an \(id, integer\) pair"),
     ([("r", 1), "xy"], r"versions\[1\] must be an \(id, integer\) pair")],
)  # fmt: skip
def test_delete_versioned_takes_only_a_list_of_pairs(store, versions: Any, needle: str) -> None:
    store.save([mk("r", seed=1), mk("a", seed=2), mk("b", seed=3)])
    with pytest.raises(ValidationError, match=needle):
        store.delete_versioned(versions)
    assert store.count() == 3  # nothing deleted
