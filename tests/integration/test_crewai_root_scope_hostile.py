"""Hostile review of ``QueuedMemory(root_scope=...)`` confinement across every method
(a review of 2026-12-06), on real servers and real in-process workers.

test_crewai_tenancy_hostile.py (hostile scope strings through recall, list_*, info,
tree, forget, reset; prefix siblings; forget by ids) and test_crewai_recall_scope.py
(deep recall's suggested scopes, update by another tenant's id) already cover much;
this file adds what they do not: arguments that are not strings, retention policies
(set and cleared), counts (``info``/``list_categories``, which show no scope text),
``remember_many``, consolidation under hostile scopes, CrewAI's ``scope()``/``slice()``
views, and forget by category/metadata/age.

Defect proven (6 of 30 failed before its fix, session 31): with a root_scope, a scope or
path that is not a string (5, b"/tenant-b", ["/tenant-b"]) crashed ten methods with
CrewAI's AttributeError/TypeError (its join_scope_paths strips it) instead of memworker's
ValidationError naming the field. No string reached another tenant.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

pytest.importorskip("crewai")
pytest.importorskip("langgraph.store.base")

from test_crewai_tenancy_hostile import DIM, both, embedder, plan_llm  # noqa: E402,F401

from memworker.errors import ValidationError  # noqa: E402
from memworker.records import utcnow  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

A, B, AB = "/tenant-a", "/tenant-b", "/tenant-ab"
HOSTILE = ["..", "/../tenant-b", "tenant-b", "/tenant-a/../tenant-b", "//tenant-b", "/tenant-a/./x",
           "/", "tenant-b/", "\\..\\tenant-b", "\uff0ftenant-b", "\u2215tenant-b", "/tenant-ab",
           "../" * 100 + "tenant-b"]  # fmt: skip
NOT_STRINGS = [5, b"/tenant-b", ["/tenant-b"]]


def _inside(scope: str, root: str = A) -> bool:
    return scope == root or scope.startswith(root + "/")


def _seed_others(make_memory, text: str = "the vault code is 4242 kiwi", cat: str = "b-cat"):
    """Records of tenant B, of the prefix sibling /tenant-ab, and of a memory with no
    root (at / and /other); returns them."""
    out = [
        make_memory(root_scope=B).remember(text + " (tenant b)", categories=[cat], importance=0.5),
        make_memory(root_scope=AB).remember(text + " (tenant ab)", categories=[cat], importance=0.5),
    ]
    free = make_memory()
    out += [free.remember(text + " (no root)", scope=s, categories=[cat], importance=0.5) for s in ("/", "/other")]
    return out


def _intact(store: ValkeyStore, records) -> None:
    for r in records:
        got = store.get_record(r.id)
        assert got is not None, f"{r.scope} record deleted"
        assert (got.content, got.scope, got.categories) == (r.content, r.scope, r.categories), got


# ============================================================================ wrong types
@pytest.mark.parametrize("value", NOT_STRINGS, ids=["int", "bytes", "list"])
def test_a_scope_or_path_that_is_not_a_string_is_a_validation_error_naming_it(both, value):
    """Without a root_scope the store refuses a non-string scope with a ValidationError
    naming it; with one, every method must do the same (never AttributeError /
    TypeError from joining it under the root), and nothing outside the root moves."""
    make_memory, _ = both
    others = _seed_others(make_memory)
    a = make_memory(root_scope=A)
    mine = a.remember("tenant a note", scope="/notes", categories=["a-cat"], importance=0.5)
    calls = {
        "remember": lambda: a.remember("x", scope=value, categories=["c"], importance=0.5),
        "recall shallow": lambda: a.recall("vault code", scope=value, depth="shallow"),
        "recall deep": lambda: a.recall("vault code", scope=value, depth="deep"),
        "list_records": lambda: a.list_records(scope=value),
        "list_scopes": lambda: a.list_scopes(value),
        "list_categories": lambda: a.list_categories(value),
        "info": lambda: a.info(value),
        "tree": lambda: a.tree(value),
        "forget": lambda: a.forget(scope=value),
        "reset": lambda: a.reset(scope=value),
        "update scope": lambda: a.update(mine.id, scope=value),
        "set_retention": lambda: a.set_retention(value, 30),
    }
    wrong: dict[str, str] = {}
    for name, call in calls.items():
        try:
            out = call()
        except ValidationError as exc:
            if not any(w in str(exc) for w in ("scope", "path")):
                wrong[name] = f"ValidationError not naming the field: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001
            wrong[name] = f"{type(exc).__name__}: {exc}"
            continue
        wrong[name] = f"accepted: {out!r}"[:200]
    assert wrong == {}, "\n".join(f"{k}: {v}" for k, v in wrong.items())
    _intact(a.store, others)
    assert a.store.get_record(mine.id).scope == "/tenant-a/notes"


@pytest.mark.parametrize("value", [None, 5, b"x", ["x"]], ids=["none", "int", "bytes", "list"])
def test_update_with_a_record_id_that_is_not_a_string_is_refused_cleanly(both, value):
    """``update(record_id=<not a string>)``: a ValidationError naming record_id or
    CrewAI's "Record not found" ValueError, never a crash of another type."""
    make_memory, _ = both
    a = make_memory(root_scope=A)
    a.remember("tenant a note", categories=["c"], importance=0.5)
    with pytest.raises(ValueError, match="record_id|Record not found"):
        a.update(value, content="x")


# ============================================================================ retention
def _old(store: ValkeyStore, scopes: list[str]) -> list[str]:
    old = utcnow() - timedelta(days=40)
    ids = [f"old{i}" for i in range(len(scopes))]
    store.save([{"id": i, "content": f"old record in {s}", "scope": s, "created_at": old,
                 "embedding": [1.0] + [0.0] * (DIM - 1)} for i, s in zip(ids, scopes)])  # fmt: skip
    return ids


def test_retention_set_through_a_root_scope_never_reaches_another_tenant(both):
    """Every hostile scope given to ``set_retention`` (and to ``retention=``) is a
    policy under /tenant-a or a ValidationError naming "retention scope"; a sweep then
    deletes tenant A's old records only (never /tenant-b, /tenant-ab, / or /other)."""
    make_memory, _ = both
    with ValkeyStore(make_memory.settings) as raw:
        outside = ["/tenant-b", "/tenant-b/x", "/tenant-ab", "/", "/other", "/tenant-a-b"]
        inside = ["/tenant-a", "/tenant-a/tenant-b", "/tenant-a/.."]
        ids = _old(raw, outside + inside)
        a = make_memory(root_scope=A)
        for s in HOSTILE + [None, 5]:
            try:
                a.set_retention(s, 1)
            except ValidationError as exc:
                assert "retention scope" in str(exc), exc
        with pytest.raises(ValueError, match="retention"):
            make_memory(root_scope=A, retention={"/../tenant-b": 1, "\uff0ftenant-b": 1, "..": 1, "//b": 1})
        make_memory(root_scope=A, retention={"/../tenant-b": 1, "\uff0ftenant-b": 1, "..": 1})
        policies = raw.retention()
        assert policies and all(_inside(p) for p in policies), policies
        for _ in range(3):
            raw.sweep(limit=1000)
        left = {i for i in ids if raw.get_record(i) is not None}
        assert left == set(ids[: len(outside)]), sorted(set(ids) ^ left)


def test_retention_cleared_through_a_root_scope_keeps_other_tenants_policies(both):
    """``set_retention(<hostile scope>, None)`` on tenant A never removes tenant B's
    (or a root-less memory's) policy, nor changes its days."""
    make_memory, _ = both
    make_memory(root_scope=B).set_retention("/", 30)
    make_memory(root_scope=AB).set_retention("/", 31)
    make_memory().set_retention("/", 90)
    a = make_memory(root_scope=A)
    a.set_retention("/", 7)
    for s in HOSTILE:
        try:
            a.set_retention(s, None)
        except ValidationError as exc:
            assert "retention scope" in str(exc), exc
        try:
            a.set_retention(s, 0.5)
        except ValidationError as exc:
            assert "retention scope" in str(exc), exc
    policies = a.store.retention()
    assert {k: v for k, v in policies.items() if not _inside(k)} == {B: 30.0, AB: 31.0, "/": 90.0}, policies


# ============================================================================ counts
def test_counts_and_categories_never_include_other_tenants(both):
    """``info``, ``list_categories``, ``tree`` and ``list_scopes`` give tenant A's own
    counts under every hostile path (a count or a category shows no scope text: the
    string checks of the tenancy review would not see it leak)."""
    make_memory, _ = both
    _seed_others(make_memory)
    a = make_memory(root_scope=A)
    a.remember("tenant a note", scope="/notes", categories=["a-cat"], importance=0.5)
    a.remember("tenant a root note", categories=["a-cat"], importance=0.5)
    bad: list = []
    for path in [None] + HOSTILE:
        try:
            info = a.info(path)
            cats = a.list_categories(path)
            tree = a.tree(path)
            scopes = a.list_scopes(path)
            records = a.list_records(path)
        except ValidationError:
            continue
        if info.record_count > 2 or set(info.categories) - {"a-cat"} or set(cats) - {"a-cat"} \
                or sum(cats.values()) > 2 or any(not _inside(s) for s in scopes + info.child_scopes) \
                or any(not _inside(r.scope) for r in records) or "b-cat" in tree:  # fmt: skip
            bad.append((path, info.record_count, info.categories, cats, scopes, tree))
    assert bad == [], bad


# ============================================================================ writes
def test_remember_many_with_hostile_scopes_lands_inside_the_root(both):
    """``remember_many(scope=<hostile>)`` (enqueued in the caller's thread) writes under
    /tenant-a or nothing; nothing appears under /tenant-b, /tenant-ab or elsewhere."""
    make_memory, _ = both
    a = make_memory(root_scope=A, background_enqueue=False)
    for s in HOSTILE:
        a.remember_many([f"tenant a batch note {s!r} one", f"tenant a batch note {s!r} two"],
                        scope=s, categories=["c"], importance=0.5)  # fmt: skip
    a.drain_writes()
    with ValkeyStore(make_memory.settings) as raw:
        every = raw.list_records(limit=1000)
    assert every, "nothing written"
    assert [r.scope for r in every if not _inside(r.scope)] == []


def test_consolidation_under_hostile_scopes_never_touches_another_tenant(both):
    """A remember with consolidation on (the scripted worker LLM deletes the first
    similar record it is shown) under hostile scopes, and with the scope inferred,
    never deletes or rewrites another tenant's near-identical record."""
    make_memory, _ = both
    others = _seed_others(make_memory, text="tenant the vault code is 4242 kiwi")
    a = make_memory(root_scope=A, consolidation_threshold=0.1)
    for s in ["..", "/../tenant-b", "tenant-b", "//tenant-b", "/tenant-ab", "\uff0ftenant-b", None]:
        try:
            rec = a.remember("tenant the vault code is 4242 kiwi", scope=s, categories=["b-cat"], importance=0.5)
        except ValidationError:
            continue
        assert rec is None or _inside(rec.scope), rec
    _intact(a.store, others)


def test_forget_by_category_metadata_or_age_stays_inside_the_root(both):
    """``forget(categories=..., metadata_filter=..., older_than=...)`` (no scope:
    the root) and ``reset()`` delete tenant A's matching records only."""
    make_memory, _ = both
    b = make_memory(root_scope=B)
    ab = make_memory(root_scope=AB)
    others = [m.remember("shared", categories=["x"], metadata={"k": "v"}, importance=0.5) for m in (b, ab)]
    others.append(make_memory().remember("shared", scope="/", categories=["x"], metadata={"k": "v"},
                                         importance=0.5))  # fmt: skip
    a = make_memory(root_scope=A)
    for how in ({"categories": ["x"]}, {"metadata_filter": {"k": "v"}},
                {"older_than": utcnow() + timedelta(days=1)}, {"record_ids": [r.id for r in others]}):  # fmt: skip
        mine = a.remember("mine", categories=["x"], metadata={"k": "v"}, importance=0.5)
        if "record_ids" in how:
            how = {"record_ids": how["record_ids"] + [mine.id]}
        assert a.forget(**how) == 1, how
        assert a.store.get_record(mine.id) is None
    a.reset()
    _intact(a.store, others)


# ============================================================================ views
def test_crewai_scope_and_slice_views_of_a_root_memory_stay_inside_it(both):
    """CrewAI's ``memory.scope(path)`` and ``memory.slice(scopes)`` (their paths given
    as the caller likes: ``/tenant-b``, ``/``, ``..``) go through the root-scoped
    methods: nothing of another tenant is read, counted, written or deleted."""
    make_memory, _ = both
    others = _seed_others(make_memory)
    a = make_memory(root_scope=A)
    a.remember("tenant a kiwi", categories=["a-cat"], importance=0.5)
    seen = []
    for root in (B, "/", "..", "/../tenant-b"):
        view = a.scope(root)
        seen += [view.recall("vault code kiwi", depth="shallow"), view.list_scopes(), view.info(),
                 view.list_categories(), view.tree()]  # fmt: skip
        rec = view.remember("written through a view", categories=["c"], importance=0.5)
        assert _inside(rec.scope), rec.scope
        view.forget()
        view.reset()
    sl = a.slice([B, "/", AB, "/../tenant-b"])
    seen += [sl.recall("vault code kiwi", depth="shallow"), sl.recall("vault code kiwi"), sl.info(),
             sl.list_categories(), sl.list_scopes()]  # fmt: skip
    text = repr(seen)
    assert "tenant b" not in text and "tenant ab" not in text and "no root" not in text and "b-cat" not in text, text
    _intact(a.store, others)


def test_update_with_hostile_scopes_keeps_the_record_inside_the_root(both):
    """``update(own_id, scope=<hostile>)`` moves tenant A's record under /tenant-a (or
    is refused as a ValidationError), never to /tenant-b, /tenant-ab or /."""
    make_memory, _ = both
    others = _seed_others(make_memory)
    a = make_memory(root_scope=A)
    mine = a.remember("tenant a note", categories=["a-cat"], importance=0.5)
    for s in HOSTILE:
        try:
            moved = a.update(mine.id, scope=s)
        except ValidationError:
            continue
        stored = a.store.get_record(mine.id)
        assert _inside(moved.scope) and _inside(stored.scope), (s, moved.scope, stored.scope)
    _intact(a.store, others)
