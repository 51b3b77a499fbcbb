"""The batched path: many jobs per fetch, per inference batch, per commit and per ack.

A worker process's :class:`JobBatches` takes, from each fetch of its consumer
(:class:`~memworker.worker.broker.WakeConsumer`), the jobs that need no worker thread:
save jobs and fast-path encode jobs (every field given, consolidation off), on their
first delivery. It holds at most ``inflight_records`` records and ``inflight_bytes``
message bytes at once; the consumer fetches as many messages as that leaves room for,
not as many as there are threads.

- **Embed across jobs**: each job's texts go to the process's batcher as one request,
  so the batcher's batches are filled by the backlog, and a job whose own texts make
  the model raise fails alone.
- **Commit many**: whole jobs, up to ``commit_step`` records together, in ONE script
  call each
  (:meth:`~memworker.store.ValkeyStore.write_jobs`): every job's records, results,
  pending-mark removal, commit marker, counters and wake-up, each only while that job
  is pending, and
- **Ack many**: in that same atomic step, the acks of all of them (dramatiq's acks
  set and message bodies, :func:`~memworker.worker._dramatiq_compat.ack_commands`) and
  their delivery counters. A commit and its ack cannot be separated by a crash.

Everything else goes the per-message way (a dramatiq worker thread with the
middleware, retries and the poison guard): jobs of more than ``commit_step`` records
(they fill inference batches on their own, and worker threads commit their steps side
by side, where one commit thread would serialize them), flow jobs, malformed payloads, a job
delivered before (a suspect: it runs alone there), a retry, and every job of this path whose
embedding, validation or commit raises (handed back to that path, which fails or
retries it as it does any job). While a suspect job waits to run alone, this path
takes no new jobs (:class:`~memworker.worker.middleware.Isolation`).

Commit lanes: ``commit_threads`` threads commit side by side, each on its own
connection (one script call in flight per connection: while the server runs one
lane's call, the next lane prepares and sends its own). Each fetch's take goes whole
to the least loaded lane. Jobs that write one record id still commit in the order
they were fetched, as with one lane: a lane commits its takes in order, and a job
whose ids an earlier job of another lane writes waits for that job before its commit
(the lane first flushes what it holds, and waits only for jobs fetched earlier: no
cycle).
A job handed back commits later, on the per-message path: the jobs of this path that
write one of its ids from then on stamp those records with their enqueue time (the
record's ``upd``), and the handed-back job's late commit leaves a record stamped later
than its own enqueue as it is: the later enqueue still wins.

Graceful stop (:meth:`JobBatches.close`): jobs whose embedding has not started are
requeued at once; the others are committed before the worker exits.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from dataclasses import field as _field
from typing import TYPE_CHECKING, Any

import numpy as np

from memworker.metrics import worker_metrics
from memworker.tracing import TRACE_OPTION, extract, job_span
from memworker.tracing import enabled as tracing_enabled
from memworker.queue.jobs import (
    ENCODE_ACTOR,
    MARKER_TTL_MS,
    SAVE_ACTOR,
    QueueKeys,
    delivery_field,
    needs_flow,
)
from memworker.queue.payload import encode_job_rows, parse_job, records_from_save_job
from memworker.store.codec import Row, to_rows, with_vectors
from memworker.store.store import JobWrite
from memworker.worker import _dramatiq_compat as compat
from memworker.worker.clock import server_now_ms
from memworker.worker.dedup import batch_duplicates, dedup_results, fast_path_dedup_threshold
from memworker.worker.runtime import get_batcher, searchable

if TYPE_CHECKING:
    from dramatiq.message import Message

    from memworker.worker.broker import MemworkerBroker
    from memworker.worker.middleware import Isolation

__all__ = ["FETCH_MAX", "JobBatches", "commit_commands"]

log = logging.getLogger("memworker.worker")

#: Most messages taken by one fetch (dramatiq's dispatch script unpacks them at once).
FETCH_MAX = 512

#: Marks each delivery field that was unset (a first delivery), in one round trip.
_FIRST_DELIVERIES = """
local out = {}
for i, f in ipairs(ARGV) do out[i] = redis.call("HSETNX", KEYS[1], f, 1) end
return out
"""


def commit_commands(
    keys: QueueKeys, producer: str, job_id: str, records: int, now: int
) -> list[list[str]]:
    """What a job's commit does besides its records, in the same atomic step: remove
    its pending mark, add its commit marker (markers older than ``MARKER_TTL_MS``
    trimmed, and the set itself expires that long after its last commit: a producer
    that is gone leaves nothing behind), count it, and wake its producer's drain."""
    pk = keys.producer(producer)
    return [
        ["ZREM", pk.pending, job_id],
        ["ZADD", pk.committed, str(now), job_id],
        ["ZREMRANGEBYSCORE", pk.committed, "-inf", str(now - MARKER_TTL_MS)],
        ["PEXPIRE", pk.committed, str(MARKER_TTL_MS)],
        ["HINCRBY", keys.stats, "committed", "1"],
        ["HINCRBY", keys.stats, "records", str(records)],
        ["PUBLISH", pk.done_channel, job_id],
    ]


@dataclass(eq=False)
class _Job:
    """A job taken by the batched path, from fetch to ack."""

    message: Message[Any]
    redis_id: str
    job_id: str
    producer: str
    items: list[dict[str, Any]]
    field: str
    size: int
    encode: bool
    future: Future[np.ndarray] | None = None
    requeued: bool = False
    submitted_ns: int = 0  # when its texts went to the batcher (its embed span)
    ids: tuple[str, ...] = ()  # the record ids it writes
    #: An encode job's rows, validated and built at fetch, without their vectors.
    rows: list[Row] | None = None
    lane: int = 0
    after: list[_Job] = _field(default_factory=list)  # commit only once these finished
    #: Set when the job finished; made (under the lock, in ``_route``) only for a job
    #: that a later job of another lane waits on.
    finished: threading.Event | None = None
    gone: bool = False  # finished (set under the lock)


#: Record ids of handed-back jobs remembered per worker process (the newest): a job
#: handed back commits within its retries' backoff (at most minutes), long before this
#: many other ids are handed back after it.
HANDED_IDS = 65_536


@dataclass(eq=False)
class _Lane:
    """A commit thread, its work queue, its store (own connection) and its load."""

    store: Any
    work: queue.SimpleQueue[list[_Job] | None]
    thread: threading.Thread | None = None
    jobs: int = 0  # routed to it, not finished
    committed: int = 0  # jobs it committed
    owned: bool = False  # its store was made for it (closed with the path)


@dataclass
class BatchCounts:
    """Counters of a :class:`JobBatches` (for the health record and benchmarks)."""

    fetched: int = 0
    committed: int = 0
    duplicates: int = 0
    calls: int = 0
    handed_back: int = 0
    requeued: int = 0
    waited: int = 0  # jobs that waited for a job of another lane writing one of their ids


class JobBatches:
    """The batched path of one worker process, for one queue (see the module doc).

    Args:
        broker: The process's broker (its client, keys, held ids).
        store: The store the commits go to (one client for the process).
        queue_name: The queue whose jobs it takes (not its delay queue).
        isolation: The process's gate: this path pauses while a suspect job runs alone.
        inflight_records: Most records held at once (0: the path is off).
        inflight_bytes: Most message bytes held at once.
        commit_step: Most records of one atomic step (0: no limit).
        on_commit: Called with the number of jobs each commit committed.
        commit_threads: Commit threads (lanes), each on its own store.
        store_factory: Makes the store of each lane after the first (``store`` is the
            first's); ``None``: every lane uses ``store``.
    """

    def __init__(
        self,
        broker: MemworkerBroker,
        store: Any,
        queue_name: str,
        isolation: Isolation,
        *,
        inflight_records: int,
        inflight_bytes: int,
        commit_step: int,
        on_commit: Callable[[int], None] = lambda n: None,
        commit_threads: int = 1,
        store_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.keys: QueueKeys = broker.keys
        self.queue_name = queue_name
        self.isolation = isolation
        self.max_records = inflight_records
        self.max_bytes = inflight_bytes
        self.step = commit_step or 1 << 30
        self.on_commit = on_commit
        self.counts = BatchCounts()
        #: Set by the consumer: wakes it when room frees up or a job is handed back.
        self.wake: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._records = 0
        self._bytes = 0
        self._held: set[_Job] = set()
        self._closed = False
        self._handed: deque[Message[Any]] = deque()
        self._threads = max(1, commit_threads)
        self._store_factory = store_factory
        self._lanes: list[_Lane] = []
        #: record id -> the last routed job that writes it, until that job finished
        self._writers: dict[str, _Job] = {}
        #: ids of jobs handed back (the newest :data:`HANDED_IDS`): a job writing one
        #: stamps its records with its enqueue time (see the module doc)
        self._handed_ids: dict[str, None] = {}

    # ------------------------------------------------------------------ consumer side
    def room(self) -> int:
        """How many messages the consumer may fetch for this path now."""
        with self._lock:
            if self._closed or self.max_records <= 0 or self._bytes >= self.max_bytes:
                return 0
            return max(0, min(self.max_records - self._records, FETCH_MAX))

    def handed_back(self) -> list[Message[Any]]:
        """Messages this path gave up (to run the per-message way), oldest first."""
        out: list[Message[Any]] = []
        while self._handed:
            out.append(self._handed.popleft())
        return out

    def offer(self, messages: list[tuple[Message[Any], int]]) -> list[Message[Any]]:
        """Take the jobs this path can run from a fetch's decoded messages (each with
        its encoded size); return the others, in order, for the per-message path."""
        rest: list[Message[Any]] = []
        candidates: list[_Job] = []
        for message, size in messages:
            job = self._candidate(message, size)
            if job is None:
                rest.append(message)
            else:
                candidates.append(job)
        if not candidates:
            return rest
        if not self.isolation.try_acquire_shared():
            return rest + [job.message for job in candidates]  # a suspect waits to run alone
        try:
            firsts = self.broker.client.eval(
                _FIRST_DELIVERIES, 1, self.keys.deliveries, *[j.field for j in candidates]
            )
        except Exception:  # noqa: BLE001 - e.g. the connection dropped: they run one by one
            # (their delivery marks may be set: they then run alone, as suspects)
            log.warning("the batched path could not take %d job(s)", len(candidates), exc_info=True)
            self.isolation.release(exclusive=False)
            return rest + [job.message for job in candidates]
        taken = [job for job, first in zip(candidates, firsts) if int(first) == 1]
        rest += [job.message for job, first in zip(candidates, firsts) if int(first) != 1]
        if not taken:
            self.isolation.release(exclusive=False)
            return rest
        try:
            batcher = get_batcher()
            encode = [job for job in taken if job.encode]
            if encode:
                texts = [[item["content"] for item in job.items] for job in encode]
                many = getattr(batcher, "submit_many", None)  # one wake-up for the fetch
                submitted = time.time_ns()
                futures = many(texts) if many else [batcher.submit(t) for t in texts]
                for job, future in zip(encode, futures):
                    job.submitted_ns, job.future = submitted, future
        except Exception:  # noqa: BLE001 - e.g. the batcher closed: they run one by one
            log.warning("the batched path could not take %d job(s)", len(taken), exc_info=True)
            return rest + self._give_back(taken)
        with self._lock:
            if not self._closed:
                self._records += sum(len(job.items) for job in taken)
                self._bytes += sum(job.size for job in taken)
                self._held.update(taken)
                self.counts.fetched += len(taken)
                self._start()
                self._route(taken)
                return rest
        return rest + self._give_back(taken)  # closed meanwhile

    def _give_back(self, taken: list[_Job]) -> list[Message[Any]]:
        """Undo a take that did not complete: cancel the embeddings, clear the delivery
        marks, leave the isolation gate; the messages, for the per-message path."""
        for job in taken:
            if job.future is not None:
                job.future.cancel()
        self._forget_deliveries(taken)
        self.isolation.release(exclusive=False)
        return [job.message for job in taken]

    def _candidate(self, message: Message[Any], size: int) -> _Job | None:
        """The message as a job of this path, or ``None`` (per-message path)."""
        options = message.options
        if message.queue_name != self.queue_name or options.get("eta") or options.get("retries"):
            return None  # delayed, or a retry: it failed once, it runs on its own
        if message.actor_name not in (ENCODE_ACTOR, SAVE_ACTOR) or len(message.args) != 1:
            return None
        rows = None
        try:
            job_id, producer, items = parse_job(message.args[0])
            encode = message.actor_name == ENCODE_ACTOR
            if not items or len(items) > min(self.step, self.max_records):
                return None  # a large job fills a batch alone; worker threads commit it in steps
            if encode:
                if any(needs_flow(item.get("flow")) for item in items):
                    return None
                if not all(isinstance(i.get("content"), str) and i["content"] for i in items):
                    return None  # the per-message path names the bad item
                rows = encode_job_rows(items)  # last: the jobs that stay here, built once
        except Exception:  # noqa: BLE001 - the per-message path fails it, naming why
            return None
        return _Job(
            message=message,
            redis_id=message.options[compat.REDIS_ID_OPTION],
            job_id=job_id,
            producer=producer,
            items=items,
            field=delivery_field(message.message_id, 0),
            size=size,
            encode=encode,
            ids=tuple(item["id"] for item in items if isinstance(item.get("id"), str)),
            rows=rows,
        )

    # ------------------------------------------------------------------ committer
    def _start(self) -> None:
        """Start the commit lanes (under the lock, on the first take)."""
        if self._lanes:
            return
        for n in range(self._threads):
            lane = _Lane(self.store, queue.SimpleQueue())
            if n and self._store_factory is not None:
                lane.store, lane.owned = self._store_factory(), True
            name = "memworker-commit" if n == 0 else f"memworker-commit-{n}"
            lane.thread = threading.Thread(target=self._run, args=(lane,), name=name, daemon=True)
            lane.thread.start()
            self._lanes.append(lane)

    def _route(self, jobs: list[_Job]) -> None:
        """Send a take to the least loaded lane (under the lock; see the module doc)."""
        lane = min(range(len(self._lanes)), key=lambda i: self._lanes[i].jobs)
        for job in jobs:
            job.lane = lane
            earlier = {id(e): e for e in (self._writers.get(i) for i in job.ids) if e is not None}
            job.after = [e for e in earlier.values() if e.lane != lane]
            for e in job.after:
                if e.finished is None:
                    e.finished = threading.Event()
            for i in job.ids:
                self._writers[i] = job
        self._lanes[lane].jobs += len(jobs)
        self._lanes[lane].work.put(jobs)

    def _run(self, lane: _Lane) -> None:
        while True:
            group = lane.work.get()
            if group is None:
                return
            try:
                self._commit_group(group, lane)
            except Exception:  # noqa: BLE001 - never lose the thread; hand the rest back
                log.exception("batched commit failed; the jobs run one by one")
                with self._lock:
                    left = [job for job in group if job in self._held]
                self._hand_back(left)
            finally:
                self._finish(group)
                self.isolation.release(exclusive=False)

    def lane_commits(self) -> list[int]:
        """Jobs committed by each commit lane, in lane order."""
        with self._lock:
            return [lane.committed for lane in self._lanes]

    def _finish(self, jobs: list[_Job]) -> None:
        """The jobs left their lane (committed, handed back or requeued): later jobs
        writing their ids need not wait for them."""
        with self._lock:
            jobs = [job for job in jobs if not job.gone]
            for job in jobs:
                job.gone = True
                self._lanes[job.lane].jobs -= 1
                for i in job.ids:
                    if self._writers.get(i) is job:
                        del self._writers[i]
            # A job gone from the writers gets no new waiter: its event, if any, is made.
            events = [job.finished for job in jobs if job.finished is not None]
        for event in events:
            event.set()

    def _commit_group(self, group: list[_Job], lane: _Lane) -> None:
        call: list[tuple[_Job, JobWrite]] = []
        ids: set[str] = set()
        count = 0
        dim = 0  # the vector dimension of the call: one per script call
        for job in group:
            if job.requeued:
                self._finish([job])
                continue
            if job.after and not all(e.finished is not None and e.finished.is_set() for e in job.after):
                if call:  # what this lane holds is fetched earlier: others may wait on it
                    self._flush(call, lane)
                    call, ids, count, dim = [], set(), 0, 0
                for earlier in job.after:
                    if earlier.finished is not None:  # made in _route, before job.after
                        earlier.finished.wait()
                with self._lock:
                    self.counts.waited += 1
            if call and job.future is not None and not job.future.done():
                self._flush(call, lane)  # do not keep ready jobs waiting on the model
                call, ids, count, dim = [], set(), 0, 0
            write = self._prepare(job)
            if write is None:
                self._finish([job])
                continue
            job_ids = {row.id for row in write.rows}
            dims = {row.dim for row in write.rows if row.dim}
            clash = bool(dim and dims and dims != {dim})
            if call and (count + len(write.rows) > self.step or ids & job_ids or clash):
                self._flush(call, lane)
                call, ids, count, dim = [], set(), 0, 0
            dim = dim or (dims.pop() if dims else 0)
            call.append((job, write))
            ids |= job_ids
            count += len(write.rows)
        if call:
            self._flush(call, lane)

    def _prepare(self, job: _Job) -> JobWrite | None:
        """The job's validated rows and commit commands; ``None`` if it was handed back."""
        try:
            extra: list[list[str]] = []
            if job.future is not None:
                vectors = job.future.result()
                if tracing_enabled():
                    job_span(
                        "memworker.embed", extract(job.message.options.get(TRACE_OPTION)),
                        self._span_attributes(job, len(job.items)), job.submitted_ns,
                        time.time_ns(),
                    )  # fmt: skip
                threshold = fast_path_dedup_threshold(job.items)
                dropped = batch_duplicates(vectors, threshold)
                built = job.rows or []  # built in _candidate (none: a mismatch, handed back)
                if dropped:
                    gone = set(dropped)
                    kept = [i for i in range(len(built)) if i not in gone]
                    rows = with_vectors([built[i] for i in kept], [vectors[i] for i in kept])
                else:
                    rows = with_vectors(built, vectors)
                results = dedup_results(self.keys.namespace, job.job_id, job.items, dropped)
                extra = [list(c) for c in results]
            else:
                rows = to_rows(records_from_save_job(job.items))
        except Exception:  # noqa: BLE001 - the per-message path fails or retries it
            self._hand_back([job])
            return None
        # the commit marker: by the server's clock, as every worker's (trimmed by age)
        commands = extra + commit_commands(self.keys, job.producer, job.job_id, len(rows), server_now_ms())
        with self._lock:
            stamp = bool(self._handed_ids) and any(i in self._handed_ids for i in job.ids)
        return JobWrite(rows, self.keys.producer(job.producer).pending, job.job_id, commands, stamp)

    def _flush(self, call: list[tuple[_Job, JobWrite]], lane: _Lane) -> None:
        jobs = [job for job, _ in call]
        tail = [
            ["HDEL", self.keys.deliveries, *[job.field for job in jobs]],
            *compat.ack_commands(
                self.broker.namespace, self.broker.broker_id, self.queue_name,
                [job.redis_id for job in jobs],
            ),
        ]  # fmt: skip
        started, started_ns = time.perf_counter(), time.time_ns()
        try:
            _, skipped = lane.store.write_jobs([write for _, write in call], tail)
        except Exception:  # noqa: BLE001 - each job then fails or retries on its own
            log.warning(
                "a batched commit of %d job(s) failed; they run one by one",
                len(jobs),
                exc_info=True,
            )
            self._hand_back(jobs)
            self._finish(jobs)
            return
        self._finish(jobs)
        committed = len(jobs) - len(skipped)
        gone = set(skipped)
        ended_ns = time.time_ns()
        for n, (job, _) in enumerate(call):
            if n not in gone:
                searchable.add(job.message.message_timestamp)
        for n, (job, write) in enumerate(call) if tracing_enabled() else ():
            attributes = self._span_attributes(job, len(write.rows))
            attributes["memworker.outcome"] = "duplicate" if n in gone else "committed"
            attributes["memworker.batched_jobs"] = len(call)
            parent = extract(job.message.options.get(TRACE_OPTION))
            job_span("memworker.commit", parent, attributes, started_ns, ended_ns)
        metrics = worker_metrics()
        if metrics is not None:
            ns = self.keys.namespace
            metrics.commit.labels(ns).observe(time.perf_counter() - started)
            done = [(job, write) for n, (job, write) in enumerate(call) if n not in gone]
            metrics.committed_many(
                ns, sum(len(w.rows) for _, w in done),
                [job.message.message_timestamp for job, _ in done],
            )  # fmt: skip
        with self._lock:
            self.counts.calls += 1
            self.counts.committed += committed
            lane.committed += committed
            self.counts.duplicates += len(skipped)
        self._done(jobs)
        self.on_commit(committed)

    def _span_attributes(self, job: _Job, records: int) -> dict[str, Any]:
        """A job's span attributes (ids and counts, never contents)."""
        return {
            "memworker.namespace": self.keys.namespace,
            "memworker.job_id": job.job_id,
            "memworker.records": records,
        }

    def _unhold(self, jobs: list[_Job]) -> None:
        """Take jobs out of the in-flight count (called under the lock)."""
        for job in jobs:
            if job in self._held:
                self._held.discard(job)
                self._records -= len(job.items)
                self._bytes -= job.size

    def _done(self, jobs: list[_Job]) -> None:
        """Forget jobs that left this path (acked or requeued)."""
        with self._lock:
            self._unhold(jobs)
        for job in jobs:
            self.broker.release(job.redis_id)
        self.wake()

    def _forget_deliveries(self, jobs: list[_Job]) -> None:
        """Clear the jobs' delivery marks, so the path they go to counts a first delivery."""
        try:
            self.broker.client.hdel(self.keys.deliveries, *[job.field for job in jobs])
        except Exception:  # noqa: BLE001 - they then run as suspects: alone, still correct
            log.warning("could not clear %d delivery mark(s)", len(jobs), exc_info=True)

    def _hand_back(self, jobs: list[_Job]) -> None:
        """Give jobs to the per-message path (still held: the consumer caches them)."""
        if not jobs:
            return
        self._forget_deliveries(jobs)
        with self._lock:
            self.counts.handed_back += len(jobs)
            self._unhold(jobs)
            for job in jobs:
                for i in job.ids:
                    self._handed_ids.pop(i, None)  # re-inserted as the newest
                    self._handed_ids[i] = None
            while len(self._handed_ids) > HANDED_IDS:
                del self._handed_ids[next(iter(self._handed_ids))]
        self._handed.extend(job.message for job in jobs)
        self.wake()

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; requeue those whose embedding has not started; commit the
        others (waiting up to ``timeout`` seconds)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = [job for job in self._held if job.future is not None and job.future.cancel()]
        if waiting:
            for job in waiting:
                job.requeued = True
            self._forget_deliveries(waiting)
            if self._requeue([job.redis_id for job in waiting]):
                with self._lock:
                    self.counts.requeued += len(waiting)
            self._done(waiting)
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.work.put(None)
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
            if lane.owned and not (lane.thread is not None and lane.thread.is_alive()):
                try:
                    lane.store.close()
                except Exception:  # noqa: BLE001 - closing at exit: nothing left to do
                    log.debug("could not close a commit lane's store", exc_info=True)
        # Handed back while stopping: the consumer may be gone; put them back on the queue.
        left = [m.options[compat.REDIS_ID_OPTION] for m in self.handed_back()]
        if left:
            self._requeue(left)
            for redis_id in left:
                self.broker.release(redis_id)

    def _requeue(self, redis_ids: list[str]) -> bool:
        """Put fetched messages back on the queue, a wake-up token each; False if that
        failed (a peer's maintenance requeues them once this process is gone)."""
        try:
            compat.requeue(self.broker, self.queue_name, *redis_ids)
            wake = self.broker.keys.wake(self.queue_name)
            self.broker.client.rpush(wake, *(["1"] * len(redis_ids)))
        except Exception:  # noqa: BLE001
            log.warning("could not requeue %d fetched job(s)", len(redis_ids), exc_info=True)
            return False
        return True
