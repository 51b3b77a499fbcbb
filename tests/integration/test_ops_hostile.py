"""Operations, from a review of the metrics endpoint, URL/environment parsing, the
embedded server and resharding (helper-35, 2026-12-05). Every test here failed before
its fix, because of the defect its docstring names. (The metrics endpoint's default
address stays 0.0.0.0, a documented choice: a scraper in another container must
reach it; MEMWORKER_METRICS_ADDRESS=127.0.0.1 keeps it on the host.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memworker.errors import ConfigError
from memworker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PROC_TIMEOUT = 120


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VALKEY_URL", "REDIS_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", **extra)
    return env


# ------------------------------------------------------------------ settings: env URL errors
@pytest.mark.parametrize("var", ["VALKEY_URL", "REDIS_URL"])
@pytest.mark.parametrize(
    "url", ["valkey://cache.internal:99999", "valkey://cache.internal?sockettimeout=5", "http://cache.internal"]
)
def test_a_bad_url_in_the_environment_is_named(var: str, url: str) -> None:
    """A bad VALKEY_URL / REDIS_URL gives 'URL port is not a number ...' with no word of
    which variable holds it (with both set, the operator cannot tell which is read)."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: url})
    assert var in str(info.value)


def test_the_cli_names_a_bad_valkey_url() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "memworker.cli", "status"],
        capture_output=True, text=True, timeout=PROC_TIMEOUT, check=False,
        env=_env(VALKEY_URL="valkey://cache.internal:99999", REDIS_URL="valkey://cache.internal:6379"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "VALKEY_URL" in done.stderr, done.stderr


# ------------------------------------------------------------------ metrics endpoint
def test_a_bad_metrics_address_is_named(plain_server, namespace) -> None:
    """MEMWORKER_METRICS_ADDRESS=no-such-host gives '--metrics-port 9464: [Errno -2]
    Name or service not known': the port is blamed, the variable at fault is not named."""
    pytest.importorskip("prometheus_client")
    from valkey_servers import free_port

    done = subprocess.run(
        [sys.executable, "-m", "memworker.cli", "--url", plain_server.url, "--namespace", namespace,
         "worker", "--threads", "1", "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=PROC_TIMEOUT, check=False,
        env=_env(MEMWORKER_METRICS_ADDRESS="no-such-host.invalid"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "MEMWORKER_METRICS_ADDRESS" in done.stderr, done.stderr[-2000:]


# ------------------------------------------------------------------ embedded server
class _Impostor:
    """A listener another local user runs on the embedded server's old port: records
    every byte it is sent, and answers like a Valkey that accepts any password."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    data = conn.recv(65536)
                except OSError:
                    continue
                self.received += data
                replies = b""
                for line in data.split(b"\r\n"):
                    word = line.upper()
                    if word == b"AUTH":
                        replies += b"+OK\r\n"
                    elif word == b"PING":
                        replies += b"+PONG\r\n"
                    elif word == b"INFO":
                        replies += b"$14\r\nprocess_id:1\r\n\r\n"
                try:
                    conn.sendall(replies)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    from memworker.embedded import stop_server

    path = tmp_path / "home"
    yield path
    stop_server(path)


def test_the_password_is_never_sent_to_another_listener_on_the_recorded_port(home: Path) -> None:
    """valkey.json left by a server that died (a reboot, a SIGKILL) records a pid now
    running something else, and its port is now another local user's listener:
    ensure_server sends that listener `AUTH <password>`, and, if it answers +OK/+PONG,
    hands every memworker client its address (they all send it the password and data)."""
    from memworker import embedded
    from memworker.embedded import ensure_server, stop_server

    first = ensure_server(home, search_module="none")
    password = first.password
    assert password
    assert stop_server(home) is True
    embedded.server._cache.clear()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    impostor = _Impostor()
    try:
        state = {"pid": bystander.pid, "host": "127.0.0.1", "port": impostor.port, "module": None}
        (home / "valkey.json").write_text(json.dumps(state))
        server = ensure_server(home, search_module="none")
        assert password.encode() not in bytes(impostor.received), "the password went to another process"
        assert server.port != impostor.port and server.pid != bystander.pid
    finally:
        impostor.close()
        bystander.kill()
        bystander.wait()


# ------------------------------------------------------------------ reshard
def test_a_key_about_to_expire_does_not_become_immortal_on_the_target(cluster_plain_server, namespace) -> None:
    """_copy_slot restores each key with `max(PTTL, 0)`: a key read in the last
    millisecond of its life has PTTL 0, and `RESTORE key 0 payload` means *no* expiry,
    so it lives forever on the target (a heartbeat, a lock, a cache entry or a TTL'd
    checkpoint that never goes away). Keys with expiries spread over the copy make the
    last-millisecond read happen."""
    import redis
    from redis.cluster import RedisCluster

    from memworker.keys import tag
    from memworker.reshard import move_namespace

    rc = RedisCluster(host="127.0.0.1", port=cluster_plain_server.port)
    try:
        owner = rc.get_node_from_key(tag(namespace))
        other = next(n for n in rc.get_primaries() if n.port != owner.port)
    finally:
        rc.close()
    source = redis.Redis(port=owner.port)
    target = redis.Redis(port=other.port)
    n, window_ms = 30_000, 1_500
    keys = [f"{tag(namespace)}:exp:{i}" for i in range(n)]
    start_ms = int(time.time() * 1000) + 600  # the load takes a few hundred ms
    for i in range(0, n, 5_000):
        pipe = source.pipeline(transaction=False)
        for j in range(i, min(i + 5_000, n)):
            pipe.execute_command("SET", keys[j], "v", "PXAT", start_ms + (j * window_ms) // n)
        pipe.execute()
    settings = Settings.from_url(cluster_plain_server.url, namespace=namespace)
    report = move_namespace(settings, f"127.0.0.1:{other.port}", pause_ms=30_000)
    assert report.target == f"127.0.0.1:{other.port}"
    time.sleep(max(0.0, (start_ms + window_ms) / 1000 - time.time()) + 1.0)
    survivors = []
    for i in range(0, n, 1_000):
        pipe = target.pipeline(transaction=False)
        for key in keys[i : i + 1_000]:
            pipe.execute_command("PTTL", key)
        survivors += [k for k, ttl in zip(keys[i : i + 1_000], pipe.execute()) if ttl != -2]
    target.delete(*survivors) if survivors else None
    source.close(), target.close()
    assert survivors == [], f"{len(survivors)} keys past their expiry live forever on the target"
