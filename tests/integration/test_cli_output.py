"""What the memworker command prints of values a user, an LLM or an embedder chose:
escaped, one line each, so no escape sequence reaches the terminal and no line is forged."""

from __future__ import annotations

import pytest
from test_worker import _record, fake, qsettings, rawq, workers  # noqa: F401

from memworker.cli import main
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.store.store import ValkeyStore

EVIL = "EVIL\x1b[2J\x1b]0;owned\x07\nFAKE: job 123 committed OK\x9b31m"


@pytest.fixture
def quoting(fake, monkeypatch):  # noqa: F811
    """The embedder fails on texts starting with EVIL, quoting them raw (as many API
    clients' errors do)."""
    encode = fake.encode

    def failing(texts):
        for t in texts:
            if t.startswith("EVIL"):
                raise ValueError(f"cannot embed: {t}")
        return encode(texts)

    monkeypatch.setattr(fake, "encode", failing)
    return fake


def _assert_clean(out: str) -> None:
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\nFAKE:" not in out


def test_drain_and_dead_list_print_error_texts_escaped(qsettings, quoting, workers, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    workers(qsettings, max_retries=0)
    with MemoryQueue(qsettings, producer_id="victim") as q:
        job = q.enqueue_encode_job([EVIL])[0]
        assert main(["drain", "--producer", "victim", "--timeout", "30"]) == 0
        out = capsys.readouterr().out
        assert f"failed {job}" in out and "cannot embed" in out
        _assert_clean(out)
        assert main(["dead", "list"]) == 0
        out = capsys.readouterr().out
        assert job in out
        _assert_clean(out)
        assert [f.job_id for f in q.drain(timeout=30).failed] == [job]


def test_dead_list_prints_a_forged_producer_escaped(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """A dead letter written by anything with access to the broker (its producer field
    is not checked when it is listed)."""
    import json

    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    message = {
        "message_id": "m1", "queue_name": "default", "actor_name": "save_records",
        "args": [{"job_id": "j1", "producer": EVIL, "records": []}], "kwargs": {}, "options": {},
    }
    rawq.hset(keys.dead_msgs(), "m1", json.dumps(message))
    rawq.zadd(keys.dead(), {"m1": 1})
    assert main(["dead", "list"]) == 0
    _assert_clean(capsys.readouterr().out)


def test_retention_list_prints_scopes_escaped(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """A policy written by an older release, whose scope check let C1 controls through."""
    from memworker.keys import Keys

    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    with ValkeyStore(qsettings) as store:
        store.set_retention("/ok", 3)
    rawq.hset(Keys(qsettings.namespace).retention, "/x\x9b31m\x1b[2J", "2")
    assert main(["retention", "list"]) == 0
    out = capsys.readouterr().out
    assert "/ok  3 day(s)" in out
    _assert_clean(out)


def test_status_prints_producer_worker_and_counter_names_escaped(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """Producer ids, worker ids and counter names read from Valkey (written by anything
    with access to it, or an older release) reach the status table escaped."""
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    evil_producer, evil_worker = "p" + EVIL, "w" + EVIL
    rawq.sadd(keys.producers, evil_producer)
    rawq.zadd(keys.producer(evil_producer).pending, {"j1": 1})
    import time

    rawq.zadd(keys.workers, {evil_worker: int(time.time() * 1000)})
    rawq.hset(keys.worker(evil_worker), mapping={"processed": EVIL, "gc_frozen": "1"})
    rawq.hset(keys.stats, EVIL, "1")
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "pending: " in out and "worker: " in out
    _assert_clean(out)


def test_drain_all_prints_forged_job_ids_escaped(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """A failure record whose job id (its hash field) was forged in Valkey."""
    import json

    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    rawq.sadd(keys.producers, "victim")
    forged = {"job_id": EVIL, "record_ids": [EVIL], "error": "boom"}
    rawq.hset(keys.producer("victim").failed, EVIL, json.dumps(forged))
    assert main(["drain", "--all", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "failed " in out
    _assert_clean(out)


ODD_DEAD_BODIES = [
    b"[1, 2]", b"5", b'"text"', b"null", b"\xff\xfe not json",
    b'{"args": {"a": 1}}', b'{"args": [5]}', b'{"args": []}', b'{"args": "x"}',
    b'{"args": [{"items": 5, "producer": 7}]}',
    b'{"args": [{"items": [5, {"id": 3}, {"id": "ok"}]}], "options": "x"}',
    b'{"message_id": 5, "actor_name": [1], "options": {"traceback": 9}}',
]


def test_dead_list_lists_entries_of_any_json_shape(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """Dead letters whose bodies were forged or corrupted: listed (what can be read
    of them), never a crash of the whole listing."""
    from memworker.queue.admin import dead_list

    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    keys = QueueKeys(qsettings.namespace)
    for n, body in enumerate(ODD_DEAD_BODIES):
        rawq.hset(keys.dead_msgs(), f"m{n}", body)
        rawq.zadd(keys.dead(), {f"m{n}": n + 1})
    entries = dead_list(qsettings)
    assert [e["message_id"] for e in entries] == [f"m{n}" for n in range(len(ODD_DEAD_BODIES))]
    for entry in entries:
        for key in ("job_id", "actor", "producer", "traceback"):
            assert entry.get(key) is None or isinstance(entry[key], str), entry
        assert all(isinstance(i, str) for i in entry.get("record_ids") or []), entry
    assert entries[10]["record_ids"] == ["ok"]
    assert main(["dead", "list"]) == 0
    assert main(["dead", "list", "--json"]) == 0
    _assert_clean(capsys.readouterr().out)
