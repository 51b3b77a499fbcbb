"""Validation of user input a record or a job carries: ids, scopes, metadata, the
encode items' ``flow`` entry, and the limits they are checked against. No I/O.

Error messages name the field and the limit, never the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from memworker.errors import ValidationError, shown
from memworker.store.jsontext import json_text

__all__ = [
    # limits
    "MAX_CATEGORIES",
    "MAX_CATEGORY_LENGTH",
    "MAX_CONSOLIDATION_LIMIT",
    "MAX_CONTENT_BYTES",
    "MAX_ID_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_SCOPE_DEPTH",
    "MAX_SCOPE_LENGTH",
    # scopes
    "normalize_scope",
    "normalize_scope_prefix",
    "scope_ancestors",
    # ids, metadata
    "FLAT_TYPES",
    "check_id",
    "check_ids",
    "check_unicode",
    "check_metadata",
    "check_page",
    "check_source",
    "MAX_SOURCE_LENGTH",
    "check_retention_days",
    "MAX_RETENTION_DAYS",
    "MAX_SWEEP_MS",
    "check_nesting",
    # flow
    "FLOW_FIELDS",
    "FLOW_INFERABLE",
    "check_flow",
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
#: Longest record id accepted, in characters.
MAX_ID_LENGTH = 256
#: Longest ``source`` (the agent or user a record belongs to; a search's ``source``
#: and ``viewer``) accepted, in characters.
MAX_SOURCE_LENGTH = 1024

# New scopes and ids refuse every C0 and C1 control character and DEL (CSI, \x9b,
# starts an escape sequence on 8-bit terminals; NEL, \x85, breaks lines in some log
# viewers) and lone surrogates. Reads, and deletes by id, take what earlier versions
# let in (DEL in ids, C1 in both), so records written then stay reachable.
_NEW_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SCOPE_READ_BAD = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ID_READ_BAD = re.compile("[\x00-\x1f\ud800-\udfff]")


# --------------------------------------------------------------------------- scopes
def normalize_scope(
    scope: object,
    *,
    field: str = "scope",
    max_depth: int | None = MAX_SCOPE_DEPTH,
    strict: bool = True,
) -> str:
    """A record's scope in canonical form: ``/a/b`` (root is ``/``).

    A missing leading ``/`` is added and a trailing one removed. Error messages name
    the field, never the scope itself.

    Args:
        scope: The scope.
        field: How error messages name it.
        max_depth: Most levels (``/a/b`` has 2); ``None``: no limit (read filters).
        strict: A scope to write: refuse the C1 controls (``\\x80``-``\\x9f``) too
            (``False``, read filters: records written before that rule stay reachable).

    Raises:
        ValidationError: Not a string, empty, longer than ``MAX_SCOPE_LENGTH``,
            deeper than ``max_depth`` (:data:`MAX_SCOPE_DEPTH`), an empty path
            component (``//``), or a control character (C0, DEL; C1 when ``strict``).
    """
    if not isinstance(scope, str):
        raise ValidationError(f"{field} must be a string, got {type(scope).__name__}")
    if not scope:
        raise ValidationError(f"{field} must not be empty (use '/' for the root)")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise ValidationError(
            f"{field} is {len(scope)} characters, the limit is {MAX_SCOPE_LENGTH}"
        )
    if (_NEW_BAD if strict else _SCOPE_READ_BAD).search(scope):
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
    return normalize_scope(scope_prefix, field=field, max_depth=None, strict=False)


def scope_ancestors(scope: str) -> list[str]:
    """``/a/b`` -> ``["/", "/a", "/a/b"]``. The scope must be normalized."""
    if scope == "/":
        return ["/"]
    parts = scope.split("/")[1:]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


# --------------------------------------------------------------------------- metadata, flow
#: Value types of flat metadata (no walk needed: depth 1).
FLAT_TYPES = frozenset({str, int, float, bool, type(None)})


def check_metadata(metadata: Any, field: str = "metadata") -> tuple[dict[str, Any], str]:
    """Validate a record's metadata; returns it as a dict and its JSON text.

    The nesting is checked first, without recursion (an explicit stack), so no input
    can raise ``RecursionError`` here or later (the JSON encoder, the filter tokens).

    Raises:
        ValidationError: Not a mapping; nested deeper than :data:`MAX_METADATA_DEPTH`
            (the metadata object is level 1; objects and lists count); more than
            :data:`MAX_METADATA_BYTES` of JSON; not JSON-serializable; or a key that
            is not a string, at any level. The message names the field and the limit,
            never a value.
    """
    if metadata is None:
        metadata = {}
    if type(metadata) is not dict:
        if not isinstance(metadata, Mapping):
            raise ValidationError(f"{field} must be a mapping")
        metadata = dict(metadata)
    for value in metadata.values():
        if type(value) not in FLAT_TYPES:
            check_nesting(metadata, field)
            break
    try:
        metadata_json = json_text(metadata)
        size = len(metadata_json) if metadata_json.isascii() else len(metadata_json.encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValidationError(f"{field} is not JSON-serializable: {_json_problem(exc)}") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationError(
            f"{field} is {size} bytes of JSON, the limit is {MAX_METADATA_BYTES}"
        )
    if any(not isinstance(k, str) for k in metadata):
        raise ValidationError(f"{field} keys must be strings")
    return metadata, metadata_json


def check_nesting(metadata: dict[str, Any], field: str) -> None:
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
        if isinstance(node, Mapping):
            children = node.values()
            if depth > 1 and any(not isinstance(k, str) for k in node):
                # JSON would turn 1 into "1" (and {1: .., "1": ..} into one pair)
                raise ValidationError(f"{field} keys must be strings, at every level (level {depth})")
        else:
            children = node
        budget -= len(children)
        if budget < 0:
            raise ValidationError(
                f"{field} holds more values than fit in {MAX_METADATA_BYTES} bytes of JSON, "
                f"the limit is {MAX_METADATA_BYTES}"
            )
        for child in children:
            if type(child) not in FLAT_TYPES and isinstance(child, (Mapping, list, tuple)):
                stack.append((child, depth + 1))


def _json_problem(exc: Exception) -> str:
    """What the JSON encoder refused: its messages name a type or a rule, never a
    value (a lone surrogate's position aside, said here without it)."""
    if isinstance(exc, UnicodeEncodeError):
        return "a string is not valid unicode text"
    return str(exc)


#: Fields of an encode item's ``flow`` entry (built by ``QueuedMemory``; read by the
#: worker, :mod:`memworker.crewai.flow`).
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
    try:
        number = float(value)
    except OverflowError:  # an int past a float's range: "not finite", not a crash
        number = math.inf
    if not math.isfinite(number) or number < 0 or (high is not None and number > high):
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
        unknown = sorted(shown(k) for k in flow if k not in FLOW_FIELDS)
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


def check_id(value: Any, where: str, *, strict: bool = True) -> str:
    """A record id: a non-empty string of at most :data:`MAX_ID_LENGTH` characters,
    without control characters (C0, DEL, C1) or lone surrogates. ``strict=False``
    (an id read back from the store, to refresh or delete) takes DEL and the C1
    controls, which earlier versions let in.

    Raises:
        ValidationError: Naming ``where``.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{where}.id must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(
            f"{where}.id is {len(value)} characters, the limit is {MAX_ID_LENGTH}"
        )
    if (_NEW_BAD if strict else _ID_READ_BAD).search(value):
        raise ValidationError(f"{where}.id must not contain control characters or lone surrogates")
    return value


def check_ids(value: Any, field: str = "record_ids") -> list[str]:
    """Record ids to look up, touch or delete: any iterable of strings but a string
    itself (whose characters would be taken as ids).

    Raises:
        ValidationError: Naming ``field`` (and the position of a bad id).
    """
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise ValidationError(
            f"{field} must be a list of id strings, got {type(value).__name__}"
        )
    ids = list(value)
    for i, rid in enumerate(ids):
        if not isinstance(rid, str):
            raise ValidationError(f"{field}[{i}] must be a string, got {type(rid).__name__}")
        check_unicode(rid, f"{field}[{i}]")
    return ids


#: A code point no UTF-8 text holds (a lone surrogate, or a pair as two code points).
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(value: str, where: str) -> str:
    """``value`` can be sent to the server (UTF-8): no surrogate code point.

    Raises:
        ValidationError: Naming ``where``.
    """
    if not value.isascii() and _SURROGATE.search(value):
        raise ValidationError(f"{where} is not valid unicode text (a lone surrogate)")
    return value


#: Largest ``limit`` / ``offset`` of a page (what the server takes: a signed 64-bit integer).
MAX_PAGE = (1 << 63) - 1


def check_page(limit: Any, offset: Any) -> tuple[int, int]:
    """A page's ``limit`` and ``offset``: integers of at most :data:`MAX_PAGE` in
    magnitude (a limit of 0 or less, or a negative offset, is an empty page, as
    CrewAI's LanceDB backend answers).

    Raises:
        ValidationError: Naming the argument and the limit.
    """
    for name, value, low in (("limit", limit, -MAX_PAGE), ("offset", offset, -MAX_PAGE)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
        if not low <= int(value) <= MAX_PAGE:
            raise ValidationError(f"{name} must be from {low} to {MAX_PAGE}")
    return int(limit), int(offset)


#: Longest retention policy, in days (100 years).
MAX_RETENTION_DAYS = 36_500
#: Longest sweep interval of a namespace, in ms (a day, as ``MEMWORKER_SWEEP_INTERVAL``).
MAX_SWEEP_MS = 86_400_000


def check_retention_days(days: Any) -> float:
    """A retention policy's days: a number above 0 and at most :data:`MAX_RETENTION_DAYS`
    (``True`` is not a day, nor is the text ``"30"``).

    Raises:
        ValidationError: Naming the limit.
    """
    if isinstance(days, (bool, np.bool_)) or not isinstance(days, (int, float)) or not 0 < days <= MAX_RETENTION_DAYS:
        raise ValidationError(f"days must be a number above 0 and at most {MAX_RETENTION_DAYS}")
    return float(days)


def check_source(source: Any, where: str) -> None:
    """A record's ``source`` or a search's ``source``/``viewer``: ``None`` or a string
    of valid unicode of at most :data:`MAX_SOURCE_LENGTH` characters.

    Raises:
        ValidationError: Naming ``where`` and the limit.
    """
    if source is None:
        return
    if not isinstance(source, str):
        raise ValidationError(f"{where} must be a string or None")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ValidationError(
            f"{where} has {len(source)} characters, the limit is {MAX_SOURCE_LENGTH}"
        )
    if not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{where} is not valid unicode text") from None
