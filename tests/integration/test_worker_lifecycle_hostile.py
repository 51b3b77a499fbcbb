"""Hostile review of the worker's lifecycle: real ``memworker worker`` processes on real
Valkey servers, stopped, killed and starved in the ways an operator or a host does.

Not covered elsewhere (test_worker.py, test_batched.py, tests/chaos/): a second
SIGTERM/SIGINT while a batch is stuck in the model, SIGINT once, a signal during model
loading, SIGHUP, ``--processes 2`` with one child or the parent SIGKILLed, a model
whose dimension differs from the namespace's stored vectors, a 10 s Valkey outage,
two workers with different thread settings on one namespace, ``--max-retries 0`` and
the health records after a graceful stop.

The embedder (``lc_embedder:make``, written to a temporary folder and loaded through
``MEMWORKER_EMBEDDER``) is instant; markers in a text drive it: ``GATE`` blocks the
model call until ``$LC_GATE/open`` exists, ``SLOW<ms>`` sleeps, ``POISON`` raises.
``LC_LOADING`` makes the factory touch that file and sleep ``LC_LOAD_S`` (model
loading); ``LC_DIM`` and ``LC_MODEL_ID`` set the dimension and model id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memworker.queue.admin import dead_list, live_workers
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "chaos"))
from harness import ChaosServer  # noqa: E402  (tests/chaos: a server restarted on its port)

_EMBEDDER = '''
import hashlib, os, re, time
from pathlib import Path
import numpy as np

DIM = int(os.environ.get("LC_DIM", "32"))
_SLOW = re.compile(r"SLOW(\\d+)")


class LifecycleEmbedder:
    dimension = DIM

    def __init__(self):
        model_id = os.environ.get("LC_MODEL_ID")
        if model_id:
            self.model_id = model_id

    def encode(self, texts):
        for t in texts:
            if "POISON" in t:
                raise RuntimeError("poison text")
            m = _SLOW.search(t)
            if m:
                time.sleep(int(m.group(1)) / 1000)
            if "GATE" in t:
                gate = Path(os.environ["LC_GATE"])
                (gate / f"started-{os.getpid()}").touch()
                deadline = time.monotonic() + 40
                while not (gate / "open").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def make():
    loading = os.environ.get("LC_LOADING")
    if loading:
        Path(loading).touch()
        time.sleep(float(os.environ.get("LC_LOAD_S", "30")))
    return LifecycleEmbedder()
'''


# --------------------------------------------------------------------------- helpers
#: Every wait's bound is this many times its nominal one: a bound, never a measure (a
#: loaded CI machine starts processes and loads models slowly).
SLACK = 3


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout * SLACK
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _exited(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the worker's session)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


class Spawner:
    """``memworker worker`` subprocesses, each in its own session (process group); every
    process of every group is SIGKILLed at close()."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        (tmp_path / "lc_embedder.py").write_text(_EMBEDDER)
        self.gate = tmp_path / "gate"
        self.gate.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, url: str, namespace: str, *args: str, **env: str) -> subprocess.Popen:
        log_path = self.tmp / f"worker-{len(self.procs)}.log"
        full_env = dict(os.environ)
        full_env.update(
            PYTHONPATH=os.pathsep.join([str(self.tmp), str(ROOT), full_env.get("PYTHONPATH", "")]),
            MEMWORKER_EMBEDDER="lc_embedder:make", HF_HUB_OFFLINE="1", LC_GATE=str(self.gate),
        )  # fmt: skip
        full_env.update(env)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", namespace,
                 "worker", *args],
                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        self.logs.append(log_path)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return self.logs[self.procs.index(proc)].read_text(errors="replace")

    def close(self) -> None:
        (self.gate / "open").touch()
        for proc in self.procs:
            for _ in range(3):
                pids = _group(proc.pid)
                if not pids:
                    break
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def spawn(tmp_path):
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.close()


@pytest.fixture
def client(plain_server):
    import redis

    c = redis.Redis(host="127.0.0.1", port=plain_server.port, socket_timeout=10)
    yield c
    c.close()


def _held(client, ns: str) -> int:
    """Messages fetched and not acked, by any broker of the namespace."""
    return sum(client.scard(k) for k in client.scan_iter(f"{{{ns}}}:dq:__acks__.*"))


def _queued(client, ns: str) -> int:
    return client.llen(f"{{{ns}}}:dq:default")


def _stat(client, ns: str, name: str) -> int:
    return int(client.hget(f"{{{ns}}}:stats", name) or 0)


def _records(client, ns: str) -> int:
    return sum(1 for _ in client.scan_iter(f"{{{ns}}}:rec:*", count=1000))


def _live(settings: Settings) -> list[dict]:
    return live_workers(settings)


def _settings(url: str, ns: str) -> Settings:
    return Settings.from_url(url, namespace=ns, search_mode="exact")


def _finish(spawn, url, ns, q, jobs, client, n_records=None):
    """Start a fresh worker, drain ``jobs``: each committed once, none failed."""
    spawn.start(url, ns, "--threads", "4")
    report = q.drain(timeout=40, job_ids=jobs)
    assert report.failed == [], report.failed
    assert report.committed == len(jobs)
    assert _stat(client, ns, "committed") == len(jobs)  # each job counted once
    assert _records(client, ns) == (len(jobs) if n_records is None else n_records)
    assert _held(client, ns) == 0 and _queued(client, ns) == 0


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_second_signal_stops_a_worker_whose_model_call_is_stuck(plain_server, namespace, spawn, client, sig):
    """A model call that does not return (a hung GPU, a deadlocked tokenizer) keeps a
    graceful stop waiting: that is acceptable for the first SIGTERM/Ctrl-C, but the
    second one is ignored too (``_serve``'s handler only sets an Event, and
    ``dramatiq.Worker.stop`` waits up to 600 s for the batch), so the operator has no
    way short of SIGKILL to stop the worker. Expected (the convention of dramatiq's
    own CLI, of uvicorn, of celery): a second signal ends the process at once; the job
    it held is unacked, so it is redelivered and committed once by the next worker."""
    url = plain_server.url
    with MemoryQueue(_settings(url, namespace), producer_id="p") as q:
        proc = spawn.start(url, namespace, "--threads", "2")
        _wait(lambda: _live(_settings(url, namespace)), 20, "a live worker")
        jobs = [q.enqueue_encode_job(["GATE stuck"])[0]]
        jobs += [q.enqueue_encode_job([f"beside {i}"])[0] for i in range(4)]
        _wait(lambda: list(spawn.gate.glob("started-*")), 10, "the stuck model call")
        os.kill(proc.pid, sig)
        assert not _exited(proc, 1.5)  # graceful: waiting for the model call
        os.kill(proc.pid, sig)
        stopped = _exited(proc, 8)
        (spawn.gate / "open").touch()
        assert stopped, f"a second {sig.name} did not stop a worker stuck in its model"
        _finish(spawn, url, namespace, q, jobs, client)


def test_sigint_once_stops_gracefully_requeues_and_leaves_no_health_record(
    plain_server, namespace, spawn, client
):
    """Ctrl-C (SIGINT) while jobs are in flight is a graceful stop, like SIGTERM: exit
    0, nothing left held by the stopped broker, every job either committed or back in
    the queue, no live worker shown, and the next worker commits each job once."""
    url = plain_server.url
    settings = _settings(url, namespace)
    n = 30
    with MemoryQueue(settings, producer_id="p") as q:
        proc = spawn.start(url, namespace, "--threads", "2")
        _wait(lambda: _live(settings), 20, "a live worker")
        jobs = [q.enqueue_encode_job([f"SLOW150 int {i}"])[0] for i in range(n)]
        _wait(lambda: _stat(client, namespace, "committed") >= 2, 20, "a few commits")
        os.kill(proc.pid, signal.SIGINT)
        assert _exited(proc, 15 * SLACK), "SIGINT did not stop the worker"
        assert proc.returncode == 0, spawn.log(proc)[-2000:]
        assert "Traceback" not in spawn.log(proc), spawn.log(proc)[-2000:]
        assert _held(client, namespace) == 0
        assert (n - len(q.pending())) + _queued(client, namespace) == n
        assert _live(settings) == []
        _finish(spawn, url, namespace, q, jobs, client)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_during_model_loading_stops_cleanly_and_takes_no_job(plain_server, namespace, spawn, client, sig):
    """A worker stopped while its model loads: it must stop without a traceback,
    leaving every queued job in the queue, none held, none failed, and no health
    record. Wrong (SIGINT): ``_serve`` installs its handlers only after ``warm_up`` and
    ``make_broker`` (process.py), so Ctrl-C during loading raises KeyboardInterrupt in
    the embedder factory and ``memworker worker`` dies with a full traceback (cli.py
    ``main`` does not catch it). Expected: a quiet stop (exit 0 or 130). SIGTERM there
    takes Python's default action (killed, -15): no job taken, accepted."""
    url = plain_server.url
    settings = _settings(url, namespace)
    loading = spawn.tmp / "loading"
    with MemoryQueue(settings, producer_id="p") as q:
        jobs = [q.enqueue_encode_job([f"queued {i}"])[0] for i in range(5)]
        proc = spawn.start(url, namespace, "--threads", "2", LC_LOADING=str(loading), LC_LOAD_S="30")
        _wait(loading.exists, 20, "the model loading")
        os.kill(proc.pid, sig)
        assert _exited(proc, 10), f"{sig.name} during model loading did not stop the worker"
        log = spawn.log(proc)
        assert proc.returncode in (0, -sig, 128 + sig), (proc.returncode, log[-2000:])
        assert "Traceback" not in log, log[-3000:]
        assert _queued(client, namespace) == 5 and _held(client, namespace) == 0
        assert _stat(client, namespace, "failed") == 0 and dead_list(settings) == []
        assert _live(settings) == []
        _finish(spawn, url, namespace, q, jobs, client)


def test_sighup_is_a_graceful_stop_not_a_crash(plain_server, namespace, spawn, client):
    """SIGHUP (the terminal or the ssh session of a ``memworker worker`` closes, or
    ``kill -HUP`` by a tool expecting a reload) is not handled: Python's default action
    kills the process on the spot, like SIGKILL. The jobs it fetched stay held by a
    dead broker until another worker's maintenance requeues them ~6 s later (never, if
    it was the only worker), and its health record stays "live" for up to 5 s.
    Observed: exit -1 (killed by SIGHUP), jobs left in the dead broker's acks set.
    Expected: SIGHUP handled like SIGTERM (process.py ``_serve`` and ``_run`` install
    their handler for SIGINT and SIGTERM only): exit 0, fetched jobs requeued at once,
    the health record removed."""
    url = plain_server.url
    settings = _settings(url, namespace)
    n = 30
    with MemoryQueue(settings, producer_id="p") as q:
        proc = spawn.start(url, namespace, "--threads", "2")
        _wait(lambda: _live(settings), 20, "a live worker")
        jobs = [q.enqueue_encode_job([f"SLOW150 hup {i}"])[0] for i in range(n)]
        # jobs fetched (a batch of them may commit at once: "held" is what matters)
        _wait(lambda: _held(client, namespace) > 0, 20, "jobs held by the worker")
        os.kill(proc.pid, signal.SIGHUP)
        assert _exited(proc, 15 * SLACK)
        held_after_exit = _held(client, namespace)
        live_after_exit = _live(settings)
        assert proc.returncode == 0, f"SIGHUP killed the worker (exit {proc.returncode})"
        assert held_after_exit == 0, f"{held_after_exit} jobs left held by the dead worker"
        assert live_after_exit == [], "the stopped worker is still shown live"
        _finish(spawn, url, namespace, q, jobs, client)


def test_a_double_sigterm_of_two_processes_stops_them_and_loses_nothing(plain_server, namespace, spawn, client):
    """``--processes 2`` stopped by two SIGTERMs in a row (systemd's stop then an
    impatient operator) while jobs are in flight. The parent sees one signal (both
    came before its handler ran: a graceful stop, exit 0, no health record left,
    nothing held) or two (the second stops every process at once: exit 143, their
    unacked jobs redelivered). Either way no child is left behind and every job is
    committed once by the next worker."""
    url = plain_server.url
    settings = _settings(url, namespace)
    n = 40
    with MemoryQueue(settings, producer_id="p") as q:
        proc = spawn.start(url, namespace, "--processes", "2", "--threads", "2")
        _wait(lambda: len(_live(settings)) == 2, 30, "two live worker processes")
        jobs = [q.enqueue_encode_job([f"SLOW100 twice {i}"])[0] for i in range(n)]
        _wait(lambda: _stat(client, namespace, "committed") >= 2, 20, "a few commits")
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGTERM)
        assert _exited(proc, 15 * SLACK), "two SIGTERMs did not stop the worker"
        assert proc.returncode in (0, 128 + signal.SIGTERM), spawn.log(proc)[-2000:]
        # no child left behind (multiprocessing's resource tracker ends at its pipe's EOF)
        _wait(lambda: _group(proc.pid) == [], 5, "every process of the worker to end")
        if proc.returncode == 0:  # one graceful stop
            status = subprocess.run(
                [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", namespace, "status", "--json"],
                capture_output=True, text=True, timeout=60, env=dict(os.environ, HF_HUB_OFFLINE="1"),
            )  # fmt: skip
            assert json.loads(status.stdout)["workers"] == []
            assert _held(client, namespace) == 0
        _finish(spawn, url, namespace, q, jobs, client)


# --------------------------------------------------------------------------- processes
def test_a_sigkilled_child_of_a_multi_process_worker_is_replaced_or_the_worker_exits(
    plain_server, namespace, spawn, client
):
    """``--processes 2``, one child SIGKILLed (the OOM killer's usual victim): the
    parent (process.py ``_run``) only ``join``s its children in order, so it neither
    starts a new child nor exits: the worker runs on at half its capacity for ever, and
    a supervisor (systemd, Kubernetes) sees a healthy process and restarts nothing.
    Expected: the parent restarts the dead child (or, at least, stops the others and
    exits non-zero so its supervisor restarts it). The dead child's fetched jobs must
    be redelivered and reported committed, once each."""
    url = plain_server.url
    settings = _settings(url, namespace)
    n = 40
    with MemoryQueue(settings, producer_id="p") as q:
        proc = spawn.start(url, namespace, "--processes", "2", "--threads", "2")
        _wait(lambda: len(_live(settings)) == 2, 30, "two live worker processes")
        children = _wait(lambda: [c for c in _children(proc.pid) if any(
            int(w["pid"]) == c for w in _live(settings))] or None, 10, "the children's pids")  # fmt: skip
        jobs = [q.enqueue_encode_job([f"SLOW100 child {i}"])[0] for i in range(n)]
        _wait(lambda: _stat(client, namespace, "committed") >= 2, 20, "a few commits")
        victim = children[0]
        os.kill(victim, signal.SIGKILL)
        report = q.drain(timeout=40, job_ids=jobs)  # the other child redelivers
        assert report.failed == [] and report.committed == n
        assert _stat(client, namespace, "committed") == n and _records(client, namespace) == n

        def replaced_or_exited() -> bool:
            if proc.poll() is not None:
                return True
            pids = {int(w["pid"]) for w in _live(settings)}
            return len(pids) == 2 and victim not in pids

        try:
            _wait(replaced_or_exited, 12, "a replacement child or the parent's exit")
        except AssertionError:
            raise AssertionError(
                f"child {victim} was SIGKILLed: the parent neither replaced it nor exited "
                f"(live worker pids {[int(w['pid']) for w in _live(settings)]})"
            ) from None
        if proc.poll() is not None:
            assert proc.returncode != 0


def test_children_exit_when_the_parent_is_sigkilled(plain_server, namespace, spawn, client):
    """``--processes 2`` with the parent SIGKILLed (OOM killer, ``kill -9`` of the pid
    in a pid file, a container runtime killing only pid 1's direct child): the spawned
    children do not watch their parent (no PR_SET_PDEATHSIG, no parent-pipe check), so
    they run on as orphans, keep fetching and keep showing as live workers; a
    supervisor that restarts the worker then runs 4 processes, and no signal sent to
    the new parent ever reaches the orphans. Expected: each child stops (gracefully,
    requeueing what it fetched) once its parent is gone."""
    url = plain_server.url
    settings = _settings(url, namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        proc = spawn.start(url, namespace, "--processes", "2", "--threads", "2")
        _wait(lambda: len(_live(settings)) == 2, 30, "two live worker processes")
        children = _children(proc.pid)
        assert len(children) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        try:
            _wait(lambda: not any(_alive(c) for c in children), 10, "the orphaned children to exit")
        except AssertionError:
            jobs = [q.enqueue_encode_job([f"orphan {i}"])[0] for i in range(5)]
            report = q.drain(timeout=20, job_ids=jobs)
            raise AssertionError(
                f"children {[c for c in children if _alive(c)]} outlived their SIGKILLed parent and "
                f"still commit jobs ({report.committed} of 5 committed by orphans; live workers "
                f"{[int(w['pid']) for w in _live(settings)]})"
            ) from None


# --------------------------------------------------------------------------- model
def test_a_model_of_another_dimension_refuses_to_start_instead_of_dead_lettering_the_backlog(
    plain_server, namespace, spawn, client
):
    """A namespace holds 32-d vectors; a worker is started with an 8-d model (a new
    ``MEMWORKER_MODEL``/embedder deployed to one host). ``_serve`` checks only the
    model *id* (``check_worker_model``: skipped with a warning when the embedder has
    none, and recorded first-writer-wins when the namespace has none yet), never the
    dimension against the namespace's stored one, so the worker starts, takes the whole
    backlog and dead-letters every job (``EmbeddingDimensionMismatchError``): one
    misconfigured host destroys every other producer's queue into the dead letters.
    Expected: the worker refuses to start (ConfigError, exit 2, a message naming both
    dimensions) and leaves the queued jobs queued for the correctly configured workers."""
    url = plain_server.url
    settings = _settings(url, namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        first = spawn.start(url, namespace, "--threads", "2")  # 32-d, no model id
        seeded = [q.enqueue_encode_job([f"seed {i}"])[0] for i in range(3)]
        assert q.drain(timeout=30, job_ids=seeded).committed == 3
        first.send_signal(signal.SIGTERM)
        assert _exited(first, 15 * SLACK)
        jobs = [q.enqueue_encode_job([f"backlog {i}"])[0] for i in range(6)]
        wrong = spawn.start(url, namespace, "--threads", "2", LC_DIM="8", LC_MODEL_ID="other-8d")
        exited = _exited(wrong, 15 * SLACK)
        dead = dead_list(settings)
        failed = _stat(client, namespace, "failed")
        assert dead == [] and failed == 0, (
            f"the 8-d worker dead-lettered {len(dead)} of the 6 queued jobs "
            f"(stats failed={failed}) instead of refusing to start"
        )
        assert exited and wrong.returncode == 2, spawn.log(wrong)[-2000:]
        assert "dimension" in spawn.log(wrong).lower()
        assert _queued(client, namespace) == 6
        del jobs


def test_max_retries_zero_fails_a_raising_job_once_and_commits_the_rest(plain_server, namespace, spawn, client):
    """``--max-retries 0``: a job whose model call always raises is failed (reported
    once, dead-lettered once) without a retry; the jobs fetched beside it commit once."""
    url = plain_server.url
    settings = _settings(url, namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        spawn.start(url, namespace, "--threads", "2", "--max-retries", "0")
        good = [q.enqueue_encode_job([f"good {i}"])[0] for i in range(8)]
        bad = q.enqueue_encode_job(["POISON always"])[0]
        report = q.drain(timeout=30, job_ids=[*good, bad])
        assert report.committed == 8
        assert [f.job_id for f in report.failed] == [bad]
        dead = dead_list(settings)
        assert [d["job_id"] for d in dead] == [bad]
        assert _stat(client, namespace, "failed") == 1 and _stat(client, namespace, "committed") == 8
        assert _held(client, namespace) == 0 and _queued(client, namespace) == 0
        # the next drain reports nothing again
        again = q.drain(timeout=5)
        assert again.failed == [] and again.committed == 0


def test_two_workers_with_different_thread_settings_share_a_namespace(plain_server, namespace, spawn, client):
    """One worker with ``--threads 1`` and ``MEMWORKER_INFERENCE_THREADS=1``, another
    with ``--threads 6`` and ``MEMWORKER_INFERENCE_THREADS=3``, on one namespace: both
    take jobs, each job commits once, none fails."""
    url = plain_server.url
    settings = _settings(url, namespace)
    n = 120
    with MemoryQueue(settings, producer_id="p") as q:
        spawn.start(url, namespace, "--threads", "1", MEMWORKER_INFERENCE_THREADS="1")
        spawn.start(url, namespace, "--threads", "6", MEMWORKER_INFERENCE_THREADS="3")
        _wait(lambda: len(_live(settings)) == 2, 30, "two live workers")
        jobs = [q.enqueue_encode_job([f"SLOW10 shared {i}"])[0] for i in range(n)]
        report = q.drain(timeout=40, job_ids=jobs)
        assert report.failed == [] and report.committed == n
        assert _stat(client, namespace, "committed") == n and _records(client, namespace) == n
        _wait(lambda: sum(int(w.get("processed", 0)) for w in _live(settings)) >= n, 5, "health counters")
        assert all(int(w.get("processed", 0)) > 0 for w in _live(settings)), _live(settings)


# --------------------------------------------------------------------------- Valkey outage
def test_a_ten_second_valkey_outage_loses_nothing_and_the_worker_resumes(namespace, spawn, tmp_path):
    """Valkey (AOF, fsync always) stops for 10 s (longer than the heartbeat and health
    timeouts) while the worker holds jobs, then comes back on its port with its data:
    the same worker process survives, reconnects, shows live again, and every job
    enqueued before and after the outage commits exactly once."""
    server = ChaosServer(extra=("--appendonly", "yes", "--appendfsync", "always")).start()
    client = server.client()
    settings = _settings(server.url, namespace)
    try:
        with MemoryQueue(settings, producer_id="p") as q:
            proc = spawn.start(server.url, namespace, "--threads", "2")
            _wait(lambda: _live(settings), 20, "a live worker")
            jobs = [q.enqueue_encode_job([f"SLOW50 before {i}"])[0] for i in range(30)]
            _wait(lambda: _stat(client, namespace, "committed") >= 2, 20, "a few commits")
            server.kill()
            time.sleep(10)  # the outage itself
            server.start()
            client = server.client()
            jobs += [q.enqueue_encode_job([f"after {i}"])[0] for i in range(10)]
            report = q.drain(timeout=30, job_ids=jobs)
            assert proc.poll() is None, spawn.log(proc)[-3000:]
            assert report.failed == [] and report.committed == len(jobs), report
            assert _stat(client, namespace, "committed") == len(jobs)
            assert _records(client, namespace) == len(jobs)
            _wait(lambda: [w for w in _live(settings) if int(w["pid"]) == proc.pid], 10, "the worker live again")
    finally:
        client.close()
        server.stop()
