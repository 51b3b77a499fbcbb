"""Search plans: nearest records by cosine similarity, filtered in the query.

With a search module: ``FT.SEARCH`` KNN over the index (:mod:`~memworker.store.index`)
with the filter as tags (:mod:`~memworker.store.query`). Without one, the exact path:
numpy over the process-local vector cache kept exact by the change log
(:mod:`~memworker.store.vectors`), or, for namespaces above
``exact_cache_max_records``, over every candidate vector read per search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memworker.errors import StoreError, ValidationError
from memworker.io import Call, Pipeline, Plan, Script, error_text
from memworker.store.embeddings import vector_bytes, vector_from_bytes, query_to_float16
from memworker.store.plans.read import ReadPlans
from memworker.store.plans.server import as_text, optional_text
from memworker.store.query import MAX_LIMIT, SearchFilter
from memworker.store.generation import ROW_WIDTH, cosine, row_norms, top_positions, unit_query
from memworker.store.vectors import APPLY, BYPASS, CHANGES_PAGE, CURRENT, ROWS_CHUNK

__all__ = ["EXACT_CHUNK", "SearchPlans"]

#: Records per bulk read of the exact search path (one script call each).
EXACT_CHUNK = 5_000
#: Rounds of the exact path's cache sync before it falls back to a bulk read (only
#: reached when other threads keep reloading the cache at the same time).
_SYNC_ATTEMPTS = 20

#: What :meth:`SearchPlans._p_search_module` answers when the index was made again.
_NEWER_INDEX: Any = object()


class SearchPlans(ReadPlans):
    """Plans that search by vector."""

    def _p_search(
        self,
        query_embedding: Any,
        scope_prefix: str | None,
        categories: list[str] | None,
        metadata_filter: dict[str, Any] | None,
        limit: int,
        min_score: float,
        source: str | None,
        include_private: bool,
        viewer: str | None,
        metadata_ranges: Mapping[str, Any] | None = None,
        exclude_scope: str | None = None,
    ) -> Plan[list[tuple[Any, float]]]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or limit > MAX_LIMIT:
            # never the value's repr: a huge int's fails (4,300 digits at most)
            raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or min_score != min_score:
            raise ValidationError("min_score must be a number (cosine similarity, -1 to 1)")
        vector, dim = vector_bytes(query_embedding, field="query_embedding")
        flt = SearchFilter.build(
            scope_prefix=scope_prefix,
            categories=categories,
            metadata_filter=metadata_filter,
            source=source,
            include_private=include_private,
            viewer=viewer,
            metadata_ranges=metadata_ranges,
            exclude_scope=exclude_scope,
        )
        stored = yield from self._p_stored_dim()
        if stored is None:
            stored = yield from self._p_stored_dim(refresh=True)
            if stored is None:
                return []  # nothing was ever saved
        if stored != dim:
            yield from self._p_check_dim(dim)
        # The query in the index's type (float16: scaled to a largest value of 1 first,
        # so no magnitude overflows or underflows it).
        indexed = vector
        if self._state.vtype == "float16":
            indexed = query_to_float16(vector)
        module = yield from self._p_probe()
        found: list[tuple[Any, float]] | None = None
        if module:
            yield from self._p_ensure_index(stored)
            if self._state.index_building:
                self._state.index_building = not (yield from self._p_index_done())
            if not self._state.index_building:
                found = yield from self._p_search_module(indexed, flt, limit)
            if found is _NEWER_INDEX:
                # the index was made again since this store checked it (the namespace
                # moved shard): trust FT.SEARCH only once FT.INFO says it is built
                self._state.index_building = not (yield from self._p_index_done())
                found = None
                if self._state.index_ready and not self._state.index_building:
                    found = yield from self._p_search_module(indexed, flt, limit)
                    found = None if found is _NEWER_INDEX else found
            if found is None and not self._state.index_ready:
                # No index here: the namespace moved shard, or another store reset it
                # (then the dimension may be gone or new). Make it again for the stored
                # dimension, and answer this search on the exact path.
                fresh = yield from self._p_stored_dim(refresh=True)
                if fresh is None:
                    return []
                if fresh != dim:
                    yield from self._p_check_dim(dim)
                yield from self._p_ensure_index(fresh)
        hits = found if found is not None else (yield from self._p_search_exact(vector, flt, limit))
        # CrewAI passes min_score=0.0 to mean "no threshold": cosine can be negative.
        out = [(r, s) for r, s in hits if min_score <= 0 or s >= min_score]
        out.sort(key=lambda pair: (-pair[1], pair[0].id))
        return out[:limit]

    def _p_search_module(
        self, vector: bytes, flt: SearchFilter, limit: int
    ) -> Plan[Any]:
        """The hits from the index for ``vector`` (in the index's vector type); ``None``
        when the index is gone (a namespace whose slot moved to another shard finds none
        there: the caller recreates it and answers this search on the exact path); ``_NEWER_INDEX`` when ``{ns}:meta``'s
        ``idxgen`` moved since this store checked the index (another store made it
        again, and it may still be scanning the records: FT.SEARCH would miss some)."""
        # Only the distance comes from FT.SEARCH: modules may round NUMERIC fields
        # they return (RediSearch keeps 12 digits), so records are read with HMGET.
        command = [
            "FT.SEARCH", self.keys.index, flt.ft_query(limit),
            "PARAMS", "2", "vec", vector,
            "RETURN", "1", "dist",
            "LIMIT", "0", str(limit),
            "DIALECT", "2",
        ]  # fmt: skip
        try:
            gen, reply = yield Pipeline([["HGET", self.keys.meta, "idxgen"], command])
        except Exception as exc:  # noqa: BLE001
            text = error_text(exc).lower()
            if "no such index" in text or "unknown index" in text or "not found" in text:
                self._state.index_ready = False
                return None
            raise
        if gen != self._state.index_gen:
            self._state.index_gen = gen
            return _NEWER_INDEX
        prefix = self.keys.rec_prefix
        scored: list[tuple[str, float]] = []
        for key, fields in _ft_documents(reply):
            if isinstance(fields, Mapping):
                row = {as_text(k): v for k, v in fields.items()}
            else:
                row = {as_text(fields[j]): fields[j + 1] for j in range(0, len(fields), 2)}
            name = as_text(key)
            if row.get("dist") is None or not name.startswith(prefix):
                continue
            score = 1.0 - float(as_text(row["dist"]))
            if score == score:  # NaN: a stored vector of zeros (an older version's float16)
                scored.append((name[len(prefix) :], score))
        records = yield from self._p_fetch([i for i, _ in scored], flt)
        return [(r, s) for (_, s), r in zip(scored, records) if r is not None]

    def _p_search_exact(
        self, vector: bytes, flt: SearchFilter, limit: int
    ) -> Plan[list[tuple[Any, float]]]:
        """Exact search from the process-local vector cache (:mod:`memworker.store.vectors`):
        one round trip to catch up with the change log, numpy over the cached rows,
        one pipeline to fetch the top records. Falls back to :meth:`_p_search_scan`
        for namespaces above ``exact_cache_max_records``."""
        query = vector_from_bytes(vector)
        for _ in range(_SYNC_ATTEMPTS):
            position = yield from self._p_exact_sync(query.size)
            if position is None:
                break
            hits = self._vectors.search(query, flt, limit, position)
            if hits is None:
                continue  # another thread reloaded the cache meanwhile: sync again
            records = yield from self._p_fetch([i for i, _ in hits], flt)
            return [(r, s) for (_, s), r in zip(hits, records) if r is not None]
        return (yield from self._p_search_scan(vector, flt, limit))

    def _p_exact_sync(self, dim: int) -> Plan[tuple[int, int] | None]:
        """Bring the vector cache up to date with the change log; returns the cache
        position a search must score at (or later), or ``None``: do not use the cache."""
        cache = self._vectors
        ns = self.keys.prefix
        for _ in range(_SYNC_ATTEMPTS):
            mark = cache.mark()
            if mark is not None and mark.dim == dim:
                reply = yield Script(
                    "read", ["sync", ns, str(mark.seen), mark.last, str(CHANGES_PAGE)]
                )
                incarnation = optional_text(reply[0])
                added, length, total = int(reply[1]), int(reply[2]), int(reply[3])
                entries = reply[4:]
                count = len(entries) // 2
                verdict = cache.verdict(mark, dim, incarnation, added, length, total, count)
                if verdict == BYPASS:
                    cache.clear()
                    return None
                if verdict == CURRENT:
                    position = cache.confirm(mark, total)
                    if position is not None:
                        return position
                elif verdict == APPLY:
                    # An entry lists the ids one write call changed, one per line.
                    ids = list(
                        dict.fromkeys(i for e in entries[1::2] for i in as_text(e).split("\n"))
                    )
                    rows = yield from self._p_exact_rows(ids)
                    position = cache.apply(mark, as_text(entries[-2]), mark.seen + count, ids, rows)
                    if position is not None and count < CHANGES_PAGE:
                        return position
                    continue
            # Full load: the snapshot (log position and every id) is atomic; writes after it
            # are logged after its position and applied by the next sync.
            reply = yield Script("read", ["snapshot", ns, str(cache.max_records)])
            incarnation, last = optional_text(reply[0]), as_text(reply[1])
            added, total = int(reply[2]), int(reply[3])
            if total > cache.max_records or added < 0:
                cache.clear()
                return None
            ids = [as_text(i) for i in reply[4:]]
            rows = yield from self._p_exact_rows(ids)
            return cache.load(dim, incarnation, last, added, ids, rows)
        return None

    def _p_exact_rows(self, ids: Sequence[str]) -> Plan[list[Any]]:
        """Embedding and token fields of ``ids``, flattened (``ROW_WIDTH`` per id)."""
        flat: list[Any] = []
        for start in range(0, len(ids), ROWS_CHUNK):
            part = ids[start : start + ROWS_CHUNK]
            reply = yield Script("read", ["rows", self.keys.prefix, *part])
            flat += reply
            if len(reply) != ROW_WIDTH * len(part):  # a short reply would misalign every row
                raise StoreError(f"read rows: {len(reply)} values for {len(part)} records")
        return flat

    def _p_search_scan(
        self, vector: bytes, flt: SearchFilter, limit: int
    ) -> Plan[list[tuple[Any, float]]]:
        """Exact search reading every candidate vector (namespaces too large to cache)."""
        size = yield Call(["ZCARD", self.keys.tree(flt.scope)])
        if not size:
            return []
        query = vector_from_bytes(vector)
        kept: list[str] = []
        parts: list[np.ndarray] = []
        tokens = "1" if flt.needs_tokens else "0"
        for start in range(0, int(size), EXACT_CHUNK):
            ids_raw, blob, lines = yield Script(
                "read",
                [
                    "scan",
                    self.keys.prefix,
                    flt.scope,
                    str(start),
                    str(start + EXACT_CHUNK - 1),
                    tokens,
                ],
            )
            if not ids_raw:
                continue
            ids = as_text(ids_raw).split("\n")
            dtype = "<f2" if len(blob) == 2 * query.size * len(ids) else "<f4"  # vector_type
            matrix = (
                np.frombuffer(blob, dtype=dtype).reshape(len(ids), query.size).astype(np.float32)
            )
            if flt.needs_tokens:
                rows = [line.split("\t") for line in as_text(lines).split("\n")]
                mask = np.fromiter((flt.matches(row) for row in rows), dtype=bool, count=len(ids))
                matrix = matrix[mask]
                ids = [i for i, keep in zip(ids, mask) if keep]
            kept += ids
            parts.append(matrix)
        if not kept:
            return []
        matrix = np.concatenate(parts) if len(parts) > 1 else parts[0]
        scores = cosine(matrix, row_norms(matrix), unit_query(query))
        top = top_positions(scores, min(limit, len(kept)), kept.__getitem__)
        records = yield from self._p_fetch([kept[i] for i in top], flt)
        return [(r, float(scores[i])) for i, r in zip(top, records) if r is not None]


def _ft_documents(reply: Any) -> list[tuple[Any, Any]]:
    """``(key, fields)`` of an FT.SEARCH reply: glide's ``[total, {key: fields}]``
    or the raw RESP2 ``[total, key, fields, key, fields, ...]``."""
    if not reply or len(reply) < 2:
        return []
    if isinstance(reply[1], Mapping):
        return list(reply[1].items())
    return [(reply[i], reply[i + 1]) for i in range(1, len(reply) - 1, 2)]
