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
put-back now raises dramatiq's own connection error.

The link is cut by a TCP forwarder between the worker and a server of its own; the
producer talks to the server directly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from test_hostile_input import DIM, _vector

from memworker import worker as worker_mod
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings


class Forwarder:
    """Forwards 127.0.0.1:<port> to the server; ``cut()`` resets every connection and
    refuses new ones until ``restore()``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.down.is_set():
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


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


@pytest.fixture
def forwarder(own_plain_server) -> Iterator[Forwarder]:
    link = Forwarder(own_plain_server.port)
    yield link
    link.close()


def test_a_retry_held_in_the_delay_queue_runs_after_a_connection_blip(own_plain_server, forwarder) -> None:
    import redis

    namespace = "blip"
    model = FailsOnce()
    worker_mod.set_embedder_factory(lambda: model)
    direct = Settings.from_url(own_plain_server.url, namespace=namespace, search_mode="exact")
    linked = Settings.from_url(f"redis://127.0.0.1:{forwarder.port}", namespace=namespace, search_mode="exact")
    raw = redis.Redis(host="127.0.0.1", port=own_plain_server.port)
    try:
        with MemoryQueue(direct, producer_id="p") as q:
            job, _ = q.enqueue_encode_job([{"id": "r", "content": "FLAKY once"}])
            with worker_mod.running_worker(
                linked, threads=2, worker_timeout_ms=100, inflight_records=0,
                max_retries=5, min_backoff_ms=12_000, max_backoff_ms=12_000,
            ) as (broker, _):  # fmt: skip
                dq_acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{QueueKeys(namespace).queue}.DQ"
                deadline = time.monotonic() + 30
                while not raw.scard(dq_acks):  # the retry, fetched and held until due (6-12 s)
                    assert time.monotonic() < deadline, "the retry never reached the delay queue"
                    time.sleep(0.05)
                assert model.failed
                forwarder.cut()
                time.sleep(5)  # past the client's own reconnect attempts: the consumers restart
                forwarder.restore()
                good, _ = q.enqueue_encode_job([{"id": "g", "content": "after the blip"}])
                report = q.drain(timeout=45, job_ids=[job, good])
                assert report.committed == 2 and not report.failed, report
                assert not raw.scard(dq_acks)
    finally:
        worker_mod.set_embedder_factory(None)
        raw.close()


def test_a_retry_due_while_the_link_is_down_runs_when_it_is_back(own_plain_server, forwarder) -> None:
    """The link drops just as the delay-queue consumer moves a due retry back to the
    queue, while another retry waits: the move fails, and dramatiq's restart then puts
    the waiting one back, which failed too with redis-py's own error (dramatiq only
    ignores its own connection error there): the consumer thread died, and no retry
    ran again while the worker lived. The link is cut from inside the move, so the
    fault falls exactly there."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    namespace = "blip2"
    model = FailsOnce()
    worker_mod.set_embedder_factory(lambda: model)
    direct = Settings.from_url(own_plain_server.url, namespace=namespace, search_mode="exact")
    linked = Settings.from_url(f"redis://127.0.0.1:{forwarder.port}", namespace=namespace, search_mode="exact")
    try:
        with MemoryQueue(direct, producer_id="p") as q:
            with worker_mod.running_worker(
                linked, threads=2, worker_timeout_ms=100, inflight_records=0,
                max_retries=5, min_backoff_ms=6_000, max_backoff_ms=12_000,
            ) as (broker, worker):  # fmt: skip
                dq_acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{QueueKeys(namespace).queue}.DQ"
                jobs = []
                for n in range(2):  # two retries waiting (one at a time: each fails alone)
                    jobs.append(q.enqueue_encode_job([{"id": f"r{n}", "content": f"FLAKY {n}"}])[0])
                    deadline = time.monotonic() + 5
                    while broker.client.scard(dq_acks) <= n:
                        assert time.monotonic() < deadline, "the retry never reached the delay queue"
                        time.sleep(0.02)
                # redis-py retries a command 10 times with backoff (a minute or so): one
                # retry stands for an outage longer than that
                broker.client.set_retry(Retry(NoBackoff(), 1))
                enqueue, moves = broker.enqueue, []

                def move_back(message, *, delay=None):  # the delay queue's consumer, a due retry
                    if delay is None and message.options.get("retries") and not moves:
                        moves.append(message.message_id)
                        forwarder.cut()
                        threading.Timer(5, forwarder.restore).start()
                    return enqueue(message, delay=delay)

                broker.enqueue = move_back
                deadline = time.monotonic() + 30
                while not moves:
                    assert time.monotonic() < deadline, "no retry was moved back"
                    time.sleep(0.05)
                time.sleep(6)  # the link is back
                jobs.append(q.enqueue_encode_job([{"id": "r2", "content": "FLAKY 2"}])[0])  # a retry after
                report = q.drain(timeout=60, job_ids=jobs)
                alive = {name: t.is_alive() for name, t in worker.consumers.items()}
            assert report.committed == 3 and not report.failed, report
            assert all(alive.values()), alive
    finally:
        worker_mod.set_embedder_factory(None)
