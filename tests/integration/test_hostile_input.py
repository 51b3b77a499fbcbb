"""Hostile input (issue 17, points 5-8): nesting and scope depth, flow settings, string
booleans, crafted job ids, and memory contents in worker logs.

Each entry point refuses bad input with a ``ValidationError`` naming the field and the
limit, before anything is written; a crafted payload that reaches a worker anyway is
dead-lettered at once (never retried as if transient); and no memory text, metadata
value or embedding reaches a log line of a worker that fails, retries and dead-letters
a job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import uuid
from typing import Any

import numpy as np
import pytest

from memworker import worker as worker_mod
from memworker.worker import logs as worker_logs
from memworker.store.codec import to_row as encode_record
from memworker.store.validate import (
    MAX_METADATA_DEPTH,
    MAX_SCOPE_DEPTH,
    check_flow,
    normalize_scope,
    normalize_scope_prefix,
)
from memworker.errors import ValidationError
from memworker.queue.jobs import JobPayloadError, QueueKeys, embed_items
from memworker.queue.payload import job_identity, parse_job
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings

DIM = 8


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """Metadata ``depth`` objects deep (the metadata object itself is level 1), built
    without recursion."""
    value: Any = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def nested_json(depth: int) -> str:
    """The JSON of ``nested(depth)``, as text (json.dumps would recurse)."""
    return '{"k":' * depth + "1" + "}" * depth


def record(rid: str = "r1", **over: Any) -> dict[str, Any]:
    rec = {"id": rid, "content": "text", "scope": "/a", "embedding": [1.0] + [0.5] * (DIM - 1)}
    rec.update(over)
    return rec


def refused_on_every_write_path(url: str, namespace: str, store, field: str, value: Any, needle: str) -> None:
    """``field=value`` is refused, naming the field, by ``store.save``, ``enqueue_encode``
    and ``enqueue_save``, and nothing is written or enqueued."""
    with pytest.raises(ValidationError, match=rf"records\[0\]\.{field} {needle}"):
        store.save([record(**{field: value})])
    with MemoryQueue(url, namespace=namespace, producer_id="p") as q:
        with pytest.raises(ValidationError, match=rf"items\[0\]\.{field} {needle}"):
            q.enqueue_encode([{"text": "x", field: value}])
        with pytest.raises(ValidationError, match=rf"records\[0\]\.{field} {needle}"):
            q.enqueue_save([record(**{field: value})])
        assert q.pending() == []
    assert store.count() == 0


# ----------------------------------------------------------------------------- metadata depth
def test_metadata_depth_is_bounded_with_a_validation_error_naming_the_limit() -> None:
    encode_record(record(metadata=nested(MAX_METADATA_DEPTH)))
    encode_record(record(metadata={"k": [[[nested(MAX_METADATA_DEPTH - 4)]]]}))  # lists count too
    for depth in (MAX_METADATA_DEPTH + 1, 900, 990, 5_000, 100_000):
        with pytest.raises(ValidationError) as info:
            encode_record(record(metadata=nested(depth)))
        assert "records" not in str(info.value) and "metadata" in str(info.value)
        assert f"{MAX_METADATA_DEPTH}" in str(info.value) and "deep" in str(info.value)
    deep_list: Any = 1
    for _ in range(3_000):
        deep_list = [deep_list]
    with pytest.raises(ValidationError, match=f"metadata.*{MAX_METADATA_DEPTH}"):
        encode_record(record(metadata={"k": deep_list}))


def test_circular_and_huge_metadata_are_validation_errors() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValidationError, match="metadata"):
        encode_record(record(metadata=loop))
    wide = {"k": [[0] * 10 for _ in range(100_000)]}  # millions of values, shallow
    with pytest.raises(ValidationError, match="metadata.*limit"):
        encode_record(record(metadata=wide))


def test_enqueue_refuses_deep_metadata_and_enqueues_nothing(plain_server, namespace) -> None:
    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
        for depth in (MAX_METADATA_DEPTH + 1, 900, 970, 5_000):
            with pytest.raises(ValidationError, match=r"items\[1\]\.metadata.*32"):
                q.enqueue_encode(["fine", {"text": "deep", "metadata": nested(depth)}])
            with pytest.raises(ValidationError, match=r"records\[0\]\.metadata.*32"):
                q.enqueue_save([record(metadata=nested(depth))])
        assert q.pending() == []


def test_store_save_refuses_deep_metadata_and_writes_nothing(store) -> None:
    for depth in (MAX_METADATA_DEPTH + 1, 990, 2_000):
        with pytest.raises(ValidationError, match=r"records\[1\]\.metadata.*32"):
            store.save([record("ok"), record("deep", metadata=nested(depth))])
    assert store.count() == 0
    store.save([record("ok", metadata=nested(MAX_METADATA_DEPTH))])
    assert store.get_record("ok").metadata == nested(MAX_METADATA_DEPTH)


def test_a_deep_metadata_filter_is_a_validation_error(store) -> None:
    store.save([record("ok", metadata={"k": 1})])
    with pytest.raises(ValidationError, match="metadata"):
        store.search([1.0] * DIM, metadata_filter={"k": nested(2_000)})
    assert store.search([1.0] * DIM, metadata_filter={"k": nested(3)}) == []


# ----------------------------------------------------------------------------- scope depth
def test_scope_depth_is_capped_at_32_levels() -> None:
    assert normalize_scope("/a" * MAX_SCOPE_DEPTH) == "/a" * MAX_SCOPE_DEPTH
    for scope in ("/a" * (MAX_SCOPE_DEPTH + 1), "/a" * 512, "a/" * 100):
        with pytest.raises(ValidationError, match=f"scope has .*levels, the limit is {MAX_SCOPE_DEPTH}"):
            normalize_scope(scope)
    # A read's prefix is not capped: records written before the cap stay reachable.
    assert normalize_scope_prefix("/a" * 100) == "/a" * 100


def test_deep_scopes_are_refused_at_enqueue_and_save(plain_server, namespace, store) -> None:
    deep = "/a" * 512  # 1,024 characters: within the length limit
    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
        with pytest.raises(ValidationError, match=r"items\[0\]\.scope .*limit is 32"):
            q.enqueue_encode([{"text": "x", "scope": deep}])
        with pytest.raises(ValidationError, match=r"records\[0\]\.scope .*limit is 32"):
            q.enqueue_save([record(scope=deep)])
        assert q.pending() == []
    with pytest.raises(ValidationError, match=r"records\[0\]\.scope .*limit is 32"):
        store.save([record(scope=deep)])
    assert store.count() == 0
    assert store.count(deep) == 0  # reads with a deep prefix still answer


def test_scope_errors_do_not_echo_the_scope() -> None:
    for scope in ("/secret\x00", "/secret//x", "/secret" * 40):
        with pytest.raises(ValidationError) as info:
            normalize_scope(scope)
        assert "secret" not in str(info.value)


# ----------------------------------------------------------------------------- flow settings
QUEUED_MEMORY_FLOWS = [
    {"consolidation_threshold": 1.0, "batch_dedup_threshold": 0.98},
    {"consolidation_threshold": 1.0},
    {"infer": ["scope", "categories", "importance"], "scope": None, "root_scope": "/crew/a",
     "consolidation_threshold": 0.85, "consolidation_limit": 5, "batch_dedup_threshold": 0.98,
     "default_importance": 0.5},
    {"infer": [], "scope": "notes", "root_scope": None, "consolidation_threshold": 0.0,
     "consolidation_limit": 1, "batch_dedup_threshold": 2.0, "default_importance": 1},
]  # fmt: skip

BAD_FLOWS = [
    ({"consolidation_threshold": "abc"}, "flow.consolidation_threshold"),
    ({"consolidation_threshold": True}, "flow.consolidation_threshold"),
    ({"consolidation_threshold": float("nan")}, "flow.consolidation_threshold"),
    ({"consolidation_threshold": -0.5}, "flow.consolidation_threshold"),
    ({"consolidation_limit": 0}, "flow.consolidation_limit"),
    ({"consolidation_limit": 2.5}, "flow.consolidation_limit"),
    ({"consolidation_limit": "5"}, "flow.consolidation_limit"),
    ({"consolidation_limit": 10**9}, "flow.consolidation_limit"),
    ({"batch_dedup_threshold": "x"}, "flow.batch_dedup_threshold"),
    ({"batch_dedup_threshold": float("inf")}, "flow.batch_dedup_threshold"),
    ({"default_importance": 2}, "flow.default_importance"),
    ({"default_importance": None}, "flow.default_importance"),
    # integers too large for a float: math.isfinite() raised OverflowError, which the
    # worker took for a transient failure and retried
    ({"consolidation_threshold": 10**400}, "flow.consolidation_threshold"),
    ({"batch_dedup_threshold": -(10**400)}, "flow.batch_dedup_threshold"),
    ({"default_importance": 10**400}, "flow.default_importance"),
    ({"infer": "scope"}, "flow.infer"),
    ({"infer": ["bogus"]}, "flow.infer"),
    ({"scope": 5}, "flow.scope"),
    ({"root_scope": "/a//b"}, "flow.root_scope"),
    ({"root_scope": "/a" * 40}, "flow.root_scope"),
    ({"colour": "red"}, "flow has unknown field"),
]


@pytest.mark.parametrize("flow", QUEUED_MEMORY_FLOWS)
def test_the_flows_queued_memory_builds_are_accepted(flow: dict[str, Any]) -> None:
    check_flow(flow, "items[0].flow")
    assert embed_items([{"text": "x", "flow": flow}], 10)[0]["flow"] == flow


@pytest.mark.parametrize("flow, needle", BAD_FLOWS)
def test_bad_flow_fields_are_refused_at_enqueue(flow: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=r"items\[1\]\." + needle):
        embed_items([{"text": "ok"}, {"text": "x", "flow": flow}], 10)


def test_queued_memory_flows_match_what_the_crewai_integration_builds() -> None:
    pytest.importorskip("crewai")
    from memworker.crewai._memory import _GROUPED_FLOW

    check_flow(_GROUPED_FLOW, "flow")


def test_a_flow_of_only_a_dedup_threshold_keeps_crewai_consolidation_default() -> None:
    """A ``flow`` entry carries CrewAI's settings, with CrewAI's defaults: without
    ``consolidation_threshold`` consolidation is on (0.85), so the job takes the flow
    path; ``QueuedMemory``'s fast-path entry turns it off explicitly."""
    from memworker.queue.jobs import needs_flow

    assert needs_flow({"batch_dedup_threshold": 0.9})
    assert not needs_flow({"consolidation_threshold": 1.0, "batch_dedup_threshold": 0.9})
    assert not needs_flow(None) and not needs_flow({})
    assert needs_flow({"infer": ["scope"], "consolidation_threshold": 1.0})


# ----------------------------------------------------------------------------- item defaults
@pytest.mark.parametrize("field, value", [("scope", ""), ("scope", 0), ("scope", False),
                                          ("scope", []), ("id", ""), ("id", 0), ("id", False),
                                          ("created_at", ""), ("created_at", 0), ("created_at", [])])  # fmt: skip
def test_only_a_missing_or_none_item_field_takes_its_default(
    plain_server, namespace, field: str, value: Any
) -> None:
    """``scope`` defaults to the root, ``id`` to a new uuid and ``created_at`` to now,
    but only when absent or None: a falsy value of the wrong kind is refused, named,
    and nothing is enqueued (it used to be read as "not given")."""
    with pytest.raises(ValidationError, match=rf"items\[1\]\.{field}"):
        embed_items([{"text": "ok"}, {"text": "x", field: value}], 10)
    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
        with pytest.raises(ValidationError, match=rf"items\[0\]\.{field}"):
            q.enqueue_encode([{"text": "x", field: value}])
        assert q.pending() == []
    (item,) = embed_items([{"text": "x", "scope": None, "id": None, "created_at": None}], 10)
    assert item["scope"] == "/" and uuid.UUID(item["id"]).version == 4 and item["created_at"]


@pytest.mark.parametrize("value", ["", 0, False, [], "{}"])
def test_metadata_that_is_not_a_mapping_is_refused_even_when_falsy(
    plain_server, namespace, store, value: Any
) -> None:
    """``metadata=0`` raised a bare TypeError at enqueue, and ``""``, ``0`` or ``[]``
    were stored as ``{}`` by ``save``: only ``None`` (or no field) means none."""
    refused_on_every_write_path(plain_server.url, namespace, store, "metadata", value, "must be a mapping")
    store.save([record(metadata=None)])
    assert store.get_record("r1").metadata == {}


@pytest.mark.parametrize("field", ["created_at", "last_accessed"])
@pytest.mark.parametrize("value", ["", 0, False])
def test_a_falsy_record_time_is_refused_not_taken_for_now(store, field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=rf"records\[0\]\.{field}"):
        store.save([record(**{field: value})])
    assert store.count() == 0
    store.save([record(**{field: None})])
    assert store.get_record("r1") is not None


# ----------------------------------------------------------------------------- control characters
#: DEL and the C1 controls: CSI (\x9b) starts an escape sequence on 8-bit terminals,
#: NEL (\x85) breaks lines in some log viewers.
C1 = ["\x7f", "\x80", "\x85", "\x9b", "\x9f"]


@pytest.mark.parametrize("bad", C1)
def test_del_and_c1_controls_are_refused_in_new_ids_and_scopes(
    plain_server, namespace, store, bad: str
) -> None:
    with pytest.raises(ValidationError, match=r"records\[1\]\.id must not contain control"):
        store.save([record("ok"), record("r" + bad)])
    with pytest.raises(ValidationError, match=r"records\[0\]\.scope must not contain control"):
        store.save([record(scope="/a" + bad)])
    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
        with pytest.raises(ValidationError, match=r"items\[0\]\.scope"):
            q.enqueue_encode([{"text": "x", "scope": "/a" + bad}])
        with pytest.raises(ValidationError, match=r"items\[0\]\.id"):
            q.enqueue_encode([{"text": "x", "id": "r" + bad}])
        with pytest.raises(ValidationError, match=r"records\[0\]\.id"):
            q.enqueue_save([record("r" + bad)])
        assert q.pending() == []
    assert store.count() == 0
    # Reads and deletes by id or scope still take what earlier versions let in (DEL
    # in ids, C1 in both): records written then stay reachable (as for scope depth).
    assert store.get_record("r" + bad) is None
    assert store.delete(record_ids=["r" + bad]) == 0
    if bad != "\x7f":  # DEL was never let into a scope
        assert store.list_records(scope_prefix="/a" + bad) == []


# ----------------------------------------------------------------------------- private
@pytest.mark.parametrize("value", ["false", "true", "", 0, 1, None, [], "no"])
def test_private_must_be_a_real_boolean(plain_server, namespace, store, value: Any) -> None:
    refused_on_every_write_path(plain_server.url, namespace, store, "private", value, "must be a boolean")


def test_private_accepts_booleans_and_numpy_booleans(store) -> None:
    store.save([record("t", private=True, source="a"), record("f", private=np.bool_(False))])
    assert store.get_record("t").private is True and store.get_record("f").private is False


# ----------------------------------------------------------------------------- job ids
@pytest.mark.parametrize(
    "job_id", ["x" * 129, "a\nb", "job-1\n", "a b", "job:1", "../x", "é", "", 5, None]
)
def test_parse_job_bounds_the_job_id(job_id: Any) -> None:
    job = {"v": 1, "job": job_id, "producer": "p", "items": []}
    with pytest.raises(JobPayloadError, match="job id"):
        parse_job(job)
    assert job_identity((job,))[0] is None  # failure records fall back to the message id


def test_parse_job_accepts_uuid_job_ids() -> None:
    job_id = str(uuid.uuid4())
    assert parse_job({"v": 1, "job": job_id, "producer": "p", "items": []})[0] == job_id


# ----------------------------------------------------------------------------- worker side
class Embedder:
    """Deterministic vectors; a text containing ``FAIL`` raises an error that quotes
    it (as real embedders' errors may), every time."""

    dimension = DIM

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def encode(self, texts):
        with self.lock:
            self.calls += 1
        for t in texts:
            if "FAIL" in t:
                raise OSError(f"transient failure embedding {t!r}")
        return np.stack([_vector(t) for t in texts])


def _vector(text: str) -> np.ndarray:
    seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def embedder():
    made = Embedder()
    worker_mod.set_embedder_factory(lambda: made)
    yield made
    worker_mod.set_embedder_factory(None)


@pytest.fixture
def qsettings(plain_server, namespace) -> Settings:
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def rawq(plain_server):
    import redis

    client = redis.Redis(host="127.0.0.1", port=plain_server.port)
    yield client
    client.close()


def _craft(rawq, keys: QueueKeys, job_id: str, item_json: dict[str, str]) -> None:
    """Rewrite fields of the first item of a queued job with raw JSON texts (deep
    nesting is spliced in as text: json.dumps would recurse)."""
    (rid,) = [r for r in rawq.lrange(keys.q(), 0, -1) if job_id.encode() in rawq.hget(keys.msgs(), r)]
    msg = json.loads(rawq.hget(keys.msgs(), rid))
    item = msg["args"][0]["items"][0]
    marks = {}
    for name, text in item_json.items():
        marks[name] = f"@@{uuid.uuid4().hex}@@"
        item[name] = marks[name]
    data = json.dumps(msg)
    for name, text in item_json.items():
        data = data.replace(json.dumps(marks[name]), text)
    rawq.hset(keys.msgs(), rid, data)


CRAFTED = [
    ("metadata nested 950 deep", {"metadata": nested_json(950)}, "metadata"),
    ("metadata nested 33 deep", {"metadata": nested_json(33)}, "metadata"),
    ("flow with a string threshold", {"flow": '{"consolidation_threshold": "abc"}'}, "consolidation_threshold"),
    ("flow with a string limit", {"flow": '{"consolidation_threshold": 0.5, "consolidation_limit": "x"}'},
     "consolidation_limit"),
    ("string private", {"private": '"false"'}, "private"),
    ("deep scope", {"scope": json.dumps("/a" * 40)}, "scope"),
    ("flow with a 400-digit threshold", {"flow": '{"consolidation_threshold": 1' + "0" * 400 + "}"},
     "consolidation_threshold"),
    ("C1 control in the scope", {"scope": json.dumps("/a\x9b")}, "scope"),
]  # fmt: skip


CRAFTED_SAVES = [
    ("save job: metadata nested 950 deep", {"metadata": nested_json(950)}, "metadata"),
    ("save job: string private", {"private": '"false"'}, "private"),
]


def test_crafted_payloads_are_dead_lettered_at_once_never_retried(qsettings, embedder, rawq) -> None:
    """Payloads that slip past enqueue (written by hand, or by an older producer) fail a
    check in the worker: permanent, so reported by the next drain after one attempt,
    not after five retries. A retry would wait a minute (min_backoff_ms), past the
    drain's timeout."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q:
        jobs = {}
        for name, fields, needle in CRAFTED:
            job_id, _ = q.enqueue_encode_job([f"crafted: {name}"])
            _craft(rawq, keys, job_id, fields)
            jobs[job_id] = (name, needle)
        for name, fields, needle in CRAFTED_SAVES:
            job_id = q.enqueue_save([record(f"saved-{len(jobs)}")])
            _craft(rawq, keys, job_id, fields)
            jobs[job_id] = (name, needle)
        good, _ = q.enqueue_encode_job(["a good one"])
        with worker_mod.running_worker(
            qsettings, threads=2, worker_timeout_ms=100, max_retries=5, min_backoff_ms=60_000
        ):
            report = q.drain(timeout=30, job_ids=[*jobs, good])
    assert report.committed == 1
    failed = {f.job_id: f.error for f in report.failed}
    assert set(failed) == set(jobs)
    for job_id, (name, needle) in jobs.items():
        assert needle in failed[job_id] and "Error" in failed[job_id], (name, failed[job_id])
        assert "RecursionError" not in failed[job_id], name
    dead = [json.loads(m) for m in rawq.hvals(keys.dead_msgs())]
    assert len(dead) == len(jobs) and all(m["options"].get("retries", 0) == 0 for m in dead)


# ----------------------------------------------------------------------------- logs
MARK_TEXT = "MARKERTEXT"
MARK_META = "MARKERMETA"


def _log_text(caplog) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


def test_worker_logs_name_jobs_never_their_contents(qsettings, embedder, rawq, caplog) -> None:
    """A job whose embedding fails (with an error quoting its text) is retried and
    dead-lettered; a save job fails permanently (wrong dimension): at DEBUG, on every
    logger, no log line carries a text, a metadata value or an embedding, and the
    lines name the jobs."""
    caplog.set_level(logging.DEBUG)
    secret = uuid.uuid4().hex
    text, meta = f"FAIL {MARK_TEXT}-{secret}", f"{MARK_META}-{secret}"
    vector = [0.125 * (i + 1) for i in range(DIM - 1)]  # dimension 7, the store holds 8
    embedding_b64 = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    with MemoryQueue(qsettings, producer_id="p") as q:
        first = q.enqueue_save([record("first", content="plain text")])
        encode_job, ids = q.enqueue_encode_job(
            [{"text": text, "metadata": {"who": meta}, "scope": "/s", "source": meta}]
        )
        save_job = q.enqueue_save(
            [record("second", content=f"{MARK_TEXT}-{secret}-save", metadata={"who": meta},
                    embedding=vector)]
        )  # fmt: skip
        with worker_mod.running_worker(
            qsettings, threads=1, worker_timeout_ms=100, max_retries=2, min_backoff_ms=10,
            max_backoff_ms=20,
        ):  # fmt: skip
            report = q.drain(timeout=60, job_ids=[first, encode_job, save_job])
    assert report.committed == 1
    failed = {f.job_id: f for f in report.failed}
    assert set(failed) == {encode_job, save_job}
    assert "OSError" in failed[encode_job].error and "dimension" in failed[save_job].error
    assert embedder.calls >= 3  # the first attempt and two retries
    logs = _log_text(caplog)
    assert "Retrying message" in logs and "Received message" in logs  # dramatiq's lines were captured
    for marker in (secret, MARK_TEXT, MARK_META, embedding_b64[:16]):
        leaked = [line for line in logs.splitlines() if marker in line]
        assert not leaked, (marker, leaked[:3])
    assert encode_job in logs and save_job in logs and ids[0] in logs
    failure_lines = [r.getMessage() for r in caplog.records if "failed for good" in r.getMessage()]
    assert any(encode_job in m and ids[0] in m and "OSError" in m for m in failure_lines)


def test_redacting_filter_rewrites_messages_exceptions_and_control_characters() -> None:
    """The filter alone, on records as dramatiq and memworker make them: a message
    argument, a job tuple, a chained exception quoting texts (in the argument and in
    the traceback), a string that would forge a log line."""
    from dramatiq import Message
    from dramatiq.broker import MessageProxy

    secret = "SEC" + "RET"  # tracebacks show source lines: the values come from variables
    job = {"v": 1, "job": "j-1", "producer": "p", "items": [
        {"id": "r-1", "content": secret + " text", "metadata": {"k": secret + " meta"}}]}  # fmt: skip
    message = Message(queue_name="default", actor_name="encode_records", args=(job,), kwargs={},
                      options={}, message_id="j-1")  # fmt: skip
    try:
        try:
            raise KeyError(f"{secret} cause")
        except KeyError as exc:
            raise OSError(f"{secret} in the error") from exc
    except OSError as exc:
        error = exc
    formatter = logging.Formatter("%(message)s")
    lines = []
    for msg, args, exc_info in [
        ("Received message %s with id %r.", (MessageProxy(message), "j-1"), None),
        ("Received args=%r kwargs=%r.", ((job,), {}), None),
        ("Failed to process message %s with unhandled exception.", (message,), (OSError, error, error.__traceback__)),
        ("Consumer encountered a connection error: %s", (error,), None),
        ("scope %r, name %s", ("/a", "x\nFORGED line"), None),
    ]:  # fmt: skip
        rec = logging.LogRecord("dramatiq.worker.WorkerThread", logging.ERROR, __file__, 1, msg, args, exc_info)
        assert worker_logs.RedactingFilter().filter(rec) is True
        lines.append(formatter.format(rec))
    text = "\n".join(lines)
    assert secret not in text and "\nFORGED" not in text
    assert "encode_records(job j-1, records ['r-1'])" in lines[0]
    assert "job j-1" in lines[1] and "OSError (message withheld" in lines[2]
    assert "KeyError (message withheld" in lines[2] and "Traceback" in lines[2]
    assert lines[3].endswith("OSError (message withheld: it may quote memory contents)")


def test_log_redaction_is_not_installed_at_import() -> None:
    import subprocess
    import sys

    code = (
        "import logging, memworker, memworker.worker as w\n"
        "loggers = [l for l in logging.root.manager.loggerDict.values() if hasattr(l, 'filters')]\n"
        "print(sum(isinstance(f, w.RedactingFilter) for l in loggers for f in l.filters))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"


def test_ids_with_a_final_newline_are_refused() -> None:
    """``$`` matches before a final newline: a producer id or job id ending in one
    would have entered key names and log lines."""
    from memworker.queue.jobs import check_producer_id

    with pytest.raises(ValidationError, match="producer_id"):
        check_producer_id("agent-7\n")
    with pytest.raises(JobPayloadError, match="producer"):
        parse_job({"v": 1, "job": "j-1", "producer": "agent-7\n", "items": []})


# ------------------------------------------------------ producer arguments (review 2026-12-05)
@pytest.mark.parametrize("field", ["max_items", "max_job_bytes"])
@pytest.mark.parametrize("value", [True, 0, -1, "5", 1.5, None])
def test_queue_limits_must_be_integers(plain_server, namespace, field: str, value: Any) -> None:
    settings = Settings.from_url(plain_server.url, namespace=namespace)
    with pytest.raises(ValidationError, match=field):
        MemoryQueue(settings, producer_id="p", **{field: value})


@pytest.mark.parametrize(
    "job_id, item_id, needle",
    [(None, "r", "job_id"), ("j", None, "item_id"), (5, "r", "job_id"), ("j", 5, "item_id"),
     ("a b\n", "r", "job_id"), ("j", "", "item_id"), ("j", ["r"], "item_id")],
)  # fmt: skip
def test_job_result_arguments_are_checked(plain_server, namespace, job_id, item_id, needle) -> None:
    settings = Settings.from_url(plain_server.url, namespace=namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        with pytest.raises(ValidationError, match=needle):
            q.job_result(job_id, item_id)
        assert q.job_result("j", "r") is None


@pytest.mark.parametrize(
    "items, needle",
    [([{"content": "no id"}], r"items\[0\]\.id"),
     ([{"id": "", "content": "x"}], r"items\[0\]\.id"),
     ([{"id": "a", "content": "x"}, {"id": 5, "content": "y"}], r"items\[1\]\.id"),
     ([{"id": "a", "content": "x", "private": "false"}], r"items\[0\]\.private"),
     (["text"], r"items\[0\] must be"),
     ("ab", "items must be a list")],
)  # fmt: skip
def test_enqueue_encode_items_checks_ids_and_private(plain_server, namespace, items, needle) -> None:
    """Items of ``enqueue_encode_items`` come from ``embed_items``; a caller that skips
    it gets the fields that decide where the record lands (its id) and who sees it
    (``private``) checked, and nothing enqueued."""
    settings = Settings.from_url(plain_server.url, namespace=namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        with pytest.raises(ValidationError, match=needle):
            q.enqueue_encode_items(items)
        with pytest.raises(ValidationError, match=needle):
            asyncio.run(q.aenqueue_encode_items(items))
        assert q.pending() == []
