"""The queue runs through the same I/O layer as the store: a transient failure is
retried, and no redis-py exception leaves MemoryQueue or the admin reads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from valkey_servers import start_server, stop_server
from memworker.errors import (
    ConnectionLostError,
    MemworkerError,
    QueueConnectionLostError,
    QueueError,
)
from memworker.queue.admin import check_health, dead_list, queue_status
from memworker.queue.producer import MemoryQueue


def _assert_memworker_error(exc: BaseException) -> None:
    import redis

    assert not isinstance(exc, redis.RedisError)
    assert isinstance(exc, MemworkerError)
    assert isinstance(exc, QueueError)
    assert not isinstance(exc, RuntimeError)
    assert type(exc).__module__.startswith("memworker")


def test_enqueue_on_a_stopped_server_raises_a_queue_error(namespace):
    """The server answers, then is stopped: enqueue, drain, pending and status raise
    a memworker error (a QueueError and a ConnectionLostError), never redis-py's."""
    server = start_server("plain")
    q = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    try:
        q.enqueue_encode(["before"])
        assert len(q.pending()) == 1
    finally:
        stop_server(server)
    calls = [
        lambda: q.enqueue_encode(["after"]),
        lambda: q.enqueue_save([{"id": "r1", "content": "x", "embedding": [0.1, 0.2]}]),
        q.pending,
        q.status,
        lambda: q.drain(timeout=1),
    ]
    for call in calls:
        with pytest.raises(QueueConnectionLostError) as info:
            call()
        _assert_memworker_error(info.value)
        assert isinstance(info.value, ConnectionLostError)
    q.close()


def test_async_enqueue_on_a_stopped_server_raises_a_queue_error(namespace):
    server = start_server("plain")
    q = MemoryQueue(server.url, namespace=namespace, producer_id="p")

    async def scenario() -> None:
        await q.aenqueue_encode(["before"])
        stop_server(server)
        with pytest.raises(QueueConnectionLostError) as info:
            await q.aenqueue_encode(["after"])
        _assert_memworker_error(info.value)
        with pytest.raises(QueueConnectionLostError):
            await q.adrain(timeout=1)
        await q.aclose()

    try:
        asyncio.run(scenario())
    finally:
        stop_server(server)


def test_admin_reads_on_an_unreachable_server(namespace):
    from valkey_servers import free_port

    url = f"valkey://127.0.0.1:{free_port()}?connect_timeout_ms=200"
    from memworker.settings import Settings

    settings = Settings.from_url(url, namespace=namespace)
    for call in (lambda: queue_status(settings), lambda: dead_list(settings)):
        with pytest.raises(QueueConnectionLostError) as info:
            call()
        _assert_memworker_error(info.value)
    assert check_health(settings) is False


def test_server_error_is_wrapped_without_retry(plain_server, namespace):
    """A server error (a key of the wrong type) surfaces at once as a QueueError."""
    import redis

    raw = redis.Redis(port=plain_server.port)
    q = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p")
    try:
        raw.set(f"{{{namespace}}}:pending:p", "not a sorted set")
        started = time.monotonic()
        with pytest.raises(QueueError, match="WRONGTYPE|wrong kind") as info:
            q.enqueue_encode(["x"])
        assert time.monotonic() - started < 1
        assert not isinstance(info.value, ConnectionLostError)
    finally:
        raw.delete(f"{{{namespace}}}:pending:p")
        q.close()
        raw.close()


def test_enqueue_is_retried_until_the_server_answers(namespace):
    """The server goes away and comes back on the same port: an enqueue made while
    it is down is retried and succeeds, once."""
    import subprocess

    from valkey_servers import valkey_binary

    server = start_server("plain", "--appendonly", "yes", "--appendfsync", "always")
    port = server.port
    q = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    q.enqueue_encode(["before"])
    server.process.kill()
    server.process.wait()
    restarted: list = []

    def restart() -> None:
        time.sleep(0.3)
        log = open(server.workdir / "restart.log", "wb")
        proc = subprocess.Popen(
            [valkey_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(server.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        restarted.append(proc)

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        q.enqueue_encode(["while down"])
        assert len(q.pending()) == 2
    finally:
        thread.join()
        q.close()
        for proc in restarted:
            proc.terminate()
            proc.wait(10)
        stop_server(server)
