"""A retry waiting in the delay queue when the worker's connection to Valkey drops
(review helper-99, 2026-12-07).

A job that fails transiently is retried after a backoff: dramatiq puts it on the delay
queue (``<queue>.DQ``), and the worker's delay-queue consumer fetches it and holds it in
memory, unacked, until it is due. On a connection error dramatiq replaces that
in-memory queue with an empty one, without putting its messages back; their ids stayed
in the broker's acks set and in its registry of held messages, so the reconciler
skipped them and no peer's maintenance took them (the broker kept its heartbeat): the
job never ran again while the worker lived, and its producer's drain timed out. A new
delay-queue consumer now puts back everything its acks set holds.

And when the link dropped just as a due retry was moved back to the queue, with another
retry waiting, dramatiq's restart put the waiting one back and failed with redis-py's
error, which it does not catch there: the delay queue's consumer thread died. A failed
put-back now raises dramatiq's own connection error (so does one that fails on a full
server).

Review helper-100 found two more with the same forwarder: a job whose attempt failed
as the link dropped, whose retry could not be enqueued either, was acked and lost; and
a job whose ack waited for the link was released at once, so the reconciler requeued
it and it ran twice; and helper-101 two in that fix: the requeued message's delivery
count (not cleared over the dead link) failed a healthy job as a poison job after
three outages, and a retry that failed to enqueue for a reason not Valkey's ran again
every 5 s forever; and helper-102 two in those: a peer that requeued the message
first left the count standing, and a cluster client's unreachable cluster (no
RedisError) failed the job for a transient outage. redis-py's own retries (a minute or so) are cut to one in these
tests, standing for an outage longer than that.

The link is cut by a TCP forwarder between the worker and a server of its own; the
producer talks to the server directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from netcut import Forwarder
from test_hostile_input import DIM, _vector

from memworker import worker as worker_mod
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings


class FailsOnce:
    """Raises a transient error the first time it sees each text marked FLAKY."""

    dimension = DIM

    def __init__(self) -> None:
        self.failed: set[str] = set()
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            new = {t for t in texts if "FLAKY" in t} - self.failed
            if new:
                self.failed |= new
                raise OSError("transient")
        return np.stack([_vector(t) for t in texts])


class CutsNTimes:
    """Counts the texts it embeds; each of the first ``n`` attempts of the text CUT
    cuts the link (restored after ``outage`` s) and fails, as its commit would with
    the link down."""

    dimension = DIM

    def __init__(self, link: Forwarder | None = None, n: int = 0, outage: float = 1.5) -> None:
        self.link, self.n, self.outage = link, n, outage
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.calls.extend(texts)
            cut = self.link is not None and "CUT" in texts and self.calls.count("CUT") <= self.n
        if cut:
            assert self.link is not None
            self.link.cut()
            threading.Timer(self.outage, self.link.restore).start()
            raise OSError("transient: the connection was lost")
        return np.stack([_vector(t) for t in texts])


@pytest.fixture
def forwarder(own_plain_server) -> Iterator[Forwarder]:
    link = Forwarder(own_plain_server.port)
    yield link
    link.close()


@contextmanager
def worker_behind(
    server: Any, link: Forwarder | None, namespace: str, model: Any, *, short_retries: bool = False,
    **options: Any,
) -> Iterator[tuple[MemoryQueue, Any, Any]]:
    """A producer on ``server`` and a worker (2 threads, the per-message path, the
    embedder ``model``) that reaches it through ``link`` (directly when ``None``).

    ``short_retries``: redis-py retries a command 10 times with backoff (a minute or
    so): one retry stands for an outage longer than that."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    worker_mod.set_embedder_factory(lambda: model)
    direct = Settings.from_url(server.url, namespace=namespace, search_mode="exact")
    linked = direct if link is None else Settings.from_url(
        f"redis://127.0.0.1:{link.port}", namespace=namespace, search_mode="exact"
    )
    try:
        with MemoryQueue(direct, producer_id="p") as q:
            with worker_mod.running_worker(
                linked, threads=2, worker_timeout_ms=100, inflight_records=0, **options
            ) as (broker, worker):
                if short_retries:
                    broker.client.set_retry(Retry(NoBackoff(), 1))
                yield q, broker, worker
    finally:
        worker_mod.set_embedder_factory(None)


def dq_acks(broker: Any, namespace: str) -> str:
    """The set of the delay queue's messages this worker fetched and holds."""
    return f"{broker.namespace}:__acks__.{broker.broker_id}.{QueueKeys(namespace).queue}.DQ"


def flaky_retries_waiting(q: MemoryQueue, broker: Any, namespace: str, n: int) -> list[str]:
    """Enqueue ``n`` jobs that fail once, one at a time (each fails alone), until each
    retry is held by the delay queue's consumer; their job ids."""
    jobs = []
    for k in range(n):
        jobs.append(q.enqueue_encode_job([{"id": f"r{k}", "content": f"FLAKY {k}"}])[0])
        deadline = time.monotonic() + 30
        while broker.client.scard(dq_acks(broker, namespace)) <= k:
            assert time.monotonic() < deadline, "the retry never reached the delay queue"
            time.sleep(0.02)
    return jobs


def fault_at_first_move(broker: Any, fault: Any) -> list[str]:
    """Run ``fault()`` as the delay queue's consumer moves the first due retry back to
    the queue, right before it enqueues it there; the ids moved so far."""
    enqueue, moves = broker.enqueue, []

    def move_back(message: Any, *, delay: int | None = None) -> Any:
        if delay is None and message.options.get("retries") and not moves:
            moves.append(message.message_id)
            fault()
        return enqueue(message, delay=delay)

    broker.enqueue = move_back
    return moves


def wait_moved(moves: list[str]) -> None:
    deadline = time.monotonic() + 30
    while not moves:
        assert time.monotonic() < deadline, "no retry was moved back"
        time.sleep(0.05)


def test_a_retry_held_in_the_delay_queue_runs_after_a_connection_blip(own_plain_server, forwarder) -> None:
    with worker_behind(
        own_plain_server, forwarder, "blip", FailsOnce(), max_retries=5, min_backoff_ms=12_000,
        max_backoff_ms=12_000,
    ) as (q, broker, _):  # fmt: skip
        (job,) = flaky_retries_waiting(q, broker, "blip", 1)  # held until due (6-12 s)
        forwarder.cut()
        time.sleep(5)  # past the client's own reconnect attempts: the consumers restart
        forwarder.restore()
        good, _ = q.enqueue_encode_job([{"id": "g", "content": "after the blip"}])
        report = q.drain(timeout=45, job_ids=[job, good])
        assert report.committed == 2 and not report.failed, report
        assert not broker.client.scard(dq_acks(broker, "blip"))


def test_a_retry_due_while_the_link_is_down_runs_when_it_is_back(own_plain_server, forwarder) -> None:
    """The link drops just as the delay-queue consumer moves a due retry back to the
    queue, while another retry waits: the move fails, and dramatiq's restart then puts
    the waiting one back, which failed too with redis-py's own error (dramatiq only
    ignores its own connection error there): the consumer thread died, and no retry
    ran again while the worker lived. The link is cut from inside the move, so the
    fault falls exactly there."""

    def outage() -> None:
        forwarder.cut()
        threading.Timer(5, forwarder.restore).start()

    with worker_behind(
        own_plain_server, forwarder, "blip2", FailsOnce(), short_retries=True, max_retries=5,
        min_backoff_ms=6_000, max_backoff_ms=12_000,
    ) as (q, broker, worker):  # fmt: skip
        jobs = flaky_retries_waiting(q, broker, "blip2", 2)
        wait_moved(fault_at_first_move(broker, outage))
        time.sleep(6)  # the link is back
        jobs.append(q.enqueue_encode_job([{"id": "r2", "content": "FLAKY 2"}])[0])  # a retry after
        report = q.drain(timeout=60, job_ids=jobs)
        alive = {name: t.is_alive() for name, t in worker.consumers.items()}
    assert report.committed == 3 and not report.failed, report
    assert all(alive.values()), alive


def test_a_full_server_while_a_retry_moves_back_does_not_kill_the_delay_queue(own_plain_server) -> None:
    """As the test above, with the server out of memory (maxmemory, noeviction) instead
    of the link down: the put-back raised redis-py's OutOfMemoryError, which is no
    connection error, and the delay queue's consumer thread died (review helper-100)."""
    import redis

    raw = redis.Redis(host="127.0.0.1", port=own_plain_server.port)
    limit = raw.config_get("maxmemory")["maxmemory"]

    def full() -> None:  # for 3 s
        raw.config_set("maxmemory", 1)
        threading.Timer(3, raw.config_set, ("maxmemory", limit)).start()

    try:
        with worker_behind(
            own_plain_server, None, "dqoom", FailsOnce(), max_retries=5, min_backoff_ms=6_000,
            max_backoff_ms=12_000,
        ) as (q, broker, worker):  # fmt: skip
            jobs = flaky_retries_waiting(q, broker, "dqoom", 2)
            wait_moved(fault_at_first_move(broker, full))
            report = q.drain(timeout=60, job_ids=jobs)
            alive = {name: t.is_alive() for name, t in worker.consumers.items()}
        assert report.committed == 2 and not report.failed, report
        assert all(alive.values()), alive
    finally:
        raw.config_set("maxmemory", limit)
        raw.close()


def test_a_retry_that_cannot_be_enqueued_is_not_acked_away(own_plain_server, forwarder) -> None:
    """A job's attempt fails because the link dropped, and dramatiq's Retries cannot
    enqueue the retry either: dramatiq logged and swallowed that, then acked the
    message once the link was back. No retry, no dead letter, no failure: the job was
    lost, its drain timed out ("the jobs' messages are gone"; review helper-100). The
    message now stays in the acks set, and the reconciler requeues it."""
    model = CutsNTimes(forwarder, 1, outage=5)
    with worker_behind(
        own_plain_server, forwarder, "lostretry", model, short_retries=True, max_retries=5,
        min_backoff_ms=500, max_backoff_ms=1000,
    ) as (q, _, _):  # fmt: skip
        job, _ = q.enqueue_encode_job([{"id": "r", "content": "CUT"}])
        report = q.drain(timeout=40, job_ids=[job])
    assert report.committed == 1 and not report.failed, report
    assert model.calls == ["CUT", "CUT"]


def test_unsent_retries_do_not_count_towards_the_poison_guard(own_plain_server, forwarder) -> None:
    """Three attempts of one job fail with the link down (max_retries 5): each retry
    could not be enqueued, and each attempt's delivery count could not be cleared over
    the dead link, so the requeued message's next delivery counted on: the fourth was
    failed as a poison job ("delivered 4 times without finishing: it may crash its
    worker"; review helper-101). The count is cleared when the message is requeued."""
    model = CutsNTimes(forwarder, 3)
    with worker_behind(
        own_plain_server, forwarder, "poison3", model, short_retries=True, max_retries=5,
        min_backoff_ms=500, max_backoff_ms=1000,
    ) as (q, _, _):  # fmt: skip
        job, _ = q.enqueue_encode_job([{"id": "r", "content": "CUT"}])
        report = q.drain(timeout=60, job_ids=[job])
    assert report.committed == 1 and not report.failed, report
    assert model.calls.count("CUT") == 4


def test_a_job_whose_ack_waits_for_the_link_is_not_run_again(own_plain_server, forwarder) -> None:
    """The link drops as a committed job is acked: dramatiq retries the ack every 5 s
    until the link is back, but the message was released at once, so the restarted
    consumer's reconciler took it for a lost fetch and requeued it: the job ran twice
    (its second commit wrote nothing; review helper-100). It stays held while its ack
    is retried."""
    model = CutsNTimes()
    with worker_behind(own_plain_server, forwarder, "ackdup", model, short_retries=True) as (q, broker, _):
        do_ack, acks = broker.do_ack, []

        def cut_at_first_ack(queue_name: str, *ids: str) -> Any:
            acks.append(ids)
            if len(acks) == 1:
                forwarder.cut()
                threading.Timer(1.5, forwarder.restore).start()
            return do_ack(queue_name, *ids)

        broker.do_ack = cut_at_first_ack
        job, _ = q.enqueue_encode_job([{"id": "r", "content": "ONCE"}])
        report = q.drain(timeout=30, job_ids=[job])
        time.sleep(8)  # past the ack's retry and a reconcile
        requeued = broker.orphans_requeued
    assert report.committed == 1 and not report.failed, report
    assert model.calls == ["ONCE"], model.calls
    assert requeued == 0


def test_a_retry_that_fails_to_enqueue_for_another_reason_fails_the_job(own_plain_server) -> None:
    """A retry whose enqueue fails for a reason that is not Valkey's (here a middleware
    that raises, standing for a bug) would fail the same way every time: left for the
    reconciler, the job ran again every 5 s, forever, and its drain timed out (review
    helper-101). It is failed and reported."""
    from dramatiq.middleware import Middleware, MiddlewareError

    class Buggy(Middleware):
        def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            if delay is not None:
                raise MiddlewareError("a bug in a before_enqueue hook")

    class AlwaysFails:
        dimension = DIM

        def encode(self, texts: list[str]) -> np.ndarray:
            raise OSError("transient, forever")

    with worker_behind(
        own_plain_server, None, "bugloop", AlwaysFails(), max_retries=3, min_backoff_ms=100,
        max_backoff_ms=200,
    ) as (q, broker, _):  # fmt: skip
        broker.add_middleware(Buggy())
        job, _ = q.enqueue_encode_job([{"id": "r", "content": "X"}])
        report = q.drain(timeout=30, job_ids=[job])
    assert [f.job_id for f in report.failed] == [job], report


def test_a_peer_requeueing_an_unsent_retry_leaves_only_its_own_delivery_counted(own_plain_server) -> None:
    """Worker A's retry of a job could not be enqueued (its link down for longer than
    the heartbeat timeout); a peer B's maintenance requeues A's message and delivers
    it. A cleared the attempt's count only for messages its own reconciler requeued,
    so B's delivery counted on A's (2 after one outage: a poison job after three), and
    A remembered the message for good (review helper-102). A now withdraws its own
    delivery whoever requeued the message."""
    from dramatiq.broker import MessageProxy
    from dramatiq.message import Message

    from memworker.worker import _dramatiq_compat as compat
    from memworker.worker.broker import MemworkerBroker, WakeConsumer

    settings = Settings.from_url(own_plain_server.url, namespace="peerunsent", search_mode="exact")
    a, b = MemworkerBroker(settings), MemworkerBroker(settings)
    try:
        a.enqueue(Message(queue_name="default", actor_name="x", args=({"j": 1},), kwargs={}, options={}))
        msg = compat.decode_message(compat.fetch(a, "default", 1)[0])
        rid, field = msg.options["redis_message_id"], f"{msg.message_id}:0"
        a.client.hincrby(a.keys.deliveries, field, 1)  # A's delivery (before_process_message)
        consumer = WakeConsumer(a, "default", prefetch=1, timeout=100)
        a.hold([rid])
        delivery: Any = MessageProxy(msg)
        delivery.memworker_retry_unsent, delivery.memworker_delivery = True, field
        consumer.ack(delivery)  # the retry could not be enqueued; the count stayed (dead link)
        a.client.zadd(a.keys.heartbeats, {a.broker_id: 0})  # A silent past the heartbeat timeout
        fetched = compat.fetch(b, "default", 1)  # B's maintenance requeues A's acks; B takes it
        assert compat.decode_message(fetched[0]).options["redis_message_id"] == rid
        b.client.hincrby(b.keys.deliveries, field, 1)  # B's delivery
        consumer._reconcile()  # A's link is back
        assert a.client.hget(a.keys.deliveries, field) == b"1"  # B's delivery alone
        assert a.unsent_items() == []
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("error", "unsent"),
    [("RedisClusterUnreachableError", True), ("ClusterDownError", True), ("OutOfMemoryError", True),
     ("ReadOnlyError", True), ("BusyLoadingError", True), ("ConnectionError", True), ("TimeoutError", True),
     ("NoPermissionError", False), ("ResponseError", False), ("DataError", False)],
)  # fmt: skip
def test_a_retry_unsent_for_valkey_is_requeued_and_for_a_refusal_fails_the_job(monkeypatch, error, unsent) -> None:
    """A retry whose enqueue met an outage of Valkey's (a cluster client's unreachable
    cluster is no RedisError: it failed the job for a transient outage, review
    helper-102) is left for the reconciler; a permission refusal, another error reply
    or a client-side error would come back every time (the job would run again every
    5 s, forever), and fails the job."""
    import redis.exceptions as rex
    from dramatiq.broker import MessageProxy
    from dramatiq.message import Message

    from memworker.worker import _dramatiq_compat as compat
    from memworker.worker.broker import MemworkerBroker

    exc = getattr(rex, error)
    text = {
        "NoPermissionError": "NOPERM this user has no permissions to run the 'evalsha' command",
        "ResponseError": "ERR unknown command 'evalsha'",
        "ClusterDownError": "CLUSTERDOWN The cluster is down",
        "OutOfMemoryError": "OOM command not allowed when used memory > 'maxmemory'.",
        "ReadOnlyError": "READONLY You can't write against a read only replica.",
        "BusyLoadingError": "LOADING Valkey is loading the dataset in memory",
    }.get(error, "x")

    def refuse(self: Any, message: Any, *, delay: Any = None) -> None:
        raise exc(text)

    monkeypatch.setattr(compat.RedisBroker, "enqueue", refuse)
    broker = object.__new__(MemworkerBroker)  # no connection: the classification alone
    delivery: Any = MessageProxy(Message(queue_name="default", actor_name="a", args=(1,), kwargs={}, options={}))
    with pytest.raises(exc):
        MemworkerBroker.enqueue(broker, delivery, delay=100)
    assert getattr(delivery, "memworker_retry_unsent", False) is unsent
    assert delivery.failed is not unsent
