"""Differential test of the save-side EncodingFlow run in memworker's WORKER (field
inference, consolidation, intra-batch dedup; docs/crewai.md "Encoding in the worker")
and of deep and shallow recall in the agent's process over the privacy view, against
CrewAI's own ``Memory`` on LanceDB (the oracle), on the standalone plain (exact search)
and module (FT.SEARCH) servers with a real in-process worker.

Both sides use the same deterministic stand-in LLM (``memworker.crewai.testing``:
``StandInLLM`` infers scope ``/<first word>``, categories ``[<first word>]``,
importance 0.6, and updates an existing record whose first four words equal the new
text's; ``ScriptedConsolidationLLM`` updates or deletes the first record shown) and
the same bag-of-words hash embedder (imported from ``test_crewai_differential``).
Writes give NO scope, categories or importance (inference runs), consolidation is on
(threshold 0.5: for unit vectors LanceDB's ``1 / (1 + squared L2)`` reaches 0.5 exactly
when the cosine does, so both sides consult the LLM for the same records).

Documented differences (docs/crewai.md, docs/guarantees.md) are modelled, not
asserted away:

- an update by consolidation keeps the stored record's ``source`` and ``private``
  (CrewAI rebuilds the record without them): after each oracle write the oracle's
  records get back the owner they were first stored with (written into LanceDB, so
  later reads and consolidations of the oracle see what memworker's would);
- the worker's consolidation sees only what the writer could recall: the generator
  gives every group of texts sharing their first four words one owner (public texts
  of any source, or the private texts of one source), and private texts without a
  source never share a prefix (memworker compares those with nothing);
- "update record X" plans of two items of one batch on one record (CrewAI loses the
  second text): never generated, at most one item per prefix group in a call besides
  exact/case duplicates;
- jobs of different calls are not ordered on the per-message path: both memories are
  drained after every call.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("crewai")
pytest.importorskip("lancedb")

from crewai.memory.storage.lancedb_storage import LanceDBStorage  # noqa: E402
from crewai.memory.unified_memory import Memory  # noqa: E402
from test_crewai_differential import (  # noqa: E402
    BIG,
    SCORE_TOL,
    HashEncoder,
    _cosine_of_lance,
    _embedder,
    _rec,
)

from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import QueuedMemory  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import SCRIPT_PLAN_ENV, ScriptedConsolidationLLM, StandInLLM  # noqa: E402
from memworker.settings import Settings  # noqa: E402

STANDIN = "memworker.crewai.testing:standin_memory_config"
SCRIPTED = "memworker.crewai.testing:scripted_memory_config"
WEIGHTS = dict(semantic_weight=1.0, recency_weight=0.0, importance_weight=0.0, consolidation_threshold=0.5)

#: First words (inferred scopes /<word>): none a string prefix of another, fewer than
#: deep recall's 20 candidate scopes.
FIRST = ["apple", "river", "stone", "cloud", "green", "ticket", "budget", "salary"]
WORDS = ["deploy", "monday", "coffee", "python", "valkey", "agent", "report", "forest", "piano",
         "window", "zebra", "orbit", "lemon", "tiger", "candle", "harbor"]  # fmt: skip
ROOTS = [None, "/crew-a", "/crew-b/sub"]
PUBLIC_SOURCES = [None, "agent-1", "\u00e4gent 2"]
PRIVATE_OWNERS = ["agent-1", "\u00e4gent 2"]


# ----------------------------------------------------------------------------- fixtures
def _make_pair(server, namespace, tmp_path, monkeypatch, factory, oracle_llm, plan=None, **kw):
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, factory)
    if plan:
        monkeypatch.setenv(SCRIPT_PLAN_ENV, plan)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(HashEncoder)
    settings = Settings.from_url(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    weights = {**WEIGHTS, **kw}
    ctx = worker_mod.running_worker(
        settings, threads=4, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=0
    )
    try:  # a failed set-up must not leak the worker or the factory into later tests
        ctx.__enter__()
    except BaseException:
        worker_mod.set_embedder_factory(None)
        crewai_config.reset_worker_memory_config()
        raise
    try:
        queued = QueuedMemory(storage=server.url, namespace=namespace, embedder=_embedder(), llm=StandInLLM(),
                              drain_timeout=60, **weights)  # fmt: skip
        oracle = Memory(storage=LanceDBStorage(path=str(tmp_path / "lance")), embedder=_embedder(),
                        llm=oracle_llm, **weights)  # fmt: skip
    except BaseException:
        ctx.__exit__(None, None, None)
        worker_mod.set_embedder_factory(None)
        crewai_config.reset_worker_memory_config()
        raise

    def close():
        try:
            try:
                queued.reset_all()
            finally:
                queued.close()
                oracle.close()
        finally:
            ctx.__exit__(None, None, None)
            worker_mod.set_embedder_factory(None)
            crewai_config.reset_worker_memory_config()

    return queued, oracle, close


@pytest.fixture
def pair(server, namespace, tmp_path, monkeypatch):
    q, o, close = _make_pair(server, namespace, tmp_path, monkeypatch, STANDIN, StandInLLM())
    try:
        yield q, o
    finally:
        close()


# ----------------------------------------------------------------------------- the model
class Oracle:
    """CrewAI's Memory plus memworker's documented deviation: a record keeps the owner
    (source, private) it was first stored with, whatever consolidation did to it."""

    def __init__(self, memory: Memory) -> None:
        self.m = memory
        self.owner: dict[str, tuple[Any, bool]] = {}
        self.updates = 0

    def settle(self) -> None:
        self.m.drain_writes()
        before = dict(self.owner)
        for r in self.m.list_records(limit=BIG * 5):
            if r.id not in before:
                self.owner[r.id] = (r.source, bool(r.private))
                continue
            want = before[r.id]
            if (r.source, bool(r.private)) != want:
                full = self.m._storage.get_record(r.id)
                self.m._storage.update(full.model_copy(update={"source": want[0], "private": want[1]}))
                self.updates += 1

    def fixed(self, record: Any) -> Any:
        if record is None or record.id not in self.owner:
            return record
        source, private = self.owner[record.id]
        return record.model_copy(update={"source": source, "private": private})


class Gen:
    """Texts in prefix groups (same first four words), each with one owner and root."""

    def __init__(self, seed: int, roots: list[Any]) -> None:
        self.roots = roots
        self.rng = random.Random(seed)
        self.n = 0
        self.groups: list[dict[str, Any]] = []

    def _group(self) -> dict[str, Any]:
        rng = self.rng
        if self.groups and rng.random() < 0.6:
            return rng.choice(self.groups)
        words = [rng.choice(FIRST)] + rng.sample(WORDS, 3)
        r = rng.random()
        owner = ("private", rng.choice(PRIVATE_OWNERS)) if r < 0.35 else ("public", None)
        # mostly inferred; sometimes an explicit scope (the search boundary narrows to it)
        scope = rng.choice([None, None, None, f"/notes/{words[0]}"])
        g = {"words": words, "owner": owner, "root": rng.choice(self.roots), "scope": scope}
        self.groups.append(g)
        return g

    def text(self, g: dict[str, Any]) -> str:
        self.n += 1
        words = list(g["words"])
        if self.rng.random() < 0.3:
            words[0] = words[0].capitalize()  # an entity for the stand-in's metadata
        tail = [f"note{self.n}"] + ([self.rng.choice(WORDS)] if self.rng.random() < 0.4 else [])
        return " ".join(words + tail)

    def writer(self, g: dict[str, Any]) -> tuple[Any, bool]:
        kind, who = g["owner"]
        if kind == "private":
            # the owner's private writes; sometimes its public ones (it may merge into its own)
            return who, self.rng.random() < 0.8
        return self.rng.choice(PUBLIC_SOURCES), False

    def fields(self, g: dict[str, Any]) -> dict[str, Any]:
        """The call's explicit fields: the group's scope; now and then categories or
        importance (the others are inferred)."""
        out: dict[str, Any] = {"root_scope": g["root"]}
        if g["scope"]:
            out["scope"] = g["scope"]
        if self.rng.random() < 0.15:
            out["categories"] = [self.rng.choice(["c1", "x y"])]
        if self.rng.random() < 0.15:
            out["importance"] = self.rng.choice([0.1, 0.9])
        return out

    def loner(self) -> tuple[str, Any, bool, Any]:
        """A text of a new prefix that is never reused: private without source."""
        self.n += 1
        words = [self.rng.choice(FIRST)] + self.rng.sample(WORDS, 3) + [f"lone{self.n}"]
        return " ".join(words), None, True, self.rng.choice(self.roots)


# ----------------------------------------------------------------------------- comparison
def _all(memory: Any) -> list[Any]:
    return memory.list_records(limit=BIG * 5)


def _check_records(q: Any, oracle: Oracle, label: str) -> None:
    qa = _all(q)
    oa = [oracle.fixed(r) for r in _all(oracle.m)]
    assert len(qa) == len(oa), (label, sorted(r.content for r in qa), sorted(r.content for r in oa))
    assert sorted(map(_rec, qa)) == sorted(map(_rec, oa)), label
    assert [r.content for r in qa] == [r.content for r in oa], (label, "list_records order")
    assert q.list_scopes() == oracle.m.list_scopes(), label
    assert q.list_categories() == oracle.m.list_categories(), label
    for path in ["/"] + oracle.m.list_scopes():
        qi, oi = q.info(path), oracle.m.info(path)
        assert (qi.record_count, qi.categories, qi.child_scopes) == (
            oi.record_count, oi.categories, oi.child_scopes), (label, path)  # fmt: skip


def _match_rows(results: list[Any], lance: bool) -> dict[str, float]:
    return {m.record.content: (_cosine_of_lance(m.score) if lance else m.score) for m in results}


def _check_recall(q: Any, oracle: Oracle, label: str, query: str, depth: str, **kw: Any) -> None:
    got = q.recall(query, depth=depth, limit=BIG, **kw)
    want = [m.model_copy(update={"record": oracle.fixed(m.record)}) for m in
            oracle.m.recall(query, depth=depth, limit=BIG, **kw)]  # fmt: skip
    ctx = (label, depth, query, kw)
    assert sorted(_rec(m.record) for m in got) == sorted(_rec(m.record) for m in want), ctx
    gs, ws = _match_rows(got, False), _match_rows(want, True)
    for content, score in ws.items():
        assert abs(gs[content] - score) <= SCORE_TOL, (ctx, content, gs[content], score)
    pos = {m.record.content: i for i, m in enumerate(got)}
    wl = list(ws.items())
    for (c1, s1), (c2, s2) in zip(wl, wl[1:]):
        if s1 - s2 > SCORE_TOL:
            assert pos[c1] < pos[c2], (ctx, c1, c2, s1, s2)


def _check_recalls(q: Any, oracle: Oracle, g: Gen, label: str) -> None:
    long_query = " ".join(g.rng.choice(FIRST + WORDS) for _ in range(40))  # > 200 chars: LLM analysis
    queries = [" ".join(grp["words"][:2]) for grp in g.rng.sample(g.groups, min(3, len(g.groups)))]
    for query in queries + [long_query]:
        for source in [None, "agent-1", "\u00e4gent 2"]:
            for include_private in (False, True):
                kw: dict[str, Any] = {"source": source, "include_private": include_private}
                _check_recall(q, oracle, label, query, "shallow", **kw)
                _check_recall(q, oracle, label, query, "deep", **kw)
        scope = g.rng.choice(["/crew-a", "/" + g.rng.choice(FIRST), "/crew-b"])
        for depth in ("shallow", "deep"):
            _check_recall(q, oracle, label, query, depth, scope=scope, source="agent-1")


# ----------------------------------------------------------------------------- the fuzz
def _fuzz(q: Any, o: Memory, seed: int, steps: int, roots: list[Any] = ROOTS) -> dict[str, int]:
    g = Gen(seed, roots)
    oracle = Oracle(o)
    seen = {"remember": 0, "many": 0, "dup": 0, "private": 0, "root": 0, "merged": 0}
    for step in range(steps):
        label = f"seed {seed} step {step}"
        r = g.rng.random()
        if r < 0.1:
            text, source, private, root = g.loner()
            got, want = q.remember(text, source=source, private=private, root_scope=root), o.remember(
                text, source=source, private=private, root_scope=root)  # fmt: skip
            oracle.settle()
            assert _rec(got) == _rec(oracle.fixed(want)), label
        elif r < 0.5:
            grp = g._group()
            text = g.text(grp)
            source, private = g.writer(grp)
            if g.rng.random() < 0.1 and grp.get("last"):
                text = grp["last"]  # the same text again: the stand-in updates it to itself
            grp["last"] = text
            before = len(_all(o))
            f = g.fields(grp)
            got = q.remember(text, source=source, private=private, **f)
            want = o.remember(text, source=source, private=private, **f)
            oracle.settle()
            assert got is not None and want is not None, label
            assert _rec(got) == _rec(oracle.fixed(want)), label
            assert got.content == text  # the stand-in merges the newer text in
            seen["merged"] += len(_all(o)) == before
            seen["remember"] += 1
            seen["private"] += private
            seen["root"] += grp["root"] is not None
        else:
            first = g._group()
            source, private = g.writer(first)
            same = [x for x in g.groups if x["root"] == first["root"] and x is not first
                    and x["owner"] == first["owner"] and x["scope"] == first["scope"]]  # fmt: skip
            chosen = [first] + g.rng.sample(same, min(len(same), g.rng.randint(0, 3)))
            texts = [g.text(x) for x in chosen]
            if g.rng.random() < 0.5:  # a duplicate (exact, or another case): dropped by both
                dup = g.rng.choice(texts)
                texts.insert(g.rng.randint(1, len(texts)), dup if g.rng.random() < 0.5 else dup.upper())
                seen["dup"] += 1
            f = g.fields(first)
            assert q.remember_many(texts, source=source, private=private, **f) == []
            assert o.remember_many(texts, source=source, private=private, **f) == []
            q.drain_writes()
            oracle.settle()
            seen["many"] += 1
            seen["private"] += private
        _check_records(q, oracle, label)
    _check_recalls(q, oracle, g, f"seed {seed} end")
    seen["oracle_updates_fixed"] = oracle.updates
    return seen


@pytest.mark.parametrize("seed", [11, 13])
def test_worker_encoding_flow_matches_crewai(pair, seed):
    q, o = pair
    seen = _fuzz(q, o, seed, steps=22)
    assert all(seen[k] for k in ("remember", "many", "dup", "private", "root", "merged")), seen
    # inference and consolidation ran in the worker, not in the agent's process
    assert q._llm.calls.get("save", 0) == q._llm.calls.get("consolidation", 0) == 0
    worker_llm = crewai_config.worker_memory_config().llm
    assert worker_llm.calls.get("save", 0) > 0 and worker_llm.calls.get("consolidation", 0) > 0


def test_memory_root_scope_flow_matches_crewai(server, namespace, tmp_path, monkeypatch):
    """Both memories built with ``root_scope="/tenant"``: inferred scopes nest under it
    (a call's own root_scope replaces it), consolidation stays inside it, and deep and
    shallow recall (scoped to the root by default) return the same records."""
    q, o, close = _make_pair(server, namespace, tmp_path, monkeypatch, STANDIN, StandInLLM(),
                             root_scope="/tenant")  # fmt: skip
    try:
        # the memory's root for every call (list_records lists under it only)
        seen = _fuzz(q, o, 22, steps=18, roots=[None])
        assert seen["remember"] and seen["many"] and seen["merged"], seen
        scopes = {r.scope for r in _all(o)}
        assert any(s.startswith("/tenant/") for s in scopes), scopes
    finally:
        close()


@pytest.mark.parametrize("plan", ["auto"])
def test_scripted_update_and_delete_match_crewai(server, namespace, tmp_path, monkeypatch, plan):
    """A scripted consolidation LLM (update the most similar record shown, or delete it
    and insert the new text when the text says DELETE), in the worker and in CrewAI:
    the same records are updated, deleted and inserted, with inferred fields; a
    public boundary shared by three sources, a private one of one source."""
    q, o, close = _make_pair(server, namespace, tmp_path, monkeypatch, SCRIPTED,
                             ScriptedConsolidationLLM(plan=plan), plan=plan)  # fmt: skip
    try:
        oracle = Oracle(o)
        rng = random.Random(7)
        deletes = 0
        for step in range(24):
            label = f"scripted step {step}"
            words = [rng.choice(FIRST)] + rng.sample(WORDS, rng.randint(2, 4)) + [f"fact{step}"]
            if rng.random() < 0.3:
                words.insert(rng.randint(1, len(words)), "DELETE")
                deletes += 1
            text = " ".join(words)
            if rng.random() < 0.3:
                source, private, root = "agent-1", True, "/a1"
            else:
                source, private, root = rng.choice(PUBLIC_SOURCES), False, "/pub"
            if rng.random() < 0.25:  # a batch of one text and its duplicate
                assert q.remember_many([text, text.upper()], source=source, private=private, root_scope=root) == []
                o.remember_many([text, text.upper()], source=source, private=private, root_scope=root)
                q.drain_writes()
                oracle.settle()
            else:
                got = q.remember(text, source=source, private=private, root_scope=root)
                want = o.remember(text, source=source, private=private, root_scope=root)
                oracle.settle()
                assert _rec(got) == _rec(oracle.fixed(want)), label
            _check_records(q, oracle, label)
        assert deletes and oracle.updates, (deletes, oracle.updates)
        shown = crewai_config.worker_memory_config().llm.shown
        assert any("DELETE" in s["new"] for s in shown) and any("DELETE" not in s["new"] for s in shown)
        for query in ["apple deploy", "river coffee", "stone"]:
            for source in PUBLIC_SOURCES:
                for depth in ("shallow", "deep"):
                    _check_recall(q, oracle, "scripted", query, depth, source=source)
                    _check_recall(q, oracle, "scripted", query, depth, source=source, include_private=True)
    finally:
        close()
