"""The indexed store answers the same on every server kind: a seeded differential fuzz.

One ValkeyStore per server kind (standalone without a module: the exact path;
standalone with RediSearch; a cluster without a module; a cluster with RediSearch),
all in one namespace name, gets the same seeded sequence of writes: saves of new and
existing ids with hostile nested scopes, categories, metadata of mixed types (and a
``=`` range key), importance, source and private; updates that move scope, change
categories, metadata, privacy or the embedding (kept with ``None``, removed with
``[]``); deletes by ids, scope, categories, metadata, age and combinations; resets of
a scope and of the whole namespace. After every few operations every read of the
README's API tour is compared with a plain-Python model of the documented semantics
(README "Semantics worth knowing", docs/guarantees.md section 4): ``search`` with
random combinations of every documented filter, ``list_records`` pages (newest first),
``count``, ``get_scope_info``, ``list_scopes``, ``list_categories``,
``visible_categories`` / ``visible_scopes``, ``get_records`` / ``get_record``, and the
delete counts. A problem names the kind that differs from the model.

Vectors are random float32 normals (distinct scores; the module's KNN cuts ties its
own way, docs/guarantees.md section 4); all namespaces are float32 so every kind scores
the same bytes. Records' ``created_at`` values repeat now and then: ``list_records``
then orders them as the scope's sorted set does (same score: the larger id first, as
ZREVRANGE); the model sorts that way.

The other fuzzes compare, per kind, the exact and module paths and the side-index keys
(``test_store_index_fuzz.py``, ``test_search_differential_hostile.py``); this one
compares the read API across all four kinds over one history with moves and resets.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from memworker import ValkeyStore
from memworker.records import record_types
from test_search_differential_hostile import in_scope, oracle, tie_equivalent

MemoryRecord = record_types()[0]

KINDS = ("plain", "module", "cluster_plain", "cluster_module")
DIM = 8
T0 = datetime(2024, 3, 1, 12, 0, 0)

SCOPES = [
    "/", "/a", "/a/b", "/a/b/c", "/ab", "/a b", "/a{x}", "/a{x}/y", "/a|b", "/a*",
    "/日本", "/日本/é", '/a"b', "/a:b", "/a\\", "/-a/@b", "/a/{}|@*-\\,.:\"'",
    "/d/l1/l2/l3/l4/l5/l6/l7/l8/l9", "/d/l1/l2",
]  # fmt: skip
READ_SCOPES = SCOPES + ["/d", "/d/l1", "/nope", "/a/b/c/deeper", "/日"]
CATS = ["x", "X", "x|y", "{x}", "*", "-x", "é", "a b", "\\", "c,d", "@cat_t:{x}"]
SOURCES = [None, "s1", "S1", "s|1", "{s1}", "日"]
META_KEYS = ["k", "K", "k|x", "@meta_t", "n"]
META_VALUES: list[Any] = [
    1, 1.0, "1", True, False, 0, None, "x|y", "{x}", [1, 2.0], {"a": 1, "b": [None]},
    2**53, -1e-300, "", "日", 3.5,
]  # fmt: skip
RANGE_VALUES: list[Any] = [-1e300, -1.0, -0.0, 0, 0.5, 1, 2, 7.25, 1e300, 2**53]


# ============================================================================ model
def norm_scope(scope: str | None) -> str:
    if scope is None or scope.strip("/") == "":
        return "/"
    return "/" + scope.strip("/")


def f32(vec: Any) -> list[float] | None:
    """The embedding as stored in a float32 namespace (None: stored without one)."""
    if vec is None or len(vec) == 0:
        return None
    arr = np.asarray(vec, dtype=np.float32)
    if not np.any(arr):
        return None
    return [float(x) for x in arr]


def stored(rec: Any, keep_embedding: Any = None) -> Any:
    """The record the model holds for a save (or, with ``keep_embedding``, an update
    whose embedding is ``None``)."""
    emb = keep_embedding if rec.embedding is None and keep_embedding is not None else f32(rec.embedding)
    return rec.model_copy(update={"scope": norm_scope(rec.scope), "embedding": emb})


def key(rec: Any) -> tuple[Any, ...] | None:
    """Everything a read returns of a record, comparable."""
    if rec is None:
        return None
    emb = None if rec.embedding is None else tuple(round(float(x), 6) for x in rec.embedding)
    return (
        rec.id, rec.content, rec.scope, tuple(rec.categories), repr(rec.metadata),
        round(float(rec.importance), 9), rec.created_at, rec.last_accessed, rec.source,
        bool(rec.private), emb,
    )  # fmt: skip


def created_key(rec: Any) -> tuple[datetime, str]:
    return (rec.created_at, rec.id)


def model_page(model: dict[str, Any], scope: str | None, limit: int, offset: int) -> list[str]:
    s = norm_scope(scope)
    mine = sorted((r for r in model.values() if in_scope(r.scope, s)), key=created_key, reverse=True)
    return [r.id for r in mine[offset : offset + limit]]


def child_of(scope: str, parent: str) -> str:
    rest = scope[len(parent) :].lstrip("/") if parent != "/" else scope[1:]
    return ("" if parent == "/" else parent) + "/" + rest.split("/", 1)[0]


def model_children(recs: list[Any], parent: str) -> list[str]:
    return sorted({child_of(r.scope, parent) for r in recs if r.scope != parent})


def visible_to(rec: Any, viewer: str | None) -> bool:
    return not rec.private or (viewer is not None and rec.source == viewer)


# ============================================================================ data
class Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def vector(self) -> list[float]:
        return np.random.default_rng(self.rng.randrange(2**32)).normal(size=DIM).tolist()

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for k in self.rng.sample(META_KEYS, self.rng.randint(0, 3)):
            meta[k] = self.rng.choice(META_VALUES)
        if self.rng.random() < 0.5:
            meta["=n"] = self.rng.choice(RANGE_VALUES)
        if self.rng.random() < 0.1:
            meta["nested"] = {"deep": [1, {"x": "日|{}"}], "t": True}
        return meta

    def embedding(self) -> Any:
        roll = self.rng.random()
        if roll < 0.06:
            return None
        if roll < 0.09:
            return []
        if roll < 0.12:
            return [0.0] * DIM
        return self.vector()

    def created(self) -> datetime:
        # mostly distinct, sometimes equal to an earlier one (ties in list_records)
        if self.rng.random() < 0.15:
            return T0 + timedelta(minutes=self.rng.randint(0, 5))
        return T0 + timedelta(minutes=self.rng.randint(6, 10**6), microseconds=self.rng.randint(0, 999_999))

    def record(self, rid: str | None = None) -> Any:
        self.n += 1
        created = self.created()
        last = created if self.rng.random() < 0.5 else created + timedelta(seconds=self.rng.randint(1, 10**5))
        return MemoryRecord(
            id=rid or f"r{self.n:04d}",
            content=f"content {self.n} {self.rng.choice(['', '日本', '{x}|*', 'a b'])}",
            scope=self.rng.choice(SCOPES),
            categories=self.rng.sample(CATS, self.rng.randint(0, 3)),
            metadata=self.metadata(),
            importance=round(self.rng.random(), 3),
            created_at=created,
            last_accessed=last,
            embedding=self.embedding(),
            source=self.rng.choice(SOURCES),
            private=self.rng.random() < 0.3,
        )

    def filter(self) -> dict[str, Any]:
        rng = self.rng
        flt: dict[str, Any] = {}
        if rng.random() < 0.5:
            flt["scope_prefix"] = rng.choice(READ_SCOPES)
        if rng.random() < 0.2:
            flt["exclude_scope"] = rng.choice([s for s in READ_SCOPES if s != "/"])
        if rng.random() < 0.35:
            flt["categories"] = rng.sample(CATS + ["nope"], rng.randint(1, 3))
        if rng.random() < 0.3:
            flt["metadata_filter"] = {
                k: rng.choice(META_VALUES) for k in rng.sample(META_KEYS, rng.randint(1, 2))
            }
        if rng.random() < 0.3:
            a, b = rng.choice(RANGE_VALUES + [None]), rng.choice(RANGE_VALUES + [None])
            if a is not None and b is not None and a > b:
                a, b = b, a
            flt["metadata_ranges"] = {"=n": (a, rng.random() < 0.5, b, rng.random() < 0.5)}
        if rng.random() < 0.2:
            flt["source"] = rng.choice(SOURCES[1:])
        if rng.random() < 0.4:
            flt["include_private"] = False
            flt["viewer"] = rng.choice(SOURCES)
        return flt


# ============================================================================ fixture
@pytest.fixture
def kinds(request: pytest.FixtureRequest, namespace: str) -> Any:
    """Per server kind, in the same namespace name: a float32 store that writes
    (``kinds["plain"]`` ...) and a second store of its own that only reads
    (``kinds["plain/reader"]`` ...: its cached dimension, index and vector cache must
    follow the writer's changes, resets included)."""
    stores: dict[str, Any] = {}
    for kind in KINDS:
        server = request.getfixturevalue(f"{kind}_server")
        for name in (kind, f"{kind}/reader"):
            stores[name] = ValkeyStore(
                server.url, namespace=namespace, vector_type="float32",
                search_mode="module" if server.module else "exact",
            )  # fmt: skip
    assert [stores[k].search_module for k in KINDS] == [False, True, False, True]
    yield stores
    for store in stores.values():
        try:
            store.reset()
        except Exception:  # noqa: BLE001
            pass
        store.close()


def writers(stores: dict[str, Any]) -> dict[str, Any]:
    return {k: s for k, s in stores.items() if "/" not in k}


def readers(stores: dict[str, Any]) -> dict[str, Any]:
    return {k: s for k, s in stores.items() if "/" in k}


# ============================================================================ checking
class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, what: str, got: dict[str, Any], want: Any) -> None:
        """Record every kind whose answer differs from the model's."""
        wrong = {k: v for k, v in got.items() if v != want}
        if wrong:
            agree = sorted(k for k in got if k not in wrong)
            for k, v in wrong.items():
                self.items.append(f"{what}: {k} got {_short(v)}; model {_short(want)} (agree: {agree})")

    def __bool__(self) -> bool:
        return bool(self.items)

    def report(self) -> str:
        head = Counter(p.split(":", 1)[0] + " / " + p.split(" got ", 1)[0].rsplit(": ", 1)[-1] for p in self.items)
        return f"{len(self.items)} differences {dict(head)}\n" + "\n".join(self.items[:25])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 400 else text[:400] + "..."


#: Searches compared, and those whose model answer was not empty (the fuzz must find things).
SEARCHES: Counter[str] = Counter()


def every(stores: dict[str, Any], method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {k: getattr(s, method)(*args, **kwargs) for k, s in stores.items()}


def check_search(
    problems: Problems, stores: dict[str, Any], model: dict[str, Any], query: list[float],
    limit: int, min_score: float, flt: dict[str, Any], label: str,
) -> None:  # fmt: skip
    want = oracle(model, query, limit, min_score, flt)
    want_ids = [i for i, _ in want]
    SEARCHES["asked"] += 1
    SEARCHES["found"] += bool(want)
    for kind, store in stores.items():
        got = store.search(query, limit=limit, min_score=min_score, **flt)
        ids = [r.id for r, _ in got]
        if ids != want_ids and tie_equivalent(got, want, model, query, flt, min_score):
            continue  # only the order within scores equal to 1e-6
        what = f"search {label} limit={limit} min_score={min_score} {flt}"
        if ids != want_ids:
            problems.items.append(
                f"{what}: {kind} got ids {ids} scores {[round(s, 5) for _, s in got]}; "
                f"model {want_ids} scores {[round(s, 5) for _, s in want]}"
            )
            continue
        bad = [(i, round(s, 6), round(w, 6)) for (i, w), (_, s) in zip(want, got) if abs(s - w) > 1e-5]
        stale = [r.id for r, _ in got if key(r) != key(model[r.id])]
        if bad or stale:
            problems.items.append(f"{what}: {kind} scores {bad} stale {stale}")


def check_reads(
    problems: Problems, stores: dict[str, Any], model: dict[str, Any], gen: Gen, label: str
) -> None:
    recs = list(model.values())
    problems.check(f"count() {label}", every(stores, "count"), len(recs))
    for s in READ_SCOPES:
        mine = [r for r in recs if in_scope(r.scope, norm_scope(s))]
        problems.check(f"count({s!r}) {label}", every(stores, "count", s), len(mine))
        problems.check(f"list_scopes({s!r}) {label}", every(stores, "list_scopes", s), model_children(mine, norm_scope(s)))
        cats = dict(Counter(c for r in mine for c in dict.fromkeys(r.categories)))
        problems.check(f"list_categories({s!r}) {label}", every(stores, "list_categories", s), cats)
        info = {k: v.model_dump() for k, v in every(stores, "get_scope_info", s).items()}
        problems.check(
            f"get_scope_info({s!r}) {label}",
            info,
            {
                "path": norm_scope(s),
                "record_count": len(mine),
                "categories": sorted(cats),
                "oldest_record": min((r.created_at for r in mine), default=None),
                "newest_record": max((r.created_at for r in mine), default=None),
                "child_scopes": model_children(mine, norm_scope(s)),
            },
        )
        viewer = gen.rng.choice(SOURCES)
        seen = [r for r in mine if visible_to(r, viewer)]
        problems.check(
            f"visible_categories({s!r}, {viewer!r}) {label}",
            every(stores, "visible_categories", s, viewer),
            dict(Counter(c for r in seen for c in dict.fromkeys(r.categories))),
        )
        problems.check(
            f"visible_scopes({s!r}, {viewer!r}) {label}",
            every(stores, "visible_scopes", s, viewer),
            model_children(seen, norm_scope(s)),
        )
    for s in [None, "/", "/a", "/d", gen.rng.choice(SCOPES), gen.rng.choice(SCOPES)]:
        for limit, offset in [(200, 0), (7, 0), (7, 7), (5, gen.rng.randint(0, 40)), (1, 0), (3, 10**6)]:
            pages = {k: [key(r) for r in v] for k, v in every(stores, "list_records", s, limit, offset).items()}
            want = [key(model[i]) for i in model_page(model, s, limit, offset)]
            problems.check(f"list_records({s!r}, {limit}, {offset}) {label}", pages, want)
    ids = sorted(model)
    asked = gen.rng.sample(ids, min(len(ids), 30)) + ["missing", "r9999"]
    got = {k: [key(r) for r in v] for k, v in every(stores, "get_records", asked).items()}
    problems.check(f"get_records {label}", got, [key(model.get(i)) for i in asked])
    if ids:
        one = gen.rng.choice(ids)
        problems.check(f"get_record({one}) {label}", {k: key(v) for k, v in every(stores, "get_record", one).items()}, key(model[one]))
    for _ in range(14):
        flt = gen.filter()
        limit = gen.rng.choice([1, 3, 5, 10, 50, 500])
        min_score = gen.rng.choice([0.0, 0.0, -1.0, 0.1, 0.35, 0.6])
        check_search(problems, stores, model, gen.vector(), limit, min_score, flt, label)
    # a stored vector as the query: its own record first where the filter lets it
    with_vec = [r for r in recs if r.embedding is not None]
    if with_vec:
        r = gen.rng.choice(with_vec)
        check_search(problems, stores, model, list(r.embedding), 5, 0.0, {"scope_prefix": r.scope}, label)


# ============================================================================ operations
def apply_op(
    problems: Problems, stores: dict[str, Any], model: dict[str, Any], gen: Gen, step: int
) -> str:
    rng = gen.rng
    roll = rng.random()
    ids = sorted(model)
    if roll < 0.45 or len(ids) < 15:
        batch = [gen.record() for _ in range(rng.randint(1, 8))]
        if ids and rng.random() < 0.4:  # re-save an existing id: replaces it
            batch.append(gen.record(rid=rng.choice(ids)))
        for store in writers(stores).values():
            store.save(batch)
        for rec in batch:
            model[rec.id] = stored(rec)
        return "save"
    if roll < 0.68:
        rid = rng.choice(ids)
        old = model[rid]
        change: dict[str, Any] = {}
        if rng.random() < 0.6:
            change["scope"] = rng.choice(SCOPES)
        if rng.random() < 0.5:
            change["categories"] = rng.sample(CATS, rng.randint(0, 3))
        if rng.random() < 0.5:
            change["metadata"] = gen.metadata()
        if rng.random() < 0.3:
            change["private"] = not old.private
        if rng.random() < 0.2:
            change["source"] = rng.choice(SOURCES)
        if rng.random() < 0.3:
            change["importance"] = round(rng.random(), 3)
        e = rng.random()
        change["embedding"] = None if e < 0.6 else ([] if e < 0.7 else gen.vector())
        new = old.model_copy(update=change)
        for store in writers(stores).values():
            store.update(new)
        model[rid] = stored(new, keep_embedding=old.embedding)
        return "update"
    if roll < 0.9:
        kwargs: dict[str, Any] = {}
        how = rng.choice(["ids", "scope", "categories", "metadata", "older", "scope+cats", "ids+scope", "scope+older"])
        if "ids" in how:
            kwargs["record_ids"] = rng.sample(ids, min(len(ids), rng.randint(1, 4))) + ["missing"]
        if "scope" in how:
            kwargs["scope_prefix"] = rng.choice(READ_SCOPES[1:])
        if "cat" in how:
            kwargs["categories"] = rng.sample(CATS, rng.randint(1, 2))
        if "metadata" in how:
            kwargs["metadata_filter"] = {rng.choice(META_KEYS): rng.choice(META_VALUES)}
        if "older" in how:
            kwargs["older_than"] = T0 + timedelta(minutes=rng.randint(0, 10**5))
        doomed = [r.id for r in model.values() if deletes(r, kwargs)]
        problems.check(f"delete({kwargs}) step {step}", every(writers(stores), "delete", **kwargs), len(doomed))
        for i in doomed:
            del model[i]
        return "delete " + how
    if roll < 0.99:
        scope = rng.choice(SCOPES[1:])
        for store in writers(stores).values():
            store.reset(scope)
        for i in [r.id for r in model.values() if in_scope(r.scope, scope)]:
            del model[i]
        return f"reset {scope}"
    for store in writers(stores).values():
        store.reset()
    model.clear()
    return "reset all"


def deletes(rec: Any, kw: dict[str, Any]) -> bool:
    """Whether ``delete(**kw)`` removes ``rec`` (every criterion: ids, scope and
    below, any of the categories, all metadata pairs (JSON equality), created before)."""
    from test_search_differential_hostile import json_eq

    if "record_ids" in kw and rec.id not in kw["record_ids"]:
        return False
    if not in_scope(rec.scope, norm_scope(kw.get("scope_prefix"))):
        return False
    if kw.get("categories") and not set(kw["categories"]) & set(rec.categories):
        return False
    for k, v in (kw.get("metadata_filter") or {}).items():
        if k not in rec.metadata or not json_eq(rec.metadata[k], v):
            return False
    if "older_than" in kw and not rec.created_at < kw["older_than"]:
        return False
    return True


# ============================================================================ tests
@pytest.mark.parametrize("seed", [1, 2])
def test_random_history_reads_the_same_on_every_server_kind(kinds: dict[str, Any], seed: int) -> None:
    """Seeded writes applied to one store per kind; every read equals the model's on
    every kind (a difference names the kind that is off)."""
    gen = Gen(seed)
    model: dict[str, Any] = {}
    problems = Problems()
    done: list[str] = []
    SEARCHES.clear()
    largest = 0
    for step in range(120):
        done.append(apply_op(problems, kinds, model, gen, step))
        largest = max(largest, len(model))
        if step % 15 == 14:
            who = writers(kinds) if step % 30 == 14 else readers(kinds)
            check_reads(problems, who, model, gen, f"after step {step} ({done[-1]})")
    check_reads(problems, writers(kinds), model, gen, "at the end")
    check_reads(problems, readers(kinds), model, gen, "at the end (readers)")
    assert largest > 40, f"the history kept too few records to compare ({largest})"
    assert SEARCHES["found"] > SEARCHES["asked"] // 5, dict(SEARCHES)
    assert any(op.startswith("update") for op in done) and any(op.startswith("reset") for op in done)
    assert not problems, problems.report()


def test_module_vector_search_after_moves_and_resets_has_no_stale_hits(kinds: dict[str, Any]) -> None:
    """Records moved to another scope, re-categorized, made private, their embedding
    replaced or removed, reset with their scope, and re-saved under the same ids: a
    search on every kind (the module's HNSW index above all) finds them only where
    they are now, with their current vector."""
    gen = Gen(7)
    model: dict[str, Any] = {}
    problems = Problems()

    def both(label: str, query: list[float], **flt: Any) -> None:
        check_search(problems, kinds, model, query, 10, 0.0, flt, label)

    recs = [
        gen.record(rid=f"m{i:02d}").model_copy(
            update={"scope": "/p/q", "categories": ["old"], "private": False, "source": "s1",
                    "metadata": {"k": 1}, "embedding": gen.vector()}
        )  # fmt: skip
        for i in range(12)
    ]
    for store in writers(kinds).values():
        store.save(recs)
    model.update({r.id: stored(r) for r in recs})
    probe = list(recs[0].embedding)
    both("saved", probe, scope_prefix="/p")

    # move half to /moved, new categories and metadata, some private; replace 3 vectors
    for i, r in enumerate(recs[:6]):
        change = {"scope": "/moved/x", "categories": ["new"], "metadata": {"k": 2}, "private": i % 2 == 0}
        change["embedding"] = gen.vector() if i < 3 else None
        new = r.model_copy(update=change)
        for store in writers(kinds).values():
            store.update(new)
        model[r.id] = stored(new, keep_embedding=model[r.id].embedding)
    for label, flt in [
        ("old scope", {"scope_prefix": "/p"}),
        ("new scope", {"scope_prefix": "/moved"}),
        ("old category", {"categories": ["old"]}),
        ("new category", {"categories": ["new"]}),
        ("old metadata", {"metadata_filter": {"k": 1}}),
        ("new metadata", {"metadata_filter": {"k": 2.0}}),
        ("public only", {"include_private": False}),
        ("viewer s1", {"include_private": False, "viewer": "s1"}),
        ("viewer s2", {"include_private": False, "viewer": "s2"}),
        ("exclude old", {"exclude_scope": "/p"}),
    ]:
        both(f"after moves: {label}", probe, **flt)
        both(f"after moves: {label} (moved vector)", list(model["m00"].embedding), **flt)

    # remove an embedding: never returned by a search again
    gone = model["m07"].model_copy(update={"embedding": []})
    for store in writers(kinds).values():
        store.update(gone)
    model["m07"] = stored(gone)
    both("embedding removed", list(recs[7].embedding))

    # reset the new scope: nothing of it is found, the rest is
    for store in writers(kinds).values():
        store.reset("/moved")
    for i in [r.id for r in model.values() if in_scope(r.scope, "/moved")]:
        del model[i]
    both("after reset /moved", probe)
    both("after reset /moved, scope", probe, scope_prefix="/moved")

    # the same ids saved again elsewhere with other vectors: scored with the new ones
    again = [
        gen.record(rid=f"m{i:02d}").model_copy(update={"scope": "/r", "categories": ["again"], "embedding": gen.vector(), "private": False})
        for i in range(4)
    ]
    for store in writers(kinds).values():
        store.save(again)
    model.update({r.id: stored(r) for r in again})
    both("re-saved ids", list(again[1].embedding))
    both("re-saved ids in /r", list(again[1].embedding), scope_prefix="/r")
    both("re-saved ids, old vector", probe, categories=["again", "old"])

    # the whole namespace reset, then records of another dimension
    for store in writers(kinds).values():
        store.reset()
    model.clear()
    for kind, store in kinds.items():
        problems.check("search after reset()", {kind: store.search(probe, limit=5)}, [])
    fresh = [
        MemoryRecord(
            id=f"m{i:02d}", content=f"fresh {i}", scope="/p/q", categories=["old"],
            importance=0.5, created_at=T0 + timedelta(seconds=i), last_accessed=T0 + timedelta(seconds=i),
            embedding=np.random.default_rng(100 + i).normal(size=DIM + 4).tolist(),
        )  # fmt: skip
        for i in range(8)
    ]
    for store in writers(kinds).values():
        store.save(fresh)
    model.update({r.id: stored(r) for r in fresh})
    q = np.random.default_rng(99).normal(size=DIM + 4).tolist()
    both("new dimension after reset()", q)
    both("new dimension after reset(), scope", q, scope_prefix="/p", categories=["old"])
    problems.check("list_records after reset()", {k: [key(r) for r in v] for k, v in every(kinds, "list_records", "/p").items()},
                   [key(model[i]) for i in model_page(model, "/p", 200, 0)])
    assert not problems, problems.report()
