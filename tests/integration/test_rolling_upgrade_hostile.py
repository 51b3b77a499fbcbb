"""A rolling upgrade, attacked (a review of session 33, helper-73).

Users run producers (agents) and workers on many hosts and upgrade them one at a
time: for a while the last release's code (commit ``b244bcd``) and today's share one
namespace on one Valkey. Nothing in README.md, docs/design.md or docs/scaling.md says
versions must not be mixed (only a namespace of an earlier *key layout* is refused
until ``memworker migrate``; layout is unchanged since b244bcd). So a user expects,
with one side on the old code and the other on today's:

1. CrewAI (QueuedMemory remember/remember_many/recall) and LangGraph (QueuedStore
   put/get/search/delete, with TTL): everything saved is committed exactly once, the
   producer's drain reports it, and reads by either version agree (non-ASCII texts).
2. A drain by either version of jobs committed by the other (one producer id kept
   across the upgrade of its host) reports each job once; two drains of one producer
   at once, one of each version, report each job once between them.
3. A dead letter made by one version is requeued by the other (``memworker dead
   requeue``: its script's arguments changed today, and the drain's claim now takes
   the producer's requeued set): the job commits its text exactly, once, and the
   producer's drains report it once.
4. A retention/TTL sweep by either version deletes what is due, and both read the same.

The old code runs in a subprocess with ``PYTHONPATH`` at b244bcd's ``memworker``
(``git archive`` into a temporary folder; skipped when git cannot read it); the
subprocess proves it imported that tree. Each test runs on a standalone server and on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("crewai")
pytest.importorskip("langgraph.store.base")

from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import DrainTimeout  # noqa: E402
from memworker.langgraph import QueuedStore  # noqa: E402
from memworker.keys import QueueKeys  # noqa: E402
from memworker.queue.admin import dead_list, dead_requeue  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

OLD_COMMIT = "b244bcd"
REPO = Path(__file__).resolve().parents[2]
DIM = 32

#: Texts of every kind a user saves: accents, CJK, emoji, RTL, combining marks.
TEXTS = [
    "caf\u00e9 stra\u00dfe \u00fcber apple",
    "\u65e5\u672c\u8a9e\u306e\u30e1\u30e2 river",
    "emoji \U0001f600\U0001f680 stone",
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 cloud",
    "e\u0301 combining \u2028 sep green",
    "plain ascii ticket",
]

# ----------------------------------------------------------------------------- the old side
CHILD = r'''
import hashlib, json, os, re, sys, time
import numpy as np

DIM = 32

class HashEncoder:
    dimension = DIM
    model_id = "test-hash-bow-32"
    def encode(self, texts):
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in zip(out, texts):
            if os.environ.get("MW_POISON") == "1" and "POISON" in str(text):
                raise RuntimeError("embedder down")
            for word in re.findall(r"\w+", str(text).lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                row[h % DIM] += (1.0 if (h >> 8) & 1 else -1.0) * (1.0 + ((h >> 9) % 7) / 7.0)
            norm = float(np.linalg.norm(row))
            if norm:
                row /= norm
            else:
                row[0] = 1.0
        return out

import memworker
from memworker.settings import Settings

def report(r):
    return {"committed": r.committed, "failed": sorted(f.job_id for f in r.failed), "lost": sorted(r.lost)}

def main():
    op, a = sys.argv[1], json.loads(sys.argv[2])
    out = {"file": memworker.__file__}
    from memworker import worker as worker_mod
    worker_mod.set_embedder_factory(HashEncoder)  # a store's query embedder too
    settings = Settings.from_url(a["url"], namespace=a["ns"], search_mode="exact")
    if op == "check":
        pass
    elif op == "worker":
        from memworker import worker as worker_mod
        worker_mod.set_embedder_factory(HashEncoder)
        with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100,
                                       min_backoff_ms=10, max_backoff_ms=50, max_retries=1):
            print(json.dumps({"ready": True, "file": memworker.__file__}), flush=True)
            sys.stdin.read()  # until the test closes it
        return
    elif op == "crewai_save":
        from memworker.crewai import LocalEmbedder, QueuedMemory
        from memworker.crewai.testing import StandInLLM
        m = QueuedMemory(storage=a["url"], namespace=a["ns"], embedder=LocalEmbedder(embedder=HashEncoder()),
                         llm=StandInLLM(), consolidation_threshold=1.0, drain_timeout=60,
                         producer_id=a["producer"])
        kw = dict(scope=a["scope"], categories=["c"], importance=0.5)
        m.remember(a["texts"][0], **kw)
        m.remember_many(a["texts"][1:], **kw)
        if a.get("drain"):
            m.drain_writes()
            out["report"] = report(m._queue.drain(timeout=60))
        m.close()
    elif op == "crewai_recall":
        from memworker.crewai import LocalEmbedder, QueuedMemory
        from memworker.crewai.testing import StandInLLM
        m = QueuedMemory(storage=a["url"], namespace=a["ns"], embedder=LocalEmbedder(embedder=HashEncoder()),
                         llm=StandInLLM(), consolidation_threshold=1.0, drain_timeout=60,
                         semantic_weight=1.0, recency_weight=0.0, importance_weight=0.0)
        out["recall"] = {q: [x.record.content for x in m.recall(q, scope=a["scope"], depth="shallow", limit=50)]
                         for q in a["queries"]}
        m.close()
    elif op == "lg":
        from memworker.langgraph import QueuedStore
        s = QueuedStore(a["url"], namespace=a["ns"], index={"dims": DIM, "fields": ["text"]},
                        producer_id=a.get("producer"), drain_timeout=60)
        res = []
        for step in a["ops"]:
            kind = step[0]
            if kind == "put":
                s.put(tuple(step[1]), step[2], step[3], ttl=step[4])
                res.append(None)
            elif kind == "delete":
                s.delete(tuple(step[1]), step[2])
                res.append(None)
            elif kind == "get":
                it = s.get(tuple(step[1]), step[2], refresh_ttl=False)
                res.append(None if it is None else it.value)
            elif kind == "search":
                res.append(sorted(json.dumps(h.value, sort_keys=True, ensure_ascii=False)
                                  for h in s.search(tuple(step[1]), query=step[2], limit=50, refresh_ttl=False)))
        out["res"] = res
        s.close()
    elif op == "enqueue":
        from memworker.queue.producer import MemoryQueue
        q = MemoryQueue(settings, producer_id=a["producer"])
        out["jobs"] = [q.enqueue_encode_job([{"text": t, "scope": a["scope"]}])[0] for t in a["texts"]]
        q.close()
    elif op == "drain":
        from memworker.queue.producer import MemoryQueue
        q = MemoryQueue(settings, producer_id=a["producer"])
        try:
            out["report"] = report(q.drain(timeout=a.get("timeout", 60)))
        except Exception as exc:
            out["error"] = type(exc).__name__
        q.close()
    elif op == "requeue":
        from memworker.queue.admin import dead_requeue
        out["n"] = dead_requeue(settings)
    elif op == "dead_list":
        from memworker.queue.admin import dead_list
        out["dead"] = [e.get("job_id") for e in dead_list(settings, limit=1000)]
    elif op == "sweep":
        from memworker.store.store import ValkeyStore
        st = ValkeyStore(settings)
        out["sweep"] = st.sweep(limit=500)
        st.close()
    print(json.dumps(out), flush=True)

main()
'''


def _old_tree(into: Path) -> Path:
    """The old release's ``memworker`` package, extracted with ``git archive`` (reads
    the repository only: no worktree, nothing left behind)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", OLD_COMMIT, "memworker"], capture_output=True,
    )  # fmt: skip
    if archive.returncode != 0:
        pytest.skip(f"cannot read {OLD_COMMIT} from git: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


@pytest.fixture(scope="session")
def old(tmp_path_factory):
    """``old(op, **args)``: run ``op`` with the old release in a subprocess; its JSON."""
    tree = _old_tree(tmp_path_factory.mktemp("old_release"))
    script = tmp_path_factory.mktemp("old") / "old_child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false",
               CREWAI_TESTING="true")  # fmt: skip
    env.pop(crewai_config.MEMORY_FACTORY_ENV, None)

    def run(op: str, extra_env: dict[str, str] | None = None, **args: Any) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(script), op, json.dumps(args)], capture_output=True, text=True,
            env={**env, **(extra_env or {})}, cwd=str(script.parent), timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"old {op} failed: {done.stderr[-3000:]}"
        out = json.loads(done.stdout.strip().split("\n")[-1])
        assert out["file"].startswith(str(tree)), out["file"]  # the old tree, really
        return out

    def start_worker(url: str, ns: str, poison: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(script), "worker", json.dumps({"url": url, "ns": ns})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**env, "MW_POISON": "1" if poison else "0"}, cwd=str(script.parent),
        )  # fmt: skip
        line = proc.stdout.readline()
        assert line, "the old worker did not start"
        assert json.loads(line)["file"].startswith(str(tree))
        return proc

    run.start_worker = start_worker  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    return run


@pytest.fixture
def old_workers(old):
    """``start(url, ns, poison=False)``: an old worker process; stopped at teardown."""
    procs: list[subprocess.Popen] = []

    def start(url: str, ns: str, poison: bool = False) -> subprocess.Popen:
        p = old.start_worker(url, ns, poison)
        procs.append(p)
        return p

    def stop(p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.stdin.close()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in procs:
            procs.remove(p)

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for p in list(procs):
        stop(p)


# ----------------------------------------------------------------------------- the new side
POISON_ON = threading.Event()


class HashEncoder:
    """The child's embedder, byte for byte: both versions embed alike."""

    dimension = DIM
    model_id = "test-hash-bow-32"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in zip(out, texts):
            if POISON_ON.is_set() and "POISON" in str(text):
                raise RuntimeError("embedder down")
            for word in re.findall(r"\w+", str(text).lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                row[h % DIM] += (1.0 if (h >> 8) & 1 else -1.0) * (1.0 + ((h >> 9) % 7) / 7.0)
            norm = float(np.linalg.norm(row))
            if norm:
                row /= norm
            else:
                row[0] = 1.0
        return out


@pytest.fixture
def ctx(queue_server, namespace, monkeypatch):
    """(url, namespace, settings, start_new_worker, stop_new_workers); ``.server``."""
    monkeypatch.delenv(crewai_config.MEMORY_FACTORY_ENV, raising=False)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(HashEncoder)
    POISON_ON.clear()
    settings = Settings.from_url(queue_server.url, namespace=namespace, search_mode="exact")
    running: list[Any] = []

    def start() -> None:
        c = worker_mod.running_worker(
            settings, threads=2, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=1
        )
        c.__enter__()
        running.append(c)

    def stop() -> None:
        while running:
            running.pop().__exit__(None, None, None)

    start.server = queue_server  # type: ignore[attr-defined]
    try:
        yield queue_server.url, namespace, settings, start, stop
    finally:
        stop()
        POISON_ON.clear()
        worker_mod.set_embedder_factory(None)
        crewai_config.reset_worker_memory_config()


def _memory(url: str, ns: str, producer: str | None = None) -> QueuedMemory:
    return QueuedMemory(
        storage=url, namespace=ns, embedder=LocalEmbedder(embedder=HashEncoder()), llm=StandInLLM(),
        consolidation_threshold=1.0, drain_timeout=60, producer_id=producer,
        semantic_weight=1.0, recency_weight=0.0, importance_weight=0.0,
    )  # fmt: skip


def _report(r: Any) -> dict[str, Any]:
    return {"committed": r.committed, "failed": sorted(f.job_id for f in r.failed), "lost": sorted(r.lost)}


def _contents(settings: Settings, scope: str) -> list[str]:
    st = ValkeyStore(settings)
    try:
        return sorted(r.content for r in st.list_records(scope_prefix=scope, limit=1000))
    finally:
        st.close()


def _new_recall(url: str, ns: str, scope: str, queries: list[str]) -> dict[str, list[str]]:
    m = _memory(url, ns)
    try:
        return {q: [x.record.content for x in m.recall(q, scope=scope, depth="shallow", limit=50)] for q in queries}
    finally:
        m.close()


def _wait(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _subscribed(server: Any, settings: Settings, pid: str) -> bool:
    """Whether a drain of ``pid`` subscribed to its done channel (it snapshots next)."""
    from redis.cluster import RedisCluster
    from valkey_servers import raw_client

    channel = QueueKeys(settings.namespace).producer(pid).done_channel
    client = raw_client(server)
    try:
        if isinstance(client, RedisCluster):
            nodes = [n.redis_connection or client.get_redis_connection(n) for n in client.get_nodes()]
        else:
            nodes = [client]
        return any(int(dict(n.pubsub_numsub(channel)).get(channel.encode(), 0)) for n in nodes)
    finally:
        client.close()


def _drain_behind(fn) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(r=fn()), daemon=True)
    t.start()
    return t, box


def _pid() -> str:
    return f"host-{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- 1. CrewAI
def test_crewai_old_producer_new_worker(ctx, old):
    """An old agent saves (remember + remember_many, non-ASCII); today's worker commits;
    the old producer's drain reports each job once; both versions read the same."""
    url, ns, settings, start, _ = ctx
    start()
    out = old("crewai_save", url=url, ns=ns, producer=_pid(), scope="/mix", texts=TEXTS, drain=True)
    assert out["report"]["failed"] == [] and out["report"]["lost"] == []
    assert _contents(settings, "/mix") == sorted(TEXTS)  # each text once, exactly
    queries = ["apple river", "\u65e5\u672c\u8a9e\u306e\u30e1\u30e2", "stone cloud", "ticket"]
    new = _new_recall(url, ns, "/mix", queries)
    got_old = old("crewai_recall", url=url, ns=ns, scope="/mix", queries=queries)["recall"]
    assert all(new[q] for q in queries)
    assert new == got_old


def test_crewai_new_producer_old_worker(ctx, old, old_workers):
    """Today's agent saves; an old worker commits: each text once and exactly, today's
    drain reports every job committed, and both versions recall the same."""
    url, ns, settings, _, _ = ctx
    old_workers(url, ns)
    m = _memory(url, ns, producer=_pid())
    try:
        m.remember(TEXTS[0], scope="/mix", categories=["c"], importance=0.5)
        m.remember_many(TEXTS[1:], scope="/mix", categories=["c"], importance=0.5)
        m.drain_writes()
        rep = _report(m._queue.drain(timeout=60))
    finally:
        m.close()
    assert rep["failed"] == [] and rep["lost"] == []
    assert _contents(settings, "/mix") == sorted(TEXTS)
    queries = ["apple river", "emoji stone", "\u05e9\u05dc\u05d5\u05dd cloud"]
    assert _new_recall(url, ns, "/mix", queries) == old("crewai_recall", url=url, ns=ns, scope="/mix",
                                                         queries=queries)["recall"]


# ----------------------------------------------------------------------------- LangGraph
LG_VALUES = [{"text": t, "n": i} for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("writer", ["old", "new"])
def test_langgraph_mixed_put_get_search_delete_ttl(ctx, old, old_workers, writer):
    """Puts (with and without TTL) and a delete by one version, committed by the other
    version's worker; gets and searches by both agree, the delete stays."""
    url, ns, settings, start, _ = ctx
    ops = [["put", ["u", "\u00fc"], f"k{i}", v, 60 if i % 2 else None] for i, v in enumerate(LG_VALUES)]
    ops.append(["delete", ["u", "\u00fc"], "k0"])
    ops.append(["put", ["u", "\u00fc"], "k1", {"text": "overwritten \u00e9t\u00e9 apple", "n": 99}, 60])
    reads = [["get", ["u", "\u00fc"], f"k{i}"] for i in range(len(LG_VALUES))]
    reads += [["search", ["u"], "apple"], ["search", ["u", "\u00fc"], "\u65e5\u672c\u8a9e\u306e\u30e1\u30e2"]]
    if writer == "old":
        start()  # today's worker commits the old store's puts
        got_old = old("lg", url=url, ns=ns, producer=_pid(), ops=ops + reads)["res"][len(ops):]
        s = QueuedStore(url, namespace=ns, index={"dims": DIM, "fields": ["text"]}, drain_timeout=60)
    else:
        old_workers(url, ns)
        s = QueuedStore(url, namespace=ns, index={"dims": DIM, "fields": ["text"]}, drain_timeout=60)
        for o in ops:
            if o[0] == "put":
                s.put(tuple(o[1]), o[2], o[3], ttl=o[4])
            else:
                s.delete(tuple(o[1]), o[2])
        s.get(("u", "\u00fc"), "k0")  # drains its puts
        got_old = old("lg", url=url, ns=ns, ops=reads)["res"]
    try:
        got_new = []
        for r in reads:
            if r[0] == "get":
                it = s.get(tuple(r[1]), r[2], refresh_ttl=False)
                got_new.append(None if it is None else it.value)
            else:
                got_new.append(sorted(
                    json.dumps(h.value, sort_keys=True, ensure_ascii=False)
                    for h in s.search(tuple(r[1]), query=r[2], limit=50, refresh_ttl=False)
                ))  # fmt: skip
        count = s.store.count("/langgraph")
    finally:
        s.close()
    want = [None, {"text": "overwritten \u00e9t\u00e9 apple", "n": 99}, *LG_VALUES[2:]]
    assert got_new[: len(LG_VALUES)] == want
    assert got_old == got_new
    assert count == len(LG_VALUES) - 1


# ----------------------------------------------------------------------------- 2. drains
def test_old_jobs_drained_by_new_producer_after_upgrade(ctx, old):
    """An old producer enqueues and its host is upgraded (same producer id): today's
    drain waits for and reports each of the old jobs once; a second drain nothing."""
    url, ns, settings, start, _ = ctx
    pid = _pid()
    jobs = old("enqueue", url=url, ns=ns, producer=pid, scope="/d", texts=TEXTS)["jobs"]
    q = MemoryQueue(settings, producer_id=pid)
    try:
        with pytest.raises(DrainTimeout):  # no worker yet: waited for
            q.drain(timeout=0.3)
        start()
        assert _report(q.drain(timeout=60)) == {"committed": len(jobs), "failed": [], "lost": []}
        assert _report(q.drain(timeout=10)) == {"committed": 0, "failed": [], "lost": []}
    finally:
        q.close()
    assert _contents(settings, "/d") == sorted(TEXTS)


def test_new_jobs_drained_by_old_producer_and_concurrent_mixed_drains(ctx, old, old_workers):
    """Today's producer enqueues, an old worker commits; an old drain and a new drain of
    the same producer at once report each job exactly once between them."""
    url, ns, settings, _, _ = ctx
    pid = _pid()
    q = MemoryQueue(settings, producer_id=pid)
    try:
        jobs = [q.enqueue_encode_job([{"text": t, "scope": "/d"}])[0] for t in TEXTS * 3]
        w = old_workers(url, ns)
        assert _wait(lambda: len(_contents(settings, "/d")) == len(jobs), 60)
        old_workers.stop(w)
        results: dict[str, Any] = {}
        t = threading.Thread(target=lambda: results.update(old=old("drain", url=url, ns=ns, producer=pid)))
        t.start()
        results["new"] = _report(q.drain(timeout=60))
        t.join(120)
    finally:
        q.close()
    o = results["old"]["report"]
    assert o["failed"] == [] and o["lost"] == [] and results["new"]["failed"] == []
    assert o["committed"] + results["new"]["committed"] == len(jobs)


# ----------------------------------------------------------------------------- 3. dead letters
POISON_TEXTS = ["POISON caf\u00e9 \u65e5\u672c \U0001f600 one", "POISON \u05e9\u05dc\u05d5\u05dd two"]


def test_dead_letter_of_new_worker_requeued_by_old_cli(ctx, old):
    """Today's worker dead-letters two jobs; the old ``dead requeue`` puts them back;
    today's worker commits each text exactly, once; the producer's drains report the
    failures once, then the requeued jobs committed once."""
    url, ns, settings, start, stop = ctx
    pid = _pid()
    q = MemoryQueue(settings, producer_id=pid)
    try:
        POISON_ON.set()
        start()
        jobs = [q.enqueue_encode_job([{"text": t, "scope": "/dl"}])[0] for t in POISON_TEXTS]
        first = _report(q.drain(timeout=60))
        assert first["failed"] == sorted(jobs) and first["committed"] == 0
        assert _wait(lambda: len(dead_list(settings)) == 2)
        stop()
        POISON_ON.clear()
        assert old("requeue", url=url, ns=ns)["n"] == 2
        with pytest.raises(DrainTimeout):  # the requeued jobs are waited for
            q.drain(timeout=0.3)
        # the drain snapshots them while pending (the old requeue lists no requeued
        # set: a drain that begins after their commit cannot see them, see below)
        t, box = _drain_behind(lambda: _report(q.drain(timeout=60)))
        assert _wait(lambda: _subscribed(start.server, settings, pid))
        time.sleep(0.3)
        start()
        t.join(90)
        assert box["r"] == {"committed": 2, "failed": [], "lost": []}
        assert _report(q.drain(timeout=10)) == {"committed": 0, "failed": [], "lost": []}
    finally:
        q.close()
    assert _contents(settings, "/dl") == sorted(POISON_TEXTS)
    assert dead_list(settings) == []


@pytest.mark.parametrize("drain_first", ["old", "new"])
def test_dead_letter_of_old_worker_requeued_by_new_cli(ctx, old, old_workers, drain_first):
    """An old worker dead-letters an old producer's jobs; today's ``dead requeue`` puts
    them back (UTF-8 now) and an old worker commits them before any drain; then the
    producer, drained by one version and then the other (its host upgraded or rolled
    back), reports each requeued job committed exactly once."""
    url, ns, settings, _, _ = ctx
    pid = _pid()
    w = old_workers(url, ns, poison=True)
    jobs = old("enqueue", url=url, ns=ns, producer=pid, scope="/dl", texts=POISON_TEXTS)["jobs"]
    first = old("drain", url=url, ns=ns, producer=pid)["report"]
    assert first["failed"] == sorted(jobs)
    assert _wait(lambda: len(dead_list(settings)) == 2)
    assert sorted(e["job_id"] for e in dead_list(settings)) == sorted(jobs)
    old_workers.stop(w)
    assert dead_requeue(settings) == 2
    old_workers(url, ns, poison=False)
    assert _wait(lambda: len(_contents(settings, "/dl")) == 2, 60)
    q = MemoryQueue(settings, producer_id=pid)
    try:
        if drain_first == "old":
            a = old("drain", url=url, ns=ns, producer=pid)["report"]
            b = _report(q.drain(timeout=10))
        else:
            a = _report(q.drain(timeout=10))
            b = old("drain", url=url, ns=ns, producer=pid)["report"]
    finally:
        q.close()
    assert a["failed"] == [] and b["failed"] == [] and a["lost"] == [] and b["lost"] == []
    assert a["committed"] + b["committed"] == 2, (a, b)
    if drain_first == "new":  # today's drain reports a requeued job committed before it
        assert a["committed"] == 2
    assert _contents(settings, "/dl") == sorted(POISON_TEXTS)  # the exact texts, once
    assert dead_list(settings) == []


def test_requeued_by_new_cli_reported_by_old_drain_not_again_by_new(ctx, old, old_workers):
    """Today's requeue lists the job in the producer's requeued set; an old drain (whose
    claim does not clear that set) reports it; a later new drain must not report it a
    second time, nor report it lost."""
    url, ns, settings, start, stop = ctx
    pid = _pid()
    q = MemoryQueue(settings, producer_id=pid)
    try:
        POISON_ON.set()
        start()
        jobs = [q.enqueue_encode_job([{"text": t, "scope": "/dl"}])[0] for t in POISON_TEXTS]
        assert _report(q.drain(timeout=60))["failed"] == sorted(jobs)
        assert _wait(lambda: len(dead_list(settings)) == 2)
        stop()
        POISON_ON.clear()
        assert dead_requeue(settings) == 2
        # the old drain snapshots the jobs while pending again, reports them committed
        t, box = _drain_behind(lambda: old("drain", url=url, ns=ns, producer=pid)["report"])
        assert _wait(lambda: _subscribed(start.server, settings, pid), 60)
        time.sleep(0.3)
        old_workers(url, ns)
        t.join(120)
        a = box["r"]
        b = _report(q.drain(timeout=10))
    finally:
        q.close()
    assert a == {"committed": 2, "failed": [], "lost": []}
    assert b == {"committed": 0, "failed": [], "lost": []}
    assert _contents(settings, "/dl") == sorted(POISON_TEXTS)


# ----------------------------------------------------------------------------- 4. sweeps
@pytest.mark.parametrize("sweeper", ["old", "new"])
def test_ttl_sweep_by_either_version(ctx, old, sweeper):
    """Items put with a short TTL by today's store, one without; the sweep of either
    version deletes the due ones with their side indexes; both versions read alike."""
    url, ns, settings, start, stop = ctx
    start()
    s = QueuedStore(url, namespace=ns, index={"dims": DIM, "fields": ["text"]}, drain_timeout=60)
    try:
        s.put(("t",), "keep", {"text": "keep caf\u00e9 apple"}, ttl=None)
        for i in range(3):
            s.put(("t",), f"due{i}", {"text": f"due \u65e5\u672c apple {i}"}, ttl=0.01)  # 0.6 s
        assert s.get(("t",), "keep") is not None
        assert s.store.count("/langgraph") == 4
        stop()  # no worker's own sweep: the one under test deletes them
        time.sleep(1.0)
        if sweeper == "old":
            swept = old("sweep", url=url, ns=ns)["sweep"]
        else:
            swept = s.store.sweep(limit=500)
        assert swept["expired"] == 3
        assert s.store.count("/langgraph") == 1
        new = [None if (it := s.get(("t",), k, refresh_ttl=False)) is None else it.value
               for k in ("keep", "due0", "due1", "due2")]  # fmt: skip
        hits = sorted(json.dumps(h.value, sort_keys=True, ensure_ascii=False)
                      for h in s.search(("t",), query="apple", limit=50, refresh_ttl=False))  # fmt: skip
    finally:
        s.close()
    reads = [["get", ["t"], k] for k in ("keep", "due0", "due1", "due2")] + [["search", ["t"], "apple"]]
    got_old = old("lg", url=url, ns=ns, ops=reads)["res"]
    assert new == [{"text": "keep caf\u00e9 apple"}, None, None, None]
    assert got_old == [*new, hits]
