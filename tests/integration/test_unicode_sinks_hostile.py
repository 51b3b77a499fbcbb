"""Hostile Unicode and bytes in every string a user or an LLM controls, through every
write path and into every sink (a hostile review of 2026-12-06, helper-76).

Inputs: CrewAI record fields (content, scope, categories, metadata keys and values at any
depth, source, ids) through ``ValkeyStore.save`` and ``MemoryQueue`` + a real in-process
worker; LangGraph namespace labels, keys and values (``QueuedStore``); CLI arguments
(``retention``, ``drain --producer``, ``dead requeue/purge``) given as raw argv bytes.

The rules checked (README "Semantics worth knowing", docs/langgraph.md "Limits",
docs/guarantees.md 4-6): a value that cannot be stored (a lone surrogate, a control
character in a new scope or id) raises a ``ValidationError`` naming the field and nothing
of the batch is written; a legal value comes back exactly; NFC and NFD spellings of one
word are two scopes / sources, never merged; worker log lines and ``memworker dead list``
keep one record to one line with control characters escaped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import unicodedata
from typing import Any

import numpy as np
import pytest

from memworker import worker as worker_mod
from memworker.errors import MemworkerError, ValidationError
from memworker.queue import admin
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings

DIM = 8
LONE = ["\ud800", "\udfff", "\udc00\ud800"]  # high alone, low alone, a pair the wrong way round

# Legal but hostile: control characters where the docs allow them (content, categories,
# metadata, source), line separators, BOM, bidi overrides, astral planes, a long run of
# combining marks, NFD spelling.
HOSTILE_TEXT = (
    "a\x00b\r\nFORGED line\x1b[31mred\x1b[0m\u2028\u2029\ufeff\u202egnp.exe\U0001f642\U00010000"
    + "e" + "\u0301" * 500 + "cafe\u0301"
)
HOSTILE_SCOPE = "/\ufeffbom/\u202ertl\u2028/\U0001f642/cafe\u0301"  # no C0/C1: a legal new scope


def vec(i: int) -> list[float]:
    v = [0.1] * DIM
    v[i % DIM] = 1.0
    return v


def rec(rid: str, **over: Any) -> dict[str, Any]:
    out = {"id": rid, "content": "text", "scope": "/a", "categories": ["c"],
           "metadata": {"k": 1}, "embedding": vec(len(rid)), "source": "s"}  # fmt: skip
    out.update(over)
    return out


def settings_of(server, namespace: str) -> Settings:
    return Settings.from_url(server.url, namespace=namespace, search_mode="module" if server.module else "exact")


def keys_of(raw, namespace: str) -> set[bytes]:
    return set(raw.scan_iter(match=f"*{namespace}*", count=1000))


def queue_state(raw, keys: QueueKeys) -> tuple[int, int, set[bytes]]:
    """Queue length, message-hash size, and every producer's pending set (by key)."""
    pend = {k for k in keys_of(raw, keys.namespace) if b"pending" in k and raw.type(k) == b"zset" and raw.zcard(k)}
    return raw.llen(keys.q()), raw.hlen(keys.msgs()), pend


class QuotingEmbedder:
    """Deterministic vectors; a text holding ``FAIL`` raises an error quoting it raw
    (as a careless embedder might), so the worker's failure paths see hostile text."""

    dimension = DIM

    def encode(self, texts):
        out = []
        for t in texts:
            if "FAIL" in t:
                raise OSError("cannot embed " + t)
            seed = int.from_bytes(t.encode("utf-8")[-8:].ljust(8, b"\0"), "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


@pytest.fixture
def embedder():
    worker_mod.set_embedder_factory(QuotingEmbedder)
    yield
    worker_mod.set_embedder_factory(None)


# ----------------------------------------------------------------------------- refusals
LONE_FIELDS: list[tuple[str, Any, str]] = []
for _i, _s in enumerate(LONE):
    LONE_FIELDS += [
        (f"content{_i}", {"content": "x" + _s}, "content"),
        (f"scope{_i}", {"scope": "/a" + _s}, "scope"),
        (f"category{_i}", {"categories": ["ok", "c" + _s]}, "categories"),
        (f"metadata key{_i}", {"metadata": {"k" + _s: 1}}, "metadata"),
        (f"metadata deep value{_i}", {"metadata": {"k": [{"x": {"y": ["ok", _s]}}]}}, "metadata"),
        (f"metadata deep key{_i}", {"metadata": {"k": [{"x": {_s: 1}}]}}, "metadata"),
        (f"source{_i}", {"source": "s" + _s}, "source"),
        (f"id{_i}", {"id": "r" + _s}, "id"),
    ]
CONTROL_FIELDS = [
    ("scope NUL", {"scope": "/a\x00b"}, "scope"),
    ("scope CRLF", {"scope": "/a\r\nb"}, "scope"),
    ("scope ANSI", {"scope": "/a\x1b[31m"}, "scope"),
    ("scope C1 CSI", {"scope": "/a\x9b2J"}, "scope"),
    ("id NUL", {"id": "r\x00"}, "id"),
    ("id CRLF", {"id": "r\r\nFORGED"}, "id"),
    ("id ANSI", {"id": "r\x1b[2J"}, "id"),
]  # fmt: skip
BAD_FIELDS = LONE_FIELDS + CONTROL_FIELDS


@pytest.mark.parametrize("over,field", [(o, f) for _, o, f in BAD_FIELDS], ids=[i for i, _, _ in BAD_FIELDS])
def test_store_save_refuses_a_bad_string_naming_the_field_and_writes_nothing(store, raw, namespace, over, field):
    store.save([rec("seed")])
    before = keys_of(raw, namespace)
    with pytest.raises(MemworkerError) as info:
        store.save([rec("good"), rec("bad", **over), rec("after")])
    assert isinstance(info.value, ValidationError), repr(info.value)
    assert f"records[1].{field}" in str(info.value)
    assert keys_of(raw, namespace) == before
    assert store.get_record("good") is None and store.count() == 1


@pytest.mark.parametrize("over,field", [(o, f) for _, o, f in BAD_FIELDS], ids=[i for i, _, _ in BAD_FIELDS])
def test_enqueue_refuses_a_bad_string_naming_the_field_and_enqueues_nothing(server, raw, namespace, over, field):
    settings = settings_of(server, namespace)
    keys = QueueKeys(namespace)
    mapped = {("content" if k == "content" else k): v for k, v in over.items()}
    if "content" in mapped:
        mapped["text"] = mapped.pop("content")
    item = {"text": "t", "scope": "/a", "categories": ["c"], "metadata": {"k": 1}, "importance": 0.5, "source": "s"}
    with MemoryQueue(settings, producer_id="p") as q:
        q.enqueue_encode([dict(item, text="first")])
        before = queue_state(raw, keys)
        for call in (lambda: q.enqueue_encode([dict(item, text="good"), {**item, **mapped}]),
                     lambda: q.enqueue_save([rec("good"), rec("bad", **over)])):  # fmt: skip
            with pytest.raises(MemworkerError) as info:
                call()
            assert isinstance(info.value, ValidationError), repr(info.value)
            assert f"[1].{field}" in str(info.value), str(info.value)
            assert queue_state(raw, keys) == before


# ----------------------------------------------------------------------------- round trips
def hostile_record(rid: str, scope: str = HOSTILE_SCOPE) -> dict[str, Any]:
    return rec(
        rid, content=HOSTILE_TEXT, scope=scope,
        categories=["\x00nul", "cr\r\nlf", "\x1b[31m", "\u2028", "\ufeffbom", "\U0001f642", "cafe\u0301"],
        metadata={"\x00k\r\n": {"\u202e": ["\x1b[2J", "\U0001f642", "e" + "\u0301" * 300]}, "\ufeff": "\u2029"},
        source="src\r\n\x00\x1b[0m\u202e\U0001f642",
    )  # fmt: skip


def assert_same(got, want: dict[str, Any]) -> None:
    assert got is not None
    assert got.content == want["content"]
    assert got.scope == want["scope"]
    assert list(got.categories) == want["categories"]
    assert got.metadata == want["metadata"]
    assert got.source == want["source"]


def test_legal_hostile_strings_round_trip_exactly_through_the_store(store) -> None:
    want = hostile_record("h1")
    store.save([want])
    assert_same(store.get_record("h1"), want)
    hits = store.search(vec(2), scope_prefix=HOSTILE_SCOPE, categories=["cr\r\nlf"],
                        metadata_filter={"\ufeff": "\u2029"}, source=want["source"], limit=5)  # fmt: skip
    assert [r.id for r, _ in hits] == ["h1"]
    assert set(store.list_categories(HOSTILE_SCOPE)) >= set(want["categories"])
    parent = HOSTILE_SCOPE.rsplit("/", 1)[0]
    assert HOSTILE_SCOPE in store.list_scopes(parent)


def test_legal_hostile_strings_round_trip_exactly_through_the_queue_and_a_worker(server, namespace, store, embedder):
    settings = settings_of(server, namespace)
    item = {"id": "w1", "text": HOSTILE_TEXT, "scope": HOSTILE_SCOPE, "importance": 0.5,
            "categories": hostile_record("x")["categories"], "metadata": hostile_record("x")["metadata"],
            "source": hostile_record("x")["source"], "flow": {"consolidation_threshold": 1.0}}  # fmt: skip
    with MemoryQueue(settings, producer_id="p") as q:
        q.enqueue_encode([item])
        q.enqueue_save([hostile_record("w2")])
        with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100, max_retries=0):
            report = q.drain(timeout=60)
    assert report.failed == [] and report.committed == 2
    want = hostile_record("w1")
    assert_same(store.get_record("w1"), want)
    assert_same(store.get_record("w2"), hostile_record("w2"))


# ----------------------------------------------------------------------------- NFC / NFD
def test_nfc_and_nfd_scopes_and_sources_are_never_merged(store) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "/caf\u00e9"), unicodedata.normalize("NFD", "/caf\u00e9")
    src_c, src_d = unicodedata.normalize("NFC", "Jos\u00e9"), unicodedata.normalize("NFD", "Jos\u00e9")
    assert nfc != nfd and src_c != src_d
    store.save([rec("secret", scope=nfc, source=src_c, private=True), rec("pub", scope=nfd, source=src_d)])
    assert store.count(nfc) == 1 and store.count(nfd) == 1
    assert [r.id for r in store.list_records(nfd)] == ["pub"]
    assert [r.id for r, _ in store.search(vec(6), scope_prefix=nfd, limit=10, include_private=True)] == ["pub"]
    # the NFD spelling of the private record's source is someone else: it sees nothing private
    seen = store.search(vec(6), limit=10, include_private=False, viewer=src_d)
    assert [r.id for r, _ in seen] == ["pub"]
    seen = store.search(vec(6), limit=10, include_private=False, viewer=src_c)
    assert sorted(r.id for r, _ in seen) == ["pub", "secret"]
    assert sorted(store.list_scopes("/")) == sorted([nfc, nfd])
    store.reset(nfd)
    assert store.get_record("secret") is not None and store.get_record("pub") is None


# ----------------------------------------------------------------------------- reads by id
READS_BY_ID = {
    "get_record": lambda st, i: st.get_record(i),
    "get_records": lambda st, i: st.get_records([i]),
    "delete": lambda st, i: st.delete(record_ids=[i]),
    "touch_records": lambda st, i: st.touch_records([i]),
}


def by_id_outcome(call) -> str | None:
    """None when a read by a bad id found nothing or was refused as input naming the
    ids; else what went wrong."""
    try:
        out = call()
    except MemworkerError as exc:
        if isinstance(exc, ValidationError) and "id" in str(exc):
            return None
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the test names every call
        return f"not a memworker error: {type(exc).__name__}: {exc}"
    return None if out in (None, [None], 0) else f"returned {out!r}"


def test_reads_and_deletes_by_an_id_that_is_not_unicode_text_find_nothing_or_are_refused_as_input(store) -> None:
    """No record can hold such an id (saves refuse it): a read or delete by it finds
    nothing, or is refused as bad input naming the ids, as a lone surrogate in a scope,
    source or viewer is. It is not a server error ("Valkey error: utf-8" is the client's
    UnicodeEncodeError, relabelled and without the argument's name)."""
    store.save([rec("r1")])
    wrong = {}
    for lone in LONE:
        for name, call in READS_BY_ID.items():
            outcome = by_id_outcome(lambda: call(store, "r" + lone))
            if outcome:
                wrong[f"{name}({'r' + lone!r})"] = outcome
    assert wrong == {}
    assert store.count() == 1 and store.get_record("r1") is not None


@pytest.mark.parametrize("call", ["requeue", "purge"])
def test_dead_letter_admin_with_an_id_that_is_not_unicode_is_refused_as_input(plain_server, namespace, call) -> None:
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    fn = admin.dead_requeue if call == "requeue" else admin.dead_purge
    try:
        out = fn(settings, ["job\udcff"])
    except MemworkerError as exc:
        assert isinstance(exc, ValidationError), f"{type(exc).__name__}: {exc}"
        assert "message_ids" in str(exc), str(exc)
    else:
        assert out == 0


# ----------------------------------------------------------------------------- CLI
def cli(url: str, namespace: str, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    exe = os.path.join(os.path.dirname(sys.executable), "memworker")
    return subprocess.run([exe, "--url", url, "--namespace", namespace, *args], capture_output=True, timeout=120)


def one_line_each(out: bytes) -> None:
    assert b"\x1b" not in out and b"\r" not in out and b"\x00" not in out
    assert b"\nFORGED" not in out and not out.startswith(b"FORGED")
    text = out.decode("utf-8")  # never a lone surrogate written out as bytes
    for ch in "\u2028\u2029\u202e\ufeff":
        assert ch not in text


def test_cli_retention_keeps_nfc_and_nfd_apart_and_escapes_what_it_prints(plain_server, namespace) -> None:
    url = plain_server.url
    nfc, nfd = "/caf\u00e9", "/cafe\u0301"
    assert cli(url, namespace, "retention", "set", nfc, "--days", "3").returncode == 0
    assert cli(url, namespace, "retention", "set", nfd, "--days", "5").returncode == 0
    assert cli(url, namespace, "retention", "set", "/x\u2028\u202e\ufeff", "--days", "2").returncode == 0
    listed = cli(url, namespace, "retention", "list")
    assert listed.returncode == 0
    one_line_each(listed.stdout)
    lines = listed.stdout.decode().splitlines()
    assert len(lines) == 3, lines
    assert f"{nfc}  3 day(s)" in lines and f"{nfd}  5 day(s)" in lines
    for bad in (b"/a\xff", b"/a\xed\xa0\x80", "/a\r\nFORGED", "/a\x1b[2J", "/a\x00b"):
        try:
            done = cli(url, namespace, "retention", "set", bad, "--days", "1")
        except ValueError:  # embedded NUL: the OS cannot pass it as argv
            continue
        assert done.returncode == 2, done
        assert b"scope" in done.stderr and b"Traceback" not in done.stderr
        one_line_each(done.stderr)
    assert len(cli(url, namespace, "retention", "list").stdout.decode().splitlines()) == 3


def test_cli_drain_and_dead_with_hostile_argv_answer_with_a_usage_or_input_error(plain_server, namespace) -> None:
    url = plain_server.url
    for producer in (b"p\xff", "p\r\nFORGED\x1b[31m", "p\u202e"):
        done = cli(url, namespace, "drain", "--producer", producer, "--timeout", "1")
        assert done.returncode in (1, 2) and b"producer" in done.stderr and b"Traceback" not in done.stderr
        one_line_each(done.stderr)
    for sub in ("requeue", "purge"):
        done = cli(url, namespace, "dead", sub, b"job\xff")
        assert b"Traceback" not in done.stderr
        one_line_each(done.stderr + done.stdout)
        # an id no job has: nothing to do, or refused as input; never a server error
        assert b"Valkey error" not in done.stderr, done.stderr
        assert done.returncode == 0 or b"ValidationError" in done.stderr, done


# ----------------------------------------------------------------------------- worker logs, dead list
def test_worker_logs_and_dead_list_escape_an_error_that_quotes_hostile_text(server, namespace, embedder, caplog):
    """An embedder's error quoting a hostile text: the job is dead-lettered; every log
    record's message is one line without control characters, the text never appears,
    and ``memworker dead list`` prints one line per dead job, escaped."""
    settings = settings_of(server, namespace)
    caplog.set_level(logging.DEBUG)
    text = "FAIL\r\nFORGED worker line\x1b[31m\u2028\u202eSECRETWORD\x00"
    with MemoryQueue(settings, producer_id="p") as q:
        job, ids = q.enqueue_encode_job([{"text": text, "scope": "/s", "categories": ["c"], "importance": 0.5,
                                          "flow": {"consolidation_threshold": 1.0}}])  # fmt: skip
        with worker_mod.running_worker(settings, threads=1, worker_timeout_ms=100, max_retries=1,
                                       min_backoff_ms=10, max_backoff_ms=20):  # fmt: skip
            report = q.drain(timeout=60, job_ids=[job])
    assert [f.job_id for f in report.failed] == [job]
    records = caplog.records
    assert any(job in r.getMessage() for r in records)
    for r in records:
        msg = r.getMessage()
        assert "\n" not in msg and "\r" not in msg and "\x1b" not in msg and "\u2028" not in msg, msg[:300]
        assert "SECRETWORD" not in msg and "FORGED" not in msg, msg[:300]
        formatted = logging.Formatter("%(message)s").format(r)
        assert "SECRETWORD" not in formatted and "\x1b" not in formatted and "\nFORGED" not in formatted
    listed = cli(server.url, namespace, "dead", "list")
    assert listed.returncode == 0, listed
    one_line_each(listed.stdout)
    rows = listed.stdout.decode().splitlines()
    assert len(rows) == 1 and job in rows[0], rows
    as_json = cli(server.url, namespace, "dead", "list", "--json")
    assert as_json.returncode == 0
    assert [e["job_id"] for e in json.loads(as_json.stdout)] == [job]


# ----------------------------------------------------------------------------- LangGraph
@pytest.fixture
def lg_store(server, namespace, embedder):
    pytest.importorskip("langgraph.store.base")
    from memworker.langgraph import QueuedStore

    settings = settings_of(server, namespace)
    with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100, max_retries=0):
        store = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
        yield store
        store.store.reset()
        store.close()


def test_langgraph_refuses_lone_surrogates_naming_the_part_and_enqueues_nothing(lg_store, raw, namespace) -> None:
    from langgraph.store.base import PutOp

    keys = QueueKeys(namespace)
    lg_store.put(("ok",), "seed", {"text": "apple"})
    lg_store.get(("ok",), "seed")  # drained
    before = queue_state(raw, keys)
    for s in LONE:
        for ops, needle in (
            ([PutOp(("ok",), "good", {"text": "x"}), PutOp(("a" + s,), "k", {"text": "x"})], "namespace label"),
            ([PutOp(("ok",), "good", {"text": "x"}), PutOp(("a",), "k" + s, {"text": "x"})], "key"),
            ([PutOp(("ok",), "good", {"text": "x"}), PutOp(("a",), "k", {"text": "x" + s})], "'k'"),
            ([PutOp(("ok",), "good", {"text": "x"}), PutOp(("a",), "k", {"m": [{"z": s}]})], "'k'"),
            ([PutOp(("ok",), "good", {"text": "x"}), PutOp(("a",), "k", {"m": [{s: 1}]})], "'k'"),
        ):
            with pytest.raises(ValidationError) as info:
                lg_store.batch(ops)
            assert needle in str(info.value), str(info.value)
            assert queue_state(raw, keys) == before
    assert lg_store.get(("ok",), "good") is None


def test_langgraph_hostile_legal_labels_keys_and_values_round_trip_and_nfc_nfd_stay_apart(lg_store) -> None:
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    value = {"text": HOSTILE_TEXT, "m": {"\x00\r\n": ["\x1b[2J", "\U0001f642"], "\ufeff": "\u2029"}}
    lg_store.put((nfc, "\u202e\u2028"), "k\x00\r\n\x1b[31m", value)
    lg_store.put((nfd, "\u202e\u2028"), "k\x00\r\n\x1b[31m", {"text": "other"})
    lg_store.put((nfc,), nfc, {"text": "c"})
    lg_store.put((nfc,), nfd, {"text": "d"})
    got = lg_store.get((nfc, "\u202e\u2028"), "k\x00\r\n\x1b[31m")
    assert got is not None and got.value == value and got.key == "k\x00\r\n\x1b[31m"
    assert got.namespace == (nfc, "\u202e\u2028")
    assert lg_store.get((nfd, "\u202e\u2028"), "k\x00\r\n\x1b[31m").value == {"text": "other"}
    assert lg_store.get((nfc,), nfc).value == {"text": "c"} and lg_store.get((nfc,), nfd).value == {"text": "d"}
    assert [i.key for i in lg_store.search((nfd,))] == ["k\x00\r\n\x1b[31m"]
    assert sorted(lg_store.list_namespaces(prefix=(nfd,))) == [(nfd, "\u202e\u2028")]
    for s in LONE:  # a read of a key no put can write: not found, or refused naming the key
        try:
            assert lg_store.get((nfc,), "k" + s) is None
        except MemworkerError as exc:
            assert isinstance(exc, ValidationError) and "key" in str(exc), f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- CrewAI QueuedMemory
@pytest.fixture
def memory(server, namespace):
    pytest.importorskip("crewai")
    from memworker.crewai import LocalEmbedder, QueuedMemory
    from memworker.crewai.testing import StandInLLM
    from memworker.store.store import ValkeyStore

    settings = settings_of(server, namespace)
    worker_mod.set_embedder_factory(None)
    with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100, max_retries=0):
        m = QueuedMemory(storage=ValkeyStore(settings), embedder=LocalEmbedder(), llm=StandInLLM(),
                         drain_timeout=60, consolidation_threshold=1.0)  # fmt: skip
        yield m
        m.reset_all()
        m.close()


CREW = dict(categories=["c"], importance=0.5, scope="/s")


def refusals(calls: dict[str, Any]) -> dict[str, str]:
    """Each call that did not raise a ValidationError, with what it did instead."""
    wrong = {}
    for name, call in calls.items():
        try:
            call()
        except ValidationError:
            continue
        except Exception as exc:  # noqa: BLE001 - reported per call
            wrong[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        else:
            wrong[name] = "accepted"
    return wrong


def test_queued_memory_keeps_hostile_text_and_refuses_lone_surrogates_in_writes_and_recalls(memory) -> None:
    """``recall`` checks its query (a non-string is a ValidationError), as QueuedStore's
    search checks that its query is valid unicode text: a lone surrogate must not reach
    the embedder's tokenizer and come back as its TypeError."""
    kept = memory.remember(HOSTILE_TEXT, source="src\r\n\u202e", metadata={"\x00": "\u2028"}, **CREW)
    got = memory.storage.get_record(kept.id)
    assert got.content == HOSTILE_TEXT and got.source == "src\r\n\u202e" and got.metadata == {"\x00": "\u2028"}
    calls = {}
    for lone in LONE:
        calls.update({
            f"remember content {lone!r}": lambda lone=lone: memory.remember("x" + lone, **CREW),
            f"remember source {lone!r}": lambda lone=lone: memory.remember("x", source="s" + lone, **CREW),
            f"remember metadata {lone!r}": lambda lone=lone: memory.remember("x", metadata={"k": [lone]}, **CREW),
            f"recall source {lone!r}": lambda lone=lone: memory.recall("q", source="s" + lone, depth="shallow"),
            f"recall query {lone!r}": lambda lone=lone: memory.recall("q" + lone, depth="shallow"),
        })  # fmt: skip
    assert refusals(calls) == {}
    assert memory.storage.count() == 1


def test_queued_memory_forget_and_update_by_an_id_that_is_not_unicode_are_not_server_errors(memory) -> None:
    kept = memory.remember("keep me", **CREW)
    wrong = {}
    for lone in LONE:
        for name, call in {
            "forget": lambda lone=lone: memory.forget(record_ids=["r" + lone]),
            "update": lambda lone=lone: memory.update("r" + lone, content="y"),
        }.items():
            try:
                call()
            except ValidationError:
                continue
            except Exception as exc:  # noqa: BLE001 - reported per call
                # CrewAI's update of an unknown id says so; a "Valkey error" is not that
                if "Valkey error" in str(exc) or not isinstance(exc, (MemworkerError, ValueError)):
                    wrong[f"{name} {lone!r}"] = f"{type(exc).__name__}: {exc}"
    assert wrong == {}
    assert memory.storage.get_record(kept.id) is not None


def test_a_hostile_namespace_is_a_config_error_quoted_on_one_line(plain_server) -> None:
    """Namespaces label metrics and key names: only a fixed alphabet is taken, and the
    refusal quotes the value escaped."""
    from memworker.errors import ConfigError

    for bad in ("ns\r\nFORGED", "ns\x1b[31m", "caf\u00e9", "ns\u202e", "ns\ud800", "ns\x00"):
        with pytest.raises(ConfigError) as info:
            Settings.from_url(plain_server.url, namespace=bad)
        assert "\n" not in str(info.value) and "\x1b" not in str(info.value) and "\x00" not in str(info.value)
        str(info.value).encode("utf-8")  # printable anywhere, no lone surrogate


# ----------------------------------------------------------------------------- ValkeyCache
def test_cache_refuses_lone_surrogates_in_keys_and_values_as_input_and_keeps_nfc_nfd_apart(server, namespace):
    """README: the store's (and the cache's) errors derive from MemworkerError; a key or
    value that cannot be UTF-8 is bad input, never a bare UnicodeEncodeError nor a
    "Valkey error"."""
    from memworker import ValkeyCache

    cache = ValkeyCache(server.url, namespace=namespace)
    try:
        cache.set("caf\u00e9", {"v": "nfc\x00\r\n\u2028"})
        cache.set("cafe\u0301", "nfd")
        assert cache.get("caf\u00e9") == {"v": "nfc\x00\r\n\u2028"} and cache.get("cafe\u0301") == "nfd"
        calls = {}
        for lone in LONE:
            calls.update({
                f"set value {lone!r}": lambda lone=lone: cache.set("k", {"v": ["x" + lone]}),
                f"set key {lone!r}": lambda lone=lone: cache.set("k" + lone, 1),
            })  # fmt: skip
        assert refusals(calls) == {}
        assert cache.get("k") is None
    finally:
        cache.delete("caf\u00e9")
        cache.delete("cafe\u0301")
        cache.close()
