"""One JSON encoder for every JSON text the store writes (metadata, categories, a
record's row). No I/O.

``json.dumps`` with options builds a new encoder per call; this module builds the C
encoder once and gives the same text.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_text", "row_text"]

#: One encoder for every JSON field written (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def json_text(value: Any) -> str:
    """``_JSON.encode(value)``: the same text, from the C encoder built once (the
    encode method builds a new one per call)."""
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
        markers,
        _JSON.default,
        json.encoder.encode_basestring,
        None,
        ": ",
        ", ",
        False,
        False,
        False,
    )


_C_ENCODER = _c_encoder_factory()
#: The C encoder without a circular-reference check, for a record's row: a flat list of
#: str and None built here (metadata, which users give, goes through json_text).
_ROW_ENCODER = _C_ENCODER(None) if _C_ENCODER is not None else None


def row_text(row: list[str | None]) -> str:
    """A record's row as JSON (same text as ``json_text(row)``)."""
    if _ROW_ENCODER is None:  # pragma: no cover
        return _JSON.encode(row)
    return "".join(_ROW_ENCODER(row, 0))
