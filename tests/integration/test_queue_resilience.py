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


def test_server_error_is_wrapped_without_retry(plain_server, namespace, monkeypatch):
    """A server error (a key of the wrong type) surfaces at once as a QueueError: no
    retry (counted as the backoffs the driver asks for, never by elapsed time)."""
    import redis

    import memworker.io.redispy as redispy

    backoffs: list[int] = []
    real_backoff = redispy.backoff
    monkeypatch.setattr(redispy, "backoff", lambda attempt: backoffs.append(attempt) or real_backoff(attempt))
    raw = redis.Redis(port=plain_server.port)
    q = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p")
    try:
        raw.set(f"{{{namespace}}}:pending:p", "not a sorted set")
        with pytest.raises(QueueError, match="WRONGTYPE|wrong kind") as info:
            q.enqueue_encode(["x"])
        assert backoffs == []
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


def _clients(raw) -> int:
    """Connections the server holds, less the inspecting client's own."""
    return len(raw.client_list()) - 1


def test_a_script_error_reply_leaves_its_connection_in_use(own_plain_server, namespace):
    """The queue's scripts run on connections the driver keeps between calls. A server
    error reply is read whole, so its connection serves the next call: no new
    connection, no stale reply."""
    import redis

    server = own_plain_server
    raw = redis.Redis(port=server.port)
    q = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    try:
        q.enqueue_encode(["first"])
        held = _clients(raw)
        raw.set(f"{{{namespace}}}:pending:p", "not a sorted set")
        with pytest.raises(QueueError, match="WRONGTYPE|wrong kind"):
            q.enqueue_encode(["refused"])
        raw.delete(f"{{{namespace}}}:pending:p")
        jobs = [q.enqueue_encode_job([f"after {i}"])[0] for i in range(20)]
        assert sorted(q.pending()) == sorted(jobs)  # each reply matched its own call
        assert _clients(raw) == held
    finally:
        q.close()
        raw.close()


def test_killed_script_connections_are_replaced_and_the_call_retried(own_plain_server, namespace):
    """CLIENT KILL of every connection the producer holds: the next enqueue fails on
    the dead socket, is retried on a new connection and lands once."""
    import redis

    server = own_plain_server
    raw = redis.Redis(port=server.port)
    q = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    try:
        q.enqueue_encode(["before"])
        assert raw.client_kill_filter(_type="normal", skipme=True) >= 1
        q.enqueue_encode(["after the kill"])
        assert len(q.pending()) == 2
        queued = raw.hlen(q.keys.msgs())
        assert queued == 2
    finally:
        q.close()
        raw.close()


def test_close_disconnects_the_script_connections(own_plain_server, namespace):
    import redis

    server = own_plain_server
    raw = redis.Redis(port=server.port)
    q = MemoryQueue(server.url, namespace=namespace, producer_id="p")
    try:
        threads = [threading.Thread(target=q.enqueue_encode, args=([f"t{i}"],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _clients(raw) >= 1
        q.close()
        deadline = time.monotonic() + 5
        while _clients(raw) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _clients(raw) == 0
        q.enqueue_encode(["after close"])  # the next call connects again
        assert len(q.pending()) == 9
    finally:
        q.close()
        raw.close()


def _unknown_op(op: str):
    """A plan of one script call that the server refuses with an error naming ``op``:
    each call's reply is its own, so a reply read by the wrong caller shows."""
    from memworker.io.plan import Script

    yield Script("queue", [op])


def _calls_answer_themselves(driver, who: str, n: int) -> bool:
    for i in range(n):
        op = f"{who}-{i}"
        try:
            driver.run(_unknown_op(op))
        except QueueError as exc:
            if not str(exc).endswith(f"UNKNOWNOP {op}"):
                return False
        else:
            return False
    return True


def test_a_forked_child_uses_its_own_connections(own_plain_server):
    """A driver forked after its first call: parent and child call at once without
    sharing a socket (a shared one hands one's reply to the other, or leaves one
    waiting for a reply the other read)."""
    import os
    import signal

    from memworker.io.plan import QUEUE_ERRORS
    from memworker.io.redispy import RedisSyncDriver
    from memworker.settings import Settings

    server = own_plain_server
    driver = RedisSyncDriver(Settings.from_url(server.url), QUEUE_ERRORS)
    try:
        assert _calls_answer_themselves(driver, "before", 3)
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                signal.alarm(30)  # a reply taken by the parent would leave the child waiting
                code = 0 if _calls_answer_themselves(driver, "child", 2_000) else 2
            finally:
                os._exit(code)
        result: list[bool] = []
        parent = threading.Thread(
            target=lambda: result.append(_calls_answer_themselves(driver, "parent", 2_000)), daemon=True
        )
        parent.start()
        parent.join(30)
        _, status = os.waitpid(pid, 0)
        assert result == [True]
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        driver.close()
