"""QueuedMemory's helpers that hold no Memory state: a ``remember_many`` call and the
CrewAI save events it emits, and the privacy-filtered view of the store a recall uses."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.memory_events import MemorySaveCompletedEvent, MemorySaveFailedEvent

from memworker.errors import ValidationError, shown
from memworker.keys import LANGGRAPH_ROOT, in_langgraph
from memworker.queue.jobs import FailedJob
from memworker.store.query import MAX_LIMIT
from memworker.store.query import within_scope as within
from memworker.store.validate import normalize_scope_prefix

if TYPE_CHECKING:
    from memworker.store.store import ValkeyStore

__all__ = ["SOURCE_TYPE", "PrivacyView", "SaveCall", "completed_event", "emit", "failed_event", "within"]

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


def check_not_langgraph(scope: Any) -> None:
    """Refuse a CrewAI write into :data:`~memworker.keys.LANGGRAPH_ROOT` (the LangGraph
    store's items: a record there could pass for one). A scope the store refuses is
    left to it (it names the field)."""
    if not isinstance(scope, str):
        return
    try:
        path = normalize_scope_prefix(scope)
    except ValidationError:
        return
    if in_langgraph(path):
        raise ValidationError(
            f"scope {shown(scope)} is under {LANGGRAPH_ROOT}, where memworker.langgraph's "
            "QueuedStore keeps its items: CrewAI memories cannot be written there"
        )


def without_langgraph(records: list[Any]) -> list[Any]:
    """``records`` (or ``(record, score)`` pairs) without the LangGraph store's items."""
    return [r for r in records if not in_langgraph(getattr(r[0] if isinstance(r, tuple) else r, "scope", None))]


class PrivacyView:
    """The store as RecallFlow sees it: every search filters privacy in the query and
    stays inside the recall's scope.

    CrewAI's deep recall searches the scopes its LLM's query analysis suggests (text
    an injected query can steer: another tenant's root) or, without suggestions, the
    child scopes ``list_scopes`` gives (never the scope itself, where a ``remember``
    with the root scope stores). Here a scope outside the recall's (or not a valid
    scope) is searched as the recall's own scope, ``list_scopes`` lists the scope
    itself first, and a search's limit is capped at the store's (CrewAI oversamples
    the caller's limit)."""

    def __init__(
        self, store: ValkeyStore, include_private: bool, viewer: str | None, scope: str | None = None
    ) -> None:
        self._store = store
        self._include_private = include_private
        self._viewer = viewer
        self._scope = normalize_scope_prefix(scope, field="scope")

    def inside(self, scope: Any) -> str:
        """``scope`` when it is the recall's scope or below it, else the recall's scope."""
        if not isinstance(scope, str):
            return self._scope
        try:
            path = normalize_scope_prefix(scope)
        except ValidationError:
            return self._scope
        return path if within(path, self._scope) else self._scope

    def search(self, query_embedding: Any, scope_prefix: Any = None, categories: Any = None,
               metadata_filter: Any = None, limit: int = 10, min_score: float = 0.0) -> Any:  # fmt: skip
        # the LangGraph store's items are not CrewAI memories (a shared namespace): left
        # out in the query, so they never take a place of the top k (and checked again)
        return without_langgraph(self._store.search(
            query_embedding, scope_prefix=self.inside(scope_prefix), categories=categories,
            metadata_filter=metadata_filter, limit=min(limit, MAX_LIMIT), min_score=min_score,
            include_private=self._include_private, viewer=self._viewer, exclude_scope=LANGGRAPH_ROOT,
        ))  # fmt: skip

    def list_scopes(self, parent: Any = "/") -> list[str]:
        """The scope itself (its own records), then its child scopes (without
        ``include_private``, those holding a record the viewer may see)."""
        scope = self.inside(parent)
        if self._include_private:
            return [scope, *self._store.list_scopes(scope, exclude_scope=LANGGRAPH_ROOT)]
        return [scope, *self._store.visible_scopes(
            scope, viewer=self._viewer, exclude_scope=LANGGRAPH_ROOT
        )]  # fmt: skip

    def get_scope_info(self, scope: Any) -> Any:
        """The scope's info for the LLM's query analysis; without ``include_private``,
        its categories and child scopes are those of records the viewer may see (the
        counters count every source's private records)."""
        path = self.inside(scope)
        info = self._store.get_scope_info(path, exclude_scope=LANGGRAPH_ROOT)
        if self._include_private:
            return info
        categories, children = self._store.visible_summary(
            path, viewer=self._viewer, exclude_scope=LANGGRAPH_ROOT
        )
        return info.model_copy(update={"categories": sorted(categories), "child_scopes": children})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
