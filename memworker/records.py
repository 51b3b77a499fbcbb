"""Record types: CrewAI's ``MemoryRecord``/``ScopeInfo`` when crewai is installed,
equivalent pydantic models otherwise.

The choice is made on first use (:func:`record_types`), never at import time, so
importing memworker does not import crewai.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import uuid4

from pydantic import BaseModel, Field

from memworker.errors import DimensionMismatchError

__all__ = [
    "NativeMemoryRecord",
    "NativeScopeInfo",
    "record_types",
    "dimension_mismatch",
    "utcnow",
]


def utcnow() -> datetime:
    """Naive UTC now, as CrewAI's records use."""
    from datetime import timezone

    return datetime.now(timezone.utc).replace(tzinfo=None)


class NativeMemoryRecord(BaseModel):
    """A memory record; field for field the same as CrewAI's ``MemoryRecord``."""

    id: str = Field(default_factory=lambda: str(uuid4()))
    content: str
    scope: str = "/"
    categories: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    importance: float = Field(default=0.5, ge=0.0, le=1.0)
    created_at: datetime = Field(default_factory=utcnow)
    last_accessed: datetime = Field(default_factory=utcnow)
    embedding: list[float] | None = Field(default=None, exclude=True, repr=False)
    source: str | None = None
    private: bool = False


class NativeScopeInfo(BaseModel):
    """Information about a scope; the same fields as CrewAI's ``ScopeInfo``."""

    path: str
    record_count: int = 0
    categories: list[str] = Field(default_factory=list)
    oldest_record: datetime | None = None
    newest_record: datetime | None = None
    child_scopes: list[str] = Field(default_factory=list)


@lru_cache(maxsize=1)
def record_types() -> tuple[type[Any], type[Any]]:
    """``(MemoryRecord, ScopeInfo)``: CrewAI's classes if crewai is installed, else ours."""
    if importlib.util.find_spec("crewai") is not None:
        try:
            from crewai.memory.types import MemoryRecord, ScopeInfo

            return MemoryRecord, ScopeInfo
        except ImportError:  # pragma: no cover - a broken crewai install
            pass
    return NativeMemoryRecord, NativeScopeInfo


@lru_cache(maxsize=1)
def _dimension_error_class() -> type[DimensionMismatchError]:
    if importlib.util.find_spec("crewai") is not None:
        try:
            from crewai.memory.storage.backend import EmbeddingDimensionMismatchError
        except ImportError:  # pragma: no cover
            return DimensionMismatchError

        class CrewAIDimensionMismatchError(DimensionMismatchError, EmbeddingDimensionMismatchError):
            """CrewAI's dimension error, also a memworker ``DimensionMismatchError``."""

            def __init__(self, stored_dim: int, new_dim: int) -> None:
                self.stored_dim = stored_dim
                self.new_dim = new_dim
                EmbeddingDimensionMismatchError.__init__(self, stored_dim, new_dim)

        return CrewAIDimensionMismatchError
    return DimensionMismatchError


def dimension_mismatch(stored_dim: int, new_dim: int) -> DimensionMismatchError:
    """The dimension error to raise: CrewAI's ``EmbeddingDimensionMismatchError``
    (as a subclass) when crewai is installed, memworker's otherwise."""
    return _dimension_error_class()(stored_dim, new_dim)
