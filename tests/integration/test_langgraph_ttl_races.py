"""Hostile and racy inputs to memworker.langgraph.QueuedStore (TTL, refresh, sweep,
config checks), on real servers and real in-process workers (the fixtures of
test_langgraph.py), from a review of the store.

Every test in the first section failed before its fix, each because of the defect
its docstring names. The last section holds checks that passed (kept as regression
tests).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

ON_CLUSTER = True

from test_langgraph import DIM, WordEmbedder, embedder, lg, make_store, settings, worker  # noqa: E402,F401

from memworker import worker as worker_mod  # noqa: E402
from memworker.errors import ConfigError, ValidationError  # noqa: E402
from memworker.langgraph import QueuedStore, next_version, record_id  # noqa: E402


# ============================================================================ fixed defects
def test_a_swept_expired_put_lets_an_earlier_queued_put_of_the_key_come_back(settings, embedder):
    """The sweep deleted an expired versioned record without leaving a tombstone
    (lua/store.lua ``sweep`` -> ``delete_ids``), so a put of the key enqueued EARLIER
    and committed later (another worker's backlog, a redelivery after a killed
    worker) is written over nothing: the older value comes back after the later put
    expired. Without the sweep (expired, not yet swept) the same commit is refused by
    the stored later version: the outcome depends on when the sweep ran."""
    with QueuedStore(settings, index={"dims": DIM, "fields": ["text"]}) as lg:
        lg.put(("n",), "k", {"text": "early"})  # no worker yet: it waits in the queue
        # The later put of the key (1 minute TTL) committed first, as a second worker
        # would have; it is now past its expiry.
        now_ms = int(time.time() * 1000)
        lg.store.save([{"id": record_id(("n",), "k"), "content": "late", "scope": "/langgraph/n",
                        "categories": ["n"], "metadata": {"key": "k", "=text": "late", "ttl": 1},
                        "ver": next_version(), "exp": now_ms - 1000, "ttl": 60_000,
                        "embedding": WordEmbedder().encode(["late"])[0]}])  # fmt: skip
        assert lg.store.expiries([record_id(("n",), "k")])[0] < now_ms  # expired, not swept
        assert lg.store.sweep()["expired"] == 1
        try:
            with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100):
                item = lg.get(("n",), "k", refresh_ttl=False)  # drains: "early" commits
        finally:
            lg.store.reset()
        assert item is None, f"an older put came back after the later one expired: {item.value}"


def test_a_refresh_that_lands_after_the_expiry_resurrects_the_item(make_store):
    """A read checks the expiry (``_p_live``) and refreshes it one round trip later
    (``refresh_expiries``); the ``refresh`` script moves the expiry of any record that
    has one, also one that is already due. A refresh delayed past the expiry (a GC
    pause, a slow network, a loaded server) brings an expired item back for a whole
    new TTL, although every read in between reported it gone (and a sweep in that
    window would have deleted it instead)."""
    lg = make_store(ttl={"default_ttl": 1})
    lg.put(("t",), "k", {"text": "apple"})
    assert lg.get(("t",), "k", refresh_ttl=False) is not None  # committed
    rid = record_id(("t",), "k")
    exp = int(time.time() * 1000) + 1000
    lg.store.set_expiries([(rid, exp)])  # due in 1 s (its stored TTL stays 1 minute)
    real = lg.store.refresh_expiries

    def late(*args, **kwargs):  # the refresh reaches the server after the expiry
        while time.time() * 1000 < exp + 200:
            time.sleep(0.02)
        return real(*args, **kwargs)

    lg.store.refresh_expiries = late
    try:
        assert lg.get(("t",), "k") is not None  # live when it was read
    finally:
        del lg.store.refresh_expiries
    assert lg.get(("t",), "k", refresh_ttl=False) is None, "expired item resurrected by a late refresh"


def test_refresh_on_read_given_as_the_text_false_is_refused_not_read_as_true(make_store):
    """``ttl={"refresh_on_read": "false"}`` is accepted (``_check_ttl_config`` does not
    check it) and ``QueuedStore._refresh`` reads it with ``bool()``: every read then
    refreshes TTLs, so items never expire while they are read, against the setting.
    (``include_private="false"`` is a ValidationError in the store for this reason.)"""
    try:
        lg = make_store(ttl={"default_ttl": 1, "refresh_on_read": "false"})
    except (ConfigError, ValidationError) as exc:
        assert "refresh_on_read" in str(exc)
        return
    lg.put(("t",), "k", {"text": "apple"})
    rid = record_id(("t",), "k")
    lg.get(("t",), "other")  # drains
    first = lg.store.expiries([rid])[0]
    time.sleep(0.3)
    lg.get(("t",), "k")
    assert lg.store.expiries([rid])[0] == first, "refresh_on_read='false' refreshed the TTL"


def test_refresh_ttl_given_as_the_text_false_is_refused_not_read_as_true(make_store):
    """``get(..., refresh_ttl="false")`` (a flag read from text or from an LLM's tool
    call) refreshes the TTL: ``_refresh`` returns ``bool("false")``, True."""
    lg = make_store(ttl={"default_ttl": 1, "refresh_on_read": False})
    lg.put(("t",), "k", {"text": "apple"})
    rid = record_id(("t",), "k")
    lg.get(("t",), "other")  # drains
    first = lg.store.expiries([rid])[0]
    time.sleep(0.3)
    try:
        lg.get(("t",), "k", refresh_ttl="false")
    except ValidationError as exc:
        assert "refresh_ttl" in str(exc)
        return
    assert lg.store.expiries([rid])[0] == first, "refresh_ttl='false' refreshed the TTL"


def test_a_range_bound_given_as_a_numpy_integer_matches_like_an_int(lg):
    """``_number`` takes ``int``/``float`` only: a numpy integer bound (``np.int64``,
    what pandas or numpy code hands over; ``limit`` and ``offset`` accept it) makes
    ``_bounds`` push no range and ``_apply`` return False for every item: the search
    silently returns nothing instead of the matching items (``$eq`` with the same
    operand does match)."""
    lg.put(("a",), "k", {"text": "apple", "n": 5})
    assert [h.key for h in lg.search(("a",), filter={"n": {"$eq": np.int64(5)}})] == ["k"]
    assert [h.key for h in lg.search(("a",), filter={"n": {"$gt": np.int64(1)}})] == ["k"]
    assert [h.key for h in lg.search(("a",), query="apple", filter={"n": {"$gt": np.int64(1)}})] == ["k"]


def test_a_bad_drain_timeout_is_refused_when_the_store_is_made(settings, embedder):
    """``drain_timeout`` is not checked by ``QueuedStore.__init__``: a NaN, a negative
    number or a text is accepted, the puts are enqueued, and every later read fails
    with the queue's "timeout must be None or a finite number of seconds >= 0" (not
    naming ``drain_timeout``), after the writes it was meant to wait for went out."""
    with pytest.raises((ConfigError, ValidationError), match="drain_timeout"):
        with QueuedStore(settings, drain_timeout=float("nan")) as s:
            s.put(("a",), "k", {"x": 1})
            s.get(("a",), "k")


def test_a_lone_surrogate_key_is_refused_naming_the_key_not_the_value(lg):
    """A key with a lone surrogate (``"\\ud800"``; docs: "keys any non-empty string")
    is refused as ``put of '\\ud800': value is not JSON-serializable: a string is not
    valid unicode text``: the key is stored in the record's metadata, and
    ``_put_error`` renames ``metadata`` to ``value``. The value is fine; the message
    sends the user looking in the wrong place."""
    with pytest.raises(ValidationError) as info:
        lg.put(("a",), "\ud800", {"text": "apple"})
    assert "key" in str(info.value).split(":", 1)[1], str(info.value)


def test_a_put_after_the_item_expired_is_a_new_item_with_its_own_created_at(lg):
    """A put of a key whose previous item has expired but is not swept yet keeps the
    expired item's ``created_at`` (the commit script keeps ``old_created`` of any
    stored predecessor): the new item reports the creation time of an item that every
    read already called gone; after a sweep the same put gets its own. LangGraph's
    stores delete expired items, so the new item's created_at is its own."""
    lg.put(("t",), "k", {"text": "apple"}, ttl=0.1)  # 6 s (committed and read before it is due)
    lg.get(("t",), "other")  # drains
    first = lg.store.get_records([record_id(("t",), "k")])[0]
    assert first is not None
    due = lg.store.expiries([record_id(("t",), "k")])[0]
    while time.time() * 1000 < due + 200:  # past the item's own expiry, however long the drain took
        time.sleep(0.05)
    assert lg.get(("t",), "k") is None  # expired
    lg.put(("t",), "k", {"text": "new"}, ttl=None)
    again = lg.get(("t",), "k")
    assert again.value == {"text": "new"}
    assert again.created_at.replace(tzinfo=None) > first.created_at, (again.created_at, first.created_at)


# ============================================================================ checks that passed
def test_wide_ranges_on_many_fields_and_many_equalities_do_not_break_the_query(lg):
    lg.put(("a",), "k", {"text": "apple", **{f"n{i}": i for i in range(60)}})
    flt = {f"n{i}": {"$gte": -1e300, "$lte": 1e300} for i in range(60)}
    assert [h.key for h in lg.search(("a",), query="apple", filter=flt)] == ["k"]
    assert lg.search(("a",), query="apple", filter={f"f{i}": i for i in range(3000)}) == []


@pytest.mark.parametrize("key", ["\x00", "\x85", "\x7f", "\ufeff", "a\u2028b", "\U0010ffff"])
def test_odd_keys_round_trip(lg, key):
    lg.put(("a",), key, {"text": "apple"})
    item = lg.get(("a",), key)
    assert item is not None and item.key == key
    assert [h.key for h in lg.search(("a",))] == [key]


def test_a_lone_surrogate_field_name_is_a_validation_error(lg):
    with pytest.raises(ValidationError, match="put of 'k'"):
        lg.put(("a",), "k", {"\ud800": 1})
