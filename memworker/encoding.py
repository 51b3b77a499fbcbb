"""Worker side of CrewAI encoding: CrewAI's own ``EncodingFlow`` run in the worker.

An ``encode_records`` job whose items carry a ``flow`` entry (fields to infer, or
consolidation on; built by :class:`memworker.crewai.QueuedMemory`) is handed here by
the actor instead of the fast path. The flow runs exactly as in CrewAI's ``Memory``
(LLM field inference, intra-batch dedup, consolidation against similar records) with
this worker process's LLM and embedder against the :class:`~memworker.store.ValkeyStore`,
so the LLM calls leave the agent's process too.

- Embedding goes through the process's one ``EmbeddingBatcher`` (texts of every
  in-flight job coalesce), so the flow's vectors come from the same model as the
  fast path's.
- Inserted records keep the ids the producer assigned, and are committed with the
  job's pending-mark removal in ONE atomic step (``WorkerContext.commit``). Deletes
  and updates decided by consolidation are written first (each atomic), then the
  commit: a redelivered job repeats them idempotently.
- What each item became is written to ``ns:results:<job>`` (hash item id -> record id,
  ``""`` when dropped as a duplicate; TTL :data:`RESULT_TTL_MS`) before the commit, so
  a producer's ``remember()`` returns the record an item was merged into.
- Consolidation within one scope is serialized across workers by a lease lock
  ``ns:lock:consolidate:<scope>`` (``SET NX PX``, renewed while held, released by a
  compare-and-delete). The scope is the flow's search boundary: ``root_scope`` joined
  with the explicit scope, else ``root_scope``, else ``/``.

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
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from memworker.errors import ConfigError, MemworkerError, ValidationError

__all__ = [
    "LLM_ENV",
    "LOCK_LEASE_MS",
    "MEMORY_FACTORY_ENV",
    "RESULT_TTL_MS",
    "BatcherEmbedder",
    "ScopeBusyError",
    "WorkerLLMMissingError",
    "WorkerMemoryConfig",
    "check_worker_model",
    "factory_embedder",
    "load_memory_config",
    "result_key",
    "run_flow_job",
    "scope_lock",
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

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


class WorkerLLMMissingError(ValidationError):
    """A job needs LLM inference and this worker has no LLM configured (not retried)."""


class ScopeBusyError(MemworkerError):
    """A consolidation lock stayed taken past ``LOCK_WAIT_MS`` (the job is retried)."""


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
    from memworker.worker import get_batcher

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
        from memworker.worker import get_batcher

        if not texts:
            return []
        return [list(map(float, v)) for v in get_batcher().submit(list(texts)).result()]


# --------------------------------------------------------------------------- Valkey side
def _client(settings: Any) -> Any:
    key = (settings.url(redact=False, scheme="redis"), settings.namespace)
    client = _clients.get(key)
    if client is None:
        import redis

        from memworker.queue import redis_kwargs

        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(key[0], **redis_kwargs(settings))
                _clients[key] = client
    return client


def result_key(namespace: str, job_id: str) -> str:
    """``ns:results:<job>``: item id -> id of the record it became (``""``: dropped)."""
    return f"{namespace}:results:{job_id}"


def lock_key(namespace: str, scope: str) -> str:
    return f"{namespace}:lock:consolidate:{scope}"


@contextmanager
def scope_lock(
    client: Any,
    key: str,
    *,
    lease_ms: int = LOCK_LEASE_MS,
    wait_ms: int = LOCK_WAIT_MS,
) -> Any:
    """Hold the lease lock ``key`` for the ``with`` block (renewed while held).

    Raises:
        ScopeBusyError: Not acquired within ``wait_ms``.
    """
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_ms / 1000
    pause = 0.005
    while not client.set(key, token, nx=True, px=lease_ms):
        if time.monotonic() >= deadline:
            raise ScopeBusyError(f"consolidation lock {key!r} still taken after {wait_ms} ms")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_ms / 3000):
            try:
                if not client.eval(_RENEW, 1, key, token, str(lease_ms)):
                    log.warning("consolidation lock %r was lost (lease expired)", key)
                    return
            except Exception:  # noqa: BLE001 - next attempt, or the lease runs out
                log.warning("could not renew consolidation lock %r", key, exc_info=True)

    renewer = threading.Thread(target=renew, name="memworker-lock-renew", daemon=True)
    renewer.start()
    try:
        yield token
    finally:
        stop.set()
        renewer.join(1)
        try:
            client.eval(_RELEASE, 1, key, token)
        except Exception:  # noqa: BLE001 - the lease expires on its own
            log.warning("could not release consolidation lock %r", key, exc_info=True)


class _FlowStorage:
    """The store as the EncodingFlow sees it: reads, deletes and updates go to the
    store; inserts are captured (with the producer's ids) for the atomic commit."""

    def __init__(self, store: Any, items: list[dict[str, Any]]) -> None:
        self._store = store
        self._ids: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            self._ids.setdefault(item["content"], []).append(item)
        self.inserted: list[Any] = []
        self.inserted_for: dict[str, str] = {}  # item id -> record id

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
        return getattr(self._store, name)


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
    config = MemoryConfig(
        consolidation_threshold=min(float(first.get("consolidation_threshold", 0.85)), 1.0),
        consolidation_limit=int(first.get("consolidation_limit", 5)),
        batch_dedup_threshold=float(first.get("batch_dedup_threshold", 0.98)),
        default_importance=float(first.get("default_importance", 0.5)),
    )
    if not consolidate:
        config.consolidation_threshold = 2.0  # no similarity reaches it: consolidation off
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
    storage = _FlowStorage(context.store, items)
    client = _client(context.settings)
    locks = sorted({_boundary(f) for f in flows}) if consolidate else []

    def run() -> None:
        flow = EncodingFlow(storage=storage, llm=llm, embedder=BatcherEmbedder(), config=config)
        flow.kickoff(inputs={"items": inputs})
        results: dict[str, str] = {}
        for item, state in zip(items, flow.state.items):
            if item["id"] in storage.inserted_for:
                results[item["id"]] = storage.inserted_for[item["id"]]
            elif not state.dropped and state.result_record is not None:
                results[item["id"]] = state.result_record.id
            else:
                results[item["id"]] = ""
        key = result_key(context.settings.namespace, job_id)
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=results)
            pipe.pexpire(key, RESULT_TTL_MS)
            pipe.execute()
        context.commit(job_id, producer, storage.inserted)

    if not locks:
        run()
        return
    with _locks(client, [lock_key(context.settings.namespace, s) for s in locks]):
        run()


@contextmanager
def _locks(client: Any, keys: list[str]) -> Any:
    """Take several scope locks in a fixed (sorted) order: no deadlock between workers."""
    if not keys:
        yield
        return
    with scope_lock(client, keys[0]), _locks(client, keys[1:]):
        yield
