"""Job schema: payloads, their validation and parsing, drain results. No I/O.

The queue's errors are in :mod:`memworker.errors` and its key names in
:mod:`memworker.keys`; both are re-exported here.

A job is one dramatiq message whose only argument is a JSON object::

    {"v": 1, "job": <job id>, "producer": <producer id>, "items": [...]}

``save_records`` items are records already embedded; ``encode_records`` items are
texts with their fields, embedded by the worker. Every item carries its record id,
assigned by the producer at enqueue time, so a redelivered job rewrites the same
keys. Embeddings travel as base64 of little-endian float32 bytes (field
``embedding_b64``, null for a record without one): exact, and about 4x smaller than
a JSON list of floats.
Nothing is ever unpickled: dramatiq's JSON encoder carries the message.

Key names: :class:`memworker.keys.QueueKeys` (re-exported here).
"""

from __future__ import annotations

import base64
import math
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from memworker.errors import (
    DrainTimeout,
    JobPayloadError,
    PoisonJobError,
    QueueError,
    ValidationError,
    shown,
)
from memworker.keys import DEFAULT_QUEUE, QueueKeys, result_key  # result_key re-exported
from memworker.store.codec import to_row, to_rows
from memworker.store.validate import check_flow, check_id

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_JOB_BYTES",
    "DEFAULT_QUEUE",
    "ENCODE_ACTOR",
    "JOB_SCHEMA",
    "LOST_ERROR",
    "MARKER_TTL_MS",
    "MAX_ERROR_CHARS",
    "SAVE_ACTOR",
    "DrainReport",
    "DrainTimeout",
    "FailedJob",
    "JobPayloadError",
    "PoisonJobError",
    "QueueError",
    "QueueKeys",
    "build_message",
    "check_count",
    "embed_items",
    "save_items",
]

#: Version of the job payload; a worker rejects (dead-letters) any other.
JOB_SCHEMA = 1
#: Largest encoded job accepted at enqueue, in bytes.
DEFAULT_MAX_JOB_BYTES = 1 << 20
#: Most items (records or texts) in one job.
DEFAULT_MAX_ITEMS = 1000
#: Actor names.
SAVE_ACTOR = "save_records"
ENCODE_ACTOR = "encode_records"
#: How long a commit marker (``ns:committed:<producer>``) and a drain's "already
#: reported" tombstone (``ns:reported:<producer>``) are kept, in ms (1 h). A job asked
#: for by id (``drain(job_ids=...)``) more than this long after it committed, and
#: never reported, is reported lost.
MARKER_TTL_MS = 3_600_000

#: Longest error text a failure record keeps (what ``FailedJob.error`` reports), and
#: that ``memworker dead list`` shows of a dead letter's traceback.
MAX_ERROR_CHARS = 4_000


def cut_error(error: str) -> str:
    """``error`` cut to :data:`MAX_ERROR_CHARS` (an embedder's error may quote a whole
    text), saying how long it was."""
    if len(error) > MAX_ERROR_CHARS:
        return f"{error[:MAX_ERROR_CHARS]}... ({len(error)} characters)"
    return error
#: Error of a job reported lost by a drain.
LOST_ERROR = "lost: neither committed nor failed — the server may have lost recent writes"

#: Producer ids and job ids: 1 to 128 ASCII letters, digits, ``_``, ``.``, ``-`` (they
#: enter key names, hash fields, pub/sub payloads and log lines).
#: Producer and job ids: 1 to 128 ASCII letters, digits, ``_``, ``.``, ``-``.
ID_RE = re.compile(r"\A[A-Za-z0-9_.\-]{1,128}\Z")  # \Z: "$" would let a final "\n" in


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FailedJob:
    """A job that was dead-lettered: its id, its record ids and the error."""

    job_id: str
    record_ids: list[str]
    error: str


@dataclass(frozen=True)
class DrainReport:
    """What a drain waited for, each job reported once.

    Attributes:
        committed: Jobs the drain waited for whose commit marker it found.
        failed: Failed jobs: every unreported failure record of the producer (also
            jobs that failed between drains), plus the lost jobs (error
            :data:`LOST_ERROR`, ``record_ids`` empty).
        lost: Ids of the jobs the drain waited for that are neither pending, nor
            committed, nor failed (e.g. their enqueue or commit was lost with the
            server's last writes, or a ``job_ids=`` id committed over
            :data:`MARKER_TTL_MS` ago); each is also in ``failed``.
    """

    committed: int = 0
    failed: list[FailedJob] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def delivery_field(job_id: str, attempt: int) -> str:
    """Field of the poison-guard counter: deliveries of one attempt of a job."""
    return f"{job_id}:{attempt}"


def check_producer_id(producer_id: str) -> str:
    if not isinstance(producer_id, str) or not ID_RE.match(producer_id):
        raise ValidationError(
            "producer_id must be 1 to 128 characters of ASCII letters, digits, '_', '-', '.'; "
            f"got {shown(producer_id)}"
        )
    return producer_id


# --------------------------------------------------------------------------- payloads
def _b64(vector: Any, where: str) -> str | None:
    """A save item's ``embedding_b64``: ``None`` for a record without an embedding
    (``None`` or empty); a vector of zeros travels as is (the worker checks its
    dimension and stores the record without one)."""
    from memworker.store.embeddings import no_embedding, vector_bytes

    if no_embedding(vector):
        return None
    raw, _ = vector_bytes(vector, field=where, allow_zero=True)
    return base64.b64encode(raw).decode("ascii")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def check_job_ids(job_ids: Any) -> list[str]:
    """The ``job_ids`` a drain waits for: a list of job ids, not one id as a string
    (whose characters would be waited for, and reported lost at once).

    Raises:
        ValidationError: Naming the argument (and the position of a bad id).
    """
    if isinstance(job_ids, (str, bytes, bytearray, Mapping)) or not isinstance(job_ids, Iterable):
        raise ValidationError(f"job_ids must be a list of job ids, got {type(job_ids).__name__}")
    ids = list(job_ids)
    for i, job_id in enumerate(ids):
        if not isinstance(job_id, str) or not ID_RE.match(job_id):
            raise ValidationError(
                f"job_ids[{i}] must be a job id: 1 to 128 ASCII letters, digits, '_', '-', '.'"
            )
    return ids


def check_timeout(timeout: Any) -> float | None:
    """A drain's ``timeout``: ``None`` (for ever) or a number of seconds >= 0.

    Raises:
        ValidationError: Anything else (NaN would wait for ever; text is no number).
    """
    if timeout is None:
        return None
    message = "timeout must be None or a finite number of seconds >= 0"
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:
        raise ValidationError(message)
    try:
        return float(timeout)
    except OverflowError:  # an int beyond float64 (10**400): no finite wait in seconds
        raise ValidationError(message) from None


def check_count(items: Sequence[Any], max_items: int, what: str) -> None:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValidationError(f"{what} must be a list, got {type(items).__name__}")
    if not items:
        raise ValidationError(f"{what} must not be empty")
    if len(items) > max_items:
        raise ValidationError(f"{what} has {len(items)} entries, the limit per job is {max_items}")


def check_built_items(items: Sequence[Any], max_items: int) -> None:
    """The cheap check of items said to come from :func:`embed_items`
    (``enqueue_encode_items``): how many, and the fields that decide where each record
    lands and who sees it: a mapping, a distinct record ``id`` (a worker would give an
    item without one a random id its caller never learns), ``private`` absent or a real
    boolean (``"false"`` is truthy). The rest the worker checks before any work.

    Raises:
        ValidationError: Naming ``items[i]`` and the field.
    """
    check_count(items, max_items, "items")
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"items[{i}]"
        if not isinstance(item, Mapping):
            raise ValidationError(
                f"{where} must be an item built by embed_items (a mapping), got {type(item).__name__}"
            )
        rid = check_id(item.get("id"), where)
        if rid in seen:
            raise ValidationError(f"{where}.id appears more than once in one job")
        seen.add(rid)
        private = item.get("private", False)
        if type(private) is not bool:  # embed_items makes it a bool (a numpy one is no JSON)
            raise ValidationError(
                f"{where}.private must be a boolean (True or False), got {type(private).__name__}"
            )


def check_job_id(job_id: Any, field: str = "job_id") -> str:
    """A job id as producers make them (:data:`ID_RE`)."""
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        raise ValidationError(
            f"{field} must be 1 to 128 characters of ASCII letters, digits, '_', '-', '.'"
        )
    return job_id


def save_items(records: Sequence[Any], max_items: int) -> list[dict[str, Any]]:
    """Validate embedded records (as a whole, like ``ValkeyStore.save``) -> job items."""
    check_count(records, max_items, "records")
    # Raises ValidationError naming records[i].field; the bool() below only turns a
    # validated numpy bool into a JSON one (a string "false" was refused).
    to_rows(list(records))
    items = []
    for i, rec in enumerate(records):
        items.append(
            {
                "id": _get(rec, "id"),
                "content": _get(rec, "content"),
                "scope": _get(rec, "scope", "/"),
                "categories": list(_get(rec, "categories") or []),
                "metadata": dict(_get(rec, "metadata") or {}),
                "importance": _get(rec, "importance", 0.5),
                "created_at": _iso(_get(rec, "created_at")),
                "last_accessed": _iso(_get(rec, "last_accessed")),
                "source": _get(rec, "source"),
                "private": bool(_get(rec, "private", False)),
                "embedding_b64": _b64(_get(rec, "embedding"), f"records[{i}].embedding"),
            }
        )
        for name in STAMP_FIELDS:  # versioned records (memworker.langgraph) only
            if _get(rec, name) is not None:
                items[-1][name] = _get(rec, name)
    return items


#: Optional fields of versioned records (``ver``, microseconds) with an expiry
#: (``exp``, ms since the epoch) and the TTL it came from (``ttl``, ms: a refresh on
#: read sets ``exp`` from the stored record's own): memworker.langgraph's puts;
#: lua/store.lua.
STAMP_FIELDS = ("ver", "exp", "ttl")
#: Fields an encode item may carry.
ITEM_FIELDS = frozenset(
    {"text", "content", "id", "scope", "categories", "metadata", "importance", "source",
     "private", "created_at", "flow", *STAMP_FIELDS}
)  # fmt: skip


def uuid4_texts(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as text, from one random read (uuid4 reads 16
    bytes per call and builds a UUID object): each the text of 16 random bytes with
    the version nibble set to 4 and the variant's two bits to 10 (RFC 4122)."""
    h = os.urandom(16 * n).hex()
    return [
        f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17:i + 20]}-{h[i + 20:i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


#: A random hex digit -> the same low two bits under the RFC 4122 variant (10xx).
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def embed_items(items: Sequence[Any], max_items: int) -> list[dict[str, Any]]:
    """Validate texts (``str`` or mappings with ``text``/``content`` and optional
    ``scope``, ``categories``, ``metadata``, ``importance``, ``source``, ``private``)
    -> job items, each with a new record id (uuid4) and ``created_at`` = now unless
    it brings its own (item ``i`` now + ``i`` microseconds: a call's items keep their
    order, newest last, as CrewAI's storage lists them). A field absent takes its default, and so does ``None`` for every
    field but ``importance`` (a number from 0 to 1) and ``private`` (a real boolean),
    which refuse it (``scope``: the root; ``id``: a new uuid4; ``created_at``: now);
    any other value is validated as
    given (``""``, ``0`` or ``False`` are refused, naming the field, never read as
    "not given")."""
    from memworker.records import utcnow

    check_count(items, max_items, "items")
    now = utcnow()
    # Random ids for the items that bring none (memworker.langgraph's bring theirs).
    new_ids = iter(uuid4_texts(sum(1 for i in items if not isinstance(i, Mapping) or i.get("id") is None)))
    # Items of one call usually share their flow settings, often the same object:
    # each distinct one is checked JSON-safe and copied once.
    flows: dict[str, Any] = {}
    flows_by_obj: dict[int, Any] = {}
    out = []
    for i, item in enumerate(items):
        where = f"items[{i}]"
        if type(item) is str:
            item = {"text": item}
        elif not isinstance(item, Mapping):
            raise ValidationError(f"{where} must be a str or a mapping, got {type(item).__name__}")
        if not ITEM_FIELDS.issuperset(item):
            unknown = sorted(shown(k) for k in set(item) - ITEM_FIELDS)
            raise ValidationError(f"{where} has unknown field(s): {', '.join(unknown[:5])}")
        text = item.get("text", item.get("content"))
        if not isinstance(text, str):
            raise ValidationError(f"{where}.text must be a string")
        if not text.strip():
            raise ValidationError(f"{where}.text must not be empty")
        created = item.get("created_at")
        rid = item.get("id")
        scope = item.get("scope")
        entry = {
            "id": next(new_ids) if rid is None else rid,
            "content": text,
            "scope": "/" if scope is None else scope,
            # Only None (or absent) is "none": 0 or "" are refused by to_row, naming them.
            "categories": [] if item.get("categories") is None else item["categories"],
            "metadata": {} if item.get("metadata") is None else item["metadata"],
            "importance": item.get("importance", 0.5),
            "created_at": now + timedelta(microseconds=i) if created is None else created,
            "source": item.get("source"),
            "private": item.get("private", False),
            "embedding": None,
        }
        for name in STAMP_FIELDS:
            if item.get(name) is not None:
                entry[name] = item[name]
        # Same checks as the store (scope, categories, metadata, importance, private...).
        to_row(entry, where=where, require_embedding=False, validate_only=True)
        del entry["embedding"]
        entry["private"] = bool(entry["private"])  # a real or a numpy bool: validated
        entry["created_at"] = entry["created_at"].isoformat() if created is None else _iso(created)
        entry["categories"] = list(entry["categories"])
        entry["metadata"] = dict(entry["metadata"])
        flow = item.get("flow")
        if flow is not None:
            # Fields to infer, consolidation and batch-dedup settings: the worker runs
            # CrewAI's EncodingFlow when it asks for inference or consolidation, else
            # the fast path with the job's dedup threshold (memworker.worker.dedup, memworker.crewai.flow).
            copy = flows_by_obj.get(id(flow))
            if copy is None:
                check_flow(flow, f"{where}.flow")  # every field by type and range
                flow_json = json.dumps(dict(flow))  # JSON-safe, and a copy the caller cannot change
                copy = flows.get(flow_json)
                if copy is None:
                    copy = flows[flow_json] = json.loads(flow_json)
                flows_by_obj[id(flow)] = copy  # items keep every flow alive during the call
            entry["flow"] = copy
        out.append(entry)
    ids = [e["id"] for e in out]
    if len(set(ids)) != len(ids):
        raise ValidationError("items: a record id appears more than once in one job")
    return out


def build_message(
    actor: str,
    job_id: str,
    producer: str,
    items: list[dict[str, Any]],
    max_job_bytes: int,
    queue: str = DEFAULT_QUEUE,
    trace: dict[str, str] | None = None,
    redis_id: str | None = None,
) -> tuple[str, bytes]:
    """The dramatiq message of a job: ``(redis_message_id, encoded bytes)``; ``trace``
    is the producer's trace context (:mod:`memworker.tracing`), carried as an option;
    ``redis_id`` the message's id on the queue (default: a new uuid4).

    Raises:
        ValidationError: The encoded job is larger than ``max_job_bytes``.
    """
    import dramatiq
    from dramatiq.encoder import JSONEncoder

    job = {"v": JOB_SCHEMA, "job": job_id, "producer": producer, "items": items}
    redis_id = redis_id or str(uuid.uuid4())
    options: dict[str, Any] = {"redis_message_id": redis_id}
    if trace:
        options["trace"] = trace
    fields: dict[str, Any] = {
        "queue_name": queue,
        "actor_name": actor,
        "args": (job,),
        "kwargs": {},
        "options": options,
        "message_id": job_id,
        "message_timestamp": int(time.time() * 1000),
    }
    encoder = dramatiq.get_encoder()
    if type(encoder) is JSONEncoder:
        # What Message(**fields).encode() writes (its fields in order, compact), without
        # making the Message (~5 us of a ~170 us enqueue); text as UTF-8, not \u escapes
        # (dramatiq's decoder reads both): a CJK text takes half the bytes, an emoji a third.
        try:
            data = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("job holds a string that is not valid unicode text (a lone surrogate)") from None
        except (TypeError, ValueError) as exc:  # e.g. a Decimal in an item given as is
            # json's messages name a type or a rule, never a value
            raise ValidationError(f"job is not JSON-serializable: {exc}") from None
    else:  # another global encoder: the message encodes itself
        data = dramatiq.Message(**fields).encode()
    if len(data) > max_job_bytes:
        raise ValidationError(
            f"job is {len(data)} bytes encoded, the limit (max_job_bytes) is {max_job_bytes}"
        )
    return redis_id, data


def failure_json(job_id: str, record_ids: list[str], error: str) -> str:
    return json.dumps({"job_id": job_id, "record_ids": record_ids, "error": error})


def failure_from_json(raw: Any, job_id: str | None = None) -> FailedJob:
    """A failure record (:func:`failure_json`) as a :class:`FailedJob`. ``job_id``: the
    hash field it was read under, which names the job (the record's own ``job_id`` is
    the same when a worker wrote it; it is used only without the field). A
    record of the wrong shape (forged, corrupted) is still a failure of that job, never
    an error of the drain reading it (it made every drain of its producer raise)."""
    try:
        data = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
    except (ValueError, TypeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        data = {}
    named = data.get("job_id")
    ids = data.get("record_ids")
    error = data.get("error")
    return FailedJob(
        job_id=job_id or (named if isinstance(named, str) else "?"),
        record_ids=[i for i in ids if isinstance(i, str)] if isinstance(ids, list) else [],
        error=error if isinstance(error, str) else "failed (its failure record is unreadable)",
    )


# --------------------------------------------------------------------------- encode job results
__all__ += ["RESULT_TTL_MS", "needs_flow", "result_key"]

#: Lifetime of a job's ``ns:results:<job>`` hash (ms).
RESULT_TTL_MS = 3_600_000


def needs_flow(flow: Any) -> bool:
    """Whether an item's ``flow`` entry asks for CrewAI's EncodingFlow: fields to
    infer, or consolidation on (``consolidation_threshold`` < 1, default 0.85 as in
    CrewAI). The entry carries CrewAI's settings with CrewAI's defaults: one without
    ``consolidation_threshold`` (only a batch-dedup threshold, say) asks for
    consolidation at 0.85. The fast path takes the rest: no entry, or no inference
    and ``consolidation_threshold`` >= 1 (``QueuedMemory``'s fast-path entry)."""
    if not flow:
        return False
    if not isinstance(flow, Mapping):
        return True  # let the flow path reject it
    if flow.get("infer"):
        return True
    try:
        return float(flow.get("consolidation_threshold", 0.85)) < 1.0
    except (TypeError, ValueError):
        return True
