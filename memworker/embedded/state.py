"""The embedded server's state: :class:`EmbeddedServer`, the state file and the start lock.

The server of a home is recorded in ``home/valkey.json``; every process finds it there
(:func:`find_live`, which also recovers a record left behind by a crash). Start and stop
are serialized across processes by ``flock`` on ``home/valkey.lock`` (:func:`locked`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from memworker.embedded.auth import (
    DATA_DIR,
    LOCK_FILE,
    PASSWORD_FILE,
    STATE_FILE,
    open_private,
    read_password,
    read_private,
    write_private,
)
from memworker.embedded.procs import (
    HOST,
    Probe,
    home_servers,
    is_valkey,
    listening,
    listening_ports,
    loaded_module,
    pid_alive,
    probe,
    terminate,
    working_dir,
)
from memworker.errors import EmbeddedServerError

__all__ = [
    "EmbeddedServer",
    "find_live",
    "forget_state",
    "locked",
    "owned",
    "read_state",
    "recorded_foreground",
    "write_state",
]


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


def owned(server: EmbeddedServer) -> bool:
    """True only if ``server.pid`` is proven to be this home's ``valkey-server``: a
    ``valkey-server`` whose working directory is the home's data folder (another
    user's process does not show its working directory).

    A recorded pid can outlive its server (a reboot, a crash) and now belong to any
    process, another project's ``valkey-server`` included, and its port to anyone's
    listener: only a pid proven here is ever signalled. :func:`serving` also proves
    the port before the password goes to it.
    """
    if not (pid_alive(server.pid) and is_valkey(server.pid)):
        return False
    cwd = working_dir(server.pid)
    return cwd is not None and cwd.resolve() == server.data_dir.resolve()


def serving(server: EmbeddedServer) -> bool:
    """:func:`owned`, and the process itself listens on the recorded port (a server
    moved by ``CONFIG SET port`` left it to whoever takes it; unknown without
    ``/proc``: trusted)."""
    return owned(server) and listening(server.pid, server.port) is not False


def recorded_foreground(home: Path) -> bool:
    try:
        return bool(json.loads(read_private(home / STATE_FILE)).get("foreground"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def read_state(home: Path) -> EmbeddedServer | None:
    """The recorded server, or ``None`` if there is no state file or it is unreadable
    (a pid no process can have, a host other than :data:`HOST`: the server listens on
    loopback only, so a record naming another address is forged)."""
    try:
        data = json.loads(read_private(home / STATE_FILE))
        pid, port, host, module = data["pid"], data["port"], data["host"], data["module"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    if host != HOST or not (module is None or isinstance(module, str)):
        return None
    return EmbeddedServer(host, port, pid, home, module, read_password(home))


def _unrecorded(home: Path, *, recover: bool, timeout: float) -> EmbeddedServer | None:
    """The home's running server when the state file does not record it (lost,
    truncated, or naming a dead pid): a ``valkey-server`` whose working directory is
    the home's data folder, at the one port it listens on. Without ``/proc`` none.

    One listening on no port yet is being started by the holder of the start lock (it
    records it once it answers): ``None``, so the caller waits for the lock. Under the
    lock (``recover``) it is a start that died half-way: stopped, never left beside a
    new server on the same AOF.

    Raises:
        EmbeddedServerError: Several run on the home's data.
    """
    pids = home_servers(home / DATA_DIR)
    if not pids:
        return None
    if len(pids) == 1:
        ports = listening_ports(pids[0]) or set()
        if len(ports) == 1:
            module = loaded_module(pids[0])
            return EmbeddedServer(HOST, ports.pop(), pids[0], home, module, read_password(home))
        if not ports:
            if recover:
                terminate(pids[0], timeout)
            return None
    raise EmbeddedServerError(
        f"valkey-server process(es) {', '.join(map(str, pids))} serve {home / DATA_DIR} but "
        f"{home / STATE_FILE} does not record them: stop them (kill PID; Valkey saves its "
        "data on SIGTERM) and the next start records its server"
    )


def write_state(server: EmbeddedServer, *, foreground: bool) -> None:
    """Write the state file atomically (temp file + ``os.replace``)."""
    state = {
        "pid": server.pid,
        "host": server.host,
        "port": server.port,
        "module": server.module,
        "started_at": time.time(),
        "foreground": foreground,
    }
    write_private(server.home / STATE_FILE, json.dumps(state, indent=1) + "\n")


def forget_state(home: Path, pid: int, timeout: float) -> None:
    """Remove the state file if it still records ``pid``."""
    try:
        with locked(home, timeout):
            state = read_state(home)
            if state is not None and state.pid == pid:
                (home / STATE_FILE).unlink(missing_ok=True)
    except EmbeddedServerError:
        pass


@contextmanager
def locked(home: Path, timeout: float) -> Iterator[None]:
    """Hold the exclusive start lock of ``home`` (released when the fd closes)."""
    fd = open_private(home / LOCK_FILE, os.O_RDWR | os.O_CREAT)
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


def find_live(home: Path, timeout: float, *, recover: bool) -> EmbeddedServer | None:
    """The recorded server if it answers; with ``recover``, clear a stale record.

    A server that accepts connections but does not answer for ``timeout`` seconds
    (busy or hung), or that answers without a password (started by an older
    memworker) or refuses this home's password, is never killed nor used: with
    ``recover`` that raises, else ``None``.
    """
    state = read_state(home)
    if state is None or not owned(state):
        # No record, or a stale one: the home's server may still run (its record lost
        # or corrupted): found by its working directory, never started beside it.
        orphan = _unrecorded(home, recover=recover, timeout=timeout)
        if orphan is not None:
            state = orphan
            if recover:
                write_state(state, foreground=False)
    if state is None:
        if recover:
            (home / STATE_FILE).unlink(missing_ok=True)
        return None
    status: Probe = "down"
    # else stale: the pid and the port may be anyone's now; and the password goes to
    # the port only once the home's server is seen listening there
    if serving(state):
        deadline = time.monotonic() + timeout
        status = probe(state.host, state.port, state.password)
        while status == "busy" and time.monotonic() < deadline:
            status = probe(state.host, state.port, state.password)
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
    if recover and owned(state):
        # This home's server (its working dir is home/data) not serving its port:
        # stop it, never leave it beside a new one on the same AOF. A pid not
        # proven to be this home's server (reused after a reboot) is left alone.
        terminate(state.pid, timeout)
    if recover:
        (home / STATE_FILE).unlink(missing_ok=True)
    return None
