"""ValkeyStore: CrewAI's ``StorageBackend`` on an indexed Valkey.

Every operation is a *plan* (``_p_*`` methods: generators that yield steps and
parse replies, no I/O), run by the sync face (``glide_sync``) or the async face
(``glide``); see :mod:`memworker.client`. Writes go through one Lua script
(``lua/store.lua``) so a record and all its side-index entries change in one
atomic step; reads use the side indexes (O(log N + page)); search uses
FT.SEARCH when a search module is loaded, or an exact numpy scan otherwise.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np

from memworker.io import AsyncConnection, Call, Pipeline, Plan, Script, SyncConnection, error_text
from memworker.store.codec import (
    RECORD_FIELDS,
    WRITE_FIELDS_JSON,
    EncodedRecord,
    decode_rows,
    encode_records,
    format_timestamp,
    normalize_scope_prefix,
    vector_bytes,
    vector_from_bytes,
    vectors_to_float16,
)
from memworker.errors import ConfigError, MemworkerError, StoreError, ValidationError
from memworker.keys import Keys
from memworker.store.query import MAX_LIMIT, TOKEN_FIELDS, SearchFilter
from memworker.settings import SearchMode, Settings, VectorType
from memworker.records import dimension_mismatch, record_types, utcnow
from memworker.store.vectors import (
    APPLY,
    BYPASS,
    CHANGES_PAGE,
    CURRENT,
    DEFAULT_MAX_RECORDS,
    ROW_WIDTH,
    ROWS_CHUNK,
    VectorCache,
)

__all__ = ["ValkeyStore", "DEFAULT_BATCH_SIZE"]

log = logging.getLogger("memworker.store")

#: Records per atomic write (one script call).
DEFAULT_BATCH_SIZE = 200
#: Commands per pipeline round trip on the exact search path and in bulk reads.
READ_CHUNK = 2_000
#: Records per bulk read of the exact search path (one script call each).
EXACT_CHUNK = 5_000
#: Ids per delete script call.
DELETE_CHUNK = 500
#: Rounds of the exact path's cache sync before it falls back to a bulk read (only
#: reached when other threads keep reloading the cache at the same time).
_SYNC_ATTEMPTS = 20

_DIM_RE = re.compile(r"DIMMISMATCH:? (\d+) (\d+)")
_NOTFOUND_RE = re.compile(r"NOTFOUND:? (.+)")


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


@dataclass
class _State:
    """What a store learned about its server; shared by both faces."""

    dim: int | None = None
    vtype: str | None = None  # "float32" or "float16": how the namespace stores vectors
    module: bool | None = None
    module_float16: bool = False  # the module indexes FLOAT16 vectors (RediSearch >= 2.10)
    index_ready: bool = False
    # list_records reads pages with SORT_RO ... GET until the server refuses it
    # (an ACL user without access to every key, a server before SORT_RO).
    sort_page: bool = True


class ValkeyStore:
    """CrewAI ``StorageBackend`` on Valkey, with sync and async faces.

    Args:
        url: ``valkey://``/``redis://`` URL, a :class:`Settings`, or ``None`` for
            ``VALKEY_URL`` > ``REDIS_URL`` > the embedded server.
        namespace: Key prefix (default ``memworker`` or ``MEMWORKER_NAMESPACE``).
        vector_dim: Expected vector dimension; a different stored one is an error.
        search_mode: ``auto`` (probe for a search module), ``module`` or ``exact``.
        vector_type: How a new namespace stores vectors: ``float32``, ``float16``
            or ``auto`` (float16 where the search module indexes it: RediSearch >= 2.10;
            see :class:`Settings`). A namespace keeps the type of its first write.
        batch_size: Records per atomic write.
        hnsw_m: HNSW ``M`` of the vector index.
        hnsw_ef_construction: HNSW ``EF_CONSTRUCTION``.
        hnsw_ef_runtime: HNSW ``EF_RUNTIME`` (recall vs. latency of a search).
        exact_cache_max_records: Without a search module, namespaces of up to this many
            records are searched from a process-local vector cache kept exact by the
            change log (:mod:`memworker.vectors`); larger ones read every candidate
            vector per search.

    Nothing connects until the first call. Each face creates one client and
    reuses it; call :meth:`close` (or :meth:`aclose`) when done.
    """

    def __init__(
        self,
        url: str | Settings | None = None,
        *,
        namespace: str | None = None,
        vector_dim: int | None = None,
        search_mode: SearchMode | None = None,
        vector_type: VectorType | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        hnsw_ef_runtime: int = 64,
        exact_cache_max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.settings = Settings.resolve(
            url, namespace=namespace, search_mode=search_mode, vector_type=vector_type
        )
        if vector_dim is not None and (not isinstance(vector_dim, int) or vector_dim <= 0):
            raise ConfigError(f"vector_dim must be a positive integer, got {vector_dim!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise ConfigError(f"batch_size must be from 1 to 10000, got {batch_size!r}")
        self.keys = Keys(self.settings.namespace)
        self.batch_size = batch_size
        self._expected_dim = vector_dim
        self._hnsw = (hnsw_m, hnsw_ef_construction, hnsw_ef_runtime)
        self._state = _State()
        self._sync = SyncConnection(self.settings)
        self._async = AsyncConnection(self.settings)
        cap = exact_cache_max_records
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ConfigError(f"exact_cache_max_records must be a non-negative integer, got {cap!r}")
        self._vectors = VectorCache(cap)

    def __repr__(self) -> str:
        return f"ValkeyStore({self.settings.redacted_url()!r}, namespace={self.keys.namespace!r})"

    # ================================================================== plans: shared
    def _p_probe(self) -> Plan[bool]:
        """Learn once whether a search module answers FT commands."""
        if self._state.module is not None:
            return self._state.module
        mode = self.settings.search_mode
        found = False
        if mode != "exact":
            try:
                modules = yield Call(["MODULE", "LIST"])
                names = {_module_name(m): _module_version(m) for m in modules or []}
                found = bool(set(names) & {"search", "ft", "valkey-search"})
                # RediSearch ("search", version 21000 = 2.10.0) indexes FLOAT16 from 2.10;
                # valkey-search (version 1.x) only FLOAT32.
                self._state.module_float16 = names.get("search", 0) >= 21000
            except Exception:  # noqa: BLE001 - MODULE LIST may be denied (managed services)
                try:
                    yield Call(["FT._LIST"])
                    found = True
                except Exception:  # noqa: BLE001
                    found = False
            if mode == "module" and not found:
                raise ConfigError(
                    "search mode 'module' needs a search module (valkey-search or RediSearch) "
                    f"on {self.settings.redacted_url()}, and none answered"
                )
        self._state.module = found
        return found

    def _p_stored_dim(self, *, refresh: bool = False) -> Plan[int | None]:
        if self._state.dim is None or refresh:
            raw, vtype = yield Call(["HMGET", self.keys.meta, "dim", "vtype"])
            self._state.dim = int(raw) if raw is not None else None
            self._state.vtype = (_text(vtype) if vtype is not None else "float32") if raw is not None else None
        if self._state.dim is None and self._expected_dim is not None:
            return None
        if (
            self._expected_dim is not None
            and self._state.dim is not None
            and self._state.dim != self._expected_dim
        ):
            raise dimension_mismatch(self._state.dim, self._expected_dim)
        return self._state.dim

    def _p_check_dim(self, dim: int) -> Plan[None]:
        """Raise the dimension error when ``dim`` is not the stored dimension."""
        stored = yield from self._p_stored_dim()
        if stored is not None and stored != dim:
            stored = yield from self._p_stored_dim(refresh=True)  # a reset may have cleared it
        if stored is not None and stored != dim:
            raise dimension_mismatch(stored, dim)
        if stored is None and self._expected_dim is not None and self._expected_dim != dim:
            raise dimension_mismatch(self._expected_dim, dim)

    def _p_ensure_index(self, dim: int) -> Plan[None]:
        """Create the vector index once (idempotent across processes)."""
        module = yield from self._p_probe()
        if not module or self._state.index_ready:
            return
        m, ef_construction, ef_runtime = self._hnsw
        k = self.keys
        # fmt: off
        command = [
            "FT.CREATE", k.index, "ON", "HASH", "PREFIX", "1", k.rec_prefix, "SCHEMA",
            "embedding", "VECTOR", "HNSW", "12", "TYPE", (self._state.vtype or "float32").upper(), "DIM", str(dim),
            "DISTANCE_METRIC", "COSINE", "M", str(m), "EF_CONSTRUCTION", str(ef_construction),
            "EF_RUNTIME", str(ef_runtime),
            "scope_anc", "TAG", "SEPARATOR", ",",
            "cat_t", "TAG", "SEPARATOR", ",",
            "meta_t", "TAG", "SEPARATOR", ",",
            "src_t", "TAG", "SEPARATOR", ",",
            "vis", "TAG", "SEPARATOR", ",",
        ]
        # No NUMERIC fields: no query filters on them (dates and importance are read
        # back from the hash), and each costs index memory per record.
        # fmt: on
        existing = yield Call(["FT._LIST"])
        if k.index.encode() in {e if isinstance(e, bytes) else str(e).encode() for e in existing or []}:
            self._state.index_ready = True
            return
        try:
            yield Call(command)
        except Exception as exc:  # noqa: BLE001
            if "exists" not in error_text(exc).lower():
                raise
        self._state.index_ready = True

    # ================================================================== plans: writes
    def _p_write(
        self,
        encoded: list[EncodedRecord],
        extra: Sequence[Sequence[Any]] = (),
        *,
        retried: bool = False,
        guard: tuple[str, str] | None = None,
    ) -> Plan[int]:
        """Write validated records in atomic chunks; ``extra`` commands run in the last one.

        With ``guard`` (a job's pending set and id: a worker's commit), each chunk
        writes only while the job is pending (else :class:`NotPending`), and leaves a
        record whose ``upd`` stamp is later than the job's enqueue time (the pending
        mark's score) as it is. Without, a record replaced gets ``upd`` = now (ms):
        a user's ``update`` or re-save is never reverted by a late job."""
        dims = {e.dim for e in encoded if e.dim}
        dim = dims.pop() if dims else 0
        if dim:
            yield from self._p_check_dim(dim)
        vtype = yield from self._p_vector_type()
        stored = self._state.dim or dim
        if stored:
            yield from self._p_ensure_index(stored)
        inserted = 0
        stamp = str(int(time.time() * 1000))
        chunks = [encoded[i : i + self.batch_size] for i in range(0, len(encoded), self.batch_size)]
        if not chunks and extra:
            chunks = [[]]
        # Every chunk's arguments are built (and float16 conversion checked) before the
        # first one is written.
        blobs = [b"".join([rec.embedding for rec in chunk]) for chunk in chunks]
        if vtype == "float16" and dim:
            done = 0
            for i, chunk in enumerate(chunks):
                if blobs[i]:
                    # the k-th vector of the blob is the k-th record carrying one
                    rows = [done + j for j, rec in enumerate(chunk) if rec.embedding]
                    blobs[i] = vectors_to_float16(
                        blobs[i], dim, lambda k, rows=rows: f"records[{rows[k]}].embedding"
                    )
                done += len(chunk)
        for n, chunk in enumerate(chunks):
            args: list[Any] = [
                "save",
                self.keys.namespace,
                str(dim) if dim else "",
                vtype,
                str(len(chunk)),
                "".join([rec.mode for rec in chunk]),
                "[" + ",".join([WRITE_FIELDS_JSON, *[rec.row_json for rec in chunk]]) + "]",
                blobs[n],
                *(guard or ("", stamp)),
            ]
            if n == len(chunks) - 1:
                for command in extra:
                    args.append(str(len(command)))
                    args += list(command)
            try:
                reply = yield Script("store", args)
            except Exception as exc:  # noqa: BLE001
                text = error_text(exc)
                if "VTYPEMISMATCH" in text:
                    # The namespace was (re)created with another vector type since this
                    # store looked (the script refused before writing): learn it, redo.
                    yield from self._p_stored_dim(refresh=True)
                    if n == 0 and not retried and self._state.vtype != vtype:
                        return (yield from self._p_write(encoded, extra, retried=True, guard=guard))
                    raise StoreError(
                        f"namespace {self.keys.namespace!r} stores {self._state.vtype} vectors, "
                        f"this write was encoded as {vtype}"
                    ) from None
                found = _DIM_RE.search(text)
                if found:
                    self._state.dim = int(found.group(1))
                    raise dimension_mismatch(int(found.group(1)), int(found.group(2))) from None
                if guard is not None and "NOTPENDING" in text:
                    raise NotPending(f"job {guard[1]} is no longer pending") from None
                missing = _NOTFOUND_RE.search(text)
                if missing:
                    raise ValidationError(
                        f"update: record {missing.group(1)!r} does not exist and has no embedding"
                    ) from None
                raise
            inserted += int(reply[0])
            if int(reply[1]) and dim:
                # First write since the namespace was empty: another process may have
                # dropped the index (reset). Make sure it exists, then rewrite the
                # chunk so the module indexes it synchronously (writes are idempotent).
                self._state.dim = dim
                if self._state.module and self._state.index_ready:
                    self._state.index_ready = False
                    yield from self._p_ensure_index(dim)
                    last = n == len(chunks) - 1
                    args[8:10] = ["", ""]  # the same write again (the guard held), unstamped
                    yield Script("store", _strip_extra(args, extra) if last else args)
        return inserted

    def _p_vector_type(self) -> Plan[str]:
        """How this namespace stores vectors: its stored type, or for a new namespace
        the ``vector_type`` setting (``auto``: float16 when the module indexes it)."""
        yield from self._p_stored_dim()
        if self._state.vtype is not None:
            return self._state.vtype
        setting = self.settings.vector_type
        if setting == "auto":
            module = yield from self._p_probe()
            setting = "float16" if module and self._state.module_float16 else "float32"
        self._state.vtype = setting
        return setting

    def _p_save(self, records: Iterable[Any]) -> Plan[None]:
        encoded = encode_records(list(records))
        if encoded:
            yield from self._p_write(encoded)

    def _p_update(self, record: Any) -> Plan[None]:
        encoded = encode_records([record], keep_embedding=True)
        yield from self._p_write(encoded)

    def _p_touch(self, record_ids: Sequence[str]) -> Plan[int]:
        ids = [str(i) for i in record_ids or []]
        if not ids:
            return 0
        touched = yield Script("store", ["touch", self.keys.namespace, format_timestamp(utcnow()), *ids])
        return int(touched)

    def _p_delete_ids(self, ids: Sequence[str]) -> Plan[int]:
        deleted = 0
        for i in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[i : i + DELETE_CHUNK]
            deleted += int((yield Script("store", ["delete", self.keys.namespace, *chunk])))
        return deleted

    def _p_delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> Plan[int]:
        flt = SearchFilter.build(
            scope_prefix=scope_prefix, categories=categories, metadata_filter=metadata_filter
        )
        cutoff = None
        if older_than is not None:
            from memworker.store.codec import _to_utc_naive

            cutoff = "(" + format_timestamp(_to_utc_naive(older_than, "older_than"))
        tree = self.keys.tree(flt.scope)
        if record_ids is not None:
            ids = list(dict.fromkeys(str(i) for i in record_ids))
            if not ids:
                return 0
            if flt.scope != "/" or cutoff is not None:
                scores = yield Pipeline([["ZSCORE", tree, i] for i in ids])
                limit = float(cutoff[1:]) if cutoff else None
                ids = [
                    i
                    for i, s in zip(ids, scores)
                    if s is not None and (limit is None or float(s) < limit)
                ]
        elif cutoff is not None:
            ids = [_text(i) for i in (yield Call(["ZRANGEBYSCORE", tree, "-inf", cutoff]))]
        else:
            ids = [_text(i) for i in (yield Call(["ZRANGE", tree, "0", "-1"]))]
        if flt.needs_tokens and ids:
            kept: list[str] = []
            for start in range(0, len(ids), READ_CHUNK):
                part = ids[start : start + READ_CHUNK]
                rows = yield Pipeline([["HMGET", self.keys.rec(i), *TOKEN_FIELDS] for i in part])
                kept += [i for i, row in zip(part, rows) if flt.matches(row)]
            ids = kept
        return (yield from self._p_delete_ids(ids))

    def _p_reset(self, scope_prefix: str | None) -> Plan[None]:
        scope = normalize_scope_prefix(scope_prefix)
        if scope != "/":
            yield from self._p_delete(scope_prefix=scope)
            return
        module = yield from self._p_probe()
        if module:
            try:
                yield Call(["FT.DROPINDEX", self.keys.index])
            except Exception as exc:  # noqa: BLE001
                if "unknown" not in error_text(exc).lower() and "not found" not in error_text(exc).lower():
                    raise
        self._state.index_ready = False
        tree = self.keys.tree("/")
        orphans = False
        while True:
            ids = [_text(i) for i in (yield Call(["ZRANGE", tree, "0", str(DELETE_CHUNK - 1)]))]
            if not ids:
                break
            if not (yield from self._p_delete_ids(ids)):
                # Index entries whose record hash is gone (evicted under a maxmemory
                # policy, or deleted by hand): the delete script cannot unindex them.
                orphans = True
                yield Call(["ZREM", tree, *ids])
        if orphans:  # every side index left, scope by scope from the root
            scopes, seen = ["/"], {"/"}
            while scopes:
                scope = scopes.pop()
                for child in (yield Call(["HKEYS", self.keys.children(scope)])):
                    if _text(child) not in seen:
                        seen.add(_text(child))
                        scopes.append(_text(child))
                yield Call(["DEL", self.keys.tree(scope), self.keys.children(scope), self.keys.cats(scope)])
            yield Call(["DEL", self.keys.changes])  # the delete script keeps it while the root is not empty
        yield Call(["DEL", self.keys.meta])
        self._state.dim = None
        self._state.vtype = None

    # ================================================================== plans: reads
    def _p_get(self, record_id: str) -> Plan[Any]:
        return (yield from self._p_fetch([str(record_id)]))[0]

    def _p_fetch(self, ids: Sequence[str]) -> Plan[list[Any]]:
        """Records by id (``None`` where missing), one script call per READ_CHUNK ids:
        the client pays per command and per argument, so one call beats a pipeline."""
        out: list[Any] = []
        for start in range(0, len(ids), READ_CHUNK):
            part = list(ids[start : start + READ_CHUNK])
            flat = yield Script(
                "read", ["records", self.keys.namespace, str(len(RECORD_FIELDS)), *RECORD_FIELDS, *part]
            )
            out += _decode_rows(flat)
        return out

    def _p_list(self, scope_prefix: str | None, limit: int, offset: int) -> Plan[list[Any]]:
        if limit <= 0 or offset < 0:
            return []
        scope = normalize_scope_prefix(scope_prefix)
        if self._state.sort_page:
            # One round trip, no script: SORT_RO reads the page's fields natively (a
            # zset "BY nosort" keeps its order, DESC = newest first, and LIMIT takes the
            # range by rank), about half the server time of the read script's HMGET
            # per record. The dimension (float16 or float32 bytes) comes alongside; it
            # changes only when the namespace is emptied.
            try:
                dim, flat = yield Pipeline(
                    [["HGET", self.keys.meta, "dim"],
                     ["SORT_RO", self.keys.tree(scope), "BY", "nosort", "DESC", "LIMIT", str(offset), str(limit),
                      *_page_gets(self.keys.namespace)]]
                )  # fmt: skip
            except Exception as exc:
                if not _sort_refused(exc):
                    raise
                log.info("list_records: SORT_RO refused (%s); reading pages with the read script", exc)
                self._state.sort_page = False
            else:
                return [r for r in _decode_rows([dim, *flat]) if r is not None]
        flat = yield Script(
            "read",
            ["page", self.keys.namespace, scope, str(offset), str(offset + limit - 1),
             str(len(RECORD_FIELDS)), *RECORD_FIELDS],
        )  # fmt: skip
        return [r for r in _decode_rows(flat) if r is not None]

    def _p_count(self, scope_prefix: str | None) -> Plan[int]:
        scope = normalize_scope_prefix(scope_prefix)
        return int((yield Call(["ZCARD", self.keys.tree(scope)])))

    def _p_scope_info(self, scope: str) -> Plan[Any]:
        path = normalize_scope_prefix(scope, field="scope")
        tree = self.keys.tree(path)
        count, oldest, newest, cats, children = yield Pipeline(
            [
                ["ZCARD", tree],
                ["ZRANGE", tree, "0", "0", "WITHSCORES"],
                ["ZRANGE", tree, "-1", "-1", "WITHSCORES"],
                ["HKEYS", self.keys.cats(path)],
                ["HKEYS", self.keys.children(path)],
            ]
        )
        from memworker.store.codec import parse_timestamp

        def when(pair: Any) -> datetime | None:
            if not pair:
                return None
            score = next(iter(pair.values())) if isinstance(pair, Mapping) else pair[1]
            return parse_timestamp(float(score))

        return record_types()[1](
            path=path,
            record_count=int(count),
            categories=sorted(_text(c) for c in cats),
            oldest_record=when(oldest),
            newest_record=when(newest),
            child_scopes=sorted(_text(c) for c in children),
        )

    def _p_list_scopes(self, parent: str) -> Plan[list[str]]:
        path = normalize_scope_prefix(parent, field="parent")
        children = yield Call(["HKEYS", self.keys.children(path)])
        return sorted(_text(c) for c in children)

    def _p_list_categories(self, scope_prefix: str | None) -> Plan[dict[str, int]]:
        path = normalize_scope_prefix(scope_prefix)
        raw = yield Call(["HGETALL", self.keys.cats(path)])
        items = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2])
        return {_text(k): int(v) for k, v in items if int(v) > 0}

    # ================================================================== plans: search
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
    ) -> Plan[list[tuple[Any, float]]]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or limit > MAX_LIMIT:
            raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        vector, dim = vector_bytes(query_embedding, field="query_embedding")
        flt = SearchFilter.build(
            scope_prefix=scope_prefix,
            categories=categories,
            metadata_filter=metadata_filter,
            source=source,
            include_private=include_private,
            viewer=viewer,
        )
        stored = yield from self._p_stored_dim()
        if stored is None:
            stored = yield from self._p_stored_dim(refresh=True)
            if stored is None:
                return []  # nothing was ever saved
        if stored != dim:
            yield from self._p_check_dim(dim)
        module = yield from self._p_probe()
        if module:
            yield from self._p_ensure_index(stored)
            hits = yield from self._p_search_module(vector, flt, limit)
        else:
            hits = yield from self._p_search_exact(vector, flt, limit)
        # CrewAI passes min_score=0.0 to mean "no threshold": cosine can be negative.
        out = [(r, s) for r, s in hits if min_score <= 0 or s >= min_score]
        out.sort(key=lambda pair: (-pair[1], pair[0].id))
        return out[:limit]

    def _p_search_module(self, vector: bytes, flt: SearchFilter, limit: int) -> Plan[list[tuple[Any, float]]]:
        # Only the distance comes from FT.SEARCH: modules may round NUMERIC fields
        # they return (RediSearch keeps 12 digits), so records are read with HMGET.
        if self._state.vtype == "float16":  # the query in the index's type
            vector = vectors_to_float16(vector, len(vector) // 4, lambda _: "query_embedding")
        command = [
            "FT.SEARCH", self.keys.index, flt.ft_query(limit),
            "PARAMS", "2", "vec", vector,
            "RETURN", "1", "dist",
            "LIMIT", "0", str(limit),
            "DIALECT", "2",
        ]  # fmt: skip
        try:
            reply = yield Call(command)
        except Exception as exc:  # noqa: BLE001
            text = error_text(exc).lower()
            if "no such index" in text or "unknown index" in text or "not found" in text:
                self._state.index_ready = False
                return []
            raise
        prefix = self.keys.rec_prefix
        scored: list[tuple[str, float]] = []
        for key, fields in _ft_documents(reply):
            if isinstance(fields, Mapping):
                row = {_text(k): v for k, v in fields.items()}
            else:
                row = {_text(fields[j]): fields[j + 1] for j in range(0, len(fields), 2)}
            name = _text(key)
            if row.get("dist") is None or not name.startswith(prefix):
                continue
            scored.append((name[len(prefix) :], 1.0 - float(_text(row["dist"]))))
        records = yield from self._p_fetch([i for i, _ in scored])
        return [(r, s) for (_, s), r in zip(scored, records) if r is not None]

    def _p_search_exact(self, vector: bytes, flt: SearchFilter, limit: int) -> Plan[list[tuple[Any, float]]]:
        """Exact search from the process-local vector cache (:mod:`memworker.vectors`):
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
            records = yield from self._p_fetch([i for i, _ in hits])
            return [(r, s) for (_, s), r in zip(hits, records) if r is not None]
        return (yield from self._p_search_scan(vector, flt, limit))

    def _p_exact_sync(self, dim: int) -> Plan[tuple[int, int] | None]:
        """Bring the vector cache up to date with the change log; returns the cache
        position a search must score at (or later), or ``None``: do not use the cache."""
        cache = self._vectors
        ns = self.keys.namespace
        for _ in range(_SYNC_ATTEMPTS):
            mark = cache.mark()
            if mark is not None and mark.dim == dim:
                reply = yield Script("read", ["sync", ns, str(mark.seen), mark.last, str(CHANGES_PAGE)])
                incarnation = _opt_text(reply[0])
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
                    ids = list(dict.fromkeys(i for e in entries[1::2] for i in _text(e).split("\n")))
                    rows = yield from self._p_exact_rows(ids)
                    position = cache.apply(mark, _text(entries[-2]), mark.seen + count, ids, rows)
                    if position is not None and count < CHANGES_PAGE:
                        return position
                    continue
            # Full load: the snapshot (log position and every id) is atomic; writes after it
            # are logged after its position and applied by the next sync.
            reply = yield Script("read", ["snapshot", ns, str(cache.max_records)])
            incarnation, last = _opt_text(reply[0]), _text(reply[1])
            added, total = int(reply[2]), int(reply[3])
            if total > cache.max_records or added < 0:
                cache.clear()
                return None
            ids = [_text(i) for i in reply[4:]]
            rows = yield from self._p_exact_rows(ids)
            return cache.load(dim, incarnation, last, added, ids, rows)
        return None

    def _p_exact_rows(self, ids: Sequence[str]) -> Plan[list[Any]]:
        """Embedding and token fields of ``ids``, flattened (``ROW_WIDTH`` per id)."""
        flat: list[Any] = []
        for start in range(0, len(ids), ROWS_CHUNK):
            part = ids[start : start + ROWS_CHUNK]
            reply = yield Script("read", ["rows", self.keys.namespace, *part])
            flat += reply
            if len(reply) != ROW_WIDTH * len(part):  # a short reply would misalign every row
                raise StoreError(f"read rows: {len(reply)} values for {len(part)} records")
        return flat

    def _p_search_scan(self, vector: bytes, flt: SearchFilter, limit: int) -> Plan[list[tuple[Any, float]]]:
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
                ["scan", self.keys.namespace, flt.scope, str(start), str(start + EXACT_CHUNK - 1), tokens],
            )
            if not ids_raw:
                continue
            ids = _text(ids_raw).split("\n")
            dtype = "<f2" if len(blob) == 2 * query.size * len(ids) else "<f4"  # vector_type
            matrix = np.frombuffer(blob, dtype=dtype).reshape(len(ids), query.size).astype(np.float32)
            if flt.needs_tokens:
                rows = [line.split("\t") for line in _text(lines).split("\n")]
                mask = np.fromiter((flt.matches(row) for row in rows), dtype=bool, count=len(ids))
                matrix = matrix[mask]
                ids = [i for i, keep in zip(ids, mask) if keep]
            kept += ids
            parts.append(matrix)
        if not kept:
            return []
        matrix = np.concatenate(parts) if len(parts) > 1 else parts[0]
        norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(query))
        scores = (matrix @ query) / np.where(norms == 0, 1.0, norms)
        k = min(limit, len(kept))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(kept) else np.arange(len(kept))
        records = yield from self._p_fetch([kept[i] for i in top])
        return [(r, float(scores[i])) for i, r in zip(top, records) if r is not None]

    # ================================================================== sync face
    def save(self, records: list[Any]) -> None:
        """Save records (validated whole, then written in atomic batches).

        Saving an id that exists replaces that record; side indexes stay exact. A
        record whose embedding is ``None``, empty or all zeros is stored without one:
        counted, listed and read (``embedding=None``), never returned by :meth:`search`.

        Raises:
            ValidationError: A bad record (named by index); nothing is written.
            EmbeddingDimensionMismatchError: A vector of another dimension than the store's.
        """
        self._sync.run(self._p_save(records))

    def search(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
        *,
        source: str | None = None,
        include_private: bool = True,
        viewer: str | None = None,
    ) -> list[tuple[Any, float]]:
        """Nearest records by cosine similarity, filtered in the query.

        Args:
            query_embedding: The query vector.
            scope_prefix: Only records in this scope or below (by path component).
            categories: Only records with at least one of these categories.
            metadata_filter: Only records whose metadata has all these pairs.
            limit: Most results (1 to 10,000).
            min_score: Drop results with a lower cosine similarity.
            source: Only records with this source.
            include_private: False hides private records, except ``viewer``'s own.
            viewer: The source asking (see ``include_private``).

        Returns:
            ``(record, similarity)`` pairs, highest similarity first; records stored
            without an embedding are never among them.
        """
        return self._sync.run(
            self._p_search(
                query_embedding, scope_prefix, categories, metadata_filter, limit, min_score,
                source, include_private, viewer,
            )
        )  # fmt: skip

    def delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        """Delete the records matching every given criterion; returns how many were deleted."""
        return self._sync.run(
            self._p_delete(scope_prefix, categories, record_ids, older_than, metadata_filter)
        )

    def update(self, record: Any) -> None:
        """Replace a record by id (keeping its stored embedding when its own is
        ``None``; an empty one or zeros remove it); index entries move with its scope
        and categories in the same atomic step."""
        self._sync.run(self._p_update(record))

    def touch_records(self, record_ids: list[str]) -> None:
        """Set ``last_accessed`` to now for these ids, in one round trip."""
        self._sync.run(self._p_touch(record_ids))

    def get_record(self, record_id: str) -> Any:
        """The record with this id, or ``None``."""
        return self._sync.run(self._p_get(record_id))

    def list_records(
        self, scope_prefix: str | None = None, limit: int = 200, offset: int = 0
    ) -> list[Any]:
        """Records in a scope (and below), newest first, paginated."""
        return self._sync.run(self._p_list(scope_prefix, limit, offset))

    def get_scope_info(self, scope: str) -> Any:
        """Count, categories, oldest/newest and child scopes of a scope."""
        return self._sync.run(self._p_scope_info(scope))

    def list_scopes(self, parent: str = "/") -> list[str]:
        """Immediate child scopes of ``parent`` that hold records."""
        return self._sync.run(self._p_list_scopes(parent))

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        """Category -> number of records carrying it, in a scope and below."""
        return self._sync.run(self._p_list_categories(scope_prefix))

    def count(self, scope_prefix: str | None = None) -> int:
        """Number of records in a scope and below (``None``: all)."""
        return self._sync.run(self._p_count(scope_prefix))

    def reset(self, scope_prefix: str | None = None) -> None:
        """Delete every record in a scope and below; ``None`` also forgets the dimension."""
        self._sync.run(self._p_reset(scope_prefix))

    def close(self) -> None:
        """Close the sync client (the async one is closed by :meth:`aclose`)."""
        self._sync.close()

    def __enter__(self) -> ValkeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== async face
    async def asave(self, records: list[Any]) -> None:
        """Async :meth:`save`."""
        await self._async.run(self._p_save(records))

    async def asearch(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
        *,
        source: str | None = None,
        include_private: bool = True,
        viewer: str | None = None,
    ) -> list[tuple[Any, float]]:
        """Async :meth:`search`."""
        return await self._async.run(
            self._p_search(
                query_embedding, scope_prefix, categories, metadata_filter, limit, min_score,
                source, include_private, viewer,
            )
        )  # fmt: skip

    async def adelete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        """Async :meth:`delete`."""
        return await self._async.run(
            self._p_delete(scope_prefix, categories, record_ids, older_than, metadata_filter)
        )

    async def aupdate(self, record: Any) -> None:
        """Async :meth:`update`."""
        await self._async.run(self._p_update(record))

    async def atouch_records(self, record_ids: list[str]) -> None:
        """Async :meth:`touch_records`."""
        await self._async.run(self._p_touch(record_ids))

    async def aget_record(self, record_id: str) -> Any:
        """Async :meth:`get_record`."""
        return await self._async.run(self._p_get(record_id))

    async def alist_records(
        self, scope_prefix: str | None = None, limit: int = 200, offset: int = 0
    ) -> list[Any]:
        """Async :meth:`list_records`."""
        return await self._async.run(self._p_list(scope_prefix, limit, offset))

    async def aget_scope_info(self, scope: str) -> Any:
        """Async :meth:`get_scope_info`."""
        return await self._async.run(self._p_scope_info(scope))

    async def alist_scopes(self, parent: str = "/") -> list[str]:
        """Async :meth:`list_scopes`."""
        return await self._async.run(self._p_list_scopes(parent))

    async def alist_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        """Async :meth:`list_categories`."""
        return await self._async.run(self._p_list_categories(scope_prefix))

    async def acount(self, scope_prefix: str | None = None) -> int:
        """Async :meth:`count`."""
        return await self._async.run(self._p_count(scope_prefix))

    async def areset(self, scope_prefix: str | None = None) -> None:
        """Async :meth:`reset`."""
        await self._async.run(self._p_reset(scope_prefix))

    async def aclose(self) -> None:
        """Close the async client."""
        await self._async.close()

    # ================================================================== internals for the worker
    def write_encoded(
        self,
        encoded: list[EncodedRecord],
        extra: Sequence[Sequence[Any]] = (),
        *,
        guard: tuple[str, str] | None = None,
    ) -> int:
        """Write already-validated records plus ``extra`` commands in the same atomic step
        (the worker's commit: records, side indexes and the pending-mark removal).

        Args:
            guard: ``(sorted set key, member)``: write only while the member is in the
                set (a job's pending mark), checked in the same atomic step.

        Raises:
            NotPending: The guard's member is gone; nothing was written.
        """
        return self._sync.run(self._p_write(encoded, extra, guard=guard))

    def _p_ensure_model(self, model_id: str) -> Plan[str]:
        if not isinstance(model_id, str) or not model_id:
            raise ConfigError(f"model_id must be a non-empty string, got {model_id!r}")
        yield Call(["HSETNX", self.keys.meta, "model", model_id])
        stored = _text((yield Call(["HGET", self.keys.meta, "model"])) or model_id)
        if stored != model_id:
            raise ConfigError(
                f"embedding model mismatch in namespace {self.keys.namespace!r}: the store was "
                f"written with {stored!r}, this process embeds with {model_id!r}; queries and "
                "stored vectors must come from the same model (set MEMWORKER_MODEL or the "
                "embedder to the store's model, or use another namespace)"
            )
        return stored

    def ensure_model(self, model_id: str) -> str:
        """Record ``model_id`` as the namespace's embedding model if none is recorded
        (``HSETNX ns:meta model``), and return it.

        Raises:
            ConfigError: Another model is recorded: vectors would not be comparable.
        """
        return self._sync.run(self._p_ensure_model(model_id))

    async def aensure_model(self, model_id: str) -> str:
        """Async :meth:`ensure_model`."""
        return await self._async.run(self._p_ensure_model(model_id))

    @property
    def search_module(self) -> bool:
        """Whether a search module is used (probes the server on first access)."""
        return self._sync.run(self._p_probe())

    @property
    def vector_type(self) -> str:
        """``"float32"`` or ``"float16"``: how the namespace stores vectors (for a new
        namespace, the type its first write will use). Reads the server each time."""

        def plan() -> Plan[str]:
            yield from self._p_stored_dim(refresh=True)
            return (yield from self._p_vector_type())

        return self._sync.run(plan())


class NotPending(StoreError):
    """A guarded write found its job no longer pending (it committed or failed)."""


def _sort_refused(exc: BaseException) -> bool:
    """The server refused SORT_RO: its ACL (no access to every key, which SORT's GET
    needs, or the command not allowed) or a server without the command."""
    if isinstance(exc, MemworkerError):  # our own, e.g. the connection lost for good
        return False
    text = error_text(exc).lower()
    return "sort" in text and ("denied" in text or "permission" in text or "unknown command" in text)


@lru_cache(maxsize=64)
def _page_gets(namespace: str) -> tuple[str, ...]:
    """SORT's GET patterns for RECORD_FIELDS of ``namespace``'s records (``#``: the
    id itself). SORT substitutes the first ``*`` with the id verbatim, and a namespace
    has no ``*`` (Settings checks it)."""
    out: list[str] = []
    for name in RECORD_FIELDS:
        out += ["GET", "#" if name == "id" else f"{namespace}:rec:*->{name}"]
    return tuple(out)


def _decode_rows(reply: Sequence[Any]) -> list[Any]:
    """Records from a ``read.lua records/page`` reply: the namespace's dimension, then
    RECORD_FIELDS-long rows, flattened (``None`` = missing)."""
    if not reply:
        return []
    width = len(RECORD_FIELDS)
    rows = (reply[i : i + width] for i in range(1, len(reply), width))
    return decode_rows(rows, record_types()[0], int(reply[0]) if reply[0] else None)


def _ft_documents(reply: Any) -> list[tuple[Any, Any]]:
    """``(key, fields)`` of an FT.SEARCH reply: glide's ``[total, {key: fields}]``
    or the raw RESP2 ``[total, key, fields, key, fields, ...]``."""
    if not reply or len(reply) < 2:
        return []
    if isinstance(reply[1], Mapping):
        return list(reply[1].items())
    return [(reply[i], reply[i + 1]) for i in range(1, len(reply) - 1, 2)]


def _opt_text(raw: Any) -> str | None:
    return None if raw is None else _text(raw)


def _module_version(entry: Any) -> int:
    """The version in one MODULE LIST entry (0 when absent)."""
    if isinstance(entry, Mapping):
        raw = entry.get(b"ver", entry.get("ver", 0))
    else:
        items = list(entry)
        raw = next((items[i + 1] for i in range(0, len(items) - 1, 2) if _text(items[i]) == "ver"), 0)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _module_name(entry: Any) -> str:
    """The name in one MODULE LIST entry (a flat RESP2 list or a map)."""
    if isinstance(entry, Mapping):
        return _text(entry.get(b"name", entry.get("name", ""))).lower()
    items = list(entry)
    for i in range(0, len(items) - 1, 2):
        if _text(items[i]) == "name":
            return _text(items[i + 1]).lower()
    return ""


def _strip_extra(args: list[Any], extra: Sequence[Sequence[Any]]) -> list[Any]:
    """A save script's arguments without its trailing extra commands (they ran once)."""
    drop = sum(len(c) + 1 for c in extra)
    return args[: len(args) - drop] if drop else args
