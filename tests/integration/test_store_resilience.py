"""Transient failures: killed connections and a restarted server are retried;
server errors surface at once as StoreError."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from valkey_servers import start_server, stop_server
from memworker import StoreError, ValkeyStore
from memworker.records import record_types


def _records(n: int, dim: int = 8, scope: str = "/r"):
    rng = np.random.default_rng(n)
    cls = record_types()[0]
    return [cls(content=f"m{i}", scope=scope, embedding=rng.random(dim).tolist()) for i in range(n)]


@pytest.mark.parametrize("kind", ["plain", "module"])
def test_killed_connection_is_recreated(kind, namespace):
    server = start_server(kind)
    try:
        store = ValkeyStore(server.url, namespace=namespace)
        store.save(_records(5))
        import valkey

        raw = valkey.Valkey(port=server.port)
        killed = raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 1
        # The next calls reconnect (glide) or recreate the client (ClosingError), then succeed.
        assert store.count() == 5
        store.save(_records(3, scope="/s"))
        assert store.count() == 8
        assert len(store.search(np.ones(8).tolist(), limit=10)) == 8
        store.close()
        raw.close()
    finally:
        stop_server(server)


def test_server_restart_is_retried_until_it_answers(namespace):
    """The server goes away and comes back on the same port; a call made while it is
    down is retried (a fresh command per attempt) and succeeds."""
    server = start_server("plain", "--appendonly", "yes", "--appendfsync", "always")
    port = server.port
    store = ValkeyStore(server.url, namespace=namespace, search_mode="exact")
    store.save(_records(4))
    server.process.kill()
    server.process.wait()
    restarted: list = []

    def restart() -> None:
        time.sleep(0.3)
        import subprocess

        from valkey_servers import valkey_binary

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
        assert store.count() == 4  # AOF replayed; the call waited for the server
        store.save(_records(2, scope="/after"))
        assert store.count() == 6
    finally:
        thread.join()
        store.close()
        for proc in restarted:
            proc.terminate()
            proc.wait(10)
        stop_server(server)


def test_server_error_surfaces_without_retry(plain_server, namespace):
    import valkey

    raw = valkey.Valkey(port=plain_server.port)
    store = ValkeyStore(plain_server.url, namespace=namespace)
    raw.set(f"{{{namespace}}}:tree:/", "not a sorted set")
    with pytest.raises(StoreError, match="WRONGTYPE|wrong kind"):
        store.count()
    raw.delete(f"{{{namespace}}}:tree:/")
    assert store.count() == 0
    store.close()
    raw.close()


def test_unreachable_server_raises_connection_lost(namespace):
    from valkey_servers import free_port
    from memworker import MemworkerError

    store = ValkeyStore(f"valkey://127.0.0.1:{free_port()}?connect_timeout_ms=200", namespace=namespace)
    with pytest.raises(MemworkerError):
        store.count()
