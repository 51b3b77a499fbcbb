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
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from memworker.store.validate import FLAT_TYPES, check_nesting, scope_ancestors

__all__ = [
    "PUBLIC_TOKEN",
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
