"""A hostile review of memworker.langgraph.QueuedStore's async and lifecycle paths, on
a real valkey-server and real in-process workers (the embedder of test_langgraph.py).

Defects proven (each of these tests failed before its fix, session 30):
- an ``aput`` cancelled after its job reached Valkey is not counted: the next read
  skips the drain and reports the key missing while the job is pending;
- a child forked while another thread's put is in the group commit hangs in ``put``;
- ``close()`` / leaving ``with`` leaves the async clients' connections open;
- a connection error in the group's one-job-per-put fallback fails every caller of
  the group, also those whose job went and commits.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("langgraph.store.base")

from forking import fork_and_wait, isolated  # noqa: E402
from test_langgraph import DIM, WordEmbedder, embedder  # noqa: E402,F401

from memworker import worker as worker_mod  # noqa: E402
from memworker.errors import DrainTimeout  # noqa: E402
from memworker.langgraph import QueuedStore  # noqa: E402
from memworker.settings import Settings  # noqa: E402

NS = ("users", "u1")
INDEX = {"dims": DIM, "fields": ["text"]}


@pytest.fixture
def settings(plain_server, namespace):
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def run_worker(settings, embedder):  # noqa: F811
    """Start an in-process worker (on demand: some tests need the queue to hold a job
    first); stopped at the end of the test."""
    started = []

    def start():
        ctx = worker_mod.running_worker(
            settings, threads=2, min_backoff_ms=10, max_backoff_ms=50, max_retries=3,
            worker_timeout_ms=100,
        )  # fmt: skip
        ctx.__enter__()
        started.append(ctx)

    yield start
    for ctx in started:
        ctx.__exit__(None, None, None)


@pytest.fixture
def make_store(settings):
    made = []

    def make(**kw):
        kw.setdefault("index", INDEX)
        s = QueuedStore(settings, **kw)
        made.append(s)
        return s

    yield make
    if made:
        try:
            made[0].store.reset()
        except Exception:  # noqa: BLE001
            pass
    for s in made:
        s.close()


def _wait_for(cond, bound=60.0, step=0.02):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# ----------------------------------------------------------------------------- cancellation


def _stall_after_send(store: QueuedStore):
    """Fault injection: the queue's real async enqueue runs (the script reaches the
    server and writes the job), then the call stalls as if the reply were slow; a
    caller's ``wait_for`` times out there. Returns the event that lets it go on."""
    sends = store.queue._asends  # noqa: SLF001 - the queue's async group commit
    real = sends._send  # noqa: SLF001
    gate = asyncio.Event()
    sent = asyncio.Event()

    async def stalled(steps):
        out = await real(steps)
        sent.set()
        await gate.wait()
        return out

    sends._send = stalled  # noqa: SLF001
    return gate, sent, real


def test_an_aput_cancelled_after_its_job_went_is_drained_by_the_next_read(make_store, run_worker):
    """Defect: an ``aput`` cancelled (``asyncio.wait_for`` timeout) after its job reached
    Valkey leaves the job queued (a worker commits it later), but the store never counts
    it (``_count_enqueued`` runs only after the send returns): the next read of the
    same store skips the drain and reports the key missing, and the item shows up
    later. A put whose fate the caller cannot know must be waited for by the next read
    (read-your-writes), like any other enqueued put: the read returns the item or
    raises DrainTimeout (no worker runs yet), never "missing" while the job is pending."""
    store = make_store(drain_timeout=3)

    async def main():
        gate, sent, real = _stall_after_send(store)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(store.aput(NS, "k", {"text": "apple"}), 2.0)
        assert sent.is_set()
        gate.set()
        assert len(await store.queue.apending()) == 1  # the job is in Valkey
        try:
            return await store.aget(NS, "k")  # no worker: the job cannot commit yet
        except DrainTimeout as exc:
            return exc

    got = asyncio.run(main())
    run_worker()  # the job did go: it commits
    assert _wait_for(lambda: store.queue.pending() == [])
    later = store.get(NS, "k")
    assert later is not None and later.value == {"text": "apple"}
    assert got is not None, (
        "the read right after the cancelled put skipped the drain and reported the key "
        "missing while its job was pending (it commits later)"
    )


def test_a_waiter_cancelled_in_the_group_goes_out_or_not_and_the_others_commit(make_store, run_worker):
    """Pins: tasks that wait in the async group commit while a send is under way, some of
    them cancelled: every put not cancelled is committed and read back by a read in
    another task; a cancelled one either is not sent at all or is committed whole;
    the group keeps working for later puts."""
    run_worker()
    store = make_store()

    async def main():
        gate, sent, real = _stall_after_send(store)
        first = asyncio.create_task(store.aput(NS, "lead", {"text": "apple"}))
        await sent.wait()  # the leader's send is in flight: the next puts wait in the group
        store.queue._asends._send = real  # noqa: SLF001 - the next sends go as they came
        waiters = {f"w{i}": asyncio.create_task(store.aput(NS, f"w{i}", {"text": f"dog {i}"})) for i in range(8)}
        for _ in range(5):
            await asyncio.sleep(0)
        for name in ("w1", "w4", "w6"):
            waiters[name].cancel()
        gate.set()
        await first
        outcomes = {}
        for name, task in waiters.items():
            try:
                await task
                outcomes[name] = "ok"
            except asyncio.CancelledError:
                outcomes[name] = "cancelled"
        await store.aput(NS, "after", {"text": "cherry"})  # the group still sends

        async def read():
            return {k: await store.aget(NS, k) for k in ["lead", "after", *waiters]}

        got = await asyncio.create_task(read())
        return outcomes, got

    outcomes, got = asyncio.run(main())
    assert got["lead"] is not None and got["after"] is not None
    for name, outcome in outcomes.items():
        if outcome == "ok":
            assert got[name] is not None and got[name].value == {"text": f"dog {name[1:]}"}, name
    # a cancelled put is all or nothing: never a half item
    for name, item in got.items():
        assert item is None or item.value["text"], name
    assert _wait_for(lambda: store.queue.pending() == [])


def test_a_read_cancelled_while_it_drains_leaves_the_next_read_its_writes(make_store, run_worker):
    """Pins: an ``aget`` cancelled while it waits in the drain (no worker yet) does not
    mark the pending puts as drained: the next read waits for them and sees them."""
    store = make_store(drain_timeout=60)

    async def main():
        await store.aput(NS, "k", {"text": "apple"})
        await store.aput(NS, "j", {"text": "dog"})
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(store.aget(NS, "k"), 0.5)
        run_worker()
        return await store.aget(NS, "k"), await store.aget(NS, "j")

    k, j = asyncio.run(main())
    assert k is not None and k.value == {"text": "apple"}
    assert j is not None and j.value == {"text": "dog"}


def test_put_delete_get_from_many_tasks_later_op_of_a_key_wins(make_store, run_worker):
    """Pins: per key, tasks of one loop run put v1, put v2, delete, put v3 in that order
    (each awaited before the next starts) while other tasks put other keys; a read from
    another task sees v3 for keys ending with a put, nothing for keys ending with the
    delete."""
    run_worker()
    store = make_store()

    async def one(i):
        await store.aput(NS, f"k{i}", {"text": "apple", "v": 1})
        await store.aput(NS, f"k{i}", {"text": "dog", "v": 2})
        await store.adelete(NS, f"k{i}")
        if i % 2:
            await store.aput(NS, f"k{i}", {"text": "cherry", "v": 3})

    async def main():
        await asyncio.gather(*(one(i) for i in range(24)))

        async def read():
            return [await store.aget(NS, f"k{i}") for i in range(24)]

        return await asyncio.create_task(read())

    got = asyncio.run(main())
    for i, item in enumerate(got):
        if i % 2:
            assert item is not None and item.value == {"text": "cherry", "v": 3}, i
        else:
            assert item is None, (i, item)


# ----------------------------------------------------------------------------- lifecycle


def test_asyncio_run_twice_then_sync_then_async_again(make_store, run_worker):
    """Pins: one store used by ``asyncio.run`` twice, by sync calls between, and by
    tasks mixed with a thread's sync puts: every put is read back by the next read."""
    run_worker()
    store = make_store()

    async def first():
        await store.aput(NS, "a", {"text": "apple"})
        return await store.aget(NS, "a")

    async def second():
        await store.aput(NS, "b", {"text": "dog"})
        t = asyncio.to_thread(store.put, NS, "c", {"text": "cherry"})
        await asyncio.gather(t, store.aput(NS, "d", {"text": "engine"}))
        return [await store.aget(NS, k) for k in "abcd"]

    assert asyncio.run(first()).value == {"text": "apple"}
    store.put(NS, "x", {"text": "forest"})
    assert store.get(NS, "x").value == {"text": "forest"}
    got = asyncio.run(second())
    assert [g.value["text"] for g in got] == ["apple", "dog", "cherry", "engine"]


def test_close_twice_and_use_after_the_with_block(make_store, run_worker):
    """Pins: ``close()`` twice is harmless, and a store used after its ``with`` block
    (sync and async) answers (its clients connect again) instead of hanging."""
    run_worker()
    store = make_store()
    with store:
        store.put(NS, "a", {"text": "apple"})
        assert store.get(NS, "a") is not None
    store.close()
    store.close()
    store.put(NS, "b", {"text": "dog"})
    assert store.get(NS, "b").value == {"text": "dog"}

    async def main():
        await store.aput(NS, "c", {"text": "cherry"})
        got = await store.aget(NS, "c")
        await store.aclose()
        await store.aclose()
        return got

    assert asyncio.run(main()).value == {"text": "cherry"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_can_use_the_parents_store(request, make_store, run_worker):
    """Pins: a child forked after the parent used the store (sync clients made, no put in
    flight) puts and reads back through the same object (its own connections and
    producer id), without hanging."""
    if isolated(request):
        return
    run_worker()
    store = make_store()
    store.put(NS, "a", {"text": "apple"})
    assert store.get(NS, "a") is not None

    def child():
        store.put(NS, "b", {"text": "dog"})
        got = store.get(NS, "b")
        return got is not None and got.value == {"text": "dog"}

    assert fork_and_wait(child) == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_child_forked_while_another_thread_puts_can_put(request, make_store, run_worker):
    """Defect: the thread group commit's state (``GroupCommit._busy``, its waiting
    slots, its lock) is copied into a child forked while another thread's put is in
    flight; in the child no leader exists to finish that send, so the child's first
    ``put`` waits for ever (killed here after 30 s). Nothing resets the store's
    per-process state after a fork (the queue renews only its producer id)."""
    if isolated(request):
        return
    import threading

    # The worker starts in the parent after the fork: a fork while an in-process
    # worker's threads run can copy a lock one of them held (the child hung once in CI).
    store = make_store()
    store.put(NS, "a", {"text": "apple"})  # the parent's clients are made
    group = store._group  # noqa: SLF001
    real = group._send  # noqa: SLF001
    in_send, release = threading.Event(), threading.Event()

    def slow(items):  # the parent's in-flight send (as if the server were slow)
        in_send.set()
        release.wait(60)
        return real(items)

    group._send = slow  # noqa: SLF001
    t = threading.Thread(target=store.put, args=(NS, "p", {"text": "dog"}))
    t.start()
    try:
        assert in_send.wait(30)
        group._send = real  # noqa: SLF001 - later sends (the child's) go as they come

        def child():
            store.put(NS, "c", {"text": "cherry"})
            got = store.get(NS, "c")
            return got is not None and got.value == {"text": "cherry"}

        code = fork_and_wait(child, bound=30, after_fork=run_worker)
    finally:
        release.set()
        t.join(60)
    assert store.get(NS, "p").value == {"text": "dog"}
    assert code == 0, f"child exit {code} (None: it hung in put and was killed)"


def test_leaving_the_with_block_closes_the_async_clients_too(own_plain_server, namespace, embedder):  # noqa: F811
    """Defect: ``close()`` (so leaving ``with QueuedStore(...)``) closes the sync
    clients only: the connections the async methods opened (the store's glide client,
    the queue's redis.asyncio one) stay open for as long as the object lives, although
    ``close`` says it closes the store's and the queue's clients, and there is no
    ``async with`` that would. A closed store must hold no connection: ``close()`` now
    drops the clients of loops that are closed (their connections cannot be awaited any
    more; they go with their objects, which hold a reference cycle: collected here at
    once), and ``async with`` closes the running loop's (next test)."""
    import redis

    raw = redis.Redis(host="127.0.0.1", port=own_plain_server.port)
    try:
        base = len(raw.client_list())
        settings = Settings.from_url(own_plain_server.url, namespace=namespace, search_mode="exact")
        with QueuedStore(settings) as store:
            assert store.get(NS, "nothing") is None  # the sync clients

            async def main():
                assert await store.aget(NS, "nothing") is None  # the store's async client
                await store.aput(NS, "k", {"text": "apple"})  # the queue's async client

            asyncio.run(main())
            assert len(raw.client_list()) > base
        import gc

        gc.collect()
        assert _wait_for(lambda: len(raw.client_list()) == base, bound=10), (
            f"{len(raw.client_list()) - base} connection(s) still open after the with block: "
            + ", ".join(c.get("lib-name", "?") or c.get("name", "?") for c in raw.client_list()[1:])
        )
    finally:
        raw.close()


def test_async_with_closes_every_client(own_plain_server, namespace, embedder):  # noqa: F811
    """``async with QueuedStore(...)`` closes the running loop's clients and the sync
    ones on the way out: no connection of the store is left."""
    import redis

    raw = redis.Redis(host="127.0.0.1", port=own_plain_server.port)
    try:
        base = len(raw.client_list())
        settings = Settings.from_url(own_plain_server.url, namespace=namespace, search_mode="exact")

        async def main():
            async with QueuedStore(settings) as store:
                assert store.get(NS, "nothing") is None  # the sync face too
                assert await store.aget(NS, "nothing") is None
                await store.aput(NS, "k", {"text": "apple"})
                assert len(raw.client_list()) > base

        asyncio.run(main())
        assert _wait_for(lambda: len(raw.client_list()) == base, bound=10)
    finally:
        raw.close()


def test_a_group_whose_fallback_meets_a_connection_error_tells_the_truth(make_store, run_worker):
    """Defect: a group of concurrent ``aput`` calls over a job's size is sent one job per
    put (``_asend_group``'s fallback); only ``ValidationError`` is caught there, so an
    error of one put's enqueue (the server gone mid-fallback: a connection error)
    fails EVERY caller of the group, including those whose job already went and will
    commit, and the puts after it are never tried. A caller told its put failed finds
    it stored later (half the group written, all of it reported failed)."""
    from memworker.errors import QueueConnectionLostError

    run_worker()
    store = make_store()
    store.queue.max_job_bytes = 8192
    text = "apple " * 500  # ~3 KB a put: three are over a job's size together
    enqueue = store.queue.aenqueue_encode_items
    calls: list[list[str]] = []

    async def main():
        gate = asyncio.Event()

        async def faulty(items):  # the queue's real method, with one failure injected
            calls.append([i["metadata"]["key"] for i in items])
            if len(calls) == 1:
                await gate.wait()  # the leader's send stays in flight: the others group
            if len(calls) == 4:  # the second put of the one-by-one fallback
                raise QueueConnectionLostError("Valkey did not answer (injected)")
            return await enqueue(items)

        store.queue.aenqueue_encode_items = faulty
        lead = asyncio.create_task(store.aput(("big",), "lead", {"text": "cherry"}))
        while not calls:
            await asyncio.sleep(0)
        group = [asyncio.create_task(store.aput(("big",), k, {"text": text})) for k in "abc"]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        await lead
        outcomes = await asyncio.gather(*group, return_exceptions=True)
        store.queue.aenqueue_encode_items = enqueue
        return outcomes

    outcomes = asyncio.run(main())
    assert calls[1] == ["a", "b", "c"]  # the group, refused whole (over a job's size)
    assert _wait_for(lambda: store.queue.pending() == [])
    stored = {k: store.get(("big",), k) is not None for k in "abc"}
    told = {k: ("ok" if o is None else type(o).__name__) for k, o in zip("abc", outcomes)}
    for k in "abc":
        assert (told[k] == "ok") == stored[k], f"told {told}, stored {stored}"
