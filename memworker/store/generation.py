"""One generation of the exact path's vector cache, and the scoring over it. No I/O.

A :class:`Generation` holds a float32 matrix of every record's embedding (stored as
float32 or float16; grown geometrically), their norms, alive and exists masks, ids <->
rows, and an inverted index per token field (``scope_anc``, ``cat_t``, ``meta_t``,
``src_t``, ``vis``: token -> set of rows), so a :class:`SearchFilter` becomes set
unions and intersections (:func:`candidates`) instead of a Python loop over rows. The
sync protocol that keeps it exact is :mod:`memworker.store.vectors`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memworker.store.query import SearchFilter
from memworker.store.tokens import token

__all__ = [
    "ROW_WIDTH",
    "Generation",
    "build_state",
    "candidates",
    "cosine",
    "row_norms",
    "top_positions",
    "unit_query",
]

#: Fields per record in a ``rows`` reply: embedding, then the token fields.
ROW_WIDTH = 6
_NFIELDS = 5
_EMPTY: frozenset[int] = frozenset()


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


@dataclass
class Generation:
    """One generation of the cache. Mutated only under
    :attr:`memworker.store.vectors.VectorCache.lock`."""

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
        # float64: a float32 norm of a row of 1e20s overflowed (1e-30s underflowed)
        self.norms = np.zeros(capacity, dtype=np.float64)
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
                if values is not None and (value := values[f]) is not None:
                    groups.setdefault(value, []).append(row)
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
            self.norms[r] = row_norms(self.matrix[r : r + 1])[0]
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
) -> Generation:
    """A full cache generation from a snapshot's ids and their ``rows`` reply."""
    st = Generation(dim=dim, incarnation=incarnation, last=last, seen=seen)
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
            st.norms[rows] = row_norms(block)
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


#: Rows whose norms are taken at once (a float64 copy of 4,096 x 384 is 12 MB: a whole
#: cache's copy would be twice the cache).
_NORM_ROWS = 4096


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """The rows' euclidean norms, in float64 (in float32 the squares of a row of 1e20s
    overflow, of 1e-30s underflow: its cosine came out 0 or NaN), a block at a time."""
    norms = np.empty(len(matrix), dtype=np.float64)
    for start in range(0, len(matrix), _NORM_ROWS):
        block = matrix[start : start + _NORM_ROWS].astype(np.float64)
        norms[start : start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def unit_query(query: np.ndarray) -> np.ndarray:
    """``query`` scaled to norm 1 (its norm taken in float64), as float32; a zero
    query as it is (every score 0)."""
    scale = float(np.linalg.norm(query.astype(np.float64)))
    if scale == 0 or not np.isfinite(scale):
        return query
    unit: np.ndarray = (query.astype(np.float64) / scale).astype(np.float32)
    return unit


def cosine(matrix: np.ndarray, norms: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Cosine similarity of the rows (``norms``: :func:`row_norms`) with a
    :func:`unit_query`: the float32 product of a unit query stays in range whatever the
    rows' magnitude, the division is in float64."""
    similarity: np.ndarray = (matrix @ unit) / np.where(norms == 0, 1.0, norms)
    return similarity


def top_positions(scores: np.ndarray, k: int, id_of: Callable[[int], str]) -> np.ndarray:
    """Positions of the ``k`` best ``scores``, records tied at the cut taken by id (the
    smaller first), so the exact cache and the bulk scan cut ties alike (the caller
    sorts the result by score, then id)."""
    n = len(scores)
    if k >= n:
        return np.arange(n)
    part = np.argpartition(-scores, k - 1)[:k]
    cut = scores[part].min()
    above = np.flatnonzero(scores > cut)
    tied = np.flatnonzero(scores == cut)
    if len(above) + len(tied) == k:
        return np.concatenate([above, tied])
    chosen = heapq.nsmallest(k - len(above), tied.tolist(), key=id_of)
    return np.concatenate([above, np.asarray(chosen, dtype=np.intp)])


def _union(index: dict[str, set[int]], tokens: Iterable[str]) -> set[int] | frozenset[int]:
    found = [s for s in (index.get(t) for t in tokens) if s]
    if not found:
        return _EMPTY
    return found[0] if len(found) == 1 else set().union(*found)


def candidates(st: Generation, flt: SearchFilter) -> set[int] | frozenset[int] | np.ndarray | None:
    """Rows passing ``flt`` (``None``: every alive row; an array of row numbers when
    only an excluded scope narrows them). Never mutates a posting list."""
    rows = _included(st, flt)
    drop = st.postings[0].get(flt.exclude_token) if flt.exclude_token is not None else None
    if not drop:
        return rows
    if rows is None:
        keep = st.alive[: st.n].copy()
        keep[np.fromiter(drop, dtype=np.intp, count=len(drop))] = False
        return np.flatnonzero(keep)
    return rows - drop


def _included(st: Generation, flt: SearchFilter) -> set[int] | frozenset[int] | None:
    """:func:`candidates` before the excluded scope."""
    p = st.postings
    sets: list[set[int] | frozenset[int]] = []
    if flt.scope != "/":
        sets.append(p[0].get(token("s", flt.scope)) or _EMPTY)
    if flt.categories_any:
        sets.append(_union(p[1], flt.categories_any))
    for tok in flt.metadata_all:
        sets.append(p[2].get(tok) or _EMPTY)
    for group in flt.metadata_any:
        sets.append(_union(p[2], group))
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
