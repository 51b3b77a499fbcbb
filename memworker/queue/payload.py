"""The worker's reading of a job payload: the job's identity (also from bytes that
do not decode), its items checked again before any embedding or LLM call (a crafted
payload fails here, permanently), save-job items back into records. The schema is
:mod:`memworker.queue.jobs`."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from memworker.errors import JobPayloadError, ValidationError
from memworker.queue.jobs import ID_RE, JOB_SCHEMA
from memworker.store.codec import Row, to_row
from memworker.store.validate import check_flow

__all__ = [
    "check_encode_job",
    "encode_job_rows",
    "job_identity",
    "parse_job",
    "records_from_save_job",
    "undecodable_identity",
]


def parse_job(job: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """``(job id, producer, items)`` of a job argument.

    Raises:
        JobPayloadError: Not a job of this schema.
    """
    if not isinstance(job, Mapping):
        raise JobPayloadError(f"job must be a JSON object, got {type(job).__name__}")
    if job.get("v") != JOB_SCHEMA:
        version = job.get("v")
        shown = repr(version) if type(version) is int else f"of type {type(version).__name__}"
        raise JobPayloadError(
            f"job schema version {shown} is not supported (expected {JOB_SCHEMA})"
        )
    job_id, producer, items = job.get("job"), job.get("producer"), job.get("items")
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        raise JobPayloadError(
            "job.job (the job id) must be 1 to 128 characters of ASCII letters, digits, "
            "'_', '-', '.'"
        )
    if not isinstance(producer, str) or not ID_RE.match(producer):
        raise JobPayloadError("job.producer must be a producer id")
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise JobPayloadError("job.items must be a list of objects")
    return job_id, producer, [dict(i) for i in items]


def job_identity(message_args: Any) -> tuple[str | None, str | None, list[str]]:
    """Best-effort ``(job id, producer, record ids)`` of a message, for failure records."""
    try:
        job = message_args[0]
        items = job.get("items")
        if not isinstance(items, list):
            items = []  # 5, true, a string: no ids, but the job and producer still count
        ids = [str(i.get("id")) for i in items if isinstance(i, Mapping) and i.get("id")]
        producer = job.get("producer")
        if not isinstance(producer, str) or not ID_RE.match(producer):
            producer = None
        job_id = job.get("job")
        if not isinstance(job_id, str) or not ID_RE.match(job_id):
            job_id = None  # the caller falls back to the message id
        return job_id, producer, ids
    except Exception:  # noqa: BLE001 - a malformed payload
        return None, None, []


def check_encode_job(items: list[dict[str, Any]]) -> None:
    """The worker's check of an encode job's items, before any embedding or LLM call:
    the store's checks (content, scope, categories, metadata depth and size,
    importance, private...) and the ``flow`` fields it knows. A payload that passed
    enqueue passes this; a crafted or corrupted one fails it.

    Raises:
        JobPayloadError: Naming the item, the field and the limit (permanent: the job
            is dead-lettered at once, never retried).
    """
    _check_items(items, validate_only=True)


def encode_job_rows(items: list[dict[str, Any]]) -> list[Row]:
    """:func:`check_encode_job`, and each item's row, built once, without a vector
    (:func:`memworker.store.codec.with_vectors` gives it the model's). An item that
    gives no ``created_at`` is stamped now.

    Raises:
        JobPayloadError: As :func:`check_encode_job`.
    """
    return _check_items(items, validate_only=False)  # type: ignore[return-value]


def _check_items(items: list[dict[str, Any]], *, validate_only: bool) -> list[Row | None]:
    rows: list[Row | None] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"items[{i}]"
        rid = item.get("id")
        if isinstance(rid, str):
            # before any work: a consolidation would run its deletes and updates for
            # a job whose commit then refuses the duplicate
            if rid in first:
                raise JobPayloadError(
                    f"{where}.id appears more than once in one job (as items[{first[rid]}].id)"
                )
            first[rid] = i
        try:
            rows.append(to_row(item, where=where, validate_only=validate_only))
            if item.get("flow") is not None:
                check_flow(item["flow"], f"{where}.flow", strict=False)
        except JobPayloadError:
            raise
        except ValidationError as exc:
            raise JobPayloadError(str(exc)) from None
    return rows


#: Longest job id read from an undecodable message (a hash field, never a key name).
_MAX_JOB_ID = 256


def undecodable_identity(data: Any) -> tuple[str | None, str | None, list[str]]:
    """Best-effort ``(job id, producer, record ids)`` of a message dramatiq cannot
    decode, so its producer's drain can be told it failed.

    Valid JSON that is not a dramatiq message is read like a message's ``args``.
    Otherwise (truncated bytes, invalid UTF-8, a broken item) the bytes are read as
    JSON from the start, structurally and only as deep as ``args[0]``'s members:
    dramatiq writes ``args`` third and a job writes ``job`` and ``producer`` before
    its ``items``, so both are usually found before the damage. A value is only
    ever taken from its own position in the structure: text inside another string
    (a metadata value, say) can never be mistaken for one.
    """
    raw = data if isinstance(data, (bytes, bytearray)) else str(data).encode()
    text = bytes(raw).decode("utf-8", "replace")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        message = None
    if isinstance(message, Mapping):
        job_id, producer, ids = job_identity(message.get("args"))
    else:
        job_id, producer, ids = _prefix_identity(text)
    if job_id is not None and len(job_id) > _MAX_JOB_ID:
        job_id = None
    return job_id, producer, ids


def _prefix_identity(text: str) -> tuple[str | None, str | None, list[str]]:
    """``args[0].job`` and ``args[0].producer`` read from the start of broken JSON."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    found: dict[str, Any] = {}

    def skip(pos: int, char: str | None = None) -> int:
        pos = ws.match(text, pos).end()  # type: ignore[union-attr]
        if char is not None:
            if text[pos : pos + 1] != char:
                raise ValueError(f"expected {char!r} at {pos}")
            pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
        return pos

    def members(pos: int, inner: bool) -> None:
        # pos is just after "{": read "key": value pairs in order.
        while True:
            pos = skip(pos)
            if text[pos : pos + 1] == "}":
                return
            key, pos = decoder.raw_decode(text, pos)
            if not isinstance(key, str):
                return
            pos = skip(pos, ":")
            if not inner and key == "args":
                pos = skip(pos, "[")
                members(skip(pos, "{"), True)
                return
            value, pos = decoder.raw_decode(text, pos)
            if inner and key in ("job", "producer") and isinstance(value, str):
                found[key] = value
                if len(found) == 2:
                    return
            pos = skip(pos)
            if text[pos : pos + 1] != ",":
                return
            pos += 1

    try:
        members(skip(0, "{"), False)
    except (ValueError, IndexError, RecursionError):
        pass  # the damage starts here: keep what was read before it
    producer = found.get("producer")
    if producer is not None and not ID_RE.match(producer):
        producer = None
    return found.get("job") or None, producer, []


def records_from_save_job(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Save-job items -> record mappings (embedding decoded) for ``encode_records``
    (``embedding_b64`` null: a record without an embedding)."""
    out = []
    for i, item in enumerate(items):
        if "embedding_b64" in item and item["embedding_b64"] is None:
            del item["embedding_b64"]
            item["embedding"] = None
            out.append(item)
            continue
        raw = item.pop("embedding_b64", None)
        if not isinstance(raw, str):
            raise JobPayloadError(f"items[{i}].embedding_b64 must be a base64 string or null")
        try:
            blob = base64.b64decode(raw, validate=True)
        except ValueError:
            raise JobPayloadError(f"items[{i}].embedding_b64 is not valid base64") from None
        if not blob or len(blob) % 4:
            raise JobPayloadError(f"items[{i}].embedding_b64 is not float32 bytes")
        item["embedding"] = np.frombuffer(blob, dtype="<f4")
        out.append(item)
    return out
