"""Records <-> hash fields, scopes, filter tokens. No I/O.

A record hash (its key holds the id) keeps readable fields (``content``, ``scope``, ``categories``
and ``metadata`` as JSON, ``importance``, ``created_at``/``last_accessed`` as epoch
seconds with exactly six decimals, ``source``), the embedding as little-endian
float32 bytes, and the *filter tokens* the vector index sees (a record is private
when its ``vis`` is not ``pub``; ``last_accessed`` is only written once it differs
from ``created_at``: fewer fields, less memory and a faster write):

- ``scope_anc``: one token for the scope and each ancestor (``/``, ``/a``, ``/a/b``);
- ``cat_t``: one token per category; ``meta_t``: one per top-level metadata pair;
- ``src_t``: the source; ``vis``: ``pub`` for a shared record, or the token of
  its source for a private one.

A token is the hex BLAKE2b digest of the kind and the value. User strings
therefore never enter a query as text: whatever a scope, category, metadata
value or source contains (``| } { \\ * => $ @ - , . /``, unicode, case), its
token is 32 characters of ``[0-9a-f]``, which no search module can misparse,
case-fold or split.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import numpy as np

from memworker.errors import ValidationError
from memworker.records import utcnow

__all__ = [
    "EncodedRecord",
    "RECORD_FIELDS",
    "WRITE_FIELDS",
    "MAX_SCOPE_LENGTH",
    "MAX_SCOPE_DEPTH",
    "MAX_METADATA_DEPTH",
    "FLOW_FIELDS",
    "check_metadata",
    "check_flow",
    "MAX_CATEGORY_LENGTH",
    "MAX_CATEGORIES",
    "MAX_CONTENT_BYTES",
    "MAX_METADATA_BYTES",
    "normalize_scope",
    "normalize_scope_prefix",
    "scope_ancestors",
    "token",
    "metadata_token",
    "visibility_token",
    "PUBLIC_TOKEN",
    "encode_record",
    "encode_records",
    "check_vectors",
    "decode_record",
    "decode_rows",
    "vector_bytes",
    "no_embedding",
    "vector_from_bytes",
    "vectors_to_float16",
    "FLOAT16_MAX",
    "format_timestamp",
    "parse_timestamp",
]

#: Longest scope accepted, in characters.
MAX_SCOPE_LENGTH = 1024
#: Most levels (path components) of a record's scope: each level is one more side-index
#: entry per record (sorted set, counters, filter token) written by every save.
MAX_SCOPE_DEPTH = 32
#: Deepest metadata accepted: nested objects and lists, the metadata object being level 1.
MAX_METADATA_DEPTH = 32
#: Longest category accepted, in characters.
MAX_CATEGORY_LENGTH = 256
#: Most categories one record may carry.
MAX_CATEGORIES = 64
#: Largest record content accepted, in UTF-8 bytes.
MAX_CONTENT_BYTES = 1 << 20
#: Largest metadata accepted, in bytes of JSON.
MAX_METADATA_BYTES = 64 * 1024
#: Token of records visible to every source.
PUBLIC_TOKEN = "pub"

_SCOPE_BAD = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ID_BAD = re.compile("[\x00-\x1f\ud800-\udfff]")
#: One encoder for every JSON field written (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _json_text(value: Any) -> str:
    """``_JSON.encode(value)``: the same text, from the C encoder built once (the
    encode method builds a new one per call, ~1-2 us of a record's encoding)."""
    if _C_ENCODER is None:  # pragma: no cover - a Python without the _json accelerator
        return _JSON.encode(value)
    if type(value) is str:
        return json.encoder.encode_basestring(value)
    # a fresh markers dict per call: circular structures raise ValueError, as in json
    return "".join(_C_ENCODER({})(value, 0))


def _c_encoder_factory() -> Any:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover
        return None
    return lambda markers: make(
        markers, _JSON.default, json.encoder.encode_basestring, None, ": ", ", ", False, False, False
    )


_C_ENCODER = _c_encoder_factory()
#: The C encoder without a circular-reference check, for a record's row: a flat list of
#: str and None built here (metadata, which users give, goes through _json_text).
_ROW_ENCODER = _C_ENCODER(None) if _C_ENCODER is not None else None


def _row_text(row: list[str | None]) -> str:
    """A record's row as JSON (same text as ``_json_text(row)``)."""
    if _ROW_ENCODER is None:  # pragma: no cover
        return _JSON.encode(row)
    return "".join(_ROW_ENCODER(row, 0))
_TOKEN_BASE = hashlib.blake2b(digest_size=16, person=b"memworker-tok1")

#: Fields read back to build a record, in this order (HMGET / FT.SEARCH RETURN).
RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "content",
    "scope",
    "categories",
    "metadata",
    "importance",
    "created_at",
    "last_accessed",
    "source",
    "vis",
    "embedding",
)


#: The values of a record's row (``EncodedRecord.row_json``), in order: the hash fields a
#: write sets besides ``embedding``, and the ``id``, which the script takes from the row
#: but does not store (it is in the key; reads fill it in).
WRITE_FIELDS: tuple[str, ...] = (
    "id",
    "content",
    "scope",
    "categories",
    "metadata",
    "importance",
    "created_at",
    "last_accessed",
    "scope_anc",
    "vis",
    "source",
    "src_t",
    "cat_t",
    "meta_t",
)
#: ``WRITE_FIELDS`` as the JSON array the write script reads first.
WRITE_FIELDS_JSON = json.dumps(list(WRITE_FIELDS))


# --------------------------------------------------------------------------- scopes
def normalize_scope(
    scope: Any, *, field: str = "scope", max_depth: int | None = MAX_SCOPE_DEPTH
) -> str:
    """A record's scope in canonical form: ``/a/b`` (root is ``/``).

    A missing leading ``/`` is added and a trailing one removed. Error messages name
    the field, never the scope itself.

    Args:
        scope: The scope.
        field: How error messages name it.
        max_depth: Most levels (``/a/b`` has 2); ``None``: no limit (read filters).

    Raises:
        ValidationError: Not a string, empty, longer than ``MAX_SCOPE_LENGTH``,
            deeper than ``max_depth`` (:data:`MAX_SCOPE_DEPTH`), an empty path
            component (``//``), or a control character.
    """
    if not isinstance(scope, str):
        raise ValidationError(f"{field} must be a string, got {type(scope).__name__}")
    if not scope:
        raise ValidationError(f"{field} must not be empty (use '/' for the root)")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise ValidationError(
            f"{field} is {len(scope)} characters, the limit is {MAX_SCOPE_LENGTH}"
        )
    if _SCOPE_BAD.search(scope):
        raise ValidationError(f"{field} must not contain control characters or lone surrogates")
    if not scope.startswith("/"):
        scope = "/" + scope
    if len(scope) > 1:
        scope = scope.rstrip("/") or "/"
    if "//" in scope:
        raise ValidationError(f"{field} must not contain an empty path component ('//')")
    if max_depth is not None and scope.count("/") > max_depth and scope != "/":
        raise ValidationError(
            f"{field} has {scope.count('/')} levels, the limit is {max_depth} (MAX_SCOPE_DEPTH)"
        )
    return scope


def normalize_scope_prefix(scope_prefix: str | None, *, field: str = "scope_prefix") -> str:
    """A read's scope filter: ``None``, ``""`` and ``"/"`` all mean the root. Its depth
    is not capped (records written before :data:`MAX_SCOPE_DEPTH` stay reachable)."""
    if scope_prefix is None:
        return "/"
    if isinstance(scope_prefix, str) and scope_prefix.strip("/") == "":
        return "/"
    return normalize_scope(scope_prefix, field=field, max_depth=None)


def scope_ancestors(scope: str) -> list[str]:
    """``/a/b`` -> ``["/", "/a", "/a/b"]``. The scope must be normalized."""
    if scope == "/":
        return ["/"]
    parts = scope.split("/")[1:]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


# --------------------------------------------------------------------------- tokens
def token(kind: str, value: str) -> str:
    """The filter token of a value: hex BLAKE2b-128 of ``kind`` and the UTF-8 value."""
    digest = _TOKEN_BASE.copy()
    digest.update(kind.encode() + b"\x00" + value.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@lru_cache(maxsize=8192)
def scope_tokens(scope: str) -> str:
    """The ``scope_anc`` field of a normalized scope: its and its ancestors' tokens."""
    return ",".join(token("s", a) for a in scope_ancestors(scope))


@lru_cache(maxsize=8192)
def category_token(category: str) -> str:
    """Token of one category (cached: categories repeat)."""
    return token("c", category)


@lru_cache(maxsize=8192)
def source_token(source: str) -> str:
    """Token of a source (cached: sources repeat)."""
    return token("u", source)


def _canonical(value: Any) -> Any:
    """Metadata value in canonical form: integral floats become ints (1.0 == 1)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def metadata_token(key: str, value: Any) -> str:
    """Token of one metadata pair; equal for values equal as JSON (``1`` and ``1.0``)."""
    if value is None or type(value) in (str, int, float, bool):
        # Scalars repeat (task ids, agent names): cached by type too, as True == 1 == 1.0
        # hash alike but 1 and 1.0 share a token while True does not.
        return _scalar_metadata_token(key, type(value), value)
    return _metadata_token(key, value)


def _metadata_token(key: str, value: Any) -> str:
    if type(value) not in _FLAT:
        # A filter's value is not validated as a record's metadata is: bound it here, so
        # _canonical and the encoder never recurse past MAX_METADATA_DEPTH.
        _check_nesting({key: value}, "metadata")
    text = json.dumps(
        [key, _canonical(value)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return token("m", text)


@lru_cache(maxsize=16384)
def _scalar_metadata_token(key: str, kind: type, value: Any) -> str:
    return _metadata_token(key, value)


@lru_cache(maxsize=4096)
def _categories_fields(categories: tuple[str, ...]) -> tuple[str, str]:
    """``categories`` JSON (as given) and the ``cat_t`` field (unique, in order)."""
    unique = dict.fromkeys(categories)
    return _json_text(list(categories)), ",".join(category_token(c) for c in unique)


def visibility_token(source: str | None) -> str:
    """The ``vis`` token of a private record of ``source`` (``None`` -> nobody's)."""
    return token("v-none", "") if source is None else token("v", source)


# --------------------------------------------------------------------------- times
def _to_utc_naive(value: Any, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{field} is not an ISO datetime") from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


_EPOCH = datetime(1970, 1, 1)


def format_timestamp(value: datetime) -> str:
    """Naive UTC datetime -> ``"<seconds>.<micros>"``: exact, and a NUMERIC value."""
    delta = value - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign = "-" if micros < 0 else ""
    seconds, rest = divmod(abs(micros), 1_000_000)
    return f"{sign}{seconds}.{rest:06d}"


def parse_timestamp(raw: bytes | str | float) -> datetime:
    """Inverse of :func:`format_timestamp` (also accepts a float sorted-set score)."""
    if isinstance(raw, float):
        return _EPOCH + timedelta(microseconds=round(raw * 1_000_000))
    text = raw.decode() if isinstance(raw, bytes) else raw
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    micros = int(whole) * 1_000_000 + int((frac + "000000")[:6])
    return _EPOCH + timedelta(microseconds=-micros if negative else micros)


# --------------------------------------------------------------------------- vectors
def vector_bytes(
    values: Any, *, field: str = "embedding", allow_zero: bool = False
) -> tuple[bytes, int]:
    """A vector as little-endian float32 bytes and its dimension.

    Args:
        values: The vector.
        field: How error messages name it.
        allow_zero: Accept a vector of zeros (a record's: stored without an embedding)
            instead of raising (a query's: cosine similarity is undefined for it).

    Raises:
        ValidationError: Empty, not numeric, or not finite; all zeros unless ``allow_zero``.
    """
    try:
        if type(values) is list and values:
            # CrewAI's embeddings are lists of floats: struct packs them ~2x faster than
            # numpy converts them.
            raw = _float32_struct(len(values)).pack(*values)
            array = np.frombuffer(raw, dtype="<f4")
        else:
            array = np.asarray(values, dtype=np.float32)
            raw = b""
    except OverflowError:
        raise ValidationError(f"{field} has a value beyond the float32 range") from None
    except (TypeError, ValueError, struct.error):
        raise ValidationError(f"{field} must be a sequence of numbers") from None
    if array.ndim != 1 or array.size == 0:
        raise ValidationError(f"{field} must be a non-empty 1-D sequence of numbers")
    # One reduction for the common case: a float64 sum of float32 values cannot overflow,
    # so a finite sum means every value is finite, and a non-zero one that not all are
    # zero. Otherwise (NaN, infinity, or a sum of exactly zero) check exactly.
    total = float(np.add.reduce(array, dtype=np.float64))
    if not (math.isfinite(total) and total != 0.0):
        if not np.isfinite(array).all():
            raise ValidationError(f"{field} contains a non-finite value (NaN or infinity)")
        if not allow_zero and not np.any(array):
            raise ValidationError(f"{field} is all zeros; cosine similarity is undefined for it")
    return raw or array.astype("<f4", copy=False).tobytes(), int(array.size)


@lru_cache(maxsize=64)
def _float32_struct(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}f")


def vector_from_bytes(raw: bytes, dim: int | None = None) -> np.ndarray:
    """Stored vector bytes -> 1-D float32 array (a copy that owns its memory).

    The bytes are float32, or float16 when ``dim`` is given and they are ``2 * dim``
    bytes long (a namespace of ``vector_type="float16"``).
    """
    if dim and len(raw) == 2 * dim:
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


#: Largest magnitude a float16 vector value can hold.
FLOAT16_MAX = 65504.0


def vectors_to_float16(blob: bytes, dim: int, name_of: Callable[[int], str]) -> bytes:
    """Concatenated float32 vectors -> float16 bytes (``name_of(i)`` names the i-th
    vector in an error; called only then).

    Raises:
        ValidationError: A value beyond the float16 range, naming the vector.
    """
    values = np.frombuffer(blob, dtype="<f4").reshape(-1, dim)
    too_big = np.abs(values).max(axis=1) > FLOAT16_MAX
    if too_big.any():
        raise ValidationError(
            f"{name_of(int(np.argmax(too_big)))} has a value beyond {FLOAT16_MAX:g}, the limit "
            "of this namespace's float16 vectors"
        )
    return values.astype("<f2").tobytes()


# --------------------------------------------------------------------------- metadata, flow
#: Value types of flat metadata (no walk needed: depth 1).
_FLAT = frozenset({str, int, float, bool, type(None)})


def check_metadata(metadata: Any, field: str = "metadata") -> tuple[dict[str, Any], str]:
    """Validate a record's metadata; returns it as a dict and its JSON text.

    The nesting is checked first, without recursion (an explicit stack), so no input
    can raise ``RecursionError`` here or later (the JSON encoder, the filter tokens).

    Raises:
        ValidationError: Not a mapping; nested deeper than :data:`MAX_METADATA_DEPTH`
            (the metadata object is level 1; objects and lists count); more than
            :data:`MAX_METADATA_BYTES` of JSON; not JSON-serializable; or a key that
            is not a string. The message names the field and the limit, never a value.
    """
    if metadata is None:
        metadata = {}
    if type(metadata) is not dict:
        if not isinstance(metadata, Mapping):
            raise ValidationError(f"{field} must be a mapping")
        metadata = dict(metadata)
    for value in metadata.values():
        if type(value) not in _FLAT:
            _check_nesting(metadata, field)
            break
    try:
        metadata_json = _json_text(metadata)
        metadata_json.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValidationError(f"{field} is not JSON-serializable: {_json_problem(exc)}") from None
    if len(metadata_json) > MAX_METADATA_BYTES:
        raise ValidationError(
            f"{field} is {len(metadata_json)} bytes of JSON, the limit is {MAX_METADATA_BYTES}"
        )
    if any(not isinstance(k, str) for k in metadata):
        raise ValidationError(f"{field} keys must be strings")
    return metadata, metadata_json


def _check_nesting(metadata: dict[str, Any], field: str) -> None:
    """Walk nested objects and lists depth first with an explicit stack: deeper than
    :data:`MAX_METADATA_DEPTH` (a cycle too) or more values than the JSON size limit
    allows (each value takes at least one byte) raises, so the walk is bounded."""
    budget = MAX_METADATA_BYTES
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValidationError(
                f"{field} is nested more than {MAX_METADATA_DEPTH} levels deep, the limit "
                "(MAX_METADATA_DEPTH; objects and lists count, the metadata itself is level 1)"
            )
        children = node.values() if isinstance(node, Mapping) else node
        budget -= len(children)
        if budget < 0:
            raise ValidationError(
                f"{field} holds more values than fit in {MAX_METADATA_BYTES} bytes of JSON, "
                f"the limit is {MAX_METADATA_BYTES}"
            )
        for child in children:
            if type(child) not in _FLAT and isinstance(child, (Mapping, list, tuple)):
                stack.append((child, depth + 1))


def _json_problem(exc: Exception) -> str:
    """What the JSON encoder refused: its messages name a type or a rule, never a
    value (a lone surrogate's position aside, said here without it)."""
    if isinstance(exc, UnicodeEncodeError):
        return "a string is not valid unicode text"
    return str(exc)


#: Fields of an encode item's ``flow`` entry (built by ``QueuedMemory``; read by the
#: worker, :mod:`memworker.encoding`).
FLOW_FIELDS = frozenset(
    {"infer", "scope", "root_scope", "consolidation_threshold", "consolidation_limit",
     "batch_dedup_threshold", "default_importance"}
)  # fmt: skip
#: Fields a flow may ask the LLM to infer.
FLOW_INFERABLE = frozenset({"scope", "categories", "importance"})
#: Largest ``flow.consolidation_limit`` (existing records compared per saved item).
MAX_CONSOLIDATION_LIMIT = 1000


def _flow_number(flow: Mapping[str, Any], name: str, where: str, high: float | None) -> None:
    value = flow[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{where}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (high is not None and value > high):
        limit = f"from 0 to {high:g}" if high is not None else "finite and >= 0"
        raise ValidationError(f"{where}.{name} must be {limit}")


def check_flow(flow: Any, where: str = "flow", *, strict: bool = True) -> Mapping[str, Any]:
    """Validate an encode item's ``flow`` entry (its settings for CrewAI's EncodingFlow
    and the worker's batch dedup), each field by type and range.

    Fields (all optional): ``infer`` (a list of ``"scope"``, ``"categories"``,
    ``"importance"``), ``scope`` and ``root_scope`` (``None`` or a scope),
    ``consolidation_threshold`` and ``batch_dedup_threshold`` (finite numbers >= 0;
    1 or more turns consolidation / dedup off), ``consolidation_limit`` (an integer
    from 1 to :data:`MAX_CONSOLIDATION_LIMIT`), ``default_importance`` (0 to 1).

    Args:
        flow: The entry.
        where: How error messages name it (``items[3].flow``).
        strict: Refuse fields not in :data:`FLOW_FIELDS` (at enqueue; a worker checks
            only the fields it knows, for producers of a newer version).

    Raises:
        ValidationError: Naming the field and the limit.
    """
    if not isinstance(flow, Mapping):
        raise ValidationError(f"{where} must be a mapping")
    if strict and not FLOW_FIELDS.issuperset(flow):
        unknown = sorted(repr(k)[:64] for k in flow if k not in FLOW_FIELDS)
        raise ValidationError(f"{where} has unknown field(s): {', '.join(unknown[:5])}")
    for name in ("consolidation_threshold", "batch_dedup_threshold"):
        if name in flow:
            _flow_number(flow, name, where, None)
    if "default_importance" in flow:
        _flow_number(flow, "default_importance", where, 1.0)
    if "consolidation_limit" in flow:
        limit = flow["consolidation_limit"]
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValidationError(
                f"{where}.consolidation_limit must be an integer, got {type(limit).__name__}"
            )
        if not 1 <= limit <= MAX_CONSOLIDATION_LIMIT:
            raise ValidationError(
                f"{where}.consolidation_limit must be from 1 to {MAX_CONSOLIDATION_LIMIT}"
            )
    infer = flow.get("infer")
    if infer is not None:
        if not isinstance(infer, (list, tuple)) or not all(
            type(name) is str and name in FLOW_INFERABLE for name in infer
        ):
            raise ValidationError(
                f"{where}.infer must be a list of {', '.join(sorted(FLOW_INFERABLE))}"
            )
    for name in ("scope", "root_scope"):
        value = flow.get(name)
        if value is not None and not (isinstance(value, str) and value.strip("/") == ""):
            normalize_scope(value, field=f"{where}.{name}")
    return flow


# --------------------------------------------------------------------------- records
@dataclass(slots=True)  # not frozen: a frozen dataclass pays a setattr call per field
class EncodedRecord:
    """A validated record ready for the write script.

    Attributes:
        id: Record id.
        scope: Normalized scope.
        created_at: ``created_at`` as the sorted-set score text.
        row_json: Every hash field but ``embedding``, as a JSON array of values in
            :data:`WRITE_FIELDS` order (``null``: not written), the form the write
            script takes (the client pays per argument, the script parses arrays
            faster than objects).
        dim: Vector dimension, or 0 when the record gives no vector (none, or empty).
            A vector of zeros has its dimension (checked like any other) but no bytes.
        embedding: The embedding bytes; ``b""`` when the record has no embedding (it is
            stored without one: never returned by a search) or keeps the stored one.
        keep: The record keeps its stored embedding (an update without one).
    """

    id: str
    scope: str
    created_at: str
    row_json: str
    dim: int
    embedding: bytes = b""
    keep: bool = False

    @property
    def mode(self) -> str:
        """The write script's mask character: ``0`` write :attr:`embedding`, ``1`` keep
        the stored embedding, ``2`` store the record without one."""
        return "1" if self.keep else ("0" if self.embedding else "2")

    @property
    def fields(self) -> tuple[tuple[str, bytes | str], ...]:
        """Every hash field written, as ``(name, value)`` pairs (not the id: the key's)."""
        pairs: list[tuple[str, bytes | str]] = [
            (name, value)
            for name, value in zip(WRITE_FIELDS, json.loads(self.row_json))
            if value is not None and name != "id"
        ]
        if self.embedding:
            pairs.append(("embedding", self.embedding))
        return tuple(pairs)


_MISSING = object()
try:
    from pydantic import BaseModel as _BaseModel
except ImportError:  # pragma: no cover - pydantic comes with memworker
    _BaseModel = None  # type: ignore[assignment,misc]


def _get(record: Any, name: str, default: Any = None) -> Any:
    if type(record) is dict:
        return record.get(name, default)
    value = getattr(record, name, _MISSING)
    if value is _MISSING:
        return record.get(name, default) if isinstance(record, Mapping) else default
    return value


#: Scopes seen -> normalized (records of a batch share a few); category lists that
#: passed validation (a tuple of str). Both bounded; nothing user-visible depends on them.
_SCOPES: dict[str, str] = {}
_VALID_CATEGORIES: set[tuple[str, ...]] = set()


def no_embedding(values: Any) -> bool:
    """Whether a record's embedding stands for "none": ``None`` or an empty sequence
    (CrewAI's backends store both as a zero vector; a vector of zeros is told apart
    later, once it is known to be finite)."""
    if values is None:
        return True
    if isinstance(values, (str, bytes)):
        return False  # not a vector: vector_bytes names the error
    try:
        return len(values) == 0
    except TypeError:
        return False


def _record_vector(values: Any, where: str, check: bool = True) -> tuple[bytes, int]:
    """:func:`vector_bytes` with a fast path for CrewAI's lists of floats (the error
    path, with the field named, is vector_bytes itself). ``check=False`` leaves the
    finite and non-zero check to the caller (:func:`encode_records` does it per batch).

    A vector of zeros gives ``b""`` and its dimension: the record is stored without an
    embedding (cosine similarity is undefined for it), its dimension still checked."""
    if type(values) is list and values:
        try:
            raw = _float32_struct(len(values)).pack(*values)
        except (TypeError, ValueError, OverflowError, struct.error):
            raw = b""
        if raw:
            if not check:
                return raw, len(values)
            total = float(np.add.reduce(np.frombuffer(raw, dtype="<f4"), dtype=np.float64))
            if math.isfinite(total) and total != 0.0:
                return raw, len(values)
    raw, dim = vector_bytes(values, field=f"{where}.embedding", allow_zero=True)
    if check and not np.any(np.frombuffer(raw, dtype="<f4")):
        return b"", dim
    return raw, dim


def _getter(record: Any) -> Any:
    """``get(name, default)`` for a record: a dict, a pydantic model (its ``__dict__``
    holds every field) or any object with attributes or a mapping."""
    if type(record) is dict:
        return record.get
    if _BaseModel is not None and isinstance(record, _BaseModel):
        return record.__dict__.get
    return lambda name, default=None: _get(record, name, default)


def _check_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{where}.id must be a non-empty string")
    if len(value) > 256:
        raise ValidationError(f"{where}.id is {len(value)} characters, the limit is 256")
    if _ID_BAD.search(value):
        raise ValidationError(f"{where}.id must not contain control characters or lone surrogates")
    return value


def encode_record(
    record: Any,
    *,
    where: str = "record",
    keep_embedding: bool = False,
    validate_only: bool = False,
    check_vector: bool = True,
    require_embedding: bool | None = None,
) -> EncodedRecord | None:
    """Validate one record (a ``MemoryRecord`` or a mapping) and encode it.

    A record without an embedding (``None``, empty, or all zeros: what CrewAI's
    backends store as a zero vector) is stored without one: counted, listed and read
    like any other, never returned by a search. A vector of zeros keeps its dimension,
    which is checked like any vector's.

    Args:
        record: The record.
        where: How error messages name it (``records[3]``).
        keep_embedding: An update: a ``None`` embedding keeps the stored one (an
            empty one or zeros still mean "none").
        validate_only: Check everything, build nothing, return ``None`` (the producer
            side validates items it enqueues; the worker encodes them).
        check_vector: False leaves "finite, and zeros mean none" to the caller, which
            must then call :func:`check_vectors` (a batch is checked in one pass).
        require_embedding: Former name: ``require_embedding=False`` is
            ``keep_embedding=True``.

    Raises:
        ValidationError: Naming the field and the limit.
    """
    get = _getter(record)
    record_id = _check_id(get("id"), where)
    content = get("content")
    if not isinstance(content, str):
        raise ValidationError(f"{where}.content must be a string")
    if content.isascii():  # O(1) for str: its UTF-8 is itself
        size = len(content)
    else:
        try:
            size = len(content.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationError(f"{where}.content is not valid unicode text") from None
    if size > MAX_CONTENT_BYTES:
        raise ValidationError(f"{where}.content is {size} bytes, the limit is {MAX_CONTENT_BYTES}")
    raw_scope = get("scope", "/")
    scope = _SCOPES.get(raw_scope) if type(raw_scope) is str else None
    if scope is None:
        scope = normalize_scope(raw_scope, field=f"{where}.scope")
        if len(_SCOPES) < 8192:
            _SCOPES[raw_scope] = scope

    categories = get("categories") or []
    if type(categories) not in (list, tuple) and (
        isinstance(categories, str) or not isinstance(categories, Sequence)
    ):
        raise ValidationError(f"{where}.categories must be a list of strings")
    if len(categories) > MAX_CATEGORIES:
        raise ValidationError(
            f"{where}.categories has {len(categories)} entries, the limit is {MAX_CATEGORIES}"
        )
    try:
        checked = tuple(categories) in _VALID_CATEGORIES
    except TypeError:  # an unhashable entry: checked below
        checked = False
    for i, cat in enumerate(() if checked else categories):
        if not isinstance(cat, str) or not cat:
            raise ValidationError(f"{where}.categories[{i}] must be a non-empty string")
        if len(cat) > MAX_CATEGORY_LENGTH:
            raise ValidationError(
                f"{where}.categories[{i}] is {len(cat)} characters, the limit is {MAX_CATEGORY_LENGTH}"
            )
        try:
            cat.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{where}.categories[{i}] is not valid unicode text") from None

    metadata, metadata_json = check_metadata(get("metadata") or {}, f"{where}.metadata")

    importance = get("importance", 0.5)
    if isinstance(importance, bool) or not isinstance(importance, (int, float)):
        raise ValidationError(f"{where}.importance must be a number from 0 to 1")
    if not (math.isfinite(importance) and 0.0 <= importance <= 1.0):
        raise ValidationError(f"{where}.importance must be from 0 to 1, got {importance!r}")

    created = get("created_at") or utcnow()
    if type(created) is not datetime or created.tzinfo is not None:
        created = _to_utc_naive(created, f"{where}.created_at")
    accessed = get("last_accessed") or created
    if type(accessed) is not datetime or accessed.tzinfo is not None:
        accessed = _to_utc_naive(accessed, f"{where}.last_accessed")

    source = get("source")
    if source is not None and not isinstance(source, str):
        raise ValidationError(f"{where}.source must be a string or None")
    if source is not None and not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{where}.source is not valid unicode text") from None
    private = get("private", False)
    if type(private) is not bool:
        if not isinstance(private, np.bool_):  # ``bool("false")`` is True: no coercion
            raise ValidationError(
                f"{where}.private must be a boolean (True or False), got {type(private).__name__}"
            )
        private = bool(private)

    embedding = get("embedding")
    if require_embedding is not None:
        keep_embedding = not require_embedding
    keep = embedding is None and keep_embedding
    if no_embedding(embedding):
        vector, dim = b"", 0
    else:
        vector, dim = _record_vector(embedding, where, check_vector)

    if validate_only:
        return None
    created_text = format_timestamp(created)
    categories_json, cat_t = _categories_fields(tuple(categories))
    if len(_VALID_CATEGORIES) < 4096:
        _VALID_CATEGORIES.add(tuple(categories))
    row = [
        record_id,
        content,
        scope,
        categories_json,
        metadata_json,
        repr(float(importance)),
        created_text,
        None if accessed == created else format_timestamp(accessed),  # read back as created_at
        scope_tokens(scope),
        visibility_token(source) if private else PUBLIC_TOKEN,
        source,
        None if source is None else source_token(source),
        cat_t or None,
        ",".join([metadata_token(k, v) for k, v in metadata.items()]) if metadata else None,
    ]
    return EncodedRecord(
        id=record_id,
        scope=scope,
        created_at=created_text,
        row_json=_row_text(row),
        dim=dim,
        embedding=vector,
        keep=keep,
    )


def encode_records(
    records: Iterable[Any], *, keep_embedding: bool = False, require_embedding: bool | None = None
) -> list[EncodedRecord]:
    """Validate a whole batch before anything is written (``keep_embedding``,
    ``require_embedding``: as for :func:`encode_record`).

    Raises:
        ValidationError: The first bad record, named by index; or mixed dimensions.
        memworker.errors.DimensionMismatchError: Vectors of different lengths in one batch.
    """
    from memworker.records import dimension_mismatch

    records = records if isinstance(records, list) else list(records)
    encoded: list[EncodedRecord] = []
    try:
        for i, r in enumerate(records):
            encoded.append(
                encode_record(  # type: ignore[arg-type]
                    r, where=f"records[{i}]", keep_embedding=keep_embedding,
                    require_embedding=require_embedding, check_vector=False,
                )
            )
    except ValidationError:
        check_vectors(records, encoded)  # an earlier record's bad vector comes first
        raise
    dims = {e.dim for e in encoded if e.dim}
    if len(dims) > 1:
        first = next(e.dim for e in encoded if e.dim)
        other = next(e.dim for e in encoded if e.dim and e.dim != first)
        raise dimension_mismatch(first, other)
    check_vectors(records, encoded)
    ids = [e.id for e in encoded]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValidationError(f"records: id {dup!r} appears more than once in one batch")
    return encoded


def check_vectors(records: Sequence[Any], encoded: Sequence[EncodedRecord]) -> None:
    """Raise for the first of ``encoded`` (encoded from ``records`` with
    ``check_vector=False``) whose vector has a non-finite value; a vector of zeros
    loses its bytes (the record is stored without an embedding, its dimension kept).

    One reduction per batch: a float64 sum of float32 values cannot overflow, so a
    finite sum means a finite vector, a non-zero one a vector not all zeros; a row that
    fails that (or sums to exactly zero) is checked exactly by :func:`vector_bytes`.
    """
    rows = [i for i, e in enumerate(encoded) if e.embedding]
    if not rows:
        return
    by_dim: dict[int, list[int]] = {}
    for i in rows:
        by_dim.setdefault(encoded[i].dim, []).append(i)
    suspect: list[int] = []
    for dim, idx in by_dim.items():
        blob = b"".join([encoded[i].embedding for i in idx])
        sums = np.add.reduce(
            np.frombuffer(blob, dtype="<f4").reshape(len(idx), dim), axis=1, dtype=np.float64
        )
        bad = ~np.isfinite(sums) | (sums == 0.0)
        suspect += [idx[k] for k in np.flatnonzero(bad)]
    for i in sorted(suspect):
        where = f"records[{i}].embedding"
        raw, _ = vector_bytes(_get(records[i], "embedding"), field=where, allow_zero=True)
        if not np.any(np.frombuffer(raw, dtype="<f4")):
            encoded[i].embedding = b""


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


def decode_record(values: Sequence[Any], record_cls: type[Any], dim: int | None = None) -> Any:
    """Build a record from hash values in :data:`RECORD_FIELDS` order (``dim``: the
    namespace's vector dimension, which tells float16 from float32 bytes).

    Returns ``None`` when the hash does not exist (all values ``None``).
    """
    return None if values is None else decode_rows((values,), record_cls, dim)[0]


def decode_rows(rows: Iterable[Sequence[Any]], record_cls: type[Any], dim: int | None = None) -> list[Any]:
    """:func:`decode_record` for many rows (bytes values, as the read script returns
    them): one loop with everything bound locally, ~20% faster a page than a call a
    record; the embeddings' float lists are most of what remains."""
    make = _constructor(record_cls)
    half_width = 2 * dim if dim else -1
    out: list[Any] = []
    append = out.append
    for row in rows:
        rid, content, scope, categories, metadata, importance, created, accessed, source, vis, embedding = row
        if content is None or rid is None:
            append(None)
            continue
        created_at = _timestamp(created)
        append(
            make(
                {
                    "id": _text(rid),
                    "content": _text(content),
                    "scope": _text(scope) or "/",
                    "categories": _categories_list(categories) if categories else [],
                    "metadata": _json_object(metadata) if metadata else {},
                    "importance": float(importance) if importance else 0.5,
                    "created_at": created_at,
                    # last_accessed is written only once it differs from created_at
                    "last_accessed": created_at if accessed is None else _timestamp(accessed),
                    "embedding": (
                        np.frombuffer(embedding, dtype="<f2" if len(embedding) == half_width else "<f4").tolist()
                        if embedding
                        else None
                    ),
                    "source": _text(source),
                    "private": vis not in (None, b"pub", PUBLIC_TOKEN),
                }
            )
        )
    # The values were validated when written: pydantic's validation is skipped on the way out.
    return out


_json_decode = json.JSONDecoder().decode


def _json_object(raw: bytes | str) -> Any:
    return _json_decode(raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else raw)


def _timestamp(raw: bytes | str) -> datetime:
    """:func:`parse_timestamp` of a stored ``"<seconds>.<6 digits>"`` value, with the
    common non-negative form parsed as one integer of microseconds."""
    if isinstance(raw, bytes) and raw[-7:-6] == b"." and raw[:1] != b"-":
        return _EPOCH + timedelta(microseconds=int(raw[:-7] + raw[-6:]))
    return parse_timestamp(raw)


def _categories_list(raw: bytes | str) -> list[str]:
    return list(_categories_tuple(raw if isinstance(raw, bytes) else raw.encode()))


@lru_cache(maxsize=4096)
def _categories_tuple(raw: bytes) -> tuple[str, ...]:
    """Category lists repeat: decoded once (a fresh list is handed out each time)."""
    return tuple(json.loads(raw))


@lru_cache(maxsize=16)
def _constructor(record_cls: type[Any]) -> Any:
    """``make(fields) -> record`` for a record class, without validation.

    For a plain pydantic model whose fields are exactly the decoded ones, the
    instance is assembled directly (what ``model_construct`` does, without its
    per-field loop: ~6 us a record); a sample is checked against ``model_construct``
    first, so another pydantic version or model falls back to it.
    """
    construct = getattr(record_cls, "model_construct", None)
    if construct is None:
        return lambda fields: record_cls(**fields)

    def slow(fields: dict[str, Any]) -> Any:
        return construct(**fields)

    names = list(getattr(record_cls, "model_fields", {}))
    if (
        set(names) != set(_DECODED)
        or getattr(record_cls, "__pydantic_post_init__", None)
        or getattr(record_cls, "__pydantic_root_model__", False)
        or record_cls.model_config.get("extra") == "allow"
    ):
        return slow
    setattr_ = object.__setattr__
    new = record_cls.__new__

    in_order = names == list(_DECODED)

    def fast(fields: dict[str, Any]) -> Any:
        # ``fields`` is the caller's fresh dict: used as the instance's own when its
        # keys are already in the model's order.
        record = new(record_cls)
        setattr_(record, "__dict__", fields if in_order else {name: fields[name] for name in names})
        setattr_(record, "__pydantic_fields_set__", set(names))
        setattr_(record, "__pydantic_extra__", None)
        setattr_(record, "__pydantic_private__", None)
        return record

    sample = dict(
        id="x", content="c", scope="/", categories=["a"], metadata={"k": 1}, importance=0.5,
        created_at=datetime(2024, 1, 1), last_accessed=datetime(2024, 1, 2),
        embedding=[0.5], source=None, private=False,
    )  # fmt: skip
    try:
        a, b = fast(dict(sample)), slow(dict(sample))
        same = all(
            getattr(a, attr, None) == getattr(b, attr, None) and type(getattr(a, attr, None)) is type(getattr(b, attr, None))
            for attr in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
        ) and list(a.__dict__) == list(b.__dict__) and a == b
    except Exception:  # noqa: BLE001 - anything unexpected: the documented path
        same = False
    return fast if same else slow


_DECODED = (
    "id", "content", "scope", "categories", "metadata", "importance", "created_at",
    "last_accessed", "embedding", "source", "private",
)  # fmt: skip
