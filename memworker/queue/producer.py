"""Producer side: :class:`MemoryQueue`, the enqueue faces (sync and async), and
the drain, pending and status calls it forwards to :mod:`memworker.queue.drain` and
:mod:`memworker.queue.admin`.

Enqueue never embeds and never waits on a worker: input is validated whole, then
the dramatiq message (exactly what ``RedisBroker.enqueue`` writes: ``HSET
<q>.msgs id payload`` + ``RPUSH <q> id``), a wake-up token for idle consumers and
this producer's pending mark are written in ONE atomic script call
(``memworker/lua/queue.lua``). There is no moment at which a job is queued but not
pending, or pending but not queued.

Both faces run through redis-py drivers (:mod:`memworker.io.redispy`; redis-py is
the client dramatiq itself uses), each created once on first use: a transient
connection failure is retried with backoff like the store's, and no redis-py
exception leaves a call (server errors are :class:`~memworker.errors.QueueError`, an
unreachable server a :class:`~memworker.errors.QueueConnectionLostError`).
Key layout: :class:`memworker.keys.QueueKeys`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from typing_extensions import Self

from memworker.errors import DrainTimeout, ValidationError
from memworker.io.plan import QUEUE_ERRORS, Call, Plan, Script, one
from memworker.io.redispy import RedisAsyncDriver, RedisSyncDriver
from memworker.keys import DEFAULT_QUEUE, QueueKeys, result_key
from memworker.metrics import producer_metrics
from memworker.tracing import enabled as tracing_enabled
from memworker.tracing import inject, span
from memworker.queue.admin import as_text, eviction_plan, id_text, now_ms, shown_text, status_plan
from memworker.queue.drain import LateClaims, RecentJobs, drain_async, drain_sync, p_replicated, replica_timeout_ms
from memworker.queue.group import AsyncGroupCommit, GroupCommit
from memworker.queue.jobs import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_JOB_BYTES,
    ENCODE_ACTOR,
    SAVE_ACTOR,
    DrainReport,
    build_message,
    check_built_items,
    check_count,
    check_job_id,
    check_job_ids,
    check_producer_id,
    embed_items,
    save_items,
    uuid4_texts,
)
from memworker.settings import Settings
from memworker.store.validate import MAX_ID_LENGTH

__all__ = ["MemoryQueue", "default_producer_id", "enqueue_head", "enqueue_step", "merge_enqueues"]

log = logging.getLogger("memworker.queue")


def default_producer_id() -> str:
    """``<host>-<pid>-<random>``, restricted to the characters a key part may hold."""
    host = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def enqueue_step(
    keys: QueueKeys,
    producer: str,
    job_id: str,
    redis_id: str,
    data: bytes,
    queue: str = DEFAULT_QUEUE,
) -> Script:
    """One enqueue: ``queue.lua``'s five writes (the message, its id on the queue, a
    wake-up token, the pending mark, the producer's entry), atomic, one round trip."""
    return Script("queue", [*enqueue_head(keys, producer, queue), redis_id, data, str(now_ms()), job_id])


def enqueue_head(keys: QueueKeys, producer: str, queue: str = DEFAULT_QUEUE) -> list[str]:
    """The arguments of ``queue.lua``'s ``enqueue`` before its jobs' own: the op, the
    queue's keys, the producer's pending mark and entry, the producer."""
    pending = keys.producer(producer).pending
    return ["enqueue", keys.msgs(queue), keys.q(queue), keys.wake(queue), pending, keys.producers, producer]


#: Arguments of an ``enqueue`` step before its job's own four (op, keys, producer).
_ENQUEUE_HEAD = 7
#: Most jobs, and bytes of messages, in one enqueue call of several jobs (a job over
#: the byte bound still goes, alone).
ENQUEUE_GROUP_JOBS = 32
ENQUEUE_GROUP_BYTES = 1 << 20


def merge_enqueues(steps: Sequence[Script]) -> list[tuple[Script, int]]:
    """Enqueue steps of one producer as few calls as the bounds allow: ``(call, jobs)``
    in order; each job is still its own (``queue.lua`` takes several)."""
    calls: list[tuple[Script, int]] = []
    args: list[Any] = []
    jobs = size = 0
    for step in steps:
        head, tail = step.args[:_ENQUEUE_HEAD], step.args[_ENQUEUE_HEAD:]
        weight = len(tail[1])
        if jobs and (head != args[:_ENQUEUE_HEAD] or jobs == ENQUEUE_GROUP_JOBS
                     or size + weight > ENQUEUE_GROUP_BYTES):  # fmt: skip
            calls.append((Script(step.name, args), jobs))
            args, jobs, size = [], 0, 0
        if not jobs:
            args = list(head)
        args += tail
        jobs += 1
        size += weight
    if jobs:
        calls.append((Script(steps[-1].name, args), jobs))
    return calls


def _no_note(job_id: str, records: int) -> None:
    """The span note of an enqueue when tracing is off."""


class MemoryQueue:
    """Enqueue memory writes for workers, and wait for them (the drain barrier).

    Args:
        url: ``valkey://``/``redis://`` URL, a :class:`Settings`, or ``None`` for
            ``VALKEY_URL`` > ``REDIS_URL`` > the embedded server.
        namespace: Key prefix (default: the settings', else ``MEMWORKER_NAMESPACE``,
            else ``memworker``).
        producer_id: Identity of this producer (its pending set, failures and
            wake-up channel); ``None``: ``<host>-<pid>-<random>`` (``""`` is refused),
            made again in a child process forked with the queue.
        max_job_bytes: Largest encoded job accepted.
        max_items: Most records or texts in one job.
        metrics: Record Prometheus metrics of this producer in the process's default
            registry (``memworker_enqueue_seconds``, ``memworker_drain_wait_seconds``,
            ``memworker_drain_timeouts_total``; :mod:`memworker.metrics`); ``None``
            reads ``MEMWORKER_PRODUCER_METRICS`` (``1``/``true``). Needs the
            ``metrics`` extra.

    Nothing connects until the first call; one client per face, reused. Threads may
    share one queue: enqueues made while another is in flight go out together in the
    next script call (:func:`merge_enqueues`), each still its own job.
    """

    def __init__(
        self,
        url: str | Settings | None = None,
        *,
        namespace: str | None = None,
        producer_id: str | None = None,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        max_items: int = DEFAULT_MAX_ITEMS,
        metrics: bool | None = None,
    ) -> None:
        self.settings = Settings.resolve(url, namespace=namespace)
        if metrics is None:
            metrics = os.environ.get("MEMWORKER_PRODUCER_METRICS", "").lower() in ("1", "true", "yes")
        self._metrics = producer_metrics() if metrics else None
        self.keys = QueueKeys(self.settings.namespace)
        # Only None means "not given": "" (an unset variable) is refused, not made a
        # random id whose drains would wait on nobody's jobs and report success.
        self._id = check_producer_id(default_producer_id() if producer_id is None else producer_id)
        # A default id is this process's: a child forked with the queue makes its own
        # (else its drains would wait for, and consume, the parent's reports).
        self._id_pid = None if producer_id is not None else os.getpid()
        for name, value, low in (("max_job_bytes", max_job_bytes, 1024), ("max_items", max_items, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                # never the value's repr: True passed as 1, a huge int's repr fails
                raise ValidationError(f"{name} must be an integer >= {low}")
        self.max_job_bytes = max_job_bytes
        self.max_items = max_items
        self._id_head = enqueue_head(self.keys, self._id)
        self._policy_read = False  # the server's maxmemory-policy: read on the first enqueue
        self._driver = RedisSyncDriver(self.settings, QUEUE_ERRORS)
        #: What drains cancelled during their claim consumed, for the next drain.
        self._late = LateClaims()
        #: The jobs enqueued since the last drain, which it looks for (found nowhere: lost).
        self._recent = RecentJobs()
        self._adriver = RedisAsyncDriver(self.settings, QUEUE_ERRORS)
        # Enqueues of concurrent threads share script calls (each its own job).
        self._sends: GroupCommit[BaseException | None] = GroupCommit(
            self._send_enqueues, ENQUEUE_GROUP_JOBS
        )
        # ... and so do those of concurrent tasks of one event loop.
        self._asends: AsyncGroupCommit[BaseException | None] = AsyncGroupCommit(
            self._asend_enqueues, ENQUEUE_GROUP_JOBS
        )

    @property
    def producer_id(self) -> str:
        """This producer's identity (its pending set, failures and done channel)."""
        if self._id_pid is not None and self._id_pid != os.getpid():
            self._id, self._id_pid = default_producer_id(), os.getpid()
            self._id_head = enqueue_head(self.keys, self._id)
            self._recent.clear()  # the parent's jobs, not this producer's
        return self._id

    @property
    def _head(self) -> list[str]:
        """The enqueue script's leading arguments (:func:`enqueue_head`) for this producer."""
        self.producer_id  # noqa: B018 - a forked child's own id first
        return self._id_head

    def __repr__(self) -> str:
        return (
            f"MemoryQueue({self.settings.redacted_url()!r}, namespace={self.keys.namespace!r}, "
            f"producer_id={self.producer_id!r})"
        )

    # ------------------------------------------------------------------ clients
    def _send_or_tell(self, step: Script, on_failed_send: Callable[[str], None] | None) -> None:
        """:meth:`_enqueue`; when its send fails, ``on_failed_send(job_id)`` before the
        error goes on: the job may be in Valkey (the reply lost), so a caller that
        waits for its jobs by id can still wait for it (committed, or reported lost)."""
        try:
            self._enqueue(step)
        except Exception:
            if on_failed_send is not None:
                on_failed_send(step.args[-1])
            raise

    def _enqueue(self, step: Script) -> None:
        """Run one enqueue's script, retrying a transient failure (with the enqueues
        other threads made meanwhile, in one call: :meth:`_send_enqueues`).

        Safe to retry: the script is all-or-nothing and the job and message ids were
        chosen before the first attempt, so every attempt writes the same keys. An
        attempt whose call reached the server but whose reply was lost makes the
        retry enqueue the job a second time (the message id twice in the list,
        the same message and pending mark rewritten). Delivery is at-least-once and
        the commit is idempotent: a copy delivered after the job committed finds no
        pending mark and writes nothing; if a worker committed the first copy before
        the retried EXEC, the retry restores the message and the mark, and the job
        runs again like a redelivery (same record ids; a record updated since keeps
        the update) and the producer's drain waits for it.

        Raises:
            QueueConnectionLostError: The server did not answer after every retry.
            QueueError: The server refused the transaction.
            ReplicationTimeout: ``MEMWORKER_COMMIT_REPLICAS`` replicas did not confirm
                the job in time (it is queued on the primary).
        """
        if self._metrics is None:
            error = self._sends.submit(step)
        else:
            with self._timed("enqueue"):
                error = self._sends.submit(step)
        if error is not None:
            raise error
        self._recent.add(step.args[-1])

    def _send_enqueues(self, steps: list[Script]) -> list[BaseException | None]:
        """Send the enqueues of concurrent callers (:class:`GroupCommit`), as few
        script calls as :func:`merge_enqueues` makes; each caller gets the error of
        the call that carried its job, or ``None``."""
        out: list[BaseException | None] = []
        for call, jobs in merge_enqueues(steps):
            try:
                self._driver.run(self._p_enqueue(call))
            except Exception as exc:  # noqa: BLE001 - raised in the thread of each of its callers
                out += [exc] * jobs
            else:
                out += [None] * jobs
        return out

    async def _aenqueue(self, step: Script) -> None:
        """Async :meth:`_enqueue` (the enqueues of concurrent tasks share script calls)."""
        with self._timed("enqueue"):
            error = await self._asends.submit(step)
        if error is not None:
            raise error
        self._recent.add(step.args[-1])

    async def _asend_enqueues(self, steps: list[Script]) -> list[BaseException | None]:
        """Async :meth:`_send_enqueues`."""
        out: list[BaseException | None] = []
        for call, jobs in merge_enqueues(steps):
            try:
                await self._adriver.run(self._p_enqueue(call))
            except Exception as exc:  # noqa: BLE001 - raised in the task of each of its callers
                out += [exc] * jobs
            else:
                out += [None] * jobs
        return out

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        """Observe the block's seconds in the producer's ``what`` histogram (``enqueue``
        or ``drain_wait``) and count drain timeouts, when metrics are on."""
        if self._metrics is None:
            yield
            return
        ns = self.keys.namespace
        started = time.perf_counter()
        try:
            yield
        except DrainTimeout:
            self._metrics.drain_timeouts.labels(ns).inc()
            raise
        finally:
            histogram = self._metrics.enqueue if what == "enqueue" else self._metrics.drain_wait
            histogram.labels(ns).observe(time.perf_counter() - started)

    def _p_enqueue(self, step: Script) -> Plan[None]:
        """The enqueue's script, then (``MEMWORKER_COMMIT_REPLICAS``) the wait until
        enough replicas have it. The queue's first enqueue first reads the server's
        memory policy and logs a warning when it may evict keys (once a queue: the
        workers refuse such a server; an agent should not fail on it)."""
        if not self._policy_read:
            self._policy_read = True
            try:
                risk = yield from eviction_plan()
            except Exception:  # noqa: BLE001 - INFO denied, or the server away (the enqueue says so)
                risk = None
            if risk is not None:
                log.warning("namespace %r: %s", self.keys.namespace, risk)
        yield step
        timeout_ms = replica_timeout_ms(self.settings.request_timeout_ms)
        yield from p_replicated(self.keys, self.settings.commit_replicas, timeout_ms, "enqueue")

    # ------------------------------------------------------------------ core
    def _prepare_save(self, records: Sequence[Any]) -> tuple[str, Script]:
        items = save_items(records, self.max_items)
        return self._prepare(SAVE_ACTOR, items)

    def _prepare_encode(self, items: Sequence[Any]) -> tuple[str, list[str], Script]:
        job_items = embed_items(items, self.max_items)
        job_id, step = self._prepare(ENCODE_ACTOR, job_items)
        return job_id, [i["id"] for i in job_items], step

    @contextlib.contextmanager
    def _traced(self, actor: str) -> Iterator[Callable[[str, int], None]]:
        """The ``memworker.enqueue`` span of one enqueue (:mod:`memworker.tracing`),
        current while the message is built (its context goes into the message) and
        sent; yields a function that names the job and its record count on it."""
        if not tracing_enabled():  # no SDK: no span to name (skips its set-up per job)
            yield _no_note
            return
        attributes = {"memworker.namespace": self.keys.namespace, "memworker.actor": actor}
        with span("memworker.enqueue", attributes) as current:

            def note(job_id: str, records: int) -> None:
                if current is not None:
                    current.set_attribute("memworker.job_id", job_id)
                    current.set_attribute("memworker.records", records)

            yield note

    def _prepare(self, actor: str, items: list[dict[str, Any]]) -> tuple[str, Script]:
        job_id, redis_id = uuid4_texts(2)
        data = build_message(
            actor, job_id, self.producer_id, items, self.max_job_bytes, trace=inject(),
            redis_id=redis_id,
        )[1]
        return job_id, Script("queue", [*self._head, redis_id, data, str(now_ms()), job_id])

    # ------------------------------------------------------------------ sync face
    def enqueue_save(self, records: Sequence[Any]) -> str:
        """Enqueue records that already carry their embeddings (or none: ``None``,
        ``[]`` or a zero vector is stored without one and never searched, as
        ``ValkeyStore.save`` does); returns the job id.

        Raises:
            ValidationError: A bad record, too many records, or a job over
                ``max_job_bytes``; nothing is enqueued.
        """
        with self._traced(SAVE_ACTOR) as note:
            job_id, step = self._prepare_save(records)
            note(job_id, len(records))
            self._enqueue(step)
        return job_id

    def enqueue_encode(self, items: Sequence[Any]) -> list[str]:
        """Enqueue texts for the workers to embed and save; returns their record ids.

        Args:
            items: ``str`` or mappings with ``text`` and optional ``id``, ``scope``,
                ``categories``, ``metadata``, ``importance``, ``source``, ``private``,
                ``created_at``, ``flow`` (absent: the default; ``None`` also means the
                default for every field but ``importance``, a number from 0 to 1, and
                ``private``, a real boolean; see :func:`memworker.queue.jobs.embed_items`).

        Raises:
            ValidationError: An empty text, a bad field, more than ``max_items``
                items, or a job over ``max_job_bytes``; nothing is enqueued.
        """
        return self.enqueue_encode_job(items)[1]

    def enqueue_encode_job(
        self, items: Sequence[Any], *, on_failed_send: Callable[[str], None] | None = None
    ) -> tuple[str, list[str]]:
        """:meth:`enqueue_encode` that also returns the job id: ``(job_id, record_ids)``.

        The job id is what :meth:`drain` (``job_ids=``), ``DrainReport.failed`` and
        the producer's ``done`` channel speak of. ``on_failed_send(job_id)`` runs when
        the send fails (the server lost, full): the job may still be in Valkey.
        """
        with self._traced(ENCODE_ACTOR) as note:
            job_id, ids, step = self._prepare_encode(items)
            note(job_id, len(ids))
            self._send_or_tell(step, on_failed_send)
        return job_id, ids

    def enqueue_encode_jobs(
        self,
        chunks: Sequence[Sequence[Any]],
        on_enqueued: Callable[[str, list[str]], None] | None = None,
        on_failed_send: Callable[[str], None] | None = None,
    ) -> list[tuple[str, list[str]]]:
        """Several encode jobs (one per chunk, as :meth:`enqueue_encode_job`), every
        one built and checked before the first is sent; returns ``(job_id,
        record_ids)`` per chunk. They are sent in order, one after another:
        ``on_enqueued(job_id, record_ids)`` runs as each is in Valkey, so a caller
        whose later send failed (the server lost) still knows which jobs went, and
        ``on_failed_send(job_id)`` for the job whose send failed (it may be in Valkey
        all the same: its reply lost; the jobs after it are not sent). Each
        job's ``memworker.enqueue`` span covers its build (its context is in the
        message); the sends follow.

        Raises:
            ValidationError: A bad item, or a chunk over ``max_items`` or
                ``max_job_bytes``; nothing is enqueued.
        """
        prepared = []
        for chunk in chunks:
            with self._traced(ENCODE_ACTOR) as note:
                job_id, ids, step = self._prepare_encode(chunk)
                note(job_id, len(ids))
            prepared.append((job_id, ids, step))
        out: list[tuple[str, list[str]]] = []
        for job_id, ids, step in prepared:
            self._send_or_tell(step, on_failed_send)
            out.append((job_id, ids))
            if on_enqueued is not None:
                on_enqueued(job_id, ids)
        return out

    def enqueue_encode_items(
        self, job_items: Sequence[dict[str, Any]], *, on_failed_send: Callable[[str], None] | None = None
    ) -> str:
        """Enqueue items already validated by :func:`memworker.queue.jobs.embed_items` (each
        carries its record id), e.g. gathered from several callers into one job;
        returns the job id. Only the count, each item's ``id`` (present, distinct) and
        ``private`` (a real boolean) are checked again here; the workers check the
        rest before any work, and fail the job naming the field. ``on_failed_send``:
        as :meth:`enqueue_encode_job`'s.

        Raises:
            ValidationError: More than ``max_items`` items, an item without a valid
                distinct ``id`` or with a ``private`` that is not a boolean, or a job
                over ``max_job_bytes``; nothing is enqueued.
        """
        check_built_items(job_items, self.max_items)
        with self._traced(ENCODE_ACTOR) as note:
            job_id, step = self._prepare(ENCODE_ACTOR, list(job_items))
            note(job_id, len(job_items))
            self._send_or_tell(step, on_failed_send)
        return job_id

    def drain(
        self, timeout: float | None = None, *, job_ids: Sequence[str] | None = None, consume: bool = True
    ) -> DrainReport:
        """Wait until every job this producer has enqueued so far is committed or failed.

        Args:
            timeout: Seconds; ``None`` waits for ever.
            job_ids: Wait for these jobs of this producer instead of a snapshot of
                the pending set (e.g. ids from :meth:`enqueue_save` or :meth:`pending`);
                an id no longer pending counts as committed only if its commit
                marker exists (kept :data:`~memworker.queue.jobs.MARKER_TTL_MS`, 1 h),
                as failed if a failure is recorded, is skipped if an earlier drain
                reported it, and is reported lost otherwise. An id given twice counts once.
            consume: ``False`` observes: report what the drain finds and consume
                nothing, so this producer's own drain still reports it (``memworker
                drain --producer``). ``True``: each job is reported once, by the first
                drain of this producer to find it.

        Returns:
            Jobs committed (of those waited for); failed jobs: every unreported
            failure of this producer, including jobs that failed between drains, plus
            lost jobs (also listed in ``lost``). Each job is reported once.

        Raises:
            DrainTimeout: Naming the stuck jobs and the likely cause.
        """
        given = None if job_ids is None else {self.producer_id: check_job_ids(job_ids)}
        recent = self._take_recent(consume)
        try:
            with self._timed("drain_wait"):
                report = drain_sync(
                    self._driver, self.keys, [self.producer_id], timeout, given=given,
                    owner=self._owner(consume), also=self._also(recent, given),
                )  # fmt: skip
        except BaseException:
            self._recent.put_back(recent)
            raise
        return self._with_late(report) if consume else report

    def _take_recent(self, consume: bool) -> dict[str, float]:
        """The jobs enqueued since the last drain, for a drain that consumes (an
        observer leaves them); a forked child's own id first (it has none of them)."""
        self.producer_id  # noqa: B018
        return self._recent.take() if consume else {}

    def _also(self, recent: dict[str, float], given: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        """What a drain looks for besides its snapshot: the jobs enqueued since the
        last drain (none when it waits for given ids: those it had are forgotten)."""
        if given is not None:
            waited = set(given[self.producer_id])
            self._recent.put_back({i: t for i, t in recent.items() if i not in waited})
            return None
        return {self.producer_id: list(recent)} if recent else None

    def _owner(self, consume: bool) -> str | None:
        return self.producer_id if consume else None

    def _with_late(self, report: DrainReport) -> DrainReport:
        """``report`` plus the reports an earlier drain claimed but never returned
        (cancelled during its claim, :func:`~memworker.queue.drain.drain_async`)."""
        late = self._late.take()
        if not late:
            return report
        reports = [report, *late]
        return DrainReport(
            committed=sum(r.committed for r in reports),
            failed=[f for r in reports for f in r.failed],
            lost=[i for r in reports for i in r.lost],
        )


    def drain_all(self, timeout: float | None = None, *, consume: bool = True) -> DrainReport:
        """Namespace-wide drain (every producer's jobs): for shutdown and reset.
        Failures of other producers are reported but left for them to consume;
        ``consume=False`` leaves this producer's too (an observer, as
        ``memworker drain --all`` is)."""
        raw = self._driver.run(one(Call(["SMEMBERS", self.keys.producers])))
        producers = sorted(p for p in map(id_text, raw) if p is not None)
        recent = self._take_recent(consume)
        try:
            report = drain_sync(
                self._driver, self.keys, producers, timeout, owner=self._owner(consume),
                also=self._also(recent, None),
            )  # fmt: skip
        except BaseException:
            self._recent.put_back(recent)
            raise
        return self._with_late(report) if consume else report

    def pending(self) -> list[str]:
        """Ids of this producer's jobs not yet committed or failed."""
        pending = Call(["ZRANGE", self.keys.producer(self.producer_id).pending, "0", "-1"])
        return [i for i in map(id_text, self._driver.run(one(pending))) if i is not None]

    def job_result(self, job_id: str, item_id: str) -> str | None:
        """What an item of an encode job became, as the worker recorded it in
        ``ns:results:<job>`` (kept :data:`~memworker.queue.jobs.RESULT_TTL_MS`): the id of
        the record it was merged into, ``""`` when it was dropped as a duplicate, ``None``
        when nothing is recorded (the item became the record of its own id).

        Raises:
            ValidationError: ``job_id`` not a job id as producers make them (1 to 128
                ASCII letters, digits, ``_``, ``-``, ``.``), or ``item_id`` not a string
                of 1 to :data:`~memworker.store.validate.MAX_ID_LENGTH` characters.
        """
        key = result_key(self.keys.namespace, check_job_id(job_id))
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ID_LENGTH:
            raise ValidationError(
                "item_id must be a record id: a non-empty string of at most "
                f"{MAX_ID_LENGTH} characters"
            )
        raw = self._driver.run(one(Call(["HGET", key, item_id])))
        # a record id, or whatever else was written there: never a decode error
        return None if raw is None else shown_text(raw)

    def status(self) -> dict[str, Any]:
        """:func:`~memworker.queue.admin.queue_status` plus this producer's pending count."""
        out = self._driver.run(status_plan(self.settings.namespace))
        out["producer"] = {
            "id": self.producer_id,
            "pending": out["pending"].get(self.producer_id, 0),
        }
        return out

    def close(self) -> None:
        """Close the sync client (the async one is closed by :meth:`aclose`; those of
        event loops that are closed already are dropped here)."""
        self._driver.close()
        self._adriver.forget_closed_loops()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async face
    async def aenqueue_save(self, records: Sequence[Any]) -> str:
        """Async :meth:`enqueue_save`."""
        with self._traced(SAVE_ACTOR) as note:
            job_id, step = self._prepare_save(records)
            note(job_id, len(records))
            await self._aenqueue(step)
        return job_id

    async def aenqueue_encode(self, items: Sequence[Any]) -> list[str]:
        """Async :meth:`enqueue_encode`."""
        return (await self.aenqueue_encode_job(items))[1]

    async def aenqueue_encode_job(self, items: Sequence[Any]) -> tuple[str, list[str]]:
        """Async :meth:`enqueue_encode_job`."""
        with self._traced(ENCODE_ACTOR) as note:
            job_id, ids, step = self._prepare_encode(items)
            note(job_id, len(ids))
            await self._aenqueue(step)
        return job_id, ids

    async def aenqueue_encode_items(self, job_items: Sequence[dict[str, Any]]) -> str:
        """Async :meth:`enqueue_encode_items`."""
        check_built_items(job_items, self.max_items)
        with self._traced(ENCODE_ACTOR) as note:
            job_id, step = self._prepare(ENCODE_ACTOR, list(job_items))
            note(job_id, len(job_items))
            await self._aenqueue(step)
        return job_id

    async def adrain(
        self, timeout: float | None = None, *, job_ids: Sequence[str] | None = None, consume: bool = True
    ) -> DrainReport:
        """Async :meth:`drain`."""
        given = None if job_ids is None else {self.producer_id: check_job_ids(job_ids)}
        recent = self._take_recent(consume)
        try:
            with self._timed("drain_wait"):
                report = await drain_async(
                    self._adriver, self.keys, [self.producer_id], timeout, given=given,
                    owner=self._owner(consume), late=self._late, also=self._also(recent, given),
                )  # fmt: skip
        except BaseException:
            self._recent.put_back(recent)
            raise
        if consume:
            await self._late.settle()
            return self._with_late(report)
        return report

    async def adrain_all(self, timeout: float | None = None, *, consume: bool = True) -> DrainReport:
        """Async :meth:`drain_all`."""
        raw = await self._adriver.run(one(Call(["SMEMBERS", self.keys.producers])))
        producers = sorted(p for p in map(id_text, raw) if p is not None)
        recent = self._take_recent(consume)
        try:
            report = await drain_async(
                self._adriver, self.keys, producers, timeout, owner=self._owner(consume), late=self._late,
                also=self._also(recent, None),
            )  # fmt: skip
        except BaseException:
            self._recent.put_back(recent)
            raise
        if consume:
            await self._late.settle()
            return self._with_late(report)
        return report

    async def astatus(self) -> dict[str, Any]:
        """Async :meth:`status`."""
        out = await self._adriver.run(status_plan(self.settings.namespace))
        out["producer"] = {
            "id": self.producer_id,
            "pending": out["pending"].get(self.producer_id, 0),
        }
        return out

    async def apending(self) -> list[str]:
        """Async :meth:`pending`."""
        pending = Call(["ZRANGE", self.keys.producer(self.producer_id).pending, "0", "-1"])
        return [i for i in map(id_text, await self._adriver.run(one(pending))) if i is not None]

    async def aclose(self) -> None:
        """Close the async client."""
        await self._adriver.close()
