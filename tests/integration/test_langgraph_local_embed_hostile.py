"""QueuedStore with an embedder in the agent's process (``index["embed"]``: a LangChain
``Embeddings``, a sync function, an async function; docs/langgraph.md "Embedders"),
against LangGraph's ``InMemoryStore`` given the same index config as the oracle, on the
sync and async faces, from many threads and many tasks, on the standalone server and
the module server (a review of 2026-12-05).

Hostile embedders: the wrong number of vectors, wrong or changing dimensions, NaN,
infinity, numpy arrays, ints, an empty list, exceptions (``BaseException`` subclasses
too), slow ones, async-only from the sync face and sync-only from the async face, one
that mutates its input list. Expected: what ``InMemoryStore`` returns when it succeeds;
otherwise memworker's error (or the embedder's own exception) from the put, nothing
of the batch written, and no later put or read broken.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langgraph.store.base")

from langchain_core.embeddings import Embeddings  # noqa: E402
from langgraph.store.base import GetOp, PutOp, SearchOp  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder, settings, worker  # noqa: E402,F401

from memworker.errors import ConfigError, MemworkerError, ValidationError  # noqa: E402
from memworker.langgraph import QueuedStore  # noqa: E402

NS = ("emb",)
_WORDS = WordEmbedder()


def vectors(texts) -> list[list[float]]:
    return _WORDS.encode(list(texts)).tolist()


class LCEmbeddings(Embeddings):
    """A LangChain Embeddings object (sync and async methods)."""

    def embed_documents(self, texts):
        return vectors(texts)

    def embed_query(self, text):
        return vectors([text])[0]


def sync_fn(texts):
    return vectors(texts)


async def async_fn(texts):
    await asyncio.sleep(0)
    return vectors(texts)


EMBEDS = {"lc": LCEmbeddings, "sync-fn": lambda: sync_fn, "async-fn": lambda: async_fn}


@pytest.fixture
def make(settings, worker):
    made: list[QueuedStore] = []

    def make_store(embed: Any, fields: list[str] | None = None) -> QueuedStore:
        s = QueuedStore(settings, index={"dims": DIM, "embed": embed, "fields": fields or ["text"]})
        made.append(s)
        return s

    yield make_store
    if made:
        made[0].store.reset()
    for s in made:
        s.close()


def oracle(embed: Any, fields: list[str] | None = None) -> InMemoryStore:
    return InMemoryStore(index={"dims": DIM, "embed": embed, "fields": fields or ["text"]})


def text(i: int) -> str:
    # no word of WordEmbedder's list: each text its own hash-seeded direction, so scores
    # are distinct and a search's order is defined
    return f"memo-{i} zz{i * 7919 % 1000}"


def page(items) -> list[tuple[str, dict, float | None]]:
    return [(it.key, it.value, getattr(it, "score", None)) for it in items]


def same_page(got, want) -> None:
    """The same items with the same scores to float32 precision (the module's distances
    are float32), in score order (items whose scores tie to that precision in any order)."""
    assert sorted((k, str(v)) for k, v, _ in got) == sorted((k, str(v)) for k, v, _ in want)
    want_score = {k: sc for k, _, sc in want}
    for k, _, sc in got:
        assert sc == pytest.approx(want_score[k], abs=1e-3), k
    scores = [sc for _, _, sc in got]
    assert all(a >= b - 1e-3 for a, b in zip(scores, scores[1:])), scores


def assert_same(lg: QueuedStore, ref: InMemoryStore, keys: list[str], query: str = "memo-3 zz") -> None:
    for k in keys:
        got, want = lg.get(NS, k), ref.get(NS, k)
        assert (got and got.value) == (want and want.value), k
    got_hits = page(lg.search(NS, query=query, limit=len(keys) + 5))
    want_hits = [h for h in page(ref.search(NS, query=query, limit=len(keys) + 5)) if h[2] is not None]
    same_page(got_hits, want_hits)
    listed = sorted((h.key, str(h.value)) for h in lg.search(NS, limit=len(keys) + 5))
    assert listed == sorted((h.key, str(h.value)) for h in ref.search(NS, limit=len(keys) + 5))


async def aassert_same(lg: QueuedStore, ref: InMemoryStore, keys: list[str], query: str = "memo-3 zz") -> None:
    for k in keys:
        got, want = await lg.aget(NS, k), await ref.aget(NS, k)
        assert (got and got.value) == (want and want.value), k
    got_hits = page(await lg.asearch(NS, query=query, limit=len(keys) + 5))
    want_hits = [h for h in page(await ref.asearch(NS, query=query, limit=len(keys) + 5)) if h[2] is not None]
    same_page(got_hits, want_hits)


# ------------------------------------------------------------------ the faces, concurrent
@pytest.mark.parametrize("kind", ["lc", "sync-fn"])
def test_sync_face_from_many_threads_matches_inmemorystore(make, kind):
    embed = EMBEDS[kind]()
    lg, ref = make(embed), oracle(embed)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for i in range(t * 6, t * 6 + 6):
                for s in (lg, ref):
                    s.put(NS, f"k{i}", {"text": text(i), "i": i})
                if i % 3 == 0:
                    ops = [PutOp(NS, f"b{i}", {"text": text(i + 100)}), PutOp(NS, f"u{i}", {"x": i}, index=False)]
                    lg.batch(ops)
                    ref.batch(ops)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not [th for th in threads if th.is_alive()] and errors == []
    keys = [f"k{i}" for i in range(48)] + [f"b{i}" for i in range(0, 48, 3)] + [f"u{i}" for i in range(0, 48, 3)]
    assert_same(lg, ref, keys)


@pytest.mark.parametrize("kind", ["lc", "sync-fn", "async-fn"])
def test_async_face_from_many_tasks_matches_inmemorystore(make, kind):
    """LangGraph's documented async embedder (``async def aembed_texts``) works with
    InMemoryStore's ``aput``/``asearch``; a sync one too (run in a thread)."""
    embed = EMBEDS[kind]()
    lg, ref = make(embed), oracle(embed)

    async def main() -> None:
        async def one(i: int) -> None:
            await lg.aput(NS, f"k{i}", {"text": text(i), "i": i})
            await ref.aput(NS, f"k{i}", {"text": text(i), "i": i})

        await asyncio.gather(*(one(i) for i in range(40)))
        ops = [PutOp(NS, "b", {"text": text(500)}), PutOp(NS, "u", {"x": 1}, index=False)]
        await lg.abatch(ops)
        await ref.abatch(ops)
        await aassert_same(lg, ref, [f"k{i}" for i in range(40)] + ["b", "u"])
        await lg.aclose()

    asyncio.run(main())


def test_an_async_only_embedder_on_the_sync_face_is_refused_like_inmemorystore(make):
    lg, ref = make(async_fn), oracle(async_fn)
    with pytest.raises(ValueError) as want:
        ref.put(NS, "k", {"text": text(1)})
    with pytest.raises(ValueError) as got:
        lg.put(NS, "k", {"text": text(1)})
    assert str(got.value) == str(want.value)
    # an unindexed put needs no embedder, on both
    lg.put(NS, "plain", {"text": text(2)}, index=False)
    ref.put(NS, "plain", {"text": text(2)}, index=False)
    assert lg.get(NS, "k") is None and lg.get(NS, "plain").value == ref.get(NS, "plain").value
    assert [h.key for h in lg.search(NS)] == ["plain"]


# ------------------------------------------------------------------ hostile return values
class Hostile:
    """A sync embedder whose reply is chosen by ``mode`` (``None``: a good one)."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        good = vectors(texts)
        m = self.mode
        if m is None:
            return good
        if m == "fewer":
            return good[:-1]
        if m == "more":
            return good + good[:1]
        if m == "empty":
            return []
        if m == "iterator":
            return iter(good)
        if m == "map":
            return map(list, good)
        if m == "short-dims":
            return [v[:-1] for v in good]
        if m == "long-dims":
            return [v + [0.5] for v in good]
        if m == "mixed-dims":  # the last text's vector one too long
            return good[:-1] + [v + [0.5] for v in good[-1:]]
        if m == "nan":
            return [[float("nan")] + v[1:] for v in good]
        if m == "inf":
            return [v[:-1] + [float("inf")] for v in good]
        if m == "huge":
            return [[1e39] + v[1:] for v in good]
        if m == "strings":
            return [[str(x) for x in v] for v in good]
        if m == "none":
            return None
        if m == "numpy-2d":
            return np.asarray(good, dtype=np.float64)
        if m == "numpy-rows":
            return [np.asarray(v, dtype=np.float32) for v in good]
        if m == "ints":
            return [[int(round(x * 10)) or 1 for x in v] for v in good]
        if m == "tuples":
            return [tuple(v) for v in good]
        raise AssertionError(m)


def _batch(n: int = 3) -> list[PutOp]:
    ops = [PutOp(NS, f"k{i}", {"text": text(i)}) for i in range(n)]
    ops.insert(1, PutOp(NS, "plain", {"text": text(99)}, index=False))  # not indexed, same batch
    return ops


REFUSED = ["fewer", "more", "empty", "iterator", "map", "short-dims", "long-dims", "mixed-dims",
           "nan", "inf", "huge", "strings"]  # fmt: skip


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("mode", REFUSED)
def test_a_bad_embedder_reply_refuses_the_batch_whole(make, mode, face):
    emb = Hostile()
    lg = make(emb)
    lg.put(NS, "before", {"text": text(50)})
    emb.mode = mode
    ops = _batch()
    if face == "sync":
        with pytest.raises(Exception) as info:
            lg.batch(ops)
        with pytest.raises(Exception):
            lg.put(NS, "single", {"text": text(7)})
    else:

        async def main() -> None:
            with pytest.raises(Exception) as info:
                await lg.abatch(ops)
            with pytest.raises(Exception):
                await lg.aput(NS, "single", {"text": text(7)})
            await lg.aclose()
            return info

        info = asyncio.run(main())
    # memworker's own error (a bare TypeError/IndexError of its code is not one)
    assert isinstance(info.value, MemworkerError), repr(info.value)
    assert emb.calls, "the embedder was called"
    # nothing of the batch written, the unindexed put included; earlier items intact
    emb.mode = None
    for k in ["k0", "k1", "k2", "plain", "single"]:
        assert lg.get(NS, k) is None, (mode, k)
    assert [h.key for h in lg.search(NS)] == ["before"]
    # later puts and reads work
    lg.put(NS, "after", {"text": text(51)})
    assert lg.get(NS, "after").value == {"text": text(51)}
    assert [h.key for h in lg.search(NS, query=text(51), limit=1)] == ["after"]


@pytest.mark.parametrize("mode", ["fewer", "empty", "iterator"])
def test_a_put_that_returned_is_readable_whatever_the_embedder_returned(make, mode):
    """A put that returned without an error is read back by the next get (the drain
    barrier); an embedder that answers one text with no vector (or with an iterator of
    good vectors) must not make a put that "succeeded" vanish."""
    emb = Hostile()
    emb.mode = mode
    lg = make(emb)
    try:
        lg.put(NS, "k", {"text": text(1)})
    except MemworkerError:
        return  # refused: nothing promised
    assert lg.get(NS, "k") is not None, f"the put returned, its item is lost ({mode})"


@pytest.mark.parametrize("face", ["sync", "async"])
def test_an_embedder_returning_none_writes_nothing(make, face):
    emb = Hostile()
    lg = make(emb)
    emb.mode = "none"
    if face == "sync":
        with pytest.raises(Exception):
            lg.batch(_batch())
    else:

        async def main() -> None:
            with pytest.raises(Exception):
                await lg.abatch(_batch())
            await lg.aclose()

        asyncio.run(main())
    emb.mode = None
    assert lg.search(NS) == []
    lg.put(NS, "after", {"text": text(51)})
    assert [h.key for h in lg.search(NS, query=text(51))] == ["after"]


def test_a_value_error_names_the_put_for_non_finite_vectors(make):
    emb = Hostile()
    lg = make(emb)
    for mode in ("nan", "inf", "huge"):
        emb.mode = mode
        with pytest.raises(ValidationError, match="put of 'the-key'"):
            lg.put(NS, "the-key", {"text": text(1)})


@pytest.mark.parametrize("mode", ["numpy-2d", "numpy-rows", "ints", "tuples"])
def test_odd_but_valid_vector_types_match_inmemorystore(make, mode):
    emb = Hostile()
    emb.mode = mode
    lg, ref = make(emb), oracle(emb)
    ops = [PutOp(NS, f"k{i}", {"text": text(i)}) for i in range(6)]
    lg.batch(ops)
    ref.batch(ops)
    lg.put(NS, "single", {"text": text(40)})
    ref.put(NS, "single", {"text": text(40)})
    assert_same(lg, ref, [f"k{i}" for i in range(6)] + ["single"], query=text(3))


def test_dims_changing_between_calls_refuse_only_the_bad_call(make):
    emb = Hostile()
    lg = make(emb)
    lg.put(NS, "a", {"text": text(1)})
    emb.mode = "long-dims"
    with pytest.raises((ValidationError, ConfigError)):
        lg.put(NS, "b", {"text": text(2)})
    emb.mode = None
    lg.put(NS, "c", {"text": text(3)})
    assert lg.get(NS, "b") is None
    assert sorted(h.key for h in lg.search(NS, query=text(3))) == ["a", "c"]
    assert lg.search(NS, query=text(3))[0].key == "c"


# ------------------------------------------------------------------ exceptions, slow, mutating
class Boom(BaseException):
    """A BaseException that is not KeyboardInterrupt or SystemExit."""


@pytest.mark.parametrize("exc", [ValueError, RuntimeError, Boom], ids=["ValueError", "RuntimeError", "BaseException"])
def test_an_embedder_exception_reaches_each_caller_and_writes_nothing(make, exc):
    def embed(texts):
        if any("bad" in t for t in texts):
            raise exc("embedder refused")
        return vectors(texts)

    lg, ref = make(embed), oracle(embed)
    outcomes: dict[int, str] = {}

    def run(t: int) -> None:
        for i in range(t * 5, t * 5 + 5):
            bad = i % 4 == 0
            value = {"text": ("bad " if bad else "") + text(i)}
            try:
                lg.put(NS, f"k{i}", value)
                outcomes[i] = "ok"
            except BaseException as e:  # noqa: BLE001
                outcomes[i] = type(e).__name__
            if not bad:
                ref.put(NS, f"k{i}", value)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not [th for th in threads if th.is_alive()]
    assert outcomes == {i: (exc.__name__ if i % 4 == 0 else "ok") for i in range(30)}
    assert_same(lg, ref, [f"k{i}" for i in range(30)])

    # the async face: each task its own outcome, the loop still serves the others
    async def main() -> dict[int, str]:
        async def one(i: int) -> str:
            try:
                await lg.aput(NS, f"a{i}", {"text": ("bad " if i % 3 == 0 else "") + text(i)})
                return "ok"
            except BaseException as e:  # noqa: BLE001
                return type(e).__name__

        got = await asyncio.gather(*(one(i) for i in range(12)))
        items = [await lg.aget(NS, f"a{i}") for i in range(12)]
        await lg.aclose()
        return got, items

    got, items = asyncio.run(main())
    assert got == [exc.__name__ if i % 3 == 0 else "ok" for i in range(12)]
    assert [it is not None for it in items] == [i % 3 != 0 for i in range(12)]


def test_a_slow_embedder_blocks_neither_the_loop_nor_a_cancelled_put_writes(make):
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def embed(texts):
        if any("slow" in t for t in texts):
            started.set()
            release.wait(30)  # released by a task of the loop: only if the loop runs
            finished.set()
        return vectors(texts)

    lg = make(embed)

    async def main() -> bool:
        put = asyncio.create_task(lg.aput(NS, "slow", {"text": "slow " + text(1)}))
        other = await asyncio.gather(lg.aput(NS, "fast", {"text": text(2)}), asyncio.to_thread(started.wait, 30))
        assert other[1] is True
        put.cancel()  # cancelled while its embedder runs
        released_by_loop = not release.is_set()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await put
        await asyncio.to_thread(finished.wait, 30)
        await asyncio.sleep(0.05)
        fast = await lg.aget(NS, "fast")
        await lg.aclose()
        return released_by_loop and fast is not None

    assert asyncio.run(main())
    assert lg.get(NS, "slow") is None  # a put cancelled before it was sent is not written
    lg.put(NS, "slow", {"text": "slow " + text(1)})
    assert lg.get(NS, "slow").value == {"text": "slow " + text(1)}


def test_an_embedder_that_mutates_its_input_list(make):
    def embed(texts):
        out = vectors(texts)
        texts.reverse()
        texts.append("junk")
        texts[0] = "changed"
        return out

    lg, ref = make(embed), oracle(embed)
    ops = [PutOp(NS, f"k{i}", {"text": text(i), "i": i}) for i in range(5)]
    lg.batch(ops)
    ref.batch(ops)
    assert_same(lg, ref, [f"k{i}" for i in range(5)], query=text(2))
    assert lg.search(NS, query=text(2))[0].key == "k2"


def test_blank_texts_for_every_field_are_stored_unembedded_and_not_sent_to_the_embedder(make):
    calls: list[list[str]] = []

    def embed(texts):
        calls.append(list(texts))
        return vectors(texts)

    fields = ["text", "title"]
    lg = make(embed, fields)  # (InMemoryStore miscounts two fields of one text: no oracle here)
    ops = [
        PutOp(NS, "empty", {"text": "", "title": ""}),
        PutOp(NS, "blank", {"text": "  \n\t", "title": " "}),
        PutOp(NS, "none", {"other": 1}),
    ]
    lg.batch(ops)
    assert calls == []  # nothing to embed: the embedder (a paid API) is not called
    lg.put(NS, "real", {"text": text(1), "title": ""})
    assert calls == [[text(1)]]
    values = {op.key: op.value for op in ops} | {"real": {"text": text(1), "title": ""}}
    for k, v in values.items():
        assert lg.get(NS, k).value == v
    assert sorted(h.key for h in lg.search(NS)) == sorted(values)
    # a query search returns the embedded items only (documented)
    assert [h.key for h in lg.search(NS, query=text(1))] == ["real"]


def test_a_batch_with_a_get_and_a_search_embeds_and_answers_like_inmemorystore(make):
    lg, ref = make(sync_fn), oracle(sync_fn)
    for s in (lg, ref):
        s.put(NS, "seed", {"text": text(1)})
    ops = [PutOp(NS, "new", {"text": text(2)}), GetOp(NS, "seed"), SearchOp(NS, query=text(1), limit=1)]
    got, want = lg.batch(ops), ref.batch(ops)
    assert got[0] is None and want[0] is None
    assert got[1].value == want[1].value
    assert [h.key for h in got[2]] == [h.key for h in want[2]] == ["seed"]
    assert got[2][0].score == pytest.approx(want[2][0].score, abs=1e-3)
