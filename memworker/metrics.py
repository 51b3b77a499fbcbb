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

import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from memworker.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "MULTIPROC_ENV",
    "ProducerMetrics",
    "QueueCollector",
    "WorkerMetrics",
    "flush_worker_metrics",
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
    """The worker's metrics (one set per process; multiprocess mode merges them).

    The hot path records into this process's memory, not into prometheus_client: in
    multiprocess mode each increment is an mmap write under a process-wide lock with a
    ``getpid()`` check (~1.5-2 us), several per job. The counts, sums and bucket counts
    accumulate here and :meth:`flush` writes each one that moved as one increment: the
    health beat flushes every second (``HEALTH_INTERVAL_MS``) and the process flushes
    once more as it stops, so a scrape lags the work by at most a beat. The samples
    served are the same as with direct writes."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._lock = threading.Lock()
        self._pending: list[_Buffered] = []  # every buffered child, flushed in order
        self.jobs = _BufferedMetric(
            Counter("memworker_jobs", "Jobs by outcome", ["namespace", "outcome"]), self
        )
        self.records = _BufferedMetric(
            Counter("memworker_records_committed", "Records written", ["namespace"]), self
        )
        self.batch_texts = _BufferedMetric(
            Histogram("memworker_embed_batch_texts", "Texts per inference", buckets=_TEXTS), self
        ).labels()
        self.inference = _BufferedMetric(
            Histogram("memworker_inference_seconds", "Model time per batch", buckets=_SECONDS), self
        ).labels()
        self.commit = _BufferedMetric(Histogram(
            "memworker_commit_seconds", "One commit step", ["namespace"], buckets=_SECONDS
        ), self)  # fmt: skip
        self.searchable = _BufferedMetric(Histogram(
            "memworker_enqueue_to_searchable_seconds",
            "From a job's enqueue to its commit",
            ["namespace"],
            buckets=_SEARCHABLE,
        ), self)  # fmt: skip
        self.attempts = _BufferedMetric(Histogram(
            "memworker_job_attempts", "Deliveries a committed job took", ["namespace"],
            buckets=_ATTEMPTS,
        ), self)  # fmt: skip
        self.model = Gauge(
            "memworker_model_info", "The model the workers embed with", ["model", "backend"],
            multiprocess_mode="max",
        )  # fmt: skip
        self._by_namespace: dict[str, tuple[_Buffered, _Buffered, _Buffered, _Buffered]] = {}

    def committed(self, namespace: str, records: int, enqueued_ms: float, attempts: int) -> None:
        """One job committed: its records, time to searchable, attempts."""
        self.committed_many(namespace, records, [enqueued_ms], attempts)

    def committed_many(
        self, namespace: str, records: int, enqueued_ms: list[float], attempts: int = 1
    ) -> None:
        """Jobs committed together (a batched commit): their count, records, times to
        searchable (from each job's enqueue time, ms) and attempts."""
        jobs, recs, searchable, tries = self._children(namespace)
        now = time.time()
        with self._lock:
            jobs.add(len(enqueued_ms))
            recs.add(records)
            for stamp in enqueued_ms:
                if stamp > 0:
                    searchable.add(max(0.0, now - stamp / 1000))
                tries.add(attempts)

    def flush(self) -> None:
        """Write what accumulated since the last flush into prometheus_client's values
        (one increment per moved count, sum and bucket)."""
        with self._lock:
            moved = [(child, child.take()) for child in self._pending if child.moved]
        for child, taken in moved:
            child.write(taken)

    def _children(self, namespace: str) -> tuple[_Buffered, _Buffered, _Buffered, _Buffered]:
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


class _BufferedMetric:
    """A prometheus_client counter or histogram whose ``labels(...)`` children record
    into the process's memory (:class:`_Buffered`) until :meth:`WorkerMetrics.flush`.
    The children are kept: prometheus_client's ``labels`` makes a tuple of strings and
    takes the metric's lock on every call (~2 us)."""

    def __init__(self, metric: Any, owner: WorkerMetrics) -> None:
        self._metric = metric
        self._owner = owner
        self._kept: dict[tuple[str, ...], _Buffered] = {}

    def labels(self, *values: str) -> _Buffered:
        child = self._kept.get(values)
        if child is None:
            with self._owner._lock:
                child = self._kept.get(values)
                if child is None:
                    real = self._metric.labels(*values) if values else self._metric
                    child = self._kept[values] = _Buffered(real, self._owner._lock)
                    self._owner._pending.append(child)
        return child


class _Buffered:
    """One child of a counter (``inc``) or a histogram (``observe``), accumulated in
    memory: a count (counter) or a sum and per-bucket counts (histogram). ``inc`` and
    ``observe`` take the owner's lock; :meth:`add` is for callers that hold it. A
    prometheus_client histogram without the fields the bucket writes need
    (``_upper_bounds``, ``_buckets``, ``_sum``) keeps its observations and gets
    ``observe`` for each at the flush."""

    def __init__(self, real: Any, lock: threading.Lock) -> None:
        self._real = real
        self._lock = lock
        self._histogram = hasattr(real, "observe")
        bounds = getattr(real, "_upper_bounds", None)
        buckets = getattr(real, "_buckets", None)
        exact = bounds is not None and buckets is not None and hasattr(real, "_sum")
        self._bounds: list[float] | None = list(bounds) if exact and bounds is not None else None
        if self._bounds is not None and len(self._bounds) != len(buckets or ()):
            self._bounds = None
        self._sum = 0.0
        self._counts = [0] * len(self._bounds) if self._bounds is not None else []
        self._values: list[float] = []  # a histogram without bucket fields
        self.moved = False

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self.add(amount)

    def observe(self, value: float) -> None:
        with self._lock:
            self.add(value)

    def add(self, value: float) -> None:
        """A counter's increment or a histogram's observation (the lock held)."""
        if not self._histogram:
            self._sum += value
        elif self._bounds is None:
            self._values.append(value)
        elif value == value:  # NaN falls in no bucket, as with observe()
            self._sum += value
            # the first bound >= value: observe()'s bucket (the last bound is +Inf)
            self._counts[bisect_left(self._bounds, value)] += 1
        self.moved = True

    def take(self) -> tuple[float, list[int], list[float]]:
        """The accumulated values, reset (the lock held)."""
        taken = (self._sum, self._counts, self._values)
        self._sum, self._counts, self._values = 0.0, [0] * len(self._counts), []
        self.moved = False
        return taken

    def write(self, taken: tuple[float, list[int], list[float]]) -> None:
        """Write taken values: a counter's one increment; a histogram's sum and each
        moved bucket, one increment each (the samples ``observe`` per value gives)."""
        total, counts, values = taken
        if not self._histogram:
            if total:
                self._real.inc(total)
            return
        for value in values:
            self._real.observe(value)
        if any(counts):
            self._real._sum.inc(total)
            for i, n in enumerate(counts):
                if n:
                    self._real._buckets[i].inc(n)


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


def flush_worker_metrics() -> None:
    """Flush this process's worker metrics (:meth:`WorkerMetrics.flush`), if on."""
    if _worker is not None:
        _worker.flush()


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
    """The queue's gauges, read from Valkey at each scrape (one status read), over a
    client made at the first scrape and kept (a scrape opens no connection)."""

    def __init__(self, settings: Settings) -> None:
        from memworker.io.plan import QUEUE_ERRORS
        from memworker.io.redispy import RedisSyncDriver

        self.settings = settings
        self._driver = RedisSyncDriver(settings, QUEUE_ERRORS)

    def close(self) -> None:
        """Close the client (a later scrape makes a new one)."""
        self._driver.close()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from memworker.queue.admin import status_plan

        ns = self.settings.namespace
        try:
            status = self._driver.run(status_plan(ns))
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


#: Scrapes ``serve_metrics`` serves at once; a connection past them is closed at once.
METRICS_CONNECTIONS = 16
#: Seconds a scrape's connection may last (and stay silent) before it is dropped.
METRICS_IDLE_S = 10.0


def _hang_up(connection: Any) -> None:
    """End a connection from another thread (its handler's read returns)."""
    import socket

    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def serve_metrics(settings: Settings, port: int, address: str = "0.0.0.0") -> Any:  # noqa: S104
    """Serve ``/metrics`` on ``port``: every worker process's samples (multiprocess
    mode) and the queue's gauges. Call it after ``PROMETHEUS_MULTIPROC_DIR`` is set.
    Returns the server (``shutdown()`` stops it, ``server_close()`` frees the port).

    A thread per scrape, as prometheus_client's own server, but at most
    :data:`METRICS_CONNECTIONS` at once and none held past :data:`METRICS_IDLE_S`:
    its server kept a thread for every connection, for as long as the peer kept it
    open, so anyone who could reach the port could use up the worker process's
    threads."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    class Handler(WSGIRequestHandler):
        timeout = METRICS_IDLE_S  # the socket's: a silent peer is dropped

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):  # busy: closed, no thread
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            # METRICS_IDLE_S in all: a peer that trickles bytes is never silent long
            # enough for the socket's timeout, and would hold its slot for good
            deadline = threading.Timer(METRICS_IDLE_S, _hang_up, (request,))
            deadline.daemon = True
            deadline.start()
            try:
                super().process_request_thread(request, client_address)
            finally:
                deadline.cancel()
                self.slots.release()

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("a /metrics connection ended in an error (a timeout, a hang-up)")

    family, _, _, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family  # an IPv6 address too
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(settings))
    server = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server, handler_class=Handler)
    threading.Thread(target=server.serve_forever, name="memworker-metrics", daemon=True).start()
    return server
