"""The worker's actors and their shared context, and :func:`make_broker`, which
registers them on a :class:`~memworker.worker.broker.MemworkerBroker`.

Nothing is created at import time. :func:`make_broker` builds a broker on a
:class:`Settings` and registers the actors ``save_records`` and ``encode_records`` on
it with ``dramatiq.Actor`` directly, so no global broker is ever needed.

Delivery
    At least once. Commit = ONE atomic script call (``ValkeyStore.write_encoded``
    with extra commands): the job's records and side indexes, ``ZREM`` of its
    pending mark, its commit marker (``ZADD ns:committed:<producer>``, entries
    older than ``MARKER_TTL_MS`` = 1 h trimmed in the same step), counters, and a
    ``PUBLISH`` on the producer's ``done`` channel.
    dramatiq acks after the actor returns, i.e. after the commit; a redelivered
    job rewrites the same record ids. Every step of a commit writes only while the
    job's pending mark exists (checked in the script), so a duplicate delivery of a
    job that committed or failed writes, counts and marks nothing; and it leaves a
    record updated after the job was enqueued (its ``upd`` stamp is later than the
    pending mark's score) as it is.

Encode jobs
    Items whose ``flow`` entry asks for field inference or consolidation run
    CrewAI's EncodingFlow (:mod:`memworker.crewai.flow`). The others take the fast
    path: the job's texts are embedded through the process's one batcher and
    committed at once; when the items carry a ``batch_dedup_threshold`` (every
    ``QueuedMemory`` job does), CrewAI's intra-batch dedup drops near-duplicates
    of earlier items of the job first (:mod:`memworker.worker.dedup`), and the job's
    ``ns:results:<job>`` (``""`` for a dropped item) is written in the commit's
    atomic step. An encode job's items are checked before any embedding
    (``check_encode_job``): a crafted payload fails with :class:`JobPayloadError`,
    permanently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.middleware import Retries

from memworker.crewai import flow as crewai_flow
from memworker.errors import ConfigError, ValidationError, shown
from memworker.queue.jobs import (
    DEFAULT_QUEUE,
    ENCODE_ACTOR,
    SAVE_ACTOR,
    JobPayloadError,
    QueueKeys,
    needs_flow,
)
from memworker.queue.payload import check_encode_job, parse_job, records_from_save_job
from memworker.layout import refuse_legacy
from memworker.metrics import worker_metrics
from memworker.tracing import span
from memworker.settings import Settings
from memworker.store.codec import to_rows
from memworker.store.store import NotPending, ValkeyStore
from memworker.worker.batch import JobBatches, commit_commands
from memworker.worker.clock import server_now_ms
from memworker.worker.broker import HEARTBEAT_TIMEOUT_MS, MemworkerBroker
from memworker.worker.dedup import batch_duplicates, dedup_results, fast_path_dedup_threshold
from memworker.worker.logs import LogRedaction, redact_worker_logs
from memworker.worker.middleware import (
    DEFAULT_MAX_DELIVERIES,
    BarrierMiddleware,
    HealthMiddleware,
    current_delivery,
)
from memworker.worker.runtime import get_batcher
from memworker.worker_settings import (
    COMMIT_STEP_ENV,
    DEFAULT_COMMIT_STEP,
    DEFAULT_COMMIT_THREADS,
    DEFAULT_INFLIGHT_BYTES,
    DEFAULT_INFLIGHT_RECORDS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MIN_BACKOFF_MS,
)

__all__ = [
    "COMMIT_STEP_ENV",
    "DEFAULT_COMMIT_STEP",
    "DEFAULT_MAX_BACKOFF_MS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MIN_BACKOFF_MS",
    "WorkerContext",
    "make_broker",
]

#: Longest retry backoff (ms).
DEFAULT_MAX_BACKOFF_MS = 60_000
#: The most ``max_backoff_ms`` can be (an hour): a retry is a delayed message, and the
#: workers refuse one due more than a day ahead (:data:`memworker.worker.broker.MAX_ETA_AHEAD_MS`).
MAX_BACKOFF_LIMIT_MS = 3_600_000


class WorkerContext:
    """What the actors of one broker share: the store (one client for all threads).

    Args:
        commit_step: Records per atomic step of a job's commit (``0``: the whole job
            in one step); see :meth:`commit`.
    """

    def __init__(self, settings: Settings, *, commit_step: int = DEFAULT_COMMIT_STEP) -> None:
        self.settings = settings
        self.keys = QueueKeys(settings.namespace)
        self.commit_step = commit_step
        #: Commits refused because the job was no longer pending (duplicate deliveries).
        self.duplicates = 0
        self.store = self.new_store()

    def new_store(self) -> ValkeyStore:
        """A store of this context's settings, with a client of its own (the batched
        path's commit lanes after the first take one each)."""
        # One script call per commit step (batch_size: the store never splits one).
        return ValkeyStore(self.settings, batch_size=10_000)

    def commit(
        self,
        job_id: str,
        producer: str,
        records: list[Any],
        extra: Iterable[list[str]] = (),
    ) -> int:
        """Write the records and, in the same atomic step as the last of them, run
        ``extra`` (e.g. a job's results), clear the pending mark and the delivery
        counter, count, and wake the producer.

        A job of more than ``commit_step`` records is written ``commit_step`` at a time
        (each step atomic), the pending mark going with the last step: with a search
        module, each record's index insertion holds the server (~0.2 ms), so one
        50-record step would make every other client, agents enqueueing included, wait
        ~10 ms. A drain still returns only once every record is written; a worker that
        dies between steps leaves the job pending and unacknowledged, and its
        redelivery rewrites the same ids (the counts stay exact)."""
        encoded = to_rows(records)
        k = self.keys
        field = getattr(current_delivery, "field", None)
        commands = [
            *extra,
            # the delivery counter of this attempt (BarrierMiddleware's), done with
            *([["HDEL", k.deliveries, field]] if field else []),
            *commit_commands(k, producer, job_id, len(encoded), server_now_ms()),
        ]
        inserted = 0
        step = self.commit_step
        # Every step writes only while the job is pending: a duplicate delivery of a job
        # that committed (or failed) writes nothing, so it cannot revert an update made
        # after the drain returned, re-add the marker a drain consumed, or count twice.
        guard = (k.producer(producer).pending, job_id)
        metrics = worker_metrics()
        try:
            while step and len(encoded) > step:
                started = time.perf_counter()
                inserted += self.store.write_encoded(encoded[:step], guard=guard)
                if metrics is not None:
                    metrics.commit.labels(k.namespace).observe(time.perf_counter() - started)
                encoded = encoded[step:]
            started = time.perf_counter()
            inserted += self.store.write_encoded(encoded, extra=commands, guard=guard)
            if metrics is not None:
                metrics.commit.labels(k.namespace).observe(time.perf_counter() - started)
        except NotPending:
            self.duplicates += 1
            return 0
        if field:
            current_delivery.cleared = field
        current_delivery.records = getattr(current_delivery, "records", 0) + len(records)
        return inserted

    def close(self) -> None:
        self.store.close()


def _spans(context: WorkerContext, job_id: str, records: int) -> tuple[Any, dict[str, Any]]:
    """The parent context of this job's spans (from its message) and their attributes."""
    attributes = {
        "memworker.namespace": context.settings.namespace,
        "memworker.job_id": job_id,
        "memworker.records": records,
    }
    return getattr(current_delivery, "trace", None), attributes


def _commit_traced(
    context: WorkerContext, job_id: str, producer: str, records: list[Any], **extra: Any
) -> None:
    """``context.commit`` in the job's ``memworker.commit`` span, with its outcome."""
    parent, attributes = _spans(context, job_id, len(records))
    with span("memworker.commit", attributes, parent=parent) as current:
        duplicates = context.duplicates
        context.commit(job_id, producer, records, **extra)
        if current is not None:
            outcome = "duplicate" if context.duplicates > duplicates else "committed"
            current.set_attribute("memworker.outcome", outcome)


def _save_records(context: WorkerContext, job: Any) -> None:
    job_id, producer, items = parse_job(job)
    _commit_traced(context, job_id, producer, records_from_save_job(items))


def _encode_records(context: WorkerContext, job: Any) -> None:
    job_id, producer, items = parse_job(job)
    check_encode_job(items)  # a crafted payload fails here, permanently (never retried)
    if any(needs_flow(item.get("flow")) for item in items):
        # Fields to infer or consolidation on: CrewAI's EncodingFlow (memworker.crewai.flow).
        parent, attributes = _spans(context, job_id, len(items))
        with span("memworker.flow", attributes, parent=parent):
            crewai_flow.run_flow_job(context, job_id, producer, items)
        return
    # The fast path: every field given, consolidation off.
    threshold = fast_path_dedup_threshold(items)
    texts = []
    for i, item in enumerate(items):
        text = item.get("content")
        if not isinstance(text, str) or not text:
            raise JobPayloadError(f"items[{i}].content must be a non-empty string")
        texts.append(text)
    parent, attributes = _spans(context, job_id, len(texts))
    with span("memworker.embed", attributes, parent=parent):
        vectors = get_batcher().submit(texts).result()
    # CrewAI's intra-batch dedup, as the flow path applies it (QueuedMemory jobs).
    dropped = batch_duplicates(vectors, threshold)
    gone = set(dropped)
    records = [
        {**{k: v for k, v in item.items() if k != "flow"}, "embedding": vectors[i]}
        for i, item in enumerate(items)
        if i not in gone
    ]
    results = dedup_results(context.settings.namespace, job_id, items, dropped)
    _commit_traced(context, job_id, producer, records, extra=results)



def make_broker(
    settings: Settings | str | None = None,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
    max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    commit_step: int = DEFAULT_COMMIT_STEP,
    inflight_records: int = DEFAULT_INFLIGHT_RECORDS,
    inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
    commit_threads: int = DEFAULT_COMMIT_THREADS,
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
    queue: str = DEFAULT_QUEUE,
) -> MemworkerBroker:
    """A broker with memworker's middleware and actors registered (no global broker),
    and its batched path (:mod:`memworker.worker.batch`) for ``queue``
    (``inflight_records=0`` turns it off; ``commit_threads`` lanes, each lane after
    the first on a store of its own).

    Raises:
        ConfigError: ``max_backoff_ms`` above :data:`MAX_BACKOFF_LIMIT_MS` (an hour).
    """
    if isinstance(max_backoff_ms, bool) or not isinstance(max_backoff_ms, int) or not (
        0 <= max_backoff_ms <= MAX_BACKOFF_LIMIT_MS
    ):
        raise ConfigError(
            f"max_backoff_ms must be an integer >= 0 and <= {MAX_BACKOFF_LIMIT_MS}, got {shown(max_backoff_ms, 40)}"
        )
    settings = Settings.resolve(settings)
    broker = MemworkerBroker(settings, heartbeat_timeout=heartbeat_timeout_ms)
    refuse_legacy(settings, broker.client)  # never serve a namespace of an older key layout
    for m in broker.middleware:
        if isinstance(m, Retries):
            m.max_retries = max_retries
            m.min_backoff = min_backoff_ms
            m.max_backoff = max_backoff_ms
    barrier = BarrierMiddleware(settings, max_deliveries=max_deliveries)
    # dramatiq runs after_* hooks in reverse order: placed before Retries, the
    # barrier's after_process_message runs after Retries decided retry vs. fail.
    broker.add_middleware(barrier, before=Retries)
    broker.add_middleware(HealthMiddleware(settings, barrier))
    broker.add_middleware(LogRedaction())
    context = WorkerContext(settings, commit_step=commit_step)
    broker.context = context
    if inflight_records > 0:

        def committed(n: int) -> None:
            barrier.processed += n

        broker.batches = JobBatches(
            broker, context.store, queue, barrier.isolation,
            inflight_records=inflight_records, inflight_bytes=inflight_bytes,
            commit_step=commit_step, on_commit=committed, commit_threads=commit_threads,
            store_factory=context.new_store,
        )  # fmt: skip
    options = {"throws": (ValidationError,), "max_retries": max_retries}
    for name, fn in ((SAVE_ACTOR, _save_records), (ENCODE_ACTOR, _encode_records)):
        dramatiq.Actor(
            _actor_fn(name, fn, context),
            broker=broker,
            actor_name=name,
            queue_name=queue,
            priority=0,
            options=dict(options),
        )
    redact_worker_logs(broker)
    return broker


def _actor_fn(name: str, fn: Callable[[Any, Any], None], context: Any) -> Callable[[Any], None]:
    """The function dramatiq runs for actor ``name``: exactly one argument, the job
    (``fn`` and ``context`` are bound here, never parameters a message could set;
    the consumer dead-letters a message of other arguments before it gets here)."""

    def actor_fn(job: Any) -> None:
        fn(context, job)

    actor_fn.__name__ = name
    return actor_fn
