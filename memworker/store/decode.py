"""Hash rows -> records: the read direction of the codec. No I/O.

A row is a record hash's values in :data:`RECORD_FIELDS` order, as the read script,
``SORT_RO ... GET`` and ``HMGET`` return them. The values were validated when written,
so pydantic's validation is skipped on the way out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np

from memworker.store.times import parse_stored_timestamp
from memworker.store.tokens import PUBLIC_TOKEN

__all__ = ["RECORD_FIELDS", "decode_record", "decode_rows"]

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


def decode_rows(
    rows: Iterable[Sequence[Any]], record_cls: type[Any], dim: int | None = None
) -> list[Any]:
    """:func:`decode_record` for many rows (bytes values, as the read script returns
    them): one loop with everything bound locally, faster a page than a call a
    record (figures: ``benchmarks/README.md``)."""
    # a class is hashable; mypy does not take type[Any] as Hashable (lru_cache argument)
    make = _constructor(record_cls)  # type: ignore[arg-type]
    half_width = 2 * dim if dim else -1
    out: list[Any] = []
    append = out.append
    for row in rows:
        (rid, content, scope, categories, metadata, importance, created, accessed, source, vis,
         embedding) = row  # fmt: skip
        if content is None or rid is None:
            append(None)
            continue
        created_at = parse_stored_timestamp(created)
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
                    "last_accessed": (
                        created_at if accessed is None else parse_stored_timestamp(accessed)
                    ),
                    "embedding": (
                        np.frombuffer(
                            embedding, dtype="<f2" if len(embedding) == half_width else "<f4"
                        ).tolist()
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
    per-field loop); a sample is checked against ``model_construct``
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
        # object.__new__ of the model; mypy resolves type[Any].__new__ to type.__new__
        record = new(record_cls)  # type: ignore[call-overload]
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
        same = (
            all(
                getattr(a, attr, None) == getattr(b, attr, None)
                and type(getattr(a, attr, None)) is type(getattr(b, attr, None))
                for attr in (
                    "__dict__",
                    "__pydantic_fields_set__",
                    "__pydantic_extra__",
                    "__pydantic_private__",
                )
            )
            and list(a.__dict__) == list(b.__dict__)
            and a == b
        )
    except Exception:  # noqa: BLE001 - anything unexpected: the documented path
        same = False
    return fast if same else slow


_DECODED = (
    "id", "content", "scope", "categories", "metadata", "importance", "created_at",
    "last_accessed", "embedding", "source", "private",
)  # fmt: skip
