"""Records -> hash rows: the write direction of the codec. No I/O.

:func:`to_rows` validates a batch of records (``MemoryRecord`` or mappings) whole and
turns each into a :class:`Row`: the form the write script (``lua/store.lua save``)
takes. A record hash (its key holds the id: :class:`memworker.keys.Keys`) keeps
readable fields (``content``, ``scope``, ``categories`` and ``metadata`` as JSON,
``importance``, ``created_at``/``last_accessed`` as :mod:`~memworker.store.times`
timestamps, ``source``), the embedding bytes (:mod:`~memworker.store.embeddings`),
and the filter tokens the vector index sees (:mod:`~memworker.store.tokens`):

- ``scope_anc``: one token for the scope and each ancestor (``/``, ``/a``, ``/a/b``);
- ``cat_t``: one token per category; ``meta_t``: one per top-level metadata pair,
  plus range tokens for numbers under keys starting with ``=``
  (:func:`~memworker.store.tokens.range_tokens`);
- ``src_t``: the source; ``vis``: ``pub`` for a shared record, or the token of
  its source for a private one.

``last_accessed`` is only written once it differs from ``created_at`` (fewer fields,
less memory, a faster write). Three optional fields serve memworker.langgraph: ``ver``
(a version: a later one is never overwritten by an earlier one), ``exp`` (an
expiry time in ms, indexed in ``{ns}:expiry``) and ``ttl`` (the TTL in ms that
``exp`` came from, which a refresh on read applies); see ``lua/store.lua``. Rows are read back by :mod:`memworker.store.decode`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np

from memworker.errors import ValidationError, shown
from memworker.records import dimension_mismatch, utcnow
from memworker.store.embeddings import no_embedding, record_vector, vector_bytes
from memworker.store.jsontext import json_text, row_text
from memworker.store.times import format_timestamp, to_utc_naive
from memworker.store.tokens import (
    PUBLIC_TOKEN,
    MAX_RANGE_FIELDS,
    RANGE_LEVELS,
    RANGE_PREFIX,
    float_range,
    range_tokens,
    category_token,
    metadata_token,
    scope_tokens,
    source_token,
    visibility_token,
)
from memworker.store.validate import (
    MAX_CATEGORIES,
    MAX_CATEGORY_LENGTH,
    MAX_CONTENT_BYTES,
    check_id,
    check_metadata,
    check_source,
    normalize_scope,
)

__all__ = [
    "WRITE_FIELDS",
    "WRITE_FIELDS_JSON",
    "Row",
    "check_vectors",
    "to_row",
    "to_rows",
    "with_vectors",
]

#: The values of a record's row (``Row.row_json``), in order: the hash fields a
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
    "ver",
    "exp",
    "ttl",
)
#: Largest ``ver`` and ``exp`` accepted (exact in a sorted-set score, a double).
MAX_STAMP = (1 << 53) - 1
#: ``WRITE_FIELDS`` as the JSON array the write script reads first.
WRITE_FIELDS_JSON = json.dumps(list(WRITE_FIELDS))


@lru_cache(maxsize=4096)
def _categories_fields(categories: tuple[str, ...]) -> tuple[str, str]:
    """``categories`` JSON (as given) and the ``cat_t`` field (unique, in order)."""
    unique = dict.fromkeys(categories)
    return json_text(list(categories)), ",".join(category_token(c) for c in unique)


@dataclass(slots=True)  # not frozen: a frozen dataclass pays a setattr call per field
class Row:
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


def _getter(record: Any) -> Any:
    """``get(name, default)`` for a record: a dict, a pydantic model (its ``__dict__``
    holds every field) or any object with attributes or a mapping."""
    if type(record) is dict:
        return record.get
    if _BaseModel is not None and isinstance(record, _BaseModel):
        return record.__dict__.get
    return lambda name, default=None: _get(record, name, default)


def _meta_tokens(metadata: dict[str, Any]) -> str:
    """The ``meta_t`` field: a token per pair, plus range tokens of the numbers under
    keys starting with :data:`~memworker.store.tokens.RANGE_PREFIX`."""
    tokens = [metadata_token(k, v) for k, v in metadata.items()]
    for k, v in metadata.items():
        if k.startswith(RANGE_PREFIX) and isinstance(v, (int, float)) and not isinstance(v, bool):
            tokens += range_tokens(k, v)
    return ",".join(tokens)


def _stamp(value: Any, where: str) -> str | None:
    """``ver`` or ``exp``: ``None`` or an integer from 0 to :data:`MAX_STAMP`, as text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"{where} must be an integer or None")
    if not 0 <= int(value) <= MAX_STAMP:
        raise ValidationError(f"{where} must be from 0 to {MAX_STAMP}, got {int(value)}")
    return str(int(value))


def to_row(
    record: Any,
    *,
    where: str = "record",
    keep_embedding: bool = False,
    validate_only: bool = False,
    check_vector: bool = True,
    require_embedding: bool | None = None,
) -> Row | None:
    """Validate one record (a ``MemoryRecord`` or a mapping) and turn it into a :class:`Row`.

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
            side validates items it enqueues; the worker turns them into rows).
        check_vector: False leaves "finite, and zeros mean none" to the caller, which
            must then call :func:`check_vectors` (a batch is checked in one pass).
        require_embedding: Former name: ``require_embedding=False`` is
            ``keep_embedding=True``.

    Raises:
        ValidationError: Naming the field and the limit.
    """
    get = _getter(record)
    record_id = check_id(get("id"), where)
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

    categories = get("categories")
    if categories is None:  # only None is "none": 0 or "" are refused below, not read as []
        categories = []
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
                f"{where}.categories[{i}] is {len(cat)} characters, "
                f"the limit is {MAX_CATEGORY_LENGTH}"
            )
        try:
            cat.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{where}.categories[{i}] is not valid unicode text") from None

    # None (or no field) is no metadata; "", 0 or [] are refused, not read as {}.
    metadata, metadata_json = check_metadata(get("metadata"), f"{where}.metadata")
    ranged = 0
    for key, value in metadata.items():
        # the worker indexes these as float64 (range tokens): refuse here what it cannot
        if key.startswith(RANGE_PREFIX) and isinstance(value, (int, float)) and not isinstance(value, bool):
            ranged += 1
            if isinstance(value, int) and not float_range(value):
                raise ValidationError(
                    f"{where}.metadata[{shown(key)}] is an integer beyond the float64 range (about "
                    "1.8e308): a range key's number must have a float64"
                )
    if ranged > MAX_RANGE_FIELDS:
        raise ValidationError(
            f"{where}.metadata has {ranged} numbers under range keys ('{RANGE_PREFIX}...'), the "
            f"limit is {MAX_RANGE_FIELDS} (each is indexed with {RANGE_LEVELS} range tokens)"
        )

    importance = get("importance", 0.5)
    if isinstance(importance, bool) or not isinstance(importance, (int, float)):
        raise ValidationError(f"{where}.importance must be a number from 0 to 1")
    if not (0.0 <= importance <= 1.0):  # NaN fails it too; no float() of a huge int
        raise ValidationError(f"{where}.importance must be from 0 to 1")

    # Only None (or absent) is "not given": "" or 0 are refused below, naming them.
    created = get("created_at")
    if created is None:
        created = utcnow()
    if type(created) is not datetime or created.tzinfo is not None:
        created = to_utc_naive(created, f"{where}.created_at")
    accessed = get("last_accessed")
    if accessed is None:
        accessed = created
    if type(accessed) is not datetime or accessed.tzinfo is not None:
        accessed = to_utc_naive(accessed, f"{where}.last_accessed")

    source = get("source")
    check_source(source, f"{where}.source")
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
        vector, dim = record_vector(embedding, where, check_vector)

    ver = _stamp(get("ver"), f"{where}.ver")
    exp = _stamp(get("exp"), f"{where}.exp")
    ttl = _stamp(get("ttl"), f"{where}.ttl")

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
        # read back as created_at when absent; a versioned write keeps the first
        # write's created_at (lua/store.lua), so its last_accessed is always written
        None if accessed == created and ver is None else format_timestamp(accessed),
        scope_tokens(scope),
        visibility_token(source) if private else PUBLIC_TOKEN,
        source,
        None if source is None else source_token(source),
        cat_t or None,
        _meta_tokens(metadata) if metadata else None,
        ver,
        exp,
        ttl,
    ]
    return Row(
        id=record_id,
        scope=scope,
        created_at=created_text,
        row_json=row_text(row),
        dim=dim,
        embedding=vector,
        keep=keep,
    )


def to_rows(
    records: Iterable[Any], *, keep_embedding: bool = False, require_embedding: bool | None = None
) -> list[Row]:
    """Validate a whole batch before anything is written (``keep_embedding``,
    ``require_embedding``: as for :func:`to_row`).

    Raises:
        ValidationError: The first bad record, named by index; or mixed dimensions.
        memworker.errors.DimensionMismatchError: Vectors of different lengths in one batch.
    """
    if type(records) is not list:
        # One record (a mapping's keys, a model's fields), a string's characters or a
        # number are not records: named as the argument, not as records[0].id.
        if (isinstance(records, (str, bytes, bytearray, Mapping)) or hasattr(records, "content")
                or not isinstance(records, Iterable)):  # fmt: skip
            raise ValidationError(f"records must be a list of records, got {type(records).__name__}")
        records = list(records)
    encoded: list[Row] = []
    try:
        for i, r in enumerate(records):
            encoded.append(
                to_row(  # type: ignore[arg-type]
                    r,
                    where=f"records[{i}]",
                    keep_embedding=keep_embedding,
                    require_embedding=require_embedding,
                    check_vector=False,
                )
            )
    except ValidationError:
        check_vectors(records, encoded)  # an earlier record's bad vector comes first
        raise
    _check_one_dimension(encoded)
    check_vectors(records, encoded)
    _check_unique_ids(encoded)
    return encoded


def _check_one_dimension(encoded: Sequence[Row]) -> None:
    dims = {e.dim for e in encoded if e.dim}
    if len(dims) > 1:
        first = next(e.dim for e in encoded if e.dim)
        other = next(e.dim for e in encoded if e.dim and e.dim != first)
        raise dimension_mismatch(first, other)


def _check_unique_ids(encoded: Sequence[Row]) -> None:
    ids = [e.id for e in encoded]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValidationError(f"records: id {shown(dup)} appears more than once in one batch")


def with_vectors(rows: list[Row], vectors: Sequence[Any] | np.ndarray) -> list[Row]:
    """``rows`` (built by :func:`to_row` from records without an embedding, and not
    yet written) given ``vectors`` in order, then checked as :func:`to_rows` checks
    a batch: one dimension, finite values, zeros meaning none, ids unique. The worker
    validates a job's items once, when it fetches the job, and attaches the model's
    vectors here, instead of checking every record again in :func:`to_rows`.

    Raises:
        ValidationError: As :func:`to_rows` (records named by their index in ``rows``).
        memworker.errors.DimensionMismatchError: Vectors of different lengths.
    """
    if len(rows) != len(vectors):
        raise ValidationError(f"records: {len(rows)} rows for {len(vectors)} vectors")
    for i, (row, vector) in enumerate(zip(rows, vectors)):
        where = f"records[{i}]"
        if no_embedding(vector):
            row.embedding, row.dim = b"", 0
        else:
            row.embedding, row.dim = record_vector(vector, where, False)
    _check_one_dimension(rows)
    _check_vectors(rows, vectors.__getitem__)
    _check_unique_ids(rows)
    return rows


def check_vectors(records: Sequence[Any], encoded: Sequence[Row]) -> None:
    """Raise for the first of ``encoded`` (rows of ``records`` built with
    ``check_vector=False``) whose vector has a non-finite value; a vector of zeros
    loses its bytes (the record is stored without an embedding, its dimension kept).

    One reduction per batch: a float64 sum of float32 values cannot overflow, so a
    finite sum means a finite vector, a non-zero one a vector not all zeros; a row that
    fails that (or sums to exactly zero) is checked exactly by :func:`vector_bytes`.
    """
    _check_vectors(encoded, lambda i: _get(records[i], "embedding"))


def _check_vectors(encoded: Sequence[Row], embedding_of: Callable[[int], Any]) -> None:
    """:func:`check_vectors`, the embedding of ``encoded[i]`` given by ``embedding_of(i)``."""
    rows = [i for i, e in enumerate(encoded) if e.embedding]
    if not rows:
        return
    by_dim: dict[int, list[int]] = {}
    for i in rows:
        by_dim.setdefault(encoded[i].dim, []).append(i)
    suspect: list[int] = []
    for dim, idx in by_dim.items():
        blob = b"".join([encoded[i].embedding for i in idx])
        if len(idx) == 1:  # a job of one text: a scalar check, no array bookkeeping
            total = float(np.add.reduce(np.frombuffer(blob, dtype="<f4"), dtype=np.float64))
            if not (math.isfinite(total) and total != 0.0):
                suspect.append(idx[0])
            continue
        sums = np.add.reduce(
            np.frombuffer(blob, dtype="<f4").reshape(len(idx), dim), axis=1, dtype=np.float64
        )
        if np.isfinite(sums).all() and sums.all():
            continue  # the common case: every vector finite and not all zeros
        bad = ~np.isfinite(sums) | (sums == 0.0)
        suspect += [idx[k] for k in np.flatnonzero(bad)]
    for i in sorted(suspect):
        where = f"records[{i}].embedding"
        raw, _ = vector_bytes(embedding_of(i), field=where, allow_zero=True)
        if not np.any(np.frombuffer(raw, dtype="<f4")):
            encoded[i].embedding = b""
