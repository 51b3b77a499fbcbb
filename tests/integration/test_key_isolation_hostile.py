"""Hostile review of key names and tenant isolation (a review of 2026-12-06), on real
servers: names a user or an LLM controls (LangGraph namespace labels, scopes, record
ids, namespaces) must never make one tenant's reads, deletes, sweeps or moves reach
another tenant's records or keys.

- reshard: a namespace whose hash slot another namespace shares moves that namespace
  too (documented), but only the moved namespace's search index is dropped on the
  source: the other one's is left behind, orphaned.
- Empty LangGraph labels (``("",)``, ``("t1", "")``, which the scope normalization
  would fold into the parent) are refused on every path through ``batch``.
- Scopes that look like glob patterns or prefixes of each other (``/tenant-a`` vs
  ``/tenant-ab``, ``/x*``, ``/x?``, ``/[x]``, ``/x/..``) stay apart in count, listing,
  delete, reset and retention; namespaces that are prefixes of each other (``a``,
  ``a.b``, ``a-``) share no key.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import InvalidNamespaceError, ListNamespacesOp, MatchCondition, PutOp, SearchOp  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder, lg, make_store, settings, worker  # noqa: E402,F401

from memworker import ValkeyStore  # noqa: E402
from memworker.errors import ValidationError  # noqa: E402
from memworker.keys import tag  # noqa: E402
from memworker.records import record_types  # noqa: E402
from memworker.settings import Settings  # noqa: E402

MemoryRecord = record_types()[0]


def _rec(rid: str, scope: str, dims: int = 8, created: datetime | None = None):
    rng = np.random.default_rng(abs(hash(rid)) % (1 << 32))
    kw = {}
    if created is not None:
        kw["created_at"] = created
    return MemoryRecord(id=rid, content=f"memory {rid}", scope=scope, categories=["c"],
                        embedding=rng.random(dims).astype(np.float32).tolist(), **kw)  # fmt: skip


# ----------------------------------------------------------------------------- LangGraph
REFUSED = (ValidationError, InvalidNamespaceError)


def _search(lg, prefix, query=None):
    """A search through ``batch`` (what LangGraph's runtime and ``abatch`` callers send;
    ``BaseStore.search`` checks the labels first, ``batch`` does not)."""
    return lg.batch([SearchOp(tuple(prefix), None, 10, 0, query)])[0]


def _two_tenants(lg) -> None:
    lg.put(("t1", "mem"), "k1", {"text": "apple secret of t1"})
    lg.put(("t2", "mem"), "k2", {"text": "apple secret of t2"})


def test_langgraph_search_of_an_empty_label_prefix_sees_no_tenant(lg):
    """``search(("",))`` maps the prefix to the scope ``/langgraph/`` which normalizes to
    ``/langgraph``, the root of every namespace: it returned t1's and t2's items. A
    namespace whose first label is ``""`` holds nothing here (LangGraph refuses such a
    put), so the search must return ``[]`` (or refuse the prefix with a
    ValidationError naming ``namespace_prefix``)."""
    _two_tenants(lg)
    try:
        found = _search(lg, ("",))
        found_q = _search(lg, ("",), "apple secret")
    except REFUSED as exc:
        assert "namespace_prefix" in str(exc) or "label" in str(exc)
        return
    assert [i.namespace for i in found] == []
    assert [i.namespace for i in found_q] == []


def test_langgraph_search_of_a_trailing_empty_label_is_not_the_parent(lg):
    """``search(("t1", ""))`` is the scope ``/langgraph/t1/`` -> ``/langgraph/t1``: it
    returned ``("t1", "mem")``'s item, which does not start with the labels ``t1, ""``.
    Expected ``[]`` (or a ValidationError naming the empty label)."""
    _two_tenants(lg)
    try:
        found = _search(lg, ("t1", ""))
    except REFUSED as exc:
        assert "label" in str(exc) or "namespace_prefix" in str(exc)
        return
    assert [i.namespace for i in found] == []


def test_langgraph_list_namespaces_of_an_empty_label_prefix_lists_no_tenant(lg):
    """``list_namespaces(prefix=("",))`` reads the categories of ``/langgraph``: every
    namespace is a candidate, only LangGraph's own match filter (applied after)
    stands between the prefix and other tenants' namespace names. Expected ``[]``."""
    _two_tenants(lg)
    try:
        listed = lg.batch([ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("",)),),
                                            max_depth=None, limit=100, offset=0)])[0]  # fmt: skip
    except REFUSED:
        return
    assert listed == []


def test_langgraph_a_batch_put_under_an_empty_label_keeps_its_namespace(lg):
    """``batch([PutOp(("t1", ""), ...)])`` (``put`` runs LangGraph's label check,
    ``batch`` does not) was stored at the scope ``/langgraph/t1`` and read back as the
    namespace ``("t1",)``: the item changes namespace and a search of t1 alone finds it.
    Expected: a ValidationError naming the empty label, and nothing written (or the
    item kept under ``("t1", "")`` and invisible to a search of ``("t1", "x")``)."""
    try:
        lg.batch([PutOp(("t1", ""), "k", {"text": "apple from the empty label"})])
    except REFUSED as exc:
        assert "label" in str(exc)
        assert _search(lg, ("t1",)) == []
        return
    item = lg.get(("t1", ""), "k")
    assert item is not None and item.namespace == ("t1", "")
    assert [i.namespace for i in _search(lg, ("t1", ""))] == [("t1", "")]
    assert [i.namespace for i in _search(lg, ("t1",))] == [("t1", "")]


def test_langgraph_dot_dot_and_glob_labels_stay_their_own_namespace(lg):
    """Labels ``*``, ``?``, ``[t]`` and ``%2E%2E`` are literal: a search of ``("*",)`` or
    ``("%2E%2E",)`` sees its own namespace only, never its parent or siblings."""
    _two_tenants(lg)
    for label in ("*", "?", "[t]", "%2E%2E"):
        lg.batch([PutOp((label, "mem"), "k", {"text": f"apple {label}"})])
    for label in ("*", "?", "[t]", "%2E%2E"):
        found = _search(lg, (label,))
        assert [i.namespace for i in found] == [(label, "mem")]
    assert [i.namespace for i in _search(lg, ("t1",))] == [("t1", "mem")]


# ----------------------------------------------------------------------------- scopes
SCOPES = ["/tenant-a", "/tenant-ab", "/tenant-a*", "/tenant-a?", "/[tenant-a]",
          "/tenant-a/..", "/tenant-a b", "/tenant-a:x", "/tenant-a\\", "/tenant-a{x}"]  # fmt: skip


def test_glob_like_and_prefix_scopes_stay_apart(store):
    """Scopes that are prefixes, globs or escapes of ``/tenant-a``: each scope's count,
    listing and delete touch its own records only."""
    store.save([_rec(f"r{i}", s) for i, s in enumerate(SCOPES)])
    for i, s in enumerate(SCOPES):
        assert store.count(s) == (1 if s != "/tenant-a" else 2)  # "/tenant-a/.." is below "/tenant-a"
    assert {r.id for r in store.list_records(scope_prefix="/tenant-a*")} == {"r2"}
    assert store.delete(scope_prefix="/tenant-a?") == 1
    assert store.delete(scope_prefix="/tenant-a*") == 1
    store.reset(scope_prefix="/[tenant-a]")
    left = {r.id for r in store.list_records(scope_prefix="/", limit=100)}
    assert left == {f"r{i}" for i in range(len(SCOPES))} - {"r2", "r3", "r4"}


def test_retention_of_a_scope_never_reaches_a_prefix_sibling(store):
    """A retention policy on ``/tenant-a`` (and one on ``/tenant-a*``) deletes old
    records of ``/tenant-a`` and below only; ``/tenant-ab`` and ``/tenant-a?`` keep
    theirs."""
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    store.save([_rec(f"o{i}", s, created=old) for i, s in enumerate(SCOPES)])
    store.set_retention("/tenant-a", 1)
    store.set_retention("/tenant-a*", 1)
    assert store.sweep(limit=1000)["retained"] == 3
    left = {r.scope for r in store.list_records(scope_prefix="/", limit=100)}
    assert left == set(SCOPES) - {"/tenant-a", "/tenant-a/..", "/tenant-a*"}


# ----------------------------------------------------------------------------- namespaces
def test_prefix_namespaces_share_no_key_and_reset_only_their_own(server, raw):
    """Namespaces ``n``, ``n.b``, ``n-`` and ``n_b``: each one's keys start with its own
    ``{ns}:``; reset of ``n`` leaves the others whole. Glob or colon namespaces are
    refused naming the field."""
    base = f"t{int(time.time() * 1e6) % 10**9}"
    names = [base, f"{base}.b", f"{base}-", f"{base}_b"]
    stores = [ValkeyStore(server.url, namespace=n, search_mode="module" if server.module else "exact")
              for n in names]  # fmt: skip
    try:
        for n, s in zip(names, stores):
            s.save([_rec(f"{n}-r", "/x")])
        stores[0].reset()
        assert [s.count() for s in stores] == [0, 1, 1, 1]
        for bad in ("a*", "a:b", "a{b}", "a b", "a?", "é"):
            with pytest.raises(Exception) as info:
                Settings.from_url(server.url, namespace=bad)
            assert "namespace" in str(info.value)
    finally:
        for s in stores:
            try:
                s.reset()
            finally:
                s.close()


# ----------------------------------------------------------------------------- reshard
def _same_slot_namespace(namespace: str) -> str:
    from redis.crc import key_slot

    slot = key_slot(tag(namespace).encode())
    for i in range(10_000_000):
        other = f"o{i}"
        if key_slot(tag(other).encode()) == slot:
            return other
    raise AssertionError("no namespace of the same slot found")


def test_reshard_keeps_the_search_index_of_a_namespace_that_shares_the_slot(cluster_module_server, namespace):
    """``move_namespace`` moves every key of the slot (the report says so), but drops
    only the moved namespace's index (memworker/reshard.py: ``index =
    Keys(settings.namespace).index``, ``_drop_index(source, index, ...)``): another
    namespace of the same slot keeps ``{other}:idx`` on the source, an orphan index over
    keys the source no longer owns (and whose HNSW entries the source deletes one by one
    as it drops the slot, writes paused, which is why the moved namespace's index is
    dropped first). Expected: every namespace whose keys moved has no index left on the
    source and one on the target (or the move is refused naming the other namespace);
    its count and searches answer as before (they do: a search re-makes the index).
    """
    from redis.cluster import RedisCluster

    import redis
    from memworker.reshard import move_namespace

    cluster = cluster_module_server
    other = _same_slot_namespace(namespace)
    s_mine = Settings.from_url(cluster.url, namespace=namespace, search_mode="module")
    s_other = Settings.from_url(cluster.url, namespace=other, search_mode="module")
    recs = [_rec(f"r{i}", f"/s/{i % 3}", dims=16) for i in range(30)]
    with ValkeyStore(s_mine) as a, ValkeyStore(s_other) as b:
        a.save(recs)
        b.save(recs)
        assert b.ensure_index(30)
        before = [r.id for r, _ in b.search(recs[7].embedding, limit=5)]
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        owner = rc.get_node_from_key(tag(namespace))
        target = next(n for n in rc.get_primaries() if n.port != owner.port)
    finally:
        rc.close()
    source_c, target_c = redis.Redis(port=owner.port), redis.Redis(port=target.port)
    try:
        report = move_namespace(s_mine, f"127.0.0.1:{target.port}")
        assert report.also_moved == (other,)
        other_index = (tag(other) + ":idx").encode()
        with ValkeyStore(s_other) as b:
            assert b.count() == 30
            assert [r.id for r, _ in b.search(recs[7].embedding, limit=5)] == before
        on_source = other_index in source_c.execute_command("FT._LIST")
        on_target = other_index in target_c.execute_command("FT._LIST")
        assert (on_source, on_target) == (False, True), "index of the other namespace (on source, on target)"
    finally:
        for s in (s_mine, s_other):
            with ValkeyStore(s) as st:
                st.reset()
        source_c.close()
        target_c.close()
