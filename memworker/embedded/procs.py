"""Processes and sockets of the embedded server: liveness, signals, ports, raw RESP probes.

:func:`pid_alive`, :func:`is_valkey` and :func:`terminate` watch and stop a
``valkey-server`` process (never anything else); :func:`probe` asks a server over a raw
socket whether it answers with a password; :data:`children` keeps the ``Popen`` of the
servers this process started, so they can be reaped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

__all__ = [
    "HOST",
    "PING_TIMEOUT",
    "POLL_INTERVAL",
    "Probe",
    "children",
    "free_port",
    "home_servers",
    "is_valkey",
    "listening",
    "listening_ports",
    "loaded_module",
    "pid_alive",
    "port_free",
    "probe",
    "server_pid",
    "terminate",
    "working_dir",
]

#: Interface the server binds to; never anything but loopback.
HOST = "127.0.0.1"
#: Timeout of one PING, in seconds.
PING_TIMEOUT = 1.0
#: Sleep between two readiness checks, in seconds.
POLL_INTERVAL = 0.02

#: ``up``: answers with this home's password; ``open``: answers without a password;
#: ``denied``: refuses the password (or has one and none is known); ``busy``: accepts
#: but does not answer; ``down``: not there.
Probe = Literal["up", "open", "denied", "down", "busy"]

#: ``Popen`` of the servers this process started, by pid, so they can be reaped.
children: dict[int, subprocess.Popen[bytes]] = {}


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, or a child that exited, counts as dead)."""
    child = children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del children[pid]
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid no process can have (a forged record)
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def is_valkey(pid: int) -> bool:
    """True if ``pid`` runs a ``valkey-server`` executable (never signal anything else):
    the file it executes, not a text anywhere in its command line (``sleep 1000
    valkey-server`` is not one). An upgrade that replaced the binary shows it
    ``(deleted)``: still a server."""
    if Path("/proc/self").is_dir():
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False  # gone, or another user's
        return Path(exe.removesuffix(" (deleted)")).name == "valkey-server"
    found = subprocess.run(
        ["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, check=False
    )
    return Path(found.stdout.strip()).name == "valkey-server"


def _loopback_listeners() -> dict[str, int] | None:
    """Socket inode -> port of every TCP socket listening on :data:`HOST` (``/proc/net/tcp``),
    or ``None`` without ``/proc``."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
            continue
        address, _, port = fields[1].partition(":")
        if address == "0100007F":  # 127.0.0.1, as the kernel prints it
            out[fields[9]] = int(port, 16)
    return out


def listening_ports(pid: int) -> set[int] | None:
    """The ports on :data:`HOST` on which ``pid`` holds a listening socket, or ``None``
    where that cannot be known (no ``/proc``: macOS)."""
    listeners = _loopback_listeners()
    if listeners is None:
        return None
    ports: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ports  # gone, or another user's: holds nothing we can prove
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in listeners:
            ports.add(listeners[link[8:-1]])
    return ports


def listening(pid: int, port: int) -> bool | None:
    """Whether ``pid`` itself listens on :data:`HOST`:``port`` (``None``: unknown, no
    ``/proc``). Nothing, the password least of all, goes to a port before this: a
    program that took the port a new server tried, or the port a server left, is not
    the server."""
    ports = listening_ports(pid)
    return None if ports is None else port in ports


def loaded_module(pid: int) -> str | None:
    """The ``--loadmodule`` path on ``pid``'s command line, or ``None``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for flag, value in zip(args, args[1:]):
        if flag == b"--loadmodule":
            return os.fsdecode(value)
    return None


def home_servers(data_dir: Path) -> list[int]:
    """Pids of the ``valkey-server`` processes whose working directory is ``data_dir``
    (a home's server whose state file was lost); empty without ``/proc``."""
    proc = Path("/proc")
    if not (proc / "self").is_dir():
        return []
    target = data_dir.resolve()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if not is_valkey(pid):
            continue
        cwd = working_dir(pid)
        if cwd is not None and cwd.resolve() == target:
            found.append(pid)
    return sorted(found)


def working_dir(pid: int) -> Path | None:
    """The current directory of ``pid`` (a server's ``--dir``), or ``None`` if unknown."""
    if Path("/proc/self").is_dir():
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return None
    try:  # macOS: no /proc
        found = subprocess.run(
            ["lsof", "-a", "-p", str(pid), "-d", "cwd", "-Fn"],
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    for line in found.stdout.splitlines():
        if line.startswith("n/"):
            return Path(line[1:])
    return None


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` (Valkey shuts down cleanly, AOF flushed), SIGKILL after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        if not pid_alive(pid):
            break
    children.pop(pid, None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
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


def probe(host: str, port: int, password: str | None) -> Probe:
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


def server_pid(port: int, password: str) -> int | None:
    """``process_id`` from ``INFO server`` on ``port``, or ``None``."""
    try:
        info = _call(HOST, port, "INFO", "server", password=password)
    except OSError:
        return None
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith("process_id:"):
            value = line.split(":", 1)[1].strip()
            return int(value) if value.isdigit() else None
    return None
