"""Chaos harness: Valkey servers that can be killed and restarted on the same port and
data folder, CLI worker subprocesses, bounded waits, store audits and the result log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valkey_servers import free_port, search_module_path, valkey_binary  # tests/ is on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_LOG = "/tmp/memworker-chaos.jsonl"


#: A drain(timeout=T) that returns later than T + this is counted (and failed) as a
#: hang: a real hang waits for ever, and a loaded 2-core CI host with workers being
#: killed and restarted around the drain can add seconds to a timely one.
HANG_SLACK_S = 15.0


def log_path() -> Path:
    return Path(os.environ.get("MEMWORKER_CHAOS_LOG", DEFAULT_LOG))


def record(fault: str, *, injections: int, lost: int = 0, duplicates: int = 0,
           early_returns: int = 0, hangs: int = 0, leaks: int = 0, **extra: Any) -> None:
    """Append one fault-injection outcome for scripts/reliability_report.py.

    ``leaks`` counts data seen where it must not be: another source's private record
    in a search or a consolidation, a memory's text or metadata in a log line."""
    row = {"fault": fault, "injections": injections, "lost": lost, "duplicates": duplicates,
           "early_returns": early_returns, "hangs": hangs, "leaks": leaks, "time": time.time(),
           **extra}
    with open(log_path(), "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"CHAOS {json.dumps(row)}")


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- servers
@dataclass
class ChaosServer:
    """A valkey-server on a fixed port and folder: kill() and start() again replays its AOF."""

    extra: tuple[str, ...] = ()
    module: bool = False
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mw-chaos-")))
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> ChaosServer:
        args = [valkey_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no", *self.extra]
        if self.module:
            args += ["--loadmodule", search_module_path()]
        log = open(self.workdir / "valkey.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"valkey did not start: {(self.workdir / 'valkey.log').read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)


# --------------------------------------------------------------------------- workers
def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env["MEMWORKER_EMBEDDER"] = "chaos_embedder:make"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra)
    return env


class Workers:
    """``memworker worker`` subprocesses, each in its own session; all killed at close()."""

    def __init__(self, url: str, namespace: str, workdir: Path, **env: str) -> None:
        self.url, self.namespace, self.workdir, self.env = url, namespace, workdir, env
        self.procs: list[subprocess.Popen] = []

    def start(self, threads: int = 2, args: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
        """``args``: extra ``memworker worker`` options (e.g. ``--max-deliveries``)."""
        log = open(self.workdir / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "memworker.cli", "--url", self.url, "--namespace",
             self.namespace, "worker", "--processes", "1", "--threads", str(threads), *args],
            env=child_env(**{**self.env, **env}), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def wait_live(self, client: Any, n: int = 1, timeout: float = 30) -> None:
        """Until ``n`` worker health keys are fresh (the workers took their first dispatch)."""
        key = f"{{{self.namespace}}}:workers"
        wait_for(lambda: client.zcount(key, int(time.time() * 1000) - 3000, "+inf") >= n,
                 timeout, f"{n} live worker(s)")

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.workdir.glob("worker-*.log")))


# --------------------------------------------------------------------------- audits
@dataclass
class Audit:
    records: int
    ids: set[str]
    tree_root: int
    bad_records: list[str]
    categories_ok: bool


def _store_version(client: Any, namespace: str) -> Any:
    """The store's change-log position: every record write appends to it atomically."""
    try:
        info = client.xinfo_stream(f"{{{namespace}}}:changes")
    except Exception:  # noqa: BLE001 - no stream: nothing written, or the namespace emptied
        return None
    return info.get("last-generated-id"), info.get("entries-added")


def audit(client: Any, namespace: str) -> Audit:
    """Count the store's records by key, check each is whole and in the side indexes.

    The reads are not one atomic step, so an audit taken while a worker commits is
    retried until no write landed between its first and its last read."""
    result = _audit_once(client, namespace)
    for _ in range(50):
        before = _store_version(client, namespace)
        result = _audit_once(client, namespace)
        if _store_version(client, namespace) == before:
            return result
        time.sleep(0.05)
    return result


def _audit_once(client: Any, namespace: str) -> Audit:
    ids = {k.decode().split(":rec:", 1)[1] for k in client.scan_iter(f"{{{namespace}}}:rec:*", count=1000)}
    root = client.zcard(f"{{{namespace}}}:tree:/")
    bad: list[str] = []
    cats: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    ordered = sorted(ids)
    for i in ordered:
        pipe.hmget(f"{{{namespace}}}:rec:{i}", "content", "scope", "embedding", "categories")
    rows = pipe.execute() if ordered else []
    scopes: dict[str, list[str]] = {}
    for i, (content, scope, emb, catj) in zip(ordered, rows):
        if content is None or scope is None or emb is None or catj is None:
            bad.append(i)
            continue
        scopes.setdefault(scope.decode(), []).append(i)
        for c in json.loads(catj):
            cats[c] = cats.get(c, 0) + 1
    # Each record sits in its own scope's tree set.
    pipe = client.pipeline(transaction=False)
    flat = [(s, i) for s, members in scopes.items() for i in members]
    for s, i in flat:
        pipe.zscore(f"{{{namespace}}}:tree:{s}", i)
    for (s, i), score in zip(flat, pipe.execute() if flat else []):
        if score is None:
            bad.append(i)
    stored = {k.decode(): int(v) for k, v in client.hgetall(f"{{{namespace}}}:cats:/").items()}
    return Audit(len(ids), ids, root, bad, stored == cats)


# --------------------------------------------------------------------------- load
class Load:
    """Producer threads enqueueing 3-item encode jobs until :meth:`stop` (an enqueue
    that fails is counted and retried with the same record ids), and optionally an
    observer of the producers' done channel recording when each job committed.

    Args:
        make_queue: A new ``MemoryQueue`` for one producer thread (closed by it).
        text: The text of item ``k`` of job ``n`` of thread ``tag``.
        scope: Its scope.
    """

    def __init__(
        self,
        make_queue: Callable[[], Any],
        text: Callable[[str, int, int], str],
        scope: Callable[[str, int, int], str],
    ) -> None:
        import threading

        self.make_queue, self.text, self.scope = make_queue, text, scope
        self.returned: list[tuple[str, list[str]]] = []
        self.done_at: dict[str, float] = {}
        self.errors = 0
        self.stopping = threading.Event()
        self.threads: list[Any] = []

    def start(self, tags: tuple[str, ...] = ("a", "b"), observe: tuple[int, str] | None = None) -> Load:
        """Start a producer per tag, and an observer of ``(port, channel)`` if given."""
        import threading

        self.threads = [threading.Thread(target=self._produce, args=(t,), daemon=True) for t in tags]
        if observe is not None:
            self.threads.append(threading.Thread(target=self._observe, args=observe, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 15) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout)

    def _produce(self, tag: str) -> None:
        q = self.make_queue()
        n = 0
        while not self.stopping.is_set():
            items = [{"id": f"{tag}-{n}-{k}", "text": self.text(tag, n, k),
                      "scope": self.scope(tag, n, k), "categories": ["r"]} for k in range(3)]  # fmt: skip
            try:
                self.returned.append(q.enqueue_encode_job(items))
                n += 1
            except Exception:  # noqa: BLE001 - retried with the same record ids
                self.errors += 1
                time.sleep(0.1)
            time.sleep(0.01)
        q.close()

    def _observe(self, port: int, channel: str) -> None:
        import redis

        while not self.stopping.is_set():
            try:
                sub = redis.Redis(host="127.0.0.1", port=port).pubsub()
                sub.subscribe(channel)
                while not self.stopping.is_set():
                    m = sub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if m:
                        self.done_at.setdefault(m["data"].decode(), time.time())
            except Exception:  # noqa: BLE001 - the server is down or failing over
                time.sleep(0.1)
