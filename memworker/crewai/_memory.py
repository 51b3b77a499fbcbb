"""``QueuedMemory``: CrewAI's ``Memory`` whose writes go through memworker's queue."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait
from datetime import datetime
from typing import Any, Literal, cast

from crewai.events.types.memory_events import (
    MemoryQueryCompletedEvent,
    MemoryQueryFailedEvent,
    MemoryQueryStartedEvent,
    MemorySaveStartedEvent,
)
from crewai.memory.types import MemoryMatch, MemoryRecord
from crewai.memory.unified_memory import Memory
from crewai.memory.utils import join_scope_paths
from pydantic import Field, PrivateAttr
from pydantic import ValidationError as PydanticValidationError

from memworker.crewai._calls import (
    SOURCE_TYPE,
    PrivacyView,
    SaveCall,
    check_not_langgraph,
    completed_event,
    emit,
    failed_event,
    within,
    without_langgraph,
)
from memworker.keys import LANGGRAPH_ROOT, in_langgraph
from memworker.crewai._embedder import LocalEmbedder, model_id_of
from memworker.queue.group import GroupCommit
from memworker.crewai._install import is_valkey_spec, store_for_spec
from memworker.crewai._items import call_items, flow_entry
from memworker.crewai._recall import matches
from memworker.crewai._settle import Settler
from memworker.errors import ConfigError, JobFailedError, MemworkerError, ValidationError, shown  # re-exported
from memworker.queue.jobs import DrainTimeout, FailedJob, check_timeout, embed_items, needs_flow
from memworker.queue.producer import MemoryQueue
from memworker.settings import redact_url
from memworker.store.query import MAX_LIMIT
from memworker.store.store import ValkeyStore
from memworker.store.validate import check_retention_days, check_unicode, normalize_scope, normalize_scope_prefix

__all__ = ["QueuedMemory", "JobFailedError"]

log = logging.getLogger("memworker.crewai")

#: Most texts per encode job; a larger remember_many is split into several jobs.
JOB_CHUNK = 500
#: Most concurrent ``remember()`` calls sharing one job (the worker's default batch).
GROUP_LIMIT = 64
#: The flow entry of a grouped ``remember()`` item: the fast path without intra-batch
#: dedup, which CrewAI never applies to a single remember() and must not apply across
#: the independent calls that share a job.
_GROUPED_FLOW = {"consolidation_threshold": 1.0}


def _check_categories(categories: Any) -> None:
    """``None`` (inferred, or no filter) or a list of strings; ``0`` or ``""`` are not
    read as none."""
    if categories is None:
        return
    if not isinstance(categories, (list, tuple)) or not all(isinstance(c, str) for c in categories):
        raise ValidationError("categories must be None or a list of strings")
    for i, category in enumerate(categories):
        check_unicode(category, f"categories[{i}]")


def _check_scope(value: Any, field: str = "scope") -> None:
    """A scope or path argument: a string or ``None`` (CrewAI's ``join_scope_paths``,
    under a ``root_scope``, calls ``.strip`` on it: an int crashed with AttributeError)."""
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{field} must be a string or None, got {type(value).__name__}")


def _check_call(metadata: Any, root_scope: Any) -> None:
    """A save call's arguments that CrewAI's event models (built before the item's own
    checks) would refuse with their own error type."""
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata)
    ):
        raise ValidationError("metadata must be None or a dict with string keys")
    if root_scope is not None and not isinstance(root_scope, str):
        raise ValidationError(f"root_scope must be a string or None, got {type(root_scope).__name__}")


def _unwrapped(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; a pydantic ``ValidationError`` wrapping memworker's
    own error (a ``ValueError``, so pydantic wraps it, quoting the input) is replaced
    by that error, raised after the ``except`` block so pydantic's is not its context."""
    ours: MemworkerError | None = None
    try:
        return call(*args, **kwargs)
    except PydanticValidationError as exc:
        ours = next(
            (e["ctx"]["error"] for e in exc.errors()
             if isinstance(e.get("ctx", {}).get("error"), MemworkerError)), None,
        )  # fmt: skip
        if ours is None:
            raise
    raise ours


class QueuedMemory(Memory):
    """CrewAI ``Memory`` whose writes are encoded and committed by memworker workers.

    Same constructor as ``Memory`` (``storage`` is a ``valkey://``/``redis://`` spec,
    ``"valkey"`` for the settings' server, or a :class:`~memworker.store.ValkeyStore`),
    plus:

    Args:
        namespace: memworker namespace (default: the URL's / ``MEMWORKER_NAMESPACE``).
        producer_id: Identity of this producer's pending set (default: host-pid-random).
        drain_timeout: Seconds ``drain_writes``/``remember`` wait before raising
            :class:`~memworker.queue.jobs.DrainTimeout` (``None``: for ever).
        model_id: The embedding model's identity, when the embedder does not say
            (compared with the store's; see :meth:`ValkeyStore.ensure_model`).
        background_enqueue: ``True`` (default, as CrewAI does): ``remember_many``
            hands the call to the save thread and returns; ``False``: it returns
            once its job is in Valkey (the caller then waits for that round trip,
            and a process killed after the return loses nothing).
        retention: Scope -> days (``{"/": 30}``: the memory's ``root_scope``, the
            whole namespace without one; scopes are under the root scope, as
            ``remember``'s are): the workers delete records created longer ago than
            that in the scope and below (:meth:`set_retention`; the same policies as
            ``memworker retention``, whose scopes are absolute).

    ``embedder=None`` means the bundled all-MiniLM-L6-v2 (:class:`LocalEmbedder`),
    the workers' default, not CrewAI's OpenAI default. Consolidation is CrewAI's:
    on unless ``consolidation_threshold >= 1.0``.
    """

    storage: Any = Field(default="valkey", description="Valkey spec or a ValkeyStore.")
    namespace: str | None = Field(default=None, description="memworker namespace.")
    producer_id: str | None = Field(default=None, description="memworker producer id.")
    drain_timeout: float | None = Field(default=60.0, description="Drain wait (s).")
    model_id: str | None = Field(default=None, description="Embedding model identity.")
    background_enqueue: bool = Field(default=True, description="remember_many enqueues in the save thread.")
    # Any: checked by memworker (pydantic would make True one day, "0.001" a number)
    retention: dict[str, Any] | None = Field(default=None, description="Scope -> days kept.")

    _queue: Any = PrivateAttr(default=None)
    _settler: Any = PrivateAttr(default=None)
    _group: Any = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        """CrewAI's constructor; memworker's own refusal of an argument (a
        ``ValidationError`` from :meth:`model_post_init`, which pydantic wraps in its
        own, quoting every argument, the storage URL's password too) is raised as it is."""
        _unwrapped(super().__init__, **data)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> QueuedMemory:
        """pydantic's, memworker's own refusal raised as it is (see ``__init__``)."""
        return cast(QueuedMemory, _unwrapped(super().model_validate, obj, *args, **kwargs))

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> QueuedMemory:
        """pydantic's, memworker's own refusal raised as it is (see ``__init__``)."""
        return cast(QueuedMemory, _unwrapped(super().model_validate_json, json_data, *args, **kwargs))

    @classmethod
    def model_validate_strings(cls, obj: Any, *args: Any, **kwargs: Any) -> QueuedMemory:
        """pydantic's, memworker's own refusal raised as it is (see ``__init__``)."""
        return cast(QueuedMemory, _unwrapped(super().model_validate_strings, obj, *args, **kwargs))

    def model_post_init(self, __context: Any) -> None:
        try:  # inf raised OverflowError, nan and -1 a DrainTimeout, after each write
            self.drain_timeout = check_timeout(self.drain_timeout)
        except ValidationError:
            raise ValidationError(
                "drain_timeout must be None or a finite number of seconds >= 0"
            ) from None
        spec = self.storage
        if isinstance(spec, str):
            if not is_valkey_spec(spec):
                # a URL is named by its scheme only: the rest may hold a password
                got = f"a {shown(spec.partition('://')[0])}:// URL" if "://" in spec else (
                    "a string with '@' in it" if "@" in spec else shown(spec)
                )
                raise ConfigError(
                    f"QueuedMemory needs a Valkey storage spec (valkey://, valkeys://, redis://, "
                    f"rediss:// or 'valkey'), got {got}"
                )
            store = store_for_spec(spec, namespace=self.namespace)
        elif isinstance(spec, ValkeyStore):
            store = spec
        else:
            raise ConfigError(
                f"QueuedMemory's storage must be a Valkey spec or a ValkeyStore, got {type(spec).__name__}"
            )
        self.__dict__["storage"] = store
        try:
            super().model_post_init(__context)
        finally:
            # the field as given, a URL's password replaced by *** (repr and str show it)
            self.__dict__["storage"] = redact_url(spec) if isinstance(spec, str) else spec
        if self._embedder_instance is None and self.embedder is None:
            self._embedder_instance = LocalEmbedder()
        policies = self._check_retention(self.retention, self.root_scope)
        # A default id is the process's: a forked child's queue makes its own, and the
        # settle thread starts afresh there (the parent's jobs are not the child's to
        # wait for; their failures not its to consume). ``producer_id`` reads it.
        self._queue = MemoryQueue(store.settings, producer_id=self.producer_id)
        self._settler = Settler(store.settings, self._queue)
        if self.producer_id is None:  # shown; a forked child's is ``queue.producer_id``
            self.producer_id = self._queue.producer_id
        self._group = GroupCommit(self._send_group, GROUP_LIMIT)
        self._ensure_model()
        for scope, days in policies.items():
            self.set_retention(scope, days)

    @staticmethod
    def _check_retention(retention: Any, root_scope: str | None) -> dict[str, float]:
        """Every policy checked before the first is written (none under the LangGraph
        store's scope: the store refuses it)."""
        if retention is None:
            return {}
        if not isinstance(retention, dict):
            raise ValidationError(f"retention must be a dict of scope -> days, got {type(retention).__name__}")
        out: dict[str, float] = {}
        for scope, days in retention.items():
            path = normalize_scope(scope, field="retention scope")
            check_not_langgraph(join_scope_paths(root_scope, path) if root_scope else path)
            try:
                out[path] = check_retention_days(days)
            except ValidationError as exc:
                raise ValidationError(f"retention[{shown(path)}]: {exc}") from None
        return out

    def set_retention(self, scope: str, days: float | None) -> None:
        """Keep records of ``scope`` (and below) ``days`` after their creation: the
        workers' sweep deletes older ones (``None`` removes the scope's policy).
        With a ``root_scope`` the scope is under it, as ``remember``'s and ``recall``'s
        are (``"/"``: the root scope; without one, the whole namespace)."""
        path = normalize_scope(scope, field="retention scope")
        if self.root_scope:
            path = join_scope_paths(self.root_scope, path)
        self.store.set_retention(path, days)

    # ------------------------------------------------------------------ helpers
    @property
    def queue(self) -> Any:
        """The :class:`~memworker.queue.MemoryQueue` this memory enqueues on."""
        return self._queue

    @property
    def store(self) -> ValkeyStore:
        """The :class:`~memworker.store.ValkeyStore` workers commit into."""
        return cast("ValkeyStore", self._storage)  # CrewAI types it as its StorageBackend

    def _ensure_model(self) -> None:
        model = self.model_id or model_id_of(self._embedder_instance) or model_id_of(self.embedder)
        if model:
            self.store.ensure_model(model)
        else:
            log.warning(
                "QueuedMemory: the embedder's model is unknown (pass model_id=...): "
                "the check that workers embed with the same model is skipped"
            )

    def _items(self, contents: list[str], scope: Any, categories: Any, metadata: Any, importance: Any,
               source: Any, private: bool, root: Any) -> list[dict[str, Any]]:  # fmt: skip
        """Encode items of one call (validated by the queue when enqueued)."""
        flow = flow_entry(self, scope, categories, importance, root)
        return call_items(contents, scope, categories, metadata, importance, source, private, root,
                          flow=flow, default_importance=self.default_importance)  # fmt: skip

    def _enqueue(
        self,
        items: list[dict[str, Any]],
        on_enqueued: Callable[[str, list[str]], None] | None = None,
        on_failed_send: Callable[[str], None] | None = None,
    ) -> list[tuple[str, list[str]]]:
        """The items as jobs of at most ``JOB_CHUNK``: every job checked before the
        first is sent (a bad or oversized one: nothing enqueued)."""
        chunks = [items[i : i + JOB_CHUNK] for i in range(0, len(items), JOB_CHUNK)]
        return self._queue.enqueue_encode_jobs(chunks, on_enqueued, on_failed_send)  # type: ignore[no-any-return]

    def _send_group(self, job_items: list[dict[str, Any]]) -> list[tuple[str, Future[Any]] | Exception]:
        """One job for the ``remember()`` items of concurrent calls (see ``_group``):
        ``(job id, its settle future)`` per item. A group over ``max_job_bytes`` is
        sent item by item, so each caller gets its own item's verdict (its pair, or the
        error that refused or lost its send). A job whose send failed may be in Valkey
        all the same (its reply lost): it is watched, so the drain waits for it."""
        try:
            job_id = self._queue.enqueue_encode_items(job_items, on_failed_send=self._settler.watch)
        except ValidationError:
            if len(job_items) == 1:
                raise
            out: list[tuple[str, Future[Any]] | Exception] = []
            for item in job_items:
                try:
                    out += self._send_group([item])
                except Exception as exc:  # noqa: BLE001 - this caller's own verdict
                    out.append(exc)
            return out
        future = self._settler.watch(job_id)
        return [(job_id, future)] * len(job_items)

    def _timeout(self, job_ids: list[str]) -> DrainTimeout:
        try:
            status = self._queue.status()
            live, depth = len(status.get("workers") or []), status.get("depth", 0)
            cause = (
                "no live worker: start one with `memworker worker`"
                if live == 0
                else f"{live} live worker(s), {depth} message(s) queued: the workers may be saturated"
            )
        except Exception as exc:  # noqa: BLE001
            cause = f"queue status unavailable ({exc})"
        return DrainTimeout(job_ids, cause, self.drain_timeout)

    def _record_for(self, job_id: str, record_id: str) -> Any:
        record = self._storage.get_record(record_id)
        if record is not None:
            return record
        # Merged by consolidation, or dropped as an intra-batch duplicate (flow or fast
        # path): the worker says what it became.
        other = self.queue.job_result(job_id, record_id)
        return self._storage.get_record(other) if other else None

    # ------------------------------------------------------------------ writes
    def remember(
        self,
        content: str,
        scope: str | None = None,
        categories: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
        source: str | None = None,
        private: bool = False,
        agent_role: str | None = None,
        root_scope: str | None = None,
    ) -> MemoryRecord | None:
        """Enqueue one item, wait for its own job only, and return its record.

        With every field given and consolidation off (the worker's fast path),
        concurrent calls on this memory share one job: a call that arrives while
        another is enqueueing is sent with the next group (see ``_group``), and waits
        for that job, which holds its item.

        Raises:
            JobFailedError: The workers dead-lettered the job.
            DrainTimeout: Not committed within ``drain_timeout``.
            memworker.errors.ValidationError: A bad field; nothing was enqueued.
        """
        if self.read_only:
            return None
        if not isinstance(content, str):
            raise ValidationError(f"content must be a string, got {type(content).__name__}")
        _check_scope(scope)
        _check_call(metadata, root_scope)  # before CrewAI's event models
        root = root_scope if root_scope is not None else self.root_scope
        emit(MemorySaveStartedEvent(value=content, metadata=metadata, source_type=SOURCE_TYPE), self)
        start = time.perf_counter()
        try:
            items = self._items([content], scope, categories, metadata, importance, source, private, root)
            if needs_flow(items[0]["flow"]):
                job_id, ids = self._queue.enqueue_encode_job(items, on_failed_send=self._settler.watch)
                future = self._settler.watch(job_id)
            else:
                # The fast path: concurrent calls share one job (group commit). The
                # item is validated here, so a bad one fails only its own call.
                items[0]["flow"] = _GROUPED_FLOW
                job_item = embed_items(items, 1)[0]
                ids = [job_item["id"]]
                verdict = self._group.submit(job_item)
                if isinstance(verdict, Exception):
                    raise verdict  # this call's item alone was refused or lost
                job_id, future = verdict
            try:
                failure = future.result(timeout=self.drain_timeout)
            except FutureTimeout:
                raise self._timeout([job_id]) from None
            if failure is not None:
                raise JobFailedError(failure)
            record: MemoryRecord | None = self._record_for(job_id, ids[0])
        except Exception as exc:
            emit(failed_event(content, metadata, str(exc)), self)
            raise
        emit(completed_event(content, metadata, agent_role, start), self)
        return record

    def remember_many(
        self,
        contents: list[str],
        scope: str | None = None,
        categories: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
        source: str | None = None,
        private: bool = False,
        agent_role: str | None = None,
        root_scope: str | None = None,
    ) -> list[MemoryRecord]:
        """Hand the items to this memory's save thread and return ``[]`` at once (as
        CrewAI does): the agent waits neither on embedding nor on the network.

        The save thread (CrewAI's own ``memory-save`` pool) validates the items and
        enqueues them as one encode job (or several, past ``JOB_CHUNK``), usually
        within a few milliseconds. It emits ``MemorySaveStartedEvent``, then
        ``MemorySaveCompletedEvent`` (or ``MemorySaveFailedEvent``) when the workers
        are done, in the caller's event context. Failures, bad input included, are
        reported as events, never raised. ``drain_writes()`` (hence ``recall``,
        ``close`` and a normal interpreter exit) waits for the hand-off first, then
        for the jobs. With ``background_enqueue=False`` this thread enqueues, and
        the call returns once the job is in Valkey.
        """
        if not contents or self.read_only:
            return []
        root = root_scope if root_scope is not None else self.root_scope
        start = time.perf_counter()
        error: Exception | None
        try:  # built here: the call's own copies of its arguments
            if isinstance(contents, (str, bytes, Mapping)):  # "hello" saved "h", "e", "l", "o"
                raise ValidationError(
                    f"contents must be a list of strings, got {type(contents).__name__}"
                )
            _check_scope(scope)
            _check_call(metadata, root_scope)
            items = self._items(list(contents), scope, categories, metadata, importance, source, private, root)
        except Exception as exc:  # noqa: BLE001 - reported like CrewAI's background failures
            items, error = None, exc
            metadata = None  # CrewAI's event models refuse what failed the check
        else:
            error = None
        n = len(contents) if hasattr(contents, "__len__") else 0
        call = SaveCall(contextvars.copy_context(), n, metadata, agent_role, start)
        if self.background_enqueue:
            self._submit_save(self._enqueue_many, call, items, error)
        else:
            self._enqueue_many(call, items, error)
        return []

    def _enqueue_many(self, call: SaveCall, items: list[dict[str, Any]] | None, error: Exception | None) -> None:
        """The enqueue of a :meth:`remember_many` call: in the save thread, or in the
        caller's with ``background_enqueue=False``."""
        metadata = call.metadata
        call.ctx.run(
            emit,
            MemorySaveStartedEvent(
                value=f"{call.n} memories (background)", metadata=metadata, source_type=SOURCE_TYPE
            ),
            self,
        )
        # Each job is watched once it is in Valkey: when a later job's send fails,
        # the drain still waits for the earlier ones, and the call's one event
        # reports them with the failure.
        sent: list[Future[Any]] = []

        def enqueued(job_id: str, _ids: list[str]) -> None:
            with call.lock:
                call.left += 1
            sent.append(self._settler.watch(job_id))

        def failed_send(job_id: str) -> None:  # it may be in Valkey: waited for all the same
            enqueued(job_id, [])

        with call.lock:
            call.left = 1  # the enqueue itself: no event before it has ended
        try:
            if error is not None:
                raise error
            self._enqueue(items or [], enqueued, failed_send)
        except Exception as exc:  # noqa: BLE001 - reported like CrewAI's background failures
            if not sent:
                log.warning("remember_many: nothing enqueued: %s", exc)
                call.ctx.run(emit, failed_event("background save", metadata, str(exc)), self)
                return
            log.warning("remember_many: %d job(s) enqueued, the rest not: %s", len(sent), exc)
            with call.lock:
                call.failures.append(FailedJob("", [], f"not enqueued: {exc}"))
        def settled(future: Future[Any]) -> None:
            self._job_settled(call, future)

        for future in sent:
            future.add_done_callback(settled)
        self._job_settled(call, None)  # the enqueue's own share of call.left

    def _job_settled(self, call: SaveCall, future: Future[Any] | None) -> None:
        """One share of ``call.left`` done: a job settled (``future``), or the
        enqueue itself (``None``); the last one emits the call's event."""
        try:
            failure = future.result() if future is not None else None
            with call.lock:
                if failure is not None:
                    call.failures.append(failure)
                call.left -= 1
                if call.left:
                    return
            if call.failures:
                error = "; ".join(f.error for f in call.failures)
                event = failed_event("background save", call.metadata, error)
            else:
                event = completed_event(f"{call.n} memories saved", call.metadata, call.agent_role, call.start)
            call.ctx.run(emit, event, self)
        except Exception:  # noqa: BLE001 - never raise from the settle thread
            log.debug("remember_many settle callback failed", exc_info=True)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> QueuedMemory:
        """The memory itself: it is a handle on a live queue, store and save thread, which
        a copy shares (as ``copy.deepcopy`` of a ``logging.Logger`` does). A Flow state or
        any structure holding it can be deep-copied; both copies write through one queue."""
        return self

    def drain_writes(self) -> None:
        """Wait for CrewAI's local save pool and every job this memory enqueued.

        Failed jobs were already reported as ``MemorySaveFailedEvent``; they are never
        raised here.

        Raises:
            DrainTimeout: Jobs still pending after ``drain_timeout`` (e.g. no worker).
        """
        super().drain_writes()
        if self._settler is None:
            return
        outstanding = self._settler.outstanding()
        if not outstanding:
            return
        _, left = wait(list(outstanding.values()), timeout=self.drain_timeout)
        if left:
            raise self._timeout([j for j, f in outstanding.items() if f in left])

    # ------------------------------------------------------------------ reads
    def recall(
        self,
        query: str,
        scope: str | None = None,
        categories: list[str] | None = None,
        limit: int = 10,
        depth: Literal["shallow", "deep"] = "deep",
        source: str | None = None,
        include_private: bool = False,
    ) -> list[MemoryMatch]:
        """CrewAI's recall, after the drain barrier, with privacy filtered in the query
        (another source's private records never take a result slot)."""
        if not isinstance(query, str):
            raise ValidationError(f"query must be a string, got {type(query).__name__}")
        check_unicode(query, "query")
        _check_scope(scope)
        _check_categories(categories)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            # checked here: deep recall's flow turns a store's refusal into no results
            raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        if isinstance(source, str) and not source:
            source = None  # "" is no source, as a save's (CrewAI's LanceDB reads it so)
        self.drain_writes()
        effective_scope = scope
        if effective_scope is None and self.root_scope:
            effective_scope = self.root_scope
        elif effective_scope is not None and self.root_scope:
            effective_scope = join_scope_paths(self.root_scope, effective_scope)
        # Raises ValidationError naming the scope; every search stays inside it.
        view = PrivacyView(self.store, include_private, source, effective_scope)
        emit(
            MemoryQueryStartedEvent(query=query, limit=limit, score_threshold=None, source_type=SOURCE_TYPE),
            self,
        )
        start = time.perf_counter()
        try:
            results = matches(self, view, query, effective_scope, categories, limit, depth, source,
                              include_private)  # fmt: skip
            emit(
                MemoryQueryCompletedEvent(
                    query=query, results=results, limit=limit, score_threshold=None,
                    query_time_ms=(time.perf_counter() - start) * 1000, source_type=SOURCE_TYPE,
                ),
                self,
            )  # fmt: skip
            return results
        except Exception as exc:
            emit(
                MemoryQueryFailedEvent(
                    query=query, limit=limit, score_threshold=None, error=str(exc), source_type=SOURCE_TYPE
                ),
                self,
            )
            raise

    def _effective(self, scope: str | None) -> str | None:
        """A call's scope as CrewAI's forget and reset resolve it (under the root)."""
        _check_scope(scope)
        if scope is None:
            return self.root_scope or None
        return join_scope_paths(self.root_scope, scope) if self.root_scope else scope

    def forget(
        self,
        scope: str | None = None,
        categories: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
        record_ids: list[str] | None = None,
    ) -> int:
        """CrewAI's forget, after the drain barrier (queued writes are forgotten too).
        The LangGraph store's items (under ``/langgraph``, a namespace shared with it)
        are never deleted."""
        self.drain_writes()
        return self.store.delete(
            scope_prefix=self._effective(scope), categories=categories, record_ids=record_ids,
            older_than=older_than, metadata_filter=metadata_filter, keep_scope=LANGGRAPH_ROOT,
        )  # fmt: skip

    def reset(self, scope: str | None = None) -> None:
        """CrewAI's reset (every memory of the scope; without one, of the root scope or
        the whole namespace), after the drain barrier. The LangGraph store's items
        are kept (``reset_all`` wipes the namespace, them included)."""
        with self._reset_lock:
            self.drain_writes()
            effective = self._effective(scope)
            path = normalize_scope_prefix(effective, field="scope")
            if in_langgraph(path):
                return
            if (path == "/" or LANGGRAPH_ROOT.startswith(path + "/")) and self.store.count(LANGGRAPH_ROOT):
                self.store.delete(scope_prefix=path, keep_scope=LANGGRAPH_ROOT)
            else:  # no item to keep: CrewAI's reset (at the root it also forgets the dimension)
                self._storage.reset(scope_prefix=effective)

    def update(
        self,
        record_id: str,
        content: str | None = None,
        scope: str | None = None,
        categories: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
    ) -> MemoryRecord:
        """CrewAI's update (re-embedded here, written directly), after the drain barrier.

        With a ``root_scope``, a record outside it is not found (``ValueError``, as an
        unknown id: CrewAI's looks the id up anywhere) and a new ``scope`` is joined
        under the root, as every other call's is (CrewAI's stores it as given).
        """
        _check_scope(scope)
        if isinstance(content, str):
            check_unicode(content, "content")  # (the tokenizer raised a bare TypeError)
        self.drain_writes()
        root = join_scope_paths(self.root_scope, None) if self.root_scope else "/"
        existing = self._storage.get_record(record_id)
        if existing is None or not within(existing.scope, root) or in_langgraph(existing.scope):
            # the LangGraph store's items are not CrewAI memories: not found, as any
            raise ValueError(f"Record not found: {str(record_id)[:100]}")
        if scope is not None and self.root_scope:
            scope = join_scope_paths(root, scope)
        check_not_langgraph(scope)
        return super().update(record_id, content, scope, categories, metadata, importance)

    def list_scopes(self, path: str | None = None) -> list[str]:
        """CrewAI's list_scopes, after the drain barrier, without the LangGraph store's
        items (``/langgraph`` is listed only if CrewAI could write there: never)."""
        _check_scope(path, "path")
        self.drain_writes()
        return self.store.list_scopes(self._effective(path) or "/", exclude_scope=LANGGRAPH_ROOT)

    def list_records(self, scope: str | None = None, limit: int = 200, offset: int = 0) -> list[MemoryRecord]:
        """CrewAI's list_records, after the drain barrier, without the LangGraph
        store's items (a page may then hold fewer than ``limit``)."""
        _check_scope(scope)
        self.drain_writes()
        return without_langgraph(super().list_records(scope, limit, offset))

    def info(self, path: str | None = None) -> Any:
        """CrewAI's info, after the drain barrier; its count, categories, dates and
        child scopes leave the LangGraph store's items out."""
        _check_scope(path, "path")
        self.drain_writes()
        return self.store.get_scope_info(self._effective(path) or "/", exclude_scope=LANGGRAPH_ROOT)

    def tree(self, path: str | None = None, max_depth: int = 3) -> str:
        """CrewAI's tree (the same text), after the drain barrier, without the
        LangGraph store's items."""
        _check_scope(path, "path")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
            raise ValidationError("max_depth must be an integer >= 0")
        self.drain_writes()
        lines: list[str] = []
        pending = [((self._effective(path) or "/").rstrip("/") or "/", 0)]
        while pending:  # depth first, children in order, as CrewAI's walk
            scope, depth = pending.pop()
            info = self.store.get_scope_info(scope, exclude_scope=LANGGRAPH_ROOT)
            lines.append(f"{'  ' * depth}{scope} ({info.record_count} records)")
            if depth < max_depth:
                pending += [(child, depth + 1) for child in reversed(info.child_scopes[:20])]
        return "\n".join(lines)

    def list_categories(self, path: str | None = None) -> dict[str, int]:
        """CrewAI's list_categories, after the drain barrier, without the LangGraph
        store's items."""
        _check_scope(path, "path")
        self.drain_writes()
        return self.store.list_categories(self._effective(path), exclude_scope=LANGGRAPH_ROOT)

    def reset_all(self) -> None:
        """Reset the whole namespace (after the drain barrier); the model id is recorded again."""
        super().reset_all()
        self._ensure_model()

    def close(self) -> None:
        """Drain, then close the store, the queue and the settle thread."""
        try:
            super().close()
        finally:
            if self._settler is not None:
                self._settler.close()
            if self._queue is not None:
                self._queue.close()
