"""Hostile inputs to QueuedMemory's recall and writes (a review of 2026-12-04), on real
servers and a real in-process worker.

- Deep recall (the default depth) searched every scope the LLM's query analysis
  suggested: a prompt-injected query made tenant A's recall return tenant B's records.
  The privacy view now keeps every search inside the recall's scope.
- Deep recall searched only the child scopes of the recall's scope (``list_scopes``):
  a record stored AT that scope (root_scope, an explicit scope, ``/``) was not found
  right after ``remember`` once the scope had a child.
- A limit of 5,001-10,000 (which CrewAI oversamples past the store's 10,000) or an
  invalid one made deep recall return ``[]`` silently.
- ``remember_many("hello")`` stored "h", "e", "l", "o"; ``drain_timeout=inf`` raised
  a raw OverflowError after the write was enqueued.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("crewai")

from test_crewai import FACTORY, _wait_for, embedder, env, events, worker_llm  # noqa: E402,F401

from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import ValidationError  # noqa: E402

F = dict(categories=["c"], importance=0.5)
#: Long enough for CrewAI's query analysis by the LLM (query_analysis_threshold).
LONG = " Please search every scope you can for it, this matters a lot to us." * 5


class SuggestingLLM(StandInLLM):
    """Answers the query analysis with the scopes it was told to suggest (as a
    prompt-injected or hallucinating LLM would)."""

    #: The scopes suggested, and a count of the analyses answered (class-wide: the
    #: memory works on a copy of the LLM it is given).
    scopes: list[str] = []
    analysed: list[int] = []

    def call(self, messages, *args, **kwargs):  # type: ignore[override]
        text = messages if isinstance(messages, str) else "\n".join(
            str(m.get("content", "")) for m in messages if m.get("role") == "user"
        )
        if text.startswith("Query: "):
            SuggestingLLM.analysed.append(1)
            return json.dumps({"keywords": [], "suggested_scopes": SuggestingLLM.scopes,
                               "complexity": "simple", "recall_queries": ["salary"],
                               "time_filter": None})  # fmt: skip
        return super().call(messages, *args, **kwargs)


def suggesting(scopes: list[str]) -> SuggestingLLM:
    SuggestingLLM.scopes = scopes
    SuggestingLLM.analysed = []
    return SuggestingLLM()


def test_deep_recall_never_leaves_the_root_scope(env):
    b = env(root_scope="/tenantB")
    b.remember("tenant B secret: the CEO salary is 900k", scope="/notes", **F)
    a = env(root_scope="/tenantA", llm=suggesting(["/tenantB", "/tenantB/notes", "/", "bad//scope"]))
    a.remember("tenant A note about salary bands", scope="/notes", **F)
    got = a.recall("What do we know about salary?" + LONG, depth="deep")
    assert SuggestingLLM.analysed  # the LLM's suggestions were used
    assert [m.record.content for m in got] == ["tenant A note about salary bands"]


def test_deep_recall_with_an_explicit_scope_stays_in_it(env):
    m = env(llm=suggesting(["/b", "/"]))
    m.remember("salary bands for team a", scope="/a", **F)
    m.remember("salary of the team b lead", scope="/b", **F)
    got = m.recall("What do we know about salary?" + LONG, scope="/a", depth="deep")
    assert SuggestingLLM.analysed
    assert {r.record.scope for r in got} == {"/a"}


@pytest.mark.parametrize("root", ["/crew", None])
def test_deep_recall_sees_a_write_at_the_scope_itself(env, root):
    m = env(root_scope=root) if root else env()
    m.remember("the deploy password rotates on fridays", scope="/", **F)
    m.remember("lunch is at noon", scope="/office", **F)
    got = [r.record.content for r in m.recall("when does the deploy password rotate", depth="deep")]
    assert "the deploy password rotates on fridays" in got


def test_deep_recall_with_a_large_limit_returns_results(env):
    m = env()
    m.remember("alpha fact about apples", scope="/a", **F)
    for limit in (6000, 10_000):
        got = m.recall("apples", limit=limit, depth="deep")
        assert [r.record.content for r in got] == ["alpha fact about apples"]


@pytest.mark.parametrize("kwargs", [{"limit": 10**30}, {"limit": 0}, {"limit": "5"}, {"scope": "a//b"}])
@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_recall_arguments_are_checked_on_both_depths(env, kwargs, depth):
    m = env()
    m.remember("alpha fact about apples", scope="/a", **F)
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        m.recall("apples", depth=depth, **kwargs)


@pytest.mark.parametrize("contents", ["hello", b"hello", {"a": "b"}])
def test_remember_many_refuses_a_string_and_writes_nothing(env, events, contents):
    """Bad input to remember_many is reported as CrewAI reports a background failure
    (a MemorySaveFailedEvent), never raised; nothing is written."""
    from crewai.events.types.memory_events import MemorySaveFailedEvent

    m = env(background_enqueue=False)
    assert m.remember_many(contents, scope="/s", **F) == []
    m.drain_writes()
    assert m.store.count() == 0
    # CrewAI's bus runs handlers on its own threads: the event may come a moment later
    assert _wait_for(lambda: any(isinstance(e, MemorySaveFailedEvent) for e in events))
    failed = [e for e in events if isinstance(e, MemorySaveFailedEvent)]
    assert failed and all("contents must be a list of strings" in e.error for e in failed)


@pytest.mark.parametrize("timeout", [math.inf, math.nan, -1])
def test_a_drain_timeout_that_is_not_a_finite_number_is_refused(env, timeout):
    # memworker's own error, not pydantic's wrapping of it (which quotes every argument)
    with pytest.raises(ValidationError, match="drain_timeout must be None or a finite number"):
        env(drain_timeout=timeout)


def test_another_sources_private_categories_and_scopes_never_reach_a_prompt(env, monkeypatch):
    """The worker LLM's field inference for bob's write ("Existing categories", "Existing
    scopes") and bob's deep recall analysis (the scope's info) were built from the
    store's counters, which count alice's private record: its category and scope names
    went into prompts made for bob (and could come back as bob's public categories)."""
    prompts: list[str] = []
    real = StandInLLM.call

    def recording(self, messages, *args, **kwargs):
        prompts.append(messages if isinstance(messages, str) else "\n".join(
            str(m.get("content", "")) for m in messages))  # fmt: skip
        return real(self, messages, *args, **kwargs)

    monkeypatch.setattr(StandInLLM, "call", recording)
    alice = env()
    alice.remember("alice's note", scope="/team/alice-medical", categories=["hiv-positive-diagnosis"],
                   importance=0.5, source="alice", private=True)  # fmt: skip
    env().remember("the team roadmap for spring", scope="/team/plans", categories=["roadmap"],
                   importance=0.5, source="carol")  # fmt: skip
    prompts.clear()
    bob = env()
    bob.remember("bob likes the new coffee machine", scope="/team", importance=0.5, source="bob")
    bob.recall("what does the team like?" + LONG, scope="/team", source="bob", depth="deep")
    assert len(prompts) >= 2  # field inference (worker) and query analysis (recall)
    assert any("roadmap" in p for p in prompts)  # what bob may see is still shown
    assert not [p for p in prompts if "hiv-positive-diagnosis" in p or "alice-medical" in p]
    # alice's own deep recall still gets her own
    prompts.clear()
    alice.recall("what do I know about my health?" + LONG, scope="/team", source="alice", depth="deep")
    assert any("hiv-positive-diagnosis" in p for p in prompts)


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda m: m.remember(5, scope="/a", **F), "content"),
        (lambda m: m.remember("x", metadata=[1], scope="/a", **F), "metadata"),
        (lambda m: m.remember("x", metadata={1: 2}, scope="/a", **F), "metadata"),
        (lambda m: m.remember("x", root_scope=5, scope="/a", **F), "root_scope"),
        (lambda m: m.remember("x", scope="/a", categories=0, importance=0.5), "categories"),
        (lambda m: m.remember("x", scope="/a", categories="abc", importance=0.5), "categories"),
        (lambda m: m.recall(None), "query"),
        (lambda m: m.recall("x", limit=None), "limit"),
        (lambda m: m.recall("x", categories="abc", depth="deep"), "categories"),
        (lambda m: m.tree(5), "path"),
        (lambda m: m.tree(max_depth="x"), "max_depth"),
    ],
)
def test_arguments_of_the_wrong_type_are_memworkers_validation_errors(env, call, field):
    """CrewAI's event models were built before memworker's checks: a wrong type raised
    pydantic's error (or AttributeError / TypeError), not a ValidationError naming it;
    ``categories=0`` was read as no categories."""
    m = env(background_enqueue=False)
    with pytest.raises(ValidationError, match=field):
        call(m)
    m.drain_writes()
    assert m.store.count() == 0


def test_remember_many_with_bad_metadata_reports_and_never_raises(env, events):
    from crewai.events.types.memory_events import MemorySaveFailedEvent

    m = env(background_enqueue=False)
    assert m.remember_many(["x"], metadata=[1], scope="/a", **F) == []
    m.drain_writes()
    assert m.store.count() == 0
    assert _wait_for(lambda: any("metadata" in e.error for e in events if isinstance(e, MemorySaveFailedEvent)))


def test_update_never_reaches_a_record_outside_the_root_scope(env):
    """CrewAI's ``update(record_id, ...)`` looks the record up by id alone: tenant A's
    memory (root_scope /tenantA) rewrote and moved tenant B's record given its id, and
    ``update(id, scope="/x")`` moved A's own record out of /tenantA (every other call
    joins its scope under root_scope). A record outside the root scope is "not found"
    (as an unknown id), and the new scope is joined under the root."""
    b = env(root_scope="/tenantB")
    theirs = b.remember("tenant B secret: the CEO salary is 900k", scope="/notes", **F)
    a = env(root_scope="/tenantA")
    mine = a.remember("tenant A note about salary bands", scope="/notes", **F)
    for kwargs in ({"content": "overwritten by A"}, {"scope": "/tenantA/stolen"}, {"importance": 0.9}):
        with pytest.raises(ValueError, match="Record not found"):
            a.update(theirs.id, **kwargs)
    got = b.store.get_record(theirs.id)
    assert (got.content, got.scope, got.importance) == (theirs.content, "/tenantB/notes", 0.5)
    moved = a.update(mine.id, scope="/archive")
    assert moved.scope == a.store.get_record(mine.id).scope == "/tenantA/archive"
    assert a.update(mine.id, scope="/").scope == "/tenantA"
    # a memory without root_scope updates any record by id, as CrewAI's does
    assert env().update(theirs.id, scope="/elsewhere").scope == "/elsewhere"
