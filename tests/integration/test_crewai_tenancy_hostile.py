"""Hostile review of tenancy through CrewAI's API (a review of 2026-12-07), on real
servers and real in-process workers: what an LLM or a user controls through
``QueuedMemory`` (scope, categories, metadata keys and values, source, private,
importance, ids passed to ``forget``/``update``, ``root_scope``) must not reach
another tenant's records, nor the other framework's.

- Cross-framework, with the DEFAULTS (``QueuedMemory`` and ``QueuedStore`` both on
  the namespace ``memworker``, ``QueuedMemory`` without a ``root_scope``): LangGraph
  items are records under ``/langgraph`` (``memworker.langgraph.ROOT_SCOPE``) with
  the metadata keys ``key``, ``ttl`` and ``=<field>``, and CrewAI's API reads and
  writes that scope like any other.
- ``root_scope`` isolation of ``QueuedMemory``: scope strings such as ``..``,
  ``/../x``, ``//x``, ``x/``, look-alike slashes, very long ones, NUL.
- Metadata keys the store or the LangGraph store treat specially (``=<field>``:
  range tokens; ``key``, ``ttl``) through ``remember(metadata=...)`` and
  ``forget(metadata_filter=...)``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("crewai")
pytest.importorskip("langgraph.store.base")

from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai._calls import PrivacyView  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import SCRIPT_PLAN_ENV, StandInLLM  # noqa: E402
from memworker.errors import ValidationError  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

DIM = 384  # the bundled all-MiniLM-L6-v2 (the workers' default model)
F = dict(categories=["c"], importance=0.5)
LG_NS = ("users", "u0")
LG_TEXT = "the launch code of user zero is 7777 alpha"


@pytest.fixture(scope="module")
def embedder():
    return LocalEmbedder()


@pytest.fixture
def plan_llm(monkeypatch):
    """Workers in this process use the scripted consolidation LLM (plan: delete the
    first record shown)."""
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, "memworker.crewai.testing:scripted_memory_config")
    monkeypatch.setenv(SCRIPT_PLAN_ENV, "delete")
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    yield
    crewai_config.reset_worker_memory_config()


@pytest.fixture
def both(server, namespace, plan_llm, embedder):
    """A worker, and a factory of a QueuedMemory and a QueuedStore on ONE namespace
    (what the defaults give: both on ``memworker``)."""
    settings = Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )
    made: list = []
    with worker_mod.running_worker(
        settings, threads=2, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=1
    ):

        def memory(**kwargs):
            kwargs.setdefault("consolidation_threshold", 1.0)
            m = QueuedMemory(
                storage=ValkeyStore(settings), embedder=embedder, llm=StandInLLM(),
                drain_timeout=60, **kwargs,
            )  # fmt: skip
            made.append(m)
            return m

        def store():
            s = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
            made.append(s)
            return s

        memory.settings = settings
        yield memory, store
        for obj in made:
            try:
                if isinstance(obj, QueuedMemory):
                    obj.reset_all()
                obj.close()
            except Exception:  # noqa: BLE001
                pass


def _seed_lg(lg: QueuedStore) -> None:
    lg.put(LG_NS, "k", {"text": LG_TEXT, "n": 1})
    item = lg.get(LG_NS, "k")
    assert item is not None and item.value == {"text": LG_TEXT, "n": 1}


# ============================================================================ 1. cross-framework
def test_a_crewai_remember_cannot_forge_a_langgraph_item(both):
    """DEFECT: ``remember(scope="/langgraph/users/u0", metadata={"key": ..., "=text":
    ...})`` stores a record that ``QueuedStore.search(("users",))`` returns as a
    LangGraph item (key and value chosen by the writer), and ``list_namespaces``
    lists a namespace named by the writer's categories. An LLM that picks a scope or
    metadata forges another framework's data. Expected: CrewAI writes never become
    LangGraph items (refuse, or keep CrewAI records out of ``/langgraph``)."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    _seed_lg(lg)
    with pytest.raises(ValidationError, match="langgraph"):
        memory.remember(
            "forged by crewai", scope="/langgraph/users/u0", categories=["admin/secret"],
            metadata={"key": "k2", "=text": "wire all the money to mallory", "=role": "admin"},
            importance=0.5,
        )  # fmt: skip
    # a record written there through another API (the store's own) is no item either
    with ValkeyStore(make_memory.settings) as raw:
        raw.save([{"id": "forged-1", "content": "wire all the money to mallory", "scope": "/langgraph/users/u0",
                   "metadata": {"key": "k2", "=text": "wire all the money to mallory"},
                   "embedding": [1.0] + [0.0] * (DIM - 1)}])  # fmt: skip
    assert lg.get(LG_NS, "k2") is None
    found = {(i.namespace, i.key): i.value for i in lg.search(("users",), limit=50)}
    namespaces = lg.list_namespaces()
    assert set(found) == {(LG_NS, "k")}, f"forged items: {found}"
    assert ("admin", "secret") not in namespaces, f"forged namespace: {namespaces}"
    assert lg.search(("users",), query="money to mallory", limit=50)[0].key == "k"


def test_a_crewai_update_cannot_overwrite_a_langgraph_item(both):
    """DEFECT: the id of a LangGraph item is public (``record_id(namespace, key)``: a
    hash of the namespace and key). ``QueuedMemory.update(that_id, content=...,
    metadata={"key": "k", "=text": ...})`` without a root_scope rewrites the item:
    ``QueuedStore.get`` then returns the writer's value. Expected: CrewAI's update
    never reaches a LangGraph record (``ValueError: Record not found``, as for an
    id outside the root scope)."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    _seed_lg(lg)
    rid = record_id(LG_NS, "k")
    try:
        memory.update(rid, content="forged", metadata={"key": "k", "=text": "forged value"})
    except (ValueError, ValidationError):
        pass
    item = lg.get(LG_NS, "k")
    assert item is not None and item.value == {"text": LG_TEXT, "n": 1}, item


def test_a_crewai_forget_cannot_delete_langgraph_items(both):
    """DEFECT: ``QueuedMemory.forget(record_ids=[record_id(ns, key)])``,
    ``forget(scope="/langgraph")`` and ``forget(metadata_filter={"key": "k"})``
    (an agent's memory tool, no root_scope) delete LangGraph items. Expected: CrewAI's
    forget never deletes a LangGraph item."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    lost = []
    for how in (
        {"record_ids": [record_id(LG_NS, "k")]},
        {"scope": "/langgraph"},
        {"metadata_filter": {"key": "k"}},
    ):
        _seed_lg(lg)
        memory.forget(**how)
        if lg.get(LG_NS, "k") is None:
            lost.append(how)
    assert lost == [], f"LangGraph item deleted by QueuedMemory.forget({lost})"


def test_a_crewai_reset_of_its_own_memory_keeps_langgraph_items(both):
    """DEFECT: ``QueuedMemory.reset()`` with the default ``root_scope`` (None) deletes
    every record of the namespace, the LangGraph store's included (it is shared by
    default). Expected: a CrewAI reset leaves LangGraph's items (``reset_all`` is
    documented as the namespace-wide wipe)."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    _seed_lg(lg)
    memory.remember("a crewai fact", scope="/crew", **F)
    memory.reset()
    assert memory.list_records() == []
    assert lg.get(LG_NS, "k") is not None, "QueuedMemory.reset() deleted a LangGraph item"


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_a_crewai_recall_never_returns_langgraph_items(both, depth):
    """DEFECT: ``QueuedMemory.recall(query)`` without a root_scope searches the whole
    namespace, ``/langgraph`` included: a LangGraph item's indexed text (its record's
    content) comes back as a CrewAI memory, to any agent of any crew. Expected: no
    LangGraph item in a CrewAI recall (and ``list_records``/``tree`` do not show them)."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    _seed_lg(lg)
    memory.remember("the launch code of the crew is 1234", scope="/crew", **F)
    hits = memory.recall("launch code of user zero", limit=10, depth=depth)
    leaked = [m.record.content for m in hits if m.record.scope.startswith("/langgraph")]
    listed = [r.content for r in memory.list_records() if r.scope.startswith("/langgraph")]
    assert leaked == [] and listed == [], f"recall: {leaked}, list_records: {listed}"


def test_crewai_counters_and_the_recall_prompt_leave_langgraph_items_out(both):
    """``info``, ``tree``, ``list_scopes`` and ``list_categories`` of a QueuedMemory
    sharing the namespace read the scope counters, which count LangGraph's items too:
    a crew's ``info()`` showed a ``/langgraph`` child, its items' namespace labels as
    categories, a LangGraph item as the newest record, and its count; the recall's
    query analysis put the same in its LLM prompt. Expected: the figures of the crew's
    own memories alone (what a namespace without the LangGraph store gives)."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    lg.put(("early", "bird"), "k", {"text": "put before the crew's memories"})
    lg.get(("early", "bird"), "k")  # drained: committed before the crew's memories
    memory.remember("crew fact one", scope="/crew", categories=["c"], importance=0.5)
    memory.remember("crew fact two", scope="/crew/sub", categories=["c", "d"], importance=0.5)
    memory.drain_writes()
    own = memory.list_records()
    _seed_lg(lg)  # the newest record of the namespace is now a LangGraph item

    info = memory.info()
    assert info.record_count == 2, info
    assert info.child_scopes == ["/crew"], info
    assert info.categories == ["c", "d"], info
    assert (info.oldest_record, info.newest_record) == (
        min(r.created_at for r in own), max(r.created_at for r in own)
    ), info
    assert memory.list_scopes() == ["/crew"]
    assert memory.list_categories() == {"c": 2, "d": 1}
    assert memory.tree() == "/ (2 records)\n  /crew (2 records)\n    /crew/sub (1 records)"
    assert memory.tree(max_depth=1) == "/ (2 records)\n  /crew (2 records)"
    for path in ("/langgraph", "/langgraph/users"):
        assert memory.info(path).record_count == 0
        assert memory.list_scopes(path) == [] and memory.list_categories(path) == {}
        assert memory.tree(path) == f"{path} (0 records)"
    # a scoped view (CrewAI's MemoryScope) goes through the same calls
    assert memory.scope("/").info().record_count == 2
    # the recall's query analysis (CrewAI's RecallFlow reads these for its LLM prompt)
    for include_private in (True, False):
        view = PrivacyView(memory.store, include_private, None, "/")
        assert view.list_scopes("/") == ["/", "/crew"]
        seen = view.get_scope_info("/")
        assert "/langgraph" not in seen.child_scopes and "users" not in seen.categories, seen
    assert lg.get(LG_NS, "k") is not None  # the items are there, only left out


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_a_crewai_recall_is_not_shortened_by_nearer_langgraph_items(both, depth):
    """A recall's ``limit`` memories come back when that many CrewAI memories match,
    however many LangGraph items of the shared namespace are nearer to the query.
    Found: the items were dropped after the store's top k, so a recall of 3 returned
    none while 3 crew memories matched (the LangGraph items filled the top k)."""
    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    for i in range(12):
        lg.put(LG_NS, f"k{i}", {"text": f"the launch code of user zero is 77{i:02d} alpha"})
    assert lg.get(LG_NS, "k11") is not None
    crew = ["the crew's lunch order is soup", "the crew meets on mondays", "the crew's budget is small"]
    for text in crew:
        memory.remember(text, scope="/crew", **F)
    hits = memory.recall("launch code of user zero", limit=3, depth=depth)
    assert sorted(m.record.content for m in hits) == sorted(crew)


@pytest.mark.parametrize("scope", [None, "/langgraph/users/u0"])
def test_a_crewai_consolidation_never_deletes_a_langgraph_item(both, scope):
    """DEFECT: consolidation in the worker (CrewAI's EncodingFlow over
    ``_FlowStorage``) searches for similar records under ``flow._boundary``: ``/``
    (the whole namespace) for a memory without root_scope whose scope is inferred
    (``scope=None``, the default), or the scope the caller or LLM chose. The
    LangGraph item is then shown to the worker's LLM, and the LLM's "delete" (or
    "update") of it is carried out: ``QueuedStore.get`` returns None. Expected:
    consolidation never shows, merges, updates or deletes a LangGraph record."""
    make_memory, make_store = both
    memory, lg = make_memory(consolidation_threshold=0.1), make_store()
    _seed_lg(lg)
    if scope is None:
        memory.remember("the launch code of user zero is 7777 alpha now", scope=scope, **F)
    else:  # refused before anything is enqueued
        with pytest.raises(ValidationError, match="langgraph"):
            memory.remember("the launch code of user zero is 7777 alpha now", scope=scope, **F)
    assert lg.get(LG_NS, "k") is not None, "consolidation deleted the LangGraph item"


def test_langgraph_puts_never_reach_crewai_records_outside_langgraph(both):
    """Reverse direction: every LangGraph namespace, whatever its labels (``/``,
    ``%2F``, a backslash; LangGraph refuses ``.`` and a
    ``langgraph`` root label), stays under ``/langgraph``: a CrewAI recall scoped to its own
    scope never sees LangGraph data, and a LangGraph search never returns a CrewAI
    record stored outside ``/langgraph``."""
    make_memory, make_store = both
    memory, lg = make_memory(root_scope="/crew"), make_store()
    memory.remember("the crew secret is swordfish", scope="/", **F)
    for ns in (("crew",), ("/crew",), ("%2Fcrew",), ("\\crew",)):
        lg.put(ns, "k", {"text": "the crew secret is swordfish, langgraph copy"})
    lg.get(("crew",), "k")  # drains
    assert [m.record.content for m in memory.recall("crew secret", depth="shallow")] == [
        "the crew secret is swordfish"
    ]
    items = lg.search((), limit=50)
    assert all(i.value.get("text", "").endswith("langgraph copy") for i in items)
    assert len(items) == 4


# ============================================================================ 2. root_scope
HOSTILE_SCOPES = ["..", "/../b", "/..", "../../b", "//b", "b/", "./b", "/./../b", "\u2215b", "\uff0fb",
                  "/\u2044b", "a" * 40 + "/" + "..", "%2F..%2Fb", "\\..\\b"]  # fmt: skip


@pytest.mark.parametrize("scope", HOSTILE_SCOPES)
def test_hostile_scopes_stay_inside_the_root_scope(both, scope):
    """Scope strings that would escape in a file system (``..``, ``/../b``, look-alike
    slashes, percent-encoded slashes, backslashes): every call of a memory with
    ``root_scope="/t/a"`` stays under ``/t/a`` (a record of the sibling tenant
    ``/t/b`` and of ``/t/ab`` is never written, read, listed, deleted or reset)."""
    make_memory, _ = both
    tenant_b = make_memory(root_scope="/t/b")
    tenant_ab = make_memory(root_scope="/t/ab")
    b = tenant_b.remember("tenant b secret kiwi", **F)
    ab = tenant_ab.remember("tenant ab secret kiwi", **F)
    a = make_memory(root_scope="/t/a")
    try:
        rec = a.remember("tenant a note kiwi", scope=scope, **F)
    except ValidationError:
        rec = None
    if rec is not None:
        assert rec.scope == "/t/a" or rec.scope.startswith("/t/a/"), rec.scope
    calls = [
        lambda: a.recall("secret kiwi", scope=scope, depth="shallow"),
        lambda: a.recall("secret kiwi", scope=scope, depth="deep"),
        lambda: a.list_records(scope=scope),
        lambda: a.list_scopes(scope),
        lambda: a.list_categories(scope),
        lambda: a.info(scope),
        lambda: a.tree(scope),
        lambda: a.forget(scope=scope),
        lambda: a.forget(scope=scope, record_ids=[b.id, ab.id]),
        lambda: a.reset(scope=scope),
    ]
    seen: list = []
    for call in calls:
        try:
            seen.append(call())
        except ValidationError:
            seen.append(None)
    text = repr(seen)
    assert "tenant b" not in text and "tenant ab" not in text and "/t/b" not in text, text
    store = tenant_b.store
    assert store.get_record(b.id) is not None and store.get_record(ab.id) is not None


@pytest.mark.parametrize(
    "scope", ["/x\x00/../../b", "\x00", "a" * 2000, "/" + "/".join(["d"] * 40), "/x\ud800"]
)
def test_refused_scopes_write_nothing_and_are_validation_errors(both, scope):
    """NUL, too long, too deep, lone surrogate: ``remember`` refuses with a
    ValidationError and nothing is stored; reads refuse or stay inside the root."""
    make_memory, _ = both
    b = make_memory(root_scope="/t/b")
    kept = b.remember("tenant b secret", **F)
    a = make_memory(root_scope="/t/a")
    with pytest.raises(ValidationError):
        a.remember("tenant a note", scope=scope, **F)
    for call in (lambda: a.forget(scope=scope), lambda: a.list_records(scope=scope),
                 lambda: a.recall("secret", scope=scope, depth="shallow")):  # fmt: skip
        try:
            out = call()
        except (ValidationError, ValueError):
            continue
        assert "tenant b" not in repr(out)
    assert b.store.count("/t/a") == 0 and b.store.get_record(kept.id) is not None


def test_forget_by_ids_with_a_root_scope_deletes_only_inside_it(both):
    """``forget(record_ids=[another tenant's id])`` on a memory with a root_scope
    deletes nothing outside the root (the ids are ANDed with the root scope)."""
    make_memory, _ = both
    b = make_memory(root_scope="/t/b").remember("tenant b secret", **F)
    a = make_memory(root_scope="/t/a")
    mine = a.remember("tenant a note", **F)
    assert a.forget(record_ids=[b.id, mine.id]) == 1
    assert a.store.get_record(b.id) is not None and a.store.get_record(mine.id) is None


def test_a_root_scope_memory_does_not_see_a_prefix_sibling_tenant(both):
    """``root_scope="/t/a"`` never sees ``/t/ab`` or ``/t/a-b`` records (component
    prefixes, not string prefixes), in recall, list_records, info, tree, forget."""
    make_memory, _ = both
    others = [make_memory(root_scope=r).remember(f"{r} secret kiwi", **F) for r in ("/t/ab", "/t/a-b")]
    a = make_memory(root_scope="/t/a")
    a.remember("tenant a kiwi", **F)
    out = [
        a.recall("secret kiwi", depth="shallow"), a.recall("secret kiwi"), a.list_records(),
        a.info(), a.tree(), a.list_scopes(), a.list_categories(),
    ]  # fmt: skip
    assert "/t/ab" not in repr(out) and "/t/a-b" not in repr(out)
    a.forget()
    a.reset()
    assert all(a.store.get_record(r.id) is not None for r in others)


# ============================================================================ 3. metadata keys
def test_crewai_metadata_with_langgraph_bookkeeping_keys_outside_langgraph_is_plain_metadata(both):
    """``key``, ``ttl`` and ``=field`` keys in CrewAI metadata (outside ``/langgraph``)
    are stored and returned as given; a ``ttl`` key gives no expiry (the record is
    never swept or hidden), ``=n`` numbers are just metadata."""
    make_memory, _ = both
    m = make_memory(root_scope="/crew")
    meta = {"key": "k", "ttl": 0.0001, "=n": 5, "=": 1, "exp": 1, "ver": 1, "vis": "pub"}
    rec = m.remember("metadata collision", scope="/", metadata=meta, **F)
    got = m.store.get_record(rec.id)
    assert got.metadata == meta
    assert m.store.expiries([rec.id]) == [None]
    assert [r.id for r in m.list_records()] == [rec.id]


def test_forget_by_metadata_filter_on_bookkeeping_keys_stays_in_the_root(both):
    """``forget(metadata_filter={"key": "k"})`` on a memory with a root_scope deletes
    only its own records carrying it (not LangGraph items of that key)."""
    make_memory, make_store = both
    lg = make_store()
    _seed_lg(lg)
    m = make_memory(root_scope="/crew")
    m.remember("mine", metadata={"key": "k"}, **F)
    assert m.forget(metadata_filter={"key": "k"}) == 1
    assert lg.get(LG_NS, "k") is not None


def test_a_crewai_record_under_langgraph_with_a_bad_ttl_does_not_break_langgraph_reads(both):
    """DEFECT: a CrewAI record under ``/langgraph`` whose metadata ``ttl`` is a number
    LangGraph does not expect (negative, huge, NaN is refused; ``1e308``) is read by
    ``QueuedStore.search`` as an item and its ``ttl`` refreshed on read
    (``_p_touch``: ``int(float(ttl) * 60_000)``): the whole search then raises
    (OverflowError / ValidationError), so one CrewAI write breaks every LangGraph
    search of the namespace prefix. Expected: the LangGraph search returns the real
    items (CrewAI records are not LangGraph items)."""
    make_memory, make_store = both
    lg = make_store()
    _seed_lg(lg)
    m = make_memory()
    with pytest.raises(ValidationError, match="langgraph"):
        m.remember("poison", scope="/langgraph/users/u1", metadata={"key": "p", "ttl": 1e308}, **F)
    with ValkeyStore(make_memory.settings) as raw:  # written through the store itself
        raw.save([{"id": "poison-1", "content": "poison", "scope": "/langgraph/users/u1",
                   "metadata": {"key": "p", "ttl": 1e308}, "embedding": None}])  # fmt: skip
    items = lg.search(("users",), limit=10)
    assert [(i.namespace, i.key) for i in items] == [(LG_NS, "k")]


def test_a_scope_the_worker_infers_under_langgraph_fails_the_job_and_writes_nothing(both):
    """The worker's field inference (CrewAI's EncodingFlow; the scripted LLM infers
    ``/<first word>``) lands a memory under ``/langgraph``: the job fails, reported to
    ``remember`` (``JobFailedError`` naming the scope), and nothing is written there."""
    from memworker.errors import JobFailedError

    make_memory, make_store = both
    memory, lg = make_memory(), make_store()
    _seed_lg(lg)
    with pytest.raises(JobFailedError, match="langgraph"):
        memory.remember("langgraph is where this text would land")
    with ValkeyStore(make_memory.settings) as raw:
        under = raw.list_records("/langgraph", limit=50)
    assert [r.id for r in under] == [record_id(LG_NS, "k")]


def test_a_reset_with_no_langgraph_item_is_crewais_whole_reset(both):
    """Without LangGraph items to keep, ``QueuedMemory.reset()`` is CrewAI's reset of
    the whole namespace as before: every record gone and the vector dimension
    forgotten (a memory re-made with another embedder may then write)."""
    make_memory, _ = both
    memory = make_memory()
    memory.remember("a crewai fact", scope="/crew", **F)
    memory.reset()
    with ValkeyStore(make_memory.settings) as raw:
        assert raw.count() == 0
        raw.save([{"id": "small", "content": "x", "scope": "/s", "embedding": [1.0, 0.0, 0.0, 0.0]}])
        assert raw.get_record("small") is not None
