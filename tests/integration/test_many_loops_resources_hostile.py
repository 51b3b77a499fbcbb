"""Resources of a long-running producer that uses the async faces as real apps do: a
new event loop per call (``asyncio.run`` in a loop, as scripts and sync-to-async
bridges do), threads each with their own loop, loops closed without ``aclose()``,
and sync calls interleaved with async ones on the same object.

What a user relies on (README, docs/langgraph.md "Closing", "asyncio.run after
asyncio.run is fine"): the server's connected clients and the process's threads stay
bounded (they do not grow with the number of loops), memworker's per-loop state does
not keep closed loops alive, every call still reads its own writes, and a process
run with ``-W error::ResourceWarning`` (or ``python -X dev``) is not flooded with
"unclosed" warnings for clients memworker itself made and dropped.

Each test runs on a server of its own (``own_plain_server``): other tests' clients
would change the server's client count. Growth is judged by comparing counts after
a first and a last stretch of iterations, after ``gc.collect()`` (never by timing).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("langgraph.store.base")

from test_langgraph import DIM, WordEmbedder  # noqa: E402
from valkey_servers import raw_client  # noqa: E402

from memworker import ValkeyStore  # noqa: E402
from memworker import worker as worker_mod  # noqa: E402
from memworker.langgraph import QueuedStore  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402

#: Iterations at which counts are taken: the first after a warm-up, the last at the end.
FIRST, LAST = 50, 300
#: Slack for clients/threads that come and go on their own (the worker's, pubsub).
SLACK = 3


# ----------------------------------------------------------------------------- helpers
def _record(i: int, scope: str = "/loops") -> dict[str, Any]:
    return {"id": f"r{i}", "content": f"text {i}", "scope": scope, "embedding": [1.0] + [0.0] * (DIM - 1)}


class _Counter:
    """The server's connected clients (``INFO clients``, from a separate raw client)
    and the process's threads, after a full collection."""

    def __init__(self, server: Any) -> None:
        self.raw = raw_client(server)

    def clients(self) -> int:
        """The fewest of a few reads 50 ms apart: a socket closed just now is seen by
        the server on its next turn, and the in-process worker's come and go."""
        gc.collect()
        gc.collect()
        reads = []
        for _ in range(5):
            reads.append(int(self.raw.info("clients")["connected_clients"]))
            threading.Event().wait(0.05)
        return min(reads)

    def threads(self) -> int:
        gc.collect()
        return threading.active_count()

    def close(self) -> None:
        self.raw.close()


class _AsyncioLog(logging.Handler):
    """Records asyncio's own complaints ("Task was destroyed but it is pending",
    "Unclosed client", exceptions never retrieved)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Complaints:
    """ResourceWarnings (``warnings.catch_warnings(record=True)``) and asyncio's logged
    complaints made while the block runs, a final ``gc.collect()`` included."""

    def __enter__(self) -> _Complaints:
        gc.collect()  # what earlier tests dropped is not this block's
        gc.collect()
        self._cm = warnings.catch_warnings(record=True)
        self._seen = self._cm.__enter__()
        warnings.simplefilter("always", ResourceWarning)
        self._log = _AsyncioLog()
        logging.getLogger("asyncio").addHandler(self._log)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.collect()
        gc.collect()
        logging.getLogger("asyncio").removeHandler(self._log)
        self._cm.__exit__(None, None, None)
        self.resource = [f"{w.category.__name__}: {w.message}" for w in self._seen if issubclass(w.category, ResourceWarning)]
        # (a subprocess of the test harness, the worker's; not memworker's producer clients)
        self.resource = [m for m in self.resource if "subprocess" not in m]
        self.asyncio = [
            m for m in self._log.messages
            if "destroyed but it is pending" in m or "Unclosed" in m or "never retrieved" in m
        ]  # fmt: skip

    def summary(self) -> str:
        kinds = sorted({m.split(" fd=")[0].split("(")[0][:90] for m in self.resource})
        return f"{len(self.resource)} ResourceWarnings, kinds: {kinds}; asyncio log: {self.asyncio[:3]}"


@pytest.fixture
def settings(own_plain_server) -> Settings:
    return Settings.from_url(own_plain_server.url, namespace=f"t{uuid.uuid4().hex[:12]}", search_mode="exact")


@pytest.fixture
def counter(own_plain_server) -> Iterator[_Counter]:
    c = _Counter(own_plain_server)
    yield c
    c.close()


@pytest.fixture
def running_worker(settings) -> Iterator[None]:
    worker_mod.set_embedder_factory(WordEmbedder)
    ctx = worker_mod.running_worker(
        settings, threads=2, min_backoff_ms=10, max_backoff_ms=50, max_retries=3, worker_timeout_ms=100
    )
    ctx.__enter__()
    yield
    ctx.__exit__(None, None, None)
    worker_mod.set_embedder_factory(None)


def _loop_per_call(n: int, call: Callable[[int], Any], counter: _Counter, at: tuple[int, ...] = (FIRST, LAST)) -> dict[int, tuple[int, int]]:
    """``asyncio.run(call(i))`` for i in range(n); (clients, threads) after iteration
    ``at`` (1-based)."""
    counts: dict[int, tuple[int, int]] = {}
    for i in range(n):
        asyncio.run(call(i))
        if i + 1 in at:
            counts[i + 1] = (counter.clients(), counter.threads())
    return counts


def _bounded(counts: dict[int, tuple[int, int]], what: str) -> None:
    (c1, t1), (c2, t2) = counts[FIRST], counts[LAST]
    assert c2 <= c1 + SLACK, f"{what}: connected clients grew with the loops: {c1} after {FIRST}, {c2} after {LAST}"
    assert t2 <= t1 + SLACK, f"{what}: threads grew with the loops: {t1} after {FIRST}, {t2} after {LAST}"


# ----------------------------------------------------------------------------- ValkeyStore
def test_valkey_store_async_face_one_loop_per_call_stays_bounded_and_reads_its_writes(settings, counter) -> None:
    store = ValkeyStore(settings)
    try:
        async def call(i: int) -> None:
            await store.asave([_record(i)])
            assert await store.acount("/loops") == i + 1
            found = await store.asearch([1.0] + [0.0] * (DIM - 1), scope_prefix="/loops", limit=1)
            assert found, f"asearch after asave #{i} found nothing"
            if i % 7 == 0:  # interleaved: the sync face on the same store
                assert store.count("/loops") == i + 1

        counts = _loop_per_call(LAST, call, counter)
        _bounded(counts, "ValkeyStore asave/acount/asearch")
        # (the async face keeps at most the last loop's client: no closed loop list)
        store.close()
        gc.collect()
        assert store._async._loop is None, "close() kept the closed loop of the last asyncio.run"
    finally:
        store.reset()
        store.close()


def test_valkey_store_async_face_one_loop_per_call_leaves_no_resource_warnings(settings) -> None:
    """docs/langgraph.md: ``asyncio.run`` after ``asyncio.run`` is fine; the clients of
    closed loops are dropped. Dropping a glide client unclosed makes glide warn
    (``ResourceWarning``: "GlideClient was garbage-collected without close()") once
    per loop: under ``-W error::ResourceWarning`` that is an error per call, and the
    user had no way to close a client memworker replaced on its own."""
    store = ValkeyStore(settings)
    try:
        with _Complaints() as seen:
            for i in range(30):
                asyncio.run(store.asave([_record(i)]))
                assert asyncio.run(store.acount("/loops")) == i + 1
            store.close()
        assert not seen.resource and not seen.asyncio, seen.summary()
    finally:
        store.reset()
        store.close()


def test_loops_closed_without_aclose_are_not_kept_alive(settings, running_worker) -> None:
    """Per-loop state (AsyncGroupCommit._loops, the glide face's loop, the redis-py
    driver's states) holds at most the last closed loop, and memworker none after
    close()."""
    lg = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    try:
        for i in range(40):
            loop = asyncio.new_event_loop()
            refs.append(weakref.ref(loop))
            loop.run_until_complete(lg.aput(("u",), f"k{i}", {"text": f"apple {i}"}))
            got = loop.run_until_complete(lg.aget(("u",), f"k{i}"))
            assert got is not None and got.value == {"text": f"apple {i}"}
            loop.close()  # closed, never aclose()d
            del loop
        gc.collect()
        alive = sum(r() is not None for r in refs)
        assert alive <= 1, f"{alive} of 40 closed loops are still alive (held by memworker's per-loop state)"
        assert len(lg._agroup._loops) <= 1 and len(lg.queue._asends._loops) <= 1
        assert len(lg.queue._adriver._states) <= 1
        lg.close()
        gc.collect()
        # (glide itself keeps the last loop its response pipe was registered on, in the
        # module global ``glide.glide_client._async_pipe_loop``: one loop, not memworker's)
        alive = sum(r() is not None for r in refs)
        assert alive <= 1, f"after close(), {alive} closed loops are still alive"
        assert lg.store._async._loop is None, "close() kept the glide face's closed loop"
        assert not lg.queue._adriver._states, "close() kept the redis-py driver's closed-loop states"
    finally:
        lg.store.reset()
        lg.close()


# ----------------------------------------------------------------------------- MemoryQueue
def test_memory_queue_async_face_one_loop_per_call_stays_bounded_and_drains_its_jobs(
    settings, counter, running_worker
) -> None:
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    try:
        async def call(i: int) -> None:
            job = await q.aenqueue_save([_record(i)])
            report = await q.adrain(30)
            assert report.committed >= 1 and not report.failed and not report.lost, (i, job, report)
            if i % 5 == 0:  # interleaved: the sync face
                q.enqueue_save([_record(10_000 + i)])
                assert q.drain(30).committed >= 1

        counts = _loop_per_call(LAST, call, counter)
        _bounded(counts, "MemoryQueue aenqueue_save/adrain")
        assert len(q._adriver._states) <= 1, f"{len(q._adriver._states)} loop states kept"
        assert len(q._asends._loops) <= 1, f"{len(q._asends._loops)} loop queues kept"
        assert q.pending() == []
    finally:
        q.close()


def test_memory_queue_shared_by_threads_each_with_its_own_loop_stays_bounded(settings, counter, running_worker) -> None:
    """RedisAsyncDriver: "Loops of several threads may use one driver at once". Waves
    of threads, each running its own loop and ending (never aclose()), must not pile
    up clients, threads or loop states."""
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    errors: list[BaseException] = []

    def one(i: int) -> None:
        async def body() -> None:
            await q.aenqueue_save([_record(i)])
            await q.apending()
        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def wave(base: int) -> None:
        threads = [threading.Thread(target=one, args=(base + k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        counts = {}
        for w in range(60):
            wave(w * 4)
            if w + 1 in (10, 60):
                counts[w + 1] = (counter.clients(), counter.threads())
        assert not errors, errors[:3]
        (c1, t1), (c2, t2) = counts[10], counts[60]
        assert c2 <= c1 + SLACK, f"clients grew: {c1} after 10 waves, {c2} after 60"
        assert t2 <= t1 + SLACK, f"threads grew: {t1} after 10 waves, {t2} after 60"
        assert q.drain(30).committed == 240
        q.close()
        assert len(q._adriver._states) == 0, f"close() kept {len(q._adriver._states)} states of closed loops"
    finally:
        q.close()


# ----------------------------------------------------------------------------- QueuedStore
def test_queued_store_async_face_one_loop_per_call_stays_bounded_and_reads_its_writes(
    settings, counter, running_worker
) -> None:
    lg = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
    try:
        async def call(i: int) -> None:
            await lg.aput(("u",), f"k{i}", {"text": f"apple {i}"})
            got = await lg.aget(("u",), f"k{i}")
            assert got is not None and got.value == {"text": f"apple {i}"}, (i, got)
            hits = await lg.asearch(("u",), query="apple", limit=400)
            assert f"k{i}" in {h.key for h in hits}, f"asearch after aput #{i} misses it"
            if i % 7 == 0:  # interleaved: the sync face on the same store, same loop
                lg.put(("s",), f"k{i}", {"text": f"pear {i}"})
                assert lg.get(("s",), f"k{i}") is not None

        counts = _loop_per_call(LAST, call, counter)
        _bounded(counts, "QueuedStore aput/aget/asearch")
        assert len(lg._agroup._loops) <= 1 and len(lg.queue._adriver._states) <= 1
    finally:
        lg.store.reset()
        lg.close()


def test_queued_store_async_face_one_loop_per_call_leaves_no_glide_client_unclosed(settings, running_worker) -> None:
    """docs/langgraph.md: "``asyncio.run`` after ``asyncio.run`` is fine". The store's
    glide client of an ended loop is closed by the next loop's first call (or by
    ``close()``), not left to the GC (a ResourceWarning per loop before); since
    a loop's clients are closed as it ends, test_loop_end_close.py checks the queue's too."""
    lg = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
    try:
        with _Complaints() as seen:
            for i in range(20):
                asyncio.run(lg.aput(("u",), f"k{i}", {"text": f"apple {i}"}))
                assert asyncio.run(lg.aget(("u",), f"k{i}")) is not None
            lg.close()
        glide = [w for w in seen.resource if "GlideClient" in w]
        assert not glide and not seen.asyncio, seen.summary()
    finally:
        lg.store.reset()
        lg.close()


def test_queued_store_async_with_per_loop_closes_everything_and_warns_nothing(settings, counter, running_worker) -> None:
    """The documented clean pattern: ``async with`` (``aclose()``) inside each loop
    closes that loop's clients at once; no warnings, clients bounded."""
    lg = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
    try:
        async def call(i: int) -> None:
            async with lg:
                await lg.aput(("u",), f"k{i}", {"text": f"apple {i}"})
                assert (await lg.aget(("u",), f"k{i}")) is not None

        with _Complaints() as seen:
            counts = _loop_per_call(60, call, counter, at=(10, 60))
        (c1, _), (c2, _) = counts[10], counts[60]
        assert c2 <= c1 + SLACK, f"clients grew: {c1} -> {c2}"
        assert not seen.resource and not seen.asyncio, seen.summary()
    finally:
        lg.store.reset()
        lg.close()


# ----------------------------------------------------------------------------- QueuedMemory
def test_queued_memory_async_twins_one_loop_per_call_stay_bounded_and_recall_their_writes(
    own_plain_server, settings, counter, monkeypatch
) -> None:
    """CrewAI's ``aremember``/``arecall`` on ``QueuedMemory``, one ``asyncio.run`` per
    call (a script, a sync-to-async bridge), with sync calls interleaved: every recall
    sees the memory's own writes, clients and threads stay bounded, and no
    ResourceWarning or asyncio complaint is left behind."""
    pytest.importorskip("crewai")
    from memworker.crewai import LocalEmbedder, QueuedMemory
    from memworker.crewai import config as crewai_config
    from memworker.crewai.testing import StandInLLM

    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, "memworker.crewai.testing:standin_memory_config")
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    F = dict(categories=["c"], importance=0.5)
    with worker_mod.running_worker(
        settings, threads=2, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=2
    ):
        memory = QueuedMemory(
            storage=own_plain_server.url, namespace=settings.namespace, embedder=LocalEmbedder(),
            llm=StandInLLM(), consolidation_threshold=1.0, drain_timeout=30,
        )  # fmt: skip
        try:
            async def call(i: int) -> None:
                await memory.aremember(f"loop fact {i}", scope="/loops", **F)
                got = await memory.arecall(f"loop fact {i}", scope="/loops", depth="shallow", limit=5)
                assert f"loop fact {i}" in {m.record.content for m in got}, (i, [m.record.content for m in got])
                if i % 10 == 0:  # interleaved: the sync face
                    memory.remember(f"sync fact {i}", scope="/sync", **F)
                    assert f"sync fact {i}" in {m.record.content for m in memory.recall(
                        f"sync fact {i}", scope="/sync", depth="shallow", limit=5)}

            with _Complaints() as seen:
                counts = _loop_per_call(120, call, counter, at=(20, 120))
                memory.close()
            (c1, t1), (c2, t2) = counts[20], counts[120]
            assert c2 <= c1 + SLACK, f"clients grew with the loops: {c1} after 20, {c2} after 120"
            assert t2 <= t1 + SLACK, f"threads grew with the loops: {t1} after 20, {t2} after 120"
            assert not seen.resource and not seen.asyncio, seen.summary()
        finally:
            try:
                memory.reset_all()
            finally:
                memory.close()
                crewai_config.reset_worker_memory_config()
