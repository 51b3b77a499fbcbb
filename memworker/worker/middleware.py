"""The worker's dramatiq middleware: barrier accounting, the poison guard, job
isolation and the health beat.

Failures (middleware, not actors)
    :class:`ValidationError` (bad record, dimension mismatch, bad payload) is
    permanent: the actors declare it in ``throws``, so ``Retries`` fails the
    message at once. Other errors retry with backoff. When a message ends failed
    (permanent, retries exhausted, the poison guard, or an unknown actor), the
    ``before_nack`` hook of :class:`BarrierMiddleware` prepares its bookkeeping
    (remove the pending mark, record the failure, count, publish the wake-up) and
    :meth:`~memworker.worker.broker.WakeConsumer.nack` runs it in the same MULTI as
    dramatiq's dead-letter move (``<q>.XQ``, :data:`FAIL_SCRIPT`): a drain that
    reports the failure finds the dead letter. A job no longer pending (a duplicate
    of a job that committed or failed) records no second failure.

Poison guard
    ``ns:deliveries`` counts deliveries of each attempt (``<job>:<retries>``),
    incremented before processing; past ``max_deliveries`` the job is failed and
    dead-lettered (dramatiq does not count a SIGKILL/OOM as a retry).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from dramatiq.middleware import Middleware, SkipMessage

from memworker.metrics import flush_worker_metrics, worker_metrics
from memworker.tracing import TRACE_OPTION, extract
from memworker.queue.jobs import MAX_ERROR_CHARS, PoisonJobError, QueueKeys, cut_error, delivery_field, failure_json
from memworker.queue.payload import job_identity
from memworker.queue.admin import HEALTH_TTL_MS, WORKERS_READ, WORKERS_WINDOW_MS
from memworker.worker.clock import learn_offset
from memworker.settings import Settings
from memworker.worker._dramatiq_compat import message_exception
from memworker.worker.sweep import Sweeper
from memworker.worker.logs import ids_text, loggable_error
from memworker.worker.runtime import batcher_counts, heap_counts, searchable
from memworker.worker_settings import DEFAULT_MAX_DELIVERIES

__all__ = [
    "DEFAULT_MAX_DELIVERIES",
    "FAIL_SCRIPT",
    "HEALTH_INTERVAL_MS",
    "BarrierMiddleware",
    "HealthMiddleware",
    "Isolation",
    "current_delivery",
    "batch_counts",
    "failure_args",
]

log = logging.getLogger("memworker.worker")

#: Beats between two prunes of ``ns:workers`` (:meth:`HealthMiddleware.prune`).
PRUNE_EVERY = 30
#: Interval of the worker health key refresh (ms); the key lives HEALTH_TTL_MS.
HEALTH_INTERVAL_MS = 1_000

#: A failed message's bookkeeping, in the same MULTI as its dead-letter move (dispatch's
#: nack). KEYS: deliveries, stats[, pending, failed]; ARGV: delivery field, job id,
#: failure JSON, done channel. Without a producer it counts the failure; with one, the
#: failure is recorded only if the pending mark was still there (a duplicate delivery
#: of a job that committed or failed already records nothing: reported once).
FAIL_SCRIPT = """
if ARGV[1] ~= "" then redis.call("HDEL", KEYS[1], ARGV[1]) end
if #KEYS > 2 and redis.call("ZREM", KEYS[3], ARGV[2]) == 0 then return 0 end
redis.call("HINCRBY", KEYS[2], "failed", 1)
if #KEYS > 2 then
  redis.call("HSET", KEYS[4], ARGV[2], ARGV[3])
  redis.call("PUBLISH", ARGV[4], ARGV[2])
end
return 1
"""

#: The message a worker thread is processing: its delivery-counter field (set by
#: BarrierMiddleware before the actor runs), whether the job's commit cleared it and
#: the records it wrote (``WorkerContext.commit``).
current_delivery = threading.local()


def failure_args(
    keys: QueueKeys,
    field: str | None,
    job_id: str | None,
    producer: str | None,
    record_ids: list[str],
    error: str,
) -> list[Any]:
    """``EVAL FAIL_SCRIPT`` arguments (numkeys, keys, argv) of one failed message; an
    ``error`` longer than :data:`MAX_ERROR_CHARS` is cut (an embedder's error may quote
    a whole text: each failure record is kept until a drain reports it)."""
    error = cut_error(error)
    if producer is None or job_id is None:
        return [2, keys.deliveries, keys.stats, field or "", job_id or "", "", ""]
    pk = keys.producer(producer)
    return [
        4, keys.deliveries, keys.stats, pk.pending, pk.failed,
        field or "", job_id, failure_json(job_id, record_ids, error), pk.done_channel,
    ]  # fmt: skip


class Isolation:
    """A reader-writer gate over the jobs of one worker process: ordinary jobs run
    side by side (shared); a suspect job (redelivered after its process died) runs
    alone (exclusive). Waiting exclusive jobs go first, so they are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        #: Jobs that ran alone (for metrics and tests).
        self.exclusive_runs = 0

    def acquire(self, *, exclusive: bool) -> None:
        """Wait until the job may run."""
        with self._cond:
            if exclusive:
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                finally:
                    self._waiting -= 1
                self._exclusive = True
                self.exclusive_runs += 1
            else:
                self._cond.wait_for(lambda: not self._exclusive and self._waiting == 0)
                self._shared += 1

    def try_acquire_shared(self) -> bool:
        """Take a shared place if no job runs or waits to run alone (never blocks)."""
        with self._cond:
            if self._exclusive or self._waiting:
                return False
            self._shared += 1
            return True

    def release(self, *, exclusive: bool) -> None:
        """The job is done (or skipped)."""
        with self._cond:
            if exclusive:
                self._exclusive = False
            else:
                self._shared -= 1
            self._cond.notify_all()


class BarrierMiddleware(Middleware):
    """Barrier accounting and the poison guard.

    - before_process_message: count the delivery (``ns:deliveries``); past
      ``max_deliveries`` fail the message and skip it (-> dead letter).
    - after_process_message: clear the delivery counter of a
      message that succeeded or will be retried (runs after ``Retries``'s hook: it
      is added before ``Retries``, and dramatiq runs after hooks in reverse, so it
      sees whether the message will be retried). A job whose commit ran in its
      worker thread cleared it already, in the commit's atomic step (one round trip
      fewer per job).
    - before_nack: every message that ends failed passes here, whatever failed it
      (an exception with retries exhausted, a permanent error, the poison guard, or
      dramatiq's consumer thread for an unknown actor, which fails and nacks the
      message without any process/skip hook): its pending mark's removal, failure
      record and wake-up are prepared, once per message, and written by
      :meth:`WakeConsumer.nack` in the MULTI that dead-letters it.
    """

    def __init__(self, settings: Settings, *, max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> None:
        self.keys = QueueKeys(settings.namespace)
        self.max_deliveries = max_deliveries
        self.processed = 0
        self.failed = 0
        self.isolation = Isolation()

    def _field(self, message: Any) -> str:
        return delivery_field(message.message_id, int(message.options.get("retries", 0)))

    def before_process_message(self, broker: Any, message: Any) -> None:
        message.memworker_delivery = self._field(message)
        # A job delivered before without finishing was in a process that died. It
        # runs alone (no other job of this process in flight), so a job that kills
        # its worker no longer takes the jobs running beside it down with it, and
        # those, redelivered, run alone and succeed. The delivery is counted once
        # the job may run, so waiting for the lock never counts as a delivery.
        seen = broker.client.hget(self.keys.deliveries, message.memworker_delivery)
        message.memworker_exclusive = seen is not None and int(seen) >= 1
        self.isolation.acquire(exclusive=message.memworker_exclusive)
        message.memworker_locked = True
        n = broker.client.hincrby(self.keys.deliveries, message.memworker_delivery, 1)
        current_delivery.field, current_delivery.cleared = message.memworker_delivery, None
        current_delivery.trace = extract(message.options.get(TRACE_OPTION))  # the producer's span
        if n > self.max_deliveries:
            error = PoisonJobError(
                f"job {message.message_id} was delivered {n} times without finishing "
                f"(limit {self.max_deliveries}): it may crash its worker"
            )
            message.fail()
            message.memworker_error = error
            raise SkipMessage(str(error))

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """Stop the batched path before the consumers: its jobs not started are requeued."""
        batches = getattr(broker, "batches", None)
        if batches is not None:
            batches.close()

    def _unlock(self, message: Any) -> None:
        if getattr(message, "memworker_locked", False):
            message.memworker_locked = False
            self.isolation.release(exclusive=getattr(message, "memworker_exclusive", False))

    def after_skip_message(self, broker: Any, message: Any) -> None:
        current_delivery.field = current_delivery.cleared = None
        self._unlock(message)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._unlock(message)
        cleared = getattr(current_delivery, "cleared", None)
        records = getattr(current_delivery, "records", 0)
        current_delivery.field = current_delivery.cleared = None
        current_delivery.records = 0
        metrics = worker_metrics()
        if exception is None:
            self.processed += 1
            searchable.add(message.message_timestamp)
            if metrics is not None:
                metrics.committed(
                    self.keys.namespace, records,
                    message.message_timestamp, int(message.options.get("retries", 0)) + 1,
                )  # fmt: skip
        elif message.failed:
            message.memworker_error = exception
            return  # recorded by before_nack
        elif metrics is not None:
            metrics.jobs.labels(self.keys.namespace, "retried").inc()
        field = getattr(message, "memworker_delivery", None) or self._field(message)
        if exception is None and cleared == field:
            return  # the job's commit cleared it, in the same atomic step
        # Done, or Retries re-enqueued it: the next attempt counts on its own field.
        broker.client.hdel(self.keys.deliveries, field)

    def before_nack(self, broker: Any, message: Any) -> None:
        if getattr(message, "memworker_recorded", False):
            return  # dramatiq retries a nack after a connection error: record once
        field = getattr(message, "memworker_delivery", None) or self._field(message)
        error = getattr(message, "memworker_error", None) or message_exception(message)
        self._record_failure(broker, message, error, field)
        message.memworker_recorded = True

    def _record_failure(self, broker: Any, message: Any, exception: Any, field: str) -> None:
        self.failed += 1
        metrics = worker_metrics()
        if metrics is not None:
            outcome = "poisoned" if isinstance(exception, PoisonJobError) else "failed"
            metrics.jobs.labels(self.keys.namespace, outcome).inc()
        job_id, producer, record_ids = job_identity(message.args)
        job_id = job_id or message.message_id
        error = f"{type(exception).__name__}: {exception}" if exception is not None else "failed"
        # Written by WakeConsumer.nack, in the MULTI that dead-letters the message.
        message.memworker_failure = failure_args(
            self.keys, field, job_id, producer, record_ids, error
        )
        log.warning(
            "job %s (records %s) failed for good: %s",
            job_id,
            ids_text(record_ids),
            "failed" if exception is None else loggable_error(exception),
        )


def batch_counts(broker: Any) -> dict[str, int]:
    """The batched path's counters for the health record: jobs it committed, the
    script calls they took (their ratio is the jobs per commit), jobs it handed to a
    worker thread."""
    batches = getattr(broker, "batches", None)
    if batches is None:
        return {}
    counts = batches.counts
    return {
        "batched_jobs": counts.committed,
        "batched_commits": counts.calls,
        "batched_handed_back": counts.handed_back,
    }


class HealthMiddleware(Middleware):
    """Writes ``ns:workers:<id>`` (pid, host, started, processed, failed; TTL
    ``HEALTH_TTL_MS``) and ``ns:workers`` (id -> last beat) every ``HEALTH_INTERVAL_MS``."""

    def __init__(self, settings: Settings, barrier: BarrierMiddleware) -> None:
        self.keys = QueueKeys(settings.namespace)
        self.barrier = barrier
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started = int(time.time() * 1000)
        self._beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def learn_clock(self, broker: Any, level: int = logging.DEBUG) -> None:
        """Read the server's clock (the namespace's node), for what other hosts compare.
        A failure keeps the last offset (0 until one is learnt), logged at ``level``:
        the beat still goes."""
        try:
            learn_offset(broker.client, self.keys.workers)
        except Exception:  # noqa: BLE001 - e.g. a user without TIME; the next beat tries again
            log.log(level, "could not read the server's clock (TIME); using the last offset", exc_info=True)

    def beat(self, broker: Any) -> None:
        k = self.keys
        self.learn_clock(broker)
        now = int(time.time() * 1000)
        with broker.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                k.worker(self.worker_id),
                mapping={
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started_ms": self.started,
                    "beat_ms": now,
                    "processed": self.barrier.processed,
                    "failed": self.barrier.failed,
                    **batcher_counts(),
                    **heap_counts(),
                    **batch_counts(broker),
                    **searchable.counts(),
                },
            )
            pipe.pexpire(k.worker(self.worker_id), HEALTH_TTL_MS)
            pipe.zadd(k.workers, {self.worker_id: now})
            # entries of workers gone for a day (by this host's clock: a host whose clock
            # is ahead must not drop live workers); the others: see prune()
            pipe.zremrangebyscore(k.workers, 0, now - WORKERS_WINDOW_MS)
            pipe.execute()
        self._beats += 1
        if self._beats % PRUNE_EVERY == 0:
            self.prune(broker)

    def prune(self, broker: Any) -> None:
        """Drop from ``ns:workers`` the workers whose health key expired (by the
        server's clock): readers then look up only live ones and the recently gone."""
        k = self.keys
        ids = broker.client.zrange(k.workers, 0, WORKERS_READ - 1)
        if not ids:
            return
        with broker.client.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                name = worker_id if isinstance(worker_id, str) else worker_id.decode("utf-8", "replace")
                pipe.exists(k.worker(name))  # (an id memworker did not write: gone)
            alive = pipe.execute()
        gone = [worker_id for worker_id, n in zip(ids, alive) if not n]
        if gone:
            broker.client.zrem(k.workers, *gone)

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        # before dramatiq adds its consumers: their first fetches run the dispatch
        # script's maintenance, which compares other workers' heartbeats with the
        # server's clock as this worker knows it
        self.learn_clock(broker, logging.WARNING)

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        try:
            self.beat(broker)
        except Exception:  # the server full or away: the loop beats again (it must start)
            log.warning("worker health beat failed", exc_info=True)
        context = getattr(broker, "context", None)
        sweeper = None
        if context is not None:  # the expiry and retention sweep (memworker.worker.sweep)
            sweeper = Sweeper(context.store, broker.client, self.keys.namespace, self.worker_id)

        def loop() -> None:
            while not self._stop.wait(HEALTH_INTERVAL_MS / 1000):
                try:
                    self.beat(broker)
                except Exception:
                    log.warning("worker health beat failed", exc_info=True)
                flush_worker_metrics()  # the metrics the jobs recorded in memory
                if sweeper is not None:
                    try:
                        sweeper.maybe_sweep()
                    except Exception:
                        log.warning("sweep failed", exc_info=True)

        self._thread = threading.Thread(target=loop, name="memworker-health", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with broker.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.worker(self.worker_id))
                pipe.zrem(self.keys.workers, self.worker_id)
                pipe.execute()
        except Exception:
            log.warning("could not remove the worker health key", exc_info=True)

