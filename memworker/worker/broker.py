"""Worker side: the dramatiq broker, the actors and the middleware.

Nothing is created at import time. :func:`make_broker` builds a
:class:`MemworkerBroker` (dramatiq's ``RedisBroker`` on the same :class:`Settings`,
namespace ``<ns>:dq``) and registers the actors ``save_records`` and
``encode_records`` on it with ``dramatiq.Actor`` directly, so no global broker is
ever needed. :func:`run_worker` is the entry point of ``memworker worker``.

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

Message ids
    A consumer tracks a fetched message (held, acked, requeued) by its redis id,
    read from the decoded message's ``options``, never from the raw bytes: user
    text in ``args`` cannot pose as it. A message dramatiq cannot decode is matched
    to its id through the queue's own bookkeeping (this consumer's acks set and the
    stored bodies), dead-lettered, and reported failed to its producer when its job
    id and producer can be read structurally (:func:`~memworker.jobs.undecodable_identity`).

Encode jobs
    Items whose ``flow`` entry asks for field inference or consolidation run
    CrewAI's EncodingFlow (:mod:`memworker.encoding`). The others take the fast
    path: the job's texts are embedded through the process's one batcher and
    committed at once; when the items carry a ``batch_dedup_threshold`` (every
    ``QueuedMemory`` job does), CrewAI's intra-batch dedup drops near-duplicates
    of earlier items of the job first, and the job's ``ns:results:<job>`` (``""``
    for a dropped item) is written in the commit's atomic step.

Failures (middleware, not actors)
    :class:`ValidationError` (bad record, dimension mismatch, bad payload) is
    permanent: the actors declare it in ``throws``, so ``Retries`` fails the
    message at once. Other errors retry with backoff. When a message ends failed
    (permanent, retries exhausted, the poison guard, or an unknown actor), the
    ``before_nack`` hook of :class:`BarrierMiddleware` prepares its bookkeeping
    (remove the pending mark, record the failure, count, publish the wake-up) and
    :meth:`WakeConsumer.nack` runs it in the same MULTI as dramatiq's dead-letter
    move (``<q>.XQ``): a drain that reports the failure finds the dead letter. A
    job no longer pending (a duplicate of a job that committed or failed) records
    no second failure.

Logs
    Log lines name a job by its id and record ids, never its texts, metadata or
    embeddings: :class:`RedactingFilter`, installed on dramatiq's and memworker's
    loggers by :func:`make_broker` and at worker boot, replaces dramatiq's message
    arguments (whose ``str`` is the whole job) and withholds the messages of
    exceptions not raised by memworker or a Valkey client (:func:`loggable_error`).
    An encode job's items are checked before any embedding (``check_encode_job``):
    a crafted payload fails with :class:`JobPayloadError`, permanently.

Poison guard
    ``ns:deliveries`` counts deliveries of each attempt (``<job>:<retries>``),
    incremented before processing; past ``max_deliveries`` the job is failed and
    dead-lettered (dramatiq does not count a SIGKILL/OOM as a retry).

Crash recovery bound
    dramatiq requeues the unacked messages of a broker whose heartbeat is older
    than ``heartbeat_timeout`` (:data:`HEARTBEAT_TIMEOUT_MS`, 5 s) during
    "maintenance", which we run on every dispatch call (``maintenance_chance`` =
    100 %); live consumers dispatch at least once per ``worker_timeout`` (1 s),
    idle or busy. So a dead worker's jobs are redelivered within about
    ``heartbeat_timeout + worker_timeout`` = 6 s, provided another worker consumes
    the queue. Cost: while a dead broker still holds acks, dramatiq's maintenance
    runs ``KEYS <ns>:dq:__acks__.<id>*`` (usually once or twice per dead worker).

Idle wake-up
    dramatiq's consumer sleeps with a growing backoff (up to ``worker_timeout``)
    when the queue is empty. :class:`WakeConsumer` instead blocks on
    ``BLPOP <q>.wake`` (up to ``worker_timeout``); every enqueue pushes a token in
    the same MULTI as the message, so an idle worker fetches a new job one round
    trip after it is enqueued. Stale tokens (their job taken by a peer) cost one
    empty fetch, after which the list is cleared and fetched once more.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware, SkipMessage

from memworker.embedded import ensure_embedded
from memworker.errors import ConfigError, ValidationError
from memworker.queue.jobs import (
    DEFAULT_QUEUE,
    ENCODE_ACTOR,
    MARKER_TTL_MS,
    SAVE_ACTOR,
    JobPayloadError,
    PoisonJobError,
    QueueKeys,
    delivery_field,
    check_encode_job,
    failure_json,
    job_identity,
    parse_job,
    records_from_save_job,
    undecodable_identity,
)
from memworker.queue.producer import (
    HEALTH_TTL_MS,
    check_health,
    dead_list,
    dead_purge,
    dead_requeue,
    queue_status,
    redis_kwargs,
)
from memworker.settings import Settings

__all__ = [
    "COMMIT_STEP_ENV",
    "DEFAULT_COMMIT_STEP",
    "DEFAULT_MAX_DELIVERIES",
    "HEARTBEAT_TIMEOUT_MS",
    "WORKER_TIMEOUT_MS",
    "BarrierMiddleware",
    "HealthMiddleware",
    "LogRedaction",
    "RedactingFilter",
    "MemworkerBroker",
    "WakeConsumer",
    "check_health",
    "dead_list",
    "dead_purge",
    "dead_requeue",
    "get_batcher",
    "loggable_error",
    "make_broker",
    "queue_status",
    "redact_worker_logs",
    "run_worker",
    "running_worker",
    "set_embedder_factory",
]

log = logging.getLogger("memworker.worker")

#: A broker silent for this long is dead; its unacked messages are redelivered (ms).
HEARTBEAT_TIMEOUT_MS = 5_000
#: Longest idle block of a consumer, and worker-thread poll (ms); bounds shutdown time.
WORKER_TIMEOUT_MS = 1_000
#: Deliveries of one attempt of a job before the poison guard dead-letters it.
DEFAULT_MAX_DELIVERIES = 3
#: Retries of a transiently failing job.
DEFAULT_MAX_RETRIES = 5
#: First retry backoff (ms); doubles per retry.
DEFAULT_MIN_BACKOFF_MS = 1_000
#: Longest retry backoff (ms).
DEFAULT_MAX_BACKOFF_MS = 60_000
#: Environment variable: records per atomic step of a job's commit (0: one step).
COMMIT_STEP_ENV = "MEMWORKER_COMMIT_STEP"
#: Default records per commit step: paced agents' enqueue p99 on 2 vCPUs with RediSearch
#: was 12-13.5 ms with whole-job steps (50 records), 5-7 ms with steps of 8 or 4.
DEFAULT_COMMIT_STEP = 8
#: Interval of the worker health key refresh (ms); the key lives HEALTH_TTL_MS.
HEALTH_INTERVAL_MS = 1_000
#: Seconds between checks for messages orphaned by a lost fetch reply.
RECONCILE_INTERVAL_S = 5.0
#: Environment variable naming an embedder factory, ``module:callable``.
EMBEDDER_ENV = "MEMWORKER_EMBEDDER"

#: A failed message's bookkeeping, in the same MULTI as its dead-letter move (dispatch's
#: nack). KEYS: deliveries, stats[, pending, failed]; ARGV: delivery field, job id,
#: failure JSON, done channel. Without a producer it counts the failure; with one, the
#: failure is recorded only if the pending mark was still there (a duplicate delivery
#: of a job that committed or failed already records nothing: reported once).
_FAIL_SCRIPT = """
if ARGV[1] ~= "" then redis.call("HDEL", KEYS[1], ARGV[1]) end
if #KEYS > 2 and redis.call("ZREM", KEYS[3], ARGV[2]) == 0 then return 0 end
redis.call("HINCRBY", KEYS[2], "failed", 1)
if #KEYS > 2 then
  redis.call("HSET", KEYS[4], ARGV[2], ARGV[3])
  redis.call("PUBLISH", ARGV[4], ARGV[2])
end
return 1
"""


def _decode(data: Any) -> Message | None:
    """The message in ``data`` with its redis id, or None if dramatiq cannot decode it
    or it has no usable id (the id is read from the decoded ``options``, never from
    the bytes: user text in ``args`` cannot pose as it)."""
    try:
        message = Message.decode(data)
    except DecodeError:
        return None
    options = message.options
    if not isinstance(options, dict) or not isinstance(options.get("redis_message_id"), str):
        return None
    return message


def _failure_args(
    keys: QueueKeys,
    field: str | None,
    job_id: str | None,
    producer: str | None,
    record_ids: list[str],
    error: str,
) -> list[Any]:
    """``EVAL _FAIL_SCRIPT`` arguments (numkeys, keys, argv) of one failed message."""
    if producer is None or job_id is None:
        return [2, keys.deliveries, keys.stats, field or "", job_id or "", "", ""]
    return [
        4, keys.deliveries, keys.stats, keys.pending(producer), keys.failed(producer),
        field or "", job_id, failure_json(job_id, record_ids, error), keys.done_channel(producer),
    ]  # fmt: skip


# --------------------------------------------------------------------------- logs
#: Modules whose exceptions' messages are shown in log lines: memworker's own (they name
#: fields and limits, never values) and the Valkey clients'. Any other exception (an
#: embedder's, CrewAI's, an LLM client's, pydantic's) may quote the texts it was given:
#: its type and traceback frames are logged, its message withheld.
_MESSAGE_SAFE_MODULES = ("memworker", "redis", "valkey", "glide")
#: dramatiq loggers created only once a Worker runs (its threads, its consumers: also
#: ``dramatiq.worker.ConsumerThread(<queue>)`` per queue, added by
#: :func:`redact_worker_logs`); the others exist by the time make_broker installs the
#: filter, and it is installed again at worker boot.
_DRAMATIQ_LOGGERS = (
    "dramatiq",
    "dramatiq.worker.Worker",
    "dramatiq.worker.WorkerThread",
    "dramatiq.worker._WorkerMiddleware",
    "dramatiq.brokers.redis.WakeConsumer",
    "dramatiq.broker.MemworkerBroker",
    "dramatiq.middleware.retries.Retries",
)
_MAX_LOGGED_IDS = 8


def loggable_error(exc: BaseException) -> str:
    """``"Type: message"`` of an exception for a log line, or ``"Type (message
    withheld ...)"`` for an exception whose message may quote memory contents (any
    not raised by memworker or a Valkey client)."""
    name = type(exc).__name__
    if str(type(exc).__module__).split(".", 1)[0] not in _MESSAGE_SAFE_MODULES:
        return f"{name} (message withheld: it may quote memory contents)"
    text = str(exc)
    if len(text) > 500:
        text = text[:500] + "..."
    return f"{name}: {_escape(text)}" if text else name


def _escape(text: str) -> str:
    """A string for a log line: as is when printable, else its ``repr`` (no line breaks
    or control characters can forge log lines)."""
    return text if text.isprintable() else repr(text)


def _ids_text(ids: list[str]) -> str:
    shown = ", ".join(repr(i[:64]) for i in ids[:_MAX_LOGGED_IDS])
    more = f", ... {len(ids)} in all" if len(ids) > _MAX_LOGGED_IDS else ""
    return f"[{shown}{more}]"


class _Summary(str):
    """A summary standing for a log argument: the same text for ``%s`` and ``%r``."""

    def __repr__(self) -> str:
        return str(self)


def _job_summary(actor: Any, message_id: Any, args: Any) -> str:
    """``actor(job <id>, records [<ids>])``: what a log line says of a job."""
    job_id, _producer, record_ids = job_identity(args)
    if job_id is None:
        job_id = _escape(str(message_id)[:128]) if message_id is not None else "?"
    return _Summary(f"{_escape(str(actor)[:64])}(job {job_id}, records {_ids_text(record_ids)})")


def _is_job(value: Any) -> bool:
    return isinstance(value, dict) and "items" in value and "job" in value


def _redacted(value: Any) -> Any:
    """A log argument with memory contents replaced by a summary (job id, record ids)."""
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, (Message, MessageProxy)):
        return _job_summary(value.actor_name, value.message_id, value.args)
    if isinstance(value, BaseException):
        return loggable_error(value)
    if isinstance(value, (tuple, list)) and value and _is_job(value[0]):
        return _Summary(f"({_job_summary('job', None, value)},)")
    if _is_job(value):
        return _job_summary("job", None, (value,))
    if isinstance(value, (tuple, list, dict, set, frozenset, bytes, bytearray)):
        return value if not value else f"<{type(value).__name__} of {len(value)}: withheld>"
    return value


def redacted_traceback(exc: BaseException) -> str:
    """An exception's traceback as logging prints it, with :func:`loggable_error` in
    place of each message (the frames show code, not values)."""
    import traceback

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8 and all(current is not e for e in chain):
        chain.append(current)
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    parts: list[str] = []
    for i, e in enumerate(reversed(chain)):
        if i:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(e.__traceback__))
        parts.append(loggable_error(e) + "\n")
    return "".join(parts).rstrip("\n")


class RedactingFilter(logging.Filter):
    """Keeps memory contents out of the log lines of a worker (dramatiq's and
    memworker's loggers): a dramatiq message argument (whose ``str`` is the actor call
    with the whole job: texts, metadata, embeddings) becomes ``actor(job <id>,
    records [<ids>])``; an exception's message is kept only when memworker or a Valkey
    client raised it (:func:`loggable_error`), in the argument and in the traceback;
    strings with control characters are escaped. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.args, dict):
                record.args = {k: _redacted(v) for k, v in record.args.items()}
            elif record.args:
                record.args = tuple(_redacted(a) for a in record.args)
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redacted_traceback(record.exc_info[1])
                record.exc_info = None
        except Exception:  # noqa: BLE001 - never let a log call fail; say nothing then
            record.msg, record.args = f"{record.msg!s:.200} (arguments withheld)", ()
            record.exc_info, record.exc_text = None, None
        return True


_log_filter: RedactingFilter | None = None


def redact_worker_logs(broker: Any = None) -> None:
    """Install :class:`RedactingFilter` on dramatiq's and memworker's loggers: those
    that exist now, and the ones a dramatiq ``Worker`` of ``broker`` creates (its
    threads, a consumer per declared queue). Idempotent; called by :func:`make_broker`
    and at worker boot, never at import."""
    global _log_filter
    names = set(_DRAMATIQ_LOGGERS)
    if broker is not None:
        queues = set(broker.get_declared_queues()) | set(broker.get_declared_delay_queues())
        names.update(f"dramatiq.worker.ConsumerThread({q})" for q in queues)
    names.update(
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".", 1)[0] in ("dramatiq", "memworker")
    )
    if _log_filter is None:
        _log_filter = RedactingFilter()
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(_log_filter)


class LogRedaction(Middleware):
    """Installs the log filter once a worker has created its threads' loggers."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        redact_worker_logs(broker)

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        redact_worker_logs(broker)


# --------------------------------------------------------------------------- broker
class WakeConsumer(_RedisConsumer):
    """dramatiq's Redis consumer, with the idle wait blocked on a wake-up list
    instead of a sleep, a heartbeat while prefetch is full, and undecodable
    messages dead-lettered instead of crashing the consumer."""

    def __init__(
        self, broker: MemworkerBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wake_key = f"{broker.namespace}:{queue_name}.wake"
        self.msgs_key = f"{broker.namespace}:{queue_name}.msgs"
        self.acks_key = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"
        self._slot = threading.Event()
        self._woken = False
        self._last_dispatch = time.monotonic()
        # A fetch whose reply is lost with its connection (the client may even retry
        # it silently) leaves messages in this broker's acks set that nobody holds.
        # Reconcile when the consumer is (re)created, then every RECONCILE_INTERVAL_S.
        self._next_reconcile = 0.0

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)
        finally:
            self.broker.release(message.options.get("redis_message_id"))
            self._slot.set()

    def nack(self, message: Any) -> None:
        """Dead-letter the message and, in the same MULTI, its failure bookkeeping
        (prepared by :meth:`BarrierMiddleware.before_nack`): a drain that saw the
        failure finds the dead letter too."""
        import redis

        redis_id = message.options.get("redis_message_id")
        try:
            self.broker.dead_letter(
                self.queue_name, redis_id, getattr(message, "memworker_failure", None)
            )
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        finally:
            self.queued_message_ids.discard(message.message_id)
            self.broker.release(redis_id)
            self._slot.set()

    def _reconcile(self) -> None:
        """Requeue the messages that this broker's acks set holds for this queue but
        no consumer of this process knows of: their fetch reply was lost with a
        connection. Messages still held by worker threads (even those fetched by a
        consumer that was replaced) are in the broker's registry and stay."""
        server = {
            i.decode() if isinstance(i, bytes) else str(i)
            for i in self.broker.client.smembers(self.acks_key)
        }
        orphans = sorted(server - self.broker.held_ids())
        if orphans:
            log.warning(
                "requeueing %d message(s) whose fetch reply was lost on %r",
                len(orphans),
                self.queue_name,
            )
            self.broker.do_requeue(self.queue_name, *orphans)
            self.broker.client.rpush(self.wake_key, *(["1"] * len(orphans)))
            self.broker.orphans_requeued += len(orphans)

    def requeue(self, messages: Iterable[Any]) -> None:
        """dramatiq's requeue (acks set -> back on the queue), plus one wake-up token
        per message so an idle peer takes them at once."""
        messages = list(messages)
        super().requeue(messages)
        if messages:
            self.broker.client.rpush(self.wake_key, *(["1"] * len(messages)))
        for message in messages:
            self.broker.release(message.options.get("redis_message_id"))

    def close(self) -> None:
        """Put back the messages fetched into ``message_cache`` but never handed to
        a worker thread (graceful shutdown, or a consumer restart): without this they
        would sit in this broker's acks set until a peer's maintenance requeues them
        after ``heartbeat_timeout``. dramatiq's own ``_RedisConsumer`` does not do it."""
        cached, self.message_cache = self.message_cache, []
        # The cache holds decoded messages (see __next__), each with its redis id.
        ids = [m.options["redis_message_id"] for m in cached if isinstance(m, Message)]
        try:
            if ids:
                log.debug("requeueing %d fetched message(s) on %r", len(ids), self.queue_name)
                self.broker.do_requeue(self.queue_name, *ids)
                self.broker.client.rpush(self.wake_key, *(["1"] * len(ids)))
                for redis_id in ids:
                    self.broker.release(redis_id)
        except Exception:  # a peer's maintenance requeues them later
            log.warning(
                "could not requeue %d fetched message(s) on %r",
                len(ids),
                self.queue_name,
                exc_info=True,
            )
        finally:
            super().close()

    def _block_seconds(self) -> float:
        seconds = self.timeout / 1000
        if self.queue_name.endswith(".DQ") and self.outstanding_message_count:
            seconds = min(seconds, 0.05)  # delayed messages wait in memory for their eta
        return seconds

    def __next__(self) -> MessageProxy | None:
        broker: MemworkerBroker = self.broker
        try:
            if time.monotonic() >= self._next_reconcile:
                self._reconcile()
                self._next_reconcile = time.monotonic() + RECONCILE_INTERVAL_S
            while True:
                if self.message_cache:
                    message = self.message_cache.pop(0)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                free = self.prefetch - self.outstanding_message_count
                if free <= 0:
                    # Busy: wait for a slot (an ack/nack), keep the heartbeat fresh.
                    self._slot.wait(self.timeout / 1000)
                    self._slot.clear()
                    if time.monotonic() - self._last_dispatch >= HEALTH_INTERVAL_MS / 1000:
                        broker.do_heartbeat(self.queue_name)
                        self._last_dispatch = time.monotonic()
                    return None
                messages = broker.do_fetch(self.queue_name, free)
                self._last_dispatch = time.monotonic()
                if messages:
                    self._accept(messages)
                    if self._woken:
                        broker.woken_fetches += 1
                    self._woken = False
                    continue
                if self._woken:
                    # The token's job went to a peer: drop stale tokens, then look
                    # once more (a job whose token we just dropped is still listed).
                    self._woken = False
                    broker.client.delete(self.wake_key)
                    continue
                got = broker.client.blpop([self.wake_key], timeout=self._block_seconds())
                if got is None:
                    return None  # let the consumer thread check for shutdown / delayed messages
                self._woken = True
                broker.wakeups += 1
        except Exception as exc:
            import redis

            if isinstance(exc, redis.ConnectionError):
                raise ConnectionClosed(exc) from None
            raise

    def _accept(self, fetched: list[Any]) -> None:
        """Decode a fetch's messages, hold their redis ids (read from the decoded
        options) and cache them, then dead-letter the undecodable ones (if that fails,
        they stay unheld in the acks set, and the reconciler requeues them)."""
        decoded: list[Message] = []
        bad: list[bytes] = []
        for data in fetched:
            if data is None:
                continue
            message = _decode(data)
            if message is None:
                bad.append(data if isinstance(data, bytes) else str(data).encode())
            else:
                decoded.append(message)
        self.broker.hold(m.options["redis_message_id"] for m in decoded)
        self.message_cache = decoded
        if bad:
            for data, redis_id in zip(bad, self._ids_of(bad)):
                self._reject(data, redis_id)

    def _ids_of(self, bodies: list[bytes]) -> list[str | None]:
        """The redis ids of fetched bodies that cannot be decoded, from the queue's own
        bookkeeping (never from the bytes): the ids in this consumer's acks set that no
        thread holds, whose stored body is exactly that body."""
        client = self.broker.client
        server = {
            i.decode() if isinstance(i, bytes) else str(i) for i in client.smembers(self.acks_key)
        }
        candidates = sorted(server - self.broker.held_ids())
        by_body: dict[bytes, list[str]] = {}
        if candidates:
            for redis_id, body in zip(candidates, client.hmget(self.msgs_key, candidates)):
                if body is not None:
                    by_body.setdefault(bytes(body), []).append(redis_id)
        out: list[str | None] = []
        for body in bodies:
            ids = by_body.get(body)
            out.append(ids.pop(0) if ids else None)
        return out

    def _reject(self, data: bytes, redis_id: str | None) -> None:
        """Dead-letter an undecodable message, and report it failed to its producer
        when its job id and producer can be read (:func:`undecodable_identity`) and
        its pending mark is still there, in one MULTI."""
        if redis_id is None:
            log.error(
                "undecodable message on %r without a message id; left unacked", self.queue_name
            )
            return
        log.error("undecodable message %s on %r: dead-lettered", redis_id, self.queue_name)
        job_id, producer, record_ids = undecodable_identity(data)
        failure = None
        if job_id is not None and producer is not None:
            failure = _failure_args(
                self.broker.keys, None, job_id, producer, record_ids,
                "DecodeError: undecodable message (dead-lettered)",
            )  # fmt: skip
        self.broker.dead_letter(self.queue_name, redis_id, failure)


class MemworkerBroker(RedisBroker):
    """dramatiq's ``RedisBroker`` with :class:`WakeConsumer` and a wake-up token
    pushed on every enqueue (retries and delayed messages included).

    Attributes:
        settings: Where Valkey is and the namespace.
        keys: Queue key names.
        wakeups: How many times an idle consumer was woken by a token.
        woken_fetches: How many fetches right after a wake-up found work (i.e. jobs
            picked up because of the wake-up, not by a timed re-poll).
        context: The per-process worker context (store, batcher), set by :func:`make_broker`.
    """

    def __init__(self, settings: Settings, **options: Any) -> None:
        keys = QueueKeys(settings.namespace)
        options.setdefault("heartbeat_timeout", HEARTBEAT_TIMEOUT_MS)
        options.setdefault("maintenance_chance", MAINTENANCE_SCALE)
        import redis

        client = redis.Redis.from_url(
            ensure_embedded(settings).url(redact=False, scheme="redis"), **redis_kwargs(settings)
        )
        super().__init__(client=client, namespace=keys.dq_namespace, **options)
        self.settings = settings
        self.keys = keys
        self.wakeups = 0
        self.woken_fetches = 0
        self.orphans_requeued = 0
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self.context: WorkerContext | None = None

    def hold(self, redis_ids: Iterable[str]) -> None:
        """Record the redis message ids of fetched messages (until ack, nack or requeue)."""
        with self._held_lock:
            self._held.update(redis_ids)

    def release(self, redis_id: Any) -> None:
        """Forget a message id this process held."""
        if redis_id is not None:
            with self._held_lock:
                self._held.discard(str(redis_id))

    def held_ids(self) -> set[str]:
        """Message ids fetched by this process and not yet acked, nacked or requeued."""
        with self._held_lock:
            return set(self._held)

    @property
    def consumer_class(self) -> type[WakeConsumer]:
        return WakeConsumer

    def dead_letter(self, queue_name: str, redis_id: str, failure: list[Any] | None = None) -> None:
        """dramatiq's nack (move the message to ``<q>.XQ``) and, in the same MULTI, the
        failure bookkeeping ``failure`` (:func:`_failure_args`): the pending mark, the
        failure record, the counter and the wake-up land with the dead letter or not at
        all. Both are sent as ``EVAL`` (never ``NOSCRIPT`` inside the MULTI)."""
        from dramatiq.common import current_millis

        with self.client.pipeline(transaction=True) as pipe:
            if failure is not None:
                pipe.execute_command("EVAL", _FAIL_SCRIPT, *failure)
            pipe.execute_command(
                "EVAL", self.scripts["dispatch"].script, 1, self.namespace,
                "nack", current_millis(), queue_name, self.broker_id, self.heartbeat_timeout,
                self.dead_message_ttl, 0, self._max_unpack_size(), redis_id,
            )  # fmt: skip
            pipe.execute()

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> Any:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.namespace}:{queue_name}.msgs", message_id, data)
            pipe.rpush(f"{self.namespace}:{queue_name}", message_id)
            pipe.rpush(f"{self.namespace}:{queue_name}.wake", "1")
            return pipe.execute()


# --------------------------------------------------------------------------- embedding
_factory_lock = threading.Lock()
_embedder_factory: Callable[[], Any] | None = None
_batcher: Any = None
_processes = 1
#: CPU priority of the inference thread (run_worker's ``nice``), applied in that thread.
_nice: Any = 0


def set_embedder_factory(factory: Callable[[], Any] | None) -> None:
    """Use ``factory()`` (an object with ``encode(texts)`` and ``dimension``) as this
    process's embedding model; ``None`` restores the default (``MEMWORKER_EMBEDDER``
    or :class:`memworker.embedding.Embedder`). Resets the process's batcher."""
    global _embedder_factory, _batcher
    with _factory_lock:
        _embedder_factory = factory
        old, _batcher = _batcher, None
    if old is not None:
        old.close(timeout=5)


def _make_embedder() -> tuple[Any, int]:
    """The process's model and its inference threads: the bundled ``Embedder`` runs
    :func:`~memworker.embedding.configure_threads` batches side by side; an embedder
    from a factory runs one batch at a time (it may not be safe to share)."""
    if _embedder_factory is not None:
        return _embedder_factory(), 1
    spec = os.environ.get(EMBEDDER_ENV)
    if spec:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise ConfigError(f"{EMBEDDER_ENV} must be 'module:callable', got {spec!r}")
        return getattr(importlib.import_module(module), name)(), 1
    from memworker.encoding import factory_embedder

    configured = factory_embedder()  # MEMWORKER_MEMORY_FACTORY's embedder, if it names one
    if configured is not None:
        return configured, 1
    from memworker.embedding import Embedder, configure_threads

    threads = configure_threads(_processes)
    return Embedder(), threads


def get_batcher() -> Any:
    """The process's one :class:`EmbeddingBatcher`, created on first use."""
    global _batcher
    batcher = _batcher
    if batcher is None:
        with _factory_lock:
            if _batcher is None:
                from memworker.embedding.batcher import EmbeddingBatcher

                nice = _nice
                embedder, threads = _make_embedder()
                _batcher = EmbeddingBatcher(
                    embedder, threads=threads, on_start=lambda: lower_priority(nice)
                )
            batcher = _batcher
    return batcher


def _batcher_counts() -> dict[str, int]:
    """The inference counters for the health record: ``embed_batches`` and
    ``embed_texts`` (their ratio is the mean batch), once the model has loaded."""
    batcher = _batcher
    if batcher is None:
        return {}
    stats = batcher.stats
    return {"embed_batches": stats.batches, "embed_texts": stats.texts}


# --------------------------------------------------------------------------- context + actors
#: The message a worker thread is processing: its delivery-counter field (set by
#: BarrierMiddleware before the actor runs) and whether the job's commit cleared it.
_delivery = threading.local()


class WorkerContext:
    """What the actors of one broker share: the store (one client for all threads).

    Args:
        commit_step: Records per atomic step of a job's commit (``0``: the whole job
            in one step); see :meth:`commit`.
    """

    def __init__(self, settings: Settings, *, commit_step: int = DEFAULT_COMMIT_STEP) -> None:
        from memworker.store.store import ValkeyStore

        self.settings = settings
        self.keys = QueueKeys(settings.namespace)
        self.commit_step = commit_step
        #: Commits refused because the job was no longer pending (duplicate deliveries).
        self.duplicates = 0
        # One script call per commit step (batch_size: the store never splits one).
        self.store = ValkeyStore(settings, batch_size=10_000)

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
        from memworker.store.codec import encode_records
        from memworker.store.store import NotPending

        encoded = encode_records(records)
        k = self.keys
        now = int(time.time() * 1000)
        field = getattr(_delivery, "field", None)
        commands = [
            *extra,
            # the delivery counter of this attempt (BarrierMiddleware's), done with
            *([["HDEL", k.deliveries, field]] if field else []),
            ["ZREM", k.pending(producer), job_id],
            # The positive commit marker the drain reports from, trimmed by age.
            ["ZADD", k.committed(producer), str(now), job_id],
            ["ZREMRANGEBYSCORE", k.committed(producer), "-inf", str(now - MARKER_TTL_MS)],
            ["HINCRBY", k.stats, "committed", "1"],
            ["HINCRBY", k.stats, "records", str(len(encoded))],
            ["PUBLISH", k.done_channel(producer), job_id],
        ]
        inserted = 0
        step = self.commit_step
        # Every step writes only while the job is pending: a duplicate delivery of a job
        # that committed (or failed) writes nothing, so it cannot revert an update made
        # after the drain returned, re-add the marker a drain consumed, or count twice.
        guard = (k.pending(producer), job_id)
        try:
            while step and len(encoded) > step:
                inserted += self.store.write_encoded(encoded[:step], guard=guard)
                encoded = encoded[step:]
            inserted += self.store.write_encoded(encoded, extra=commands, guard=guard)
        except NotPending:
            self.duplicates += 1
            return 0
        if field:
            _delivery.cleared = field
        return inserted

    def close(self) -> None:
        self.store.close()


def _save_records(context: WorkerContext, job: Any) -> None:
    job_id, producer, items = parse_job(job)
    context.commit(job_id, producer, records_from_save_job(items))


def _encode_records(context: WorkerContext, job: Any) -> None:
    from memworker import encoding

    job_id, producer, items = parse_job(job)
    check_encode_job(items)  # a crafted payload fails here, permanently (never retried)
    if any(encoding.needs_flow(item.get("flow")) for item in items):
        # Fields to infer or consolidation on: CrewAI's EncodingFlow (memworker.encoding).
        encoding.run_flow_job(context, job_id, producer, items)
        return
    # The fast path: every field given, consolidation off.
    threshold = encoding.fast_path_dedup_threshold(items)
    texts = []
    for i, item in enumerate(items):
        text = item.get("content")
        if not isinstance(text, str) or not text:
            raise JobPayloadError(f"items[{i}].content must be a non-empty string")
        texts.append(text)
    vectors = get_batcher().submit(texts).result()
    # CrewAI's intra-batch dedup, as the flow path applies it (QueuedMemory jobs).
    dropped = encoding.batch_duplicates(vectors, threshold)
    gone = set(dropped)
    records = [
        {**{k: v for k, v in item.items() if k != "flow"}, "embedding": vectors[i]}
        for i, item in enumerate(items)
        if i not in gone
    ]
    results = encoding.dedup_results(context.settings.namespace, job_id, items, dropped)
    context.commit(job_id, producer, records, extra=results)


# --------------------------------------------------------------------------- middleware
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
        _delivery.field, _delivery.cleared = message.memworker_delivery, None
        if n > self.max_deliveries:
            error = PoisonJobError(
                f"job {message.message_id} was delivered {n} times without finishing "
                f"(limit {self.max_deliveries}): it may crash its worker"
            )
            message.fail()
            message.memworker_error = error
            raise SkipMessage(str(error))

    def _unlock(self, message: Any) -> None:
        if getattr(message, "memworker_locked", False):
            message.memworker_locked = False
            self.isolation.release(exclusive=getattr(message, "memworker_exclusive", False))

    def after_skip_message(self, broker: Any, message: Any) -> None:
        _delivery.field = _delivery.cleared = None
        self._unlock(message)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._unlock(message)
        cleared = getattr(_delivery, "cleared", None)
        _delivery.field = _delivery.cleared = None
        if exception is None:
            self.processed += 1
        elif message.failed:
            message.memworker_error = exception
            return  # recorded by before_nack
        field = getattr(message, "memworker_delivery", None) or self._field(message)
        if exception is None and cleared == field:
            return  # the job's commit cleared it, in the same atomic step
        # Done, or Retries re-enqueued it: the next attempt counts on its own field.
        broker.client.hdel(self.keys.deliveries, field)

    def before_nack(self, broker: Any, message: Any) -> None:
        if getattr(message, "memworker_recorded", False):
            return  # dramatiq retries a nack after a connection error: record once
        field = getattr(message, "memworker_delivery", None) or self._field(message)
        error = getattr(message, "memworker_error", None) or getattr(message, "_exception", None)
        self._record_failure(broker, message, error, field)
        message.memworker_recorded = True

    def _record_failure(self, broker: Any, message: Any, exception: Any, field: str) -> None:
        self.failed += 1
        job_id, producer, record_ids = job_identity(message.args)
        job_id = job_id or message.message_id
        error = f"{type(exception).__name__}: {exception}" if exception is not None else "failed"
        # Written by WakeConsumer.nack, in the MULTI that dead-letters the message.
        message.memworker_failure = _failure_args(
            self.keys, field, job_id, producer, record_ids, error
        )
        log.warning(
            "job %s (records %s) failed for good: %s",
            job_id,
            _ids_text(record_ids),
            "failed" if exception is None else loggable_error(exception),
        )


class HealthMiddleware(Middleware):
    """Writes ``ns:workers:<id>`` (pid, host, started, processed, failed; TTL
    ``HEALTH_TTL_MS``) and ``ns:workers`` (id -> last beat) every ``HEALTH_INTERVAL_MS``."""

    def __init__(self, settings: Settings, barrier: BarrierMiddleware) -> None:
        self.keys = QueueKeys(settings.namespace)
        self.barrier = barrier
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started = int(time.time() * 1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, broker: Any) -> None:
        k = self.keys
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
                    **_batcher_counts(),
                },
            )
            pipe.pexpire(k.worker(self.worker_id), HEALTH_TTL_MS)
            pipe.zadd(k.workers, {self.worker_id: now})
            pipe.zremrangebyscore(k.workers, 0, now - 10 * HEALTH_TTL_MS)
            pipe.execute()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.beat(broker)

        def loop() -> None:
            while not self._stop.wait(HEALTH_INTERVAL_MS / 1000):
                try:
                    self.beat(broker)
                except Exception:
                    log.warning("worker health beat failed", exc_info=True)

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


# --------------------------------------------------------------------------- assembly
def make_broker(
    settings: Settings | str | None = None,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
    max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    commit_step: int = DEFAULT_COMMIT_STEP,
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
    queue: str = DEFAULT_QUEUE,
) -> MemworkerBroker:
    """A broker with memworker's middleware and actors registered (no global broker)."""
    from dramatiq.middleware import Retries

    settings = Settings.resolve(settings)
    broker = MemworkerBroker(settings, heartbeat_timeout=heartbeat_timeout_ms)
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
    options = {"throws": (ValidationError,), "max_retries": max_retries}
    for name, fn in ((SAVE_ACTOR, _save_records), (ENCODE_ACTOR, _encode_records)):

        def actor_fn(job: Any, _fn: Callable[..., None] = fn) -> None:
            _fn(context, job)

        actor_fn.__name__ = name
        dramatiq.Actor(
            actor_fn,
            broker=broker,
            actor_name=name,
            queue_name=queue,
            priority=0,
            options=dict(options),
        )
    redact_worker_logs(broker)
    return broker


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
    broker = make_broker(settings, **options)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=worker_timeout_ms)
    worker.start()
    try:
        yield broker, worker
    finally:
        worker.stop()
        broker.close()
        if broker.context is not None:
            broker.context.close()


def warm_up() -> None:
    """Load what a worker process needs before it takes its first job: the embedding
    model (one batch through the process's batcher) and the record types (crewai's,
    when installed, take seconds to import), so no job pays for them."""
    from memworker.records import dimension_mismatch, record_types

    record_types()
    dimension_mismatch(1, 2)
    get_batcher().submit(["warm up"]).result()


#: Environment fallbacks of run_worker's (and ``memworker worker``'s) broker options.
BROKER_ENV = {
    "max_retries": ("MEMWORKER_MAX_RETRIES", DEFAULT_MAX_RETRIES, 0),
    "min_backoff_ms": ("MEMWORKER_MIN_BACKOFF_MS", DEFAULT_MIN_BACKOFF_MS, 0),
    "max_deliveries": ("MEMWORKER_MAX_DELIVERIES", DEFAULT_MAX_DELIVERIES, 1),
    "commit_step": (COMMIT_STEP_ENV, DEFAULT_COMMIT_STEP, 0),
}


def broker_options(env: Any = None, **given: int | None) -> dict[str, int]:
    """``max_retries``, ``min_backoff_ms``, ``max_deliveries``, ``commit_step``: each
    the given value, else its environment variable (:data:`BROKER_ENV`), else the default.

    Raises:
        ConfigError: A value that is not an integer at or above its minimum.
    """
    env = os.environ if env is None else env
    out: dict[str, int] = {}
    for name, (var, default, low) in BROKER_ENV.items():
        value: Any = given.get(name)
        where = name
        if value is None and env.get(var, "").strip():
            value, where = env[var].strip(), var
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {value!r}") from None
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where} must be an integer >= {low}, got {value!r}")
        out[name] = value
    return out


#: A worker's CPU priority: a nice increment (0-19) or ``"idle"`` (SCHED_IDLE).
Nice = Union[int, str]


def check_nice(nice: Any) -> None:
    """Raise ConfigError unless ``nice`` is an integer from 0 to 19 or ``"idle"``."""
    if nice == "idle" and isinstance(nice, str):
        return
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ConfigError(f"nice must be an integer from 0 to 19 or 'idle', got {nice!r}")


def lower_priority(nice: Nice) -> None:
    """Lower the calling thread's CPU priority; threads it starts later inherit it
    (Linux: policy and nice value are per thread).

    ``"idle"``: ``SCHED_IDLE`` where the OS has it (Linux): the thread runs only on
    CPU time no normal task wants, and a normal task that wakes up preempts it at once;
    elsewhere nice 19. An integer: ``os.nice(nice)``.
    """
    check_nice(nice)
    if nice == "idle":
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        nice = 19
    if nice:
        os.nice(int(nice))


def _serve(
    settings: Settings,
    threads: int,
    queues: Iterable[str] | None,
    processes: int,
    nice: Nice = 0,
    options: dict[str, int] | None = None,
) -> int:
    """Run one worker process until SIGINT/SIGTERM."""
    global _processes, _nice
    _processes = processes
    check_nice(nice)
    _nice = nice  # the inference thread lowers its own priority (get_batcher)
    warm_up()
    broker = make_broker(settings, **(options or {}))
    from memworker.encoding import check_worker_model

    check_worker_model(broker.context.store)  # the producers' query model, or ConfigError
    worker = dramatiq.Worker(
        broker,
        queues=set(queues) if queues else None,
        worker_threads=threads,
        worker_timeout=WORKER_TIMEOUT_MS,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    worker.start()
    log.info(
        "memworker worker %s started (%d threads) on %s",
        os.getpid(),
        threads,
        settings.redacted_url(),
    )
    try:
        stop.wait()
    finally:
        worker.stop()
        broker.close()
        if broker.context is not None:
            broker.context.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _child(
    settings: Settings,
    threads: int,
    queues: list[str] | None,
    processes: int,
    nice: Nice,
    options: dict[str, int] | None = None,
) -> None:
    raise SystemExit(_serve(settings, threads, queues, processes, nice, options))


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

    ``max_retries``, ``min_backoff_ms``, ``max_deliveries`` and ``commit_step`` go to
    :func:`make_broker`; ``None`` reads ``MEMWORKER_MAX_RETRIES``,
    ``MEMWORKER_MIN_BACKOFF_MS``, ``MEMWORKER_MAX_DELIVERIES``,
    ``MEMWORKER_COMMIT_STEP``, else the defaults (5, 1000, 3, 8).

    Each process builds its own broker from ``settings`` (spawned children, nothing
    inherited but the settings). Returns the exit code: 0, or the first non-zero
    exit code of a child.
    """
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"processes must be an integer >= 1, got {processes!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    options = broker_options(
        max_retries=max_retries, min_backoff_ms=min_backoff_ms, max_deliveries=max_deliveries,
        commit_step=commit_step,
    )  # fmt: skip
    settings = Settings.resolve(settings)
    ensure_embedded(settings)  # start/find the embedded server once, before the children
    qlist = list(queues) if queues else None
    check_nice(nice)
    if processes == 1:
        return _serve(settings, threads, qlist, 1, nice, options)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_child, args=(settings, threads, qlist, processes, nice, options))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    stop = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        stop.set()
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = 0
        for child in children:
            child.join()
            code = code or (child.exitcode or 0)
        return code if code >= 0 else 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
