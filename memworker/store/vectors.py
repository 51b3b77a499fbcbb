"""Process-local cache of a namespace's vectors and filter tokens, for the exact
search path (no search module): the sync protocol that keeps it exact. No I/O: the
store's plans read Valkey and feed it. One generation of it (arrays, postings,
scoring) is :class:`~memworker.store.generation.Generation`.

Without a cache every exact search re-reads every candidate vector (figures:
``benchmarks/README.md``). The cache keeps, per
:class:`~memworker.store.ValkeyStore` (shared by its sync and async faces):

- a float32 matrix of every record's embedding (stored as float32 or float16;
  grown geometrically), their
  norms, an alive mask, ids <-> rows;
- an inverted index per token field (``scope_anc``, ``cat_t``, ``meta_t``,
  ``src_t``, ``vis``): token -> set of rows, so a :class:`SearchFilter` becomes
  set unions/intersections instead of a Python loop over rows.

Staying exact across processes: the store script logs the ids it saved or deleted
to the change log ``ns:changes`` in the same atomic step as the write (entries and
cap: :mod:`memworker.keys`), and drops the log when the namespace becomes empty;
``ns:meta`` field ``log`` names the log's *incarnation* (set when it is created).
A search first runs one read-only script (``read.lua sync``) that returns, in one
atomic step, the incarnation, the stream's ``entries-added`` counter and length,
the namespace's record count, and the entries after the cache's last one. The
cache then:

- is *current* (no new entries): score now;
- *applies* the new entries: re-reads those ids (embedding and token fields) and
  updates, appends or kills their rows; repeats while a page was full;
- *reloads* in full when the incarnation differs (a reset or a full delete
  emptied the namespace since), when entries it has not seen were trimmed
  (``entries-added - seen > length``), or when counts disagree: a snapshot
  (incarnation, last entry id, counter and every id, atomically), then the rows.

Because a write and its log entry are one atomic step, and the log is read after
the search started, a search sees every write committed before it, from any
process (read-your-writes). A namespace of more than ``max_records`` records is
not cached (the store falls back to reading the vectors per search).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from memworker.store.generation import (
    ROW_WIDTH,
    Generation,
    build_state,
    candidates,
    cosine,
    top_positions,
    unit_query,
)
from memworker.store.query import SearchFilter

__all__ = [
    "APPLY",
    "BYPASS",
    "CHANGES_PAGE",
    "CURRENT",
    "DEFAULT_MAX_RECORDS",
    "RELOAD",
    "ROWS_CHUNK",
    "Mark",
    "VectorCache",
]

#: Change-log entries read per round trip.
CHANGES_PAGE = 10_000
#: Records per ``read.lua rows`` call.
ROWS_CHUNK = 2_000
#: Largest namespace kept in the cache (``ValkeyStore(exact_cache_max_records=...)``).
DEFAULT_MAX_RECORDS = 200_000
#: Dead rows tolerated before the arrays are compacted (and at least as many as live ones).
COMPACT_MIN_DEAD = 10_000

CURRENT, APPLY, RELOAD, BYPASS = "current", "apply", "reload", "bypass"


@dataclass(frozen=True)
class Mark:
    """Where the cache was when a sync began.

    Attributes:
        gen: Generation (bumped by every full load or clear).
        incarnation: The change log's incarnation (``ns:meta`` field ``log``).
        seen: Change-log entries consumed (the stream's ``entries-added`` at that point).
        last: Id of the last consumed entry (``0-0``: none).
        dim: Vector dimension of the matrix.
    """

    gen: int
    incarnation: str | None
    seen: int
    last: str
    dim: int


def _holds(
    st: Generation | None, dim: int, incarnation: str | None, seen: int
) -> TypeGuard[Generation]:
    """The cache already holds this log (same dimension and incarnation) at least as
    far as ``seen``: a snapshot up to ``seen`` would add nothing."""
    return st is not None and st.dim == dim and st.incarnation == incarnation and st.seen >= seen


class VectorCache:
    """The exact path's cache for one store; thread-safe (:attr:`lock` guards every
    read and mutation; the network reads happen outside it, in the store's plans).

    Args:
        max_records: Namespaces with more records are not cached.
    """

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.max_records = max_records
        self.lock = threading.Lock()
        self._gen = 0
        self._state: Generation | None = None

    # ------------------------------------------------------------------ sync protocol
    def mark(self) -> Mark | None:
        """Where the cache is (``None``: nothing loaded)."""
        with self.lock:
            st = self._state
            if st is None:
                return None
            return Mark(self._gen, st.incarnation, st.seen, st.last, st.dim)

    def verdict(
        self,
        mark: Mark | None,
        dim: int,
        incarnation: str | None,
        added: int,
        length: int,
        total: int,
        entries: int,
    ) -> str:
        """What to do after a ``sync`` reply: :data:`CURRENT`, :data:`APPLY`,
        :data:`RELOAD` or :data:`BYPASS` (the namespace is too large to cache)."""
        if total > self.max_records or added < 0:  # too large, or no entries-added (Redis < 7)
            return BYPASS
        if mark is None or mark.dim != dim or incarnation != mark.incarnation:
            return RELOAD
        if added == 0 and length == 0:  # no log (records older than it, or none at all)
            return RELOAD if mark.seen else CURRENT
        unseen = added - mark.seen
        if unseen < 0 or unseen > length:  # another log, or entries we missed were trimmed
            return RELOAD
        if entries != min(unseen, CHANGES_PAGE):
            return RELOAD
        return APPLY if unseen else CURRENT

    def confirm(self, mark: Mark, total: int) -> tuple[int, int] | None:
        """The position to search at when a sync found nothing new, or ``None`` when the
        cache's record count disagrees with the server's (then reload)."""
        with self.lock:
            st = self._state
            if st is None or self._gen != mark.gen:
                return None
            if st.seen == mark.seen and st.present != total:
                return None
            return self._gen, st.seen

    def apply(
        self, mark: Mark, last: str, seen: int, ids: Sequence[str], flat: Sequence[Any]
    ) -> tuple[int, int] | None:
        """Apply re-read rows of the ids logged after ``mark`` (up to entry ``last``, the
        ``seen``-th). Returns the position to search at, or ``None`` if another load
        replaced the cache meanwhile (sync again).

        Rows read after the log entries reflect at least those entries, so applying
        them over a cache that another thread advanced past ``mark`` (but not past
        ``seen``) is safe; newer writes have later entries and are applied next time.
        """
        with self.lock:
            st = self._state
            if st is None or self._gen != mark.gen or st.seen < mark.seen:
                return None
            if st.seen >= seen:
                return self._gen, st.seen
            for j, rid in enumerate(ids):
                st.set_row(rid, flat[j * ROW_WIDTH : (j + 1) * ROW_WIDTH])
            st.seen, st.last = seen, last
            dead = st.n - st.present
            if dead > COMPACT_MIN_DEAD and dead > st.present:
                st.compact()
            return self._gen, st.seen

    def load(
        self,
        dim: int,
        incarnation: str | None,
        last: str,
        seen: int,
        ids: Sequence[str],
        flat: Sequence[Any],
    ) -> tuple[int, int]:
        """Install a full snapshot (built outside the lock) unless the cache already
        holds the same log at least as far; returns the position to search at."""
        with self.lock:
            st = self._state
            if _holds(st, dim, incarnation, seen):
                return self._gen, st.seen
        built = build_state(dim, incarnation, last, seen, ids, flat)
        with self.lock:
            st = self._state
            if _holds(st, dim, incarnation, seen):
                return self._gen, st.seen
            self._gen += 1
            self._state = built
            return self._gen, built.seen

    def clear(self) -> None:
        """Forget everything (a namespace too large to cache, or a test)."""
        with self.lock:
            self._gen += 1
            self._state = None

    # ------------------------------------------------------------------ search
    def search(
        self, query: np.ndarray, flt: SearchFilter, limit: int, position: tuple[int, int]
    ) -> list[tuple[str, float]] | None:
        """Top ``limit`` ``(id, cosine)`` under ``flt``, best first (unordered ties), or
        ``None`` if the cache is no longer at ``position`` or later (sync again)."""
        with self.lock:
            st = self._state
            if (
                st is None
                or self._gen != position[0]
                or st.seen < position[1]
                or st.dim != query.size
            ):
                return None
            n = st.n
            rows = candidates(st, flt)
            unit = unit_query(query)
            if rows is None:
                count = int(np.count_nonzero(st.alive[:n]))
                if not count:
                    return []
                scores = cosine(st.matrix[:n], st.norms[:n], unit)
                if count < n:
                    scores[~st.alive[:n]] = -np.inf
                index = None
            else:
                count = len(rows)
                if not count:
                    return []
                index = rows if isinstance(rows, np.ndarray) else np.fromiter(rows, dtype=np.intp, count=count)
                if 4 * count > n:
                    scores = cosine(st.matrix[:n], st.norms[:n], unit)[index]
                else:
                    scores = cosine(st.matrix[index], st.norms[index], unit)
            k = min(limit, count)
            ids = st.ids
            row = (lambda t: t) if index is None else (lambda t: int(index[t]))
            top = top_positions(scores, k, lambda t: ids[row(t)])
            rows_top = top if index is None else index[top]
            return [(ids[r], float(scores[t])) for r, t in zip(rows_top.tolist(), top.tolist())]

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        """Counts for tests and debugging."""
        with self.lock:
            st = self._state
            if st is None:
                return {"loaded": False, "gen": self._gen}
            return {
                "loaded": True,
                "gen": self._gen,
                "incarnation": st.incarnation,
                "seen": st.seen,
                "last": st.last,
                "rows": st.n,
                "present": st.present,
                "alive": int(np.count_nonzero(st.alive[: st.n])),
            }
