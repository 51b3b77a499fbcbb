"""Filter tokens: what the vector index and the exact path see of scopes, categories,
metadata pairs, sources and visibility. No I/O.

A token is the hex BLAKE2b digest of the kind and the value. User strings
therefore never enter a query as text: whatever a scope, category, metadata
value or source contains (``| } { \\ * => $ @ - , . /``, unicode, case), its
token is 32 characters of ``[0-9a-f]``, which no search module can misparse,
case-fold or split. A record is private when its ``vis`` is not :data:`PUBLIC_TOKEN`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from memworker.store.validate import FLAT_TYPES, check_nesting, scope_ancestors

__all__ = [
    "PUBLIC_TOKEN",
    "RANGE_PREFIX",
    "MAX_RANGE_FIELDS",
    "RANGE_LEVELS",
    "float_range",
    "range_cover",
    "range_tokens",
    "sortable_bits",
    "category_token",
    "metadata_token",
    "scope_tokens",
    "source_token",
    "token",
    "visibility_token",
]

#: Token of records visible to every source.
PUBLIC_TOKEN = "pub"

_TOKEN_BASE = hashlib.blake2b(digest_size=16, person=b"memworker-tok1")


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
        # a class is hashable; mypy does not take type[Any] as Hashable (lru_cache argument)
        return _scalar_metadata_token(key, type(value), value)  # type: ignore[arg-type]
    return _metadata_token(key, value)


def _metadata_token(key: str, value: Any) -> str:
    if type(value) not in FLAT_TYPES:
        # A filter's value is not validated as a record's metadata is: bound it here, so
        # _canonical and the encoder never recurse past MAX_METADATA_DEPTH.
        check_nesting({key: value}, "metadata")
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


def visibility_token(source: str | None) -> str:
    """The ``vis`` token of a private record of ``source`` (``None`` -> nobody's)."""
    return token("v-none", "") if source is None else token("v", source)


# ----------------------------------------------------------------------------- ranges
#: Metadata keys starting with this get range tokens for number values (the value
#: fields of memworker.langgraph), so a range filter runs in the query on both paths.
RANGE_PREFIX = "="
#: Bits per level of a range token: 16 levels of 4 bits cover a 64-bit number.
RANGE_STEP = 4
_TOP = 64
#: Range tokens of one number (one per level).
RANGE_LEVELS = _TOP // RANGE_STEP
#: Most numbers under range keys in one record's metadata: each costs RANGE_LEVELS
#: tokens of 33 bytes in the record (and its index), so a 64 KiB value of small number
#: fields would otherwise take megabytes.
MAX_RANGE_FIELDS = 256
_MAX_BITS = (1 << 64) - 1


def sortable_bits(value: float) -> int:
    """A float64 as a 64-bit integer of the same order (``-0.0`` is ``0.0``)."""
    if value == 0:
        value = 0.0
    bits: int = struct.unpack(">Q", struct.pack(">d", float(value)))[0]
    return bits ^ _MAX_BITS if bits >> 63 else bits | (1 << 63)


def _range_token(key: str, shift: int, prefix: int) -> str:
    return token("r", f"{shift}:{prefix:x}:{key}")


def float_range(value: int) -> bool:
    """Whether an integer has a float64 (rounded): Python's ``float()`` raises
    ``OverflowError`` from about 1.8e308 on, where IEEE rounding would give infinity."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def range_tokens(key: str, value: Any) -> list[str]:
    """The range tokens of a number (not a bool; finite): one per level, the prefix
    of its sortable bits at that level. Empty for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    number = float(value)
    if not math.isfinite(number):
        return []
    bits = sortable_bits(number)
    return [_range_token(key, shift, bits >> shift) for shift in range(0, _TOP, RANGE_STEP)]


def range_cover(key: str, low: int, high: int) -> list[str]:
    """Tokens of which a number in ``[low, high]`` (sortable bits, inclusive) has
    exactly one, and no number outside has any: the range cut into aligned blocks,
    at most 2 x 15 per level (480 in all)."""
    out: list[str] = []
    shift = 0
    fan = 1 << RANGE_STEP
    while low <= high:
        if shift + RANGE_STEP >= _TOP:
            out += [_range_token(key, shift, p) for p in range(low, high + 1)]
            break
        up = (low + fan - 1) // fan  # the first whole block of the next level
        down = (high + 1) // fan - 1  # the last whole block of the next level
        if up > down:
            out += [_range_token(key, shift, p) for p in range(low, high + 1)]
            break
        out += [_range_token(key, shift, p) for p in range(low, up * fan)]
        out += [_range_token(key, shift, p) for p in range((down + 1) * fan, high + 1)]
        low, high, shift = up, down, shift + RANGE_STEP
    return out
