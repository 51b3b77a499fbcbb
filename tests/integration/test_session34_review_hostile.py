"""Review of session 34's changes (helper-80, 2026-12-06).

(2) ``check_unicode``: a string UTF-8 cannot encode (a lone surrogate) given as any
argument that reaches a Valkey command or the embedder must be refused as input
(README "Bad input is rejected": "refused as input wherever it is given, naming the
argument"): a ``ValidationError`` naming the argument, never a ``StoreError`` "Valkey
error", a bare ``UnicodeEncodeError`` / ``TypeError``, and nothing written.

(3) LangGraph: a put that follows a delete of its key in one batch makes a new item
(docs/langgraph.md, ops table): its versioned delete goes first. Attacked with
delete-put-delete-put, abatch, two stores, a refused batch (a put too big for a job
after the delete: nothing of the batch may be sent).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from memworker.errors import ValidationError
from test_unicode_sinks_hostile import (  # noqa: F401
    LONE,
    embedder,
    keys_of,
    rec,
    settings_of,
    vec,
)

DIM = 8


def outcome(call) -> str | None:
    """None when ``call`` raised a ValidationError; else what it did instead."""
    try:
        res = call()
        if asyncio.iscoroutine(res):
            asyncio.run(res)
    except ValidationError as exc:
        return None if "surrogate" in str(exc) or "unicode" in str(exc) or "utf" in str(exc).lower() else f"VE: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported per call
        return f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}"
    return "accepted"


def wrong_of(calls: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, call in calls.items():
        got = outcome(call)
        if got is not None:
            out[name] = got
    return out


# ----------------------------------------------------------------------------- ValkeyStore reads and deletes
def store_filter_calls(store, s: str) -> dict[str, Any]:
    q = vec(1)
    return {
        "search categories": lambda: store.search(q, categories=["c" + s]),
        "search metadata_filter key": lambda: store.search(q, metadata_filter={"k" + s: 1}),
        "search metadata_filter value": lambda: store.search(q, metadata_filter={"k": "v" + s}),
        "search metadata_ranges key": lambda: store.search(q, metadata_ranges={"=k" + s: (0, True, 1, True)}),
        "asearch metadata_filter value": lambda: store.asearch(q, metadata_filter={"k": "v" + s}),
        "delete categories": lambda: store.delete(categories=["c" + s]),
        "delete metadata_filter key": lambda: store.delete(metadata_filter={"k" + s: 1}),
        "delete metadata_filter value": lambda: store.delete(metadata_filter={"k": "v" + s}),
    }


def store_calls(store, s: str) -> dict[str, Any]:
    q = vec(1)
    return {
        "search scope_prefix": lambda: store.search(q, scope_prefix="/a" + s),
        "search source": lambda: store.search(q, source="s" + s),
        "search viewer": lambda: store.search(q, include_private=False, viewer="s" + s),
        "search exclude_scope": lambda: store.search(q, exclude_scope="/x" + s),
        "asearch scope_prefix": lambda: store.asearch(q, scope_prefix="/a" + s),
        "asearch source": lambda: store.asearch(q, source="s" + s),
        "delete scope_prefix": lambda: store.delete(scope_prefix="/a" + s),
        "delete keep_scope": lambda: store.delete(scope_prefix="/a", keep_scope="/a/b" + s),
        "list_records": lambda: store.list_records("/a" + s),
        "get_scope_info": lambda: store.get_scope_info("/a" + s),
        "list_scopes": lambda: store.list_scopes("/a" + s),
        "list_categories": lambda: store.list_categories("/a" + s),
        "count": lambda: store.count("/a" + s),
        "reset": lambda: store.reset("/a" + s),
        "touch_records": lambda: store.touch_records(["seed" + s]),
        "update id": lambda: store.update(rec("seed" + s)),
    }


@pytest.mark.parametrize("calls", [store_calls, store_filter_calls], ids=["scopes-sources-ids", "categories-metadata"])
def test_store_reads_and_deletes_refuse_lone_surrogates_in_every_filter_and_write_nothing(store, raw, namespace, calls):
    """README: a lone surrogate "is refused as input wherever it is given, naming the
    argument". A scope, source or viewer filter is refused so; a category or metadata
    filter (search and delete) must be too, not silently match nothing."""
    store.save([rec("seed"), rec("other", scope="/a/b", metadata={"k": "v"})])
    before = {k: raw.dump(k) for k in keys_of(raw, namespace)}
    wrong = {}
    for s in LONE:
        wrong.update({f"{n} {s!r}": w for n, w in wrong_of(calls(store, s)).items()})
    assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
    assert store.count() == 2
    assert {k: raw.dump(k) for k in keys_of(raw, namespace)} == before


# ----------------------------------------------------------------------------- CrewAI QueuedMemory
from test_unicode_sinks_hostile import CREW, memory  # noqa: E402,F401


def memory_calls(memory, s: str) -> dict[str, Any]:
    return {
        "recall scope": lambda: memory.recall("q", scope="/s" + s, depth="shallow"),
        "arecall query": lambda: memory.arecall("q" + s, depth="shallow"),
        "arecall scope": lambda: memory.arecall("q", scope="/s" + s, depth="shallow"),
        "aremember content": lambda: memory.aremember("x" + s, **CREW),
        "aremember scope": lambda: memory.aremember("x", categories=["c"], importance=0.5, scope="/s" + s),
        "remember categories": lambda: memory.remember("x", categories=["c" + s], importance=0.5, scope="/s"),
        "forget scope": lambda: memory.forget(scope="/s" + s),
        "update scope": lambda: memory.update(KEPT[0], scope="/s" + s),
        "update categories": lambda: memory.update(KEPT[0], categories=["c" + s]),
        "update metadata": lambda: memory.update(KEPT[0], metadata={"k": s}),
        "list_records scope": lambda: memory.list_records("/s" + s),
        "list_scopes path": lambda: memory.list_scopes("/s" + s),
        "list_categories path": lambda: memory.list_categories("/s" + s),
        "info path": lambda: memory.info("/s" + s),
        "tree path": lambda: memory.tree("/s" + s),
        "reset scope": lambda: memory.reset("/s" + s),
        "set_retention scope": lambda: memory.set_retention("/s" + s, 1),
        "scope view": lambda: memory.scope("/s" + s).recall("q", depth="shallow"),
        "slice view": lambda: memory.slice(scopes=["/s" + s]).recall("q", depth="shallow"),
    }


def memory_filter_calls(memory, s: str) -> dict[str, Any]:
    return {
        "recall categories": lambda: memory.recall("q", categories=["c" + s], depth="shallow"),
        "forget categories": lambda: memory.forget(categories=["c" + s]),
        "forget metadata_filter key": lambda: memory.forget(metadata_filter={"k" + s: 1}),
        "forget metadata_filter value": lambda: memory.forget(metadata_filter={"k": "v" + s}),
    }


def memory_update_content_calls(memory, s: str) -> dict[str, Any]:
    """update(content=...) re-embeds the content in this process (CrewAI's update):
    the tokenizer's bare TypeError, as recall's query gave before it was checked."""
    return {"update content": lambda: memory.update(KEPT[0], content="y" + s)}


KEPT: list[str] = []


@pytest.mark.parametrize(
    "calls", [memory_calls, memory_filter_calls, memory_update_content_calls],
    ids=["scopes-views-writes", "categories-metadata-filters", "update-content"],
)
def test_queued_memory_refuses_lone_surrogates_in_every_argument_and_writes_nothing(memory, raw, namespace, calls):
    """remember_many is left out: its refusal is a MemorySaveFailedEvent (docs/crewai.md)."""
    kept = memory.remember("keep me", **CREW)
    KEPT[:] = [kept.id]
    before_count = memory.storage.count()
    before = memory.storage.get_record(kept.id)
    wrong = {}
    for s in LONE:
        wrong.update({f"{n} {s!r}": w for n, w in wrong_of(calls(memory, s)).items()})
    memory.drain_writes()
    assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
    assert memory.storage.count() == before_count
    after = memory.storage.get_record(kept.id)
    assert (after.content, after.scope, after.categories, after.metadata) == (
        before.content, before.scope, before.categories, before.metadata)


# ----------------------------------------------------------------------------- LangGraph reads
lg_base = pytest.importorskip("langgraph.store.base")
from langgraph.store.base import GetOp, ListNamespacesOp, MatchCondition, PutOp, SearchOp  # noqa: E402
from test_langgraph import make_store, settings, worker  # noqa: E402,F401
from test_langgraph import embedder as lg_embedder  # noqa: E402,F401

from memworker.langgraph import record_id  # noqa: E402
from test_langgraph_batch_order_hostile import _cos  # noqa: E402


def lg_calls(lg, s: str) -> dict[str, Any]:
    return {
        "search query": lambda: lg.search(("n",), query="apple" + s),
        "search namespace_prefix": lambda: lg.search(("n" + s,)),
        "asearch namespace_prefix": lambda: lg.asearch(("n" + s,)),
        "list_namespaces prefix": lambda: lg.list_namespaces(prefix=("n" + s,)),
        "alist_namespaces prefix": lambda: lg.alist_namespaces(prefix=("n" + s,)),
        "get namespace": lambda: lg.get(("n" + s,), "k"),
        "get key": lambda: lg.get(("n",), "k" + s),
        "aget key": lambda: lg.aget(("n",), "k" + s),
        "delete key": lambda: lg.delete(("n",), "k" + s),
        "adelete namespace": lambda: lg.adelete(("n" + s,), "k"),
        "batch: put then bad list_namespaces": lambda: lg.batch(
            [PutOp(("n",), "new", {"text": "pear"}),
             ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("n" + s,)),))]),
    }


def lg_filter_calls(lg, s: str) -> dict[str, Any]:
    return {
        "search filter value": lambda: lg.search(("n",), filter={"text": "apple" + s}),
        "search filter value with query": lambda: lg.search(("n",), query="apple", filter={"text": "a" + s}),
        "search filter key": lambda: lg.search(("n",), filter={"t" + s: "apple"}),
        "search filter $eq": lambda: lg.search(("n",), filter={"text": {"$eq": "a" + s}}),
        "search filter $ne": lambda: lg.search(("n",), filter={"text": {"$ne": "a" + s}}),
        "asearch filter value": lambda: lg.asearch(("n",), filter={"text": "apple" + s}),
        "list_namespaces suffix": lambda: lg.list_namespaces(suffix=("n" + s,)),
        "batch: put then bad search": lambda: lg.batch(
            [PutOp(("n",), "new", {"text": "pear"}), SearchOp(("n",), filter={"text": "a" + s})]
        ),
    }


@pytest.mark.parametrize("calls", [lg_calls, lg_filter_calls], ids=["keys-prefixes", "filters-suffix"])
def test_langgraph_reads_refuse_lone_surrogates_naming_the_argument_and_write_nothing(make_store, calls):
    """docs/langgraph.md: bad input raises ValidationError naming the field, and
    nothing of the call is enqueued (a batch's reads are checked before its writes:
    a put before a refused search is not sent). The query and a namespace prefix are
    refused so (README: "wherever it is given"); a filter's values and keys and a
    list_namespaces suffix must be too."""
    lg = make_store()
    lg.put(("n",), "k", {"text": "apple"})
    assert lg.get(("n",), "k") is not None
    depth = lg.queue.status()["depth"]
    wrong = {}
    for s in LONE:
        for name, call in calls(lg, s).items():
            got = outcome(call)
            if got is not None and not (got == "accepted" and name.startswith(("get", "aget", "delete", "adelete"))):
                wrong[f"{name} {s!r}"] = got  # a read or delete of a key no put can write may find nothing
    assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
    assert lg.queue.status()["depth"] == depth
    assert lg.get(("n",), "new") is None and lg.get(("n",), "k").value == {"text": "apple"}
    assert lg.store.count("/langgraph") == 1


# ----------------------------------------------------------------------------- LangGraph delete then put in one batch
def _created(lg, ns, key):
    item = lg.get(ns, key, refresh_ttl=False)
    return None if item is None else (item.value, item.created_at)


@pytest.mark.parametrize("face", ["batch", "abatch"])
def test_a_batch_refused_for_a_put_too_big_for_a_job_after_a_delete_deletes_nothing(make_store, face):
    """docs/langgraph.md: a put too big for a job is refused "still before anything is
    sent", and bad input writes nothing of the call. A batch deleting a key and then
    putting it again with a value too big for a job must leave the stored item as it
    was, not deleted by the batch's first half."""
    lg = make_store()
    ns = ("big",)
    lg.put(ns, "k", {"text": "apple"})
    before = _created(lg, ns, "k")
    assert before is not None
    lg.queue.max_job_bytes = 8192
    big = {"text": "pear " * 4000}  # ~20 KB: over the job limit
    for ops in ([PutOp(ns, "k", big)], [PutOp(ns, "k", None), PutOp(ns, "k", big)]):
        with pytest.raises(ValidationError):
            lg.batch(ops) if face == "batch" else asyncio.run(lg.abatch(ops))
    lg.queue.max_job_bytes = 1 << 20
    assert _created(make_store(), ns, "k") == before


@pytest.mark.parametrize("face", ["batch", "abatch"])
def test_delete_put_delete_put_in_one_batch_ends_as_a_new_item_with_the_last_value(make_store, face):
    lg = make_store(ttl={"default_ttl": 60})
    ns = ("dpdp",)
    lg.put(ns, "k", {"text": "apple"})
    old = _created(lg, ns, "k")
    ops = [
        PutOp(ns, "k", None), PutOp(ns, "k", {"text": "pear 1"}),
        PutOp(ns, "k", None), PutOp(ns, "k", {"text": "pear 2"}, ttl=5),
        GetOp(ns, "k"),
    ]  # fmt: skip
    got = lg.batch(ops) if face == "batch" else asyncio.run(lg.abatch(ops))
    assert got[-1] is not None and got[-1].value == {"text": "pear 2"}
    value, created = _created(make_store(), ns, "k")
    assert value == {"text": "pear 2"} and created > old[1]
    assert got[-1].created_at == created
    # the item has the batch's ttl (5 minutes), not the store's default nor none
    rid = record_id(ns, "k")
    ttl_ms = lg.store._sync.run(lg.store._p_expiries([rid]))[0] - int(time.time() * 1000)
    assert 4 * 60_000 < ttl_ms <= 5 * 60_000
    hits = lg.search(ns, query="pear")
    assert [h.key for h in hits] == ["k"] and hits[0].value == {"text": "pear 2"}


def test_concurrent_delete_put_batches_on_two_stores_never_leave_the_key_deleted(make_store):
    """Each batch ends with a put of the key: whatever the interleaving, the item exists
    afterwards with one of the two batches' values (the latest version is a put)."""
    a, b = make_store(), make_store()
    ns = ("race",)
    for round_ in range(15):
        a.put(ns, "k", {"text": "apple", "r": round_})
        a.get(ns, "k")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(store, tag):
            try:
                barrier.wait()
                store.batch([PutOp(ns, "k", None), PutOp(ns, "k", {"text": f"pear {tag}", "r": round_})])
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        a.get(ns, "k"), b.get(ns, "k")  # both drained
        got = make_store().get(ns, "k")
        assert got is not None, f"round {round_}: the key is deleted"
        assert got.value in ({"text": "pear a", "r": round_}, {"text": "pear b", "r": round_})


def test_concurrent_delete_put_abatches_on_two_stores_never_leave_the_key_deleted(make_store):
    a, b = make_store(), make_store()
    ns = ("arace",)

    async def main():
        for round_ in range(15):
            await a.aput(ns, "k", {"text": "apple", "r": round_})
            await asyncio.gather(*(
                s.abatch([PutOp(ns, "k", None), PutOp(ns, "k", {"text": f"pear {t}", "r": round_})])
                for s, t in ((a, "a"), (b, "b"))
            ))  # fmt: skip
            await a.aget(ns, "k"), await b.aget(ns, "k")
            got = await make_store().aget(ns, "k")
            assert got is not None, f"round {round_}: the key is deleted"
            assert got.value in ({"text": "pear a", "r": round_}, {"text": "pear b", "r": round_})

    asyncio.run(main())


# ----------------------------------------------------------------------------- reshard: the reply lost, the target gone
def test_a_hand_over_that_happened_while_the_link_to_the_target_dropped_finishes_the_move(
    cluster_plain_server, namespace, monkeypatch
):
    """``SETSLOT NODE`` runs on the target, then the mover's link to it drops for good
    (the cluster itself stays healthy). docs/scaling.md: a hand-over whose reply is
    lost is asked of the target "or, if the target cannot answer, of the source, which
    learns it over the cluster bus (up to 30 s ...): a hand-over that happened finishes
    the move". The move must return its report (not raise), the source take writes
    again, and the namespace be whole on the target."""
    import redis

    from memworker.reshard import move_namespace
    from memworker.store.store import ValkeyStore
    from test_reshard import _keys, _records, _where
    from test_reshard_hostile import PAUSE_MS, _settings, _slot_owner_port, _wait_writable

    cluster = cluster_plain_server
    settings = _settings(cluster, namespace)
    with ValkeyStore(settings) as store:
        store.save(_records(12, DIM))
    source, _, slot, to = _where(cluster, namespace)
    keys_before = _keys(source, slot)
    target_port = int(to.rsplit(":", 1)[1])
    gone, tripped = [False], [False]
    real_redis = redis.Redis

    class Pipe:
        def __init__(self, pipe: Any) -> None:
            self.pipe = pipe

        def __getattr__(self, name: str) -> Any:
            return getattr(self.pipe, name)

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            if gone[0]:
                raise redis.ConnectionError("Error 111 connecting to the target. Connection refused.")
            return self.pipe.execute(*args, **kwargs)

    class MoverClient(real_redis):
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            to_target = self.connection_pool.connection_kwargs["port"] == target_port
            if gone[0] and to_target:
                raise redis.ConnectionError("Error 111 connecting to the target. Connection refused.")
            handover = args[:2] == ("CLUSTER", "SETSLOT") and len(args) > 3 and args[3] == "NODE"
            if handover and to_target:
                super().execute_command(*args, **kwargs)
                gone[0] = tripped[0] = True
                raise redis.ConnectionError("Connection reset by peer (the reply is lost)")
            return super().execute_command(*args, **kwargs)

        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            pipe = super().pipeline(*args, **kwargs)
            return Pipe(pipe) if self.connection_pool.connection_kwargs["port"] == target_port else pipe

    monkeypatch.setattr(redis, "Redis", MoverClient)
    raised: BaseException | None = None
    report = None
    try:
        report = move_namespace(settings, to, pause_ms=PAUSE_MS)
    except BaseException as exc:  # noqa: BLE001 - checked below
        raised = exc
    finally:
        monkeypatch.setattr(redis, "Redis", real_redis)
        gone[0] = False
    assert tripped[0], "the hand-over never went through the dropped link"
    assert _slot_owner_port(cluster, namespace) == target_port  # the cluster did hand it over
    assert raised is None, f"the move raised {type(raised).__name__}: {raised}"
    assert report.keys == keys_before and report.target == to
    _wait_writable(source, namespace, 25)
    with ValkeyStore(settings) as store:
        assert store.count() == 12



@pytest.mark.parametrize("path", ["index-false", "agent-embed"])
def test_delete_then_put_on_the_save_paths_makes_a_new_item_and_drops_the_old_vector(make_store, path):
    """The same rule on the puts that go as save jobs: ``index=False`` (no vector) and
    an ``embed`` of the agent's process (the vector made before anything is sent)."""
    from test_langgraph import WordEmbedder

    kw = {} if path == "index-false" else {"index": {"dims": DIM, "embed": lambda t: WordEmbedder().encode(t).tolist(),
                                                     "fields": ["text"]}}  # fmt: skip
    lg = make_store(**kw)
    ns = ("save",)
    lg.put(ns, "k", {"text": "apple"})
    old = _created(lg, ns, "k")
    put = PutOp(ns, "k", {"text": "pear"}, index=False if path == "index-false" else None)
    lg.batch([PutOp(ns, "k", None), put])
    # a store of its own (a new producer) reads what lg's drain has seen committed:
    # lg's put goes as a save job that no drain of the new store waits for
    lg.queue.drain(timeout=60)
    value, created = _created(make_store(**kw), ns, "k")
    assert value == {"text": "pear"} and created > old[1]
    hits = {h.key: h.score for h in lg.search(ns, query="apple")}
    if path == "index-false":
        assert hits.get("k") is None  # no vector: listed without a score, never the old one
    else:
        assert hits["k"] == pytest.approx(_cos("apple", "pear"), abs=1e-3)
