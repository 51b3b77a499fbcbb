"""A hostile review of commit 5ed7459: an event loop's async clients are closed by that
loop as it ends (``memworker.io.loops.LoopEnd``, run by ``shutdown_asyncgens()`` of
``asyncio.run`` / ``asyncio.Runner``).

What docs/langgraph.md "Closing" and docs/design.md promise: ``asyncio.run`` per call
leaves no socket open between calls and no ``ResourceWarning``; the queue's async
driver serves loops of several threads at once; a loop's clients are closed on it as
it ends. Attacked here (test_loop_end_close.py and tests/unit/test_loop_end.py cover the
plain cases): a memworker call made by a user's own async generator that the ending
loop closes (asyncio runs those ``finally`` blocks in the same ``shutdown_asyncgens()``
as memworker's closer), tasks cancelled at shutdown while mid-call, ``aclose()`` and
``close()`` while other threads' loops run, many threads each running ``asyncio.run``
per call (standalone and cluster), a runner reused with ``aclose()`` between runs, and
a server that dies just before the loop ends.

The witness is the server's own client count (``INFO clients`` from a separate raw
client), read with the GC off so that only memworker closes a socket.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_loop_end_close import _clients, _record, _resource_warnings, _settled, no_gc  # noqa: F401 - no_gc is a fixture
from valkey_servers import raw_client

from memworker import ValkeyStore
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def own(own_plain_server) -> Iterator[tuple[Settings, Any, Any]]:
    settings = Settings.from_url(own_plain_server.url, namespace=f"t{uuid.uuid4().hex[:12]}", search_mode="exact")
    raw = raw_client(own_plain_server)
    yield settings, raw, own_plain_server
    raw.close()


class _AsyncioLog(logging.Handler):
    """asyncio's logged complaints (an exception in a closer, a task destroyed pending)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())


@pytest.fixture
def asyncio_log() -> Iterator[_AsyncioLog]:
    handler = _AsyncioLog()
    logging.getLogger("asyncio").addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger("asyncio").removeHandler(handler)


def _queue(settings: Settings) -> MemoryQueue:
    return MemoryQueue(settings, producer_id=f"p{uuid.uuid4().hex[:8]}")


async def _until(pred, bound: int = 20000) -> None:
    """Let the loop run other tasks until ``pred()`` (a bounded number of turns)."""
    for _ in range(bound):
        if pred():
            return
        await asyncio.sleep(0)


def _in_thread(target) -> list[BaseException]:
    """Run ``target`` in a thread (a hang shows as a thread still alive, not a stuck
    suite); the exceptions it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "asyncio.run did not return: a closer hung as the loop ended"
    return errors


# ----------------------------------------------------------------------------- a user's async generator closed at the loop's end
def test_queue_call_in_a_users_async_generator_closed_at_loop_end_leaves_no_connection_open(own, no_gc) -> None:
    """An async generator a user left suspended (``async for ... break`` over a stream it
    still holds) is closed by ``shutdown_asyncgens()``, in the same gather as memworker's
    closer, in no set order. Its ``finally`` saving a memory is an ordinary thing to do;
    when memworker's closer ran first, that call opens connections on the ending loop.
    asyncio.run returning must still leave none open ("asyncio.run per call leaves no
    socket open between calls"), and the job must be enqueued."""
    settings, raw, _ = own
    q = _queue(settings)
    ids: list[str] = []
    held: list[Any] = []
    try:
        base = _clients(raw)
        for i in range(3):
            async def stream(i: int = i) -> Any:
                try:
                    yield i
                finally:
                    loop = asyncio.get_running_loop()
                    # the order of the loop's closers is not set: this is the run where
                    # memworker's ran first (its state for this loop is gone)
                    await _until(lambda: loop not in q._adriver._states)
                    ids.append(await q.aenqueue_save([_record(1000 + i)]))

            async def main(i: int = i) -> None:
                ids.append(await q.aenqueue_save([_record(i)]))
                gen = stream()
                async for _ in gen:
                    break
                held.append(gen)  # still suspended: the loop closes it as it ends

            asyncio.run(main())
            assert len(ids) == 2 * (i + 1), "the generator's finally did not run to its end"
            assert _settled(raw, base) == base, (
                f"after asyncio.run #{i}: {_clients(raw) - base} connection(s) of the ended loop "
                f"left open by a call made while it closed its async generators"
            )
        assert sorted(q.pending()) == sorted(ids)  # every job enqueued
    finally:
        q.close()


def test_store_call_in_a_users_async_generator_closed_at_loop_end_leaves_no_client_open(own, no_gc) -> None:
    """The same for the store's glide client (``AsyncConnection._loop_ended`` drops the
    slot, the generator's call makes a new client on the ending loop)."""
    settings, raw, _ = own
    store = ValkeyStore(settings)
    held: list[Any] = []
    try:
        base = _clients(raw)
        for i in range(3):
            async def stream(i: int = i) -> Any:
                try:
                    yield i
                finally:
                    await _until(lambda: store._async._client is None)
                    await store.asave([_record(1000 + i)])

            async def main(i: int = i) -> None:
                await store.asave([_record(i)])
                gen = stream()
                async for _ in gen:
                    break
                held.append(gen)

            asyncio.run(main())
            assert _settled(raw, base) == base, (
                f"after asyncio.run #{i}: the glide client made while the loop closed its "
                f"async generators is open ({_clients(raw) - base} connection(s))"
            )
        assert asyncio.run(store.acount("/loops")) == 6
    finally:
        store.reset()
        store.close()


def test_queue_call_in_a_users_async_generator_closed_at_loop_end_warns_nothing(own) -> None:
    """The same case seen by a ``-X dev`` / ``-W error::ResourceWarning`` user (the GC
    on): the connections made while the loop closed its generators are dropped by the
    next loop, not closed, and every collection warns "unclosed"."""
    settings, raw, _ = own
    q = _queue(settings)
    held: list[Any] = []
    try:
        with _resource_warnings() as found:
            for i in range(3):
                async def stream(i: int = i) -> Any:
                    try:
                        yield i
                    finally:
                        loop = asyncio.get_running_loop()
                        await _until(lambda: loop not in q._adriver._states)
                        await q.aenqueue_save([_record(1000 + i)])

                async def main(i: int = i) -> None:
                    await q.aenqueue_save([_record(i)])
                    gen = stream()
                    async for _ in gen:
                        break
                    held.append(gen)

                asyncio.run(main())
            q.close()
            held.clear()
        assert found == [], found[:3]
        assert len(q.pending()) == 6
    finally:
        q.close()


def test_queue_threads_cancelled_tasks_and_aclose_together_warn_nothing(own, unraisable) -> None:
    """The GC on, ResourceWarnings recorded: threads each running asyncio.run per call,
    one of whose loops ends with tasks cancelled mid-call, while another loop calls
    aclose()."""
    settings, raw, _ = own
    q = _queue(settings)
    try:
        with _resource_warnings() as found:
            async def busy() -> None:
                async def enqueuer(k: int) -> None:
                    n = 0
                    while True:
                        await q.aenqueue_save([_record(50_000 + k * 1000 + n)])
                        n += 1

                tasks = [asyncio.create_task(enqueuer(k)) for k in range(3)]
                await asyncio.sleep(0.05)
                assert not any(t.done() for t in tasks)

            errors: list[BaseException] = []
            def cancelling() -> None:
                try:
                    for _ in range(3):
                        asyncio.run(busy())
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            t = threading.Thread(target=cancelling)
            t.start()
            ids, errs = _threads_per_call(q, 3, 4)
            errors += errs
            asyncio.run(q.aclose())
            t.join(120)
            q.close()
        assert not errors, errors[:3]
        assert set(ids) <= set(q.pending())
        assert found == [], found[:3]
        assert unraisable == [], [repr(u.exc_value) for u in unraisable[:3]]
    finally:
        q.close()


# ----------------------------------------------------------------------------- tasks cancelled at shutdown
def test_queue_tasks_cancelled_mid_call_at_shutdown_leave_nothing_open_and_lose_no_job(
    own, no_gc, unraisable, asyncio_log
) -> None:
    """Fire-and-forget tasks still enqueueing, and drains still waiting (no worker runs),
    when ``asyncio.run``'s main returns: the loop cancels them, then closes memworker's
    clients. Nothing stays open, nothing is reported, every enqueue that returned is
    pending, and the next loop works."""
    settings, raw, _ = own
    q = _queue(settings)
    ids: list[str] = []
    try:
        base = _clients(raw)
        for round_ in range(3):
            async def enqueuer(k: int) -> None:
                n = 0
                while True:
                    ids.append(await q.aenqueue_save([_record(round_ * 100_000 + k * 1000 + n)]))
                    n += 1

            async def drainer(k: int) -> None:
                jid = await q.aenqueue_save([_record(round_ * 100_000 + 90_000 + k)])
                ids.append(jid)
                await q.adrain(timeout=600, job_ids=[jid])  # nobody commits it: waits

            async def main() -> None:
                tasks = [asyncio.create_task(enqueuer(k)) for k in range(4)]
                tasks += [asyncio.create_task(drainer(k)) for k in range(3)]
                start = len(ids)
                await _until(lambda: len(ids) >= start + 40)
                mine = await q.aenqueue_save([_record(round_ * 100_000 + 99_999)])
                ids.append(mine)
                assert mine in await q.apending()  # reads its own write amid the others
                # return: asyncio.run cancels the tasks mid-call

            asyncio.run(main())
            assert _settled(raw, base) == base, f"round {round_}: {_clients(raw) - base} connection(s) left open"
            assert q._adriver._states == {}
        pending = set(q.pending())
        assert set(ids) <= pending, f"{len(set(ids) - pending)} returned enqueue(s) not pending"
        assert len(pending) <= len(ids) + 3 * 4  # at most one cancelled-after-send per enqueuer
        assert unraisable == [], [repr(u.exc_value) for u in unraisable[:3]]
        assert asyncio_log.messages == [], asyncio_log.messages[:3]
    finally:
        q.close()


# ----------------------------------------------------------------------------- many threads, each asyncio.run per call
def _threads_per_call(q: MemoryQueue, n_threads: int, calls: int) -> tuple[list[str], list[BaseException]]:
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(n_threads)

    def one(t: int) -> None:
        try:
            go.wait(30)
            for c in range(calls):
                async def body() -> None:
                    jid = await q.aenqueue_save([_record(t * 1000 + c)])
                    with lock:
                        ids.append(jid)
                    assert jid in await q.apending(), "an enqueue not pending right after it returned"

                asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread's asyncio.run hung"
    return ids, errors


def test_queue_threads_each_running_asyncio_run_per_call_leave_no_connection_open(own, no_gc, unraisable) -> None:
    settings, raw, _ = own
    q = _queue(settings)
    try:
        base = _clients(raw)
        ids, errors = _threads_per_call(q, 6, 8)
        assert not errors, errors[:3]
        assert _settled(raw, base) == base, f"{_clients(raw) - base} connection(s) of ended loops left open"
        assert q._adriver._states == {} and q._adriver._ending == {}
        assert sorted(q.pending()) == sorted(ids) and len(ids) == 48
        assert unraisable == [], [repr(u.exc_value) for u in unraisable[:3]]
    finally:
        q.close()


def test_queue_on_a_cluster_threads_running_asyncio_run_per_call_leave_no_connection_open(
    cluster_plain_server, no_gc
) -> None:
    """The cluster client (``redis.asyncio.cluster.RedisCluster``) of each ended loop is
    closed too: the nodes' summed client count comes back."""
    import redis

    settings = Settings.from_url(cluster_plain_server.url, namespace=f"t{uuid.uuid4().hex[:12]}", search_mode="exact")
    nodes = [redis.Redis(host="127.0.0.1", port=p) for p in cluster_plain_server.ports]

    def total() -> int:
        return sum(int(n.info("clients")["connected_clients"]) for n in nodes)

    q = _queue(settings)
    try:
        q.pending()  # the topology is known before the count
        base = total()
        ids, errors = _threads_per_call(q, 4, 5)
        assert not errors, errors[:3]
        got = total()
        for _ in range(200):
            if got == base:
                break
            threading.Event().wait(0.01)
            got = total()
        assert got == base, f"{got - base} cluster connection(s) of ended loops left open"
        assert q._adriver._states == {}
        assert sorted(q.pending()) == sorted(ids)
    finally:
        q.close()
        for n in nodes:
            n.close()


# ----------------------------------------------------------------------------- aclose()/close() while other loops run
@pytest.mark.parametrize("closer", ["aclose", "close"])
def test_queue_closed_again_and_again_while_other_threads_loops_run_loses_nothing_and_leaks_nothing(
    own, no_gc, closer
) -> None:
    """``aclose()`` from a loop of its own, or the sync ``close()``, called over and over
    while four threads run loops mid-call: their calls go on (each reads its own write),
    every job is pending, and once all loops ended nothing is open or kept."""
    settings, raw, _ = own
    q = _queue(settings)
    try:
        base = _clients(raw)
        stop = threading.Event()
        closes = 0

        def closing() -> None:
            nonlocal closes
            while not stop.is_set():
                if closer == "aclose":
                    asyncio.run(q.aclose())
                else:
                    q.close()
                closes += 1
                threading.Event().wait(0.002)

        t = threading.Thread(target=closing)
        t.start()
        try:
            ids, errors = _threads_per_call(q, 4, 8)
        finally:
            stop.set()
            t.join(60)
        assert closes > 0
        assert not errors, errors[:3]
        assert _settled(raw, base) == base, f"{_clients(raw) - base} connection(s) left open after {closes} {closer}()"
        assert q._adriver._states == {} and q._adriver._ending == {}
        assert sorted(q.pending()) == sorted(ids) and len(ids) == 32
    finally:
        q.close()


# ----------------------------------------------------------------------------- asyncio.Runner reused, aclose() between runs
def test_queue_runner_reused_with_aclose_between_runs_closes_everything_at_its_end(own, no_gc, unraisable) -> None:
    settings, raw, _ = own
    q = _queue(settings)
    ids: list[str] = []
    try:
        base = _clients(raw)
        with asyncio.Runner() as runner:
            for i in range(12):
                ids.append(runner.run(q.aenqueue_save([_record(i)])))
                assert ids[-1] in runner.run(q.apending())
                if i % 3 == 2:
                    runner.run(q.aclose())
                    assert _settled(raw, base) == base, f"aclose() in run {i} left connections open"
                if i % 4 == 1:
                    q.close()  # the sync close between runs: the runner's loop is not closed
        assert _settled(raw, base) == base, f"{_clients(raw) - base} connection(s) left open by the runner's loop"
        assert q._adriver._states == {}
        assert sorted(q.pending()) == sorted(ids)
        assert unraisable == [], [repr(u.exc_value) for u in unraisable[:3]]
    finally:
        q.close()


# ----------------------------------------------------------------------------- the server dies as the loop ends
def test_server_gone_as_the_loop_ends_the_closers_neither_hang_nor_raise(own, unraisable, asyncio_log) -> None:
    """The queue's and the store's clients of a loop whose server was stopped just
    before the loop ended: asyncio.run returns main's result, nothing is reported."""
    settings, raw, server = own
    q = _queue(settings)
    store = ValkeyStore(settings)
    got: list[Any] = []
    try:
        async def main() -> str:
            jid = await q.aenqueue_save([_record(0)])
            assert jid in await q.apending()
            await store.asave([_record(0)])
            assert await store.acount("/loops") == 1
            raw.close()
            server.stop()  # the server is gone; the loop ends next
            return jid

        errors = _in_thread(lambda: got.append(asyncio.run(main())))
        assert not errors, errors
        assert len(got) == 1
        assert q._adriver._states == {}
        assert unraisable == [], [repr(u.exc_value) for u in unraisable[:3]]
        assert asyncio_log.messages == [], asyncio_log.messages[:3]
    finally:
        q.close()
        store.close()


def test_a_client_that_fails_to_close_at_the_last_release_does_not_replace_the_calls_result(own) -> None:
    """A call made while its loop ends closes the loop's client as it returns (the last
    user's ``release``). A close that fails there (a socket already broken) must not
    replace the call's own result: an enqueue that reached Valkey would raise to its
    caller, who would enqueue it again."""
    settings, raw, _ = own
    q = _queue(settings)
    try:

        async def main() -> list[str]:
            driver = q._adriver  # noqa: SLF001
            await q.apending()  # the loop's state exists
            state = driver._state()  # noqa: SLF001
            state.late = True  # as when the loop's closer found it in use

            async def broken() -> None:
                raise ConnectionError("the socket is gone")

            state.client.aclose = broken
            job = await q.aenqueue_encode([{"text": "kept", "id": "late1"}])
            assert driver._states.get(asyncio.get_running_loop()) is None  # noqa: SLF001 - closed
            return job

        ids = asyncio.run(main())
        assert ids == ["late1"]
        assert q.pending() != []  # the job is on the queue
    finally:
        q.close()
