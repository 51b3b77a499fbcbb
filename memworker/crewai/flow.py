"""Worker side of CrewAI encoding: CrewAI's own ``EncodingFlow`` run in the worker.

An ``encode_records`` job whose items ask for field inference or consolidation
(their ``flow`` entry, built by :class:`memworker.crewai.QueuedMemory`: see
:func:`memworker.queue.jobs.needs_flow`) is handed here by the actor instead of the
fast path. The flow runs exactly as in CrewAI's ``Memory`` (LLM field inference,
intra-batch dedup, consolidation against similar records) with this worker process's
LLM and embedder (:mod:`memworker.crewai.config`) against the
:class:`~memworker.store.ValkeyStore`, so the LLM calls leave the agent's process too.

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
  ``""`` when dropped as a duplicate; TTL
  :data:`~memworker.queue.jobs.RESULT_TTL_MS`) before the commit, so a producer's
  ``remember()`` returns the record an item was merged into.
- Consolidation is serialized across workers by the scope locks of
  :mod:`memworker.crewai.locks`.

Importing this module does not import crewai (only running a flow does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memworker.crewai.config import worker_llm
from memworker.crewai.locks import scope_locks
from memworker.embedded import ensure_embedded
from memworker.errors import ConfigError, MemworkerError, shown
from memworker.io.redispy import redis_client
from memworker.keys import LANGGRAPH_ROOT, in_langgraph
from memworker.queue.jobs import RESULT_TTL_MS, result_key
from memworker.store.query import MAX_LIMIT
from memworker.worker.runtime import get_batcher

if TYPE_CHECKING:
    from memworker.settings import Settings
    from memworker.store.store import ValkeyStore
    from memworker.worker.actors import WorkerContext

__all__ = ["BatcherEmbedder", "check_worker_model", "run_flow_job"]

log = logging.getLogger("memworker.encoding")

_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}  # (url, namespace) -> redis.Redis


def _batcher_embedder_model() -> Any:
    batcher = get_batcher()
    return getattr(batcher, "embedder", None) or getattr(batcher, "_embedder", None)


def check_worker_model(store: ValkeyStore) -> str | None:
    """Record this process's embedding model id in the store (first writer wins) and
    raise :class:`ConfigError` if the store holds another. ``None`` when the embedder
    has no ``model_id`` (nothing to compare)."""
    model_id = getattr(_batcher_embedder_model(), "model_id", None)
    if not model_id:
        log.warning("the worker's embedder has no model_id: the model check is skipped")
        return None
    return store.ensure_model(model_id)


def check_worker_dimension(store: ValkeyStore) -> None:
    """Raise :class:`ConfigError` when the namespace stores vectors of another
    dimension than this process's embedder makes: every job it took would fail (and be
    dead-lettered), emptying the namespace's backlog, so the worker does not start."""
    dim = getattr(_batcher_embedder_model(), "dimension", None)
    stored = store.stored_dimension()
    if isinstance(dim, int) and not isinstance(dim, bool) and stored is not None and dim != stored:
        raise ConfigError(
            f"the worker's embedder makes {dim}-dimension vectors; namespace "
            f"{store.keys.namespace!r} stores {stored}-dimension ones: start it with the "
            "namespace's model (MEMWORKER_MODEL / MEMWORKER_EMBEDDER)"
        )


class BatcherEmbedder:
    """A CrewAI embedder callable over the worker process's ``EmbeddingBatcher``."""

    def __call__(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return [list(map(float, v)) for v in get_batcher().submit(list(texts)).result()]


# --------------------------------------------------------------------------- Valkey side
def _client(settings: Settings) -> Any:
    key = (ensure_embedded(settings).url(redact=False, scheme="redis"), settings.namespace)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis_client(settings)
                _clients[key] = client
    return client


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
    - ``list_scopes``/``list_categories`` (field inference: the "existing scopes and
      categories" of the LLM's prompt) list those of the records the writer could
      recall (``visible_scopes``/``visible_categories``, viewer = the items' source),
      never those of another source's private records nor the LangGraph store's
      items (``/langgraph``); nothing else reaches the store.
    """

    def __init__(self, store: ValkeyStore, items: list[dict[str, Any]]) -> None:
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
        self.updated: dict[str, str] = {}  # record id -> the content an update wrote
        self.inserted: list[Any] = []
        self.inserted_for: dict[str, str] = {}  # item id -> record id

    def may_touch(self, record: Any) -> bool:
        """Whether this writer may see, merge into, update or delete ``record``: a
        private record only when it is the writer's own (a source-less writer has
        none), a public one only when the write is not private."""
        if in_langgraph(getattr(record, "scope", None)):
            return False  # the LangGraph store's items are not CrewAI memories
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
                viewer=self.source, exclude_scope=LANGGRAPH_ROOT,
            )  # fmt: skip
        else:
            hits = self._store.search(
                query_embedding, scope_prefix=scope_prefix, categories=categories,
                metadata_filter=metadata_filter, limit=limit, min_score=min_score,
                include_private=False, viewer=self.source, exclude_scope=LANGGRAPH_ROOT,
            )  # fmt: skip
        hits = [(r, s) for r, s in hits if self.may_touch(r)][:limit]
        with self._shown_lock:
            self._shown.update(r.id for r, _ in hits)
        return hits

    def _allowed(self, op: str, record_id: Any) -> Any:
        """The stored record ``op`` may act on, or ``None`` (refused and logged)."""
        with self._shown_lock:
            was_shown = record_id in self._shown
        stored = self._store.get_record(record_id) if was_shown else None
        if stored is not None and self.may_touch(stored):
            return stored
        self.refused.add(str(record_id))
        log.warning(
            "consolidation: %s of record %s refused (not shown to this writer, gone, or "
            "not its to change)", op, shown(record_id, 100),
        )  # fmt: skip
        return None

    def update(self, record: Any) -> None:
        """Update a record this writer may touch, keeping its stored owner and privacy."""
        stored = self._allowed("update", record.id)
        if stored is not None:
            self._store.update(
                record.model_copy(update={"source": stored.source, "private": stored.private})
            )
            self.updated[str(record.id)] = record.content

    def keep_unmerged(self, state: Any) -> None:
        """Insert an item's text as a record of its own when its plan merged it nowhere.

        A plan "update record X, insert nothing" whose update did not happen (X not
        shown to this flow, refused by :meth:`may_touch`, gone, or updated by another
        item of the batch first: CrewAI skips each of these) would lose the new text,
        and ``remember`` would return a record that does not hold it. A plan with no
        update (the LLM judged the text redundant) is CrewAI's to decide and is kept.
        """
        plan = state.plan
        if state.dropped or plan is None or plan.insert_new:
            return
        updates = [a for a in plan.actions if a.action == "update" and a.new_content]
        if not updates or any(self.updated.get(a.record_id) == a.new_content for a in updates):
            return
        from crewai.memory.types import MemoryRecord

        self.save([
            MemoryRecord(
                content=state.content, scope=state.resolved_scope,
                categories=state.resolved_categories, metadata=state.resolved_metadata,
                importance=state.resolved_importance, embedding=state.embedding or None,
                source=state.resolved_source, private=state.resolved_private,
            )
        ])  # fmt: skip
        log.warning("consolidation: a plan's update did not happen; its new text is kept as a record")

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
        for record in records:
            if in_langgraph(record.scope):  # an inferred scope: the job fails, reported
                raise MemworkerError(
                    f"the inferred scope {shown(record.scope, 100)} is under {LANGGRAPH_ROOT}, "
                    "the LangGraph store's: CrewAI memories cannot be written there"
                )
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

    def list_scopes(self, parent: str = "/") -> list[str]:
        return self._store.visible_scopes(parent, viewer=self.source, exclude_scope=LANGGRAPH_ROOT)

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        return self._store.visible_categories(
            scope_prefix, viewer=self.source, exclude_scope=LANGGRAPH_ROOT
        )

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the consolidation flow's storage has no {name!r}")


def _boundary(flow: Mapping[str, Any]) -> str:
    """The scope the flow searches for similar records (CrewAI's ``effective_prefix``)."""
    root: str | None = flow.get("root_scope")
    scope: str | None = flow.get("scope")
    if root:
        prefix = root.rstrip("/") or "/"
        if scope and scope.strip("/"):
            prefix = prefix.rstrip("/") + "/" + scope.strip("/")
        return prefix
    if scope and scope.strip("/"):
        return "/" + scope.strip("/")
    return "/"


def run_flow_job(
    context: WorkerContext, job_id: str, producer: str, items: list[dict[str, Any]]
) -> None:
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
    llm = worker_llm() if needs_llm else None
    client = _client(context.settings)
    scopes = {_boundary(f) for f in flows} if consolidate else set()
    # One flow per writer: each sees and touches only what its items' source may
    # (_FlowStorage), and CrewAI's intra-batch dedup never drops one writer's item as
    # a duplicate of another's (a job may hold several callers' items: group commit).
    writers: dict[tuple[Any, bool], list[int]] = {}
    for i, item in enumerate(items):
        writers.setdefault((item.get("source"), bool(item.get("private"))), []).append(i)

    def run() -> None:
        # A delivery of a job already committed or failed (at-least-once delivery) must
        # not run consolidation again: its updates and deletes are direct writes, and
        # could revert what a user changed since. Checked under the scope locks, so a
        # concurrent second delivery waits for the first, then finds no pending mark.
        if client.zscore(context.keys.producer(producer).pending, job_id) is None:
            context.duplicates += 1
            log.info("job %s is no longer pending: a duplicate delivery, skipped", job_id)
            return
        results: dict[str, str] = {}
        inserted: list[Any] = []
        for indexes in writers.values():
            mine = [items[i] for i in indexes]
            storage = _FlowStorage(context.store, mine)
            flow = EncodingFlow(storage=storage, llm=llm, embedder=BatcherEmbedder(), config=config)
            flow.kickoff(inputs={"items": [inputs[i] for i in indexes]})
            for state in flow.state.items:
                storage.keep_unmerged(state)
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
