"""Worker side of CrewAI encoding: CrewAI's own ``EncodingFlow`` run in the worker.

An ``encode_records`` job whose items ask for field inference or consolidation
(their ``flow`` entry, built by :class:`memworker.crewai.QueuedMemory`: see
:func:`needs_flow`) is handed here by the actor instead of the fast path. The flow
runs exactly as in CrewAI's ``Memory`` (LLM field inference, intra-batch dedup,
consolidation against similar records) with this worker process's LLM and embedder
against the :class:`~memworker.store.ValkeyStore`, so the LLM calls leave the agent's
process too.

- Embedding goes through the process's one ``EmbeddingBatcher`` (texts of every
  in-flight job coalesce), so the flow's vectors come from the same model as the
  fast path's.
- Inserted records keep the ids the producer assigned, and are committed with the
  job's pending-mark removal in ONE atomic step (``WorkerContext.commit``). Deletes
  and updates decided by consolidation are written first (each atomic), then the
  commit: a redelivered job repeats them idempotently.
- Privacy: the flow runs once per writer of the job (items' ``source`` and
  ``private``) and sees only what that writer could recall (:class:`_FlowStorage`):
  another source's private records are never shown to its LLM, merged, updated or
  deleted, and an update keeps the stored record's ``source`` and ``private``.
- What each item became is written to ``ns:results:<job>`` (hash item id -> record id,
  ``""`` when dropped as a duplicate; TTL :data:`RESULT_TTL_MS`) before the commit, so
  a producer's ``remember()`` returns the record an item was merged into.
- Consolidation is serialized across workers by hierarchical lease locks
  (:func:`scope_locks`). A job locks the flow's search boundary (``root_scope``
  joined with the explicit scope, else ``root_scope``, else ``/``): consolidation in
  ``/a`` searches, updates and deletes records under ``/a/b`` too, so a lock on a
  scope excludes locks on its ancestors and descendants (``/a`` vs ``/a/b``), and not
  on siblings or on names that only share a string prefix (``/a/b`` vs ``/a/c``,
  ``/a`` vs ``/ab``). One Lua script (``memworker/lua/lock.lua``) checks and takes a lock
  atomically; see its header for the keys.

Fast-path intra-batch dedup: items with every field given and consolidation off
take the worker's fast path (batched embedding, one commit) instead of the flow.
When their ``flow`` entry carries ``batch_dedup_threshold`` (``QueuedMemory`` always
sends it), the fast path applies CrewAI's ``intra_batch_dedup`` rule to the job
(:func:`batch_duplicates`): an item whose cosine similarity to an earlier, kept item
of the same job is >= the threshold is dropped; a threshold above 1 disables it. A
dropped item is reported as on the flow path: ``""`` in ``ns:results:<job>``
(written in the commit's atomic step, only when the job dropped something), no
record, and ``remember()`` would return ``None`` (a single-item job never drops).

Configuration (per worker process, built lazily on the first flow job):
``MEMWORKER_MEMORY_FACTORY=module:function`` returning a :class:`WorkerMemoryConfig`
or a mapping with ``llm`` and optional ``embedder``; else ``MEMWORKER_LLM`` (a model
name for ``crewai.LLM``) and ``MEMWORKER_MODEL`` (the embedding model).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from memworker.embedded import ensure_embedded
from memworker.errors import (  # the two errors are re-exported from memworker.errors
    ConfigError,
    MemworkerError,
    ScopeBusyError,
    ValidationError,
    WorkerLLMMissingError,
)
from memworker.store.query import MAX_LIMIT

__all__ = [
    "LLM_ENV",
    "LOCK_LEASE_MS",
    "LOCK_WAIT_MS",
    "MEMORY_FACTORY_ENV",
    "RESULT_TTL_MS",
    "BatcherEmbedder",
    "ScopeBusyError",
    "WorkerLLMMissingError",
    "WorkerMemoryConfig",
    "batch_duplicates",
    "check_worker_model",
    "dedup_results",
    "factory_embedder",
    "fast_path_dedup_threshold",
    "load_memory_config",
    "lock_key",
    "lock_order",
    "lock_under_key",
    "needs_flow",
    "result_key",
    "run_flow_job",
    "scope_lock",
    "scope_locks",
    "worker_memory_config",
]

log = logging.getLogger("memworker.encoding")

#: ``module:function`` returning the worker's memory configuration.
MEMORY_FACTORY_ENV = "MEMWORKER_MEMORY_FACTORY"
#: Model name of the worker's LLM (``crewai.LLM(model=...)``).
LLM_ENV = "MEMWORKER_LLM"
#: Lease of a consolidation lock (ms); renewed every third of it while held.
LOCK_LEASE_MS = 30_000
#: Longest wait for a consolidation lock before the job is retried (ms).
LOCK_WAIT_MS = 60_000
#: Lifetime of a job's ``ns:results:<job>`` hash (ms).
RESULT_TTL_MS = 3_600_000


@dataclass
class WorkerMemoryConfig:
    """What a worker process uses for CrewAI's EncodingFlow.

    Attributes:
        llm: A ``crewai.llms.base_llm.BaseLLM`` or a model name for ``crewai.LLM``.
        embedder: An embedding model with ``encode(texts)``, ``dimension`` and
            ``model_id`` (e.g. :class:`memworker.embedding.Embedder`); ``None`` keeps the
            process default (``MEMWORKER_EMBEDDER``, ``MEMWORKER_MODEL``, the bundled model).
    """

    llm: Any = None
    embedder: Any = None


_lock = threading.Lock()
_config: WorkerMemoryConfig | None = None
_llm: Any = None
_clients: dict[Any, Any] = {}


def load_memory_config(env: Mapping[str, str] | None = None) -> WorkerMemoryConfig:
    """Build the configuration from ``MEMWORKER_MEMORY_FACTORY``, else ``MEMWORKER_LLM``.

    Raises:
        ConfigError: A bad factory path, or a factory returning something else than a
            :class:`WorkerMemoryConfig` or a mapping with ``llm``/``embedder``.
    """
    env = os.environ if env is None else env
    spec = env.get(MEMORY_FACTORY_ENV)
    if spec:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise ConfigError(f"{MEMORY_FACTORY_ENV} must be 'module:function', got {spec!r}")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{MEMORY_FACTORY_ENV}={spec!r} cannot be loaded: {exc}") from None
        made = factory()
        if isinstance(made, WorkerMemoryConfig):
            return made
        if isinstance(made, Mapping) and set(made) <= {"llm", "embedder"}:
            return WorkerMemoryConfig(llm=made.get("llm"), embedder=made.get("embedder"))
        raise ConfigError(
            f"{MEMORY_FACTORY_ENV}={spec!r} returned {type(made).__name__}; expected a "
            "WorkerMemoryConfig or a mapping with 'llm' and optional 'embedder'"
        )
    return WorkerMemoryConfig(llm=env.get(LLM_ENV) or None)


def worker_memory_config() -> WorkerMemoryConfig:
    """This process's configuration, built once."""
    global _config
    if _config is None:
        with _lock:
            if _config is None:
                _config = load_memory_config()
    return _config


def reset_worker_memory_config() -> None:
    """Forget the cached configuration and LLM (tests; after changing the environment)."""
    global _config, _llm
    with _lock:
        _config, _llm = None, None


def factory_embedder() -> Any:
    """The embedder named by ``MEMWORKER_MEMORY_FACTORY``, or ``None`` (no factory, or
    a factory that leaves the embedder to the process default)."""
    if not os.environ.get(MEMORY_FACTORY_ENV):
        return None
    return worker_memory_config().embedder


def _worker_llm() -> Any:
    global _llm
    if _llm is None:
        configured = worker_memory_config().llm
        with _lock:
            if _llm is None:
                llm = configured
                if llm is None:
                    raise WorkerLLMMissingError(
                        "this job needs LLM inference (scope, categories or importance not "
                        f"given, or consolidation on) and the worker has no LLM: set {LLM_ENV} "
                        f"(e.g. 'gpt-4o-mini') or {MEMORY_FACTORY_ENV}=module:function"
                    )
                if isinstance(llm, str):
                    from crewai.llm import LLM

                    llm = LLM(model=llm)
                from crewai.memory.unified_memory import _non_streaming_analysis_llm

                _llm = _non_streaming_analysis_llm(llm)
    return _llm


def _batcher_embedder_model() -> Any:
    from memworker.worker.broker import get_batcher

    batcher = get_batcher()
    return getattr(batcher, "embedder", None) or getattr(batcher, "_embedder", None)


def check_worker_model(store: Any) -> str | None:
    """Record this process's embedding model id in the store (first writer wins) and
    raise :class:`ConfigError` if the store holds another. ``None`` when the embedder
    has no ``model_id`` (nothing to compare)."""
    model_id = getattr(_batcher_embedder_model(), "model_id", None)
    if not model_id:
        log.warning("the worker's embedder has no model_id: the model check is skipped")
        return None
    return store.ensure_model(model_id)


class BatcherEmbedder:
    """A CrewAI embedder callable over the worker process's ``EmbeddingBatcher``."""

    def __call__(self, texts: list[str]) -> list[list[float]]:
        from memworker.worker.broker import get_batcher

        if not texts:
            return []
        return [list(map(float, v)) for v in get_batcher().submit(list(texts)).result()]


# --------------------------------------------------------------------------- Valkey side
def _client(settings: Any) -> Any:
    key = (ensure_embedded(settings).url(redact=False, scheme="redis"), settings.namespace)
    client = _clients.get(key)
    if client is None:
        import redis

        from memworker.queue.producer import redis_kwargs

        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(key[0], **redis_kwargs(settings))
                _clients[key] = client
    return client


def result_key(namespace: str, job_id: str) -> str:
    """``ns:results:<job>``: item id -> id of the record it became (``""``: dropped)."""
    return f"{namespace}:results:{job_id}"


# --------------------------------------------------------------------------- scope locks



def lock_key(namespace: str, scope: str) -> str:
    """``ns:lock:consolidate:<scope>``: the token of the holder of the lock on ``scope``."""
    return f"{namespace}:lock:consolidate:{scope}"


def lock_under_key(namespace: str, scope: str) -> str:
    """``ns:lock:under:<scope>``: the locks held on strict descendants of ``scope``
    (sorted set, member ``<token><scope>``, score = lease expiry in server ms)."""
    return f"{namespace}:lock:under:{scope}"


def _parts(scope: str | None) -> tuple[str, ...]:
    return tuple(p for p in (scope or "/").split("/") if p)


def _path(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def lock_order(scopes: Iterable[str | None]) -> list[str]:
    """The scopes a job locks, in the order it takes them.

    Each scope is made canonical (``a/b/`` -> ``/a/b``, ``None`` -> ``/``); a scope with
    an ancestor in the set is dropped (the ancestor's lock covers it, and a job must
    not wait for itself); the rest are sorted in tree pre-order, i.e. by path
    components (``/a``, ``/a/b``, ``/a-x``), not as plain strings (``/a``, ``/a-x``,
    ``/a/b``). Pre-order makes the per-job order deadlock-free even though a lock
    conflicts with its ancestors and descendants: with plain string order, a job
    holding ``/a-x`` and waiting for ``/a/b`` and a job holding ``/a`` and waiting
    for ``/a-x`` would wait for each other.
    """
    kept: list[tuple[str, ...]] = []
    for parts in sorted({_parts(s) for s in scopes}):
        if not any(parts[: len(k)] == k for k in kept):
            kept.append(parts)
    return [_path(p) for p in kept]


class _Lock:
    """The keys and token of one lock on one canonical scope."""

    __slots__ = ("keys", "scope", "token")

    def __init__(self, namespace: str, scope: str) -> None:
        parts = _parts(scope)
        chain = [_path(parts[:i]) for i in range(len(parts) + 1)]  # "/", ..., scope
        self.scope = chain[-1]
        self.keys = [lock_key(namespace, a) for a in chain] + [
            lock_under_key(namespace, a) for a in chain
        ]
        self.token = uuid.uuid4().hex

    def call(self, client: Any, op: str, lease_ms: int) -> Any:
        import redis

        from memworker.io.client import _script_source

        # memworker/lua/lock.lua: one atomic step per acquire, renew or release; scopes
        # reach it only as key names and member strings. EVALSHA, EVAL after NOSCRIPT.
        body, sha = _script_source("lock")
        args = [*self.keys, op, self.token, str(int(lease_ms)), self.scope]
        try:
            return client.evalsha(sha, len(self.keys), *args)
        except redis.exceptions.NoScriptError:
            return client.eval(body, len(self.keys), *args)


def _acquire(client: Any, lock: _Lock, lease_ms: int, wait_ms: int) -> None:
    deadline = time.monotonic() + wait_ms / 1000
    pause = 0.005
    while True:
        reply = lock.call(client, "acquire", lease_ms)
        if reply == 1:
            return
        if time.monotonic() >= deadline:
            blocker = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
            raise ScopeBusyError(
                f"consolidation lock on scope {lock.scope!r} still blocked by the lock on "
                f"{blocker!r} after {wait_ms} ms"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _renew(client: Any, held: list[_Lock], lease_ms: int, stop: threading.Event) -> None:
    """Extend every held lock's lease (and its entries' scores) every third of it."""
    lost: set[str] = set()
    while not stop.wait(lease_ms / 3000):
        for lock in list(held):
            if lock.token in lost:
                continue
            try:
                if lock.call(client, "renew", lease_ms) != 1:
                    lost.add(lock.token)
                    log.warning(
                        "consolidation lock on scope %r was lost (lease expired)", lock.scope
                    )
            except Exception:  # next attempt, or the lease runs out
                log.warning(
                    "could not renew the consolidation lock on %r", lock.scope, exc_info=True
                )


@contextmanager
def scope_locks(
    client: Any,
    namespace: str,
    scopes: Iterable[str | None],
    *,
    lease_ms: int = LOCK_LEASE_MS,
    wait_ms: int = LOCK_WAIT_MS,
) -> Iterator[list[str]]:
    """Hold the consolidation locks of ``scopes`` for the ``with`` block.

    A lock on a scope excludes locks on the same scope, its ancestors (``/``
    included) and its descendants, in any worker; siblings (``/a/b``, ``/a/c``) and
    scopes that only share a string prefix (``/a``, ``/ab``) do not exclude each
    other. The scopes are taken one at a time in :func:`lock_order` (covered scopes
    dropped, tree pre-order), each waiting up to ``wait_ms``; each lock is a lease of
    ``lease_ms`` renewed every third of it by one thread while held, and released
    (only if still this holder's) on exit.

    Args:
        client: A redis-py client (``EVALSHA``/``EVAL``).
        namespace: The store's namespace.
        scopes: Scopes to lock (``None`` is the root).
        lease_ms: Lease of each lock; a crashed holder's locks end with it.
        wait_ms: Longest wait for each lock.

    Yields:
        The scopes actually locked, in order.

    Raises:
        ScopeBusyError: A lock stayed blocked for ``wait_ms`` (those already taken
            are released).
    """
    held: list[_Lock] = []
    stop = threading.Event()
    renewer: threading.Thread | None = None
    try:
        for scope in lock_order(scopes):
            lock = _Lock(namespace, scope)
            _acquire(client, lock, lease_ms, wait_ms)
            held.append(lock)
            if renewer is None:
                renewer = threading.Thread(
                    target=_renew,
                    args=(client, held, lease_ms, stop),
                    name="memworker-lock-renew",
                    daemon=True,
                )
                renewer.start()
        yield [lock.scope for lock in held]
    finally:
        stop.set()
        if renewer is not None:
            renewer.join(1)
        for lock in reversed(held):
            try:
                lock.call(client, "release", lease_ms)
            except Exception:  # the lease expires on its own
                log.warning(
                    "could not release the consolidation lock on %r", lock.scope, exc_info=True
                )


@contextmanager
def scope_lock(
    client: Any,
    key: str,
    *,
    lease_ms: int = LOCK_LEASE_MS,
    wait_ms: int = LOCK_WAIT_MS,
) -> Iterator[str]:
    """Hold the consolidation lock ``key`` (``lock_key(namespace, scope)``) for the
    ``with`` block: :func:`scope_locks` of that one scope.

    Raises:
        ScopeBusyError: Not acquired within ``wait_ms``.
        ValidationError: ``key`` is not a :func:`lock_key`.
    """
    namespace, infix, scope = key.partition(":lock:consolidate:")
    if not infix or not namespace or ":" in namespace:
        raise ValidationError(f"not a consolidation lock key: {key!r}")
    with scope_locks(client, namespace, [scope], lease_ms=lease_ms, wait_ms=wait_ms) as scopes:
        yield scopes[0]


# --------------------------------------------------------------------------- fast-path dedup
def needs_flow(flow: Any) -> bool:
    """Whether an item's ``flow`` entry asks for CrewAI's EncodingFlow: fields to
    infer, or consolidation on (``consolidation_threshold`` < 1, default 0.85 as in
    CrewAI). Anything else (no entry, or only the batch-dedup threshold) takes the
    worker's fast path."""
    if not flow:
        return False
    if not isinstance(flow, Mapping):
        return True  # let the flow path reject it
    if flow.get("infer"):
        return True
    try:
        return float(flow.get("consolidation_threshold", 0.85)) < 1.0
    except (TypeError, ValueError):
        return True


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
        from memworker.queue.jobs import JobPayloadError

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


def _for_log(record_id: Any) -> str:
    """A record id as a log line may show it: escaped, at most 100 characters."""
    return repr(str(record_id)[:100])


class _FlowStorage:
    """The store as the EncodingFlow of ONE writer's items sees it (one per
    ``(source, private)`` group of a job: :func:`run_flow_job`).

    Privacy: the flow sees and touches what the writing agent could recall, as
    ``QueuedMemory.recall`` filters it, never another source's private records.

    - ``search``: privacy filtered in the query (``include_private=False``, viewer =
      the items' source): public records and the source's own private records; a
      source-less writer sees public records only. A *private* write is compared with
      its source's own private records only: merging a private text into a record
      others can read would publish it.
    - ``update``: only a record one of this flow's searches returned and that the
      writer may touch (:meth:`may_touch`, checked again on the stored record); the
      stored ``source`` and ``private`` are kept whatever CrewAI rebuilt (its rebuilt
      record has neither). ``delete``: by ids only, under the same rule. A refused
      update or delete is skipped and logged by record id only.
    - ``save``: captured (with the producer's ids) for the job's atomic commit.
    - ``list_scopes``/``list_categories`` (field inference) go to the store; nothing
      else does.
    """

    _FORWARDED = frozenset({"list_scopes", "list_categories"})

    def __init__(self, store: Any, items: list[dict[str, Any]]) -> None:
        owners = {(item.get("source"), bool(item.get("private"))) for item in items}
        if len(owners) > 1:
            raise ValueError("a flow storage serves items of one (source, private) pair")
        self._store = store
        self.source, self.private = next(iter(owners), (None, False))
        self._ids: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            self._ids.setdefault(item["content"], []).append(item)
        self._shown: set[str] = set()
        self._shown_lock = threading.Lock()
        self.refused: set[str] = set()
        self.inserted: list[Any] = []
        self.inserted_for: dict[str, str] = {}  # item id -> record id

    def may_touch(self, record: Any) -> bool:
        """Whether this writer may see, merge into, update or delete ``record``: a
        private record only when it is the writer's own (a source-less writer has
        none), a public one only when the write is not private."""
        if getattr(record, "private", False):
            return self.source is not None and getattr(record, "source", None) == self.source
        return not self.private

    def search(
        self,
        query_embedding: Any,
        scope_prefix: Any = None,
        categories: Any = None,
        metadata_filter: Any = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[Any, float]]:
        """The store's search, privacy filtered for this writer (see the class)."""
        if self.private:
            if self.source is None:
                return []  # a private record of no source is nobody's: nothing to merge with
            # The source's own records (filtered in the query), then its private ones;
            # its own public records may take slots: ask for more.
            hits = self._store.search(
                query_embedding, scope_prefix=scope_prefix, categories=categories,
                metadata_filter=metadata_filter, limit=min(limit * 4, MAX_LIMIT),
                min_score=min_score, source=self.source, include_private=False,
                viewer=self.source,
            )  # fmt: skip
        else:
            hits = self._store.search(
                query_embedding, scope_prefix=scope_prefix, categories=categories,
                metadata_filter=metadata_filter, limit=limit, min_score=min_score,
                include_private=False, viewer=self.source,
            )  # fmt: skip
        hits = [(r, s) for r, s in hits if self.may_touch(r)][:limit]
        with self._shown_lock:
            self._shown.update(r.id for r, _ in hits)
        return hits

    def _allowed(self, op: str, record_id: Any) -> Any:
        """The stored record ``op`` may act on, or ``None`` (refused and logged)."""
        with self._shown_lock:
            shown = record_id in self._shown
        stored = self._store.get_record(record_id) if shown else None
        if stored is not None and self.may_touch(stored):
            return stored
        self.refused.add(str(record_id))
        log.warning(
            "consolidation: %s of record %s refused (not shown to this writer, gone, or "
            "not its to change)", op, _for_log(record_id),
        )  # fmt: skip
        return None

    def update(self, record: Any) -> None:
        """Update a record this writer may touch, keeping its stored owner and privacy."""
        stored = self._allowed("update", record.id)
        if stored is not None:
            self._store.update(
                record.model_copy(update={"source": stored.source, "private": stored.private})
            )

    def delete(
        self,
        scope_prefix: Any = None,
        categories: Any = None,
        record_ids: Any = None,
        older_than: Any = None,
        metadata_filter: Any = None,
    ) -> int:
        """Delete, by id only, the records this writer may touch; returns how many."""
        if record_ids is None or any(
            v is not None for v in (scope_prefix, categories, older_than, metadata_filter)
        ):
            raise MemworkerError("the consolidation flow deletes records by id only")
        allowed = [str(i) for i in record_ids if self._allowed("delete", i) is not None]
        return int(self._store.delete(record_ids=allowed)) if allowed else 0

    def save(self, records: list[Any]) -> None:
        from datetime import datetime

        for record in records:
            queue = self._ids.get(record.content) or []
            item = queue.pop(0) if queue else None
            if item is not None:
                created = item.get("created_at")
                update: dict[str, Any] = {"id": item["id"]}
                if isinstance(created, str):
                    created_at = datetime.fromisoformat(created)
                    update.update(created_at=created_at, last_accessed=created_at)
                record = record.model_copy(update=update)
                self.inserted_for[item["id"]] = record.id
            self.inserted.append(record)

    def __getattr__(self, name: str) -> Any:
        if name in _FlowStorage._FORWARDED:
            return getattr(self._store, name)
        raise AttributeError(f"the consolidation flow's storage has no {name!r}")


def _boundary(flow: Mapping[str, Any]) -> str:
    """The scope the flow searches for similar records (CrewAI's ``effective_prefix``)."""
    root = flow.get("root_scope")
    scope = flow.get("scope")
    if root:
        prefix = root.rstrip("/") or "/"
        if scope and scope.strip("/"):
            prefix = prefix.rstrip("/") + "/" + scope.strip("/")
        return prefix
    if scope and scope.strip("/"):
        return "/" + scope.strip("/")
    return "/"


def run_flow_job(context: Any, job_id: str, producer: str, items: list[dict[str, Any]]) -> None:
    """Run CrewAI's EncodingFlow for one job's items and commit the result."""
    from crewai.memory.encoding_flow import EncodingFlow
    from crewai.memory.types import MemoryConfig

    flows = [dict(item.get("flow") or {}) for item in items]
    first = flows[0]
    consolidate = float(first.get("consolidation_threshold", 0.85)) < 1.0
    dedup = float(first.get("batch_dedup_threshold", 0.98))
    config = MemoryConfig(
        consolidation_threshold=min(float(first.get("consolidation_threshold", 0.85)), 1.0),
        consolidation_limit=int(first.get("consolidation_limit", 5)),
        batch_dedup_threshold=min(dedup, 1.0),
        default_importance=float(first.get("default_importance", 0.5)),
    )
    if not consolidate:
        config.consolidation_threshold = 2.0  # no similarity reaches it: consolidation off
    if dedup > 1.0:
        config.batch_dedup_threshold = dedup  # no similarity reaches it: dedup off (fast path too)
    inputs = []
    needs_llm = consolidate
    for item, flow in zip(items, flows):
        infer = set(flow.get("infer") or ())
        needs_llm = needs_llm or bool(infer)
        inputs.append(
            {
                "content": item["content"],
                "scope": None if "scope" in infer else flow.get("scope"),
                "categories": None if "categories" in infer else item.get("categories"),
                "metadata": item.get("metadata") or None,
                "importance": None if "importance" in infer else item.get("importance"),
                "source": item.get("source"),
                "private": bool(item.get("private")),
                "root_scope": flow.get("root_scope"),
            }
        )
    llm = _worker_llm() if needs_llm else None
    client = _client(context.settings)
    scopes = {_boundary(f) for f in flows} if consolidate else set()
    # One flow per writer: each sees and touches only what its items' source may
    # (_FlowStorage), and CrewAI's intra-batch dedup never drops one writer's item as
    # a duplicate of another's (a job may hold several callers' items: group commit).
    writers: dict[tuple[Any, bool], list[int]] = {}
    for i, item in enumerate(items):
        writers.setdefault((item.get("source"), bool(item.get("private"))), []).append(i)

    def run() -> None:
        results: dict[str, str] = {}
        inserted: list[Any] = []
        for indexes in writers.values():
            mine = [items[i] for i in indexes]
            storage = _FlowStorage(context.store, mine)
            flow = EncodingFlow(storage=storage, llm=llm, embedder=BatcherEmbedder(), config=config)
            flow.kickoff(inputs={"items": [inputs[i] for i in indexes]})
            for item, state in zip(mine, flow.state.items):
                if item["id"] in storage.inserted_for:
                    results[item["id"]] = storage.inserted_for[item["id"]]
                elif (
                    not state.dropped
                    and state.result_record is not None
                    and state.result_record.id not in storage.refused
                ):
                    results[item["id"]] = state.result_record.id
                else:
                    results[item["id"]] = ""
            inserted += storage.inserted
        key = result_key(context.settings.namespace, job_id)
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=results)
            pipe.pexpire(key, RESULT_TTL_MS)
            pipe.execute()
        context.commit(job_id, producer, inserted)

    if not scopes:
        run()
        return
    with scope_locks(client, context.settings.namespace, scopes):
        run()
