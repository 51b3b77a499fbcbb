"""A producer's clients of an event loop are closed by that loop as it ends.

``asyncio.run`` per call (scripts, sync-to-async bridges) used to leave each ended
loop's redis-py connections (the queue) and glide client (the store) open until the
next loop's first call or the GC: the server's client count stayed up between calls and
each collection warned ``ResourceWarning: unclosed ...``. The server's own count is the
witness here (``INFO clients`` from a separate client), read with the GC switched off so
that nothing but memworker closes a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from valkey_servers import raw_client

from memworker import ValkeyStore
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings

DIM = 4


def _record(i: int) -> dict[str, Any]:
    return {"id": f"r{i}", "content": f"text {i}", "scope": "/loops", "embedding": [1.0, 0.0, 0.0, 0.0]}


def _clients(raw: Any) -> int:
    return int(raw.info("clients")["connected_clients"])


def _settled(raw: Any, want: int) -> int:
    """The server's client count once it equals ``want``, or the last one read: a
    closed socket is seen by the server on its next turn, after the close returned."""
    got = _clients(raw)
    for _ in range(1500):
        if got == want:
            break
        threading.Event().wait(0.01)
        got = _clients(raw)
    return got


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only memworker closes sockets while the test runs (a collection would close
    dropped ones, and hide a leak)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture
def own(own_plain_server) -> Iterator[tuple[Settings, Any]]:
    settings = Settings.from_url(own_plain_server.url, namespace=f"t{uuid.uuid4().hex[:12]}", search_mode="exact")
    raw = raw_client(own_plain_server)
    yield settings, raw
    raw.close()


@contextlib.contextmanager
def _resource_warnings() -> Iterator[list[str]]:
    """ResourceWarnings raised in the block, a final collection included."""
    gc.collect()
    found: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        yield found
        gc.collect()
        gc.collect()
    found.extend(str(w.message) for w in seen if issubclass(w.category, ResourceWarning))


def test_queue_asyncio_run_per_call_leaves_no_connection_open(own, no_gc) -> None:
    settings, raw = own
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    try:
        base = _clients(raw)
        for i in range(15):
            asyncio.run(q.aenqueue_save([_record(i)]))
            assert _settled(raw, base) == base, f"after asyncio.run #{i}: the ended loop's connections are open"
        assert q._adriver._states == {}
        assert len(q.pending()) == 15  # every job was enqueued
    finally:
        q.close()


def test_queue_one_asyncio_runner_keeps_its_connections_until_it_closes(own, no_gc) -> None:
    settings, raw = own
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    try:
        base = _clients(raw)
        with asyncio.Runner() as runner:
            for i in range(5):
                runner.run(q.aenqueue_save([_record(i)]))
            during = _clients(raw)
            assert during > base and len(q._adriver._states) == 1  # one loop, one state, reused
            for i in range(5, 10):
                runner.run(q.aenqueue_save([_record(i)]))
            assert _clients(raw) == during  # no new connection per run
        assert _settled(raw, base) == base
        assert q._adriver._states == {}
    finally:
        q.close()


def test_store_asyncio_run_per_call_leaves_no_client_open(own, no_gc) -> None:
    settings, raw = own
    store = ValkeyStore(settings)
    try:
        base = _clients(raw)
        for i in range(8):
            asyncio.run(store.asave([_record(i)]))
            assert asyncio.run(store.acount("/loops")) == i + 1
            assert _settled(raw, base) == base, f"after asyncio.run #{i}: the ended loop's glide client is open"
    finally:
        store.reset()
        store.close()


def test_queue_loop_closed_by_hand_is_dropped_by_the_next_loop_and_reports_nothing(own) -> None:
    """Without shutdown_asyncgens() (loop.close() by hand) the old behaviour stays: the
    next loop drops that loop's state, and nothing prints "Exception ignored"."""
    settings, raw = own
    seen: list[Any] = []
    before = sys.unraisablehook
    sys.unraisablehook = seen.append
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(q.aenqueue_save([_record(0)]))
        loop.close()
        assert list(q._adriver._states) == [loop]
        asyncio.run(q.aenqueue_save([_record(1)]))
        assert q._adriver._states == {}
        loop2 = asyncio.new_event_loop()
        loop2.run_until_complete(q.aenqueue_save([_record(2)]))
        loop2.close()
        q.close()  # the sync close drops the closed loop's state
        assert q._adriver._states == {}
        assert len(q.pending()) == 3
        del q, loop, loop2
        gc.collect()
        assert seen == [], [u.exc_value for u in seen]
    finally:
        sys.unraisablehook = before


def test_queue_aclose_from_one_loop_leaves_another_threads_loop_working_until_it_ends(own, no_gc) -> None:
    """aclose() on loop A while loop B (another thread) uses the same queue: B's calls
    go on, and B's connections are closed by B as it ends, not left open."""
    settings, raw = own
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    started, closed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_thread() -> None:
        async def body() -> None:
            await q.aenqueue_save([_record(0)])
            started.set()
            while not closed.is_set():
                await asyncio.sleep(0.005)
            await q.aenqueue_save([_record(1)])
            assert len(await q.apending()) == 2

        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        base = _clients(raw)
        t = threading.Thread(target=other_thread)
        t.start()
        assert started.wait(30)
        asyncio.run(q.aclose())
        closed.set()
        t.join(60)
        assert not t.is_alive() and not errors, errors
        assert _settled(raw, base) == base
        assert q._adriver._states == {} and q._adriver._ending == {}
    finally:
        q.close()


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_queue_and_store_asyncio_run_per_call_warn_nothing(kind, request) -> None:
    """``python -X dev`` / ``-W error::ResourceWarning`` users: no "unclosed" warning
    per loop (the queue's redis-py connections warned before, on both server kinds)."""
    server = request.getfixturevalue("plain_server" if kind == "standalone" else "cluster_plain_server")
    settings = Settings.from_url(server.url, namespace=f"t{uuid.uuid4().hex[:12]}", search_mode="exact")
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    store = ValkeyStore(settings)
    try:
        with _resource_warnings() as found:
            for i in range(10):
                asyncio.run(q.aenqueue_save([_record(i)]))
                assert len(asyncio.run(q.apending())) == i + 1
                asyncio.run(store.asave([_record(i)]))
            q.close()
            store.close()
        assert found == [], found[:3]
    finally:
        store.reset()
        store.close()
        q.close()


def test_a_drain_in_a_users_async_generator_closed_with_the_loop_ends_cleanly(own, no_gc) -> None:
    """A user's generator left suspended, whose ``finally`` drains (a LangGraph read
    does), is closed in the same ``shutdown_asyncgens()`` as memworker's closer. Either
    order must work: a drain in flight keeps its loop's connections (its subscription
    included) until it is done, and they are closed then; a drain started after the
    closer ran gets connections of its own, closed when it is done."""
    from memworker.errors import DrainTimeout

    settings, raw = own
    q = MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")
    outcomes: list[BaseException | None] = []
    try:
        base = _clients(raw)
        for i in range(4):
            async def stream(i: int = i) -> Any:
                try:
                    yield i
                finally:
                    try:
                        await q.adrain(0.3)  # no worker runs: the job stays pending
                        outcomes.append(None)
                    except Exception as exc:  # noqa: BLE001
                        outcomes.append(exc)

            async def main(i: int = i) -> None:
                await q.aenqueue_save([_record(i)])
                gen = stream()
                async for _ in gen:
                    break
                outcomes.append(gen)  # type: ignore[arg-type] - kept suspended

            asyncio.run(main())
            assert _settled(raw, base) == base, f"after asyncio.run #{i}: connections left open"
        errors = [o for o in outcomes if not hasattr(o, "aclose")]
        assert len(errors) == 4 and all(isinstance(e, DrainTimeout) for e in errors), errors
        assert q._adriver._states == {}
        assert len(q.pending()) == 4
    finally:
        q.close()
