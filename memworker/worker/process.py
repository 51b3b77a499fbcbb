"""Running workers: :func:`run_worker` (``memworker worker``: processes, signals,
options) and :func:`running_worker` (a worker in this process's threads).

Each worker process warms up (:func:`warm_up`), builds its broker with
:func:`~memworker.worker.actors.make_broker`, checks its embedding model against the
store's and serves until SIGINT/SIGTERM. The inference thread's CPU priority
(``nice``) is :mod:`memworker.worker.priority`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import dramatiq

from memworker.crewai.flow import check_worker_dimension, check_worker_model
from memworker.errors import ConfigError, QueueError, shown
from memworker.metrics import flush_worker_metrics, worker_metrics
from memworker.tracing import setup_worker_tracing, shutdown_worker_tracing
from memworker.records import dimension_mismatch, record_types
from memworker.embedded import ensure_embedded
from memworker.queue.admin import ALLOW_EVICTION_ENV, eviction_allowed, eviction_risk
from memworker.settings import Settings
from memworker.worker.actors import make_broker
from memworker.worker.broker import WORKER_TIMEOUT_MS, MemworkerBroker
from memworker.worker.priority import Nice, check_nice
from memworker.worker.runtime import configure_process, freeze_heap, get_batcher
from memworker.worker_settings import (
    BROKER_ENV,
    read_backend,
    read_broker_options,
    read_inference_threads,
    read_llm,
    read_memory_factory,
    read_metrics_port,
)

__all__ = ["BROKER_ENV", "broker_options", "check_eviction", "run_worker", "running_worker", "warm_up"]

log = logging.getLogger("memworker.worker")

#: Most worker processes and threads per process of one ``run_worker``.
MAX_PROCESSES = 256
MAX_THREADS = 1024


@contextlib.contextmanager
def running_worker(
    settings: Settings | str | None = None,
    *,
    threads: int = 2,
    worker_timeout_ms: int = WORKER_TIMEOUT_MS,
    **options: Any,
) -> Iterator[tuple[MemworkerBroker, dramatiq.Worker]]:
    """A worker running in this process's threads for the duration of a ``with``
    (tests, notebooks, a single-process app); stopped and closed on exit.

    Args:
        settings: Where Valkey is.
        threads: Worker threads.
        worker_timeout_ms: Longest idle block (also bounds the time ``stop`` takes).
        **options: Passed to :func:`make_broker` (``max_retries``, ``min_backoff_ms``...).
    """
    check_eviction(Settings.resolve(settings))
    broker = make_broker(settings, **options)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=worker_timeout_ms)
    worker.start()
    try:
        yield broker, worker
    finally:
        worker.stop()
        flush_worker_metrics()  # what the last jobs recorded, before /metrics goes
        broker.close()
        if broker.context is not None:
            broker.context.close()
        shutdown_worker_tracing()  # flush the last spans


def check_eviction(settings: Settings) -> None:
    """Refuse to serve a server that may evict keys (:func:`~memworker.queue.admin.eviction_plan`):
    what it evicts is lost unnoticed. With ``MEMWORKER_ALLOW_EVICTION=1`` a warning
    instead; a server that does not say (``INFO`` denied by an ACL) is a warning too.

    Raises:
        ConfigError: The server may evict keys.
    """
    try:
        risk = eviction_risk(settings)
    except QueueError as exc:
        log.warning("could not read the Valkey server's maxmemory-policy (%s): it must be noeviction", exc)
        return
    if risk is None:
        return
    if eviction_allowed():
        log.warning("%s; serving anyway (%s is set)", risk, ALLOW_EVICTION_ENV)
        return
    raise ConfigError(f"{risk}; or set {ALLOW_EVICTION_ENV}=1 to run anyway")


def warm_up(*, flow: bool | None = None, freeze: bool = False) -> threading.Thread | None:
    """Load the embedding model (one batch through the process's batcher) before the
    first job. CrewAI's types take seconds to import and only flow jobs, reads and
    error paths use them: a worker that can run flow jobs (``flow``; by default,
    whether ``MEMWORKER_LLM`` or ``MEMWORKER_MEMORY_FACTORY`` is set) imports them in
    a background thread while it already serves (returned); any other worker imports
    them on first use. On 2 cores the import costs a fast-path backlog ~2.5 s of CPU
    (benchmarks/README.md). ``freeze``: the background import ends with
    :func:`~memworker.worker.runtime.freeze_heap` (its objects live as long as the
    process, as the model's do)."""
    if flow is None:
        flow = bool(read_llm() or read_memory_factory())

    def load_types() -> None:
        record_types()
        dimension_mismatch(1, 2)
        if freeze:
            freeze_heap()

    thread = None
    if flow:
        thread = threading.Thread(target=load_types, name="memworker-warm-up", daemon=True)
        thread.start()
    get_batcher().submit(["warm up"]).result()
    return thread


def broker_options(env: Any = None, **given: int | None) -> dict[str, int]:
    """``max_retries``, ``min_backoff_ms``, ``max_deliveries``, ``commit_step``: each
    the given value, else its environment variable, else the default (read by
    :func:`memworker.worker_settings.read_broker_options`).

    Raises:
        ConfigError: A value that is not an integer at or above its minimum.
    """
    return read_broker_options(env, **given)


def _serve(
    settings: Settings,
    threads: int,
    queues: Iterable[str] | None,
    processes: int,
    nice: Nice = 0,
    options: dict[str, Any] | None = None,
) -> int:
    """Run one worker process until SIGINT, SIGTERM or SIGHUP (a graceful stop; a
    second signal exits at once: the jobs it holds are redelivered)."""
    check_nice(nice)
    stop = threading.Event()
    started = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not started.is_set():  # loading the model: no job taken yet, stop now
            raise _StoppedEarly
        if stop.is_set():  # a second signal: a stuck model call must not hold the exit
            os._exit(128 + signum)
        stop.set()

    # From the start: a signal while the model loads stops before any job is taken.
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        return _serve_until(settings, threads, queues, processes, nice, options, stop, started)
    except _StoppedEarly:
        log.info("memworker worker %s stopped before it took a job", os.getpid())
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _StoppedEarly(BaseException):
    """A stop signal while the worker process starts (it holds no job yet)."""


def _serve_until(
    settings: Settings,
    threads: int,
    queues: Iterable[str] | None,
    processes: int,
    nice: Nice,
    options: dict[str, Any] | None,
    stop: threading.Event,
    started: threading.Event,
) -> int:
    # the inference thread lowers its own priority (get_batcher)
    configure_process(processes, nice)
    setup_worker_tracing()  # OpenTelemetry, when the OTEL_* variables ask for it
    warm_up(freeze=True)
    broker = make_broker(settings, **(options or {}))
    assert broker.context is not None  # set by make_broker
    try:
        model_id = check_worker_model(broker.context.store)  # the producers' query model, or ConfigError
        check_worker_dimension(broker.context.store)  # else every job it took would fail
    except BaseException:
        broker.close()
        broker.context.close()
        raise
    frozen = freeze_heap()  # the model, the broker, the imports: no full collection walks them
    metrics = worker_metrics()
    if metrics is not None:
        metrics.model.labels(model_id or "unknown", read_backend() or "torch").set(1)
    worker = dramatiq.Worker(
        broker,
        queues=set(queues) if queues else None,
        worker_threads=threads,
        worker_timeout=WORKER_TIMEOUT_MS,
    )
    started.set()  # from here a signal stops gracefully (the worker may hold jobs)
    worker.start()
    log.info(
        "memworker worker %s started (%d threads) on %s",
        os.getpid(),
        threads,
        settings.redacted_url(),
    )
    log.debug("%d objects frozen out of the garbage collector's sight", frozen)
    try:
        stop.wait()
    finally:
        worker.stop()
        flush_worker_metrics()  # what the last jobs recorded, before /metrics goes
        broker.close()
        if broker.context is not None:
            broker.context.close()
        shutdown_worker_tracing()  # flush the last spans
    return 0


#: Signals that stop a worker gracefully (the second one at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How often a worker process checks that its parent is alive (``--processes`` > 1).
PARENT_POLL_S = 1.0
#: ``--processes`` > 1: a worker process that dies on its own is replaced, unless
#: :data:`RESPAWN_LIMIT` in a row died within :data:`RESPAWN_UPTIME_S` of their start
#: (a crash loop: the worker then stops every process and exits 1).
RESPAWN_UPTIME_S = 10.0
RESPAWN_LIMIT = 3


def _child(
    settings: Settings,
    threads: int,
    queues: list[str] | None,
    processes: int,
    nice: Nice,
    options: dict[str, int] | None = None,
) -> None:
    _watch_parent()
    raise SystemExit(_serve(settings, threads, queues, processes, nice, options))


def _watch_parent() -> None:
    """Stop this child gracefully when its parent is gone (SIGKILLed: it cannot
    forward a signal), rather than serve on as an orphan nobody supervises."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="memworker-parent-watch", daemon=True).start()


def run_worker(
    settings: Settings | str | None = None,
    *,
    processes: int = 1,
    threads: int = 8,
    queues: Iterable[str] | None = None,
    nice: Nice = 0,
    max_retries: int | None = None,
    min_backoff_ms: int | None = None,
    max_deliveries: int | None = None,
    commit_step: int | None = None,
    inflight_records: int | None = None,
    inflight_bytes: int | None = None,
    commit_threads: int | None = None,
    metrics_port: int | None = None,
) -> int:
    """Run ``processes`` worker processes of ``threads`` threads until SIGINT/SIGTERM.

    ``nice`` lowers the CPU priority of the workers' inference (the embedding
    thread and the threads the model runs on: nearly all of a worker's CPU), so that
    on a machine shared with the agents background embedding yields the CPU to them.
    The job threads, which are short (commit, ack), keep their priority: the jobs of
    a finished batch commit while the next batch computes. An integer from 0 to 19 is
    a nice increment; ``"idle"`` is Linux's ``SCHED_IDLE`` policy (see
    :func:`lower_priority`), the strongest: a waking thread of normal priority
    preempts the inference at once.

    ``max_retries``, ``min_backoff_ms``, ``max_deliveries``, ``commit_step``,
    ``inflight_records``, ``inflight_bytes`` and ``commit_threads`` go to
    :func:`make_broker`; ``None``
    reads their ``MEMWORKER_*`` variable, else the default
    (:data:`memworker.worker_settings.BROKER_ENV`).

    ``metrics_port`` (else ``MEMWORKER_METRICS_PORT``; off by default) serves
    Prometheus ``/metrics`` for every process together (:mod:`memworker.metrics`).

    Each process builds its own broker from ``settings`` (spawned children, nothing
    inherited but the settings). Returns the exit code: 0, or the first non-zero
    exit code of a child.
    """
    for name, value, high in (("processes", processes, MAX_PROCESSES), ("threads", threads, MAX_THREADS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ConfigError(f"{name} must be an integer >= 1 and <= {high}, got {shown(value, 40)}")
    options = broker_options(
        max_retries=max_retries, min_backoff_ms=min_backoff_ms, max_deliveries=max_deliveries,
        commit_step=commit_step, inflight_records=inflight_records, inflight_bytes=inflight_bytes,
        commit_threads=commit_threads,
    )  # fmt: skip
    # Everything read from arguments and the environment is checked before the embedded
    # server is started or found (a refused worker leaves no server behind).
    port = read_metrics_port(metrics_port)
    read_backend()
    read_inference_threads()
    check_nice(nice)
    settings = Settings.resolve(settings)
    settings = ensure_embedded(settings)  # start/find the embedded server once, before the children
    qlist = list(queues) if queues else None
    check_eviction(settings)  # before any child loads a model
    with _metrics_server(settings, port):
        return _run(settings, threads, qlist, processes, nice, options)


@contextlib.contextmanager
def _metrics_server(settings: Settings, port: int | None) -> Iterator[None]:
    """Serve ``/metrics`` (multiprocess mode) while the worker runs, when ``port``."""
    if not port:
        yield
        return
    from memworker.metrics import MULTIPROC_ENV, serve_metrics

    address = os.environ.get("MEMWORKER_METRICS_ADDRESS") or "0.0.0.0"
    directory = tempfile.mkdtemp(prefix="memworker-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory  # before any process creates a metric
    server = None
    try:
        try:
            server = serve_metrics(settings, port, address)
        except ImportError as exc:
            raise ConfigError(
                "--metrics-port needs prometheus_client: pip install 'memworker[metrics]'"
            ) from exc
        except (OSError, UnicodeError) as exc:  # a taken port, an unknown host name
            raise ConfigError(
                f"--metrics-port {port} on MEMWORKER_METRICS_ADDRESS {shown(address)}: {exc}"
            ) from exc
        log.info("serving Prometheus metrics on %r port %d (/metrics)", address, port)
        yield
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def _run(
    settings: Settings,
    threads: int,
    qlist: list[str] | None,
    processes: int,
    nice: Nice,
    options: dict[str, int],
) -> int:
    if processes == 1:
        return _serve(settings, threads, qlist, 1, nice, options)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")

    def new_child() -> Any:
        child = ctx.Process(target=_child, args=(settings, threads, qlist, processes, nice, options))
        child.start()
        born[child] = time.monotonic()
        return child

    born: dict[Any, float] = {}
    children = [new_child() for _ in range(processes)]
    stop = threading.Event()

    def signal_children(signum: int) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    def forward(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: every child exits at once
            signal_children(signal.SIGKILL)
            os._exit(128 + signum)
        stop.set()
        signal_children(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        from multiprocessing.connection import wait

        running = list(children)
        code, quick = 0, 0
        while running:
            ended = wait([c.sentinel for c in running])
            for child in [c for c in running if c.sentinel in ended]:
                child.join()
                running.remove(child)
                if stop.is_set():
                    code = code or (child.exitcode or 0)
                    continue
                # A child died on its own (killed, out of memory): its jobs are
                # redelivered to the others; a new one takes its place, unless children
                # keep dying young (then all stop, for the supervisor to see a failure).
                quick = quick + 1 if time.monotonic() - born.pop(child) < RESPAWN_UPTIME_S else 0
                if quick >= RESPAWN_LIMIT:
                    log.error("worker process %s exited (code %s), the %d-th in a row within %g s "
                              "of its start: stopping", child.pid, child.exitcode, quick,
                              RESPAWN_UPTIME_S)  # fmt: skip
                    stop.set()
                    signal_children(signal.SIGTERM)
                    code = 1
                    continue
                log.error("worker process %s exited (code %s): starting another", child.pid, child.exitcode)
                replacement = new_child()
                children.append(replacement)
                running.append(replacement)
        return code if code >= 0 else 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
