"""A hostile review of memworker.langgraph.QueuedStore on a Valkey Cluster (with and
without RediSearch), features combined: TTL sweeps with hostile labels and a CrewAI
retention policy at once (no key left behind on any node), filters against a
standalone server, list_namespaces paging, a reshard while puts and sweeps run,
abatch from many tasks, a primary failover.

Real servers, real in-process workers, the deterministic WordEmbedder of
test_langgraph.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

pytest.importorskip("langgraph.store.base")

from redis.cluster import RedisCluster  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder  # noqa: E402,F401

from memworker import worker as worker_mod  # noqa: E402
from memworker.keys import tag  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402
from memworker.reshard import move_namespace  # noqa: E402
from memworker.settings import Settings  # noqa: E402

HOSTILE_NS: list[tuple[str, ...]] = [
    ("{x}",), ("}{",), ("a{b}c", "*"), ("{", "}"), ("::",), (":", "{ns}"), ("*",), ("a*b", "?[]"),
    ("\U0001f642", "\u00e9"), ("x" * 200,), ("{" + "y" * 60 + "}",), ("%7B",), ("users",), ("users", "u1"),
]  # fmt: skip
HOSTILE_KEYS = ["k", "{k}", "}{", "*", ":", "\U0001f642", "k" * 2000, "{" + "z" * 40 + "}:rec:x"]


@pytest.fixture(params=["cluster_plain_server", "cluster_module_server"], ids=["plain", "module"])
def cluster(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _settings(server: Any, namespace: str, **kw: Any) -> Settings:
    return Settings.from_url(server.url, namespace=namespace,
                             search_mode="module" if server.module else "exact", **kw)  # fmt: skip


def _worker(settings: Settings):
    return worker_mod.running_worker(settings, threads=2, min_backoff_ms=10, max_backoff_ms=50,
                                     max_retries=3, worker_timeout_ms=100)  # fmt: skip


@pytest.fixture
def settings(cluster, namespace):
    return _settings(cluster, namespace)


@pytest.fixture
def lg(settings, embedder):  # noqa: F811
    with _worker(settings):
        s = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]}, ttl={"default_ttl": 10})
        try:
            yield s
        finally:
            try:
                s.store.reset()
            finally:
                s.close()


# ----------------------------------------------------------------------------- keyspace
def _nodes_keys(cluster: Any, namespace: str) -> dict[int, set[bytes]]:
    """Every key mentioning ``namespace`` on each primary (port -> keys)."""
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        out: dict[int, set[bytes]] = {}
        for node in rc.get_primaries():
            conn = rc.get_redis_connection(node)
            keys = {k for k in conn.scan_iter(count=1000) if namespace.encode() in k}
            if keys:
                out[int(node.port)] = keys
        return out
    finally:
        rc.close()


def _dump(cluster: Any, namespace: str) -> dict[bytes, Any]:
    """The contents of the store's record and side-index keys of ``namespace``."""
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        keys = set().union(*_nodes_keys(cluster, namespace).values()) if _nodes_keys(cluster, namespace) else set()
        out: dict[bytes, Any] = {}
        head = tag(namespace).encode()
        for k in keys:
            rest = k[len(head):]
            if not any(rest.startswith(p) for p in (b":rec:", b":tree:", b":children:", b":cats:", b":expiry")):
                continue
            kind = rc.type(k)
            if kind == b"hash":
                v: Any = rc.hgetall(k)
                if rest.startswith(b":rec:"):
                    v = {f: x for f, x in v.items() if f not in (b"last_accessed",)}
            elif kind == b"zset":
                v = rc.zrange(k, 0, -1, withscores=True)
            else:
                v = (kind, rc.dump(k))
            out[k] = v
        return out
    finally:
        rc.close()


def _one_slot(cluster: Any, namespace: str) -> None:
    """Every key of the namespace is in its tag's slot, on one primary."""
    where = _nodes_keys(cluster, namespace)
    assert len(where) == 1, {p: len(k) for p, k in where.items()}
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        slot = rc.keyslot(tag(namespace))
        for keys in where.values():
            stray = [k for k in keys if rc.keyslot(k) != slot or not k.startswith(tag(namespace).encode())]
            assert stray == [], stray[:5]
    finally:
        rc.close()


def _crew_records(n: int) -> list[dict[str, Any]]:
    vecs = WordEmbedder().encode([f"crew memory {i}" for i in range(n)])
    return [{"id": f"c{i}", "content": f"crew memory {i}", "scope": ["/crew", "/crew/{a}", "/"][i % 3],
             "categories": ["c"], "metadata": {}, "embedding": vecs[i]} for i in range(n)]  # fmt: skip


def test_sweep_of_hostile_ttl_items_and_a_retention_policy_leave_the_keyspace_as_before(lg, cluster, namespace):
    """Permanent items are the baseline; then TTL items under hostile labels and keys,
    and CrewAI records under a 1-day retention policy on ``/``, are written; a sweep
    two days later must delete every TTL item and CrewAI record with all of their
    side-index entries (records, trees, children, categories, expiry index identical to
    the baseline on every node), keep the permanent items, and no key of the namespace
    may ever leave its slot."""
    keep = [(("users", "u1"), "keep"), (("{x}",), "keep{k}"), (("\U0001f642", "\u00e9"), "k")]
    for ns, key in keep:
        lg.put(ns, key, {"text": "apple", "n": 1}, ttl=None)
    assert all(lg.get(ns, key) is not None for ns, key in keep)
    lg.store.sweep()
    base = _dump(cluster, namespace)
    _one_slot(cluster, namespace)

    for i, ns in enumerate(HOSTILE_NS):
        for key in HOSTILE_KEYS[i % 3: i % 3 + 4]:
            lg.put(ns, key, {"text": "banana cherry", "i": i, "b": i % 2 == 0, "s": f"{i:03d}"}, ttl=1)
    # same keys as the permanent items but in other namespaces: must not touch them
    lg.put(("users",), "keep", {"text": "dog"}, ttl=1)
    lg.put(("{x}", "{k}"), "{k}", {"text": "dog"}, ttl=1)
    assert lg.get(("users",), "keep", refresh_ttl=False) is not None  # drained
    lg.store.save(_crew_records(9))
    lg.store.set_retention("/", 1)
    _one_slot(cluster, namespace)
    assert lg.store.count("/langgraph") > len(keep)

    later = int(time.time() * 1000) + 2 * 86_400_000
    total = {"expired": 0, "retained": 0}
    for _ in range(50):
        got = lg.store.sweep(now_ms=later)  # the workers' step: expired and retained in one call
        total["expired"] += got["expired"]
        total["retained"] += got["retained"]
        if not (got["expired"] or got["retained"]):
            break
    lg.store.set_retention("/", None)
    assert total["retained"] == 9, total
    assert lg.store.count() == len(keep)
    assert sorted(lg.list_namespaces()) == sorted({ns for ns, _ in keep}), "live namespaces missing"
    for ns, key in keep:
        assert lg.get(ns, key, refresh_ttl=False).value == {"text": "apple", "n": 1}
    after = _dump(cluster, namespace)
    assert sorted(set(after) - set(base)) == [], "keys left behind by the sweep"
    assert sorted(set(base) - set(after)) == [], "keys of kept items removed by the sweep"
    changed = {k: (base[k], after[k]) for k in base if base[k] != after[k]}
    assert changed == {}, changed
    _one_slot(cluster, namespace)
    assert sorted(lg.list_namespaces()) == sorted({ns for ns, _ in keep})


def test_list_namespaces_pages_on_a_cluster_cover_every_namespace_once(lg):
    for i, ns in enumerate(HOSTILE_NS):
        lg.put(ns, "k", {"text": "apple", "i": i})
    full = lg.list_namespaces(limit=1000)
    assert sorted(full) == sorted(set(HOSTILE_NS))
    for size in (1, 3, 5):
        pages: list[tuple[str, ...]] = []
        for off in range(0, len(full) + size, size):
            pages += lg.list_namespaces(limit=size, offset=off)
        assert pages == full, size
    assert lg.list_namespaces(prefix=("{x}",)) == [("{x}",)]
    assert lg.list_namespaces(prefix=("a{b}c",)) == [("a{b}c", "*")]
    assert lg.list_namespaces(suffix=("?[]",)) == [("a*b", "?[]")]  # "*" is LangGraph's wildcard
    assert lg.list_namespaces(prefix=("users",), max_depth=1) == [("users",)]


def test_refresh_on_read_moves_only_the_read_items_expiry_on_a_cluster(lg):
    """``refresh_ttl`` on get and search refreshes the items read, in the store's slot,
    and never an item of a look-alike namespace."""
    a, b = ("{x}",), ("{x}", "*")
    lg.put(a, "{k}", {"text": "apple"}, ttl=1)
    lg.put(b, "{k}", {"text": "apple"}, ttl=1)
    assert lg.get(a, "{k}", refresh_ttl=False) is not None
    ra, rb = record_id(a, "{k}"), record_id(b, "{k}")
    ea, eb = lg.store.expiries([ra, rb])
    time.sleep(0.05)
    lg.get(a, "{k}", refresh_ttl=True)
    na, nb = lg.store.expiries([ra, rb])
    assert na > ea and nb == eb
    lg.search(b, query="apple", refresh_ttl=True)
    assert lg.store.expiries([ra])[0] == na
    assert lg.store.expiries([rb])[0] > eb


# ----------------------------------------------------------------------------- filters
FILTERS: list[dict[str, Any]] = [
    {"n": {"$gt": 3}}, {"n": {"$lt": 2.5}}, {"n": {"$gte": -1, "$lte": 4}}, {"n": {"$ne": 3}},
    {"s": {"$gt": "b"}}, {"s": {"$lt": "b"}}, {"s": {"$ne": "a"}}, {"s": "{c}"},
    {"b": True}, {"b": {"$ne": False}}, {"b": {"$ne": True}}, {"n": 3}, {"n": 3.0},
    {"n": {"$gt": 1}, "b": True}, {"nested": {"x": 1}}, {"missing": {"$ne": 1}},
]  # fmt: skip


def _fill(s: QueuedStore) -> None:
    words = ["apple", "banana", "cherry", "dog", "engine", "forest"]
    for i in range(18):
        value = {"text": f"{words[i % 6]} {words[(i * 5) % 6]}", "n": [0, 1, 2, 3, 4, 5, -2, 3.0, 1e300][i % 9],
                 "s": ["a", "b", "c", "{c}", "*", "\u00e9"][i % 6], "b": [True, False, 1, None][i % 4],
                 "nested": {"x": i % 2}}  # fmt: skip
        if i % 7 == 0:
            del value["n"]
        s.put(("f", "{g}") if i % 2 else ("f",), f"k{i}", value)


def test_filters_on_a_cluster_return_what_a_standalone_server_returns(cluster, request, namespace, embedder):  # noqa: F811
    standalone = request.getfixturevalue("module_server" if cluster.module else "plain_server")
    got: dict[str, list] = {}
    for name, server in (("cluster", cluster), ("standalone", standalone)):
        st = _settings(server, namespace)
        with _worker(st), QueuedStore(st, index={"dims": DIM, "fields": ["text"]}) as s:
            try:
                _fill(s)
                rows = []
                for flt in FILTERS:
                    for query in (None, "apple cherry"):
                        for prefix in (("f",), ("f", "{g}")):
                            hits = s.search(prefix, query=query, filter=flt, limit=50)
                            rows.append(sorted((h.key, tuple(h.namespace), None if h.score is None else round(h.score, 4))
                                               for h in hits))  # fmt: skip
                got[name] = rows
            finally:
                s.store.reset()
    diff = [(FILTERS[i // 4], got["cluster"][i], got["standalone"][i])
            for i in range(len(got["cluster"])) if got["cluster"][i] != got["standalone"][i]]  # fmt: skip
    assert diff == []
    assert any(got["cluster"])


# ----------------------------------------------------------------------------- concurrency
def test_threads_putting_one_key_the_last_enqueue_wins_under_ttl_and_sweeps(lg):
    """Threads share the store; each put under one lock (so the enqueue order is
    known); another thread sweeps meanwhile. The last enqueued value wins, with its
    own TTL; nothing else under the namespace."""
    lock = threading.Lock()
    last: list[Any] = []
    stop = threading.Event()

    def put(t: int) -> None:
        for i in range(20):
            with lock:
                ttl = None if (t + i) % 3 else 5
                lg.put(("{x}", "*"), "{k}", {"text": f"apple {t}", "t": t, "i": i}, ttl=ttl)
                last[:] = [t, i, ttl]

    def sweep() -> None:
        while not stop.is_set():
            lg.store.sweep()
            time.sleep(0.01)

    sw = threading.Thread(target=sweep)
    sw.start()
    threads = [threading.Thread(target=put, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    sw.join()
    item = lg.get(("{x}", "*"), "{k}", refresh_ttl=False)
    assert [item.value["t"], item.value["i"]] == last[:2]
    exp = lg.store.expiries([record_id(("{x}", "*"), "{k}")])[0]
    assert (exp is None) == (last[2] is None)
    assert lg.store.count("/langgraph") == 1
    assert lg.list_namespaces() == [("{x}", "*")]


def test_abatch_from_many_tasks_with_hostile_labels_and_ttl_on_a_cluster(lg, cluster, namespace):
    from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp

    async def main() -> None:
        async def one(i: int):
            ns = HOSTILE_NS[i % len(HOSTILE_NS)]
            key = HOSTILE_KEYS[i % len(HOSTILE_KEYS)]
            res = await lg.abatch([
                PutOp(ns, key, {"text": "apple", "i": i}, ttl=None if i % 2 else 1),
                GetOp(ns, key, refresh_ttl=True),
                SearchOp(ns, filter={"i": i}, limit=5),
                ListNamespacesOp(match_conditions=None, limit=100),
            ])  # fmt: skip
            return i, ns, key, res

        out = await asyncio.gather(*(one(i) for i in range(60)))
        for i, ns, key, res in out:
            assert res[0] is None
            # a later task of the same (ns, key) may have replaced it already
            assert res[1] is not None and res[1].key == key and tuple(res[1].namespace) == ns
            assert all(h.value["i"] == i for h in res[2])
        final = {}
        for i, ns, key, _ in out:
            final[(ns, key)] = i
        for (ns, key), i in final.items():
            it = await lg.aget(ns, key, refresh_ttl=False)
            assert it is not None and it.value["i"] == i, (ns, key, it and it.value)
        await lg.aclose()

    asyncio.run(main())
    _one_slot(cluster, namespace)


# ----------------------------------------------------------------------------- reshard
def _target(cluster: Any, namespace: str) -> tuple[str, int, int]:
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        owner = rc.get_node_from_key(tag(namespace))
        other = next(n for n in rc.get_primaries() if n.port != owner.port)
        return f"127.0.0.1:{other.port}", int(other.port), int(owner.port)
    finally:
        rc.close()


def test_a_reshard_while_puts_refreshes_and_sweeps_run_loses_nothing(lg, cluster, namespace, settings):
    """Threads put (hostile labels, with and without TTL), read with refresh and sweep
    while the namespace's slot moves to another primary. Afterwards: every permanent
    key holds its last value, every expired TTL item is swept with its side indexes,
    the keys are all on the target and in the slot, searches (both paths) still work."""
    target, target_port, source_port = _target(cluster, namespace)
    lg.put(("warm",), "w", {"text": "x"}, ttl=None)
    assert lg.get(("warm",), "w") is not None
    stop = threading.Event()
    errors: list[BaseException] = []
    last: dict[tuple[tuple[str, ...], str], int] = {}

    def putter(t: int) -> None:
        try:
            i = 0
            while not stop.is_set() or i < 30:
                ns = HOSTILE_NS[(t * 7 + i) % len(HOSTILE_NS)]
                key = HOSTILE_KEYS[i % 4]
                if i % 3 == 0:
                    lg.put(ns, f"ttl-{t}-{i}", {"text": "cherry", "t": t}, ttl=1)
                else:
                    lg.put(ns, f"{key}-{t}", {"text": "apple", "i": i}, ttl=None)
                    last[(ns, f"{key}-{t}")] = i
                if i % 5 == 0:
                    lg.get(ns, f"{key}-{t}")
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def sweeper() -> None:
        try:
            while not stop.is_set():
                lg.store.sweep(now_ms=int(time.time() * 1000) + 120_000)
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=putter, args=(t,)) for t in range(3)] + [threading.Thread(target=sweeper)]
    for th in threads:
        th.start()
    time.sleep(0.5)
    try:
        report = move_namespace(settings, target)
    finally:
        time.sleep(0.5)
        stop.set()
        for th in threads:
            th.join(120)
    assert errors == [], errors[:3]
    assert report.keys > 0
    for (ns, key), i in last.items():
        it = lg.get(ns, key, refresh_ttl=False)
        assert it is not None and it.value["i"] == i, (ns, key, it and it.value)
    while lg.store.sweep(now_ms=int(time.time() * 1000) + 120_000)["expired"]:
        pass
    assert lg.store.count("/langgraph") == len(last) + 1
    hits = lg.search((), query="apple", limit=1000)
    assert len(hits) == len(last) + 1  # every embedded item (the warm-up's too)
    assert len(lg.search((), filter={"i": {"$gte": 0}}, limit=1000)) == len(last)
    where = _nodes_keys(cluster, namespace)
    assert list(where) == [target_port], {p: len(k) for p, k in where.items()}
    _one_slot(cluster, namespace)
    # no expired item left behind in any side index
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        assert rc.zcard(f"{tag(namespace)}:expiry") == 0
        assert rc.zcard(f"{tag(namespace)}:tree:/langgraph") == len(last) + 1
    finally:
        rc.close()


# ----------------------------------------------------------------------------- failover
def test_a_failover_of_the_stores_primary_keeps_committed_items_and_ttls(namespace, embedder):  # noqa: F811
    """A graceful failover (replica ``CLUSTER FAILOVER``) of the namespace's primary
    while a QueuedStore is in use: items committed before it stay (values, TTLs), puts
    after it commit, reads and sweeps go on against the new primary."""
    import redis

    from memworker.testing import start_cluster

    cluster = start_cluster(3, 1)
    try:
        st = Settings.from_url(cluster.url, namespace=namespace, search_mode="exact")
        with _worker(st), QueuedStore(st, index={"dims": DIM, "fields": ["text"]}) as s:
            for i, ns in enumerate(HOSTILE_NS):
                s.put(ns, "k", {"text": "apple", "i": i}, ttl=None if i % 2 else 1)
            assert s.get(HOSTILE_NS[0], "k") is not None
            rid = record_id(HOSTILE_NS[0], "k")
            exp = s.store.expiries([rid])[0]
            _, _, owner = _target(cluster, namespace)
            me = redis.Redis(port=owner)
            owner_id = me.execute_command("CLUSTER", "MYID")
            line = me.execute_command("CLUSTER", "REPLICAS", owner_id)[0]
            line = line.decode() if isinstance(line, bytes) else line
            replica_port = int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
            time.sleep(0.5)
            redis.Redis(port=replica_port).execute_command("CLUSTER", "FAILOVER")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _target(cluster, namespace)[2] != replica_port:
                time.sleep(0.1)
            assert _target(cluster, namespace)[2] == replica_port, "no failover"
            for i, ns in enumerate(HOSTILE_NS):
                assert s.get(ns, "k", refresh_ttl=False).value["i"] == i
            assert s.store.expiries([rid])[0] == exp
            s.put(HOSTILE_NS[0], "after", {"text": "apple"}, ttl=1)
            assert s.get(HOSTILE_NS[0], "after") is not None
            swept = s.store.sweep(now_ms=int(time.time() * 1000) + 120_000)
            assert swept["expired"] == (len(HOSTILE_NS) + 1) // 2 + 1
            assert s.store.count("/langgraph") == len(HOSTILE_NS) // 2
            s.store.reset()
    finally:
        cluster.stop()


def test_one_sweep_step_with_expired_items_and_retained_records_keeps_the_counters(lg, cluster, namespace):
    """Minimal form of the first test's failure: one sweep step that deletes an
    expired LangGraph item AND a CrewAI record past its retention applies the expired
    item's counter decrements twice (lua/store.lua: ``flush`` never empties the
    module-level ``adds``/``rems``/``nets``, and ``sweep`` calls ``delete_ids`` once for
    the expired ids and once per retention policy). The live item's namespace then
    vanishes from ``list_namespaces`` and the scope counters go wrong."""
    lg.put(("users", "u1"), "keep", {"text": "apple"}, ttl=None)
    lg.put(("users", "u1"), "gone", {"text": "apple"}, ttl=1)
    assert lg.get(("users", "u1"), "gone", refresh_ttl=False) is not None
    lg.store.save(_crew_records(1))
    lg.store.set_retention("/", 1)
    got = lg.store.sweep(now_ms=int(time.time() * 1000) + 2 * 86_400_000)
    lg.store.set_retention("/", None)
    assert (got["expired"], got["retained"]) == (1, 1)
    assert lg.store.count("/langgraph") == 1
    assert lg.list_namespaces() == [("users", "u1")]
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        assert rc.hgetall(f"{tag(namespace)}:children:/") == {b"/langgraph": b"1"}
    finally:
        rc.close()
