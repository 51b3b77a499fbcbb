"""The worker's dramatiq broker: :class:`MemworkerBroker` and its :class:`WakeConsumer`.

:class:`MemworkerBroker` is dramatiq's ``RedisBroker`` on the same :class:`Settings`
(namespace ``<ns>:dq``) with :class:`WakeConsumer` and a wake-up token pushed on every
enqueue. Its use of dramatiq internals goes through
:mod:`memworker.worker._dramatiq_compat`.

Message ids
    A consumer tracks a fetched message (held, acked, requeued) by its redis id,
    read from the decoded message's ``options``, never from the raw bytes: user
    text in ``args`` cannot pose as it. A message dramatiq cannot decode is matched
    to its id through the queue's own bookkeeping (this consumer's acks set and the
    stored bodies), dead-lettered, and reported failed to its producer when its job
    id and producer can be read structurally
    (:func:`~memworker.queue.payload.undecodable_identity`).

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

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from dramatiq.broker import MessageProxy
from dramatiq.errors import BrokerConnectionError, ConnectionClosed
from dramatiq.message import Message

from memworker.io.redispy import redis_client
from memworker.queue.jobs import QueueKeys
from memworker.queue.payload import undecodable_identity
from memworker.settings import Settings
from memworker.worker import _dramatiq_compat as compat
from memworker.worker._dramatiq_compat import REDIS_ID_OPTION
from memworker.worker.clock import server_now_ms
from memworker.worker.middleware import FAIL_SCRIPT, HEALTH_INTERVAL_MS, failure_args

if TYPE_CHECKING:
    from memworker.worker.actors import WorkerContext
    from memworker.worker.batch import JobBatches

__all__ = [
    "HEARTBEAT_TIMEOUT_MS",
    "RECONCILE_INTERVAL_S",
    "WORKER_TIMEOUT_MS",
    "MemworkerBroker",
    "WakeConsumer",
]

log = logging.getLogger("memworker.worker")

#: A broker silent for this long is dead; its unacked messages are redelivered (ms).
HEARTBEAT_TIMEOUT_MS = 5_000
#: Longest idle block of a consumer, and worker-thread poll (ms); bounds shutdown time.
WORKER_TIMEOUT_MS = 1_000
#: Seconds between checks for messages orphaned by a lost fetch reply.
RECONCILE_INTERVAL_S = 5.0


#: dramatiq options that decide how a message runs or fails, read from the message
#: before its actor's: memworker's producer never sets them, and a forged one made
#: dramatiq misbehave (``throws="x"``: its ``isinstance(exc, throws)`` raised in its
#: ``except`` block, the worker thread died and the job was acked unreported; the
#: others would override the worker's retry policy, chain another actor, or time it
#: out). A message that sets one is dead-lettered (:meth:`WakeConsumer._fault`).
FAILURE_OPTIONS = frozenset({
    "throws", "max_retries", "min_backoff", "max_backoff", "retry_when", "on_retry_exhausted",
    "on_success", "on_failure", "pipe_target", "pipe_ignore", "time_limit", "max_age",
    "notify_shutdown", "store_results", "result_ttl", "group_completion_callbacks",
    "group_completion_uuid",
})
#: Above any ``retries`` count a worker writes (``max_retries`` is at most 1,000).
MAX_RETRIES_OPTION = 1 << 31
#: How far ahead of this worker's clock a delayed message may be due (ms): a retry's
#: backoff is at most an hour (``max_backoff_ms``), the rest covers clock skew.
MAX_ETA_AHEAD_MS = 86_400_000
#: Above any ``message_timestamp`` (ms) a producer writes, and within a float's range.
MAX_TIMESTAMP = 1 << 62
#: Withdraw one delivery of an attempt from the poison guard's count (KEYS: deliveries;
#: ARGV: the attempt's field); the field goes at zero.
_DROP_DELIVERY = (
    'local n = redis.call("HINCRBY", KEYS[1], ARGV[1], -1) '
    'if n <= 0 then redis.call("HDEL", KEYS[1], ARGV[1]) end return n'
)


def _link_lost(exc: BaseException) -> bool:
    """A lost link to Valkey, as redis-py reports it: dramatiq retries an ack or nack
    only on its own ConnectionClosed, and redis-py's timeout and (cluster client)
    unreachable cluster are no ``ConnectionError``."""
    import redis.exceptions as rex

    return isinstance(exc, (rex.ConnectionError, rex.TimeoutError, rex.RedisClusterException))


#: Replies of a server that cannot take a write for now (full, a replica, loading,
#: busy with a script, a cluster without its slots or its primary).
_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "LOADING", "BUSY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")


def _valkey_unavailable(exc: BaseException) -> bool:
    """Valkey out of reach or unable to write for now, which a later attempt may not
    meet: a lost link (a cluster client's unreachable cluster included), a full server,
    a replica's READONLY. Not an authentication or permission refusal, nor another
    error reply or an error of the client's own, which would come back every time."""
    import redis.exceptions as rex

    from memworker.io.plan import error_text, is_permanent

    if is_permanent(exc):
        return False
    if isinstance(exc, rex.ResponseError):
        return error_text(exc).lstrip().upper().startswith(_UNAVAILABLE_REPLIES) or isinstance(
            exc, (rex.OutOfMemoryError, rex.ReadOnlyError, rex.BusyLoadingError, rex.ClusterDownError, rex.TryAgainError)
        )
    return _link_lost(exc) or isinstance(exc, (BrokerConnectionError, OSError))


class WakeConsumer(compat.RedisConsumer):
    """dramatiq's Redis consumer, with the idle wait blocked on a wake-up list
    instead of a sleep, a heartbeat while prefetch is full, and undecodable
    messages dead-lettered instead of crashing the consumer."""

    def __init__(
        self, broker: MemworkerBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wake_key = f"{broker.namespace}:{queue_name}.wake"
        self.msgs_key = compat.msgs_key(broker.namespace, queue_name)
        self.acks_key = compat.acks_key(broker.namespace, broker.broker_id, queue_name)
        self._slot = threading.Event()
        self._woken = False
        self._last_dispatch = time.monotonic()
        # A fetch whose reply is lost with its connection (the client may even retry
        # it silently) leaves messages in this broker's acks set that nobody holds.
        # Reconcile when the consumer is (re)created, then every RECONCILE_INTERVAL_S.
        self._next_reconcile = 0.0

    def ack(self, message: Any) -> None:
        """Acknowledge, unless the message's retry could not be enqueued
        (:meth:`MemworkerBroker.enqueue`): it stays in the acks set, and the reconciler
        requeues it. An ack that fails on the connection keeps the message held:
        dramatiq retries it until it goes through, and the reconciler must not take
        the message for a lost fetch meanwhile (it ran the job again)."""
        if getattr(message, "memworker_retry_unsent", False):
            log.warning("a failed job's retry could not be enqueued; its message is requeued as it was")
            self.queued_message_ids.discard(message.message_id)
            # the attempt is over: the next reconcile withdraws its delivery count (clearing
            # it at its end failed on the same link), or it counted towards the poison guard
            self.broker.unsent(message.options.get(REDIS_ID_OPTION), getattr(message, "memworker_delivery", None))
            self._settled(message)
            return
        try:
            super().ack(message)
        except ConnectionClosed:
            raise
        except Exception as exc:
            if _link_lost(exc):  # dramatiq would not retry it
                raise ConnectionClosed(exc) from None
            self._settled(message)
            raise
        except BaseException:
            self._settled(message)
            raise
        self._settled(message)

    def _settled(self, message: Any) -> None:
        """The message is no longer this process's: a worker thread may take another."""
        self.broker.release(message.options.get(REDIS_ID_OPTION))
        self._slot.set()

    def nack(self, message: Any) -> None:
        """Dead-letter the message and, in the same MULTI, its failure bookkeeping
        (prepared by :meth:`BarrierMiddleware.before_nack`): a drain that saw the
        failure finds the dead letter too."""
        redis_id = message.options.get(REDIS_ID_OPTION)
        try:
            self.broker.dead_letter(
                self.queue_name, redis_id, getattr(message, "memworker_failure", None)
            )
        except Exception as e:
            self.queued_message_ids.discard(message.message_id)
            if _link_lost(e):  # dramatiq retries the nack: still held meanwhile (see ack)
                raise ConnectionClosed(e) from None
            self._settled(message)
            raise
        except BaseException:
            self.queued_message_ids.discard(message.message_id)
            self._settled(message)
            raise
        self.queued_message_ids.discard(message.message_id)
        self._settled(message)

    def _reconcile(self) -> None:
        """Requeue the messages that this broker's acks set holds for this queue but
        no consumer of this process knows of: their fetch reply was lost with a
        connection. Messages still held by worker threads (even those fetched by a
        consumer that was replaced) are in the broker's registry and stay."""
        for redis_id, field in self.broker.unsent_items():
            # the attempt whose retry could not be enqueued is over: its delivery no
            # longer counts, whoever requeues the message (here, or a peer's
            # maintenance while this worker's link was down)
            self.broker.client.eval(_DROP_DELIVERY, 1, self.broker.keys.deliveries, field)
            self.broker.unsent_done([redis_id])
        server = {
            i.decode() if isinstance(i, bytes) else str(i)
            for i in self.broker.client.smembers(self.acks_key)
        }
        held = self.broker.held_ids()
        if self.queue_name.endswith(".DQ") and self._next_reconcile == 0.0:
            # A new delay-queue consumer: its thread's in-memory delay queue is new too
            # (dramatiq puts the old one's messages back, or on a connection error drops
            # them, still held here): none of these is held by anyone.
            held = set()
        orphans = sorted(server - held)
        if orphans:
            log.warning(
                "requeueing %d message(s) whose fetch reply was lost on %r",
                len(orphans),
                self.queue_name,
            )
            compat.requeue(self.broker, self.queue_name, *orphans)
            self.broker.client.rpush(self.wake_key, *(["1"] * len(orphans)))
            self.broker.orphans_requeued += len(orphans)
            for redis_id in orphans:
                self.broker.release(redis_id)

    def requeue(self, messages: Iterable[Any]) -> None:
        """dramatiq's requeue (acks set -> back on the queue), plus one wake-up token
        per message so an idle peer takes them at once."""
        import redis

        messages = list(messages)
        try:
            super().requeue(messages)
            if messages:
                self.broker.client.rpush(self.wake_key, *(["1"] * len(messages)))
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            # dramatiq's consumer restart puts its delay queue back through here and
            # ignores only its own connection error: redis-py's (a lost link, a full
            # server, a replica's READONLY) killed the delay queue's consumer thread
            # (no retry ran again). Left in the acks set and released, the next
            # consumer's reconciler requeues them.
            raise ConnectionClosed(exc) from None
        finally:
            for message in messages:
                self.broker.release(message.options.get(REDIS_ID_OPTION))

    def close(self) -> None:
        """Put back the messages fetched into ``message_cache`` but never handed to
        a worker thread (graceful shutdown, or a consumer restart): without this they
        would sit in this broker's acks set until a peer's maintenance requeues them
        after ``heartbeat_timeout``. dramatiq's own ``_RedisConsumer`` does not do it."""
        cached, self.message_cache = self.message_cache, []
        # The cache holds decoded messages (see __next__), each with its redis id.
        ids = [m.options[REDIS_ID_OPTION] for m in cached if isinstance(m, Message)]
        try:
            if ids:
                log.debug("requeueing %d fetched message(s) on %r", len(ids), self.queue_name)
                compat.requeue(self.broker, self.queue_name, *ids)
                self.broker.client.rpush(self.wake_key, *(["1"] * len(ids)))
        except Exception:  # the next consumer's reconciler (or a peer's maintenance) requeues them
            log.warning(
                "could not requeue %d fetched message(s) on %r",
                len(ids),
                self.queue_name,
                exc_info=True,
            )
        finally:
            for redis_id in ids:  # no longer held here, requeued or not
                self.broker.release(redis_id)
            super().close()

    def _block_seconds(self) -> float:
        seconds: float = self.timeout / 1000  # an untyped attribute of dramatiq's consumer
        if self.queue_name.endswith(".DQ") and self.outstanding_message_count:
            seconds = min(seconds, 0.05)  # delayed messages wait in memory for their eta
        return seconds

    def __next__(self) -> MessageProxy | None:
        broker: MemworkerBroker = self.broker
        batches = broker.batches
        if batches is not None and batches.queue_name != self.queue_name:
            batches = None  # the delay queue's consumer
        if batches is not None:
            batches.wake = self._slot.set
        try:
            if time.monotonic() >= self._next_reconcile:
                self._reconcile()
                self._next_reconcile = time.monotonic() + RECONCILE_INTERVAL_S
            while True:
                if batches is not None:
                    self.message_cache.extend(batches.handed_back())
                if self.message_cache:
                    message = self.message_cache.pop(0)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                # Worker threads take up to ``prefetch`` messages; the batched path
                # takes as many more as its in-flight limits leave room for.
                free = max(0, self.prefetch - self.outstanding_message_count)
                free += batches.room() if batches is not None else 0
                if free <= 0:
                    # Busy: wait for a slot (an ack/nack), keep the heartbeat fresh.
                    self._slot.wait(self.timeout / 1000)
                    self._slot.clear()
                    if time.monotonic() - self._last_dispatch >= HEALTH_INTERVAL_MS / 1000:
                        compat.heartbeat(broker, self.queue_name)
                        self._last_dispatch = time.monotonic()
                    return None
                messages = compat.fetch(broker, self.queue_name, free)
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
        options) and cache them, then dead-letter the undecodable ones and those whose
        envelope this worker cannot run (:meth:`_fault`; if that fails, they stay
        unheld in the acks set, and the reconciler requeues them)."""
        decoded: list[tuple[Message[Any], int]] = []
        bad: list[tuple[bytes, str]] = []
        for data in fetched:
            if data is None:
                continue
            message = compat.decode_message(data)
            try:
                fault = "DecodeError: undecodable message" if message is None else self._fault(message)
            except Exception as exc:  # a check that raises must not stop the fetch (it came back every second)
                log.error("checking a fetched message on %r raised %s", self.queue_name, type(exc).__name__)
                fault = "JobPayloadError: the message's envelope is malformed"
            if message is None or fault is not None:
                bad.append((data if isinstance(data, bytes) else str(data).encode(), str(fault)))
            else:
                decoded.append((message, len(data)))
        self.broker.hold(m.options[REDIS_ID_OPTION] for m, _ in decoded)
        batches = self.broker.batches
        if batches is not None and batches.queue_name == self.queue_name:
            self.message_cache = batches.offer(decoded)
        else:
            self.message_cache = [m for m, _ in decoded]
        if bad:
            for (data, fault), redis_id in zip(bad, self._ids_of([b for b, _ in bad])):
                self._reject(data, redis_id, fault)

    def _fault(self, message: Message[Any]) -> str | None:
        """Why a decoded message cannot run here, or ``None``. Every message a producer
        writes passes; a crafted or corrupted envelope does not, and dramatiq would
        mishandle it: another queue's name killed the worker thread (dramatiq looks
        its consumer up by that name), the delay queue's was redelivered forever, an
        unknown actor or odd arguments failed as if transient (retried)."""
        if message.queue_name != self.queue_name:
            return "JobPayloadError: the message names another queue"
        if not isinstance(message.actor_name, str) or message.actor_name not in self.broker.actors:
            return "JobPayloadError: the message names no actor of this worker"
        args, kwargs = message.args, message.kwargs
        if not isinstance(args, (list, tuple)) or len(args) != 1 or kwargs not in (None, {}):
            return "JobPayloadError: a job message takes exactly one argument (the job)"
        stamp = message.message_timestamp
        if (
            not isinstance(message.message_id, str)
            or isinstance(stamp, bool)
            or not isinstance(stamp, (int, float))
            # JSON's NaN: the metrics after the commit raised; an integer past a float's
            # range: math.isfinite raised in the fetch
            or not (abs(stamp) < MAX_TIMESTAMP if isinstance(stamp, int) else math.isfinite(stamp))
        ):
            return "JobPayloadError: the message's id or timestamp is malformed"
        forged = sorted(FAILURE_OPTIONS.intersection(message.options))
        if forged:  # dramatiq reads them before the actor's own
            return "JobPayloadError: the message sets dramatiq option(s) " + ", ".join(map(repr, forged))
        retries = message.options.get("retries", 0)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries < MAX_RETRIES_OPTION:
            # dramatiq's Retries adds 1 to it, the middleware reads it as a number: on
            # anything else they raised in their hooks and the failure went unreported
            return "JobPayloadError: the message's 'retries' option is not a count of retries"
        return self._eta_fault(message.options)

    def _eta_fault(self, options: dict[str, Any]) -> str | None:
        """dramatiq holds a message with an ``eta`` in this worker's memory, unacked, until
        it is due: one due in a year held its job for a year. Only the delay queue's
        messages carry one (a message moved back to its queue loses it); there it must
        be a time at most :data:`MAX_ETA_AHEAD_MS` ahead."""
        if not self.queue_name.endswith(".DQ"):
            return "JobPayloadError: the message sets dramatiq option 'eta'" if "eta" in options else None
        eta = options.get("eta")
        if (
            isinstance(eta, bool)
            or not isinstance(eta, (int, float))
            or not eta <= time.time() * 1000 + MAX_ETA_AHEAD_MS  # NaN and inf too; dramatiq reads the host clock
        ):
            return "JobPayloadError: the message's 'eta' option is not a time within a day"
        return None

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

    def _reject(self, data: bytes, redis_id: str | None, fault: str) -> None:
        """Dead-letter a message this worker cannot run (``fault`` says why), and report
        it failed to its producer when its job id and producer can be read
        (:func:`undecodable_identity`) and its pending mark is still there, in one MULTI."""
        if redis_id is None:
            log.error(
                "bad message on %r without a message id (%s); left unacked", self.queue_name, fault
            )
            return
        log.error("bad message %s on %r (%s): dead-lettered", redis_id, self.queue_name, fault)
        job_id, producer, record_ids = undecodable_identity(data)
        failure = None
        if job_id is not None and producer is not None:
            failure = failure_args(
                self.broker.keys, None, job_id, producer, record_ids,
                f"{fault} (dead-lettered)",
            )  # fmt: skip
        self.broker.dead_letter(self.queue_name, redis_id, failure)


class MemworkerBroker(compat.RedisBroker):
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
        options.setdefault("maintenance_chance", compat.MAINTENANCE_SCALE)
        client = redis_client(settings)
        super().__init__(client=client, namespace=keys.dq_namespace, **options)
        self.settings = settings
        self.keys = keys
        self.wakeups = 0
        self.woken_fetches = 0
        self.orphans_requeued = 0
        self._held: set[str] = set()
        self._unsent: dict[str, str] = {}  # redis id -> delivery field (see unsent)
        self._held_lock = threading.Lock()
        self.context: WorkerContext | None = None
        #: The batched path (:mod:`memworker.worker.batch`), set by :func:`make_broker`.
        self.batches: JobBatches | None = None

    def unsent(self, redis_id: Any, field: str | None) -> None:
        """Remember the delivery field of a message whose retry could not be enqueued
        (its count is withdrawn by the next :meth:`WakeConsumer._reconcile`)."""
        if isinstance(redis_id, str) and field:
            with self._held_lock:
                self._unsent[redis_id] = field

    def unsent_items(self) -> list[tuple[str, str]]:
        with self._held_lock:
            return list(self._unsent.items())

    def unsent_done(self, redis_ids: Iterable[str]) -> None:
        with self._held_lock:
            for redis_id in redis_ids:
                self._unsent.pop(redis_id, None)

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

    def close(self) -> None:
        if self.batches is not None:
            self.batches.close()
        super().close()

    @property
    def consumer_class(self) -> type[WakeConsumer]:
        return WakeConsumer

    def _dispatch(self, command: str) -> Callable[..., Any]:
        """dramatiq's dispatch script, given the server's clock as this worker
        estimates it (:func:`~memworker.worker.clock.server_now_ms`) instead of this
        host's: the script requeues the unacked messages of every broker whose
        heartbeat it finds ``heartbeat_timeout`` (5 s) older than the time it is given,
        so a host whose clock ran 5 s ahead would take every other worker's jobs
        (redelivered, counted against ``max_deliveries``), and one 5 s behind would
        have its own taken."""
        return compat.dispatcher(self, command, server_now_ms)

    def dead_letter(self, queue_name: str, redis_id: str, failure: list[Any] | None = None) -> None:
        """dramatiq's nack (move the message to ``<q>.XQ``) and, in the same MULTI, the
        failure bookkeeping ``failure``
        (:func:`~memworker.worker.middleware.failure_args`): the pending mark, the
        failure record, the counter and the wake-up land with the dead letter or not at
        all. Both are sent as ``EVAL`` (never ``NOSCRIPT`` inside the MULTI)."""
        with self.client.pipeline(transaction=True) as pipe:
            if failure is not None:
                pipe.execute_command("EVAL", FAIL_SCRIPT, *failure)
            pipe.execute_command("EVAL", *compat.nack_eval_args(self, queue_name, redis_id, server_now_ms()))
            pipe.execute()

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        """dramatiq's enqueue. When a retry (``delay``: only dramatiq's Retries sends
        one) cannot be enqueued, the delivery it replaces is marked so that
        :meth:`WakeConsumer.ack` leaves it for the reconciler: dramatiq logs and
        swallows the error and acked the message, and the job was lost. One that
        fails on a refusal (a permission) or an error not Valkey's fails the job."""
        try:
            return super().enqueue(message, delay=delay)
        except Exception as exc:
            if delay is not None and isinstance(message, MessageProxy):
                delivery: Any = message  # the delivery this retry replaces
                if _valkey_unavailable(exc):
                    delivery.memworker_retry_unsent = True
                else:  # a refusal, or not Valkey's: it would fail the same way every time
                    delivery.fail()
            raise

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> Any:
        with self.client.pipeline(transaction=True) as pipe:
            compat.enqueue_commands(pipe, self.namespace, queue_name, message_id, data)
            pipe.rpush(f"{self.namespace}:{queue_name}.wake", "1")
            return pipe.execute()

