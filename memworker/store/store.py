"""ValkeyStore: CrewAI's ``StorageBackend`` on an indexed Valkey, with sync and async faces.

Every operation is a *plan* (``_p_*`` methods: generators that yield steps and
parse replies, no I/O; :mod:`memworker.store.plans`), run by the sync face
(``glide_sync``) or the async face (``glide``); see :mod:`memworker.io`.
Writes go through one Lua script (``lua/store.lua``) so a record and all its
side-index entries change in one atomic step; reads use the side indexes
(O(log N + page)); search uses FT.SEARCH when a search module is loaded, or an
exact numpy scan otherwise. The key layout is :class:`memworker.keys.Keys`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from memworker.errors import ConfigError, MemworkerError
from memworker.io import AsyncConnection, Call, Plan, SyncConnection
from memworker.io.plan import is_permanent
from memworker.keys import Keys
from memworker.settings import SearchMode, Settings, VectorType
from memworker.store.codec import Row
from memworker.store.plans.delete import DeletePlans
from memworker.store.plans.search import SearchPlans
from memworker.store.plans.server import StoreState
from memworker.store.plans.write import JobWrite, NotPending, WritePlans
from memworker.store.validate import check_ids
from memworker.store.vectors import DEFAULT_MAX_RECORDS, VectorCache

__all__ = ["DEFAULT_BATCH_SIZE", "TOMB_KEEP_MS", "JobWrite", "NotPending", "ValkeyStore"]

#: Records per atomic write (one script call).
DEFAULT_BATCH_SIZE = 200
#: How long a versioned delete's tombstone is kept (7 days, in ms): a versioned write
#: enqueued before the delete and committed later than this would be written.
TOMB_KEEP_MS = 7 * 86_400_000

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Without ``now_ms``, a sweep's time is this host's clock or the server's, whichever
#: is earlier (docs/guarantees.md, "Clocks that disagree"). A test whose virtual clock
#: stands for the server's too turns this off.
SWEEP_AT_MOST_SERVER_TIME = True


def _sync_face(
    plan: Callable[Concatenate[ValkeyStore, _P], Plan[_R]],
) -> Callable[Concatenate[ValkeyStore, _P], _R]:
    """A store method that runs ``plan`` on the sync client (same signature and docs)."""

    @functools.wraps(plan)
    def face(self: ValkeyStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._sync.run(plan(self, *args, **kwargs))

    face.__name__ = plan.__name__.lstrip("_")
    face.__qualname__ = f"ValkeyStore.{face.__name__}"
    return face


def _async_face(
    plan: Callable[Concatenate[ValkeyStore, _P], Plan[_R]],
) -> Callable[Concatenate[ValkeyStore, _P], Coroutine[Any, Any, _R]]:
    """The async twin of :func:`_sync_face`."""

    @functools.wraps(plan)
    async def face(self: ValkeyStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await self._async.run(plan(self, *args, **kwargs))

    name = plan.__name__.lstrip("_")
    face.__name__, face.__qualname__ = f"a{name}", f"ValkeyStore.a{name}"
    face.__doc__ = f"Async :meth:`{name}`."
    return face


class ValkeyStore(WritePlans, DeletePlans, SearchPlans):
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
        hnsw_ef_construction: HNSW ``EF_CONSTRUCTION`` of a new namespace's index;
            ``None``: the settings' (``MEMWORKER_HNSW_EF_CONSTRUCTION``, 128).
        hnsw_ef_runtime: HNSW ``EF_RUNTIME`` (recall vs. latency of a search).
        exact_cache_max_records: Without a search module, namespaces of up to this many
            records are searched from a process-local vector cache kept exact by the
            change log (:mod:`memworker.store.vectors`); larger ones read every candidate
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
        hnsw_ef_construction: int | None = None,
        hnsw_ef_runtime: int = 64,
        exact_cache_max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.settings = Settings.resolve(
            url, namespace=namespace, search_mode=search_mode, vector_type=vector_type,
            hnsw_ef_construction=hnsw_ef_construction,
        )  # fmt: skip
        if vector_dim is not None and (not isinstance(vector_dim, int) or vector_dim <= 0):
            raise ConfigError(f"vector_dim must be a positive integer, got {vector_dim!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise ConfigError(f"batch_size must be from 1 to 10000, got {batch_size!r}")
        self.keys = Keys(self.settings.namespace)
        self.batch_size = batch_size
        self._expected_dim = vector_dim
        for name, value in (("hnsw_m", hnsw_m), ("hnsw_ef_runtime", hnsw_ef_runtime)):
            if type(value) is not int or not 1 <= value <= 4096:
                raise ConfigError(f"{name} must be a whole number from 1 to 4096, got {value!r}")
        self._hnsw = (hnsw_m, self.settings.hnsw_ef_construction, hnsw_ef_runtime)
        self._state = StoreState()
        self._sync = SyncConnection(self.settings)
        self._async = AsyncConnection(self.settings)
        cap = exact_cache_max_records
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ConfigError(
                f"exact_cache_max_records must be a non-negative integer, got {cap!r}"
            )
        self._vectors = VectorCache(cap)

    def __repr__(self) -> str:
        return f"ValkeyStore({self.settings.redacted_url()!r}, namespace={self.keys.namespace!r})"

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

    def _search(
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
        metadata_ranges: dict[str, Any] | None = None,
        exclude_scope: str | None = None,
    ) -> Plan[list[tuple[Any, float]]]:
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
            metadata_ranges: Metadata key -> ``(low, low_inclusive, high,
                high_inclusive)``: only records whose number under the key is in that
                range (``None``: an open bound). Only keys starting with ``=`` carry
                range tokens (memworker.langgraph's value fields). Bounds and values
                are compared as float64: integers past 2**53 that round to one
                float64 compare equal (memworker.langgraph checks them exactly after).
            exclude_scope: Never records in this scope or below it (filtered in the
                query like the others, so ``limit`` results come back when that many
                others match; ``memworker.crewai`` leaves out the LangGraph store's
                items this way). ``/`` is refused.

        Returns:
            ``(record, similarity)`` pairs, highest similarity first; records stored
            without an embedding are never among them.
        """
        return self._p_search(
            query_embedding, scope_prefix, categories, metadata_filter, limit, min_score,
            source, include_private, viewer, metadata_ranges, exclude_scope,
        )  # fmt: skip

    # Both faces take :meth:`_search`'s signature and run its plan.
    search = _sync_face(_search)
    asearch = _async_face(_search)

    def delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
        *,
        keep_scope: str | None = None,
    ) -> int:
        """Delete the records matching every given criterion; returns how many were
        deleted. ``keep_scope``: records under this scope are kept whatever matches
        (``memworker.crewai`` keeps the LangGraph store's items)."""
        return self._sync.run(
            self._p_delete(scope_prefix, categories, record_ids, older_than, metadata_filter, keep_scope)
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

    def get_scope_info(self, scope: str, *, exclude_scope: str | None = None) -> Any:
        """Count, categories, oldest/newest and child scopes of a scope.

        ``exclude_scope``: leave the records of this scope and below out of every
        figure (a scope below the root; the info of a scope inside it is empty)."""
        return self._sync.run(self._p_scope_info(scope, exclude_scope))

    def list_scopes(self, parent: str = "/", *, exclude_scope: str | None = None) -> list[str]:
        """Immediate child scopes of ``parent`` that hold records (``exclude_scope``:
        not counting that scope's records)."""
        return self._sync.run(self._p_list_scopes(parent, exclude_scope))

    def list_categories(
        self, scope_prefix: str | None = None, *, exclude_scope: str | None = None
    ) -> dict[str, int]:
        """Category -> number of records carrying it, in a scope and below
        (``exclude_scope``: not counting that scope's records)."""
        return self._sync.run(self._p_list_categories(scope_prefix, exclude_scope))

    def count(self, scope_prefix: str | None = None) -> int:
        """Number of records in a scope and below (``None``: all)."""
        return self._sync.run(self._p_count(scope_prefix))

    def reset(self, scope_prefix: str | None = None) -> None:
        """Delete every record in a scope and below; ``None`` also forgets the dimension."""
        self._sync.run(self._p_reset(scope_prefix))

    def _get_records(self, record_ids: list[str]) -> Plan[list[Any]]:
        """Records by id, in order (``None`` where missing), in one round trip per
        chunk of ids."""
        return self._p_fetch(check_ids(record_ids))

    def _expiries(self, record_ids: list[str]) -> Plan[list[int | None]]:
        """Each record's expiry time in ms since the epoch (``None``: it has none)."""
        return self._p_expiries(check_ids(record_ids))

    def _server_time(self) -> Plan[int | None]:
        """The server's clock (``TIME``), in ms since the epoch; ``None`` when the
        server refuses the command (an ACL user without it, e.g. the README's reader)."""
        try:
            reply = yield Call(["TIME"])
        except Exception as exc:
            if isinstance(exc, MemworkerError) or not is_permanent(exc):
                raise
            return None
        return int(reply[0]) * 1000 + int(reply[1]) // 1000

    def _delete_versioned(self, versions: list[tuple[str, int]]) -> Plan[int]:
        """Versioned deletes (LangGraph's write-behind store): each ``(id, version)``
        deletes the record unless a later version is stored, and leaves a tombstone so
        that an older versioned write still in the queue is never committed after it.
        Versions are integers (microseconds); tombstones are kept
        :data:`TOMB_KEEP_MS`."""
        return self._p_delete_versioned(versions)

    def _visible_categories(
        self, scope_prefix: str | None = None, viewer: str | None = None,
        exclude_scope: str | None = None,
    ) -> Plan[dict[str, int]]:
        """Category -> number of records carrying it, in a scope and below, among the
        records ``viewer`` may see (public ones and its own private ones; ``None``:
        public ones only), counted over the scope's newest 10,000 records.
        :meth:`list_categories` counts every record, private ones of every source too:
        what an LLM prompt built for one source shows comes from here.
        ``exclude_scope``: records of that scope and below are not counted."""
        counts, _ = yield from self._p_visible(scope_prefix, viewer, exclude_scope)
        return counts

    def _visible_summary(
        self, scope_prefix: str | None = None, viewer: str | None = None,
        exclude_scope: str | None = None,
    ) -> Plan[tuple[dict[str, int], list[str]]]:
        """:meth:`visible_categories` and :meth:`visible_scopes` of one scope, from one
        read of its records."""
        return self._p_visible(scope_prefix, viewer, exclude_scope)

    def _visible_scopes(
        self, parent: str = "/", viewer: str | None = None, exclude_scope: str | None = None
    ) -> Plan[list[str]]:
        """Immediate child scopes of ``parent`` holding a record ``viewer`` may see, as
        :meth:`visible_categories` counts them (:meth:`list_scopes` lists those of
        every record, private ones of every source too)."""
        _, children = yield from self._p_visible(parent, viewer, exclude_scope)
        return children

    def _set_expiries(self, expiries: list[tuple[str, int]]) -> Plan[int]:
        """New expiry times (ms since the epoch) for records that have one (a TTL
        refresh); returns how many had one."""
        return self._p_expire(expiries)

    def _refresh_expiries(
        self, fallbacks: list[tuple[str, int]], now_ms: int | None = None
    ) -> Plan[int]:
        """A TTL refresh on read: each record that has an expiry gets ``now_ms`` plus
        the TTL stored with it (``ttl``, written with its ``exp``), read in the same
        atomic step, so a record written since the caller read it keeps its own TTL;
        a record stored without a TTL gets the ``(id, expiry)`` fallback. Returns how
        many records got a new expiry."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return self._p_refresh_expiries(now, fallbacks)

    def _sweep(self, limit: int = 500, now_ms: int | None = None) -> Plan[dict[str, int]]:
        """Delete up to ``limit`` records whose expiry is due, then records older than
        their scope's retention (``memworker retention``), and trim up to ``limit`` old
        tombstones: one atomic step. The workers call it (:mod:`memworker.worker.sweep`);
        returns ``{"expired", "retained", "tombs", "scanned"}`` counts (``scanned``:
        index entries read, stale ones included: another step may find more when it
        or ``tombs`` reached ``limit``). Without ``now_ms``, the time is this host's
        clock or the server's, whichever is earlier: a host whose clock is ahead never
        deletes anything before its time."""
        if now_ms is None:
            now = int(time.time() * 1000)
            return self._p_sweep(now, limit, TOMB_KEEP_MS, clamp=SWEEP_AT_MOST_SERVER_TIME)
        return self._p_sweep(now_ms, limit, TOMB_KEEP_MS)

    def _set_retention(self, scope: str, days: float | None) -> Plan[None]:
        """A retention policy: the workers' sweep deletes records created more than
        ``days`` ago in ``scope`` and below (``None`` removes the scope's policy)."""
        return self._p_set_retention(scope, days)

    def _retention(self) -> Plan[dict[str, float]]:
        """The retention policies: scope -> days."""
        return self._p_retention()

    def _set_sweep_interval(self, interval_ms: int) -> Plan[None]:
        """Ask the workers to sweep this namespace every ``interval_ms``."""
        return self._p_set_sweep_interval(interval_ms)

    get_records = _sync_face(_get_records)
    aget_records = _async_face(_get_records)
    expiries = _sync_face(_expiries)
    aexpiries = _async_face(_expiries)
    server_time_ms = _sync_face(_server_time)
    aserver_time_ms = _async_face(_server_time)
    delete_versioned = _sync_face(_delete_versioned)
    adelete_versioned = _async_face(_delete_versioned)
    visible_categories = _sync_face(_visible_categories)
    avisible_categories = _async_face(_visible_categories)
    visible_summary = _sync_face(_visible_summary)
    avisible_summary = _async_face(_visible_summary)
    visible_scopes = _sync_face(_visible_scopes)
    avisible_scopes = _async_face(_visible_scopes)
    set_expiries = _sync_face(_set_expiries)
    aset_expiries = _async_face(_set_expiries)
    refresh_expiries = _sync_face(_refresh_expiries)
    arefresh_expiries = _async_face(_refresh_expiries)
    sweep = _sync_face(_sweep)
    asweep = _async_face(_sweep)
    set_retention = _sync_face(_set_retention)
    aset_retention = _async_face(_set_retention)
    retention = _sync_face(_retention)
    aretention = _async_face(_retention)
    set_sweep_interval = _sync_face(_set_sweep_interval)
    aset_sweep_interval = _async_face(_set_sweep_interval)

    def ensure_index(self, timeout: float = 600.0) -> bool | None:
        """Create the vector index of a namespace that has records and wait until the
        search module indexed all of them (after ``memworker migrate``, or on the new
        shard after a resharding moved the namespace). ``None`` without a search module
        or records; ``False`` if indexing did not finish within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            built = self._sync.run(self._p_index_built())
            if built is not False or time.monotonic() > deadline:
                return built
            time.sleep(0.1)

    def close(self) -> None:
        """Close the sync client (the async one is closed by :meth:`aclose`; one of an
        event loop that is closed already is dropped here)."""
        self._sync.close()
        self._async.forget_closed_loop()

    def __enter__(self) -> ValkeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== async face
    async def asave(self, records: list[Any]) -> None:
        """Async :meth:`save`."""
        await self._async.run(self._p_save(records))

    async def adelete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
        *,
        keep_scope: str | None = None,
    ) -> int:
        """Async :meth:`delete`."""
        return await self._async.run(
            self._p_delete(scope_prefix, categories, record_ids, older_than, metadata_filter, keep_scope)
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

    async def aget_scope_info(self, scope: str, *, exclude_scope: str | None = None) -> Any:
        """Async :meth:`get_scope_info`."""
        return await self._async.run(self._p_scope_info(scope, exclude_scope))

    async def alist_scopes(self, parent: str = "/", *, exclude_scope: str | None = None) -> list[str]:
        """Async :meth:`list_scopes`."""
        return await self._async.run(self._p_list_scopes(parent, exclude_scope))

    async def alist_categories(
        self, scope_prefix: str | None = None, *, exclude_scope: str | None = None
    ) -> dict[str, int]:
        """Async :meth:`list_categories`."""
        return await self._async.run(self._p_list_categories(scope_prefix, exclude_scope))

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
        encoded: list[Row],
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

    def write_jobs(
        self, jobs: Sequence[JobWrite], tail: Sequence[Sequence[str]] = ()
    ) -> tuple[int, list[int]]:
        """Commit many jobs' records in one atomic step, each job only while it is
        pending, then run ``tail`` (the worker's batched commit and ack; see
        :meth:`~memworker.store.plans.write.WritePlans._p_write_jobs`).

        Returns:
            ``(inserted, skipped)``: new records, and the indexes of the jobs skipped
            because they were no longer pending (duplicate deliveries).
        """
        return self._sync.run(self._p_write_jobs(jobs, tail))

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

    def stored_dimension(self) -> int | None:
        """The vector dimension the namespace stores (``None`` before its first vector
        or after a reset); read from the server each call."""
        return self._sync.run(self._p_stored_dim(refresh=True))

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
