"""LangGraph's long-term memory on Valkey, write-behind: :class:`QueuedStore`.

``QueuedStore`` is a ``langgraph.store.base.BaseStore`` (the ``langgraph`` extra).
A put is enqueued (durably, as :class:`~memworker.queue.MemoryQueue` does) and the
call returns; memworker's workers embed the configured fields in batches and commit.
Any read by the same store first waits for its own pending puts (the drain
barrier), so a ``get`` right after a ``put`` sees it.

How LangGraph's model maps onto the store (:class:`~memworker.store.ValkeyStore`):

- A namespace ``("users", "u1")`` is the scope ``/langgraph/users/u1`` (each label
  percent-encoded, so no label can split or escape its place; ``langgraph`` is the
  root label LangGraph itself reserves), and the category ``users/u1`` (what
  ``list_namespaces`` reads in one call).
- A key is a record id derived from the namespace and the key (a hash), so a put of
  the same key replaces the same record.
- The value's top-level fields are metadata keys ``=<field>`` (JSON: types kept), so
  equality filters run in the query through the store's filter tokens; ``key`` and
  ``ttl`` (minutes) are bookkeeping keys.
- Each put carries a version (microseconds, strictly increasing in a process): a
  later put of a key is never overwritten by an earlier one, whatever order the
  workers commit them in (``lua/store.lua``). A delete is versioned too, applied at
  once, and leaves a tombstone so that an earlier put still in the queue cannot
  bring the item back.
- TTL: an item with a TTL has an expiry (ms) in ``{ns}:expiry``; reads hide it once
  due, and the workers' sweep deletes it (:mod:`memworker.worker.sweep`).

Design notes and limits: ``docs/langgraph.md``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import numbers
import re
import threading
import time
import uuid
from time import monotonic as _monotonic
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import numpy as np

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    NotProvided,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from memworker.queue.group import AsyncGroupCommit, GroupCommit
from memworker.errors import ConfigError, JobFailedError, ValidationError, shown
from memworker.queue.jobs import ENCODE_ACTOR, build_message, check_timeout, embed_items, save_items
from memworker.keys import LANGGRAPH_ROOT
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.store import ValkeyStore
from memworker.store.jsontext import json_text
from memworker.store.tokens import float_range
from memworker.worker.clock import offset_ms
from memworker.store.validate import (
    MAX_CATEGORY_LENGTH,
    MAX_CONTENT_BYTES,
    MAX_SCOPE_DEPTH,
    MAX_SWEEP_MS,
    check_metadata,
    check_nesting,
    check_unicode,
)

__all__ = ["ROOT_SCOPE", "QueuedStore"]

#: Scope under which every LangGraph item lives.
ROOT_SCOPE = LANGGRAPH_ROOT
#: Most results one store search returns (the store's limit).
_MAX_K = 10_000
#: Most labels of a namespace (the store's scope depth, less the root's level).
MAX_LABELS = MAX_SCOPE_DEPTH - 1
#: Most characters of a put's key (kept in its record's metadata, beside the value).
MAX_KEY_LENGTH = 4096
#: Most puts of concurrent callers sent as one job.
GROUP_LIMIT = 64
#: Records read per page by a search without a query.
_PAGE = 500
#: Metadata keys: ``=`` + a value field; and the bookkeeping keys.
_FIELD = "="
_KEY = "key"
_TTL = "ttl"
#: Operators of a filter (LangGraph's).
_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})
#: Filter values the store's tokens compare as JSON does (pushed into the query).
_TOKEN_TYPES = (str, int, float, bool, type(None), list)

T = TypeVar("T")

_clock_lock = threading.Lock()
_clock_last = 0


def next_version() -> int:
    """A version for a put or delete: the time in microseconds, strictly increasing
    within the process (two puts of a key from one process never tie)."""
    global _clock_last
    with _clock_lock:
        now = time.time_ns() // 1000
        _clock_last = now if now > _clock_last else _clock_last + 1
        return _clock_last


def record_id(namespace: Sequence[str], key: str) -> str:
    """The record id of an item: a hash of its namespace and key (the BLAKE2b of the
    JSON text ``[[label, ...], key]``)."""
    raw = _cached(_id_head, namespace) + _json(key) + "]"
    return "lg" + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _cached(fn: Callable[[tuple[str, ...]], T], namespace: Sequence[str]) -> T:
    """``fn(namespace)``, cached: an agent puts into a few namespaces over and over.
    Only labels of type ``str`` exactly are cached (a subclass could hash and compare
    as another namespace's labels)."""
    labels = tuple(namespace)
    if all(type(label) is str for label in labels):
        return fn(labels)
    return fn.__wrapped__(labels)  # type: ignore[attr-defined,no-any-return]


@functools.lru_cache(maxsize=4096)
def _id_head(namespace: tuple[str, ...]) -> str:
    return "[" + _json(list(namespace)) + ","


@functools.lru_cache(maxsize=4096)
def _placement(namespace: tuple[str, ...]) -> tuple[str, str]:
    """The category path of a namespace (labels percent-encoded, joined with ``/``)
    and its scope (the path below :data:`ROOT_SCOPE`)."""
    if len(namespace) > MAX_LABELS:
        raise ValidationError(f"namespace has {len(namespace)} labels, the limit is {MAX_LABELS}")
    for i, label in enumerate(namespace):
        if not isinstance(label, str) or not label:
            # LangGraph refuses it first; kept here too: "" would fold ("t", "") into ("t",)
            raise ValidationError(f"namespace label {i} must be a non-empty string")
        if not label.isascii():
            try:
                label.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError(f"namespace label {i} is not valid unicode text") from None
    path = "/".join(quote(label, safe="") for label in namespace)
    return path, ROOT_SCOPE + ("/" + path if namespace else "")


#: Room kept in a job for a trace context (W3C traceparent, 55 characters, and
#: tracestate, at most 512), beside the rest of the job's envelope (measured per store:
#: 326 bytes with a default producer id).
_TRACE_ROOM = 640


class _OneByOne:
    """A group over a job's size, sent one job per put: :meth:`next` gives the item to
    send (``None``: done), :meth:`told` the error that refused it (a ``ValidationError``,
    or the server's: lost, full) or ``None``; :attr:`results` holds each item's verdict,
    so one caller's failed put fails that caller only and the others are told their
    own. Per key, the latest version goes first; if it fails, the next one (which it
    would have replaced) goes instead, and so on."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._items = items
        versions: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            versions.setdefault(item["id"], []).append(item)
        self._order = [sorted(group, key=lambda i: -i["ver"]) for group in versions.values()]
        self._verdict: dict[int, Exception | None] = {}
        self._current: dict[str, Any] | None = None

    def next(self) -> dict[str, Any] | None:
        while self._order and not self._order[0]:
            self._order.pop(0)
        self._current = self._order[0].pop(0) if self._order else None
        return self._current

    def told(self, error: Exception | None) -> None:
        assert self._current is not None
        self._verdict[id(self._current)] = error
        if error is None:
            self._order.pop(0)  # accepted: the key's older versions are superseded

    @property
    def results(self) -> list[Exception | None]:
        return [self._verdict.get(id(item)) for item in self._items]


def _named(item: dict[str, Any], exc: Exception) -> Exception:
    """A put's ``ValidationError`` from the queue (e.g. a job over ``max_job_bytes``)
    naming the put's key; any other error as it is."""
    key = item.get("metadata", {}).get(_KEY)
    if not isinstance(exc, ValidationError) or key is None or str(exc).startswith("put of "):
        return exc
    return _put_error(key, str(exc))


def _with(verdicts: list[Exception | None], refused: dict[int, Exception]) -> list[Exception | None]:
    """``verdicts`` with the refusals of ``refused`` (by position) in place of ``None``."""
    return [refused.get(n) if v is None else v for n, v in enumerate(verdicts)]


def _latest(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items of a group commit, one per record id: its latest version."""
    latest: dict[str, dict[str, Any]] = {}
    for item in items:
        held = latest.get(item["id"])
        if held is None or item["ver"] > held["ver"]:
            latest[item["id"]] = item
    return list(latest.values())


def namespace_path(namespace: Sequence[str]) -> str:
    """Labels percent-encoded and joined with ``/`` (the category; the scope below
    :data:`ROOT_SCOPE`)."""
    return _cached(_placement, namespace)[0]


def _field_path(field: str) -> tuple[str, str | list[str]]:
    """A field path and its tokens for ``get_text_at_path``: ``"$"`` (the whole value)
    stays ``"$"`` (its tokens, ``["$"]``, would name a field called "$")."""
    return field, field if field == "$" else tokenize_path(field)


def _unique_paths(fields: Sequence[str]) -> list[tuple[str, str | list[str]]]:
    """Each field path once (:func:`_field_path`), in the order first given: by its
    text, then by its tokens (``t[0]`` and ``t[00]`` read the same element)."""
    parsed = (_field_path(f) for f in dict.fromkeys(fields))
    return list({_path_key(tokens): (f, tokens) for f, tokens in parsed}.values())


def _path_key(tokens: str | list[str]) -> object:
    """A field path's tokens as a dict key, the same for spellings of one index
    (``[0]``, ``[00]``, ``[ 0 ]``: ``get_text_at_path`` reads them all as element 0)."""
    if isinstance(tokens, str):
        return tokens
    return tuple(_index_token(t) for t in tokens)


#: An index as ``int()`` reads it (LangGraph's path reader does): a sign, decimal
#: digits (any script's), single underscores between them.
_INDEX = re.compile(r"([+-]?)(\d+(?:_\d+)*)")


def _index_token(token: str) -> str:
    """An index token written one way: ``[00]``, ``[+0]``, ``[0_0]``, ``[-0]`` ->
    ``[0]``. An index past 19 digits (leading zeros aside) stays as written: no list
    is that long, and ``int()`` of 4,300 digits and more raises."""
    if not (token.startswith("[") and token.endswith("]")):
        return token
    index = _INDEX.fullmatch(token[1:-1].strip())
    if index is None:
        return token
    digits = index[2].replace("_", "").lstrip("0") or "0"
    if len(digits) > 19:
        return token
    return f"[{int(('-' if index[1] == '-' else '') + digits)}]"


def namespace_scope(namespace: Sequence[str]) -> str:
    return _cached(_placement, namespace)[1]


def _namespace_of(path: str) -> tuple[str, ...]:
    return tuple(unquote(label) for label in path.split("/"))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


#: A value field the item does not have: equal to nothing (not even ``None``).
_MISSING: Any = object()


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON compares: ``1 == 1.0``, ``true != 1``, objects by their pairs."""
    if a is _MISSING or b is _MISSING:
        return False
    a_bool, b_bool = isinstance(a, (bool, np.bool_)), isinstance(b, (bool, np.bool_))
    if a_bool or b_bool:  # numpy's bool is a bool too, never the number 1 or 0
        return a_bool and b_bool and bool(a) == bool(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, list, tuple)) or isinstance(b, (dict, list, tuple)):
        return False
    return bool(a == b)


def _check_key_text(key: str) -> None:
    """A put's key is valid unicode text (a lone surrogate cannot be stored as JSON)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"put of {shown(key)}: key is not valid unicode text (a lone surrogate)") from None


def _number(value: Any) -> int | float | None:
    """A number as it is (Python compares ints and floats exactly; ``float()`` of an
    int past ~1.8e308 would raise), or ``None``. Another kind of number (a numpy
    integer or float, a ``Fraction``: what pandas or numpy code hands over) as the
    ``int`` or ``float`` it equals; a bool (numpy's too) is no number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _apply(value: Any, operator: str, operand: Any) -> bool:
    if operator not in _OPERATORS:  # check_filter refuses it first
        raise ValidationError(f"unsupported operator {shown(operator)}")
    if operator == "$eq":
        return _json_equal(value, operand)
    if operator == "$ne":
        return not _json_equal(value, operand)
    a, b = _number(value), _number(operand)
    if a is None or b is None:
        # Strings order as strings; anything else (a missing field, mixed types) fails.
        if isinstance(value, str) and isinstance(operand, str):
            a_s, b_s = value, operand
            return {"$gt": a_s > b_s, "$gte": a_s >= b_s, "$lt": a_s < b_s, "$lte": a_s <= b_s}[
                operator
            ]
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[operator]


def _matches(value: Any, condition: Any) -> bool:
    """Does a value field meet one filter condition (LangGraph's semantics: a dict with
    ``$`` operators, a dict matched field by field, else equality as JSON)."""
    if isinstance(condition, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in condition):
            return all(_apply(value, op, operand) for op, operand in condition.items())
        if not isinstance(value, dict):
            return False
        return all(_matches(value.get(k, _MISSING), v) for k, v in condition.items())
    if isinstance(condition, (list, tuple)) and _holds_dict(condition):
        # element by element, as LangGraph's stores do: a dict in it matches field by
        # field (or applies its operators)
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(condition)
            and all(_matches(v, c) for v, c in zip(value, condition))
        )
    return _json_equal(value, condition)


def _holds_dict(value: list[Any] | tuple[Any, ...]) -> bool:
    """Whether a list (at any depth of lists; its nesting is bounded by
    ``check_nesting``) holds a dict."""
    return any(
        isinstance(v, dict) or (isinstance(v, (list, tuple)) and _holds_dict(v)) for v in value
    )


def check_filter(
    flt: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[Any, bool, Any, bool]]]:
    """Split a filter into what the query evaluates (equality on whole values through
    the store's metadata tokens; number ranges through its range tokens) and what is
    checked on each candidate: every condition is checked on candidates too (exact
    semantics), ``$ne``, string ranges and nested dicts only there.

    Raises:
        ValidationError: Not a mapping, a key that is not a string, an unknown operator.
    """
    if flt is None:
        return {}, {}, {}
    if not isinstance(flt, dict):
        raise ValidationError(f"filter must be a mapping, got {type(flt).__name__}")
    try:
        check_nesting(flt, "filter")  # bounded before any recursion over it
    except ValidationError:
        for key, condition in flt.items():  # name the field that is too deep or too big
            check_nesting({key: condition}, f"filter[{shown(key)}]")
        raise
    push: dict[str, Any] = {}
    ranges: dict[str, tuple[Any, bool, Any, bool]] = {}
    for key, condition in flt.items():
        if not isinstance(key, str):
            raise ValidationError("filter keys must be strings")
        check_unicode(key, f"filter key {shown(key)}")
        _check_condition(condition, f"filter[{shown(key)}]")
        if not (condition is None or type(condition) in (int, float, bool)):
            check_unicode(json.dumps(condition, ensure_ascii=False, default=str), f"filter[{shown(key)}]")
        if isinstance(condition, dict) and any(
            isinstance(k, str) and k.startswith("$") for k in condition
        ):
            if "$eq" in condition and _pushable(condition["$eq"]):
                push[_FIELD + key] = condition["$eq"]
            bounds = _bounds(condition, key)
            if bounds is not None:
                ranges[_FIELD + key] = bounds
        elif _pushable(condition):
            push[_FIELD + key] = condition
    return push, flt, ranges


def _check_condition(condition: Any, where: str) -> None:
    """Every operator of a condition, at any depth below plain dicts, is one LangGraph
    documents (the filter's nesting is bounded by ``check_nesting`` first)."""
    if isinstance(condition, (list, tuple)):
        for i, element in enumerate(condition):  # matched element by element (_matches)
            _check_condition(element, f"{where}[{i}]")
        return
    if not isinstance(condition, dict):
        return
    if any(isinstance(k, str) and k.startswith("$") for k in condition):
        unknown = [k for k in condition if k not in _OPERATORS]
        if unknown:
            raise ValidationError(
                f"{where} has an unsupported operator {shown(unknown[0])}; "
                f"supported: {', '.join(sorted(_OPERATORS))}"
            )
        return
    for k, v in condition.items():
        if not isinstance(k, str):
            raise ValidationError(f"{where}: filter keys must be strings")
        _check_condition(v, f"{where}[{shown(k)}]")


def _pushable(value: Any) -> bool:
    """Whether equality to ``value`` goes into the query as a metadata token: a JSON
    scalar or list (infinity, NaN or an object in it are not JSON, and no stored value
    equals them: the candidates' exact check finds none, on either path)."""
    if not isinstance(value, _TOKEN_TYPES):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        if _holds_dict(value):
            return False  # matched element by element, a dict field by field (_matches)
        try:
            json_text(value)
        except (TypeError, ValueError):
            return False
    return True


def _bounds(condition: dict[str, Any], key: str) -> tuple[Any, bool, Any, bool] | None:
    """The number range of a condition's ``$gt``/``$gte``/``$lt``/``$lte`` with number
    operands (``None``: none; string operands stay on candidates)."""
    low: Any = None
    high: Any = None
    low_in = high_in = True
    found = False
    for op, operand in condition.items():
        if op not in ("$gt", "$gte", "$lt", "$lte"):
            continue
        number = _number(operand)
        if number is None or number != number:  # NaN
            return None
        if isinstance(number, int) and not float_range(number):
            raise ValidationError(
                f"filter[{shown(key)}] {op} is an integer beyond the float64 range (about 1.8e308)"
            )
        found = True
        if op in ("$gt", "$gte"):
            inclusive = op == "$gte"
            if low is None or number > low or (number == low and not inclusive):
                low, low_in = number, inclusive
        else:
            inclusive = op == "$lte"
            if high is None or number < high or (number == high and not inclusive):
                high, high_in = number, inclusive
    # Pushed inclusive: range tokens are float64, and two numbers that round to one
    # float64 (ints past 2**53) would be cut by a strict bound; rounding keeps order,
    # so the inclusive float64 range holds every match, and the exact check that runs
    # on every candidate applies the strictness.
    return (low, True, high, True) if found else None


def _check_ttl_config(ttl: TTLConfig | None) -> TTLConfig | None:
    if ttl is None:
        return None
    if not isinstance(ttl, dict):
        raise ConfigError(f"ttl must be a TTLConfig dict, got {type(ttl).__name__}")
    unknown = set(ttl) - {"default_ttl", "refresh_on_read", "sweep_interval_minutes", "omit_expired"}
    if unknown:
        raise ConfigError(f"ttl has unknown key(s): {', '.join(sorted(unknown))}")
    default = ttl.get("default_ttl")
    if default is not None:
        _check_minutes(default, "ttl['default_ttl']")
    refresh = ttl.get("refresh_on_read")
    if refresh is not None and not isinstance(refresh, bool):
        # bool("false") is True: a text would refresh every read against the setting
        raise ConfigError(f"ttl['refresh_on_read'] must be True or False, got {type(refresh).__name__}")
    sweep = ttl.get("sweep_interval_minutes")
    if sweep is not None:
        _check_minutes(sweep, "ttl['sweep_interval_minutes']")
        if sweep * 60_000 > MAX_SWEEP_MS:
            # the workers hold the namespace's sweep lock for the interval: a longer
            # one would stop its TTL and retention sweeps (MEMWORKER_SWEEP_INTERVAL's cap)
            raise ConfigError("ttl['sweep_interval_minutes'] must be at most 1440 (a day)")
    return ttl


def _check_minutes(value: Any, where: str) -> float:
    # compared, never converted first: math.isfinite(10**400) raises OverflowError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= _MAX_MINUTES:
        raise ValidationError(
            f"{where} must be a number of minutes above 0 and at most {_MAX_MINUTES:,} (1,000 years)"
        )
    return float(value)


#: Longest TTL, in minutes (1,000 years).
_MAX_MINUTES = 525_600_000


def _count(where: str, value: Any) -> int:
    """A limit, offset or depth: an integer >= 0 (a negative one would slice from the end)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValidationError(f"{where} must be an integer >= 0")
    return int(value)


log = logging.getLogger(__name__)

#: Seconds between two reads of the server's clock by a store (QueuedStore._p_now_ms).
_CLOCK_REFRESH_S = 60.0

#: A search op, checked: (pushed equalities, the candidates' conditions, ranges, limit,
#: offset, scope).
_Search = tuple[dict[str, Any], dict[str, Any], dict[str, tuple[Any, bool, Any, bool]], int, int, str]


def _naming_put(check: Callable[[list[dict[str, Any]], int], T], items: list[dict[str, Any]]) -> T:
    """``check(items, len(items))``, its ``items[i]`` error renamed for the put's key."""
    try:
        return check(items, len(items))
    except ValidationError as exc:
        found = re.match(r"items\[(\d+)\]\.?", str(exc))
        if found is None:
            raise
        key = items[int(found[1])]["metadata"][_KEY]
        raise _put_error(key, str(exc)[found.end():]) from None


def _put_error(key: str, detail: str) -> ValidationError:
    """A put's error, naming its key and its value's fields as LangGraph users know
    them: a record's metadata holds the value's fields (under ``=``) and the store's
    own entries, so ``metadata['=n']`` is ``value['n']`` and ``metadata`` the value."""
    detail = re.sub(r"^metadata\['" + re.escape(_FIELD), "value['", detail)
    detail = re.sub(r"^metadata\b", "value", detail)
    detail = re.sub(r"^content\b", "the indexed text of its value", detail)
    return ValidationError(f"put of {shown(key)}: {detail}")


def _prefix_scope(prefix: Sequence[str], where: str) -> str:
    """The scope of a namespace prefix; longer than any put's namespace may be is an
    error naming ``where``."""
    try:
        path, scope = _cached(_placement, tuple(prefix))
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None
    if len(path) > MAX_CATEGORY_LENGTH:
        raise ValidationError(
            f"{where} is {len(path)} characters percent-encoded, the limit is {MAX_CATEGORY_LENGTH}"
        )
    return scope


def _check_search(op: SearchOp) -> _Search:
    """A search op's arguments, checked (before any write of its batch)."""
    if op.query is not None:
        if not isinstance(op.query, str):
            raise ValidationError(f"search query must be a string, got {type(op.query).__name__}")
        try:
            op.query.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("search query is not valid unicode text") from None
    push, post, ranges = check_filter(op.filter)
    limit, offset = _count("search limit", op.limit), _count("search offset", op.offset)
    return push, post, ranges, limit, offset, _prefix_scope(op.namespace_prefix, "namespace_prefix")


def _check_list_namespaces(op: ListNamespacesOp) -> tuple[int, int, str]:
    """A list_namespaces op's arguments, checked; returns its limit, offset and the
    scope of its longest literal prefix."""
    limit = _count("list_namespaces limit", op.limit)
    offset = _count("list_namespaces offset", op.offset)
    if op.max_depth is not None:
        _count("list_namespaces max_depth", op.max_depth)
    prefix: tuple[str, ...] = ()
    for cond in op.match_conditions or ():
        if not isinstance(cond, MatchCondition) or cond.match_type not in ("prefix", "suffix"):
            raise ValidationError(
                f"unsupported match condition {shown(getattr(cond, 'match_type', cond))}; "
                "supported: prefix, suffix"
            )
        try:
            labels: tuple[Any, ...] | None = tuple(cond.path)
        except TypeError:
            labels = None
        if labels is None or not all(isinstance(label, str) for label in labels):
            raise ValidationError("a match condition's path must be a tuple of strings")
        for i, label in enumerate(labels):
            check_unicode(label, f"list_namespaces {cond.match_type} label {i}")
        if cond.match_type == "prefix":
            literal = []
            for label in cond.path:
                if label == "*":
                    break
                literal.append(label)
            if len(literal) > len(prefix):
                prefix = tuple(literal)
    return limit, offset, _prefix_scope(prefix, "list_namespaces prefix")


# A step of an operation: (method name, args, kwargs) on the store ("s"), the queue
# ("q"), or the query embedder ("e"); each face runs it (sync, or the async twin).
_Step = tuple[str, str, tuple[Any, ...]] | tuple[str, str, tuple[Any, ...], dict[str, Any]]
_Plan = Generator[_Step, Any, Any]


class QueuedStore(BaseStore):
    """LangGraph's ``BaseStore`` on Valkey, with write-behind puts.

    Args:
        url: Valkey URL, :class:`~memworker.settings.Settings`, or ``None``
            (``VALKEY_URL``, else the embedded server's).
        namespace: memworker namespace (key prefix, one hash slot on a cluster);
            default ``MEMWORKER_NAMESPACE`` or ``memworker``: the workers must serve it.
        index: LangGraph's ``IndexConfig``: ``dims``, ``fields`` (default ``["$"]``,
            the whole value) and ``embed``. Without ``embed`` (or ``"memworker"``)
            the workers embed with their model (the bundled one by default) and the
            store embeds queries with the same; any other ``embed`` (a LangChain
            ``Embeddings``, a function, a provider string) embeds in the agent's
            process at put time, and the save is still write-behind.
        ttl: LangGraph's ``TTLConfig``: ``default_ttl`` (minutes),
            ``refresh_on_read`` (default ``True``), ``sweep_interval_minutes`` (asks
            the workers to sweep the namespace that often).
        drain_timeout: Seconds a read waits for this store's pending puts.
        producer_id: The queue's producer id (default: one per store).
    """

    supports_ttl = True

    def __init__(
        self,
        url: str | Settings | None = None,
        *,
        namespace: str | None = None,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        drain_timeout: float = 60.0,
        producer_id: str | None = None,
    ) -> None:
        self.settings = Settings.resolve(url, namespace=namespace)
        self.ttl_config = _check_ttl_config(ttl)
        self.index_config = self._check_index(index)
        try:  # checked here: a read's drain would refuse it after the puts went out
            self.drain_timeout = check_timeout(drain_timeout)
        except ValidationError:
            raise ConfigError("drain_timeout must be None or a finite number of seconds >= 0") from None
        self.store = ValkeyStore(self.settings)
        self.queue = MemoryQueue(self.settings, producer_id=producer_id)
        # Jobs enqueued, and how many of them a finished drain covered: a read drains
        # unless a drain that started after its store's last enqueue has returned
        # (a read in one thread never skips the drain a put of another needs).
        self._enqueued = 0
        self._drained = 0
        self._count_lock = threading.Lock()
        # Concurrent single puts from many threads go out as one job (group commit).
        self._group: GroupCommit[Exception | None] = GroupCommit(self._send_group, GROUP_LIMIT)
        # ... and so do those of concurrent tasks (``aput``) of one event loop.
        self._agroup: AsyncGroupCommit[Exception | None] = AsyncGroupCommit(self._asend_group, GROUP_LIMIT)
        self._query_embedder: Any = None
        self._embed_lock = threading.Lock()
        self._sweep_set = False
        #: The server's clock less this host's (ms), and when it was read (monotonic s):
        #: what TTL expiries are stamped and checked by (_p_now_ms).
        self._clock: tuple[float, float] | None = None

    # ------------------------------------------------------------------ config
    def _check_index(self, index: IndexConfig | None) -> dict[str, Any] | None:
        if index is None:
            return None
        if not isinstance(index, dict):
            raise ConfigError(f"index must be an IndexConfig dict, got {type(index).__name__}")
        unknown = set(index) - {"dims", "embed", "fields", "ann_index_config", "distance_type"}
        if unknown:
            raise ConfigError(f"index has unknown key(s): {', '.join(sorted(unknown))}")
        dims = index.get("dims")
        if isinstance(dims, bool) or not isinstance(dims, int) or not 0 < dims <= 32_768:
            raise ConfigError(f"index['dims'] must be a positive integer, got {shown(dims)}")
        fields = index.get("fields") or ["$"]
        if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
            raise ConfigError("index['fields'] must be a list of field paths")
        embed = index.get("embed")
        local = embed is not None and embed != "memworker"
        return {
            "dims": dims,
            "fields": list(fields),
            "paths": _unique_paths(fields),
            # An embedder in the agent's process (a LangChain Embeddings), or None:
            # the workers embed.
            "embeddings": ensure_embeddings(embed) if local else None,
        }

    def __repr__(self) -> str:
        return (
            f"QueuedStore({self.settings.redacted_url()!r}, "
            f"namespace={self.settings.namespace!r})"
        )

    # ------------------------------------------------------------------ faces
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops in order of kind: puts (deduplicated: the last put of a key wins),
        then reads; results in the order of ``ops``."""
        results: list[Result] = self._run_sync(self._p_batch(list(ops)))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async :meth:`batch` (the queue's and store's async clients)."""
        results: list[Result] = await self._run_async(self._p_batch(list(ops)))
        return results

    def _run_sync(self, plan: _Plan) -> Any:
        reply: Any = None
        try:
            while True:
                target, name, args, *more = plan.send(reply)
                kwargs = more[0] if more else {}
                if target == "e":
                    reply = self._embed(*args)
                elif target == "g":
                    try:
                        reply = self._group.submit(args[0])
                    except BaseException:
                        # interrupted or failed: the group may have sent its put anyway
                        self._count_enqueued()
                        raise
                    if reply is not None:
                        raise reply  # this caller's put alone was refused
                elif target == "q" and name.startswith("enqueue"):
                    try:
                        reply = getattr(self.queue, name)(*args, **kwargs)
                    finally:
                        self._count_enqueued()  # even failed: it may be in Valkey
                else:
                    obj = self.store if target == "s" else self.queue
                    reply = getattr(obj, name)(*args, **kwargs)
        except StopIteration as done:
            return done.value

    async def _run_async(self, plan: _Plan) -> Any:
        reply: Any = None
        try:
            while True:
                target, name, args, *more = plan.send(reply)
                kwargs = more[0] if more else {}
                if target == "e":
                    reply = await self._aembed(*args)
                elif target == "g":
                    try:
                        reply = await self._agroup.submit(args[0])
                    except BaseException:
                        # cancelled while the sender task sends its put: the next read
                        # drains it (the sender counts it only once its send returns)
                        self._count_enqueued()
                        raise
                    if reply is not None:
                        raise reply  # this caller's put alone was refused
                elif target == "q" and name.startswith("enqueue"):
                    try:
                        reply = await getattr(self.queue, "a" + name)(*args, **kwargs)
                    finally:
                        self._count_enqueued()  # even failed or cancelled: it may be in Valkey
                else:
                    obj = self.store if target == "s" else self.queue
                    reply = await getattr(obj, "a" + name)(*args, **kwargs)
        except StopIteration as done:
            return done.value

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> QueuedStore:
        """The store itself: it is a handle on live clients (and their locks), which a
        copy shares, as ``copy.deepcopy`` of a ``logging.Logger`` does."""
        return self

    def close(self) -> None:
        """Close the store's and the queue's sync clients, and drop their async ones
        of event loops that are closed (``asyncio.run`` ended); a running loop's are
        closed by :meth:`aclose` (``async with``)."""
        self.store.close()
        self.queue.close()

    async def aclose(self) -> None:
        """Close the store's and the queue's clients of the running event loop."""
        await self.store.aclose()
        await self.queue.aclose()

    def __enter__(self) -> QueuedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> QueuedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    # ------------------------------------------------------------------ the plan of a batch
    def _p_batch(self, ops: list[Op]) -> _Plan:
        for op in ops:
            validate_op_namespace(op)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        deleted: set[tuple[tuple[str, ...], str]] = set()
        # Every op is checked before the first write: a bad read refuses the batch
        # before its puts and deletes are sent.
        reads: dict[int, Any] = {}
        for i, op in enumerate(ops):
            if isinstance(op, (PutOp, GetOp)) and (not isinstance(op.key, str) or not op.key):
                raise ValidationError("key must be a non-empty string")
            if isinstance(op, (GetOp, SearchOp)) and not isinstance(op.refresh_ttl, (bool, type(None))):
                # bool("false") is True: a text would refresh the TTLs it meant to keep
                raise ValidationError(
                    f"refresh_ttl must be True, False or None, got {type(op.refresh_ttl).__name__}"
                )
            if isinstance(op, PutOp):
                _check_key_text(op.key)
                puts[(tuple(op.namespace), op.key)] = op  # the later put of a key wins
                if op.value is None:
                    deleted.add((tuple(op.namespace), op.key))
            elif isinstance(op, SearchOp):
                reads[i] = _check_search(op)
            elif isinstance(op, ListNamespacesOp):
                reads[i] = _check_list_namespaces(op)
            elif not isinstance(op, GetOp):
                raise ValidationError(f"unknown store operation: {type(op).__name__}")
        if puts:
            # a put after a delete of its key in the batch makes a new item, as the two
            # calls would (its created_at now, not the deleted item's)
            fresh = {k for k in deleted if puts[k].value is not None}
            yield from self._p_put(list(puts.values()), fresh)
        if any(not isinstance(op, PutOp) for op in ops):
            yield from self._p_settle()
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            items = yield from self._p_get([op for _, op in gets])
            for (i, _), item in zip(gets, items):
                results[i] = item
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                results[i] = yield from self._p_search(op, reads[i])
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._p_list_namespaces(op, reads[i])
        return results

    def _count_enqueued(self) -> None:
        with self._count_lock:
            self._enqueued += 1

    def _send_group(self, items: list[dict[str, Any]]) -> list[Exception | None]:
        """One job for the single puts of concurrent callers (each validated alone):
        of two puts of one key, the later version goes (it would win anyway). Each
        caller gets its own put's verdict (see :class:`_OneByOne`), its key named. Counted for the
        next read's drain whatever the send's outcome, even interrupted: a job may be
        in Valkey though its caller never saw the reply."""
        unique = _latest(items)
        refused = self._superseded_too_big(items, unique)
        try:
            self.queue.enqueue_encode_items(unique)
        except ValidationError as exc:
            if len(items) == 1:  # one caller: its verdict (two of one key: one by one)
                raise _named(items[0], exc) from None
            verdicts = _OneByOne(items)
            while (item := verdicts.next()) is not None:
                try:
                    self.queue.enqueue_encode_items([item])
                except Exception as exc:  # noqa: BLE001 - this put's own verdict
                    verdicts.told(_named(item, exc))
                else:
                    verdicts.told(None)
            return _with(verdicts.results, refused)
        finally:
            self._count_enqueued()
        return _with([None] * len(items), refused)

    async def _asend_group(self, items: list[dict[str, Any]]) -> list[Exception | None]:
        """Async :meth:`_send_group` (counted even when the sending task is cancelled
        waiting for the reply)."""
        unique = _latest(items)
        refused = self._superseded_too_big(items, unique)
        try:
            await self.queue.aenqueue_encode_items(unique)
        except ValidationError as exc:
            if len(items) == 1:  # one caller: its verdict (two of one key: one by one)
                raise _named(items[0], exc) from None
            verdicts = _OneByOne(items)
            while (item := verdicts.next()) is not None:
                try:
                    await self.queue.aenqueue_encode_items([item])
                except Exception as exc:  # noqa: BLE001 - this put's own verdict
                    verdicts.told(_named(item, exc))
                else:
                    verdicts.told(None)
            return _with(verdicts.results, refused)
        finally:
            self._count_enqueued()
        return _with([None] * len(items), refused)

    def _superseded_too_big(self, items: list[dict[str, Any]], sent: list[dict[str, Any]]) -> dict[int, Exception]:
        """The puts of a group that a later put of their key replaced (not sent) and
        that are too big for a job: refused as each would be alone (a put's verdict
        must not depend on another thread putting its key at the same moment). Rare:
        only two puts of one key in one group are checked."""
        if len(sent) == len(items):
            return {}
        kept = {id(item) for item in sent}
        refused: dict[int, Exception] = {}
        for n, item in enumerate(items):
            if id(item) not in kept:
                try:
                    build_message(ENCODE_ACTOR, str(uuid.uuid4()), self.queue.producer_id, [item],
                                  self.queue.max_job_bytes, redis_id=str(uuid.uuid4()))  # fmt: skip
                except ValidationError as exc:
                    refused[n] = _named(item, exc)
        return refused

    def _p_settle(self) -> _Plan:
        """Wait for this store's pending puts (nothing to do if every job it enqueued
        was covered by a drain that has returned)."""
        with self._count_lock:
            target = self._enqueued
            if target <= self._drained:
                return
        report = yield ("q", "drain", (self.drain_timeout,))
        with self._count_lock:
            self._drained = max(self._drained, target)
        if report.failed:
            raise JobFailedError(report.failed[0])

    # ------------------------------------------------------------------ puts and deletes
    def _ttl_minutes(self, op: PutOp) -> float | None:
        """The put's TTL in minutes (``put()`` resolved the store's default into it)."""
        if op.ttl is None or isinstance(op.ttl, NotProvided):
            return None
        return _check_minutes(op.ttl, f"ttl of {shown(op.key)}")

    def _texts(self, op: PutOp, metadata: dict[str, Any]) -> str:
        """The text the workers embed for a put ("" when it is not indexed), each
        field path once; collecting stops past :data:`MAX_CONTENT_BYTES` (a value too
        big is refused as such first, then the indexed text)."""
        if self.index_config is None or op.index is False or op.value is None:
            return ""
        if op.index is None:
            paths = self.index_config["paths"]
        else:
            if isinstance(op.index, str) or not isinstance(op.index, (list, tuple)) or not all(
                isinstance(f, str) and f for f in op.index
            ):
                raise ValidationError(
                    f"index of {shown(op.key)} must be False, None or a list of field paths (strings)"
                )
            paths = _unique_paths(op.index)
        texts: list[str] = []
        size = 0
        for _, tokens in paths:
            try:
                found = get_text_at_path(op.value, tokens)
            except (TypeError, ValueError) as exc:  # json.dumps of a non-JSON leaf, a huge int
                try:
                    check_metadata(metadata)  # names the problem, as a put not indexed does
                except ValidationError as refused:
                    raise _put_error(op.key, str(refused)) from None
                raise ValidationError(
                    f"put of {shown(op.key)}: its indexed text cannot be read ({type(exc).__name__})"
                ) from None
            for text in found:
                if not text.strip():
                    continue  # a blank text is nothing to embed (the value is stored as it is)
                size += len(text) + 1  # characters <= UTF-8 bytes, and the joining newline
                if size > MAX_CONTENT_BYTES + 1:
                    try:
                        check_metadata(metadata)
                    except ValidationError as exc:
                        raise _put_error(op.key, str(exc)) from None
                    raise ValidationError(
                        f"put of {shown(op.key)}: the indexed text of its value is over "
                        f"{MAX_CONTENT_BYTES} bytes, the limit is {MAX_CONTENT_BYTES} (MAX_CONTENT_BYTES)"
                    )
                texts.append(text)
        return "\n".join(texts)

    def _p_put(self, puts: list[PutOp], fresh: set[tuple[tuple[str, ...], str]] | None = None) -> _Plan:
        """Send one batch's writes, one op per key. ``fresh``: keys whose put follows a
        delete in the batch: that delete goes first (an earlier version), so the put
        makes a new item."""
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        now_ms: int | None = None  # the server's clock, read for the first put with a TTL
        deletes: list[tuple[str, int]] = []
        cleared: list[tuple[str, int]] = []
        encode: list[dict[str, Any]] = []
        save: list[dict[str, Any]] = []
        local: list[tuple[dict[str, Any], str]] = []
        for op in puts:
            if not isinstance(op.key, str) or not op.key:
                raise ValidationError("key must be a non-empty string")
            if len(op.key) > MAX_KEY_LENGTH and op.value is not None:
                raise ValidationError(
                    f"put of {shown(op.key)}: key is {len(op.key)} characters, the limit is {MAX_KEY_LENGTH}"
                )
            rid = record_id(op.namespace, op.key)
            if op.value is not None and fresh and (tuple(op.namespace), op.key) in fresh:
                cleared.append((rid, next_version()))
            ver = next_version()
            if op.value is None:
                deletes.append((rid, ver))
                continue
            if not isinstance(op.value, dict):
                raise ValidationError(f"value of {shown(op.key)} must be a dict, got {type(op.value).__name__}")
            if not op.namespace:
                raise ValidationError(f"namespace of a put has no label (put of {shown(op.key)})")
            check_nesting(op.value, f"value of {shown(op.key)}")  # before any walk of it
            path, scope = _cached(_placement, op.namespace)
            if len(path) > MAX_CATEGORY_LENGTH:
                raise ValidationError(
                    f"namespace of {shown(op.key)} is {len(path)} characters percent-encoded, "
                    f"the limit is {MAX_CATEGORY_LENGTH}"
                )
            minutes = self._ttl_minutes(op)
            metadata: dict[str, Any] = {_KEY: op.key}
            if minutes is not None:
                metadata[_TTL] = minutes
            for field, value in op.value.items():
                if not isinstance(field, str):
                    raise ValidationError(f"value of {shown(op.key)}: field names must be strings")
                metadata[_FIELD + field] = value
            text = self._texts(op, metadata)
            item: dict[str, Any] = {
                "id": rid,
                "scope": scope,
                "categories": [path],
                "metadata": metadata,
                "created_at": now,
                "ver": ver,
            }
            if minutes is not None:
                item["ttl"] = int(minutes * 60_000)
                if now_ms is None:
                    now_ms = yield from self._p_now_ms()
                item["exp"] = now_ms + item["ttl"]
            if text and self.index_config and self.index_config["embeddings"] is None:
                encode.append({**item, "text": text})
            elif text:
                local.append((item, text))
            else:
                save.append({**item, "content": "", "embedding": None})
        # Validated whole, and cut into jobs that fit, before anything is written (or
        # sent to an embedder in this process); ids kept (their record ids).
        prepared = _naming_put(embed_items, encode) if encode else []
        for item, t in local:
            self._save_item({**item, "content": t, "embedding": None})
        if local:
            vectors = yield ("e", "", ([t for _, t in local], True))
            save.extend({**item, "content": t, "embedding": v} for (item, t), v in zip(local, vectors, strict=True))
        # (a single put goes to the group commit, whose fallback refuses only it if it
        # is too big for a job: no size estimate on the put's own path)
        # (with a delete going first, the lone put is sized here too: refused, it must
        # not have let the delete through)
        encode_jobs = self._jobs(prepared, prepared) if len(prepared) > 1 or cleared else []
        save_jobs = self._jobs(save, [self._save_item(item) for item in save])
        if cleared:  # before the puts: a tombstone older than each put, then the put
            yield ("s", "delete_versioned", (cleared,))
        if len(prepared) == 1:
            yield ("g", "", (prepared[0],))  # with other threads' puts, as one job
        else:
            for job in encode_jobs:
                yield ("q", "enqueue_encode_items", (job,))  # counted by the runner
        for job in save_jobs:
            yield ("q", "enqueue_save", (job,))  # counted by the runner
        if (encode or save) and not self._sweep_set and self.ttl_config:
            # after the puts went: a refused put records nothing
            minutes = self.ttl_config.get("sweep_interval_minutes")
            if minutes:
                yield ("s", "set_sweep_interval", (max(1, int(minutes * 60_000)),))
            self._sweep_set = True
        if deletes:
            yield ("s", "delete_versioned", (deletes,))

    @staticmethod
    def _save_item(item: dict[str, Any]) -> dict[str, Any]:
        """A put's record as its save job carries it, validated (the error names the
        put's key, not its place among the batch's saves)."""
        try:
            return save_items([item], 1)[0]
        except ValidationError as exc:
            key = item["metadata"][_KEY]
            raise _put_error(key, str(exc).removeprefix("records[0].")) from None

    @functools.cached_property
    def _envelope(self) -> int:
        """Bytes of this store's job message besides its items, with room for a trace
        context: the message of no items, as the queue builds it."""
        empty = build_message(
            ENCODE_ACTOR, str(uuid.uuid4()), self.queue.producer_id, [], 1 << 30,
            redis_id=str(uuid.uuid4()),
        )[1]  # fmt: skip
        return len(empty) + _TRACE_ROOM

    def _jobs(self, entries: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """``entries`` cut into jobs of at most ``max_items`` whose encoded items
        (``items``, one per entry) fit ``max_job_bytes``.

        Raises:
            ValidationError: One put alone over ``max_job_bytes`` (naming its key).
        """
        limit = self.queue.max_job_bytes - self._envelope
        jobs: list[list[dict[str, Any]]] = []
        size = 0
        for entry, item in zip(entries, items):
            # build_message's JSON (compact, UTF-8), and a comma
            text = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
            grows = (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))) + 1
            if grows > limit:
                raise ValidationError(
                    f"put of {shown(entry['metadata'][_KEY])} is {grows} bytes as a job, the limit "
                    f"(max_job_bytes less {self._envelope} for the job's envelope) is {limit}"
                )
            if not jobs or size + grows > limit or len(jobs[-1]) >= self.queue.max_items:
                jobs.append([])
                size = 0
            jobs[-1].append(entry)
            size += grows
        return jobs

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _own(record: Any) -> bool:
        """Whether ``record`` is an item a QueuedStore put: its id is the hash of its
        namespace and key. Anything else under :data:`ROOT_SCOPE` (written through
        another API of the namespace) is never returned as an item."""
        key = (record.metadata or {}).get(_KEY)
        if not isinstance(key, str) or not record.id.startswith("lg"):
            return False
        try:
            return bool(record.id == record_id(_namespace_of(record.scope[len(ROOT_SCOPE) + 1 :]), key))
        except Exception:  # noqa: BLE001 - a scope no put makes
            return False

    def _item(self, record: Any, cls: type[Item] = Item, score: float | None = None) -> Item:
        metadata = record.metadata or {}
        value = {k[1:]: v for k, v in metadata.items() if k.startswith(_FIELD)}
        namespace = _namespace_of(record.scope[len(ROOT_SCOPE) + 1 :])
        kwargs: dict[str, Any] = dict(
            value=value,
            key=metadata.get(_KEY, ""),
            namespace=namespace,
            created_at=_utc(record.created_at),
            updated_at=_utc(record.last_accessed or record.created_at),
        )
        if cls is SearchItem:
            kwargs["score"] = score
        return cls(**kwargs)

    def _refresh(self, op_refresh: bool | None) -> bool:
        if op_refresh is not None:
            return bool(op_refresh)
        return bool((self.ttl_config or {}).get("refresh_on_read", True))

    def _p_now_ms(self) -> _Plan:
        """Now by the server's clock (ms): this host's clock plus its offset from the
        server's, read again at most every :data:`_CLOCK_REFRESH_S` (one ``TIME``).
        Expiries are stamped and checked by it: hosts whose clocks disagree (NTP off,
        a VM resumed) agree on when an item expires."""
        clock = self._clock
        if clock is None or _monotonic() - clock[1] > _CLOCK_REFRESH_S:
            before = time.time()
            server = yield ("s", "server_time_ms", ())
            after = time.time()
            if server is None:  # refused (an ACL user without TIME): this host's clock
                if clock is None:
                    log.warning(
                        "the server refused TIME: this store stamps and checks TTL expiries "
                        "by its host's clock; grant +time to its user to use the server's"
                    )
                clock = self._clock = (0.0, _monotonic())
            else:
                clock = self._clock = (offset_ms(server, before, after), _monotonic())
        return int(time.time() * 1000 + clock[0])

    def _p_live(self, records: list[Any]) -> _Plan:
        """Which records are not expired (a list of booleans)."""
        ids = [r.id for r in records if r is not None]
        if not ids:
            return [False] * len(records)
        exps = iter((yield ("s", "expiries", (ids,))))
        now = yield from self._p_now_ms()
        out = []
        for r in records:
            if r is None:
                out.append(False)
                continue
            exp = next(exps)
            out.append(exp is None or exp > now)
        return out

    def _p_touch(self, records: list[Any]) -> _Plan:
        """Refresh the TTLs of ``records``: the store sets each expiry from the TTL of
        the record stored when the refresh runs (a re-put of the key committed since
        the read keeps its own TTL); the TTL the read saw is only the fallback for a
        record stored without one (written before records kept their TTL)."""
        now = yield from self._p_now_ms()
        pairs = [
            (r.id, now + int(float(r.metadata[_TTL]) * 60_000))
            for r in records
            if isinstance((r.metadata or {}).get(_TTL), (int, float))
            and 0 < r.metadata[_TTL] <= _MAX_MINUTES  # a put's TTL (math.inf: no int)
        ]
        if pairs:
            yield ("s", "refresh_expiries", (pairs, now))

    def _p_get(self, ops: list[GetOp]) -> _Plan:
        ids = [record_id(tuple(op.namespace), op.key) for op in ops]
        records = yield ("s", "get_records", (ids,))
        live = yield from self._p_live(records)
        out: list[Item | None] = []
        touch = []
        for op, record, ok in zip(ops, records, live):
            if not ok or not self._own(record) or record.metadata.get(_KEY) != op.key:
                out.append(None)
                continue
            out.append(self._item(record))
            if self._refresh(op.refresh_ttl):
                touch.append(record)
        yield from self._p_touch(touch)
        return out

    def _p_search(self, op: SearchOp, checked: _Search) -> _Plan:
        push, post, ranges, limit, offset, scope = checked
        want = limit + offset
        hits: list[tuple[Any, float | None]] = []
        if want == 0:
            return []

        def keep(record: Any) -> bool:
            md = record.metadata or {}
            return self._own(record) and all(_matches(md.get(_FIELD + k, _MISSING), c) for k, c in post.items())

        if op.query and self.index_config is not None:
            (vector,) = yield ("e", "", ([op.query], False))
            k = min(_MAX_K, max(want, 10) * (4 if post else 1) + 8)
            while True:
                found = yield (
                    "s", "search", (vector, scope, None, push or None, k),
                    {"metadata_ranges": ranges or None},
                )  # fmt: skip
                live = yield from self._p_live([r for r, _ in found])
                hits = [(r, s) for (r, s), ok in zip(found, live) if ok and keep(r)]
                if len(hits) >= want or len(found) < k:
                    break
                if k >= _MAX_K:
                    # A filter so selective that 10,000 nearest candidates do not fill
                    # the page: score every item of the namespace that passes it.
                    hits = yield from self._p_scan(scope, keep, want, vector)
                    break
                k = min(_MAX_K, k * 4)
        else:
            hits = yield from self._p_scan(scope, keep, want)
        chosen = hits[offset:want]
        if self._refresh(op.refresh_ttl):
            yield from self._p_touch([r for r, _ in chosen])
        return [self._item(r, SearchItem, s) for r, s in chosen]

    def _p_scan(
        self, scope: str, keep: Any, want: int, vector: list[float] | None = None
    ) -> _Plan:
        """The namespace's live items that pass ``keep``, a page of records at a time:
        newest first until ``want`` are found, or, with a query ``vector``, all of
        them scored (cosine) and sorted."""
        hits: list[tuple[Any, float | None]] = []
        start = 0
        query = None if vector is None else np.asarray(vector, dtype=np.float64)
        if query is not None:
            query = query / (np.linalg.norm(query) or 1.0)
        while True:
            page = yield ("s", "list_records", (scope, _PAGE, start))
            live = yield from self._p_live(page)
            for r, ok in zip(page, live):
                if not (ok and keep(r)):
                    continue
                if query is None:
                    hits.append((r, None))
                elif r.embedding is not None and len(r.embedding):
                    v = np.asarray(r.embedding, dtype=np.float64)
                    hits.append((r, float(v @ query / (np.linalg.norm(v) or 1.0))))
            if len(page) < _PAGE or (query is None and len(hits) >= want):
                break
            start += _PAGE
        if query is not None:
            hits.sort(key=lambda h: -(h[1] or 0.0))
        return hits

    def _p_list_namespaces(self, op: ListNamespacesOp, checked: tuple[int, int, str]) -> _Plan:
        limit, offset, scope = checked
        counts = yield ("s", "list_categories", (scope,))
        namespaces = [_namespace_of(path) for path in counts]
        conditions: Sequence[MatchCondition] = op.match_conditions or ()
        namespaces = [ns for ns in namespaces if all(_does_match(c, ns) for c in conditions)]
        if op.max_depth is not None:
            namespaces = sorted({ns[: op.max_depth] for ns in namespaces})
        else:
            namespaces = sorted(namespaces)
        return namespaces[offset : offset + limit]

    # ------------------------------------------------------------------ embedding
    def _embed(self, texts: list[str], documents: bool) -> list[list[float]]:
        """Embed in this process: documents with a local ``embed`` (put), or a query
        with it or with the same model the workers use."""
        assert self.index_config is not None
        local = self.index_config["embeddings"]
        n = len(texts)  # the embedder gets its own copy: one that edits it changes nothing here
        if local is not None:
            vectors = local.embed_documents(list(texts)) if documents else [local.embed_query(texts[0])]
        else:
            vectors = [list(map(float, v)) for v in self._workers_model().encode(texts)]
        return self._checked(vectors, n)

    async def _aembed(self, texts: list[str], documents: bool) -> list[list[float]]:
        """:meth:`_embed` on the async face: a local ``embed``'s async methods (an async
        function works; LangChain runs a sync one in an executor), the workers' model
        in a thread."""
        assert self.index_config is not None
        local = self.index_config["embeddings"]
        if local is None:
            return await asyncio.to_thread(self._embed, texts, documents)
        n = len(texts)
        if documents:
            vectors = await local.aembed_documents(list(texts))
        else:
            vectors = [await local.aembed_query(texts[0])]
        return self._checked(vectors, n)

    def _checked(self, vectors: Any, n: int) -> list[list[float]]:
        """An embedder's reply as ``n`` lists of ``index['dims']`` values; anything else
        is refused before anything is written (a reply one vector short lost an item)."""
        assert self.index_config is not None
        try:
            if not isinstance(vectors, (list, tuple, np.ndarray)):  # as InMemoryStore refuses
                raise TypeError
            out: list[list[float]] = [list(v) for v in vectors]
        except TypeError:
            raise ValidationError(
                f"the index's embedder returned {type(vectors).__name__}, not a list of vectors"
            ) from None
        if len(out) != n:
            raise ValidationError(f"the index's embedder returned {len(out)} vector(s) for {n} text(s)")
        dims = self.index_config["dims"]
        for v in out:
            if len(v) != dims:
                raise ConfigError(
                    f"index['dims'] is {dims}, the embedding model gives {len(v)} dimensions"
                )
        return out

    def _workers_model(self) -> Any:
        """The workers' model in this process, for queries (made once)."""
        with self._embed_lock:
            if self._query_embedder is None:
                from memworker.worker.runtime import make_embedder

                self._query_embedder = make_embedder()
            return self._query_embedder


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """A namespace meets a prefix or suffix condition (``*`` matches any label)."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path))
    else:
        raise ValidationError(f"unsupported match type {condition.match_type!r}")
    return all(p == "*" or k == p for k, p in pairs)
