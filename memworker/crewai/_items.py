"""The encode items of a ``QueuedMemory`` save call, and the ``flow`` entry that tells
the worker which of CrewAI's steps (inference, consolidation, intra-batch dedup) the
items need (:func:`memworker.queue.jobs.needs_flow`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crewai.memory.utils import join_scope_paths

from memworker.crewai._calls import check_not_langgraph

if TYPE_CHECKING:
    from crewai.memory.unified_memory import Memory

__all__ = ["call_items", "flow_entry"]


def flow_entry(
    memory: Memory, scope: Any, categories: Any, importance: Any, root: Any
) -> dict[str, Any]:
    """The ``flow`` entry of a call's items (one dict, shared by all of them)."""
    given = (("scope", scope), ("categories", categories), ("importance", importance))
    infer = [name for name, value in given if value is None]
    threshold = memory.consolidation_threshold
    dedup = float(memory._config.batch_dedup_threshold)
    if infer or threshold < 1.0:
        return {
            "infer": infer,
            "scope": scope,
            "root_scope": root,
            "consolidation_threshold": float(min(threshold, 1.0)),
            "consolidation_limit": int(memory.consolidation_limit),
            "batch_dedup_threshold": dedup,
            "default_importance": float(memory.default_importance),
        }
    # The fast path: only what it needs, CrewAI's intra-batch dedup threshold
    # (and consolidation off, explicitly: memworker.queue.jobs.needs_flow).
    return {"consolidation_threshold": 1.0, "batch_dedup_threshold": dedup}


def call_items(contents: list[str], scope: Any, categories: Any, metadata: Any, importance: Any,
               source: Any, private: Any, root: Any, *, flow: dict[str, Any],
               default_importance: float) -> list[dict[str, Any]]:  # fmt: skip
    """One item per text, each with the call's own copies of its arguments."""
    inner = scope or "/"
    resolved = join_scope_paths(root, inner) if root else inner
    check_not_langgraph(resolved)
    # Anything but the expected types goes as is to the validator, which names it.
    # Only None is "no categories": 0 or "" go to the validator (refused, named).
    cats = list(categories) if isinstance(categories, (list, tuple)) else categories
    if cats is None:
        cats = []
    meta = dict(metadata) if type(metadata) is dict else metadata or {}
    weight = importance if importance is not None else default_importance
    # Not bool(): bool("false") is True. None is CrewAI's default; anything else but
    # a boolean goes to the validator, which refuses it naming the field.
    private = False if private is None else private
    return [
        {
            "text": content,
            "scope": resolved,
            "categories": cats,
            "metadata": meta,
            "importance": weight,
            # "" is no source, as CrewAI's LanceDB storage reads it back (None)
            "source": None if source == "" else source,
            "private": private,
            "flow": flow,
        }
        for content in contents
    ]
