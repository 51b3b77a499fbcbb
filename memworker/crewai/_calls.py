"""QueuedMemory's helpers that hold no Memory state: a ``remember_many`` call and the
CrewAI save events it emits, and the privacy-filtered view of the store a recall uses."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.memory_events import MemorySaveCompletedEvent, MemorySaveFailedEvent

from memworker.queue.jobs import FailedJob

if TYPE_CHECKING:
    from memworker.store.store import ValkeyStore

__all__ = ["SOURCE_TYPE", "PrivacyView", "SaveCall", "completed_event", "emit", "failed_event"]

SOURCE_TYPE = "unified_memory"


class SaveCall:
    """One ``remember_many`` call: its jobs, and the context its events pair in."""

    def __init__(self, ctx: contextvars.Context, n: int, metadata: Any, agent_role: Any, start: float) -> None:
        self.ctx = ctx
        self.n = n
        self.metadata = metadata
        self.agent_role = agent_role
        self.start = start
        self.left = 0
        self.failures: list[FailedJob] = []
        self.lock = threading.Lock()


def emit(event: Any, source: Any) -> None:
    try:
        crewai_event_bus.emit(source, event)
    except Exception:  # noqa: BLE001 - the bus may be shut down at exit
        pass


def failed_event(value: str, metadata: Any, error: str) -> Any:
    return MemorySaveFailedEvent(value=value, metadata=metadata, error=error, source_type=SOURCE_TYPE)


def completed_event(value: str, metadata: Any, agent_role: Any, start: float) -> Any:
    return MemorySaveCompletedEvent(
        value=value,
        metadata=metadata or {},
        agent_role=agent_role,
        save_time_ms=(time.perf_counter() - start) * 1000,
        source_type=SOURCE_TYPE,
    )


class PrivacyView:
    """The store as RecallFlow sees it: every search filters privacy in the query."""

    def __init__(self, store: ValkeyStore, include_private: bool, viewer: str | None) -> None:
        self._store = store
        self._include_private = include_private
        self._viewer = viewer

    def search(self, query_embedding: Any, scope_prefix: Any = None, categories: Any = None,
               metadata_filter: Any = None, limit: int = 10, min_score: float = 0.0) -> Any:  # fmt: skip
        return self._store.search(
            query_embedding, scope_prefix=scope_prefix, categories=categories,
            metadata_filter=metadata_filter, limit=limit, min_score=min_score,
            include_private=self._include_private, viewer=self._viewer,
        )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
