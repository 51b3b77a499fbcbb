"""Late hostile review (session 33) of 58a68e3..HEAD: the async face's local embedder
(``_aembed``/``_checked``), the drain claim of a failure another drain claimed, and
``dead list`` of an undecodable dead letter (``undecodable_identity``)."""

from __future__ import annotations

import asyncio
import io
import json
import math
from contextlib import redirect_stdout
from typing import Any

import pytest
from test_requeue_hostile import _wait_dead, flaky, workers  # noqa: F401
from test_session33_review_hostile import _drain_with_hook
from test_worker import qsettings, rawq  # noqa: F401

from memworker.cli import main as cli_main
from memworker.errors import MemworkerError
from memworker.queue.admin import dead_list
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue

pytest.importorskip("langgraph.store.base")

from langchain_core.embeddings import Embeddings  # noqa: E402
from test_langgraph import DIM, embedder, settings, worker  # noqa: E402,F401
from test_langgraph_local_embed_hostile import NS, make, text, vectors  # noqa: E402,F401


# ------------------------------------------------------------------ 1. async query embedding
class QueryHostile(Embeddings):
    """Good documents; the query's reply chosen by ``mode``, on both faces."""

    def __init__(self) -> None:
        self.mode: str | None = None

    def _q(self, t: str) -> Any:
        good = vectors([t])[0]
        m = self.mode
        if m is None:
            return good
        if m == "nan":
            return [float("nan")] * len(good)
        if m == "inf":
            return [float("inf")] + good[1:]
        if m == "short":
            return good[:-1]
        if m == "none":
            return None
        if m == "number":
            return 0.5
        raise AssertionError(m)

    def embed_documents(self, texts):
        return vectors(texts)

    def embed_query(self, t):
        return self._q(t)

    async def aembed_documents(self, texts):
        await asyncio.sleep(0)
        return vectors(texts)

    async def aembed_query(self, t):
        await asyncio.sleep(0)
        return self._q(t)


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("mode", ["nan", "inf", "short", "none", "number"])
def test_a_bad_query_embedding_is_a_clear_error_never_a_ranking(make, mode, face):  # noqa: F811
    emb = QueryHostile()
    lg = make(emb)
    for i in range(4):
        lg.put(NS, f"k{i}", {"text": text(i)})
    emb.mode = mode

    async def asearch():
        try:
            return await lg.asearch(NS, query=text(1), limit=4)
        finally:
            await lg.aclose()

    with pytest.raises(MemworkerError):
        hits = lg.search(NS, query=text(1), limit=4) if face == "sync" else asyncio.run(asearch())
        pytest.fail(f"a {mode} query vector gave a ranking: {[(h.key, h.score) for h in hits]}")
    emb.mode = None
    assert [h.key for h in lg.search(NS, query=text(1), limit=1)] == ["k1"]


def test_cancelling_aput_while_an_async_embedder_awaits_writes_nothing(make):  # noqa: F811
    gate: asyncio.Event | None = None
    entered: asyncio.Event | None = None

    class Slow(Embeddings):
        def embed_documents(self, texts):
            return vectors(texts)

        def embed_query(self, t):
            return vectors([t])[0]

        async def aembed_documents(self, texts):
            if any("slow" in t for t in texts):
                entered.set()
                await gate.wait()
            return vectors(texts)

    lg = make(Slow())

    async def main():
        nonlocal gate, entered
        gate, entered = asyncio.Event(), asyncio.Event()
        put = asyncio.create_task(lg.aput(NS, "slow", {"text": "slow " + text(1)}))
        await entered.wait()
        # the loop runs while the embedder awaits: another put completes
        await lg.aput(NS, "fast", {"text": text(2)})
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        gate.set()
        fast = await lg.aget(NS, "fast")
        slow = await lg.aget(NS, "slow")
        await lg.aclose()
        return fast, slow

    fast, slow = asyncio.run(main())
    assert fast is not None and slow is None
    lg.put(NS, "slow", {"text": "slow again"})
    assert lg.get(NS, "slow").value == {"text": "slow again"}


# ------------------------------------------------------------------ 2. drain claim
def test_a_failure_claimed_by_a_concurrent_drain_is_reported_once_in_total(qsettings, rawq, flaky, workers):  # noqa: F811
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="twin") as queue, MemoryQueue(qsettings, producer_id="twin") as twin:
        job_id, _ = queue.enqueue_encode_job(["poison kiwi"])
        ok_id, _ = queue.enqueue_encode_job(["fine apple"])
        assert [e["job_id"] for e in _wait_dead(qsettings, 1)] == [job_id]
        other: list[Any] = []
        first = _drain_with_hook(queue, lambda: other.append(twin.drain(timeout=30)))
        third = queue.drain(timeout=5)
        reports = [first, *other, third]
        failed = [f.job_id for r in reports for f in r.failed]
        assert failed.count(job_id) == 1, failed
        assert sum(r.committed for r in reports) == 1
        keys = QueueKeys(qsettings.namespace).producer("twin")
        assert rawq.hlen(keys.failed) == 0


# ------------------------------------------------------------------ 3. dead list
def _plant_dead(rawq, qsettings, mid: str, body: bytes) -> None:  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    rawq.zadd(keys.dead(), {mid: 1_700_000_000_000})
    rawq.hset(keys.dead_msgs(), mid, body)


def _cli(qsettings, *extra) -> str:  # noqa: F811
    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli_main(["dead", "list", "--url", qsettings.url(), "--namespace", qsettings.namespace, *extra])
    assert rc == 0
    return out.getvalue()


HOSTILE = "\x1b[2J\x1b]0;pwned\x07\nFORGED LINE\r"


def _undecodable(job: str, items: list[Any]) -> bytes:
    msg = {"queue_name": "memworker", "actor_name": "encode_records", "args": [
        {"job": job, "producer": "p1", "items": items, "note": "X"}], "kwargs": {}, "options": {}}
    # one byte that is not UTF-8: the message is undecodable, the rest valid JSON
    return json.dumps(msg).encode().replace(b'"X"', b'"\xff"')


def test_an_undecodable_dead_letter_with_hostile_identity_is_escaped(qsettings, rawq):  # noqa: F811
    _plant_dead(rawq, qsettings, "m1", _undecodable("job-1", [{"id": HOSTILE}, {"id": "ok"}]))
    broken = json.dumps({"args": [{"job": HOSTILE, "producer": "p2", "items": []}]}).encode()[:-5]
    _plant_dead(rawq, qsettings, "m2", broken)
    rows = {r["message_id"]: r for r in dead_list(qsettings)}
    assert rows["m1"]["error"] == "undecodable message" and rows["m1"]["job_id"] == "job-1"
    text_out = _cli(qsettings)
    assert "\x1b" not in text_out and "\r" not in text_out and "\x07" not in text_out
    assert text_out.count("\n") == 2 and "FORGED LINE" not in text_out.splitlines()
    js = json.loads(_cli(qsettings, "--json"))
    assert len(js) == 2


def test_an_undecodable_dead_letter_with_megabyte_ids_is_shown_bounded(qsettings, rawq):  # noqa: F811
    huge = "A" * 1_000_000
    _plant_dead(rawq, qsettings, "m1", _undecodable("job-1", [{"id": huge}, {"id": "\n" * 1000}]))
    _plant_dead(rawq, qsettings, "m2", json.dumps({"args": [{"job": huge, "producer": "p2"}]}).encode()[:-3])
    rows = {r["message_id"]: r for r in dead_list(qsettings)}
    assert rows["m2"]["job_id"] is None
    text_out = _cli(qsettings)
    js_out = _cli(qsettings, "--json")
    assert len(text_out) < 100_000 and len(js_out) < 100_000, (
        f"dead list printed {len(text_out)} / {len(js_out)} characters for two dead letters"
    )
