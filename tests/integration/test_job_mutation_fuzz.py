"""Seeded mutation fuzzing of queued job messages (a buggy older producer, or anyone who
can write to the broker): valid save / encode jobs are built by the real producer
(``MemoryQueue``: CrewAI-style encode items with a fast-path ``flow`` entry,
LangGraph-style versioned items under ``/langgraph``, save jobs with their vectors),
then their stored message is mutated (fields dropped, retyped, huge or negative
numbers, NUL / controls / line breaks / ANSI escapes in ids and scopes, hostile
``options``, truncated JSON, non-UTF-8 bytes, an oversized body) and left on the
real broker next to valid jobs of another real producer, with a real worker running.

The invariants checked (README "The write-behind queue", docs/guarantees.md 1, 2, 5, 6):

- the worker keeps running: every worker thread alive, a job enqueued after the
  forged ones commits;
- every valid job beside the forged ones commits exactly once (its producer's drain
  reports it committed, never failed, and its records are there, once);
- a forged job is reported to its producer's drain (committed or failed), never
  left pending; one that fails writes nothing; one the producer's own validation
  refuses naming ``items[i].field`` fails at the worker naming the same field;
- nothing is written outside the namespace, and a forged job's records stay in its
  own scope;
- the worker's log lines carry no line break, escape sequence or megabyte-long text
  of the forgery; ``memworker dead list`` prints none either.

Not repeated here: the envelope cases of test_crafted_messages.py (another queue, an
unknown actor, odd arguments, odd ``items``, a duplicated id, a bad timestamp), the
bad producer vectors of test_worker_batch_hostile.py, the nested metadata of
test_hostile_input.py. Documented, so not checked: a forged ``options`` naming another
message's redis id makes the worker ack that message (docs/guarantees.md 5).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import random
import re
from contextlib import redirect_stdout
from typing import Any, Callable

import numpy as np
import pytest
from test_worker import DIM, qsettings, rawq, workers  # noqa: F401 - fixtures
from test_worker_batch_hostile import hostile, vector  # noqa: F401 - fixtures

from memworker.cli import main as cli_main
from memworker.errors import DrainTimeout, ValidationError
from memworker.queue.admin import dead_list
from memworker.queue.jobs import QueueKeys, embed_items
from memworker.queue.producer import MemoryQueue
from memworker.store.codec import to_rows
from memworker.store.validate import normalize_scope
from memworker.store.store import ValkeyStore

SEED = 20261207
#: Forged jobs whose items are mutated at random (besides the fixed cases below).
RANDOM_ITEM_MUTATIONS = 36
MAX_LOG_CHARS = 20_000


# ----------------------------------------------------------------------------- producers
def crewai_items(tag: str, n: int) -> list[dict[str, Any]]:
    """Encode items as QueuedMemory sends them on the fast path."""
    return [
        {
            "id": f"{tag}-{k}",
            "text": f"crewai memory {tag} {k}",
            "scope": f"/evil/{tag}" if tag.startswith("bad") else f"/crew/{tag}",
            "categories": ["billing"],
            "metadata": {"customer": "Acme", "n": k},
            "importance": 0.7,
            "source": "agent-7",
            "flow": {"consolidation_threshold": 1.0},
        }
        for k in range(n)
    ]


def langgraph_items(tag: str, n: int) -> list[dict[str, Any]]:
    """Encode items as QueuedStore.put sends them (versioned, with a TTL)."""
    base = "/langgraph/evil" if tag.startswith("bad") else "/langgraph/users"
    return [
        {
            "id": f"{tag}-{k}",
            "text": f"langgraph value {tag} {k}",
            "scope": base,
            "categories": ["users%2Fu1"],
            "metadata": {"__key": f"k{k}", "__ttl": 60.0, "_f.v": k},
            "ver": 1_700_000_000_000_000 + k,
            "ttl": 3_600_000,
            "exp": 4_000_000_000_000,
        }
        for k in range(n)
    ]


def save_records(tag: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{tag}-{k}",
            "content": f"saved {tag} {k}",
            "scope": f"/evil/{tag}" if tag.startswith("bad") else f"/saved/{tag}",
            "categories": ["c"],
            "metadata": {"k": k},
            "embedding": vector(f"saved {tag} {k}").tolist(),
        }
        for k in range(n)
    ]


def enqueue_valid(q: MemoryQueue, kind: str, tag: str, n: int) -> tuple[str, list[str]]:
    if kind == "crewai":
        return q.enqueue_encode_job(crewai_items(tag, n))
    if kind == "langgraph":
        return q.enqueue_encode_items(embed_items(langgraph_items(tag, n), 1000)), [f"{tag}-{k}" for k in range(n)]
    return q.enqueue_save(save_records(tag, n)), [f"{tag}-{k}" for k in range(n)]


# ----------------------------------------------------------------------------- the broker
def find_message(rawq, keys: QueueKeys, job_id: str) -> tuple[bytes, dict[str, Any]]:
    for redis_id, body in rawq.hgetall(keys.msgs()).items():
        try:
            msg = json.loads(body)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("message_id") == job_id:
            return redis_id, msg
    raise AssertionError(f"message of {job_id} not found")


# ----------------------------------------------------------------------------- mutations
HOSTILE_TEXTS = [
    "a\x00b",
    "x\n2026-12-07 12:00:00 CRITICAL memworker.worker: INJECTED forged line",
    "\x1b[2J\x1b[31mINJECTED",
    "\r\x85\u2028INJECTED",
    "\u202eevil",
    "\ud800" ,  # a lone surrogate (json.dumps writes it as \\ud800)
    "I" * 300,
]
HOSTILE_VALUES: list[Any] = [
    None, 0, -1, 1.5, 10**30, -(10**30), 1e308, True, "", "x", [], [1], {}, {"a": [{"b": None}]},
    *HOSTILE_TEXTS,
]
ITEM_FIELDS = {
    "encode": ["id", "content", "scope", "categories", "metadata", "importance", "source", "private",
               "created_at", "flow", "ver", "ttl", "exp"],
    "save": ["id", "content", "scope", "categories", "metadata", "importance", "source", "private",
             "created_at", "last_accessed", "ver"],
}  # fmt: skip


def producer_verdict(actor: str, items: list[dict[str, Any]]) -> str | None:
    """``items[i].field`` the producer's own validation refuses these items for, else
    None (the worker must then commit them)."""
    try:
        if actor == "encode_records":
            embed_items([dict(i) for i in items], 1000)
        else:
            records = []
            for item in items:
                rec = dict(item)
                raw = rec.pop("embedding_b64", None)
                rec["embedding"] = None if raw is None else np.frombuffer(base64.b64decode(raw), "<f4").tolist()
                records.append(rec)
            to_rows(records)
    except ValidationError as exc:
        found = re.search(r"(?:items|records)\[(\d+)\]\.(\w+)", str(exc))
        if not found:
            return str(exc)
        name = "content" if found.group(2) == "text" else found.group(2)
        return f"[{found.group(1)}].{name}"  # the worker names items[i] or records[i]
    return None


class Forged:
    """One forged message: what was done, and what its producer's drain must say."""

    def __init__(self, job_id: str, record_ids: list[str], label: str) -> None:
        self.job_id, self.record_ids, self.label = job_id, record_ids, label
        #: None: committed or failed; "commit": must commit; else a needle its error names
        self.expect: str | None = None
        #: False: its identity is gone (its drain cannot be told): only dead-lettered
        self.reportable = True
        #: record id -> the scope its item gives
        self.scopes: dict[str, Any] = {}


def random_item_mutation(rng: random.Random, msg: dict[str, Any], forged: Forged) -> None:
    items = msg["args"][0]["items"]
    i = rng.randrange(len(items))
    actor = "encode" if msg["actor_name"] == "encode_records" else "save"
    field = rng.choice(ITEM_FIELDS[actor])
    op = rng.choice(["drop", "retype", "retype", "hostile-text"])
    if op == "drop":
        items[i].pop(field, None)
    elif op == "retype":
        items[i][field] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    else:
        items[i][field] = rng.choice(HOSTILE_TEXTS) if field != "scope" else "/evil/" + rng.choice(HOSTILE_TEXTS)
    forged.label = f"items[{i}].{field} {op}: {items[i].get(field, '<dropped>')!r}"[:200]
    if field == "id" and items[i].get("id") is None:
        verdict: str | None = f"[{i}].id"  # the producer makes every id; a worker needs it
    else:
        verdict = producer_verdict(msg["actor_name"], items)
    forged.expect = "commit" if verdict is None else verdict
    forged.record_ids = sorted({*forged.record_ids, *(x["id"] for x in items if isinstance(x.get("id"), str))})
    forged.scopes = {x["id"]: x.get("scope") for x in items if isinstance(x.get("id"), str)}


def set_option(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg["options"][name] = value

    return change


def set_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg[name] = value

    return change


def set_job(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg["args"][0][name] = value

    return change


def swap_actor(msg: dict[str, Any]) -> None:
    msg["actor_name"] = "save_records" if msg["actor_name"] == "encode_records" else "encode_records"


#: (label, change of the parsed message, expectation: None any report, else a needle)
ENVELOPE_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str | None]] = [
    *[(f"options.retries={v!r}", set_option("retries", v), None)
      for v in ["abc", -3, 10**30, True, [1], None, 1e308, {"x": 1}]],
    *[(f"options.max_retries={v!r}", set_option("max_retries", v), None) for v in [10**9, "x", -1]],
    *[(f"options.throws={v!r}", set_option("throws", v), None) for v in ["x", ["ValueError"], 5]],
    *[(f"options.eta={v!r}", set_option("eta", v), None) for v in ["soon", -1, 0]],
    *[(f"options.trace={v!r}", set_option("trace", v), None)
      for v in ["x", [1], {"traceparent": "00-\n\x1b[31mINJECTED-01"}, {"traceparent": 5}]],
    ("options.traceback of a megabyte of lines",
     set_option("traceback", "INJECTED line\n\x1b[31m" * 60_000), None),
    ("options.pipe_target", set_option("pipe_target", {"actor_name": "os.system", "args": ["id"]}), None),
    ("options.max_age=1", set_option("max_age", 1), None),
    ("options.time_limit=1", set_option("time_limit", 1), None),
    ("message_timestamp=10**30", set_field("message_timestamp", 10**30), None),
    ("message_timestamp=-1", set_field("message_timestamp", -1), None),
    ("the other actor's name", swap_actor, None),
    ("job.v=2", set_job("v", 2), "schema"),
    ("job.v='1'", set_job("v", "1"), "schema"),
    ("job.v dropped", lambda m: m["args"][0].pop("v"), "schema"),
    ("job.items=[]", set_job("items", []), None),
    ("job.items[0]=5", lambda m: m["args"][0]["items"].__setitem__(0, 5), "items"),
    ("job.items[0]=[]", lambda m: m["args"][0]["items"].__setitem__(0, []), "items"),
    ("job.tenant extra", set_job("tenant", "/victim"), None),
]


def truncate_after_identity(rng: random.Random, body: bytes) -> bytes:
    start = body.index(b'"items"') + 8
    return body[: rng.randrange(start, len(body) - 1)]


def non_utf8(rng: random.Random, body: bytes) -> bytes:
    at = body.index(b'"content":"') + len(b'"content":"')
    return body[:at] + b"\xff\xfe\xc3(" + body[at:]


def raw_nul(rng: random.Random, body: bytes) -> bytes:
    at = body.index(b'"items"')
    return body[:at] + b"\x00" + body[at:]


BYTE_CASES: list[tuple[str, Callable[[random.Random, bytes], bytes], str | None]] = [
    ("truncated after its identity", truncate_after_identity, "undecodable"),
    ("truncated after its identity (2)", truncate_after_identity, "undecodable"),
    ("non-UTF-8 bytes in a text", non_utf8, "undecodable"),
    ("a NUL byte between JSON members", raw_nul, "undecodable"),
]


# ----------------------------------------------------------------------------- checks
class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # under the handler's own lock (Handler.handle)


def forged_lines(records: list[logging.LogRecord]) -> list[str]:
    bad = []
    for record in records:
        if not record.name.startswith(("memworker", "dramatiq")):
            continue
        text = record.getMessage()
        if re.search(r"[\n\r\x1b\x00\x85\u2028\u2029]", text) or len(text) > MAX_LOG_CHARS:
            bad.append(f"{record.name} {record.levelname}: {text[:300]!r} ({len(text)} chars)")
    return bad


def non_namespace_keys(rawq, namespace: str) -> set[bytes]:
    return {
        k for k in rawq.scan_iter(count=1000)
        if not k.decode("utf-8", "replace").startswith((namespace + ":", "{" + namespace + "}"))
    }  # fmt: skip


def own_scope(given: Any) -> str | None:
    """The scope a record of an item giving ``given`` is stored in (normalized)."""
    try:
        return normalize_scope("/" if given is None else given)
    except Exception:  # noqa: BLE001 - an item whose scope is refused has no scope
        return None


# ----------------------------------------------------------------------------- the fuzz
def test_mutated_jobs_beside_valid_ones_on_a_real_worker(
    queue_server, qsettings, rawq, hostile, workers  # noqa: F811
) -> None:
    rng = random.Random(SEED)
    keys = QueueKeys(qsettings.namespace)
    ns = qsettings.namespace
    outside_before = non_namespace_keys(rawq, ns)
    kinds = ["crewai", "langgraph", "save"]
    forged: list[Forged] = []
    good: dict[str, list[str]] = {}
    capture = LogCapture()
    logging.getLogger().addHandler(capture)
    old_levels = {n: logging.getLogger(n).level for n in ("memworker", "dramatiq")}
    for n in old_levels:
        logging.getLogger(n).setLevel(logging.INFO)
    try:
        with MemoryQueue(qsettings, producer_id="good") as gq, MemoryQueue(qsettings, producer_id="evil") as eq:

            def forge(n: int) -> tuple[Forged, bytes, dict[str, Any]]:
                kind = kinds[n % 3]
                job_id, ids = enqueue_valid(eq, kind, f"bad{n}", rng.randint(1, 4))
                redis_id, msg = find_message(rawq, keys, job_id)
                return Forged(job_id, ids, kind), redis_id, msg

            def good_job(n: int) -> None:
                job_id, ids = enqueue_valid(gq, kinds[n % 3], f"good{n}", rng.randint(1, 3))
                good[job_id] = ids

            n = 0
            for _ in range(RANDOM_ITEM_MUTATIONS):
                f, redis_id, msg = forge(n)
                random_item_mutation(rng, msg, f)
                f.label = f"{msg['actor_name']} {f.label}"
                data = json.dumps(msg, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
                rawq.hset(keys.msgs(), redis_id, data)
                forged.append(f)
                good_job(n)
                n += 1
            for label, change, needle in ENVELOPE_CASES:
                f, redis_id, msg = forge(n)
                change(msg)
                f.label, f.expect = label, needle
                rawq.hset(keys.msgs(), redis_id, json.dumps(msg))
                forged.append(f)
                good_job(n)
                n += 1
            for label, change_bytes, needle in BYTE_CASES:
                f, redis_id, msg = forge(n)
                body = json.dumps(msg, separators=(",", ":")).encode()
                rawq.hset(keys.msgs(), redis_id, change_bytes(rng, body))
                f.label, f.expect = label, needle
                forged.append(f)
                good_job(n)
                n += 1
            # an oversized body (3 MiB of text: past any producer's default limit)
            f, redis_id, msg = forge(n)
            msg["args"][0]["items"][0]["content"] = "big " * (3 << 18)
            rawq.hset(keys.msgs(), redis_id, json.dumps(msg))
            f.label = "a 3 MiB job"
            forged.append(f)
            good_job(n)
            n += 1
            # identity gone: truncated inside its job id (dead-lettered, not reportable)
            f, redis_id, msg = forge(n)
            body = json.dumps(msg, separators=(",", ":")).encode()
            rawq.hset(keys.msgs(), redis_id, body[: body.index(b'"job":"') + 9])
            f.label, f.reportable = "truncated inside its job id", False
            forged.append(f)
            good_job(n)
            n += 1

            _, worker = workers(qsettings, threads=2, max_retries=2, min_backoff_ms=10, max_backoff_ms=50)
            good_report = gq.drain(timeout=90, job_ids=list(good))
            reportable = [f for f in forged if f.reportable]
            try:
                evil_report = eq.drain(timeout=60, job_ids=[f.job_id for f in reportable])
                stuck: list[str] = []
            except DrainTimeout:
                stuck = list(eq.pending())
                evil_report = eq.drain(timeout=60, job_ids=[f.job_id for f in reportable if f.job_id not in stuck])
            # the worker still takes work: a job enqueued now commits
            late_id, late_ids = enqueue_valid(gq, "crewai", "late", 2)
            try:
                late_committed = gq.drain(timeout=30, job_ids=[late_id]).committed
            except DrainTimeout as exc:
                late_committed = str(exc)[:300]
            threads_alive = [t.is_alive() for t in worker.workers] + [c.is_alive() for c in worker.consumers.values()]
            dead_rows = dead_list(qsettings, limit=10_000)
            out = io.StringIO()
            with redirect_stdout(out):
                assert cli_main(["--url", queue_server.url, "--namespace", ns, "dead", "list", "--limit", "10000"]) == 0
    finally:
        logging.getLogger().removeHandler(capture)
        for name, level in old_levels.items():
            logging.getLogger(name).setLevel(level)

    by_label = {f.job_id: f.label for f in forged}
    problems: list[str] = [
        f"forged job never reported to its producer (still pending): {by_label.get(j, j)}" for j in stuck
    ]
    # 1. valid jobs: each committed exactly once
    if good_report.committed != len(good) or good_report.failed:
        problems.append(
            f"valid jobs: {good_report.committed}/{len(good)} committed, failed "
            f"{[(x.job_id, x.error[:120]) for x in good_report.failed]}"
        )
    if late_committed != 1:
        problems.append(f"the worker stalled: a valid job enqueued after the forged ones: {late_committed}")
    if not all(threads_alive):
        problems.append(f"worker threads alive: {threads_alive}")
    # 2. forged jobs: reported, refused naming the field, nothing partial
    failed = {x.job_id: x.error for x in evil_report.failed}
    with ValkeyStore(qsettings) as store:
        stored = {r.id: r for r in store.list_records(limit=10_000)}
        for job_id, ids in {**good, late_id: late_ids}.items():
            missing = [i for i in ids if i not in stored]
            if missing:
                problems.append(f"valid job {job_id}: records {missing} missing")
    for f in forged:
        written = [i for i in f.record_ids if i in stored]
        if not f.reportable:
            if written:
                problems.append(f"{f.label}: wrote {written}")
            continue
        if f.job_id in failed:
            error = failed[f.job_id]
            if f.expect == "commit":
                problems.append(f"{f.label}: the producer accepts it, the worker refused it: {error[:200]!r}")
            elif f.expect is not None and f.expect not in error and not (
                "\\ud800" in f.label and "undecodable" in error
            ):
                problems.append(f"{f.label}: error does not name {f.expect!r}: {error[:200]!r}")
            if written:
                problems.append(f"{f.label}: failed but wrote {written}")
        elif f.expect not in (None, "commit"):
            problems.append(f"{f.label}: not refused (expected a failure naming {f.expect!r})")
    # 3. records in the store: the valid jobs' and whole forged jobs', in their own scopes
    forged_ids = {i: f for f in forged for i in f.record_ids}
    valid_ids = {i for ids in [*good.values(), late_ids] for i in ids}
    for rid, rec in stored.items():
        if rid in valid_ids:
            continue
        f = forged_ids.get(rid)
        if f is None:
            problems.append(f"a record no job named: {rid!r} in {rec.scope!r}")
        elif rec.scope != own_scope(f.scopes.get(rid, rec.scope if rec.scope.startswith(("/evil/", "/langgraph/evil")) else None)):
            problems.append(f"{f.label}: record {rid!r} written in scope {rec.scope!r}")
        elif f.job_id in failed:
            pass  # reported above
        elif any(i not in stored for i in (list(f.scopes) or f.record_ids)):
            problems.append(f"{f.label}: part of the job written")
    for rid, rec in stored.items():
        if rid in valid_ids and not rec.scope.startswith(("/crew/", "/langgraph/users", "/saved/")):
            problems.append(f"valid record {rid} moved to {rec.scope!r}")
    outside = non_namespace_keys(rawq, ns) - outside_before
    if outside:
        problems.append(f"keys written outside the namespace: {sorted(outside)[:5]}")
    # 4. dead letters: each refused job listed; logs and `dead list` carry no forged line
    if len(dead_rows) < len(failed):
        problems.append(f"{len(failed)} jobs reported failed, {len(dead_rows)} dead letters")
    problems += [f"log line: {line}" for line in forged_lines(capture.records)]
    for line in out.getvalue().splitlines():
        if "\x1b" in line or len(line) > MAX_LOG_CHARS or line.lstrip().startswith("INJECTED"):
            problems.append(f"`dead list` line: {line[:200]!r} ({len(line)} chars)")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- targeted
def test_dead_list_names_the_job_of_a_truncated_message_its_drain_reported(
    queue_server, qsettings, rawq, hostile, workers  # noqa: F811
) -> None:
    """A message truncated after its job id and producer is reported failed to its
    producer's drain by that job id (docs/guarantees.md 1); ``memworker dead list`` (the
    admin API) lists "message id, job id, actor, producer, record ids" of each dead
    letter, so the operator finds the job the drain reported. It lists the job id of
    such a message too (the worker read it from the same bytes)."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="evil") as q:
        job_id, _ = q.enqueue_encode_job(crewai_items("bad0", 2))
        redis_id, msg = find_message(rawq, keys, job_id)
        body = json.dumps(msg, separators=(",", ":")).encode()
        rawq.hset(keys.msgs(), redis_id, body[: body.index(b'"items"') + 20])
        workers(qsettings)
        report = q.drain(timeout=30, job_ids=[job_id])
    assert [f.job_id for f in report.failed] == [job_id]
    rows = dead_list(qsettings)
    assert len(rows) == 1
    assert rows[0].get("job_id") == job_id and rows[0].get("producer") == "evil", rows[0]


#: dramatiq options a message can set that decide how its failure is handled (read
#: before the actor's own; memworker's producer sets none of them), and a ``retries``
#: count that is no count (dramatiq's Retries adds 1 to it).
FAILURE_OPTIONS: list[tuple[str, Any]] = [
    ("throws", "x"), ("throws", ["ValueError"]), ("retry_when", "x"), ("max_retries", "x"),
    ("min_backoff", "x"), ("on_failure", "x"), ("on_retry_exhausted", "x"),
    ("pipe_target", {"actor_name": "memworker.save", "args": []}),
    ("retries", "x"), ("retries", -1), ("retries", True), ("retries", 1e308),
]


@pytest.mark.parametrize(("option", "value"), FAILURE_OPTIONS, ids=[f"{o}={v!r}" for o, v in FAILURE_OPTIONS])
def test_a_failing_job_with_a_forged_failure_option_is_reported_and_the_worker_runs_on(
    queue_server, qsettings, rawq, hostile, workers, option, value  # noqa: F811
) -> None:
    """A job the worker refuses (an item with no content) whose message also sets one of
    dramatiq's failure options. ``throws="x"`` made dramatiq's ``isinstance(exc,
    throws)`` raise in its ``except`` block: the worker thread died, the job was acked
    with no dead letter and no failure, and its producer's drain waited it out (review
    helper-97). Each such message is dead-lettered and reported failed, naming the
    option; the threads stay alive and the jobs after it commit."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="evil") as q:
        forged = []
        for n in range(2):  # one per worker thread
            job_id, _ = q.enqueue_encode_job(crewai_items(f"bad{n}", 1))
            redis_id, msg = find_message(rawq, keys, job_id)
            msg["options"][option] = value
            msg["args"][0]["items"][0]["content"] = ""
            rawq.hset(keys.msgs(), redis_id, json.dumps(msg))
            forged.append(job_id)
        good, _ = q.enqueue_encode_job(crewai_items("good", 2))
        _, worker = workers(qsettings, inflight_records=0)
        report = q.drain(timeout=60, job_ids=[*forged, good])
        alive = [t.is_alive() for t in worker.workers]
    assert sorted(f.job_id for f in report.failed) == sorted(forged), report
    assert report.committed == 1, report
    assert all(alive), alive
    assert all(repr(option) in f.error for f in report.failed), report.failed  # named
    assert sorted(r["job_id"] for r in dead_list(qsettings)) == sorted(forged)
