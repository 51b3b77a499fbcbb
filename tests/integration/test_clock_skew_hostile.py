"""Clocks that disagree: producers, workers and readers on hosts whose clocks are
minutes apart from each other (NTP off, a VM resumed), against one Valkey server.

A skewed process is a real subprocess (a worker from ``memworker worker``, or a
producer / reader script) whose ``time.time`` and ``time.time_ns`` are shifted by a
``sitecustomize.py`` put first on its PYTHONPATH; the test process keeps the true
clock (as does the server). Which clock each decision uses:

- LangGraph put version (later put wins): the producer's ``time.time_ns``
  (documented: "two puts of one key from two hosts within the clock skew may keep
  either"; not tested here);
- an item's expiry ``exp``: the producer's ``time.time`` + ttl (langgraph.py);
- a read hiding an expired item: the reader's ``time.time`` (langgraph.py ``_p_live``);
- the sweep (TTL expiries and retention cut-off): the worker's ``time.time``
  (store/store.py ``_sweep``), compared in lua/store.lua ``sweep`` with nothing else;
- commit markers (drain reports) and their 1 h trim: the committing worker's clock;
- worker liveness (``memworker check``/``status``): the worker's clock writes the
  heartbeat score, the reader's clock filters it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("langgraph.store.base")

from memworker import worker as worker_mod  # noqa: E402
from memworker.keys import QueueKeys  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402
from memworker.queue.admin import check_health  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.records import utcnow  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]

_SITE = """
import os, time
_off = float(os.environ.get("SKEW_OFFSET_S", "0"))
if _off:
    _t, _tns = time.time, time.time_ns
    time.time = lambda: _t() + _off
    time.time_ns = lambda: _tns() + int(_off * 1_000_000_000)
"""

HOUR = 3600.0


@pytest.fixture
def settings(plain_server, namespace) -> Settings:
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def raw(plain_server):
    """A plain client of the test's server, for inspecting queue keys."""
    from valkey_servers import raw_client

    client = raw_client(plain_server)
    yield client
    client.close()


@pytest.fixture
def skew_dir(tmp_path) -> Path:
    d = tmp_path / "skew"
    d.mkdir()
    (d / "sitecustomize.py").write_text(_SITE)
    return d


def _env(skew_dir: Path, settings: Settings, offset_s: float, **extra: str) -> dict[str, str]:
    return dict(
        os.environ, SKEW_OFFSET_S=str(offset_s), HF_HUB_OFFLINE="1",
        VALKEY_URL=settings.url(redact=False), MEMWORKER_NAMESPACE=settings.namespace,
        MEMWORKER_EMBEDDER="chaos_embedder:make",
        PYTHONPATH=os.pathsep.join([str(skew_dir), str(TESTS), str(TESTS / "chaos")]),
        **extra,
    )  # fmt: skip


def _worker(skew_dir: Path, settings: Settings, offset_s: float, log: Path, **extra: str) -> subprocess.Popen:
    """A ``memworker worker`` process whose clock is ``offset_s`` seconds off."""
    return subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "worker", "--processes", "1", "--threads", "2"],
        env=_env(skew_dir, settings, offset_s, **extra), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _run(skew_dir: Path, settings: Settings, offset_s: float, code: str) -> str:
    """Run ``code`` in a Python process whose clock is ``offset_s`` seconds off."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=_env(skew_dir, settings, offset_s),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _wait(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_the_skew_helper_shifts_a_subprocess_clock(skew_dir, settings):
    """The harness itself: a subprocess sees its clock an hour ahead (else every
    test below would prove nothing)."""
    out = _run(skew_dir, settings, HOUR, "import time; print(time.time(), time.time_ns())")
    t, tns = (float(x) for x in out.split())
    assert t - time.time() > HOUR - 60 and tns / 1e9 - time.time() > HOUR - 60


# ============================================================================ TTL and retention
@pytest.mark.parametrize("offset", [0, HOUR], ids=["in-sync", "1h-ahead"])
def test_a_worker_with_its_clock_ahead_does_not_sweep_an_item_before_its_ttl(offset, skew_dir, settings, tmp_path):
    """An item put (by a host with the right clock) with a 30 minute TTL must stay
    readable for 30 minutes. A worker whose clock is an hour ahead sweeps it at once:
    data loss, although every reader with the right clock still sees it as live."""
    proc = _worker(skew_dir, settings, offset, tmp_path / "w.log", MEMWORKER_SWEEP_INTERVAL="0.2")
    try:
        with QueuedStore(settings, drain_timeout=90) as lg:
            lg.put(("n",), "k", {"text": "keep me"}, ttl=30)
            lg.put(("n",), "canary", {"text": "due"}, ttl=0.001)  # due by every clock
            assert lg.get(("n",), "k", refresh_ttl=False) is not None  # committed
            canary = record_id(("n",), "canary")
            # a sweep ran since the commit: the canary (due) is gone
            _wait(lambda: lg.store.expiries([canary])[0] is None, "a sweep of the due canary")
            item = lg.get(("n",), "k", refresh_ttl=False)
            assert item is not None and item.value == {"text": "keep me"}, (
                "a 30-minute item was swept within seconds by a worker whose clock is ahead"
            )
    finally:
        _stop(proc)


@pytest.mark.parametrize("offset", [0, HOUR], ids=["in-sync", "1h-ahead"])
def test_a_worker_with_its_clock_ahead_does_not_apply_retention_early(offset, skew_dir, settings, tmp_path):
    """A retention policy of 0.03 days (43 minutes) deletes records created more than
    that long ago; a record created just now must stay. A worker an hour ahead deletes
    it with the old ones."""
    with ValkeyStore(settings) as store:
        store.save([
            {"id": "fresh", "content": "fresh", "scope": "/crew", "created_at": utcnow(), "embedding": None},
            {"id": "old", "content": "old", "scope": "/crew",
             "created_at": utcnow() - timedelta(hours=3), "embedding": None},
        ])  # fmt: skip
        store.set_retention("/crew", 0.03)
        proc = _worker(skew_dir, settings, offset, tmp_path / "w.log", MEMWORKER_SWEEP_INTERVAL="0.2")
        try:
            _wait(lambda: "old" not in {r.id for r in store.list_records("/")}, "the sweep of the old record")
        finally:
            _stop(proc)
        ids = {r.id for r in store.list_records("/")}
        assert "fresh" in ids, "a record created seconds ago was deleted by a 43-minute retention policy"


@pytest.mark.parametrize("offset", [0, -600], ids=["in-sync", "10min-behind"])
def test_a_put_from_a_host_behind_keeps_its_ttl(offset, skew_dir, settings, embedder_factory):
    """``put(..., ttl=5)`` from a producer whose clock is 10 minutes behind: the item
    must be readable (by a reader with the right clock) for its 5 minutes. Its expiry
    is computed from the producer's clock (now - 10 min + 5 min): it is dead on
    arrival, hidden by every read and deleted by the next sweep."""
    with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100):
        _run(skew_dir, settings, offset, f"""
            from memworker.langgraph import QueuedStore
            from memworker.settings import Settings
            s = Settings.from_url({settings.url(redact=False)!r}, namespace={settings.namespace!r}, search_mode="exact")
            with QueuedStore(s, drain_timeout=90) as lg:
                lg.put(("n",), "k", {{"text": "five minutes"}}, ttl=5)
                lg.get(("n",), "k", refresh_ttl=False)  # drains: committed
        """)  # fmt: skip
        with QueuedStore(settings) as lg:
            item = lg.get(("n",), "k", refresh_ttl=False)
    assert item is not None, "an item put with a 5-minute TTL by a host 10 minutes behind is expired at once"


@pytest.mark.parametrize("offset", [0, -600], ids=["in-sync", "10min-behind"])
def test_a_reader_behind_does_not_return_an_expired_item(offset, skew_dir, settings, embedder_factory):
    """An item past its TTL is never returned by ``get`` (guarantees 4b), before any
    sweep. A reader whose clock is 10 minutes behind still returns an item that
    expired (by the server's clock and the putting host's) for up to 10 minutes."""
    with QueuedStore(settings, drain_timeout=90) as lg:
        with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100):
            lg.put(("n",), "k", {"text": "short"}, ttl=0.01)  # 0.6 s
            assert lg.get(("n",), "k", refresh_ttl=False) is not None  # committed
        rid = record_id(("n",), "k")
        exp = lg.store.expiries([rid])[0]
        assert exp is not None
        _wait(lambda: int(time.time() * 1000) > exp + 200, "the expiry")
        assert lg.get(("n",), "k", refresh_ttl=False) is None  # expired for a reader in sync
        out = _run(skew_dir, settings, offset, f"""
            from memworker.langgraph import QueuedStore
            from memworker.settings import Settings
            s = Settings.from_url({settings.url(redact=False)!r}, namespace={settings.namespace!r}, search_mode="exact")
            with QueuedStore(s) as lg:
                print("FOUND" if lg.get(("n",), "k", refresh_ttl=False) is not None else "NONE")
        """)  # fmt: skip
    assert out.strip().endswith("NONE"), "a reader 10 minutes behind returned an item past its TTL"


# ============================================================================ drain reports
@pytest.mark.parametrize("offset", [0, 2 * HOUR], ids=["in-sync", "2h-ahead"])
def test_a_worker_ahead_does_not_make_another_workers_commit_reported_lost(offset, skew_dir, settings, tmp_path, raw):
    """Job A commits on a worker with the right clock; job B of the same producer on a
    worker whose clock is 2 hours ahead. Both committed, so the producer's drain must
    report 2 committed and nothing failed. The ahead worker's commit trims the
    producer's commit markers "older than 1 h" by its own clock, which removes A's
    marker: the drain reports A lost (failed) seconds after it committed."""
    keys = QueueKeys(settings.namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        w1 = _worker(skew_dir, settings, 0, tmp_path / "w1.log")
        try:
            a, _ = q.enqueue_encode_job(["job a"])
            _wait(lambda: raw.zscore(keys.producer("p").committed, a) is not None, "A's commit", 90)
        finally:
            _stop(w1)
        w2 = _worker(skew_dir, settings, offset, tmp_path / "w2.log")
        try:
            b, _ = q.enqueue_encode_job(["job b"])
            _wait(lambda: raw.zscore(keys.producer("p").committed, b) is not None
                  or raw.zcard(keys.producer("p").pending) == 0, "B's commit", 90)  # fmt: skip
            report = q.drain(timeout=60, job_ids=[a, b])
        finally:
            _stop(w2)
    assert report.lost == [] and report.failed == [] and report.committed == 2, report


# ============================================================================ worker liveness
@pytest.mark.parametrize("offset", [0, -600], ids=["in-sync", "10min-behind"])
def test_check_sees_a_live_worker_whose_clock_is_behind(offset, skew_dir, settings, tmp_path, raw):
    """``memworker check --any`` exits 0 while a worker is live. A live worker whose
    clock is 10 minutes behind writes its heartbeat with its own clock, and the check
    filters heartbeats by the checker's clock: the live worker counts as dead (a
    liveness probe would restart it forever; ``status`` lists no worker)."""
    keys = QueueKeys(settings.namespace)
    proc = _worker(skew_dir, settings, offset, tmp_path / "w.log")
    try:
        # live: its health hash (server-side TTL 5 s) exists and is refreshed
        _wait(lambda: raw.zcard(keys.workers) > 0
              and raw.exists(keys.worker(raw.zrange(keys.workers, 0, 0)[0].decode())), "the worker's health key")  # fmt: skip
        assert proc.poll() is None
        assert check_health(settings), "a live worker whose clock is 10 minutes behind is reported dead"
    finally:
        _stop(proc)


@pytest.fixture
def embedder_factory():
    from test_langgraph import WordEmbedder

    worker_mod.set_embedder_factory(WordEmbedder)
    yield
    worker_mod.set_embedder_factory(None)


def test_a_worker_whose_clock_read_fails_keeps_beating(plain_server, namespace, raw):
    """A health beat reads the server's clock first. A ``TIME`` that fails (here an ACL
    user without it; a one-off error alike) keeps the last offset and the beat goes on:
    it skipped the whole beat, so a working worker never showed live to ``check`` or a
    drain's diagnostics."""
    from memworker.queue.admin import live_workers
    from memworker.worker.process import running_worker

    user = f"notime{namespace}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">notime-Pa55", "~*", "&*", "+@all", "-time")
    try:
        url = plain_server.url.replace("valkey://", f"valkey://{user}:notime-Pa55@")
        settings = Settings.from_url(url, namespace=namespace)
        with running_worker(settings, threads=1, worker_timeout_ms=100) as (broker, _):
            deadline = time.monotonic() + 60
            while not live_workers(settings):
                assert time.monotonic() < deadline, "the worker never showed live"
                time.sleep(0.05)
            with pytest.raises(Exception, match="(?i)permission|NOPERM"):
                broker.client.time()  # the clock really is refused to this user
    finally:
        raw.execute_command("ACL", "DELUSER", user)


def test_a_drain_out_of_time_counts_a_live_worker_whose_clock_is_behind(settings, raw):
    """A drain's timeout names its likely cause. A worker counts as live while its health
    key exists (``check`` and ``status`` count so); the drain counted beats of the last
    5 s by the reader's clock, so a live worker whose clock is 10 minutes behind was
    "no live worker: start one", sending the operator to start workers that run."""
    from memworker.errors import DrainTimeout

    keys = QueueKeys(settings.namespace)
    # what a live worker 10 minutes behind has written: its health key (expiring by the
    # server's clock) and its beat, stamped by its own clock
    raw.hset(keys.worker("behind-1"), mapping={"pid": 1, "host": "h", "beat_ms": int(time.time() * 1000) - 600_000})
    raw.pexpire(keys.worker("behind-1"), 60_000)
    raw.zadd(keys.workers, {"behind-1": int(time.time() * 1000) - 600_000})
    with MemoryQueue(settings, producer_id="p") as q:
        q.enqueue_encode(["waits for the worker"])
        with pytest.raises(DrainTimeout) as info:
            q.drain(timeout=0.5)
    assert "no live worker" not in str(info.value), str(info.value)
    assert "1 live worker(s)" in str(info.value), str(info.value)
