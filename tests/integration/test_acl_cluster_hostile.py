"""The README's minimal ACL rules (Security: users ``agent``, ``worker``, ``reader``)
on a **Valkey Cluster** (a review of 2026-12-06, helper-86).

docs/scaling.md says everything works the same on a cluster and "ACL rules need the
braces too: ``~{ns}:* &{ns}:*`` (README, Security)". ACL users are per node, so the
README's three users (its lines as written, ``test_security.readme_acl_rules``) are
created on every node of the suite's two clusters (3 primaries, 3 replicas; with and
without RediSearch), under unique names (the clusters are shared per session; the
default user stays on, every client connects with the user in its URL), and removed
afterwards. Then each role's documented operations run with its URL:

- agent: CrewAI ``QueuedMemory`` remember/recall/drain, ``MemoryQueue`` enqueue/drain,
  LangGraph ``QueuedStore`` put/get/search;
- worker: ``running_worker`` committing jobs, the sweep (retention, TTL);
- reader: the store's search/count/list, LangGraph with ``refresh_on_read: False``, a
  read-only CrewAI memory's recall;
- every user: the CLI's ``status``, ``check``, ``drain --all``;
- and no user of namespace A reaches namespace B's keys, on any node.

The clients find the topology with ``INFO cluster`` (memworker), ``CLUSTER SLOTS``
(valkey-glide and redis-py) and ``COMMAND`` (redis-py's ``RedisCluster`` reads the
command table to find the keys of a command): measured with ``INFO commandstats``
on a node after an agent opened a store and a queue.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
import redis
from test_acl_surface_hostile import DIM, FAST, REFUSED, HashEmbedder, _wait
from test_security import PASSWORD, readme_acl_rules
from valkey_servers import raw_client

pytest.importorskip("crewai")
pytest.importorskip("langgraph.store.base")

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
from memworker.testing import ThrowawayCluster  # noqa: E402
from memworker.worker.process import running_worker  # noqa: E402

USERS = ("agent", "worker", "reader")


@dataclass
class AclCluster:
    cluster: ThrowawayCluster
    ns: str  # the namespace the users are made for
    other: str  # another tenant's namespace
    suffix: str  # of the user names on this shared cluster

    def url(self, user: str, port: int | None = None, query: str = "") -> str:
        return f"valkey://{user}{self.suffix}:{PASSWORD}@127.0.0.1:{port or self.cluster.port}{query}"

    def settings(self, user: str, namespace: str | None = None, **kw) -> Settings:
        return Settings.from_url(self.url(user, **kw), namespace=namespace or self.ns)

    def cli(self, user: str, *args: str) -> int:
        return main(["--url", self.url(user), "--namespace", self.ns, *args])

    def node_of(self, namespace: str) -> list[redis.Redis]:
        """Admin (default user) clients of the primary owning ``namespace``'s slot
        and of its replica."""
        admin = raw_client(self.cluster)
        try:
            slot = admin.keyslot(f"{{{namespace}}}:meta")
            primary = admin.nodes_manager.get_node_from_slot(slot)
            ports = [primary.port]
            for node in self.cluster.nodes:
                r = redis.Redis(port=node.port)
                role = r.info("replication")
                if role.get("role") == "slave" and int(role.get("master_port", 0)) == primary.port:
                    ports.append(node.port)
                r.close()
        finally:
            admin.close()
        return ports


@pytest.fixture(scope="module", params=["cluster_plain_server", "cluster_module_server"], ids=["plain", "module"])
def acl_cluster(request: pytest.FixtureRequest):
    """The README's three users for a fresh namespace on every node of a shared
    cluster (unique names); deleted from every node afterwards."""
    cluster: ThrowawayCluster = request.getfixturevalue(request.param)
    tag = uuid.uuid4().hex[:8]
    env = AclCluster(cluster, ns=f"acl{tag}", other=f"oth{tag}", suffix=f"_{tag}")
    rules = readme_acl_rules(env.ns, module=cluster.module, suffix=env.suffix)
    # an operator's user that may not read the slot map: the agent's rule minus CLUSTER SLOTS
    rules["noslots"] = [a.replace("agent" + env.suffix, "noslots" + env.suffix) for a in rules["agent"]]
    rules["noslots"].append("-cluster|slots")
    for node in cluster.nodes:
        admin = redis.Redis(port=node.port)
        for rule in rules.values():
            admin.execute_command(*rule)
        admin.close()
    yield env
    for node in cluster.nodes:
        admin = redis.Redis(port=node.port)
        admin.execute_command("ACL", "DELUSER", *(u + env.suffix for u in (*USERS, "noslots")))
        admin.close()


def _wipe(env: AclCluster) -> None:
    for namespace in (env.ns, env.other):
        store = ValkeyStore(env.cluster.url, namespace=namespace)  # the default user
        try:
            store.reset()
        except Exception:  # noqa: BLE001
            pass
        store.close()
        admin = raw_client(env.cluster)
        for key in list(admin.scan_iter(match=f"{{{namespace}}}:*", count=1000)):
            admin.delete(key)
        admin.close()


@pytest.fixture
def env(acl_cluster: AclCluster, monkeypatch):
    """The hash embedder in this process's workers, CrewAI's stand-in LLM for flow
    jobs, a sweep every half second; both namespaces' keys deleted afterwards."""
    monkeypatch.setenv("MEMWORKER_SWEEP_INTERVAL", "0.5")
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, "memworker.crewai.testing:standin_memory_config")
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(HashEmbedder)
    yield acl_cluster
    worker_mod.set_embedder_factory(None)
    crewai_config.reset_worker_memory_config()
    _wipe(acl_cluster)


def worker(env: AclCluster):
    return running_worker(
        env.settings("worker"), threads=2, worker_timeout_ms=100, min_backoff_ms=10,
        max_backoff_ms=50, max_retries=1,
    )  # fmt: skip


def memory(env: AclCluster, user: str, **kwargs) -> QueuedMemory:
    kwargs.setdefault("consolidation_threshold", 1.0)
    return QueuedMemory(
        storage=env.url(user), namespace=env.ns, embedder=LocalEmbedder(embedder=HashEmbedder()),
        llm=StandInLLM(), drain_timeout=30, **kwargs,
    )  # fmt: skip


def _seed(env: AclCluster) -> None:
    """Records written by the agent, committed by the worker: one CrewAI memory in
    ``/r`` and one LangGraph item (index and TTL) in ``("u",)``."""
    with worker(env):
        m = memory(env, "agent")
        m.remember("a memory for the reader", scope="/r", **FAST)
        m.drain_writes()
        m.close()
        with QueuedStore(env.settings("agent"), index={"dims": DIM, "fields": ["text"]},
                         ttl={"default_ttl": 10}) as lg:  # fmt: skip
            lg.put(("u",), "k", {"text": "tea"})
            assert lg.get(("u",), "k").value == {"text": "tea"}


# ============================================================================ topology
@pytest.mark.parametrize("user", USERS)
def test_every_user_may_run_the_commands_the_cluster_clients_send(env, user):
    """On every node (primaries and replicas): ``INFO cluster`` (memworker's topology
    question), ``CLUSTER SLOTS`` (glide's and redis-py's slot map) and ``COMMAND``
    (redis-py's RedisCluster command table). A rule refusing one of them cannot
    connect to a cluster at all."""
    refused = {}
    for node in env.cluster.nodes:
        client = redis.Redis(port=node.port, username=user + env.suffix, password=PASSWORD)
        for command in (("INFO", "cluster"), ("CLUSTER", "SLOTS"), ("COMMAND",)):
            try:
                client.execute_command(*command)
            except redis.exceptions.NoPermissionError as exc:
                refused.setdefault(" ".join(command), []).append((node.port, str(exc)))
        client.close()
    assert refused == {}, f"{user}: refused {sorted(refused)}"


def test_a_refused_slot_map_is_reported_as_a_permission_by_the_queue_too(env):
    """A user whose rule refuses ``CLUSTER SLOTS`` (as the README's reader did) gets
    from the store an error naming the refused command; the queue, the drain and the
    CLI (redis-py) must say the same, not "Cluster mode is not enabled on this node"
    about a node whose ``INFO cluster`` says ``cluster_enabled:1`` (memworker asked it)."""
    settings = env.settings("noslots")
    store = ValkeyStore(settings)
    with pytest.raises(MemworkerError, match=r"cluster\|slots"):
        store.count()
    store.close()
    with pytest.raises(MemworkerError) as caught:
        with MemoryQueue(settings, producer_id="p-noslots") as q:
            q.status()
    assert "not enabled" not in str(caught.value)
    assert re.search(r"cluster\|slots", str(caught.value)), str(caught.value)
    # the async queue meets the refusal at its first command, inside redis-py
    queue = MemoryQueue(settings, producer_id="p-noslots")
    with pytest.raises(MemworkerError, match=r"cluster\|slots"):
        asyncio.run(queue.aenqueue_encode(["refused"]))
    queue.close()


# ============================================================================ agent
def test_agent_remembers_recalls_and_drains_with_queued_memory(env):
    with worker(env):
        m = memory(env, "agent")
        first = m.remember("the agent remembers alpha", scope="/crew/a", **FAST)
        assert first is not None and first.content == "the agent remembers alpha"
        assert m.remember_many(["beta one", "beta two"], scope="/crew/a", **FAST) == []
        m.drain_writes()
        assert asyncio.run(m.aremember("gamma async", scope="/crew/b", **FAST)) is not None
        hits = m.recall("alpha", scope="/crew", depth="shallow", limit=10)
        assert len(hits) == 4
        assert len(asyncio.run(m.arecall("alpha", scope="/crew", depth="shallow", limit=10))) == 4
        assert len(m.list_records(scope="/crew/a")) == 3 and m.info("/").record_count == 4
        assert m.forget(scope="/crew/b") == 1
        m.close()


def test_agent_enqueues_drains_and_runs_langgraph(env):
    with worker(env):
        with MemoryQueue(env.settings("agent"), producer_id="p-acl") as q:
            q.enqueue_encode([{"text": "queued", "scope": "/q", **FAST}, "bare"])
            q.enqueue_save([{"id": "s1", "content": "saved", "scope": "/q", "embedding": [0.5] * DIM}])
            assert q.drain(timeout=30).committed == 2
            asyncio.run(q.aenqueue_encode(["async queued"]))
            assert asyncio.run(q.adrain(timeout=30)).committed == 1
            assert q.drain_all(timeout=30).failed == []
        index = {"dims": DIM, "fields": ["text"]}
        with QueuedStore(env.settings("agent"), index=index, ttl={"default_ttl": 10}) as lg:
            lg.put(("u",), "k", {"text": "tea", "n": 1})
            lg.put(("u", "v"), "t", {"text": "coffee"})
            assert lg.get(("u",), "k").value == {"text": "tea", "n": 1}
            assert [i.key for i in lg.search(("u",), query="tea", filter={"n": {"$gte": 1}})] == ["k"]
            assert {i.key for i in lg.search(("u",))} == {"k", "t"}
            assert lg.list_namespaces(prefix=("u",)) == [("u",), ("u", "v")]
            lg.delete(("u",), "k")
            assert lg.get(("u",), "k") is None
    assert ValkeyStore(env.settings("agent")).count("/q") == 2


def test_agent_url_naming_a_replica_with_cluster_yes(env):
    """Any node's URL works (docs/scaling.md), with the cluster forced by the URL."""
    replica = env.cluster.nodes[-1].port
    settings = Settings.from_url(env.url("agent", port=replica, query="?cluster=yes"), namespace=env.ns)
    with worker(env), MemoryQueue(settings, producer_id="p-rep") as q:
        q.enqueue_save([{"id": "r1", "content": "via replica", "scope": "/rep", "embedding": [0.5] * DIM}])
        assert q.drain(timeout=30).committed == 1
    store = ValkeyStore(settings)
    assert [r.content for r in store.list_records("/rep")] == ["via replica"]
    store.close()


# ============================================================================ worker
def test_worker_commits_jobs_and_sweeps_retention_and_ttl(env):
    agent = ValkeyStore(env.settings("agent"))
    old = utcnow() - timedelta(days=40)
    agent.save([{"id": f"old{i}", "content": "old", "scope": "/ret", "created_at": old,
                 "embedding": [1.0] * DIM} for i in range(3)])  # fmt: skip
    assert env.cli("worker", "retention", "set", "/ret", "--days", "30") == EXIT_OK
    with MemoryQueue(env.settings("agent"), producer_id="p-w") as q, worker(env):
        job = q.enqueue_save([{"id": "w1", "content": "committed", "scope": "/w", "embedding": [0.5] * DIM}])
        assert q.drain(timeout=30, job_ids=[job]).committed == 1
        with QueuedStore(env.settings("agent"), ttl={"default_ttl": 0.02}) as lg:
            lg.put(("t",), "k", {"x": 1})
            assert lg.get(("t",), "k") is not None
        q.enqueue_encode(["poison pill"])
        assert len(q.drain(timeout=30).failed) == 1  # dead-lettered by the worker user
        assert _wait(lambda: agent.count("/ret") == 0 and agent.count("/langgraph") == 0)
    assert agent.count("/w") == 1
    agent.close()


def test_worker_takes_over_a_dead_workers_fetched_job(env):
    """dramatiq's maintenance (KEYS, which the worker rule keeps) on a cluster: a job a
    dead worker fetched is requeued and committed by the worker user."""
    keys = QueueKeys(env.ns)
    admin = raw_client(env.cluster)
    with MemoryQueue(env.settings("agent"), producer_id="p-dw") as q:
        job = q.enqueue_save([{"id": "dw", "content": "dw", "scope": "/dw", "embedding": [0.5] * DIM}])
        message = admin.lpop(keys.q())
        assert message is not None
        admin.sadd(f"{keys.dq_namespace}:__acks__.deadbeef.default", message)
        admin.zadd(keys.heartbeats, {"deadbeef": 1})
        with worker(env):
            assert q.drain(timeout=30, job_ids=[job]).committed == 1
    admin.close()
    store = ValkeyStore(env.settings("agent"))
    assert store.count("/dw") == 1
    store.close()


# ============================================================================ reader
def test_reader_searches_counts_and_lists_the_store(env):
    _seed(env)
    store = ValkeyStore(env.settings("reader"))
    try:
        assert store.count("/r") == 1
        assert [r.content for r in store.list_records("/r")] == ["a memory for the reader"]
        hits = store.search(HashEmbedder().encode(["a memory for the reader"])[0].tolist(), limit=5)
        assert len(hits) == 2
        assert asyncio.run(store.acount()) == 2
        with pytest.raises(MemworkerError, match=REFUSED):
            store.save([{"id": "x", "content": "no", "scope": "/r", "embedding": [0.5] * DIM}])
    finally:
        store.close()


def test_reader_reads_langgraph_without_refresh_and_recalls_with_crewai(env):
    _seed(env)
    index = {"dims": DIM, "fields": ["text"]}
    with QueuedStore(env.settings("reader"), index=index, ttl={"refresh_on_read": False}) as ro:
        assert ro.get(("u",), "k").value == {"text": "tea"}
        assert [i.key for i in ro.search(("u",), query="tea")] == ["k"]
        assert ro.list_namespaces() == [("u",)]
        with pytest.raises(MemworkerError, match=REFUSED):
            ro.put(("u",), "k2", {"text": "no"})
    ro_mem = memory(env, "reader", read_only=True)
    try:
        hits = ro_mem.recall("a memory for the reader", scope="/r", depth="shallow")
        assert [h.record.content for h in hits] == ["a memory for the reader"]
    finally:
        ro_mem.close()


# ============================================================================ CLI
@pytest.mark.parametrize("user", USERS)
def test_status_check_and_drain_all_run_with_each_user(env, user, capsys):
    with worker(env):
        for args in (("status", "--json"), ("check",), ("drain", "--all", "--timeout", "5")):
            code = env.cli(user, *args)
            out = capsys.readouterr()
            assert code == EXIT_OK, (user, args, out.out[-400:], out.err[-400:])
            assert PASSWORD not in out.out + out.err


# ============================================================================ isolation
@pytest.mark.parametrize("user", USERS)
def test_a_user_of_one_namespace_reaches_no_key_of_another_on_any_node(env, user):
    """Namespace ``other`` holds a record and a queued job (written by the default
    user); ``ns``'s users are refused every read and write of it, through memworker
    and by hand on the primary owning its slot and on that primary's replica."""
    owner = ValkeyStore(env.cluster.url, namespace=env.other)
    owner.save([{"id": "secret", "content": "other tenant's secret", "scope": "/s", "embedding": [0.5] * DIM}])
    if env.cluster.module:
        owner.ensure_index()
    owner.close()
    with MemoryQueue(Settings.from_url(env.cluster.url, namespace=env.other), producer_id="owner") as q:
        q.enqueue_encode(["other tenant's queued text"])
    admin = raw_client(env.cluster)
    before = sorted(admin.scan_iter(match=f"{{{env.other}}}:*", count=1000))
    assert before
    meta = f"{{{env.other}}}:meta"
    primary, *_ = ports = env.node_of(env.other)
    for port in ports:
        by_hand = redis.Redis(port=port, username=user + env.suffix, password=PASSWORD)
        try:
            by_hand.execute_command("READONLY")  # a replica answers reads only after it
        except redis.exceptions.ResponseError:
            pass  # the reader may not: its refusals below are then checked first anyway
        commands = [("HGETALL", meta), ("TYPE", meta), ("DUMP", meta), ("HSET", meta, "layout", "9"), ("DEL", meta)]
        if env.cluster.module and port == primary:
            # the README: FT.INFO and FT.SEARCH on another namespace's index are refused
            index = f"{{{env.other}}}:idx"
            assert index.encode() in redis.Redis(port=port).execute_command("FT._LIST")
            commands += [("FT.INFO", index), ("FT.SEARCH", index, "*")]
        for command in commands:
            with pytest.raises(redis.exceptions.ResponseError, match=REFUSED):
                by_hand.execute_command(*command)
        by_hand.close()
    other = env.settings(user, namespace=env.other)
    attempts = {
        "store.count": lambda: ValkeyStore(other).count(),
        "store.list": lambda: ValkeyStore(other).list_records("/s"),
        "store.save": lambda: ValkeyStore(other).save([{"id": "x", "content": "x", "scope": "/x"}]),
        "queue.enqueue": lambda: MemoryQueue(other, producer_id="evil").enqueue_encode(["x"]),
        "langgraph.get": lambda: QueuedStore(other, ttl={"refresh_on_read": False}).get(("u",), "k"),
    }
    leaked = {}
    for name, attempt in attempts.items():
        try:
            leaked[name] = repr(attempt())[:200]
        except MemworkerError as exc:
            if not re.search(REFUSED, str(exc)):
                leaked[name] = f"not refused by permission: {exc}"
    assert leaked == {}
    assert sorted(admin.scan_iter(match=f"{{{env.other}}}:*", count=1000)) == before
    assert admin.hget(meta, "layout") != b"9"
    admin.close()
