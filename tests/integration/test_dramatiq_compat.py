"""Contract of memworker.worker._dramatiq_compat with the installed dramatiq, on a real
server: the key layout, message options and dispatch commands memworker assumes are
exactly what dramatiq's own ``RedisBroker`` writes and reads, both ways."""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import xq_name

from memworker.settings import Settings
from memworker.worker import _dramatiq_compat as compat
from memworker.worker.broker import MemworkerBroker

QUEUE = "compat"


@pytest.fixture
def client(plain_server: Any) -> Any:
    c = redis.Redis(host="127.0.0.1", port=plain_server.port)
    yield c
    c.close()


@pytest.fixture
def dramatiq_broker(client: Any) -> Any:
    """dramatiq's own RedisBroker on a fresh namespace."""
    broker = RedisBroker(client=client, namespace=f"compat-{uuid.uuid4().hex[:8]}")
    broker.declare_queue(QUEUE)
    yield broker
    broker.close()


def _message(text: str = "hello") -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE,
        actor_name="save_records",
        args=({"job": "j1", "producer": "p1", "items": [{"id": "r1", "content": text}]},),
        kwargs={},
        options={},
    )


def _dump(client: Any, namespace: str) -> dict[str, tuple[str, Any]]:
    """Every key of a namespace (but dramatiq's heartbeats) as (type, contents); sorted
    sets by members only (their scores are timestamps)."""
    out: dict[str, tuple[str, Any]] = {}
    for key in client.scan_iter(match=f"{namespace}:*"):
        name = key.decode()[len(namespace) + 1 :]
        if name.startswith("__heartbeats__"):
            continue
        kind = client.type(key).decode()
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = set(client.zrange(key, 0, -1))
        else:
            value = client.get(key)
        out[name] = (kind, value)
    return out


def test_enqueue_layout_is_dramatiqs(client: Any, dramatiq_broker: Any) -> None:
    """dramatiq's enqueue writes exactly the keys enqueue_commands writes, named by
    queue_key and msgs_key, with the redis id in the options decode_message reads."""
    ns_a = dramatiq_broker.namespace
    sent = dramatiq_broker.enqueue(_message())
    redis_id = sent.options[compat.REDIS_ID_OPTION]
    data = client.hget(compat.msgs_key(ns_a, QUEUE), redis_id)
    assert data is not None
    assert _dump(client, ns_a) == {
        QUEUE: ("list", [redis_id.encode()]),
        f"{QUEUE}.msgs": ("hash", {redis_id.encode(): data}),
    }
    assert compat.queue_key(ns_a, QUEUE) == f"{ns_a}:{QUEUE}"
    decoded = compat.decode_message(data)
    assert decoded is not None
    assert decoded.options[compat.REDIS_ID_OPTION] == redis_id
    assert decoded.message_id == sent.message_id

    ns_b = f"compat-{uuid.uuid4().hex[:8]}"
    with client.pipeline(transaction=True) as pipe:
        compat.enqueue_commands(pipe, ns_b, QUEUE, redis_id, data)
        pipe.execute()
    assert _dump(client, ns_b) == _dump(client, ns_a)


def test_decode_message_refuses_what_has_no_redis_id() -> None:
    assert compat.decode_message(b"not a message") is None
    assert compat.decode_message(_message().encode()) is None  # never enqueued: no id


def test_fetch_acks_requeue_and_nack_are_dramatiqs(client: Any, dramatiq_broker: Any) -> None:
    """fetch fills acks_key; requeue puts the id back; nack_eval_args dead-letters it
    exactly as dramatiq's own nack does."""
    broker = dramatiq_broker
    ns = broker.namespace
    acks = compat.acks_key(ns, broker.broker_id, QUEUE)
    redis_id = broker.enqueue(_message()).options[compat.REDIS_ID_OPTION]
    data = client.hget(compat.msgs_key(ns, QUEUE), redis_id)

    assert compat.fetch(broker, QUEUE, 10) == [data]
    assert client.smembers(acks) == {redis_id.encode()}
    assert client.llen(compat.queue_key(ns, QUEUE)) == 0
    compat.heartbeat(broker, QUEUE)
    assert client.smembers(acks) == {redis_id.encode()}

    compat.requeue(broker, QUEUE, redis_id)
    assert client.smembers(acks) == set()
    assert client.lrange(compat.queue_key(ns, QUEUE), 0, -1) == [redis_id.encode()]

    assert compat.fetch(broker, QUEUE, 10) == [data]
    with client.pipeline(transaction=True) as pipe:
        pipe.execute_command("EVAL", *compat.nack_eval_args(broker, QUEUE, redis_id))
        pipe.execute()
    ours = _dump(client, ns)

    # The same through dramatiq's own nack, on another namespace.
    other = RedisBroker(client=client, namespace=f"compat-{uuid.uuid4().hex[:8]}")
    try:
        other_id = other.enqueue(_message()).options[compat.REDIS_ID_OPTION]
        other.do_fetch(QUEUE, 10)
        other.do_nack(QUEUE, other_id)
        theirs = _dump(client, other.namespace)
    finally:
        other.close()
    rename = {other_id.encode(): redis_id.encode()}
    theirs = {
        k: (t, {rename.get(m, m) for m in v} if t == "zset" else v)
        for k, (t, v) in theirs.items()
    }
    assert set(ours) == set(theirs) == {f"{xq_name(QUEUE)}", f"{xq_name(QUEUE)}.msgs"}
    assert ours[xq_name(QUEUE)] == theirs[xq_name(QUEUE)]
    assert ours[f"{xq_name(QUEUE)}.msgs"] == ("hash", {redis_id.encode(): data})
    assert client.smembers(acks) == set()


def test_ack_commands_are_dramatiqs_ack_for_many(client: Any, dramatiq_broker: Any) -> None:
    """ack_commands (run inside the batched commit) leaves the keys exactly as
    dramatiq's own ack of each message does: ids out of the acks set, bodies gone."""
    broker = dramatiq_broker
    ns = broker.namespace
    ids = [broker.enqueue(_message(f"m{i}")).options[compat.REDIS_ID_OPTION] for i in range(3)]
    assert len(compat.fetch(broker, QUEUE, 10)) == 3
    with client.pipeline(transaction=True) as pipe:
        for command in compat.ack_commands(ns, broker.broker_id, QUEUE, ids[:2]):
            pipe.execute_command(*command)
        pipe.execute()
    ours = _dump(client, ns)

    other = RedisBroker(client=client, namespace=f"compat-{uuid.uuid4().hex[:8]}")
    try:
        other_ids = [other.enqueue(_message(f"m{i}")).options[compat.REDIS_ID_OPTION] for i in range(3)]
        other.do_fetch(QUEUE, 10)
        for redis_id in other_ids[:2]:
            other.do_ack(QUEUE, redis_id)
        theirs = _dump(client, other.namespace)
    finally:
        other.close()
    acks = f"__acks__.{broker.broker_id}.{QUEUE}"
    other_acks = f"__acks__.{other.broker_id}.{QUEUE}"
    assert set(ours) == {acks, f"{QUEUE}.msgs"} and set(theirs) == {other_acks, f"{QUEUE}.msgs"}
    assert ours[acks] == ("set", {ids[2].encode()})
    assert theirs[other_acks] == ("set", {other_ids[2].encode()})
    assert set(ours[f"{QUEUE}.msgs"][1]) == {ids[2].encode()}
    assert set(theirs[f"{QUEUE}.msgs"][1]) == {other_ids[2].encode()}


def test_consumer_class_is_dramatiqs(dramatiq_broker: Any) -> None:
    """RedisConsumer is the class dramatiq's broker consumes with, and has the
    attributes WakeConsumer relies on."""
    consumer = dramatiq_broker.consume(QUEUE, prefetch=2, timeout=100)
    try:
        assert type(consumer) is compat.RedisConsumer
        for name in ("message_cache", "queued_message_ids", "prefetch", "timeout", "queue_name"):
            assert hasattr(consumer, name), name
        assert consumer.outstanding_message_count == 0
        assert (consumer.prefetch, consumer.timeout, consumer.queue_name) == (2, 100, QUEUE)
    finally:
        consumer.close()
    assert isinstance(compat.MAINTENANCE_SCALE, int) and compat.MAINTENANCE_SCALE > 0


def test_dramatiqs_consumer_fetches_what_memworker_enqueues(
    plain_server: Any, client: Any
) -> None:
    """A message enqueued by MemworkerBroker (wake token included) is fetched, decoded
    and acked by dramatiq's own consumer."""
    settings = Settings.from_url(plain_server.url, namespace=f"compat{uuid.uuid4().hex[:8]}")
    ours = MemworkerBroker(settings)
    plain = RedisBroker(client=client, namespace=ours.namespace)
    try:
        plain.declare_queue(QUEUE)
        sent = ours.enqueue(_message("from memworker"))
        assert client.llen(f"{ours.namespace}:{QUEUE}.wake") == 1
        consumer = plain.consume(QUEUE, prefetch=1, timeout=100)
        try:
            got = None
            deadline = time.monotonic() + 10
            while got is None and time.monotonic() < deadline:
                got = next(consumer)
            assert got is not None
            assert got.message_id == sent.message_id
            assert got.args == sent.args
            assert got.options[compat.REDIS_ID_OPTION] == sent.options[compat.REDIS_ID_OPTION]
            consumer.ack(got)
        finally:
            consumer.close()
        assert client.hlen(compat.msgs_key(ours.namespace, QUEUE)) == 0
        assert client.scard(compat.acks_key(ours.namespace, plain.broker_id, QUEUE)) == 0
    finally:
        plain.close()
        ours.close()


def test_message_exception_is_what_dramatiq_stored() -> None:
    """The exception dramatiq's worker stores on a failed message is the one
    message_exception reads (BarrierMiddleware records it with the failure)."""
    from dramatiq.broker import MessageProxy

    proxy = MessageProxy(_message())
    assert compat.message_exception(proxy) is None
    error = ValueError("boom")
    proxy.stuff_exception(error)
    assert compat.message_exception(proxy) is error


def test_a_worker_whose_clock_runs_ahead_leaves_other_workers_messages(
    plain_server: Any, client: Any, monkeypatch: Any
) -> None:
    """dramatiq's dispatch script requeues the unacked messages of every broker whose
    heartbeat is older than ``heartbeat_timeout`` (5 s) by the time it is given. A
    worker's broker gives it the server's clock as the worker estimates it: one whose
    host clock runs an hour ahead, with maintenance on every call, leaves a message
    another worker fetched where it is; given its host's clock, it takes it."""
    from memworker.worker import clock

    monkeypatch.setattr(clock, "_offset_ms", 0.0)  # restored after the test
    settings = Settings.from_url(plain_server.url, namespace=f"compat{uuid.uuid4().hex[:8]}")
    ours = MemworkerBroker(settings)
    other = RedisBroker(client=client, namespace=ours.namespace)
    try:
        other.declare_queue(QUEUE)
        redis_id = other.enqueue(_message()).options[compat.REDIS_ID_OPTION]
        assert len(compat.fetch(other, QUEUE, 10)) == 1  # held by the other worker
        acks = compat.acks_key(ours.namespace, other.broker_id, QUEUE)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this host's clock, an hour ahead
        clock.learn_offset(ours.client)  # what each health beat of the worker does
        assert ours._should_do_maintenance("fetch")  # maintenance on every call
        assert compat.fetch(ours, QUEUE, 10) == []
        assert client.smembers(acks) == {redis_id.encode()}
        # Without the offset (the host's clock, as dramatiq's own broker uses): taken.
        monkeypatch.setattr(clock, "_offset_ms", 0.0)
        assert len(compat.fetch(ours, QUEUE, 10)) == 1
        assert client.smembers(acks) == set()
    finally:
        other.close()
        ours.close()


def test_a_worker_started_on_a_host_whose_clock_runs_ahead_takes_no_other_workers_message(
    plain_server: Any, client: Any, monkeypatch: Any
) -> None:
    """The same from a worker's start: its consumers' first fetches run the dispatch
    script's maintenance, so the server's clock must be known before dramatiq starts
    them (``before_worker_boot``). Learnt with the first health beat (after the boot),
    a worker started on a host an hour ahead took every other live worker's unacked
    messages at once, to be delivered twice."""
    from memworker.worker import clock
    from memworker.worker.process import running_worker

    monkeypatch.setattr(clock, "_offset_ms", 0.0)  # restored after the test
    settings = Settings.from_url(plain_server.url, namespace=f"compat{uuid.uuid4().hex[:8]}")
    probe = MemworkerBroker(settings)
    namespace = probe.namespace
    probe.close()
    other = RedisBroker(client=client, namespace=namespace)
    try:
        other.declare_queue("default")
        message = dramatiq.Message(queue_name="default", actor_name="save_records", args=(), kwargs={}, options={})
        redis_id = other.enqueue(message).options[compat.REDIS_ID_OPTION]
        assert len(compat.fetch(other, "default", 10)) == 1  # held by the other (live) worker
        acks = compat.acks_key(namespace, other.broker_id, "default")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this host's clock, an hour ahead
        heartbeats = f"{namespace}:__heartbeats__"
        with running_worker(settings, threads=1, worker_timeout_ms=100) as (ours, _):
            deadline = time.monotonic() + 60
            # our broker's heartbeat is stamped by the same script call as its maintenance
            while client.zscore(heartbeats, ours.broker_id) is None:
                assert time.monotonic() < deadline, "the worker never fetched"
                time.sleep(0.02)
            assert client.smembers(acks) == {redis_id.encode()}
            assert client.hexists(f"{namespace}:default.msgs", redis_id)
    finally:
        other.close()
