"""Prometheus metrics: the workers' (``memworker worker --metrics-port``) and, opt-in,
a producer's (``MemoryQueue(metrics=True)``).

Nothing happens at import. ``prometheus_client`` (the ``metrics`` extra) is imported
on first use. A worker started with a metrics port serves ``/metrics`` for all its
processes together: the parent sets ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode, as dramatiq's own Prometheus middleware does) before it starts the
processes, each process writes its samples there, and the parent's HTTP server adds
the queue's gauges, read from Valkey at scrape time (:class:`QueueCollector`).

Every metric has a ``namespace`` label. No label or value carries memory text,
metadata, scopes, record or producer ids, or secrets: the labels are the namespace,
an outcome from a fixed set, the model id and the backend.

| metric | type | what |
|---|---|---|
| ``memworker_jobs_total{outcome}`` | counter | jobs by outcome: ``committed``, ``retried``, ``failed`` (dead-lettered: failed for good, reported to its producer), ``poisoned`` (dead-lettered by the poison guard) |
| ``memworker_records_committed_total`` | counter | records written |
| ``memworker_embed_batch_texts`` | histogram | texts per inference (batch fill) |
| ``memworker_inference_seconds`` | histogram | model time per batch |
| ``memworker_commit_seconds`` | histogram | one commit step (a script call) |
| ``memworker_enqueue_to_searchable_seconds`` | histogram | from a job's enqueue to its commit (searchable) |
| ``memworker_job_attempts`` | histogram | deliveries a committed job took |
| ``memworker_model_info{model,backend}`` | gauge | 1 for the model the workers embed with |
| ``memworker_queue_depth``, ``memworker_in_flight``, ``memworker_delayed``, ``memworker_dead_letters``, ``memworker_pending``, ``memworker_live_workers`` | gauge | read from Valkey at scrape time (``pending``: every producer's total, so the cardinality stays one series) |
| ``memworker_enqueue_seconds``, ``memworker_drain_wait_seconds``, ``memworker_drain_timeouts_total`` | histogram, counter | producer side, in the agent's process, opt-in |
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from memworker.settings import Settings

__all__ = [
    "MULTIPROC_ENV",
    "ProducerMetrics",
    "QueueCollector",
    "WorkerMetrics",
    "producer_metrics",
    "serve_metrics",
    "worker_metrics",
]

#: prometheus_client's multiprocess directory: set by ``memworker worker
#: --metrics-port`` before its processes start; its presence turns the workers'
#: metrics on.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SEARCHABLE = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_TEXTS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256)
_ATTEMPTS = (1, 2, 3, 4, 5, 8, 13)

_lock = threading.Lock()
_worker: WorkerMetrics | None = None
_producer: ProducerMetrics | None = None


class WorkerMetrics:
    """The worker's metrics (one set per process; multiprocess mode merges them)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.jobs = _Labelled(
            Counter("memworker_jobs", "Jobs by outcome", ["namespace", "outcome"])
        )
        self.records = Counter("memworker_records_committed", "Records written", ["namespace"])
        self.batch_texts = Histogram(
            "memworker_embed_batch_texts", "Texts per inference", buckets=_TEXTS
        )
        self.inference = Histogram(
            "memworker_inference_seconds", "Model time per batch", buckets=_SECONDS
        )
        self.commit = _Labelled(Histogram(
            "memworker_commit_seconds", "One commit step", ["namespace"], buckets=_SECONDS
        ))  # fmt: skip
        self.searchable = Histogram(
            "memworker_enqueue_to_searchable_seconds",
            "From a job's enqueue to its commit",
            ["namespace"],
            buckets=_SEARCHABLE,
        )
        self.attempts = Histogram(
            "memworker_job_attempts", "Deliveries a committed job took", ["namespace"],
            buckets=_ATTEMPTS,
        )  # fmt: skip
        self.model = Gauge(
            "memworker_model_info", "The model the workers embed with", ["model", "backend"],
            multiprocess_mode="max",
        )  # fmt: skip
        self._by_namespace: dict[str, tuple[Any, Any, Any, Any]] = {}

    def committed(self, namespace: str, records: int, enqueued_ms: float, attempts: int) -> None:
        """One job committed: its records, time to searchable, attempts."""
        self.committed_many(namespace, records, [enqueued_ms], attempts)

    def committed_many(
        self, namespace: str, records: int, enqueued_ms: list[float], attempts: int = 1
    ) -> None:
        """Jobs committed together (a batched commit): the counters once, each
        histogram's observations written together (:func:`_observe_many`), the labelled
        children looked up once per namespace."""
        jobs, recs, searchable, tries = self._children(namespace)
        jobs.inc(len(enqueued_ms))
        recs.inc(records)
        now = time.time()
        ages = [max(0.0, now - stamp / 1000) for stamp in enqueued_ms if stamp > 0]
        _observe_many(searchable, ages)
        _observe_many(tries, [attempts] * len(enqueued_ms))

    def _children(self, namespace: str) -> tuple[Any, Any, Any, Any]:
        children = self._by_namespace.get(namespace)
        if children is None:
            children = (
                self.jobs.labels(namespace, "committed"),
                self.records.labels(namespace),
                self.searchable.labels(namespace),
                self.attempts.labels(namespace),
            )
            self._by_namespace[namespace] = children
        return children


class _Labelled:
    """A labelled metric that keeps the children ``labels(...)`` returned:
    prometheus_client's ``labels`` makes a tuple of strings and takes the metric's
    lock on every call (~2 us), and the worker asks for the same few children on every
    commit. Anything else is the metric's."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._kept: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._kept.get(values)
        if child is None:  # two threads may both ask: prometheus_client returns one child
            child = self._kept[values] = self._metric.labels(*values)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def _observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, written as one increment of the
    sum and one of each bucket the values fall in. In multiprocess mode every increment
    is an mmap write under the process-wide lock (~1.5-2 us), and ``observe`` makes two,
    so a batched commit of N jobs wrote 4N for its two per-job histograms. The samples
    served are the same. A prometheus_client without the Histogram fields this reads
    (``_upper_bounds``, ``_buckets``, ``_sum``) gets ``observe`` per value."""
    if len(values) < 2:
        for value in values:
            histogram.observe(value)  # the same two writes
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        if value == value:  # NaN falls in no bucket, as with observe()
            i = bisect_left(bounds, value)  # the first bound >= value: observe()'s bucket
            counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in counts.items():
        buckets[i].inc(n)


class ProducerMetrics:
    """A producer's metrics, in the agent process's default registry."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.enqueue = Histogram(
            "memworker_enqueue_seconds", "One enqueue", ["namespace"], buckets=_SECONDS
        )
        self.drain_wait = Histogram(
            "memworker_drain_wait_seconds", "One drain", ["namespace"], buckets=_SEARCHABLE
        )
        self.drain_timeouts = Counter(
            "memworker_drain_timeouts", "Drains that timed out", ["namespace"]
        )


def worker_metrics() -> WorkerMetrics | None:
    """The process's worker metrics, or ``None`` when metrics are off (no
    ``PROMETHEUS_MULTIPROC_DIR``) or prometheus_client is not installed."""
    global _worker
    if _worker is None:
        if not os.environ.get(MULTIPROC_ENV):
            return None
        with _lock:
            if _worker is None:
                try:
                    _worker = WorkerMetrics()
                except ImportError:
                    return None
    return _worker


def producer_metrics() -> ProducerMetrics:
    """The producer metrics of this process (created once).

    Raises:
        ConfigError: prometheus_client is not installed (the ``metrics`` extra).
    """
    global _producer
    if _producer is None:
        with _lock:
            if _producer is None:
                try:
                    _producer = ProducerMetrics()
                except ImportError as exc:
                    from memworker.errors import ConfigError

                    raise ConfigError(
                        "metrics=True needs prometheus_client: pip install 'memworker[metrics]'"
                    ) from exc
    return _producer


class QueueCollector:
    """The queue's gauges, read from Valkey at each scrape (one status read)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from memworker.queue.admin import queue_status

        ns = self.settings.namespace
        try:
            status = queue_status(self.settings)
        except Exception:  # noqa: BLE001 - Valkey unreachable: the gauges are absent
            up = GaugeMetricFamily("memworker_valkey_up", "Valkey answered the scrape", labels=["namespace"])
            up.add_metric([ns], 0)
            yield up
            return
        values = {
            "memworker_valkey_up": ("Valkey answered the scrape", 1),
            "memworker_queue_depth": ("Jobs waiting to be fetched", status["depth"]),
            "memworker_in_flight": ("Jobs fetched by a worker, not acked", status["in_flight"]),
            "memworker_delayed": ("Jobs waiting for a retry", status["delayed"]),
            "memworker_dead_letters": ("Dead-lettered jobs", status["dead"]),
            "memworker_pending": ("Jobs enqueued and not committed or failed", status["pending_total"]),
            "memworker_live_workers": ("Worker processes with a fresh heartbeat", len(status["workers"])),
        }
        for name, (text, value) in values.items():
            family = GaugeMetricFamily(name, text, labels=["namespace"])
            family.add_metric([ns], float(value))
            yield family


def serve_metrics(settings: Settings, port: int, address: str = "0.0.0.0") -> Any:  # noqa: S104
    """Serve ``/metrics`` on ``port``: every worker process's samples (multiprocess
    mode) and the queue's gauges. Call it after ``PROMETHEUS_MULTIPROC_DIR`` is set.
    Returns the server (``shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(settings))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
