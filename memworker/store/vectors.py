"""Process-local cache of a namespace's vectors and filter tokens, for the exact
search path (no search module). No I/O: the store's plans read Valkey and feed it.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memworker.store.tokens import token
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

#: Fields per record in a ``rows`` reply: embedding, then the token fields.
ROW_WIDTH = 6
_NFIELDS = 5
_EMPTY: frozenset[int] = frozenset()


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


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


@dataclass
class _State:
    """One generation of the cache. Mutated only under :attr:`VectorCache.lock`."""

    dim: int
    incarnation: str | None = None
    seen: int = 0
    last: str = "0-0"
    n: int = 0  # rows in use
    ids: list[str] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)
    matrix: np.ndarray = None  # type: ignore[assignment]
    norms: np.ndarray = None  # type: ignore[assignment]
    alive: np.ndarray = None  # type: ignore[assignment]  # row has an embedding: a candidate
    exists: np.ndarray = None  # type: ignore[assignment]  # row's record exists
    present: int = 0  # rows whose record exists
    fields: list[tuple[bytes | None, ...] | None] = field(default_factory=list)
    postings: tuple[dict[str, set[int]], ...] = field(
        default_factory=lambda: tuple({} for _ in range(_NFIELDS))
    )
    strings: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.matrix is None:
            self._allocate(0)

    def _allocate(self, capacity: int) -> None:
        self.matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        self.norms = np.zeros(capacity, dtype=np.float32)
        self.alive = np.zeros(capacity, dtype=bool)
        self.exists = np.zeros(capacity, dtype=bool)

    def grow(self, need: int) -> None:
        capacity = len(self.norms)
        if need <= capacity:
            return
        new = max(need, capacity * 2, 1024)
        old = (self.matrix, self.norms, self.alive, self.exists)
        self._allocate(new)
        self.matrix[:capacity] = old[0]
        self.norms[:capacity] = old[1]
        self.alive[:capacity] = old[2]
        self.exists[:capacity] = old[3]

    # ------------------------------------------------------------------ postings
    def intern(self, raw: Any) -> bytes | None:
        if raw is None or raw == b"" or raw == "":
            return None
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        return self.strings.setdefault(raw, raw)

    def _post(self, row: int, values: tuple[bytes | None, ...], add: bool) -> None:
        for f, value in enumerate(values):
            if value is None:
                continue
            index = self.postings[f]
            for tok in _text(value).split(","):  # type: ignore[union-attr]
                if add:
                    index.setdefault(tok, set()).add(row)
                else:
                    rows = index.get(tok)
                    if rows is not None:
                        rows.discard(row)
                        if not rows:
                            del index[tok]

    def post_all(self) -> None:
        """Build every posting list from :attr:`fields` (grouped: values repeat)."""
        for f in range(_NFIELDS):
            groups: dict[bytes, list[int]] = {}
            for row, values in enumerate(self.fields):
                if values is not None and values[f] is not None:
                    groups.setdefault(values[f], []).append(row)
            index: dict[str, set[int]] = {}
            for value, rows in groups.items():
                for tok in _text(value).split(","):  # type: ignore[union-attr]
                    index.setdefault(tok, set()).update(rows)
            self.postings[f].clear()
            self.postings[f].update(index)

    # ------------------------------------------------------------------ rows
    def set_row(self, record_id: str, row_values: Sequence[Any]) -> None:
        """Bring one id to the state read from Valkey (``rows`` reply slice)."""
        emb = row_values[0]
        exists = emb is not None or row_values[1] is not None
        r = self.row_of.get(record_id)
        if r is None:
            if not exists:
                return
            r = self.n
            self.grow(r + 1)
            self.n += 1
            self.ids.append(record_id)
            self.fields.append(None)
            self.row_of[record_id] = r
        ok = exists and emb is not None and len(emb) in (4 * self.dim, 2 * self.dim)
        values = tuple(self.intern(v) for v in row_values[1:ROW_WIDTH]) if ok else None
        old = self.fields[r]
        if old != values:
            if old is not None:
                self._post(r, old, add=False)
            if values is not None:
                self._post(r, values, add=True)
            self.fields[r] = values
        if ok:
            self.matrix[r] = np.frombuffer(emb, dtype="<f4" if len(emb) == 4 * self.dim else "<f2")
            self.norms[r] = np.linalg.norm(self.matrix[r : r + 1], axis=1)[0]
        self.alive[r] = ok
        if exists != bool(self.exists[r]):
            self.present += 1 if exists else -1
            self.exists[r] = exists

    def compact(self) -> None:
        """Drop the rows of deleted records (renumbers rows, rebuilds postings)."""
        keep = np.flatnonzero(self.exists[: self.n])
        ids = [self.ids[i] for i in keep]
        fields = [self.fields[i] for i in keep]
        matrix, norms, alive = self.matrix[keep], self.norms[keep], self.alive[keep]
        self.n = len(ids)
        self._allocate(max(self.n, 1024))
        self.matrix[: self.n], self.norms[: self.n], self.alive[: self.n] = matrix, norms, alive
        self.exists[: self.n] = True
        self.ids, self.fields = ids, fields
        self.row_of = {rid: i for i, rid in enumerate(ids)}
        self.present = self.n
        self.post_all()


def build_state(
    dim: int, incarnation: str | None, last: str, seen: int, ids: Sequence[str], flat: Sequence[Any]
) -> _State:
    """A full cache generation from a snapshot's ids and their ``rows`` reply."""
    st = _State(dim=dim, incarnation=incarnation, last=last, seen=seen)
    embs = flat[0::ROW_WIDTH]
    scope_anc = flat[1::ROW_WIDTH]
    keep = [i for i in range(len(ids)) if embs[i] is not None or scope_anc[i] is not None]
    n = len(keep)
    st.grow(n)
    st.n = n
    st.ids = [ids[i] for i in keep]
    st.row_of = {rid: r for r, rid in enumerate(st.ids)}
    st.exists[:n] = True
    st.present = n
    # float32 or float16 bytes (a namespace of vector_type float16); one block per type
    good: list[int] = []
    for width, dtype in ((4 * dim, "<f4"), (2 * dim, "<f2")):
        part = [r for r, i in enumerate(keep) if embs[i] is not None and len(embs[i]) == width]
        if part:
            blob = b"".join(embs[keep[r]] for r in part)
            rows = np.asarray(part, dtype=np.intp)
            block = np.frombuffer(blob, dtype=dtype).reshape(len(part), dim).astype(np.float32)
            st.matrix[rows] = block
            st.norms[rows] = np.linalg.norm(block, axis=1)
            st.alive[rows] = True
            good += part
    # Token fields, interned column by column (values repeat across records).
    same = st.strings.setdefault
    columns = [[same(v, v) if v else None for v in flat[f::ROW_WIDTH]] for f in range(1, ROW_WIDTH)]
    per_id = list(zip(*columns))
    fields: list[tuple[bytes | None, ...] | None] = [None] * n
    for r in good:
        fields[r] = per_id[keep[r]]
    st.fields = fields
    st.post_all()
    return st


def _holds(st: _State | None, dim: int, incarnation: str | None, seen: int) -> bool:
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
        self._state: _State | None = None

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
            rows = _candidates(st, flt)
            scale = float(np.linalg.norm(query))
            if rows is None:
                count = int(np.count_nonzero(st.alive[:n]))
                if not count:
                    return []
                scores = _cosine(st.matrix[:n], st.norms[:n], query, scale)
                if count < n:
                    scores[~st.alive[:n]] = -np.inf
                index = None
            else:
                count = len(rows)
                if not count:
                    return []
                index = np.fromiter(rows, dtype=np.intp, count=count)
                if 4 * count > n:
                    scores = _cosine(st.matrix[:n], st.norms[:n], query, scale)[index]
                else:
                    scores = _cosine(st.matrix[index], st.norms[index], query, scale)
            k = min(limit, count)
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            rows_top = top if index is None else index[top]
            ids = st.ids
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


def _cosine(matrix: np.ndarray, norms: np.ndarray, query: np.ndarray, scale: float) -> np.ndarray:
    """Cosine similarity, computed as the uncached path always did."""
    denom = norms * scale
    return (matrix @ query) / np.where(denom == 0, 1.0, denom)


def _union(index: dict[str, set[int]], tokens: Iterable[str]) -> set[int] | frozenset[int]:
    found = [s for s in (index.get(t) for t in tokens) if s]
    if not found:
        return _EMPTY
    return found[0] if len(found) == 1 else set().union(*found)


def _candidates(st: _State, flt: SearchFilter) -> set[int] | frozenset[int] | None:
    """Rows passing ``flt`` (``None``: every alive row). Never mutates a posting list."""
    p = st.postings
    sets: list[set[int] | frozenset[int]] = []
    if flt.scope != "/":
        sets.append(p[0].get(token("s", flt.scope)) or _EMPTY)
    if flt.categories_any:
        sets.append(_union(p[1], flt.categories_any))
    for tok in flt.metadata_all:
        sets.append(p[2].get(tok) or _EMPTY)
    if flt.source is not None:
        sets.append(p[3].get(flt.source) or _EMPTY)
    if flt.visible is not None:
        sets.append(_union(p[4], flt.visible))
    if not sets:
        return None
    sets.sort(key=len)
    if not sets[0]:
        return _EMPTY
    return sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]
