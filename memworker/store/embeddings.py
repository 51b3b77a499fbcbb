"""Embedding vectors <-> the bytes the store keeps (little-endian float32, or float16
in a namespace of ``vector_type="float16"``), and what counts as "no embedding".
No I/O."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from memworker.errors import ValidationError

__all__ = [
    "FLOAT16_MAX",
    "FLOAT16_TINY",
    "float32_struct",
    "no_embedding",
    "record_vector",
    "vector_bytes",
    "vector_from_bytes",
    "query_to_float16",
    "vectors_to_float16",
]


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
            # CrewAI's embeddings are lists of floats: struct packs them faster than
            # numpy converts them (figures: benchmarks/README.md).
            raw = float32_struct(len(values)).pack(*values)
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


#: Little-endian float32, the stored type (``<f4``; ``==`` also holds for native
#: float32 on a little-endian machine).
_F32 = np.dtype("<f4")


@lru_cache(maxsize=64)
def float32_struct(n: int) -> struct.Struct:
    """The struct packing ``n`` little-endian float32 values (cached per length)."""
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
#: Largest magnitude float16 rounds to zero (half its least subnormal, 2**-24).
FLOAT16_TINY = 2.0**-25


def vectors_to_float16(blob: bytes, dim: int, name_of: Callable[[int], str]) -> bytes:
    """Concatenated float32 vectors -> float16 bytes (``name_of(i)`` names the i-th
    vector in an error; called only then).

    Raises:
        ValidationError: A value beyond the float16 range, naming the vector.
    """
    values = np.frombuffer(blob, dtype="<f4").reshape(-1, dim)
    peak = np.abs(values).max(axis=1)
    too_big = peak > FLOAT16_MAX
    if too_big.any():
        raise ValidationError(
            f"{name_of(int(np.argmax(too_big)))} has a value beyond {FLOAT16_MAX:g}, the limit "
            "of this namespace's float16 vectors"
        )
    half = values.astype("<f2")
    # A vector whose every value rounds to zero in float16 would be stored as zeros
    # (cosine similarity undefined: the index scored it NaN)
    zeros = peak <= FLOAT16_TINY
    if zeros.any():
        raise ValidationError(
            f"{name_of(int(np.argmax(zeros)))} has no value of magnitude above {FLOAT16_TINY:.3g}: "
            "it would be all zeros in this namespace's float16 vectors"
        )
    return half.tobytes()


def query_to_float16(blob: bytes) -> bytes:
    """A query vector (float32 bytes, not all zeros) as float16 bytes, scaled first so
    its largest value is 1: cosine similarity does not depend on the query's length,
    and no value of any magnitude then overflows float16 or underflows it to zeros."""
    values = np.frombuffer(blob, dtype="<f4").astype(np.float64)
    scaled: bytes = (values / np.abs(values).max()).astype("<f2").tobytes()
    return scaled


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


def record_vector(values: Any, where: str, check: bool = True) -> tuple[bytes, int]:
    """:func:`vector_bytes` with a fast path for CrewAI's lists of floats (the error
    path, with the field named, is vector_bytes itself). ``check=False`` leaves the
    finite and non-zero check to the caller (:func:`to_rows` does it per batch).

    A vector of zeros gives ``b""`` and its dimension: the record is stored without an
    embedding (cosine similarity is undefined for it), its dimension still checked."""
    if type(values) is np.ndarray and values.dtype == _F32 and values.ndim == 1 and values.size:
        # A row of the worker's inference batch: its bytes as they are (~1 µs, not ~10).
        raw = values.tobytes()
        if not check:
            return raw, values.size
        total = float(np.add.reduce(values, dtype=np.float64))
        if math.isfinite(total) and total != 0.0:
            return raw, values.size
    if type(values) is list and values:
        try:
            raw = float32_struct(len(values)).pack(*values)
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
