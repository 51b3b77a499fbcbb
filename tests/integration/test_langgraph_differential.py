"""Differential fuzz of memworker.langgraph.QueuedStore against LangGraph's own
``InMemoryStore`` (the oracle), on real servers (plain: the exact search path;
module: FT.SEARCH) and real in-process workers with the deterministic WordEmbedder
of test_langgraph.py (the same embedder for both stores).

Seeded random operations (``random.Random(seed)``) go to both stores; every read is
compared. Where docs/langgraph.md documents a difference, the expectation follows
the docs and only there:

- filters: JSON comparisons (``true != 1``; a missing field equals nothing, not even
  ``null``, and is ``$ne`` anything; ranges compare numbers with numbers and strings
  with strings, anything else is out of range: ``InMemoryStore`` calls ``float()``);
- a search without a query lists newest first (by ``created_at``, the first put's;
  ties in any order); ``InMemoryStore`` lists in insertion order;
- a search with a query returns embedded items only (``InMemoryStore`` fills a short
  page with unembedded ones), a blank text is no text, one vector per item (the texts
  joined): expected scores are the cosine of the WordEmbedder vectors of the joined
  text and of the query;
- ``created_at`` is the first put's (``InMemoryStore`` renews it on each put).

``InMemoryStore`` quirks not mirrored, and so not compared: it keeps a namespace whose
items were all deleted (or that a ``get`` only read: its ``_data`` is a defaultdict) in
``list_namespaces``; it keeps an item's old vectors when a later put of the key
indexes other paths or nothing (so its scores are only used where no stale vector can
exist). The fuzz prunes the oracle's empty namespaces after each op.

A QueuedStore batch runs its puts before its reads (its docstring); the fuzz feeds the
oracle a mixed batch as puts then reads, and a separate deterministic test compares
one mixed batch with InMemoryStore's.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import GetOp, ListNamespacesOp, MatchCondition, PutOp, SearchOp  # noqa: E402
from langgraph.store.memory import InMemoryStore, _compare_values  # noqa: E402
from test_langgraph import DIM, WORDS, WordEmbedder, embedder, make_store, settings, worker  # noqa: E402,F401

from memworker.langgraph import QueuedStore  # noqa: E402

ROOT_DOCS = Path(__file__).resolve().parents[2] / "docs"
MISSING: Any = object()
BIG = 10_000

# ----------------------------------------------------------------------------- pools
NAMESPACES: list[tuple[str, ...]] = [
    ("a",), ("a", "b"), ("a", "b", "c"), ("a", "b", "c", "d", "e"), ("a/b",), ("a", "*"),
    ("*",), ("%",), ("%2F",), ("{x}",), ("\u00e9",), ("e\u0301",), ("\U0001f642",),
    ("x" * 200,), ("users", "u1"), ("users", "u10"), ("us",), ("a b",), ("\u00e9" * 40,),
    ("{", "}"), ("a", "%"),
]  # fmt: skip
KEYS = ["k", "K", "*", "/", "%", "%2F", "{", "}", "{k}", "\u00e9", "e\u0301", "\U0001f642", " ",
        "a.b", ".", "\u952e", "k" * 4096, '"],"k']  # fmt: skip
PREFIXES: list[tuple[str, ...]] = sorted({ns[:i] for ns in NAMESPACES for i in range(len(ns) + 1)}) + [
    ("a", "b", "x"), ("use",), ("x" * 199,), ("e",), ("zz",),
]
STRINGS = ["", "a", "b", "ab", "A", "\u00e9", "e\u0301", "Z", "10", "9", "1", "@s:{a}", "*", "a b", "\U0001f642"]
NUMBERS = [0, 1, 2, 3, -1, -3, 1.0, -0.0, 0.5, 2.5, 1e300, -1e-300, 2**53, 7]
SCALARS = STRINGS[:6] + NUMBERS[:8] + [True, False, None]


def _text(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.70:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    return rng.choice(["", "   ", "pomm\u00e9 \U0001f642", 5, None, ["apple"], "zzz qqq", True])


def _nested(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 2 and r < 0.35:
        return {rng.choice(["a", "b", "c", "", "$x"]): _nested(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if depth < 2 and r < 0.55:
        return [_nested(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice(SCALARS)


def random_value(rng: random.Random) -> dict[str, Any]:
    value: dict[str, Any] = {}
    fields = ["text", "n", "s", "b", "meta", "tags", "opt", "title", "key", ""]
    rng.shuffle(fields)
    for field in fields:
        if rng.random() < 0.35 and field not in ("text", "n"):
            continue
        if field == "text":
            if rng.random() < 0.9:
                value["text"] = _text(rng)
        elif field == "title":
            value["title"] = _text(rng)
        elif field == "n":
            if rng.random() < 0.85:
                value["n"] = rng.choice(NUMBERS + [True, False, "1", None])
        elif field == "s":
            value["s"] = rng.choice(STRINGS + [1, None])
        elif field == "b":
            value["b"] = rng.choice([True, False, 1, 0, None])
        elif field == "meta":
            value["meta"] = {"a": rng.choice(NUMBERS + [True, "a"]), "b": {"c": rng.choice(STRINGS)}}
            if rng.random() < 0.3:
                value["meta"] = _nested(rng)
        elif field == "tags":
            value["tags"] = rng.choice([[], ["a"], ["a", "b"], [1, "a"], [1.0, "a"], [True], [{"x": 1}], [{"y": 2, "x": 1}],
                                        [{"x": 1, "y": 2}], [[1, 2]], ["\u00e9"]])  # fmt: skip
        else:
            value[field] = rng.choice(SCALARS)
    return value


def random_filter(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.2:
        return None
    flt: dict[str, Any] = {}
    for _ in range(rng.randint(1, 2)):
        kind = rng.random()
        if kind < 0.15:
            field = rng.choice(["n", "s", "b", "opt", "key", "", "missing"])
            flt[field] = rng.choice(SCALARS + NUMBERS)
        elif kind < 0.3:
            op = rng.choice(["$eq", "$ne"])
            flt[rng.choice(["n", "s", "b", "tags", "meta"])] = {op: rng.choice(SCALARS + [["a"], [1, "a"], {"c": "a"}])}
        elif kind < 0.55:
            ops = rng.sample(["$gt", "$gte", "$lt", "$lte"], rng.randint(1, 2))
            flt["n"] = {op: rng.choice(NUMBERS) for op in ops}
        elif kind < 0.65:
            ops = rng.sample(["$gt", "$gte", "$lt", "$lte"], rng.randint(1, 2))
            flt["s"] = {op: rng.choice(STRINGS) for op in ops}
        elif kind < 0.72:  # mixed types: documented as out of range
            flt[rng.choice(["n", "s", "b"])] = {rng.choice(["$gt", "$lte"]): rng.choice(["1", 1, True, None])}
        elif kind < 0.82:
            flt["meta"] = rng.choice([{"a": rng.choice(NUMBERS)}, {"b": {"c": rng.choice(STRINGS)}},
                                      {"a": {"$gt": rng.choice(NUMBERS)}}, {}, {"a": 1, "b": {}}])  # fmt: skip
        elif kind < 0.92:
            flt["tags"] = rng.choice([[], ["a"], ["a", "b"], [1, "a"], [1.0, "a"], [{"x": 1}], [[1, 2]], ["\u00e9"]])
        else:
            flt["text"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
    return flt


# ----------------------------------------------------------------------------- reference semantics
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalars(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [s for x in v.values() for s in _scalars(x)]
    if isinstance(v, (list, tuple)):
        return [s for x in v for s in _scalars(x)]
    return [v]


def _bool_num_mix(a: Any, b: Any) -> bool:
    sa, sb = _scalars(a), _scalars(b)
    return (any(isinstance(x, bool) for x in sa) and any(_is_num(x) for x in sb)) or (
        any(isinstance(x, bool) for x in sb) and any(_is_num(x) for x in sa)
    )


def documented(value: Any, cond: Any) -> bool:
    """Whether comparing ``value`` with ``cond`` touches a difference docs/langgraph.md
    documents (then the docs' semantics are expected, else InMemoryStore's)."""
    if value is MISSING:
        return True
    if isinstance(cond, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in cond):
            for op, operand in cond.items():
                if op in ("$gt", "$gte", "$lt", "$lte"):
                    if not (_is_num(value) and _is_num(operand)):
                        return True
                elif _bool_num_mix(value, operand):
                    return True
            return False
        if not isinstance(value, dict):
            return False
        return any(documented(value.get(k, MISSING), v) for k, v in cond.items())
    if isinstance(cond, (list, tuple)):
        # docs' "Filters" table: a list is matched element by element (a dict in it
        # field by field, as InMemoryStore does); JSON equality of its scalars
        return _bool_num_mix(value, cond)
    return _bool_num_mix(value, cond)


def _walk(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [v] + [w for x in v for w in _walk(x)]
    if isinstance(v, dict):
        return [v] + [w for x in v.values() for w in _walk(x)]
    return [v]


def json_eq(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, list, tuple)) or isinstance(b, (dict, list, tuple)):
        return False
    return bool(a == b)


def doc_match(value: Any, cond: Any) -> bool:
    """docs/langgraph.md "Filters", written from the text."""
    if isinstance(cond, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in cond):
            for op, operand in cond.items():
                if op == "$eq":
                    ok = json_eq(value, operand)
                elif op == "$ne":
                    ok = not json_eq(value, operand)
                elif _is_num(value) and _is_num(operand) or isinstance(value, str) and isinstance(operand, str):
                    ok = {"$gt": value > operand, "$gte": value >= operand,
                          "$lt": value < operand, "$lte": value <= operand}[op]  # fmt: skip
                else:
                    ok = False
                if not ok:
                    return False
            return True
        if not isinstance(value, dict):
            return False
        return all(doc_match(value.get(k, MISSING), v) for k, v in cond.items())
    if isinstance(cond, (list, tuple)) and any(isinstance(c, dict) for c in _walk(cond)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(cond)
            and all(doc_match(v, c) for v, c in zip(value, cond))
        )
    return json_eq(value, cond)


STATS: dict[str, int] = {}


def _count(what: str) -> None:
    STATS[what] = STATS.get(what, 0) + 1


def expected_match(value: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    """InMemoryStore's verdict, except where the docs document another one."""
    for field, cond in (flt or {}).items():
        v = value.get(field, MISSING)
        if documented(v, cond):
            ok = doc_match(v, cond)
            _count("documented")
        else:
            ok = _compare_values(v, cond)  # InMemoryStore's own comparison
            _count("oracle")
        if not ok:
            return False
    return True


def _embed_query_vec(text: str) -> np.ndarray:
    return WordEmbedder().encode([text])[0].astype(np.float64)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _embed_fn(texts: list[str]) -> list[list[float]]:
    return WordEmbedder().encode(list(texts)).tolist()


def strict(value: Any) -> str:
    """Types, nesting and field order (JSON: 1 and 1.0 and True differ)."""
    return json.dumps(value, ensure_ascii=False)


# ----------------------------------------------------------------------------- the model
class Model:
    """The oracle (InMemoryStore) plus what the docs add: each live item's creation
    and update order, and the text QueuedStore embeds."""

    def __init__(self, fields: list[str]) -> None:
        self.oracle = InMemoryStore(index={"dims": DIM, "embed": _embed_fn, "fields": fields})
        self.fields = fields
        self.seq = 0
        self.created: dict[tuple[tuple[str, ...], str], int] = {}
        self.updated: dict[tuple[tuple[str, ...], str], int] = {}
        self.text: dict[tuple[tuple[str, ...], str], str] = {}
        self.touched: set[tuple[tuple[str, ...], str]] = set()

    def prune(self) -> None:
        for ns in [ns for ns, items in self.oracle._data.items() if not items]:
            del self.oracle._data[ns]

    def joined_text(self, op: PutOp) -> str:
        from langgraph.store.base import get_text_at_path, tokenize_path

        if op.index is False:
            return ""
        paths = self.fields if op.index is None else list(dict.fromkeys(op.index))
        texts = []
        for p in paths:
            for t in get_text_at_path(op.value, p if p == "$" else tokenize_path(p)):
                if t.strip():
                    texts.append(t)
        return "\n".join(texts)

    def record_puts(self, ops: list[PutOp]) -> None:
        last: dict[tuple[tuple[str, ...], str], PutOp] = {}
        deleted = set()  # a put after a delete of its key in the batch is a new item
        for op in ops:
            last[(tuple(op.namespace), op.key)] = op
            if op.value is None:
                deleted.add((tuple(op.namespace), op.key))
        self.seq += 1
        for k, op in last.items():
            self.touched.add(k)
            if op.value is None:
                self.created.pop(k, None)
                self.updated.pop(k, None)
                self.text.pop(k, None)
            else:
                if k in deleted:
                    self.created[k] = self.seq
                self.created.setdefault(k, self.seq)
                self.updated[k] = self.seq
                self.text[k] = self.joined_text(op)

    def items(self, prefix: tuple[str, ...]) -> list[Any]:
        out = self.oracle.search(prefix, limit=BIG)
        self.prune()
        return out

    def matching(self, prefix: tuple[str, ...], flt: dict[str, Any] | None) -> dict[tuple, Any]:
        return {(i.namespace, i.key): i for i in self.items(prefix) if expected_match(i.value, flt)}


def _ids(items: list[Any]) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(i.namespace), i.key) for i in items]


# ----------------------------------------------------------------------------- checks
def check_get(model: Model, got: Any, want: Any, where: Any) -> None:
    if want is None:
        assert got is None, (where, got)
        return
    assert got is not None, where
    assert (tuple(got.namespace), got.key) == (tuple(want.namespace), want.key), where
    assert strict(got.value) == strict(want.value), (where, got.value, want.value)
    assert got.updated_at >= got.created_at, where


def check_plain_search(model: Model, lg: QueuedStore, prefix, flt, limit, offset, got, full=None) -> None:
    where = ("search", prefix, flt, limit, offset)
    want = model.matching(prefix, flt)
    if full is None:
        full = lg.search(prefix, filter=flt, limit=BIG)
    ids = _ids(full)
    assert len(ids) == len(set(ids)), where
    assert set(ids) == set(want), (where, sorted(set(ids) ^ set(want)))
    _count("search-hit" if want else "search-empty")
    if flt and want:
        _count("filtered-hit")
    if len(want) > limit + offset:
        _count("paged")
    for item in full:
        check_get(model, item, want[(tuple(item.namespace), item.key)], where)
        assert item.score is None, where
    # newest first (created_at, the first put's); the model's creation order agrees
    created = [i.created_at for i in full]
    assert created == sorted(created, reverse=True), (where, "not newest first")
    for a, b in zip(full, full[1:]):
        ka, kb = (tuple(a.namespace), a.key), (tuple(b.namespace), b.key)
        assert model.created[ka] >= model.created[kb] or a.created_at == b.created_at, (where, ka, kb)
    # the page is the full list's slice, up to ties in created_at
    assert [i.created_at for i in got] == created[offset : offset + limit], where
    assert set(_ids(got)) <= set(ids) and len(set(_ids(got))) == len(got), where


def check_query_search(model: Model, lg: QueuedStore, prefix, query, flt, limit, offset, got, full=None) -> None:
    where = ("qsearch", prefix, query, flt, limit, offset)
    matched = model.matching(prefix, flt)
    qv = _embed_query_vec(query)
    want = {k: _cos(qv, WordEmbedder().encode([model.text[k]])[0].astype(np.float64))
            for k in matched if model.text.get(k)}  # fmt: skip
    if full is None:
        full = lg.search(prefix, query=query, filter=flt, limit=BIG)
    ids = _ids(full)
    assert len(ids) == len(set(ids)), where
    assert set(ids) == set(want), (where, sorted(set(ids) ^ set(want)))
    _count("qsearch-hit" if want else "qsearch-empty")
    if flt and want:
        _count("qfiltered-hit")
    for item in full:
        k = (tuple(item.namespace), item.key)
        check_get(model, item, matched[k], where)
        assert item.score == pytest.approx(want[k], abs=2e-3), (where, k)
    scores = [i.score for i in full]
    assert all(a >= b - 2e-3 for a, b in zip(scores, scores[1:])), (where, scores)
    assert [i.score for i in got] == pytest.approx(scores[offset : offset + limit], abs=2e-3), where
    # the oracle's own scores, where it holds no stale vector (see the module docstring)
    oracle = {(i.namespace, i.key): i.score for i in model.oracle.search(prefix, query=query, limit=BIG)}
    model.prune()
    for k, s in want.items():
        if model.fresh.get(k) and oracle.get(k) is not None:
            _count("oracle-score")
            assert oracle[k] == pytest.approx(s, abs=1e-4), ("oracle drift", k)


def check_list(model: Model, got, kw) -> None:
    model.prune()
    want = model.oracle.list_namespaces(**kw)
    assert got == want, kw


def check_all(model: Model, lg: QueuedStore) -> None:
    keys = sorted(model.touched, key=repr)
    got = lg.batch([GetOp(ns, k) for ns, k in keys])
    want = model.oracle.batch([GetOp(ns, k) for ns, k in keys])
    model.prune()
    for k, g, w in zip(keys, got, want):
        check_get(model, g, w, ("all", k))
    items = {(tuple(i.namespace), i.key): i for i in got if i is not None}
    for a in items:
        for b in items:
            if model.created[a] < model.created[b]:
                assert items[a].created_at <= items[b].created_at, (a, b)
            if model.updated[a] < model.updated[b]:
                assert items[a].updated_at <= items[b].updated_at, (a, b)
    check_plain_search(model, lg, (), None, BIG, 0, lg.search((), limit=BIG))
    check_list(model, lg.list_namespaces(limit=1000), {"limit": 1000})


# ----------------------------------------------------------------------------- generators
def random_prefix(rng: random.Random, model: Model) -> tuple[str, ...]:
    if model.created and rng.random() < 0.6:  # a prefix of a live item's namespace
        ns = rng.choice(sorted(model.created, key=repr))[0]
        return ns[: rng.randint(0, len(ns))]
    return rng.choice(PREFIXES)


def random_list_kw(rng: random.Random) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if rng.random() < 0.6:
        p = list(rng.choice(NAMESPACES))[: rng.randint(1, 3)]
        if rng.random() < 0.4:
            p[rng.randrange(len(p))] = "*"
        kw["prefix"] = tuple(p)
    if rng.random() < 0.4:
        s = list(rng.choice(NAMESPACES))[-rng.randint(1, 2) :]
        if rng.random() < 0.4:
            s[rng.randrange(len(s))] = "*"
        kw["suffix"] = tuple(s)
    if rng.random() < 0.4:
        kw["max_depth"] = rng.choice([0, 1, 2, 3])
    kw["limit"] = rng.choice([0, 1, 2, 5, 100])
    kw["offset"] = rng.choice([0, 0, 1, 3])
    return kw


def _list_op(kw: dict[str, Any]) -> ListNamespacesOp:
    conds = []
    if kw.get("prefix"):
        conds.append(MatchCondition("prefix", kw["prefix"]))
    if kw.get("suffix"):
        conds.append(MatchCondition("suffix", kw["suffix"]))
    return ListNamespacesOp(tuple(conds), kw.get("max_depth"), kw["limit"], kw["offset"])


def random_put(rng: random.Random, model: Model) -> PutOp:
    if model.created and rng.random() < 0.35:  # an overwrite or delete of a live key
        ns, key = rng.choice(sorted(model.created, key=repr))
    else:
        ns, key = rng.choice(NAMESPACES), rng.choice(KEYS)
    if rng.random() < 0.15:
        return PutOp(ns, key, None)
    index = rng.choice([None] * 6 + [False, ["title"], ["$"], ["text", "title"]])
    return PutOp(ns, key, random_value(rng), index=index)


# ----------------------------------------------------------------------------- the fuzz
def _fresh_update(model: Model, op: PutOp) -> None:
    """Whether the oracle's vectors of the key are the latest put's only (no stale
    path kept from an earlier put), for the oracle score cross-check."""
    k = (tuple(op.namespace), op.key)
    if op.value is None:
        model.fresh.pop(k, None)
        model.paths.pop(k, None)
        return
    from langgraph.store.base import get_text_at_path, tokenize_path

    paths = model.fields if op.index is None else ([] if op.index is False else list(op.index))
    embedded = {p for p in paths if get_text_at_path(op.value, p if p == "$" else tokenize_path(p))}
    before = model.paths.get(k, set())
    model.paths[k] = before | embedded
    model.fresh[k] = k not in model.tainted and len(embedded) == 1 and model.paths[k] == embedded and bool(model.text.get(k))


def oracle_put(model: Model, op: PutOp) -> None:
    """A put to the oracle. InMemoryStore fails a put whose one text sits at two of its
    index paths ("Number of embeddings (1) does not match number of indices (2)", its
    own bug): such a put goes to it unindexed, and the key's oracle scores are not
    used until it is deleted."""
    k = (tuple(op.namespace), op.key)
    if op.value is None:
        model.tainted.discard(k)
        model.oracle.batch([op])
        return
    try:
        model.oracle.batch([op])
    except ValueError as exc:
        assert "Number of embeddings" in str(exc)
        model.oracle.batch([PutOp(op.namespace, op.key, op.value, index=False)])
        model.tainted.add(k)


def run_fuzz(lg: QueuedStore, seed: int, n_ops: int, use_async: bool = False) -> None:
    rng = random.Random(seed)
    STATS.clear()
    model = Model(["text"])
    model.fresh = {}  # type: ignore[attr-defined]
    model.paths = {}  # type: ignore[attr-defined]
    model.tainted = set()  # type: ignore[attr-defined]
    loop = asyncio.new_event_loop() if use_async else None

    def run_batch(ops: list[Any]) -> list[Any]:
        if loop is not None:
            return loop.run_until_complete(lg.abatch(ops))
        return lg.batch(ops)

    try:
        for step in range(n_ops):
            r = rng.random()
            ctx = (seed, step)
            if r < 0.40:
                op = random_put(rng, model)
                if op.value is None:
                    lg.delete(op.namespace, op.key)
                    model.oracle.delete(op.namespace, op.key)
                else:
                    lg.put(op.namespace, op.key, op.value, index=op.index)
                    oracle_put(model, op)
                model.record_puts([op])
                _fresh_update(model, op)
            elif r < 0.50:
                ns, key = rng.choice(sorted(model.touched, key=repr)) if model.touched and rng.random() < 0.8 else (
                    rng.choice(NAMESPACES), rng.choice(KEYS))  # fmt: skip
                got = lg.get(ns, key)
                check_get(model, got, model.oracle.get(ns, key), (ctx, "get", ns, key))
            elif r < 0.68:
                prefix, flt = random_prefix(rng, model), random_filter(rng)
                limit, offset = rng.choice([1, 2, 3, 10, BIG]), rng.choice([0, 0, 1, 2])
                got = lg.search(prefix, filter=flt, limit=limit, offset=offset)
                check_plain_search(model, lg, prefix, flt, limit, offset, got)
            elif r < 0.80:
                prefix, flt = random_prefix(rng, model), random_filter(rng)
                query = rng.choice([" ".join(rng.sample(WORDS, rng.randint(1, 3))), "zzz qqq", "pomm\u00e9"])
                limit, offset = rng.choice([1, 3, 10, BIG]), rng.choice([0, 0, 1])
                got = lg.search(prefix, query=query, filter=flt, limit=limit, offset=offset)
                check_query_search(model, lg, prefix, query, flt, limit, offset, got)
            elif r < 0.88:
                kw = random_list_kw(rng)
                check_list(model, lg.list_namespaces(**kw), kw)
            else:
                # a mixed batch: puts and deletes, gets, searches, list_namespaces
                ops: list[Any] = []
                puts: list[PutOp] = []
                for _ in range(rng.randint(2, 7)):
                    c = rng.random()
                    if c < 0.45:
                        p = random_put(rng, model)
                        ops.append(p)
                        puts.append(p)
                    elif c < 0.6:
                        ns, key = rng.choice(NAMESPACES), rng.choice(KEYS)
                        ops.append(GetOp(ns, key))
                    elif c < 0.75:
                        ops.append(SearchOp(random_prefix(rng, model), random_filter(rng), rng.choice([2, BIG]), 0))
                    elif c < 0.85:
                        ops.append(SearchOp(random_prefix(rng, model), random_filter(rng), BIG, 0,
                                            query=" ".join(rng.sample(WORDS, 2))))  # fmt: skip
                    else:
                        ops.append(_list_op(random_list_kw(rng)))
                results = run_batch(ops)
                # QueuedStore's batch: puts first, then reads (its docstring)
                if puts:
                    for p in puts:  # one at a time: InMemoryStore's batch of two puts
                        oracle_put(model, p)  # with one text fails (its own bug)
                    model.record_puts(puts)
                    for p in puts:
                        _fresh_update(model, p)
                model.prune()
                for i, (op, res) in enumerate(zip(ops, results)):
                    where = (ctx, "batch", i, op)
                    if isinstance(op, PutOp):
                        assert res is None, where
                    elif isinstance(op, GetOp):
                        check_get(model, res, model.oracle.get(op.namespace, op.key), where)
                    elif isinstance(op, SearchOp) and op.query:
                        check_query_search(model, lg, op.namespace_prefix, op.query, op.filter, op.limit, 0, res)
                    elif isinstance(op, SearchOp):
                        check_plain_search(model, lg, op.namespace_prefix, op.filter, op.limit, 0, res)
                    else:
                        kw = {"limit": op.limit, "offset": op.offset, "max_depth": op.max_depth}
                        for c in op.match_conditions or ():
                            kw[c.match_type] = tuple(c.path)
                        check_list(model, res, kw)
            model.prune()
            if step % 60 == 59:
                check_all(model, lg)
        check_all(model, lg)
        # the fuzz was not vacuous
        for what, least in [("search-hit", 20), ("filtered-hit", 8), ("qsearch-hit", 8), ("qfiltered-hit", 3),
                            ("paged", 5), ("documented", 20), ("oracle", 50), ("oracle-score", 5)]:  # fmt: skip
            assert STATS.get(what, 0) >= least, (what, STATS)
        print(seed, STATS)
    finally:
        if loop is not None:
            loop.run_until_complete(lg.aclose())
            loop.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_differential_fuzz_against_in_memory_store(make_store, seed):
    """Seeded random puts (new keys, overwrites, deletes, hostile labels and keys,
    typed and nested values), gets, searches with and without a query (filters,
    prefixes, limits, offsets), list_namespaces and mixed batches: QueuedStore gives
    what InMemoryStore gives, but for the documented differences."""
    run_fuzz(make_store(), seed, 400)


def test_differential_fuzz_abatch(make_store):
    """The same fuzz with every mixed batch through ``abatch`` on one event loop."""
    run_fuzz(make_store(), 4, 300, use_async=True)


# ----------------------------------------------------------------------------- refused inputs
@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.put(("a.b",), "k", {"text": "x"}),
        lambda s: s.put(("langgraph",), "k", {"text": "x"}),
        lambda s: s.put(("",), "k", {"text": "x"}),
        lambda s: s.put((), "k", {"text": "x"}),
        lambda s: s.get(("a.b",), "k"),
        lambda s: s.search(("a.b",)),
        lambda s: s.list_namespaces(prefix=("a.b",)),
        lambda s: s.list_namespaces(suffix=("a\x00",)),
        lambda s: s.delete(("a.b",), "k"),
    ],
)
def test_labels_langgraph_refuses_are_refused_by_both(make_store, call):
    lg = make_store()
    oracle = InMemoryStore()
    with pytest.raises(Exception) as want:
        call(oracle)
    with pytest.raises(Exception) as got:
        call(lg)
    assert type(got.value).__name__ == type(want.value).__name__ or isinstance(got.value, ValueError)



# ----------------------------------------------------------------------------- divergences (shrunk)
def test_a_batchs_reads_see_its_own_puts_a_documented_difference(make_store):
    """Shrunk from the fuzz (mixed batches). InMemoryStore's ``batch`` answers its
    gets, searches and list_namespaces from the state before the batch's puts (its
    puts are applied last); QueuedStore sends the puts first, so its reads see them:
    docs/langgraph.md ("A `batch` sends its puts and deletes first") states it."""
    lg = make_store()
    oracle = InMemoryStore()
    for s in (lg, oracle):
        s.put(("q",), "old", {"text": "apple"})
    ops = [
        PutOp(("q",), "new", {"text": "apple"}),
        PutOp(("q",), "old", None),
        GetOp(("q",), "new"),
        GetOp(("q",), "old"),
        SearchOp(("q",), None, 10, 0),
    ]
    got, want = lg.batch(ops), oracle.batch(ops)
    assert (got[2] is None, got[3] is None) == (False, True)  # the batch's own put and delete
    assert (want[2] is None, want[3] is None) == (True, False)  # the state before them
    assert [i.key for i in got[4]] == ["new"]
    # after the batch both stores agree
    assert lg.get(("q",), "old") is None and oracle.get(("q",), "old") is None
    assert sorted(i.key for i in lg.search(("q",))) == sorted(i.key for i in oracle.search(("q",))) == ["new"]
    assert "A `batch` sends its puts and deletes first" in (ROOT_DOCS / "langgraph.md").read_text()


@pytest.mark.parametrize("query", [None, "apple"], ids=["no-query", "query"])
def test_a_list_filter_with_a_dict_element_matches_as_in_memory_store(make_store, query):
    """Shrunk from the fuzz. InMemoryStore compares a list filter element by element
    (``_compare_values``), so a dict element is matched field by field, as a nested
    dict filter is: ``{"tags": [{"x": 1}]}`` matches ``tags == [{"x": 1, "y": 2}]``.
    QueuedStore compares the whole list as canonical JSON (pushed as one metadata
    token, and ``_json_equal`` on candidates) and finds nothing. docs/langgraph.md
    says a nested dict is matched field by field and a list by equality; a dict inside
    a list is not covered."""
    lg = make_store()
    oracle = InMemoryStore()
    for s in (lg, oracle):
        s.put(("p",), "sub", {"text": "apple", "tags": [{"x": 1, "y": 2}]})
        s.put(("p",), "other", {"text": "apple", "tags": [{"x": 2, "y": 2}]})
    flt = {"tags": [{"x": 1}]}
    want = {i.key for i in oracle.search(("p",), filter=flt)}
    assert want == {"sub"}
    assert {i.key for i in lg.search(("p",), query=query, filter=flt)} == want
