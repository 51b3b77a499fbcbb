"""Differential fuzz of memworker's ``QueuedMemory`` against CrewAI's own ``Memory``
on its default LanceDB storage (the oracle), on real servers (plain: the exact search
path; module: FT.SEARCH) with a real in-process worker.

Both memories embed with the same deterministic bag-of-words hash embedder (the
worker too, through ``set_embedder_factory``), never call an LLM (every write gives
scope, categories and importance, and consolidation is off:
``consolidation_threshold=1.0``, with contents unique across calls so CrewAI never
finds an identical record to consolidate with), and score recall by semantics only
(``semantic_weight=1``, recency and importance weights 0), so a shallow recall's
ranking is the ranking of the raw search scores.

Seeded random operations (``random.Random(seed)``) go to both memories: remember and
remember_many (nested unicode scopes with ``{}|@*-:'`` and spaces, categories,
metadata of strings, numbers, booleans, nested values, importance, source, private;
exact duplicates inside one remember_many, which CrewAI's intra-batch dedup drops),
update, forget by record ids, by scope, by categories, by scope and categories.
Every so often (and at the end) the reads are compared: recall(depth="shallow") with
scope / categories / source / include_private filters, list_records, list_scopes,
info, tree, list_categories and get_record. Record ids differ between the memories,
so records are matched by content (unique by construction).

Differences documented by memworker (README "Semantics worth knowing", docs/crewai.md)
are expected, and only those:

- scores are cosine similarity; LanceDB's is ``1 / (1 + squared L2)``; on unit vectors
  the oracle's score is turned into a cosine (``1 - d / 2``) before comparing;
- scopes are paths (LanceDB matches string prefixes): the fuzz's scope segments are
  chosen so that no segment is a string prefix of a sibling, where both agree;
- privacy is filtered in the query (LanceDB after its top k): recalls use a limit
  above the number of records, where both agree;
- a module namespace keeps float16 vectors: scores compared to 2e-3, and the order of
  results only where the scores differ by more than that.

CrewAI/LanceDB quirks avoided rather than mirrored: ``LanceDBStorage.delete`` with a
scope also deletes every record AT ``/`` (``OR scope = '/'``), so no record is stored
at ``/``; with ``record_ids`` and no categories it ignores the scope, so ids are never
combined with a scope; a ``remember`` of a text identical to a stored one triggers
consolidation (a LanceDB score of exactly 1.0 reaches the threshold 1.0), so contents
are unique across calls.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

import numpy as np
import pytest

pytest.importorskip("crewai")
pytest.importorskip("lancedb")

from crewai.memory.storage.lancedb_storage import LanceDBStorage  # noqa: E402
from crewai.memory.unified_memory import Memory  # noqa: E402

from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.settings import Settings  # noqa: E402

#: Clusters too (3 primaries, 3 replicas; with and without RediSearch).
ON_CLUSTER = True

DIM = 64
BIG = 200  # every recall's limit: above the number of records the fuzz makes
SCORE_TOL = 2e-3

WORDS = [
    "apple", "river", "stone", "cloud", "green", "ticket", "budget", "salary", "deploy",
    "monday", "coffee", "python", "valkey", "agent", "report", "forest", "piano", "window",
    "\u00e9t\u00e9", "\u65e5\u672c", "stra\u00dfe", "caf\u00e9", "zebra", "orbit",
]  # fmt: skip
#: Scope segments: none is a string prefix of another (LanceDB matches string prefixes).
SEGMENTS = ["alpha", "\u03b2 \u00fcn\u00ef", "{x}|y", "@team*", "k:v-1", "sp ace", "\u65e5\u672c", "o'neil"]
CATEGORIES = ["c1", "c2", "\u00fcn\u00ef cat", "a|b", "x y", "{t}"]
SOURCES = [None, "agent-1", "\u00e4gent 2"]


class HashEncoder:
    """A bag-of-words hash embedder: each word adds a signed weight to one of DIM
    dimensions; unit vectors. Deterministic, offline, shared by both memories and the
    worker."""

    dimension = DIM
    model_id = "test-hash-bow-64"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in zip(out, texts):
            for word in re.findall(r"\w+", str(text).lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                row[h % DIM] += (1.0 if (h >> 8) & 1 else -1.0) * (1.0 + ((h >> 9) % 7) / 7.0)
            norm = float(np.linalg.norm(row))
            if norm:
                row /= norm
        return out


def _embedder() -> LocalEmbedder:
    return LocalEmbedder(embedder=HashEncoder())


WEIGHTS = dict(semantic_weight=1.0, recency_weight=0.0, importance_weight=0.0, consolidation_threshold=1.0)


@pytest.fixture
def pair(server, namespace, tmp_path, monkeypatch):
    """(queued memory on ``server``, CrewAI's Memory on LanceDB in ``tmp_path``), with an
    in-process worker embedding with the same HashEncoder."""
    monkeypatch.delenv(crewai_config.MEMORY_FACTORY_ENV, raising=False)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(HashEncoder)
    settings = Settings.from_url(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    try:
        with worker_mod.running_worker(
            settings, threads=4, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=1
        ):
            queued = QueuedMemory(
                storage=server.url, namespace=namespace, embedder=_embedder(), llm=StandInLLM(),
                drain_timeout=60, **WEIGHTS,
            )  # fmt: skip
            oracle = Memory(
                storage=LanceDBStorage(path=str(tmp_path / "lance")), embedder=_embedder(), llm=StandInLLM(),
                **WEIGHTS,
            )  # fmt: skip
            try:
                yield queued, oracle
            finally:
                try:
                    queued.reset_all()
                finally:
                    queued.close()
                    oracle.close()
    finally:
        worker_mod.set_embedder_factory(None)
        crewai_config.reset_worker_memory_config()


# ----------------------------------------------------------------------------- generators
class Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def content(self) -> str:
        self.n += 1
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 5)))
        return f"{words} note{self.n}"  # the counter word makes every text unique

    def scope(self) -> str:
        return "/" + "/".join(self.rng.choice(SEGMENTS) for _ in range(self.rng.randint(1, 3)))

    def categories(self) -> list[str]:
        return self.rng.sample(CATEGORIES, self.rng.randint(0, 2))

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if r < 0.25:
            return self.rng.choice(["", "x", "\u00fcn\u00ef", "a b", "{}|@*-:", "1"])
        if r < 0.45:
            return self.rng.choice([0, 1, -7, 2**40, 3.5, -0.25, 1e-9, 1.0])
        if r < 0.6:
            return self.rng.choice([True, False, None])
        if depth < 2 and r < 0.8:
            return {f"n{i}": self.value(depth + 1) for i in range(self.rng.randint(0, 2))}
        if depth < 2:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 2))]
        return "leaf"

    def metadata(self) -> dict[str, Any] | None:
        if self.rng.random() < 0.2:
            return None
        keys = ["k", "n", "flag", "\u00e9", "a b", "{x}"]
        return {k: self.value() for k in self.rng.sample(keys, self.rng.randint(0, 3))}

    def fields(self) -> dict[str, Any]:
        private = self.rng.random() < 0.3
        return dict(
            scope=self.scope(), categories=self.categories(), metadata=self.metadata(),
            importance=self.rng.choice([0.0, 0.2, 0.5, 0.75, 1.0, round(self.rng.random(), 3)]),
            source=self.rng.choice(SOURCES), private=private,
        )  # fmt: skip

    def query(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 3)))


# ----------------------------------------------------------------------------- comparison
def _meta(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _rec(r: Any) -> tuple:
    return (r.content, r.scope, list(r.categories), _meta(r.metadata), round(float(r.importance), 6),
            r.source, bool(r.private))  # fmt: skip


def _all(memory: Any) -> list[Any]:
    return memory.list_records(limit=BIG * 5)


def _ids(memory: Any) -> dict[str, str]:
    return {r.content: r.id for r in _all(memory)}


def _cosine_of_lance(score: float) -> float:
    """LanceDB's ``1 / (1 + squared L2)`` of unit vectors, as a cosine."""
    return 1.0 - (1.0 / score - 1.0) / 2.0


def _check_recall(q: Any, o: Any, label: str, query: str, **kw: Any) -> None:
    got = q.recall(query, depth="shallow", limit=BIG, **kw)
    want = o.recall(query, depth="shallow", limit=BIG, **kw)
    got_c = [(m.record.content, m.score) for m in got]
    want_c = [(m.record.content, _cosine_of_lance(m.score)) for m in want]
    assert sorted(_rec(m.record) for m in got) == sorted(_rec(m.record) for m in want), (label, query, kw)
    scores = dict(got_c)
    for content, score in want_c:
        assert abs(scores[content] - score) <= SCORE_TOL, (label, query, kw, content, scores[content], score)
    # the order: every pair whose oracle scores differ clearly is in the oracle's order
    pos = {c: i for i, (c, _) in enumerate(got_c)}
    for (c1, s1), (c2, s2) in zip(want_c, want_c[1:]):
        if s1 - s2 > SCORE_TOL:
            assert pos[c1] < pos[c2], (label, query, kw, c1, c2, s1, s2)


def _check_reads(q: Any, o: Any, g: Gen, label: str, created: dict[str, int]) -> None:
    o.drain_writes()  # CrewAI's list/info/tree calls do not wait for its save thread
    qa, oa = _all(q), _all(o)
    assert sorted(map(_rec, qa)) == sorted(map(_rec, oa)), label
    # newest first: records of different write calls in the order of the calls
    assert [created[r.content] for r in qa] == [created[r.content] for r in oa], label
    assert all(a.created_at >= b.created_at for a, b in zip(qa, qa[1:])), label
    # get_record (the storage's: Memory has none), by each memory's own id
    oid = {r.content: r.id for r in oa}
    for r in qa:
        got, want = q._storage.get_record(r.id), o._storage.get_record(oid[r.content])
        assert got is not None and want is not None and _rec(got) == _rec(want) == _rec(r), (label, r.content)
    scopes = sorted({r.scope for r in oa})
    prefixes = sorted({"/".join(s.split("/")[:i]) or "/" for s in scopes for i in range(1, s.count("/") + 2)})
    for path in [None, "/"] + prefixes[:6] + [g.rng.choice(prefixes)] if prefixes else [None, "/"]:
        assert q.list_scopes(path) == o.list_scopes(path), (label, "list_scopes", path)
        qi, oi = q.info(path), o.info(path)
        assert (qi.path, qi.record_count, qi.categories, qi.child_scopes) == (
            oi.path, oi.record_count, oi.categories, oi.child_scopes), (label, "info", path)  # fmt: skip
        assert (qi.oldest_record is None) == (oi.oldest_record is None), (label, "info", path)
        assert q.tree(path) == o.tree(path), (label, "tree", path)
        assert q.list_categories(path) == o.list_categories(path), (label, "list_categories", path)
        qs = [created[r.content] for r in q.list_records(path, limit=BIG)]
        os_ = [created[r.content] for r in o.list_records(path, limit=BIG)]
        assert qs == os_, (label, "list_records", path)
    # shallow recall with filters; a limit above the record count (see the docstring)
    for _ in range(4):
        kw: dict[str, Any] = {}
        if g.rng.random() < 0.5 and prefixes:
            kw["scope"] = g.rng.choice(prefixes)
        if g.rng.random() < 0.4:
            kw["categories"] = g.rng.sample(CATEGORIES, g.rng.randint(1, 2))
        kw["source"] = g.rng.choice(SOURCES)
        kw["include_private"] = g.rng.random() < 0.3
        _check_recall(q, o, label, g.query(), **kw)
    # the top of an unfiltered recall: the same records first (no privacy filter)
    query = g.query()
    top_q = [m.record.content for m in q.recall(query, depth="shallow", limit=3, include_private=True)]
    top_o = [m.record.content for m in o.recall(query, depth="shallow", limit=BIG, include_private=True)]
    if len(top_o) > 3:
        s = [m.score for m in o.recall(query, depth="shallow", limit=BIG, include_private=True)]
        if all(abs(_cosine_of_lance(a) - _cosine_of_lance(b)) > SCORE_TOL for a, b in zip(s[:4], s[1:4])):
            assert top_q == top_o[:3], (label, query)


def _fuzz(q: Any, o: Any, seed: int, steps: int) -> None:
    g = Gen(seed)
    created: dict[str, int] = {}  # content -> index of the write call that made it
    seen = {"remember": 0, "many": 0, "dup": 0, "update": 0, "forgot": 0}

    for step in range(steps):
        label = f"seed {seed} step {step}"
        r = g.rng.random()
        have = [r.content for r in _all(o)] if r >= 0.55 else []
        if r < 0.3 or (r >= 0.55 and not have):
            content, f = g.content(), g.fields()
            got, want = q.remember(content, **f), o.remember(content, **f)
            assert got is not None and want is not None, label
            assert _rec(got) == _rec(want), label
            created[content] = step
            seen["remember"] += 1
        elif r < 0.55:
            contents = [g.content() for _ in range(g.rng.randint(1, 4))]
            if g.rng.random() < 0.4:  # an exact duplicate: CrewAI's intra-batch dedup drops it
                contents.insert(g.rng.randint(1, len(contents)), g.rng.choice(contents))
                seen["dup"] += 1
            seen["many"] += 1
            f = g.fields()
            assert q.remember_many(contents, **f) == [] and o.remember_many(contents, **f) == []
            o.drain_writes()
            for c in contents:
                created.setdefault(c, step)
        elif r < 0.7:
            target = g.rng.choice(have)
            qid, oid = _ids(q)[target], _ids(o)[target]
            kw: dict[str, Any] = {}
            if g.rng.random() < 0.5:
                kw["content"] = g.content()
            if g.rng.random() < 0.4:
                kw["scope"] = g.scope()
            if g.rng.random() < 0.4:
                kw["categories"] = g.categories()
            if g.rng.random() < 0.4:
                kw["metadata"] = g.metadata() or {}
            if g.rng.random() < 0.4:
                kw["importance"] = round(g.rng.random(), 2)
            got, want = q.update(qid, **kw), o.update(oid, **kw)
            assert _rec(got) == _rec(want), (label, kw)
            seen["update"] += 1
            if "content" in kw:
                created[kw["content"]] = created[target]
        else:
            k = g.rng.random()
            if k < 0.35:
                pick = g.rng.sample(have, min(len(have), g.rng.randint(1, 3)))
                qi, oi = _ids(q), _ids(o)
                kw = {"q": {"record_ids": [qi[c] for c in pick]}, "o": {"record_ids": [oi[c] for c in pick]}}
            elif k < 0.6:
                s = g.scope()
                s = "/" + s.strip("/").split("/")[0] if g.rng.random() < 0.5 else s
                kw = {"q": {"scope": s}, "o": {"scope": s}}
            elif k < 0.8:
                c = [g.rng.choice(CATEGORIES)]
                kw = {"q": {"categories": c}, "o": {"categories": c}}
            else:
                s, c = "/" + g.rng.choice(SEGMENTS), [g.rng.choice(CATEGORIES)]
                kw = {"q": {"scope": s, "categories": c}, "o": {"scope": s, "categories": c}}
            n_q, n_o = q.forget(**kw["q"]), o.forget(**kw["o"])
            assert n_q == n_o, (label, kw["o"])
            seen["forgot"] += n_o
        if step % 8 == 7:
            _check_reads(q, o, g, label, created)
    _check_reads(q, o, g, f"seed {seed} end", created)
    # the fuzz did what it is for: every kind of write, and the oracle never asked its LLM
    assert all(seen.values()), seen
    assert o._llm.calls == {}, o._llm.calls


@pytest.mark.parametrize("seed", [1, 2])
def test_queued_memory_matches_crewai_memory(pair, seed):
    q, o = pair
    _fuzz(q, o, seed, steps=40)


def test_privacy_views_match_crewai(pair):
    """Private and public records of several sources: every (source, include_private)
    view of a shallow recall returns what CrewAI's returns."""
    q, o = pair
    rows = [
        ("apple river public of agent one", "agent-1", False),
        ("apple river private of agent one", "agent-1", True),
        ("apple stone private of agent two", "\u00e4gent 2", True),
        ("apple cloud private without source", None, True),
        ("apple green public without source", None, False),
    ]
    for content, source, private in rows:
        f = dict(scope="/p/{x}|y", categories=["c1"], importance=0.5, metadata={"s": source})
        assert _rec(q.remember(content, source=source, private=private, **f)) == _rec(
            o.remember(content, source=source, private=private, **f))  # fmt: skip
    for source in SOURCES + ["nobody"]:
        for include_private in (False, True):
            _check_recall(q, o, "privacy", "apple river", source=source, include_private=include_private)
            _check_recall(q, o, "privacy", "apple", scope="/p", source=source, include_private=include_private)


def test_metadata_types_round_trip_as_crewai(pair):
    """Metadata of every JSON type comes back from get_record, list_records and recall
    as CrewAI's LanceDB returns it (types included: 1.0 stays a float, True a bool)."""
    q, o = pair
    meta = {"s": "\u00fcn\u00ef {}|@*-:", "i": 7, "f": 1.0, "neg": -0.25, "big": 2**53 + 1, "t": True,
            "fl": False, "none": None, "nested": {"a": [1, "b", {"c": None}], "d": {}}, "empty": [],
            "a b": "x", "": "empty key"}  # fmt: skip
    f = dict(scope="/m/k:v-1", categories=["a|b", "x y"], importance=0.333, source="agent-1")
    got, want = q.remember("meta piano window", metadata=meta, **f), o.remember("meta piano window", metadata=meta, **f)
    assert _rec(got) == _rec(want)
    q.remember_many(["meta zebra orbit", "meta forest coffee"], metadata=meta, **f)
    o.remember_many(["meta zebra orbit", "meta forest coffee"], metadata=meta, **f)
    o.drain_writes()
    assert sorted(map(_rec, _all(q))) == sorted(map(_rec, _all(o)))
    assert [_meta(m.record.metadata) for m in q.recall("meta", depth="shallow", limit=BIG)] == [
        _meta(m.record.metadata) for m in o.recall("meta", depth="shallow", limit=BIG)]  # fmt: skip



def test_remember_many_lists_newest_first_as_crewai(pair):
    """CrewAI's EncodingFlow stamps each record of a remember_many as it builds it, so
    list_records ("newest first") returns a call's texts last one first. memworker
    gives every item of a job the same created_at, and the page orders them by their
    random ids."""
    q, o = pair
    texts = [f"step {i} of the plan {w}" for i, w in enumerate(WORDS[:8])]
    f = dict(scope="/plan", categories=["c1"], importance=0.5)
    q.remember_many(texts, **f)
    o.remember_many(texts, **f)
    o.drain_writes()
    want = [r.content for r in o.list_records("/plan")]
    assert want == texts[::-1]  # the oracle: the call's order, reversed
    assert [r.content for r in q.list_records("/plan")] == want
    assert [r.content for r in q.list_records("/plan", limit=3, offset=2)] == want[2:5]


def test_empty_source_is_no_source_as_in_crewai(pair):
    """CrewAI's LanceDB reads a source of "" back as None, so a private record saved
    with source="" is "private with no source": recall(source="") does not return it
    (README: such a record is visible to nobody but include_private=True callers)."""
    q, o = pair
    f = dict(scope="/s", categories=["c1"], importance=0.5)
    for m in (q, o):
        m.remember("empty source secret apple", source="", private=True, **f)
        m.remember("empty source public apple", source="", private=False, **f)
    o.drain_writes()
    got = [m.record.content for m in q.recall("apple", depth="shallow", source="", limit=BIG)]
    want = [m.record.content for m in o.recall("apple", depth="shallow", source="", limit=BIG)]
    assert want == ["empty source public apple"]
    assert got == want  # the private one is not the ""-source's to read
    assert sorted(map(_rec, _all(q))) == sorted(map(_rec, _all(o)))  # source None, as read back
