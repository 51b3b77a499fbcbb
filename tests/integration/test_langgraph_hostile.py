"""Hostile inputs to memworker.langgraph.QueuedStore (a review of 2026-12-05), on real
servers and real in-process workers (the fixtures of test_langgraph.py).

- The default index fields (``["$"]``: the whole value) embedded nothing: the path was
  tokenized to a field literally named "$".
- A batch refused for a bad read op (filter, limit, match type) had already written
  its puts and deletes.
- A value nested deeper than the limit in an indexed field raised RecursionError (a
  RuntimeError); a cyclic one a bare ValueError.
- A put whose indexed text was only whitespace was refused, naming ``items[N]``.
- An operator below a plain dict condition was never checked: KeyError at search.
- A search query with a lone surrogate raised the tokenizer's TypeError.
- A refused put still recorded the store's sweep interval; with an ``embed`` in the
  agent, a batch was embedded (a paid API called) before it was refused.
- Errors copied a whole 100,000-character key, and named internal fields
  (``items[0].scope has 33 levels``, ``categories[0]``, ``scope_prefix``).
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import ListNamespacesOp, MatchCondition, PutOp, SearchOp  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder, lg, make_store, settings, worker  # noqa: E402,F401

from memworker.errors import ValidationError  # noqa: E402
from memworker.io.redispy import redis_client  # noqa: E402

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)


@pytest.mark.parametrize("index", [{"dims": DIM}, {"dims": DIM, "fields": ["$"]}])
def test_the_default_fields_embed_the_whole_value(make_store, index):
    store = make_store(index=index)
    store.put(("a",), "fruit", {"text": "apple", "n": 1})
    store.put(("a",), "pet", {"text": "dog", "n": 2})
    hits = store.search(("a",), query="apple")
    assert [h.key for h in hits][:1] == ["fruit"] and hits[0].score > 0.5
    # a put naming "$" itself, on a store indexing one field
    other = make_store()
    other.put(("b",), "whole", {"title": "engine"}, index=["$"])
    assert [h.key for h in other.search(("b",), query="engine")][:1] == ["whole"]


@pytest.mark.parametrize(
    "bad",
    [
        SearchOp(("a",), filter={"n": {"$regex": ".*"}}),
        SearchOp(("a",), limit=-1),
        SearchOp(("a",), offset=-1),
        SearchOp(("a",), filter=["n"]),
        SearchOp(("a",), filter={"meta": {"n": {"$in": [1]}}}),
        SearchOp(("a",), query="bad \ud800 query"),
        ListNamespacesOp(limit=-1),
        ListNamespacesOp(max_depth=-1),
        ListNamespacesOp(match_conditions=(MatchCondition("middle", ("a",)),)),
    ],
    ids=["operator", "limit", "offset", "filter-list", "nested-operator", "surrogate",
         "ns-limit", "ns-depth", "match-type"],  # fmt: skip
)
def test_a_batch_refused_for_a_bad_read_writes_nothing(lg, bad):
    lg.put(("a",), "victim", {"text": "apple"})
    with pytest.raises(ValidationError):
        lg.batch([PutOp(("a",), "new", {"text": "dog"}), PutOp(("a",), "victim", None), bad])
    assert lg.get(("a",), "new") is None
    assert lg.get(("a",), "victim") is not None


def test_a_value_nested_too_deep_or_cyclic_in_an_indexed_field_is_a_validation_error(lg):
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    cyclic: dict = {}
    cyclic["self"] = cyclic
    for value in ({"text": deep}, {"text": cyclic}):
        with pytest.raises(ValidationError, match="nested more than 32 levels"):
            lg.put(("a",), "deep", value)
    assert lg.get(("a",), "deep") is None


def test_a_blank_indexed_text_is_stored_unembedded_and_errors_name_the_put(lg):
    for i, text in enumerate(["   ", "\n", "\t "]):
        lg.put(("a",), f"blank{i}", {"text": text})
        assert lg.get(("a",), f"blank{i}").value == {"text": text}
    with pytest.raises(ValidationError, match="put of 'bad'"):
        lg.batch([PutOp(("a",), "good", {"text": "apple"}), PutOp(("a",), "plain", {"x": 1}, index=False),
                  PutOp(("a",), "bad", {"text": "apple \ud800"})])  # fmt: skip
    assert lg.get(("a",), "good") is None


@pytest.mark.parametrize(
    "flt,operator",
    [
        ({"meta": {"name": {"$in": "x"}}}, "$in"),
        ({"meta": {"score": {"$gt": 1, "foo": 2}}}, "foo"),
        ({"meta": {"score": {"$regex": ".*"}}}, "$regex"),
        ({"meta": {"deeper": {"score": {"$gt": 1, "$exists": True}}}}, "$exists"),
    ],
)
def test_an_operator_below_a_plain_dict_is_checked(lg, flt, operator):
    lg.put(("f",), "k", {"text": "apple", "meta": {"score": 5, "name": "x"}})
    for query in (None, "apple"):
        with pytest.raises(ValidationError, match=f"unsupported operator '\\{operator}'" if operator[0] == "$"
                           else f"unsupported operator '{operator}'"):  # fmt: skip
            lg.search(("f",), query=query, filter=flt)
    # nested operators LangGraph supports still match
    assert [h.key for h in lg.search(("f",), filter={"meta": {"score": {"$gt": 1}, "name": "x"}})] == ["k"]


def test_a_refused_put_records_no_sweep_interval(make_store, settings):
    store = make_store(ttl={"sweep_interval_minutes": 5})
    with pytest.raises(ValidationError):
        store.put(("n",), "fat", {"text": "apple " * 12_000}, index=["text"])  # 72 KB > 64 KiB
    client = redis_client(settings)
    try:
        assert client.hget(store.store.keys.meta, "sweep_ms") is None
    finally:
        client.close()
    store.put(("n",), "ok", {"text": "apple"})
    client = redis_client(settings)
    try:
        assert client.hget(store.store.keys.meta, "sweep_ms") not in (None, b"")
    finally:
        client.close()


def test_a_batch_is_validated_before_a_local_embedder_is_called(make_store):
    calls: list[int] = []
    words = WordEmbedder()

    def embed(texts):
        calls.append(len(texts))
        return [list(map(float, v)) for v in words.encode(texts)]

    store = make_store(index={"dims": DIM, "embed": embed, "fields": ["text"]})
    ops = [PutOp(("a",), f"k{i}", {"text": "apple"}) for i in range(50)]
    ops.append(PutOp(("a",), "huge", {"text": "dog", "n": 10**400}))
    with pytest.raises(ValidationError, match="put of 'huge'"):
        store.batch(ops)
    assert calls == []
    assert store.get(("a",), "k0") is None


def test_errors_name_the_namespace_and_a_shortened_key(lg):
    long_key = "K" * 100_000
    with pytest.raises(ValidationError) as info:
        lg.put(("a",), long_key, {"n": 10**400})
    assert len(str(info.value)) < 400 and "KKKK" in str(info.value)
    with pytest.raises(ValidationError, match="namespace has 32 labels, the limit is 31"):
        lg.put(tuple(f"l{i}" for i in range(32)), "k", {"n": 1})
    with pytest.raises(ValidationError, match="namespace of a put has no label"):
        lg.batch([PutOp((), "k", {"n": 1})])
    with pytest.raises(ValidationError, match="namespace_prefix is .* characters"):
        lg.search(("x" * 2000, "y" * 2000))
    assert lg.search(tuple(f"l{i}" for i in range(31))) == []


def test_two_puts_of_one_key_in_a_group_the_later_refused_keep_the_earlier(lg, monkeypatch):
    """Concurrent puts of ONE key met in a group commit, the later too big for a job:
    the group sent only the later version, and its refusal failed BOTH callers; the
    earlier, valid put was lost. Now the earlier version goes and its caller succeeds."""
    earlier, later = {"id": "a", "ver": 1}, {"id": "a", "ver": 2}
    sent = []

    def enqueue(items):
        sent.append([i["ver"] for i in items])
        if any(i is later for i in items):
            raise ValidationError("too big")

    monkeypatch.setattr(lg.queue, "enqueue_encode_items", enqueue)
    verdicts = lg._send_group([earlier, later])
    assert sent == [[2], [2], [1]]
    assert verdicts[0] is None and isinstance(verdicts[1], ValidationError)

    async def aenqueue(items):
        enqueue(items)

    sent.clear()
    monkeypatch.setattr(lg.queue, "aenqueue_encode_items", aenqueue)
    verdicts = asyncio.run(lg._asend_group([earlier, later]))
    assert sent == [[2], [2], [1]]
    assert verdicts[0] is None and isinstance(verdicts[1], ValidationError)
