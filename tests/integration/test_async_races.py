"""The async and concurrent paths, from a review (helper-36, 2026-12-05): each test
here failed before its fix, on the defect its docstring names."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from test_worker import FakeEmbedder, _record, fake, workers  # noqa: F401

from memworker import worker as worker_mod
from memworker.io import redispy as redispy_mod
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings


@pytest.fixture
def psettings(plain_server, namespace) -> Settings:
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


def test_two_event_loops_sharing_one_queue_do_not_trade_connections(psettings, monkeypatch):
    """Two threads, each with its own event loop, enqueue on one MemoryQueue (its
    AsyncGroupCommit keeps a queue per loop, so this is meant to work). Thread A takes
    the driver's client for loop A; before A reads the driver's free list, thread B
    (loop B) re-binds the driver to loop B and returns a loop-B connection to the list.
    A then pops that loop-B connection and awaits on it from loop A."""
    q = MemoryQueue(psettings, producer_id="two-loops")
    a_paused, b_done = threading.Event(), threading.Event()
    real = redispy_mod.script_source
    state = {"a": None}

    def hooked(name):
        if threading.current_thread() is state["a"] and not a_paused.is_set():
            a_paused.set()  # A holds loop A's client, and has not read the free list yet
            assert b_done.wait(10)
        return real(name)

    monkeypatch.setattr(redispy_mod, "script_source", hooked)
    result: dict[str, object] = {}
    loop_b = asyncio.new_event_loop()

    def run_a():
        loop_a = asyncio.new_event_loop()
        try:
            result["a"] = loop_a.run_until_complete(q.aenqueue_save([_record(1)]))
        except BaseException as exc:  # noqa: BLE001
            result["a"] = exc
        finally:
            loop_a.close()

    def run_b():
        assert a_paused.wait(10)
        try:
            result["b"] = loop_b.run_until_complete(q.aenqueue_save([_record(2)]))
        finally:
            b_done.set()

    ta = threading.Thread(target=run_a)
    state["a"] = ta
    tb = threading.Thread(target=run_b)
    ta.start()
    tb.start()
    ta.join(20)
    tb.join(20)
    loop_b.close()
    pending = set(q.pending())
    q.close()
    assert not isinstance(result["a"], BaseException), f"loop A's enqueue raised {result['a']!r}; pending: {len(pending)} job(s)"
    assert {result["a"], result["b"]} <= pending


def _memory(plain_server, namespace):
    from memworker.crewai import LocalEmbedder, QueuedMemory
    from memworker.crewai.testing import StandInLLM

    return QueuedMemory(
        storage=plain_server.url, namespace=namespace, embedder=LocalEmbedder(), llm=StandInLLM(),
        consolidation_threshold=1.0, drain_timeout=0.5, background_enqueue=False,
    )  # fmt: skip


def test_remember_many_with_an_oversized_later_chunk_enqueues_nothing(plain_server, namespace):
    """remember_many of more than JOB_CHUNK items is several jobs. A later chunk too
    big for a job was refused only after the first chunk was in Valkey, and that job
    was never watched ("nothing enqueued", drain_writes returned while it was pending,
    its records appeared later, unannounced). Every chunk is now checked before the
    first is sent."""
    pytest.importorskip("crewai")
    from memworker.crewai._memory import JOB_CHUNK

    memory = _memory(plain_server, namespace)
    try:
        texts = [f"small fact {i}" for i in range(JOB_CHUNK)] + ["x" * (1 << 20)]
        memory.remember_many(texts, scope="/c", categories=["c"], importance=0.5)
        assert memory.queue.pending() == []  # no worker runs: whatever was enqueued stays
        memory.drain_writes()  # nothing of this memory's is pending
    finally:
        memory.close()


def test_remember_many_whose_later_send_fails_still_waits_for_the_jobs_that_went(plain_server, namespace):
    """The server lost between two chunks' sends: the first job is in Valkey. It is
    watched (drain_writes, so recall, waits for it), and the call's failure event says
    what was not enqueued."""
    pytest.importorskip("crewai")
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.memory_events import MemorySaveFailedEvent

    from memworker.crewai._memory import JOB_CHUNK
    from memworker.errors import DrainTimeout, QueueConnectionLostError

    memory = _memory(plain_server, namespace)
    real = memory.queue._enqueue
    calls = []

    def second_fails(step):
        calls.append(step)
        if len(calls) == 2:
            raise QueueConnectionLostError("Valkey did not answer")
        return real(step)

    memory.queue._enqueue = second_fails
    failed = []
    try:
        with crewai_event_bus.scoped_handlers():

            @crewai_event_bus.on(MemorySaveFailedEvent)
            def on_failed(source, event):
                failed.append(event.error)

            texts = [f"small fact {i}" for i in range(2 * JOB_CHUNK)]
            memory.remember_many(texts, scope="/c", categories=["c"], importance=0.5)
            assert len(memory.queue.pending()) == 1  # the first job went
            with pytest.raises(DrainTimeout):  # no worker: the job that went is waited for
                memory.drain_writes()
            assert failed == [], failed  # the call's one event waits for the job that went
            memory.drain_timeout = 120  # the worker loads its model and embeds 500 texts
            with worker_mod.running_worker(memory.store.settings, threads=2, worker_timeout_ms=100):
                memory.drain_writes()
            deadline = time.monotonic() + 10
            while not failed and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(failed) == 1 and "not enqueued: " in failed[0], failed
        assert memory.store.count("/c") == JOB_CHUNK  # the first job's records
    finally:
        del memory.queue._enqueue
        try:
            memory.close()
        except DrainTimeout:
            pass


def test_asyncio_run_per_call_does_not_pile_up_clients(psettings):
    """Each asyncio.run makes a loop and closes it: the driver keeps a client per live
    loop, closed by that loop as it ends (test_loop_end_close.py counts the sockets)."""
    q = MemoryQueue(psettings, producer_id="runs")
    try:
        for i in range(5):
            asyncio.run(q.aenqueue_save([_record(10 + i)]))
        driver = q._adriver  # noqa: SLF001
        assert driver._states == {}  # noqa: SLF001
        assert len(q.pending()) == 5
    finally:
        q.close()
