"""Retention policies (issue 16's TTL machinery for CrewAI users): ``memworker
retention``, ``QueuedMemory(retention=...)`` and the workers' sweep, on real servers
and real in-process workers."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from memworker import worker as worker_mod
from memworker.cli import EXIT_OK, EXIT_USAGE, main
from memworker.errors import ConfigError, ValidationError
from memworker.records import utcnow
from memworker.settings import Settings
from memworker.store.store import ValkeyStore
from memworker.worker.sweep import sweep_interval_ms

ON_CLUSTER = True


def _old_and_new(store: ValkeyStore) -> None:
    old = utcnow() - timedelta(days=40)
    new = utcnow() - timedelta(days=2)
    store.save(
        [
            {"id": f"old{i}", "content": "old", "scope": "/crew/a", "created_at": old, "embedding": [1.0, 0]}
            for i in range(30)
        ]
        + [
            {"id": "new", "content": "new", "scope": "/crew/a", "created_at": new, "embedding": [1.0, 0]},
            {"id": "kept", "content": "elsewhere", "scope": "/other", "created_at": old, "embedding": [1.0, 0]},
        ]
    )


def test_cli_sets_lists_and_clears_policies(server, namespace, capsys):
    base = ["--url", server.url, "--namespace", namespace, "retention"]
    assert main([*base, "set", "/crew", "--days", "30"]) == EXIT_OK
    assert main([*base, "set", "/", "--days", "365"]) == EXIT_OK
    capsys.readouterr()
    assert main([*base, "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "/crew  30 day(s)" in out and "/  365 day(s)" in out
    assert main([*base, "clear", "/crew"]) == EXIT_OK
    with ValkeyStore(Settings.from_url(server.url, namespace=namespace)) as store:
        assert store.retention() == {"/": 365.0}
        store.set_retention("/", None)
        assert store.retention() == {}
    with pytest.raises(SystemExit) as refused:  # a usage error, named by the argument parser
        main([*base, "set", "/crew", "--days", "-1"])
    assert refused.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as refused:
        main([*base, "set", "no-slash//x", "--days", "1"])
    assert refused.value.code == EXIT_USAGE
    assert "argument --days: must be a number of days" in capsys.readouterr().err


def test_bad_policies_are_refused_naming_the_field(store):
    with pytest.raises(ValidationError, match="days"):
        store.set_retention("/x", 0)
    with pytest.raises(ValidationError, match="days"):
        store.set_retention("/x", True)
    with pytest.raises(ValidationError, match="scope"):
        store.set_retention("/a//b", 3)
    assert store.retention() == {}


def test_records_gone_from_under_the_index_do_not_stall_retention(store, raw):
    """A record hash removed behind the store's back (maxmemory eviction, a DEL by
    hand) left its id in the scope's tree: each sweep took the oldest ids first, found
    no record and deleted nothing, so as many such ids as a sweep's limit stopped that
    scope's retention for good. The sweep now drops them from the tree it read."""
    old = utcnow() - timedelta(days=40)
    store.save(
        [{"id": f"gone{i}", "content": "x", "scope": "/crew", "created_at": old - timedelta(days=1),
          "embedding": [1.0, 0]} for i in range(3)]
        + [{"id": "due", "content": "x", "scope": "/crew", "created_at": old, "embedding": [1.0, 0]}]
    )  # fmt: skip
    raw.delete(*[store.keys.rec(f"gone{i}") for i in range(3)])
    store.set_retention("/crew", 30)
    for _ in range(3):
        store.sweep(limit=2)
    assert store.get_record("due") is None
    assert raw.zcard(store.keys.tree("/crew")) == 0


def test_two_policies_in_one_sweep_keep_the_counters(store):
    """A sweep that deletes records of two policies (one script call) applied the
    first policy's counter changes twice: the side-index changes were not emptied once
    applied, so the second deletion lowered the first scope's counts again."""
    old = utcnow() - timedelta(days=40)
    store.save(
        [{"id": f"{s}{i}", "content": "x", "scope": f"/{s}", "categories": ["c"], "created_at": old,
          "embedding": [1.0, 0]} for s in ("a", "b") for i in range(2)]
        + [{"id": f"{s}-new", "content": "x", "scope": f"/{s}", "categories": ["c"],
            "created_at": utcnow(), "embedding": [1.0, 0]} for s in ("a", "b", "c")]
    )  # fmt: skip
    store.set_retention("/a", 30)
    store.set_retention("/b", 30)
    store.sweep(limit=100)
    assert store.count("/") == 3
    assert store.list_categories("/") == {"c": 3}
    assert sorted(store.list_scopes("/")) == ["/a", "/b", "/c"]
    assert [store.get_scope_info(s).record_count for s in ("/a", "/b", "/c")] == [1, 1, 1]


def test_a_policy_never_applies_to_the_langgraph_stores_items(store, raw):
    """The LangGraph store's items (/langgraph and below) are under their own TTL: a
    policy on "/" passes over them (a CrewAI ``retention={"/": 30}`` deleted LangGraph
    items put with ``ttl=None``), and a policy inside /langgraph is refused. Many old
    items there never stall the "/" policy: each sweep reads at most 4 x its limit of
    them and the next goes on after them (the 250 items are older than every CrewAI
    record: sweeps of limit 20 read 80 of them each, the fourth reaches the records)."""
    from memworker.keys import LANGGRAPH_ROOT

    old = utcnow() - timedelta(days=40)
    store.save(
        [{"id": f"lg{i}", "content": "x", "scope": f"{LANGGRAPH_ROOT}/users/u{i % 3}",
          "created_at": old - timedelta(days=2, seconds=i), "embedding": [1.0, 0]} for i in range(250)]
        + [{"id": f"crew{i}", "content": "x", "scope": "/" if i % 2 else "/crew",
            "created_at": old - timedelta(days=1, seconds=i), "embedding": [1.0, 0]} for i in range(30)]
        + [{"id": "new", "content": "x", "scope": "/", "created_at": utcnow(), "embedding": [1.0, 0]}]
    )  # fmt: skip
    for scope in (LANGGRAPH_ROOT, f"{LANGGRAPH_ROOT}/users"):
        with pytest.raises(ValidationError, match="LangGraph"):
            store.set_retention(scope, 1)
    store.set_retention(f"{LANGGRAPH_ROOT}x", 30)  # a sibling name is not inside it
    store.set_retention("/", 30)
    first = store.sweep(limit=20)  # 80 of the old items read, no record
    assert (first["retained"], first["scanned"]) == (0, 80)
    for _ in range(30):
        if store.count("/") == 251:
            break
        store.sweep(limit=20)
    assert store.count(LANGGRAPH_ROOT) == 250
    assert sorted(r.id for r in store.list_records("/", limit=1000) if not r.id.startswith("lg")) == ["new"]
    # a policy inside it written by hand (not through the store) deletes nothing either
    raw.hset(store.keys.retention, f"{LANGGRAPH_ROOT}/users", "1")
    store.sweep(limit=1000)
    assert store.count(LANGGRAPH_ROOT) == 250


def test_workers_apply_retention(server, namespace, monkeypatch):
    monkeypatch.setenv("MEMWORKER_SWEEP_INTERVAL", "0.2")
    settings = Settings.from_url(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    with ValkeyStore(settings) as store:
        _old_and_new(store)
        store.set_retention("/crew", 30)
        with worker_mod.running_worker(settings, threads=1, worker_timeout_ms=100):
            deadline = time.time() + 20
            while store.count("/crew") > 1 and time.time() < deadline:
                time.sleep(0.2)
        assert sorted(r.id for r in store.list_records("/")) == ["kept", "new"]
        assert store.list_categories("/") == {}
        store.reset()


def test_one_sweep_per_interval_across_workers(store, server):
    from memworker.io.redispy import redis_client
    from memworker.worker.sweep import Sweeper

    client = redis_client(store.settings)
    try:
        a = Sweeper(store, client, store.keys.namespace, "a")
        b = Sweeper(store, client, store.keys.namespace, "b")
        assert a.maybe_sweep() is not None
        assert b.maybe_sweep() is None  # a holds the interval's lock
        store.set_sweep_interval(50)
        client.delete(store.keys.sweep)
        assert b.maybe_sweep() is not None
        time.sleep(0.1)
        assert a.maybe_sweep() is not None
    finally:
        client.close()


def test_sweep_interval_setting():
    assert sweep_interval_ms("") == 60_000
    assert sweep_interval_ms("0.5") == 500
    for bad in ("0", "-1", "x", "1e9"):
        with pytest.raises(ConfigError, match="MEMWORKER_SWEEP_INTERVAL"):
            sweep_interval_ms(bad)


def test_queued_memory_retention(plain_server, namespace):
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory

    class Embedder:
        def __call__(self, texts):
            return [[1.0, 0.0] for _ in texts]

    memory = QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=Embedder(),
                          model_id="test", retention={"/": 90, "/scratch": 1})  # fmt: skip
    try:
        assert memory.store.retention() == {"/": 90.0, "/scratch": 1.0}
        memory.set_retention("/scratch", None)
        assert memory.store.retention() == {"/": 90.0}
    finally:
        memory.store.reset()
        memory.store.set_retention("/", None)
    # checked whole before the first policy is written; True is not a day, nor "0.001"
    # text (pydantic made them 1.0 and 0.001: {"/": True} kept one day of memories)
    store = ValkeyStore(plain_server.url, namespace=namespace)
    try:
        for bad in ({"/": -3}, {"/": True}, {"/": "0.001"}, {"/a": 90, "/b": -1}, {"/a//b": 3}):
            # memworker's ValidationError as it is (pydantic wrapped it before)
            with pytest.raises(ValidationError, match=r"retention.*days must be|retention scope"):
                QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=Embedder(),
                             model_id="test", retention=bad)  # fmt: skip
            assert store.retention() == {}, bad
    finally:
        store.reset()
        store.close()


def test_queued_memory_retention_is_inside_its_root_scope(plain_server, namespace):
    """A memory with a ``root_scope`` remembers and recalls under it: its retention
    policies are scopes under it too. ``{"/": 1}`` on tenant A's memory kept every
    tenant's records one day (and LangGraph's items in the namespace)."""
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory

    class Embedder:
        def __call__(self, texts):
            return [[1.0, 0.0] for _ in texts]

    memory = QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=Embedder(),
                          model_id="test", root_scope="/tenant-a", retention={"/": 30, "/scratch": 1})  # fmt: skip
    try:
        assert memory.store.retention() == {"/tenant-a": 30.0, "/tenant-a/scratch": 1.0}
        memory.set_retention("/scratch", None)
        memory.set_retention("notes", 7)
        assert memory.store.retention() == {"/tenant-a": 30.0, "/tenant-a/notes": 7.0}
    finally:
        memory.store.reset()
        for scope in list(memory.store.retention()):
            memory.store.set_retention(scope, None)
