"""The worker's fast-path intra-batch dedup (encode jobs that need no EncodingFlow).

Items with every field given and consolidation off take the worker's fast path
(batched embedding, one commit) instead of the flow. When their ``flow`` entry carries
``batch_dedup_threshold`` (``QueuedMemory`` always sends it), the fast path applies
CrewAI's ``intra_batch_dedup`` rule to the job (:func:`batch_duplicates`): an item
whose cosine similarity to an earlier, kept item of the same job is >= the threshold
is dropped; a threshold above 1 disables it. A dropped item is reported as on the flow
path: ``""`` in ``ns:results:<job>`` (written in the commit's atomic step, only when
the job dropped something: :func:`dedup_results`), no record, and ``remember()``
would return ``None`` (a single-item job never drops). No crewai import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from memworker.queue.jobs import RESULT_TTL_MS, JobPayloadError, result_key

__all__ = ["batch_duplicates", "dedup_results", "fast_path_dedup_threshold"]


def fast_path_dedup_threshold(items: list[dict[str, Any]]) -> float | None:
    """The job's batch-dedup threshold: its first item's ``flow.batch_dedup_threshold``
    (as the flow path reads the first item's settings); ``None`` (no dedup) when the
    first item has none, e.g. a plain :class:`~memworker.queue.MemoryQueue` job.

    Raises:
        JobPayloadError: The threshold is not a number.
    """
    flow = items[0].get("flow") if items else None
    if not isinstance(flow, Mapping) or flow.get("batch_dedup_threshold") is None:
        return None
    value = flow["batch_dedup_threshold"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobPayloadError(
            f"items[0].flow.batch_dedup_threshold must be a number, got {type(value).__name__}"
        )
    return float(value)


def batch_duplicates(vectors: Any, threshold: float | None) -> list[int]:
    """Indices of the items CrewAI's ``intra_batch_dedup`` drops from one batch.

    An item is dropped when its cosine similarity to an *earlier item that was not
    dropped* is >= ``threshold`` (a zero vector has similarity 0 with anything).
    Vectorized: one normalized matrix product (float64, as CrewAI's Python floats);
    only items with an earlier match at all are then walked, in order, to honour the
    "not dropped" rule. ``None``, NaN or a threshold above 1 drop nothing.
    """
    n = len(vectors)
    if n < 2 or threshold is None or not threshold <= 1.0:
        return []
    matrix = np.asarray(vectors, dtype=np.float64).reshape(n, -1)
    norms = np.linalg.norm(matrix, axis=1)
    unit = np.divide(matrix, norms[:, None], out=np.zeros_like(matrix), where=norms[:, None] > 0)
    hits = np.triu(unit @ unit.T >= threshold, k=1)  # hits[i, j]: earlier i matches j
    dropped = np.zeros(n, dtype=bool)
    for j in np.flatnonzero(hits.any(axis=0)):
        if (hits[:j, j] & ~dropped[:j]).any():
            dropped[j] = True
    return [int(j) for j in np.flatnonzero(dropped)]


def dedup_results(namespace: str, job_id: str, items: list[dict[str, Any]],
                  dropped: list[int]) -> list[list[str]]:  # fmt: skip
    """The commands recording a fast-path job's results as the flow path does
    (``ns:results:<job>``: item id -> its record id, ``""`` for a dropped item; TTL
    :data:`RESULT_TTL_MS`), for the commit's atomic step; ``[]`` when nothing was
    dropped (every item is then its own record)."""
    if not dropped:
        return []
    gone = set(dropped)
    key = result_key(namespace, job_id)
    fields: list[str] = []
    for i, item in enumerate(items):
        fields += [str(item["id"]), "" if i in gone else str(item["id"])]
    return [["HSET", key, *fields], ["PEXPIRE", key, str(RESULT_TTL_MS)]]
