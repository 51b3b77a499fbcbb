"""The search step of ``QueuedMemory.recall``: CrewAI's shallow (one vector search,
composite score) or deep (its ``RecallFlow``) recall over the privacy-filtered view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crewai.memory.types import MemoryMatch, compute_composite_score, embed_text

if TYPE_CHECKING:
    from crewai.memory.unified_memory import Memory

    from memworker.crewai._calls import PrivacyView
    from memworker.store.store import ValkeyStore

__all__ = ["matches"]


def matches(memory: Memory, view: PrivacyView, query: str, scope: str | None,
            categories: list[str] | None, limit: int, depth: str, source: str | None,
            include_private: bool) -> list[MemoryMatch]:  # fmt: skip
    """The recall's results, best first; their ``last_accessed`` is touched (not on a
    read-only memory; a failed touch is ignored, as in CrewAI)."""
    if depth == "shallow":
        results: list[MemoryMatch] = []
        embedding = embed_text(memory._embedder, query)
        if embedding:
            raw = view.search(embedding, scope_prefix=scope, categories=categories,
                              limit=limit, min_score=0.0)  # fmt: skip
            for record, score in raw:
                composite, reasons = compute_composite_score(record, score, memory._config)
                results.append(MemoryMatch(record=record, score=composite, match_reasons=reasons))
            results.sort(key=lambda m: m.score, reverse=True)
    else:
        from crewai.memory.recall_flow import RecallFlow

        flow = RecallFlow(
            storage=view, llm=memory._llm, embedder=memory._embedder, config=memory._config
        )
        flow.kickoff(
            inputs={
                "query": query,
                "scope": scope,
                "categories": categories or [],
                "limit": limit,
                "source": source,
                "include_private": include_private,
            }
        )
        results = flow.state.final_results
    if results and not memory.read_only:
        store: ValkeyStore | Any = memory._storage
        try:
            store.touch_records([m.record.id for m in results])
        except Exception:  # noqa: BLE001 - non-critical, as in CrewAI
            pass
    return results
