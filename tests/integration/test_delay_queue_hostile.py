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
    """Raises a transient error the first time it sees a text marked FLAKY."""

    dimension = DIM

    def __init__(self) -> None:
        self.failed = threading.Event()
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            if not self.failed.is_set() and any("FLAKY" in t for t in texts):
                self.failed.set()
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
                assert model.failed.is_set()
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
