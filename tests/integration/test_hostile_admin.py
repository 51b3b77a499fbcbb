"""Hostile data behind the admin surface (a review of 2026-12-05): what ``memworker
dead``, ``status`` and ``drain`` read back from Valkey, and the arguments of the
store's sweep / versioned delete and of the producer's lookups.

- A dead letter is whatever is stored under the queue's dead-letter keys (forged,
  corrupted, a message dead-lettered as it came): every entry is listed with what can
  be read of it, never a crash of the whole listing, a requeue or a purge.
- Ids, names and counters read from Valkey reach the terminal escaped: no escape
  sequence, carriage return or line of their own.
- ``sweep(limit=...)``, ``delete_versioned(...)``, ``job_result(...)``,
  ``MemoryQueue(max_items=...)`` and ``enqueue_encode_items(...)`` refuse a bad
  argument with a ``ValidationError`` naming it and its limit; nothing is written.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any

import numpy as np
import pytest
from test_store import mk, vec
from test_worker import qsettings, rawq  # noqa: F401

from memworker.cli import main
from memworker.errors import ValidationError
from memworker.queue.admin import dead_list, dead_purge, dead_requeue, queue_status
from memworker.queue.jobs import QueueKeys, embed_items
from memworker.queue.producer import MemoryQueue
from memworker.store.codec import MAX_STAMP

EVIL = "EVIL\x1b[2J\x1b]0;owned\x07\r\nFAKE: job 123 committed OK\x9b31m"


def _assert_clean(text: str) -> None:
    for bad in ("\x1b", "\x07", "\x9b", "\r"):
        assert bad not in text, repr(text)
    assert "\nFAKE:" not in text


def _dead(rawq, keys: QueueKeys, mid: Any, body: Any, score: Any = 1) -> None:  # noqa: F811
    """A dead letter the way the broker stores one (dramatiq's ``<q>.XQ`` zset, scored
    with the time it died, and its ``.XQ.msgs`` hash of message bodies)."""
    if body is not None:
        rawq.hset(keys.dead_msgs(), mid, body)
    rawq.zadd(keys.dead(), {mid: score})


def _message(**over: Any) -> dict[str, Any]:
    msg = {
        "queue_name": "default", "actor_name": "encode_items", "message_id": "j1",
        "args": [{"v": 1, "job": "j1", "producer": "p", "items": [{"id": "r1", "content": "x"}]}],
        "kwargs": {}, "options": {"traceback": "tb"}, "message_timestamp": 1,
    }  # fmt: skip
    msg.update(over)
    return msg


# ------------------------------------------------------------------ 1. dead letters
ODD_BODIES = [
    b"[1, 2]", b"5", b"1e999", b"NaN", b'"text"', b"null", b"true", b"",
    b"\xff\xfe not json", b"{", b"[" * 100_000, b'{"a":' * 100_000,
    json.dumps(_message(args={"a": 1})).encode(),
    json.dumps(_message(args=[5])).encode(),
    json.dumps(_message(args=[[{"producer": "p"}]])).encode(),
    json.dumps(_message(args=[])).encode(),
    json.dumps(_message(args="x")).encode(),
    json.dumps(_message(options="x")).encode(),
    json.dumps(_message(options=[1])).encode(),
    json.dumps(_message(options={"traceback": {"t": 1}})).encode(),
    json.dumps(_message(message_id={"id": 1}, actor_name=[1])).encode(),
    json.dumps(_message(args=[{"items": {"id": "r"}, "producer": ["p"]}])).encode(),
    json.dumps(_message(args=[{"items": "ab", "producer": 7}])).encode(),
    json.dumps(_message(args=[{"items": [[1], None, {"id": 5}, {"id": "ok"}]}])).encode(),
    json.dumps(_message(message_id=EVIL, args=[{"producer": EVIL, "items": [{"id": EVIL}]}],
                        options={"traceback": EVIL})).encode(),
]  # fmt: skip


@pytest.mark.parametrize("n", range(len(ODD_BODIES)))
def test_dead_list_lists_a_body_of_any_shape(qsettings, rawq, monkeypatch, capsys, n: int) -> None:  # noqa: F811
    """Each body alone, between two good dead letters: all three listed, in order."""
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    _dead(rawq, keys, "before", json.dumps(_message()), 1)
    _dead(rawq, keys, "odd", ODD_BODIES[n], 2)
    _dead(rawq, keys, "after", json.dumps(_message()), 3)
    entries = dead_list(qsettings)
    assert [e["message_id"] for e in entries] == ["before", "odd", "after"]
    assert entries[0]["record_ids"] == ["r1"] and entries[0]["producer"] == "p"
    odd = entries[1]
    for key in ("job_id", "actor", "producer", "traceback", "error"):
        assert odd.get(key) is None or isinstance(odd[key], str), odd
    assert all(isinstance(i, str) for i in odd.get("record_ids") or []), odd
    if not ODD_BODIES[n].startswith(b"{\""):
        assert odd["error"] == "undecodable message"
    assert main(["dead", "list"]) == 0
    assert main(["dead", "list", "--json"]) == 0
    out = capsys.readouterr().out
    _assert_clean(out)
    assert "message_id=odd" in out


def test_dead_list_keeps_what_it_can_read_of_a_mistyped_job(qsettings, rawq) -> None:  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    _dead(rawq, keys, "m", json.dumps(_message(args=[{"items": [[1], {"id": 5}, {"id": "ok"}],
                                                      "producer": 7}], options="x")))  # fmt: skip
    (entry,) = dead_list(qsettings)
    assert entry["record_ids"] == ["ok"] and entry["producer"] is None
    assert entry["job_id"] == "j1" and entry["actor"] == "encode_items"
    assert entry["traceback"] is None and "error" not in entry


@pytest.mark.parametrize("score, shown", [("inf", None), ("-inf", None), (1e300, int(1e300)), (-5, -5)])
def test_dead_list_takes_any_score(qsettings, rawq, monkeypatch, capsys, score: Any, shown: Any) -> None:  # noqa: F811
    """The dead-letter time is a zset score: anything ZADD takes, infinities too."""
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    _dead(rawq, keys, "m", json.dumps(_message()), score)
    (entry,) = dead_list(qsettings)
    assert entry["message_id"] == "m" and entry["job_id"] == "j1"
    assert entry["dead_at_ms"] == shown  # a time that is not finite: None
    assert main(["dead", "list"]) == 0
    assert main(["dead", "list", "--json"]) == 0


def test_dead_letters_with_odd_ids_are_listed_requeued_and_purged(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """Member names no producer makes: not UTF-8, terminal escapes, no body at all."""
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    _dead(rawq, keys, b"bin\xff\xfe", json.dumps(_message()), 1)
    _dead(rawq, keys, EVIL, json.dumps(_message()), 2)
    _dead(rawq, keys, "nobody", None, 3)
    _dead(rawq, keys, "deep", b"[" * 100_000, 4)
    entries = dead_list(qsettings)
    assert [e["message_id"] for e in entries] == ["bin\\xff\\xfe", EVIL, "nobody", "deep"]
    assert entries[0]["job_id"] == "j1" and entries[2] == {"message_id": "nobody", "dead_at_ms": 3}
    assert entries[3]["error"] == "undecodable message"
    assert main(["dead", "list"]) == 0
    _assert_clean(capsys.readouterr().out)
    # requeued: the EVIL-named and the deep one (as it is); left: the one without a body
    # and the one whose id is not UTF-8 (no producer makes one)
    assert dead_requeue(qsettings) == 2
    assert main(["dead", "requeue"]) == 0
    assert capsys.readouterr().out == "requeued 0 jobs\n"
    assert sorted(rawq.zrange(keys.dead(), 0, -1)) == [b"bin\xff\xfe", b"nobody"]
    assert main(["dead", "purge"]) == 0
    assert capsys.readouterr().out == "purged 2 jobs\n"
    assert rawq.zcard(keys.dead()) == 0 and rawq.hlen(keys.dead_msgs()) == 0


def test_a_deep_dead_letter_is_requeued_as_it_is(qsettings, rawq) -> None:  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    body = b"[" * 100_000
    _dead(rawq, keys, "deep", body)
    assert dead_requeue(qsettings, ["deep"]) == 1
    assert rawq.hget(keys.msgs(), "deep") == body and rawq.zcard(keys.dead()) == 0


# ------------------------------------------------------------------ 2. status / drain output
def test_status_survives_and_escapes_forged_health_and_counters(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """Counters that are not integers, worker ids and fields that are not UTF-8 or
    carry escapes: the status reads what it can, the table prints it escaped."""
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    now = int(time.time() * 1000)
    rawq.hset(keys.stats, mapping={"committed": "7", "bad": "x" + EVIL, "huge": "1e999", EVIL: "2"})
    for wid in ("w\r1", "w\x9b2", "w\udcff3"):  # the last: b"w\xff3", not UTF-8
        name = wid.encode("utf-8", "surrogateescape")
        rawq.zadd(keys.workers, {name: now})
        rawq.hset(keys.worker(wid).encode("utf-8", "surrogateescape"),
                  mapping={"processed": EVIL, b"\xff": b"\xfe", "host": "h"})  # fmt: skip
    for pid in ("p\r", "p\x1b[2J", "p\udcff"):
        rawq.sadd(keys.producers, pid.encode("utf-8", "surrogateescape"))
        rawq.zadd(keys.producer(pid).pending.encode("utf-8", "surrogateescape"), {"j": 1})
    status = queue_status(qsettings)
    assert status["counters"] == {"committed": 7, EVIL: 2}  # "bad" and "huge" left out
    # the ids that are not UTF-8 are shown escaped; their keys, named after that text, read empty
    assert sorted(w["id"] for w in status["workers"]) == ["w\r1", "w\x9b2"]
    assert status["pending"] == {"p\r": 1, "p\x1b[2J": 1}
    assert main(["status"]) == 0
    assert main(["status", "--watch", "0.1", "--count", "2"]) == 0
    assert main(["status", "--json"]) == 0
    out = capsys.readouterr().out
    _assert_clean(out)
    assert any(line.split() == ["counter:", "committed", "7"] for line in out.splitlines())


def test_drain_timeout_prints_forged_pending_ids_escaped(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    rawq.sadd(keys.producers, "victim")
    rawq.zadd(keys.producer("victim").pending, {EVIL: int(time.time() * 1000), "j\r2": 1})
    assert main(["drain", "--producer", "victim", "--timeout", "0.3"]) == 1
    assert main(["drain", "--all", "--timeout", "0.3"]) == 1
    captured = capsys.readouterr()
    assert "timed out" in captured.err
    _assert_clean(captured.out + captured.err)


def test_drain_prints_forged_failures_escaped(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    rawq.sadd(keys.producers, "victim")
    failed = keys.producer("victim").failed
    rawq.hset(failed, "j\r1", json.dumps({"job_id": "j\r1", "record_ids": [EVIL], "error": EVIL}))
    rawq.hset(failed, "j\x9b2", json.dumps({"job_id": "j\x9b2", "record_ids": [], "error": "\x9b31m"}))
    assert main(["drain", "--all", "--timeout", "5"]) == 0
    assert main(["drain", "--producer", "victim", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("failed 2") == 2
    _assert_clean(out)


def test_drain_survives_a_failure_record_of_wrong_types(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    rawq.sadd(keys.producers, "victim")
    rawq.hset(keys.producer("victim").failed, "j1", json.dumps({"job_id": 5, "record_ids": 7, "error": ["x"]}))
    rawq.hset(keys.producer("victim").failed, "j2", b"\xff not json")
    rawq.hset(keys.producer("victim").failed, "j3", "[1, 2]")
    assert main(["drain", "--all", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "failed 3" in out
    for job in ("j1", "j2", "j3"):
        assert f"failed {job}: failed (its failure record is unreadable)" in out


# ------------------------------------------------------------------ 3. sweep, delete_versioned
BAD_LIMITS = [10**30, "x", -1, 0, True, False, 1.5, None, 10_001, "500", [500]]


@pytest.mark.parametrize("limit", BAD_LIMITS)
def test_sweep_refuses_a_bad_limit_and_deletes_nothing(store, limit: Any) -> None:
    store.save([{"id": "r", "content": "x", "embedding": vec(1), "exp": 1}])  # due long ago
    with pytest.raises(ValidationError, match=r"limit must be an integer from 1 to 10000"):
        store.sweep(limit=limit)
    with pytest.raises(ValidationError, match=r"limit must be an integer from 1 to 10000"):
        asyncio.run(store.asweep(limit=limit))
    assert store.get_record("r") is not None  # nothing swept
    assert store.sweep(limit=1)["expired"] == 1


@pytest.mark.parametrize(
    "versions, needle",
    [("ab", r"versions must be a list of \(id, integer\) pairs"),
     (b"ab", r"versions must be a list"), (bytearray(b"ab"), r"versions\[0\] must be an \(id, integer\) pair"),
     ({"a": 1}, r"versions must be a list"), (5, r"versions must be a list"),
     (None, r"versions must be a list"), (iter([("a", 1)]), r"versions must be a list"),
     (["ab"], r"versions\[0\] must be an \(id, integer\) pair"),
     ([("a", 1), ("b",)], r"versions\[1\] must be an \(id, integer\) pair"),
     ([("a", "1")], r"versions\[0\] must be an integer from 0 to"),
     ([("a", True)], r"versions\[0\] must be an integer from 0 to"),
     ([("a", -1)], r"versions\[0\] must be an integer from 0 to"),
     ([("a", 10**30)], r"versions\[0\] must be an integer from 0 to"),
     ([(5, 1)], r"versions\[0\]\.id must be a non-empty string")],
)  # fmt: skip
def test_delete_versioned_refuses_anything_but_a_list_of_pairs(store, versions: Any, needle: str) -> None:
    store.save([mk("a", seed=1), mk("b", seed=2)])
    with pytest.raises(ValidationError, match=needle):
        store.delete_versioned(versions)
    if not isinstance(versions, type(iter([]))):
        with pytest.raises(ValidationError, match=needle):
            asyncio.run(store.adelete_versioned(versions))
    assert store.count() == 2  # nothing deleted
    assert store.delete_versioned([("a", MAX_STAMP)]) == 1  # a good call still works


# ------------------------------------------------------------------ 4. producer arguments
@pytest.fixture
def queue(qsettings):  # noqa: F811
    with MemoryQueue(qsettings, producer_id="p") as q:
        yield q


@pytest.mark.parametrize(
    "job_id, item_id, needle",
    [(None, None, "job_id"), (5, "r", "job_id"), (b"j", "r", "job_id"), (["j"], "r", "job_id"),
     ("", "r", "job_id"), ("j" * 129, "r", "job_id"), ("a b", "r", "job_id"), ("j\n", "r", "job_id"),
     ("j", None, "item_id"), ("j", 5, "item_id"), ("j", b"r", "item_id"), ("j", "", "item_id"),
     ("j", ["r"], "item_id"), ("j", "r" * 100_000, "item_id")],
)  # fmt: skip
def test_job_result_names_a_bad_argument(queue, job_id: Any, item_id: Any, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        queue.job_result(job_id, item_id)
    assert queue.job_result("j", "r") is None


def test_job_result_error_names_the_limit(queue) -> None:
    with pytest.raises(ValidationError, match=r"item_id must be a record id: .* at most 256 characters"):
        queue.job_result("j", "r" * 100_000)
    with pytest.raises(ValidationError, match=r"job_id must be 1 to 128 characters"):
        queue.job_result(None, None)


@pytest.mark.parametrize("value", [True, False, 0, -1, "5", 1.5, None, [5]])
def test_max_items_is_an_integer_of_at_least_one(qsettings, value: Any) -> None:  # noqa: F811
    with pytest.raises(ValidationError, match=r"max_items must be an integer >= 1"):
        MemoryQueue(qsettings, producer_id="p", max_items=value)


@pytest.mark.parametrize(
    "items, needle",
    [([{"content": "no id"}], r"items\[0\]\.id must be a non-empty string"),
     ([{"id": None, "content": "x"}], r"items\[0\]\.id must be a non-empty string"),
     ([{"id": "a", "content": "x"}, {"id": "a", "content": "y"}], r"items\[1\]\.id appears more than once"),
     ([{"id": "a", "content": "x", "private": "false"}], r"items\[0\]\.private must be a boolean"),
     ([{"id": "a", "content": "x", "private": None}], r"items\[0\]\.private must be a boolean"),
     ([{"id": "a", "content": "x", "private": 1}], r"items\[0\]\.private must be a boolean"),
     ([{"id": "a", "content": "x"}] * 3, r"items has 3 entries, the limit per job is 2")],
)  # fmt: skip
def test_enqueue_encode_items_refuses_and_enqueues_nothing(qsettings, rawq, items: Any, needle: str) -> None:  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p", max_items=2) as q:
        with pytest.raises(ValidationError, match=needle):
            q.enqueue_encode_items(items)
        with pytest.raises(ValidationError, match=needle):
            asyncio.run(q.aenqueue_encode_items(items))
        assert q.pending() == [] and rawq.llen(keys.q()) == 0


def test_enqueue_encode_items_takes_built_items(queue) -> None:
    items = embed_items(["a", {"text": "b", "private": True, "source": "s"}], 10)
    job = queue.enqueue_encode_items(items)
    assert queue.pending() == [job]


def test_enqueue_encode_items_refuses_a_numpy_boolean_and_enqueues_nothing(queue) -> None:
    """embed_items makes ``private`` a real bool; a numpy one given here is refused by
    the item check, naming the field (it would not encode as JSON)."""
    items = embed_items([{"text": "b", "private": True, "source": "s"}], 10)
    items[0]["private"] = np.bool_(True)
    with pytest.raises(ValidationError, match=r"items\[0\]\.private must be a boolean"):
        queue.enqueue_encode_items(items)
    assert queue.pending() == []


def test_job_result_reads_a_forged_result_without_a_decode_error(queue, rawq) -> None:  # noqa: F811
    from memworker.keys import result_key

    rawq.hset(result_key(queue.keys.namespace, "j"), mapping={"r": b"\xff\xfe", "s": "kept"})
    assert queue.job_result("j", "r") == "\\xff\\xfe"
    assert queue.job_result("j", "s") == "kept"


def test_enqueue_encode_items_docstring_says_an_item_needs_its_id() -> None:
    doc = inspect.getdoc(MemoryQueue.enqueue_encode_items) or ""
    assert "id" in doc and "private" in doc and "ValidationError" in doc


# ------------------------------------------------------------------ 5. enqueue_encode and None
NONE_IS_DEFAULT = ["id", "scope", "categories", "metadata", "source", "created_at", "flow"]
NONE_REFUSED = ["importance", "private"]


@pytest.mark.parametrize("field", NONE_IS_DEFAULT)
def test_enqueue_encode_none_is_the_default_for(queue, field: str) -> None:
    (rid,) = queue.enqueue_encode([{"text": "t", field: None}])
    assert isinstance(rid, str) and rid


@pytest.mark.parametrize("field", NONE_REFUSED)
def test_enqueue_encode_none_is_refused_for(queue, field: str) -> None:
    with pytest.raises(ValidationError, match=rf"items\[0\]\.{field}"):
        queue.enqueue_encode([{"text": "t", field: None}])
    assert queue.pending() == []


def test_enqueue_encode_docstring_names_the_fields_that_refuse_none() -> None:
    doc = " ".join((inspect.getdoc(MemoryQueue.enqueue_encode) or "").split())
    assert "None" in doc
    for field in NONE_REFUSED:
        assert f"``{field}``" in doc.split("default for every field but", 1)[1]

