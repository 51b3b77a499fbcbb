"""The README's minimal ACL rules (Security: users ``agent``, ``worker``, ``reader``)
against every public operation the docs give each role (a review of 2026-12-08,
helper-84), on the plain and the module server, with real in-process workers.

The README promises the rules are enough for their role: the agent (producer) runs
``QueuedMemory``, ``MemoryQueue`` and LangGraph's ``QueuedStore``; the worker commits
save and encode jobs, sweeps (TTL, retention), dead-letters and takes over a dead
worker's jobs; the reader recalls (search, get, list, count: the store, a read-only
CrewAI memory, a LangGraph store with ``refresh_on_read: False``). The operators'
CLI commands run with the worker's credentials (the README: keep them with the
operator); the read-only ones with every user's. A refusal must name the refused
permission, and nothing a user of namespace ``sec`` does reaches another one's keys.

The servers and users are test_security's (``acl_server``: the README's rules as
written, for namespace ``sec``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import timedelta

import numpy as np
import pytest
from test_security import PASSWORD, _admin, acl_server  # noqa: F401 - the fixture

pytest.importorskip("crewai")
pytest.importorskip("langgraph.store.base")

from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp  # noqa: E402

from memworker import MemoryQueue, ValkeyStore  # noqa: E402
from memworker import worker as worker_mod  # noqa: E402
from memworker.cli import EXIT_OK, main  # noqa: E402
from memworker.crewai import LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import MemworkerError  # noqa: E402
from memworker.langgraph import QueuedStore  # noqa: E402
from memworker.queue.jobs import QueueKeys  # noqa: E402
from memworker.records import utcnow  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.worker.process import running_worker  # noqa: E402

DIM = 8
NS = "sec"
FAST = dict(categories=["c"], importance=0.5)
REFUSED = r"(?i)no permissions|noperm|permission"


class HashEmbedder:
    """A deterministic unit vector per text; texts containing ``poison`` fail."""

    dimension = DIM
    model_id = "hash-8"

    def encode(self, texts):
        out = []
        for t in texts:
            if "poison" in t:
                raise RuntimeError("embedder down")
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def url(server, user: str) -> str:
    return f"valkey://{user}:{PASSWORD}@127.0.0.1:{server.port}"


def settings(server, user: str, namespace: str = NS) -> Settings:
    return Settings.from_url(url(server, user), namespace=namespace)


def cli(server, user: str, *args: str) -> int:
    return main(["--url", url(server, user), "--namespace", NS, *args])


@pytest.fixture
def env(acl_server, monkeypatch):  # noqa: F811
    """The hash embedder in this process's workers, CrewAI's stand-in LLM for flow
    jobs, a sweep every half second; every key of ``sec`` deleted afterwards."""
    monkeypatch.setenv("MEMWORKER_SWEEP_INTERVAL", "0.5")
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, "memworker.crewai.testing:standin_memory_config")
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(HashEmbedder)
    yield acl_server
    worker_mod.set_embedder_factory(None)
    crewai_config.reset_worker_memory_config()
    admin = _admin(acl_server)
    names = admin.keys(f"{{{NS}}}:*")
    if names:
        admin.delete(*names)
    admin.close()


def worker(server):
    return running_worker(
        settings(server, "worker"), threads=2, worker_timeout_ms=100, min_backoff_ms=10,
        max_backoff_ms=50, max_retries=1,
    )  # fmt: skip


def memory(server, user: str, **kwargs) -> QueuedMemory:
    kwargs.setdefault("consolidation_threshold", 1.0)
    return QueuedMemory(
        storage=url(server, user), namespace=NS, embedder=LocalEmbedder(embedder=HashEmbedder()),
        llm=StandInLLM(), drain_timeout=30, **kwargs,
    )  # fmt: skip


def _wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# ============================================================================ agent
def test_agent_runs_every_queued_memory_call(env):
    """remember / remember_many / recall / update / forget / reset and their async
    twins, fast path and CrewAI's flow path, by the README's ``agent``."""
    with worker(env):
        m = memory(env, "agent")
        first = m.remember("the agent remembers alpha", scope="/crew/a", **FAST)
        assert first is not None and first.content == "the agent remembers alpha"
        assert m.remember_many(["beta one", "beta two"], scope="/crew/a", **FAST) == []
        m.drain_writes()
        got = asyncio.run(m.aremember("gamma async", scope="/crew/a", **FAST))
        assert got is not None
        asyncio.run(m.aremember_many(["delta one", "delta two"], scope="/crew/b", **FAST))
        assert len(m.recall("alpha", scope="/crew", depth="shallow", limit=10)) == 6
        assert len(asyncio.run(m.arecall("alpha", scope="/crew", depth="shallow", limit=10))) == 6
        assert m.update(first.id, content="alpha updated").content == "alpha updated"
        assert len(m.list_records(scope="/crew/a")) == 4
        assert m.info("/").record_count == 6 and m.list_categories() == {"c": 6}
        m.set_retention("/crew/old", 30)
        flow = memory(env, "agent", consolidation_threshold=0.85)  # CrewAI's default: the flow path
        assert flow.remember("a text whose fields the worker's LLM infers") is not None
        assert m.forget(scope="/crew/b") == 2
        m.reset(scope="/crew/a")
        assert m.list_records(scope="/crew/a") == []
        m.reset_all()
        m.close()
        flow.close()


def test_agent_runs_the_queue_and_every_langgraph_operation(env):
    """MemoryQueue enqueue/drain (sync and async) and QueuedStore put/get/search/
    delete/list_namespaces/batch/abatch, with and without TTL and index."""
    with worker(env):
        with MemoryQueue(settings(env, "agent"), producer_id="p-acl") as q:
            q.enqueue_encode([{"text": "queued", "scope": "/q", **FAST}, "bare"])
            q.enqueue_save([{"id": "s1", "content": "saved", "scope": "/q", "embedding": [0.5] * DIM}])
            assert q.drain(timeout=30).committed == 2
            asyncio.run(q.aenqueue_encode(["async queued"]))
            assert asyncio.run(q.adrain(timeout=30)).committed == 1
            assert q.drain_all(timeout=30).failed == []
            assert q.status()["namespace"] == NS
        index = {"dims": DIM, "fields": ["text"]}
        for ttl in (None, {"default_ttl": 10, "sweep_interval_minutes": 5}):
            with QueuedStore(settings(env, "agent"), index=index, ttl=ttl) as lg:
                lg.put(("u",), "k", {"text": "tea", "n": 1})
                lg.put(("u",), "plain", {"text": "no index"}, index=False)
                lg.put(("u", "v"), "t", {"text": "short lived"}, ttl=5 if ttl else None)
                assert lg.get(("u",), "k").value == {"text": "tea", "n": 1}
                assert [i.key for i in lg.search(("u",), query="tea", filter={"n": {"$gte": 1}})] == ["k"]
                assert {i.key for i in lg.search(("u",))} == {"k", "plain", "t"}
                assert lg.list_namespaces(prefix=("u",)) == [("u",), ("u", "v")]
                lg.delete(("u",), "plain")
                assert lg.get(("u",), "plain") is None
                got = lg.batch([PutOp(("w",), "b", {"text": "batched"}), GetOp(("w",), "b"),
                                SearchOp(("w",), query="batched"), ListNamespacesOp()])  # fmt: skip
                assert got[1].value == {"text": "batched"} and [i.key for i in got[2]] == ["b"]
                got = asyncio.run(lg.abatch([PutOp(("w",), "a", {"text": "async"}), GetOp(("w",), "a")]))
                assert got[1].value == {"text": "async"}
                assert asyncio.run(lg.aget(("u",), "k")).value == {"text": "tea", "n": 1}
                asyncio.run(lg.adelete(("u",), "k"))
                assert "k" not in [i.key for i in asyncio.run(lg.asearch(("u",), query="tea"))]
                for key in ("k", "t"):
                    lg.delete(("u",) if key == "k" else ("u", "v"), key)
                for key in ("a", "b"):
                    lg.delete(("w",), key)


# ============================================================================ worker
def test_worker_sweeps_dead_letters_and_takes_over_a_dead_workers_jobs(env):
    """The worker user's background duties: the sweep (retention and TTL), a poison
    job dead-lettered and its CLI handling, and a dead worker's fetched job requeued
    (dramatiq's maintenance: KEYS) and committed."""
    agent = ValkeyStore(settings(env, "agent"))
    old = utcnow() - timedelta(days=40)
    agent.save([{"id": f"old{i}", "content": "old", "scope": "/ret", "created_at": old,
                 "embedding": [1.0] * DIM} for i in range(3)])  # fmt: skip
    assert cli(env, "worker", "retention", "set", "/ret", "--days", "30") == EXIT_OK
    keys = QueueKeys(NS)
    admin = _admin(env)
    with MemoryQueue(settings(env, "agent"), producer_id="p-w") as q:
        with worker(env):
            with QueuedStore(settings(env, "agent"), ttl={"default_ttl": 0.02}) as lg:
                lg.put(("t",), "k", {"x": 1})
                assert lg.get(("t",), "k") is not None
            q.enqueue_encode(["poison pill"])
            report = q.drain(timeout=30)
            assert len(report.failed) == 1
            # retention and TTL: both swept by the worker user
            assert _wait(lambda: agent.count("/ret") == 0 and agent.count("/langgraph") == 0)
        # a worker that fetched a job and died
        job = q.enqueue_save([{"id": "dw", "content": "dw", "scope": "/dw", "embedding": [0.5] * DIM}])
        message = admin.lpop(keys.q())
        admin.sadd(f"{keys.dq_namespace}:__acks__.deadbeef.default", message)
        admin.zadd(keys.heartbeats, {"deadbeef": 1})
        with worker(env):
            assert q.drain(timeout=30, job_ids=[job]).committed == 1
            assert cli(env, "worker", "dead", "list") == EXIT_OK
            assert cli(env, "worker", "dead", "requeue") == EXIT_OK
            assert len(q.drain(timeout=30).failed) == 1  # it fails again
            assert cli(env, "worker", "dead", "purge") == EXIT_OK
    assert agent.count("/dw") == 1
    admin.close()
    agent.close()


# ============================================================================ reader
def test_reader_reads_the_store_and_a_langgraph_store_and_writes_are_refused_by_name(env):
    with worker(env):
        m = memory(env, "agent")
        m.remember("reader can see this", scope="/r", **FAST)
        with QueuedStore(settings(env, "agent"), index={"dims": DIM, "fields": ["text"]},
                         ttl={"default_ttl": 10}) as lg:  # fmt: skip
            lg.put(("u",), "k", {"text": "tea"})
            lg.get(("u",), "k")
        m.close()
    store = ValkeyStore(settings(env, "reader"))
    assert store.count("/r") == 1 and len(store.list_records("/r")) == 1
    assert len(store.search(HashEmbedder().encode(["reader can see this"])[0].tolist(), limit=5)) == 2
    assert store.get_scope_info("/").record_count == 2 and store.list_categories()["c"] == 1
    assert asyncio.run(store.acount()) == 2
    with pytest.raises(MemworkerError, match=REFUSED):
        store.save([{"id": "x", "content": "no", "scope": "/r", "embedding": [0.5] * DIM}])
    store.close()
    index = {"dims": DIM, "fields": ["text"]}
    with QueuedStore(settings(env, "reader"), index=index, ttl={"refresh_on_read": False}) as ro:
        assert ro.get(("u",), "k").value == {"text": "tea"}
        assert [i.key for i in ro.search(("u",), query="tea")] == ["k"]
        assert ro.list_namespaces() == [("u",)]
        # LangGraph's GetOp and SearchOp ask for a refresh unless told not to
        no = dict(refresh_ttl=False)
        got = asyncio.run(ro.abatch([GetOp(("u",), "k", **no), SearchOp(("u",), **no), ListNamespacesOp()]))
        assert got[0].value == {"text": "tea"} and got[2] == [("u",)]
        with pytest.raises(MemworkerError, match=REFUSED):
            ro.delete(("u",), "k")
        with pytest.raises(MemworkerError, match=REFUSED):
            ro.put(("u",), "k2", {"text": "no"})


def test_reader_opens_a_read_only_crewai_memory_and_recalls(env):
    """DEFECT: the README's reader rule is for "read-only recall", and CrewAI's recall
    is ``QueuedMemory(read_only=True).recall``. Its constructor records the embedder's
    model id with ``HSETNX ns:meta model`` (``_ensure_model``), a write the reader may
    not run, so the memory cannot even be opened: StoreError "no permissions to run
    the 'hsetnx' command", with the namespace's model already recorded by the agent."""
    with worker(env):
        m = memory(env, "agent")
        m.remember("a memory for the reader", scope="/r", **FAST)
        m.close()
    ro = memory(env, "reader", read_only=True)  # raises: HSETNX refused
    try:
        hits = ro.recall("a memory for the reader", scope="/r", depth="shallow")
        assert [h.record.content for h in hits] == ["a memory for the reader"]
        assert len(asyncio.run(ro.arecall("a memory", scope="/r", depth="shallow"))) == 1
        assert len(ro.list_records(scope="/r")) == 1 and ro.info("/r").record_count == 1
    finally:
        ro.close()


# ============================================================================ CLI
@pytest.mark.parametrize("user", ["agent", "worker", "reader"])
def test_the_operators_read_commands_run_with_each_user(env, user, capsys):
    """status, check, dead list, retention list: reads, for every README user."""
    with worker(env):
        for args in (("status", "--json"), ("check",), ("check", "--any"), ("dead", "list"),
                     ("retention", "list"), ("drain", "--all", "--timeout", "5")):  # fmt: skip
            assert cli(env, user, *args) == EXIT_OK, (args, capsys.readouterr())
    assert PASSWORD not in capsys.readouterr().out


def test_a_cli_write_refused_to_the_reader_names_the_permission(env, capsys):
    capsys.readouterr()
    assert cli(env, "reader", "retention", "set", "/x", "--days", "3") != EXIT_OK
    err = capsys.readouterr()
    assert "permission" in (err.out + err.err).lower(), err


# ============================================================================ isolation
@pytest.mark.parametrize("user", ["agent", "worker", "reader"])
def test_no_user_of_sec_reaches_another_namespaces_keys(env, user):
    """Every public entry point opened on namespace ``other`` with ``sec``'s users is
    refused naming the permission, and nothing appears under ``{other}``."""
    admin = _admin(env)
    other = settings(env, user, namespace="other")
    attempts = {
        "store.count": lambda: ValkeyStore(other).count(),
        "store.save": lambda: ValkeyStore(other).save([{"id": "x", "content": "x", "scope": "/x"}]),
        "queue.enqueue": lambda: MemoryQueue(other, producer_id="evil").enqueue_encode(["x"]),
        "langgraph.put": lambda: QueuedStore(other).put(("u",), "k", {"x": 1}),
        "langgraph.get": lambda: QueuedStore(other, ttl={"refresh_on_read": False}).get(("u",), "k"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(MemworkerError, match=REFUSED):
            attempt()
    assert cli(env, user, "--namespace", "other", "retention", "list") != EXIT_OK
    assert admin.keys("{other}:*") == [], name
    admin.close()
