"""Hostile review (helper-85): asyncio cancellation and timeouts on the async faces of
``QueuedStore`` (``aput``, ``abatch``, ``aget``, ``asearch``, ``adelete``, its async group
commit), ``MemoryQueue``'s async enqueue and drain, and ``ValkeyStore``'s async face, on
a real valkey-server and real in-process workers.

After each cancellation it checks what a user relies on: a cancelled put lands whole or
not at all, never leaves a pending mark a later drain waits its whole timeout for; the
other tasks of its group get their own outcome (no CancelledError leaking into them, no
task hanging: every wait is bounded by ``asyncio.wait`` / ``wait_for`` of generous
seconds, a hang is a failure); reads after it honour read-your-writes; the store and
its loop stay usable; closing works.

Defects shown (failing tests):
- a put waiting in the async group commit, cancelled while the sender task's script
  call carrying it has reached Valkey, is counted for the drain barrier only when that
  send returns: a read made meanwhile skips the drain and reports the key missing while
  its job is pending (test 1);
- a group sender task cancelled before its first step (a shutdown routine cancelling
  every other task) leaves the loop's group marked busy: every later ``aput`` of that
  loop waits for ever (test 11).

Interleavings are forced by wrapping the queue's real async send (the real script runs
against the server; only when its reply is handed back is held), never by mocking the
Valkey client.
"""

from __future__ import annotations

import asyncio
import random

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import GetOp, PutOp  # noqa: E402
from test_langgraph import embedder  # noqa: E402,F401
from test_langgraph_async_hostile import INDEX, NS, _wait_for, make_store, run_worker, settings  # noqa: E402,F401
from test_store import mk  # noqa: E402
from valkey_servers import raw_client  # noqa: E402

from memworker.errors import DrainTimeout  # noqa: E402
from memworker.langgraph import QueuedStore  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

HANG = 30.0  # seconds: any wait longer than this is reported as a hang


async def _outcome(task: asyncio.Task) -> tuple[str, object]:
    """Wait (bounded) for ``task`` and say how it ended; a task still running is a hang."""
    done, _ = await asyncio.wait({task}, timeout=HANG)
    assert done, f"task {task.get_name()} hangs after a cancellation"
    if task.cancelled():
        return "cancelled", None
    exc = task.exception()
    if exc is not None:
        return "error", exc
    return "ok", task.result()


async def _cancel_after(coro, steps: int, delay: float = 0.0) -> tuple[str, object]:
    """Run ``coro`` in a task, cancel it after ``steps`` loop iterations (and ``delay``
    seconds), return its outcome."""
    task = asyncio.create_task(coro)
    for _ in range(steps):
        await asyncio.sleep(0)
    if delay:
        await asyncio.sleep(delay)
    task.cancel()
    return await _outcome(task)


class _Gates:
    """Fault injection on the queue's async group commit (``MemoryQueue._asends``): the
    n-th send (0-based) may wait on ``pre[n]`` before the real script call and on
    ``post[n]`` after it (the job is then in Valkey, its reply held). ``ran[n]`` is set
    once the n-th script call returned."""

    def __init__(self, queue: MemoryQueue, pre=(), post=()) -> None:
        self.group = queue._asends  # noqa: SLF001
        self.real = self.group._send  # noqa: SLF001
        self.pre = {n: asyncio.Event() for n in pre}
        self.post = {n: asyncio.Event() for n in post}
        self.entered: dict[int, asyncio.Event] = {}
        self.ran: dict[int, asyncio.Event] = {}
        self.calls = 0
        self.group._send = self._send  # noqa: SLF001

    def _event(self, table, n):
        return table.setdefault(n, asyncio.Event())

    async def _send(self, steps):
        n = self.calls
        self.calls += 1
        self._event(self.entered, n).set()
        if n in self.pre:
            await self.pre[n].wait()
        out = await self.real(steps)
        self._event(self.ran, n).set()
        if n in self.post:
            await self.post[n].wait()
        return out

    def release(self) -> None:
        for e in [*self.pre.values(), *self.post.values()]:
            e.set()

    def restore(self) -> None:
        self.release()
        self.group._send = self.real  # noqa: SLF001


# =============================================================================== 1
def test_a_group_waiter_cancelled_after_its_job_went_is_drained_by_the_next_read(make_store, run_worker):
    """A task whose ``aput`` waits in the async group commit is cancelled (a
    ``wait_for`` timeout) while the sender task's script call carrying its put has
    reached Valkey and the reply is on its way. docs/langgraph.md: "A put whose call
    failed or was cancelled after its job was sent (a ``wait_for`` timeout, ...) may
    still be in Valkey: the store's next read drains it all the same." So the next
    ``aget`` of that key must wait for the pending job (no worker runs: it raises
    ``DrainTimeout``) or return the item, never report the key missing while its job
    sits in the queue (it is committed later)."""
    store = make_store(drain_timeout=2)

    async def main():
        gates = _Gates(store.queue, pre=(0, 1), post=(1,))
        try:
            lead = asyncio.create_task(store.aput(NS, "lead", {"text": "apple"}))
            await asyncio.wait_for(gates.entered.setdefault(0, asyncio.Event()).wait(), HANG)
            # the leader's send is under way (its script not sent yet): this put waits
            waiter = asyncio.create_task(store.aput(NS, "w", {"text": "dog"}))
            for _ in range(5):
                await asyncio.sleep(0)
            lead.cancel()  # the leader goes before its script ran: nothing of it is sent
            assert (await _outcome(lead))[0] == "cancelled"
            await asyncio.wait_for(gates._event(gates.entered, 1).wait(), HANG)
            # the sender task now holds the waiter's put, its script not sent yet: a read
            # drains this store (nothing pending in Valkey) and returns
            assert await asyncio.wait_for(store.aget(NS, "lead"), HANG) is None
            gates.pre[1].set()  # the waiter's script runs: its job is in Valkey
            await asyncio.wait_for(gates._event(gates.ran, 1).wait(), HANG)
            waiter.cancel()  # its caller gives up while the reply is held
            assert (await _outcome(waiter))[0] == "cancelled"
            pending = await store.queue.apending()
            assert len(pending) == 1, pending  # the cancelled put's job is queued
            try:
                got = await asyncio.wait_for(store.aget(NS, "w"), HANG)
            except DrainTimeout as exc:
                got = exc
        finally:
            gates.restore()
        await asyncio.sleep(0.05)  # let the sender task finish
        return got

    got = asyncio.run(main())
    run_worker()
    assert _wait_for(lambda: store.queue.pending() == [])
    later = store.get(NS, "w")
    assert later is not None and later.value == {"text": "dog"}  # the job did commit
    assert got is not None, (
        "the read right after a group waiter's cancelled put reported the key missing "
        "while its job was pending (committed later): the read skipped the drain"
    )


# =============================================================================== 2
def test_an_aput_cancelled_at_every_step_lands_whole_or_not_and_leaves_no_pending_mark(make_store, run_worker):
    """``aput`` cancelled after 0..N loop iterations (and a few real delays): every put
    either commits whole (its value read back exactly) or writes nothing; puts that
    returned are read back; the store's pending set empties (no pending mark left for a
    drain to wait its timeout on); the group keeps sending afterwards."""
    run_worker()
    store = make_store(drain_timeout=20)
    plan = [(n, 0.0) for n in range(0, 30)] + [(0, d / 1000) for d in (0.2, 0.5, 1, 2, 3, 5)]

    async def main():
        outcomes = {}
        for i, (steps, delay) in enumerate(plan):
            value = {"text": f"apple dog {i}", "i": i, "nested": {"k": [i, str(i)]}}
            outcomes[f"k{i}"] = (await _cancel_after(store.aput(NS, f"k{i}", value), steps, delay))[0]
        await asyncio.wait_for(store.aput(NS, "after", {"text": "cherry"}), HANG)
        got = {}
        for key in [*outcomes, "after"]:
            got[key] = await asyncio.wait_for(store.aget(NS, key), HANG)
        return outcomes, got

    outcomes, got = asyncio.run(main())
    assert set(o for o in outcomes.values()) <= {"ok", "cancelled"}, outcomes
    assert got["after"] is not None and got["after"].value == {"text": "cherry"}
    for i in range(len(plan)):
        key, item = f"k{i}", got[f"k{i}"]
        if outcomes[key] == "ok":
            assert item is not None, key
        if item is not None:
            assert item.value == {"text": f"apple dog {i}", "i": i, "nested": {"k": [i, str(i)]}}, key
    assert store.queue.pending() == []  # the reads drained: nothing left pending
    # a later read of a cancelled put's key agrees with the first (nothing landed late)
    assert _wait_for(lambda: store.queue.pending() == [])
    for i in range(len(plan)):
        again = store.get(NS, f"k{i}")
        assert (again is None) == (got[f"k{i}"] is None), f"k{i}"


# =============================================================================== 3
def test_concurrent_aputs_with_random_cancellations_give_each_task_its_own_outcome(make_store, run_worker):
    """Rounds of 16 concurrent ``aput`` tasks (one async group), a random third of them
    cancelled at random points: no task that was not cancelled ends cancelled or with an
    error (no CancelledError leaks into another caller of the group), none hangs, and
    each put that returned is read back by the next read from another task; cancelled
    ones are whole or absent."""
    run_worker()
    store = make_store(drain_timeout=20)
    rng = random.Random(85)

    async def round_(r):
        tasks = {f"r{r}k{i}": asyncio.create_task(store.aput(NS, f"r{r}k{i}", {"text": f"dog {r} {i}", "i": i}))
                 for i in range(16)}  # fmt: skip
        victims = set(rng.sample(sorted(tasks), 5))
        for key in sorted(victims, key=lambda _: rng.random()):
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
            tasks[key].cancel()
        outcomes = {k: await _outcome(t) for k, t in tasks.items()}
        return victims, outcomes

    async def main():
        rounds = [await round_(r) for r in range(6)]

        async def read():
            out = {}
            for _, outcomes in rounds:
                for key in outcomes:
                    out[key] = await asyncio.wait_for(store.aget(NS, key), HANG)
            return out

        return rounds, await asyncio.create_task(read())

    rounds, got = asyncio.run(main())
    for victims, outcomes in rounds:
        for key, (how, detail) in outcomes.items():
            if key not in victims:
                assert how == "ok", (key, how, detail)
            if how == "ok":
                assert got[key] is not None, key
            item = got[key]
            if item is not None:
                r, i = key[1:].split("k")
                assert item.value == {"text": f"dog {r} {i}", "i": int(i)}, key
    assert _wait_for(lambda: store.queue.pending() == [])


# =============================================================================== 4
def test_a_taskgroup_sibling_failing_mid_puts_leaves_the_store_usable(make_store, run_worker):
    """A ``TaskGroup`` whose putting tasks are cancelled when a sibling raises (some of
    them waiting in the group commit, one sending): the ExceptionGroup carries only the
    sibling's error, every put that completed before is read back, and the same loop's
    next ``aput`` / ``aget`` / ``asearch`` work."""
    run_worker()
    store = make_store(drain_timeout=20)
    done: list[str] = []

    async def putter(i):
        for j in range(50):
            await store.aput(NS, f"t{i}-{j}", {"text": f"engine {i} {j}"})
            done.append(f"t{i}-{j}")

    async def failing():
        for _ in range(5000):  # fails once some puts completed (bounded)
            if len(done) >= 12:
                break
            await asyncio.sleep(0.001)
        for _ in range(3):
            await asyncio.sleep(0)
        raise ValueError("sibling failed")

    async def main():
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.TaskGroup() as tg:
                for i in range(6):
                    tg.create_task(putter(i))
                tg.create_task(failing())
        assert [type(e) for e in caught.value.exceptions] == [ValueError]
        await asyncio.wait_for(store.aput(NS, "after", {"text": "harbor"}), HANG)
        got = {k: await asyncio.wait_for(store.aget(NS, k), HANG) for k in [*done, "after"]}
        hits = await asyncio.wait_for(store.asearch(NS, query="harbor", limit=3), HANG)
        return got, hits

    got, hits = asyncio.run(main())
    assert done, "no put completed before the sibling failed: the test proves nothing"
    missing = [k for k, v in got.items() if v is None]
    assert missing == [], missing
    assert hits and hits[0].key == "after"


# =============================================================================== 5
def test_an_abatch_cancelled_at_every_step_writes_all_its_puts_or_none(make_store, run_worker):
    """``abatch([put a, put b, get a])`` cancelled after 0..N loop iterations: its two
    indexed puts are one encode job (docs/langgraph.md, "one job per call"), so both
    land or neither; the next read sees what landed; nothing stays pending."""
    run_worker()
    store = make_store(drain_timeout=20)
    plan = [(n, 0.0) for n in range(0, 30)] + [(0, d / 1000) for d in (0.3, 1, 2, 4)]

    async def main():
        outs = []
        for i, (steps, delay) in enumerate(plan):
            ops = [
                PutOp(NS, f"a{i}", {"text": f"apple {i}"}),
                PutOp(NS, f"b{i}", {"text": f"banana {i}"}),
                GetOp(NS, f"a{i}"),
            ]
            how, detail = await _cancel_after(store.abatch(ops), steps, delay)
            outs.append((how, detail))
        got = {}
        for i in range(len(plan)):
            got[i] = (await asyncio.wait_for(store.aget(NS, f"a{i}"), HANG),
                      await asyncio.wait_for(store.aget(NS, f"b{i}"), HANG))  # fmt: skip
        return outs, got

    outs, got = asyncio.run(main())
    for i, (how, detail) in enumerate(outs):
        assert how in ("ok", "cancelled"), (i, how, detail)
        a, b = got[i]
        assert (a is None) == (b is None), (i, how, a, b)
        if how == "ok":
            assert detail[2] is not None and detail[2].value == {"text": f"apple {i}"}
            assert a is not None
    assert _wait_for(lambda: store.queue.pending() == [])


# =============================================================================== 6
def test_reads_cancelled_at_every_step_on_a_fresh_loop_leave_reads_working(make_store, run_worker, plain_server):
    """``aget`` / ``asearch`` / ``alist_namespaces`` cancelled after 0..N iterations,
    each on a fresh event loop (the async clients are made on first use, so the
    cancellation lands in their creation too): the next read on that loop returns the
    right answer, ``aclose`` works, and the server is not left with connections piling
    up from abandoned clients."""
    run_worker()
    store = make_store(drain_timeout=20)
    store.put(NS, "k", {"text": "apple"})
    store.put(NS, "j", {"text": "dog"})
    assert store.get(NS, "k") is not None

    def clients() -> int:
        r = raw_client(plain_server)
        try:
            return int(r.info("clients")["connected_clients"])
        finally:
            r.close()

    before = clients()

    async def one(steps, delay, which):
        reads = {
            "get": lambda: store.aget(NS, "k"),
            "search": lambda: store.asearch(NS, query="apple", limit=2),
            "list": lambda: store.alist_namespaces(prefix=("users",)),
        }
        how, detail = await _cancel_after(reads[which](), steps, delay)
        assert how in ("ok", "cancelled"), (how, detail)
        got_k = await asyncio.wait_for(store.aget(NS, "k"), HANG)
        hits = await asyncio.wait_for(store.asearch(NS, query="apple", limit=1), HANG)
        spaces = await asyncio.wait_for(store.alist_namespaces(prefix=("users",)), HANG)
        await asyncio.wait_for(store.aclose(), HANG)
        return got_k, hits, spaces

    for n, (steps, delay) in enumerate([(s, 0.0) for s in range(0, 12)] + [(0, d / 1000) for d in (1, 3, 8, 20)]):
        which = ("get", "search", "list")[n % 3]
        got_k, hits, spaces = asyncio.run(one(steps, delay, which))
        assert got_k is not None and got_k.value == {"text": "apple"}, (steps, delay, which)
        assert [h.key for h in hits] == ["k"], (steps, delay, which)
        assert spaces == [NS], (steps, delay, which)
    assert _wait_for(lambda: clients() <= before + 8, bound=10), (before, clients())


# =============================================================================== 7
def test_an_adelete_cancelled_at_every_step_is_applied_or_not_and_the_key_stays_usable(make_store, run_worker):
    """``adelete`` cancelled after 0..N iterations: the item is either gone or still
    holds its value (whole), the next reads agree, and a later ``aput`` of the key
    wins over the (possibly applied) delete."""
    run_worker()
    store = make_store(drain_timeout=20)
    plan = [(n, 0.0) for n in range(0, 20)] + [(0, d / 1000) for d in (0.5, 1, 3)]

    async def main():
        for i in range(len(plan)):
            await store.aput(NS, f"d{i}", {"text": f"forest {i}"})
        assert all([await store.aget(NS, f"d{i}") for i in range(len(plan))])
        outs = [(await _cancel_after(store.adelete(NS, f"d{i}"), s, d))[0] for i, (s, d) in enumerate(plan)]
        first = [await asyncio.wait_for(store.aget(NS, f"d{i}"), HANG) for i in range(len(plan))]
        second = [await asyncio.wait_for(store.aget(NS, f"d{i}"), HANG) for i in range(len(plan))]
        for i in range(len(plan)):
            await asyncio.wait_for(store.aput(NS, f"d{i}", {"text": f"guitar {i}"}), HANG)
        third = [await asyncio.wait_for(store.aget(NS, f"d{i}"), HANG) for i in range(len(plan))]
        return outs, first, second, third

    outs, first, second, third = asyncio.run(main())
    for i, how in enumerate(outs):
        assert how in ("ok", "cancelled"), (i, how)
        if how == "ok":
            assert first[i] is None, i
        if first[i] is not None:
            assert first[i].value == {"text": f"forest {i}"}, i
        assert (first[i] is None) == (second[i] is None), i
        assert third[i] is not None and third[i].value == {"text": f"guitar {i}"}, i


# =============================================================================== 8
def test_memory_queue_aenqueue_cancelled_at_every_step_leaves_no_mark_the_drain_waits_on(settings, run_worker):
    """``MemoryQueue.aenqueue_save`` cancelled after 0..N iterations (several enqueues
    of one loop at a time, so the queue's async group commit groups them): once a
    worker runs, ``adrain`` returns with nothing failed or lost (no pending mark nor
    "recent" job left behind for it to wait on or report), each enqueue that returned
    is committed, and records of cancelled ones are whole or absent."""
    run_worker()
    plan = [(n, 0.0) for n in range(0, 25)] + [(0, d / 1000) for d in (0.3, 1, 2)]

    async def main():
        q = MemoryQueue(settings, producer_id="helper85-q")
        try:
            outs = []
            for i, (steps, delay) in enumerate(plan):
                recs = [mk(f"q{i}-{j}", scope="/cq", content=f"text {i} {j}") for j in range(3)]
                other = asyncio.create_task(q.aenqueue_save([mk(f"o{i}", scope="/cq", content=f"other {i}")]))
                how, detail = await _cancel_after(q.aenqueue_save(recs), steps, delay)
                outs.append((how, detail, await _outcome(other)))
            report = await asyncio.wait_for(q.adrain(timeout=20), HANG)
            return outs, report
        finally:
            await q.aclose()
            q.close()

    outs, report = asyncio.run(main())
    assert report.failed == [] and report.lost == [], report
    with ValkeyStore(settings) as s:
        for i, (how, detail, other) in enumerate(outs):
            assert how in ("ok", "cancelled"), (i, how, detail)
            assert other[0] == "ok", (i, other)  # the concurrent enqueue was not cancelled
            assert s.get_record(f"o{i}") is not None, i
            got = [s.get_record(f"q{i}-{j}") for j in range(3)]
            if how == "ok":
                assert all(r is not None for r in got), i
            assert len({r is None for r in got}) == 1, (i, got)  # one job: all or none
            for j, r in enumerate(got):
                assert r is None or r.content == f"text {i} {j}"
        s.reset()


# =============================================================================== 9
def test_valkeystore_asave_cancelled_at_every_step_keeps_records_and_indexes_consistent(settings):
    """``ValkeyStore.asave`` cancelled after 0..N iterations: each record is either
    stored (whole, found by its id, counted, listed and searchable) or absent
    everywhere; the store's loop keeps working and ``aclose`` works."""
    plan = [(n, 0.0) for n in range(0, 25)] + [(0, d / 1000) for d in (0.3, 1, 2)]
    recs = {i: mk(f"s{i}", scope="/cs", content=f"content {i}", seed=i) for i in range(len(plan))}

    async def main():
        s = ValkeyStore(settings)
        try:
            outs = [(await _cancel_after(s.asave([recs[i]]), st, d))[0] for i, (st, d) in enumerate(plan)]
            await asyncio.wait_for(s.asave([mk("after", scope="/cs", seed=999)]), HANG)
            ids = {r.id for r in await asyncio.wait_for(s.alist_records(scope_prefix="/cs", limit=1000), HANG)}
            count = await asyncio.wait_for(s.acount(scope_prefix="/cs"), HANG)
            got = {i: await asyncio.wait_for(s.aget_record(f"s{i}"), HANG) for i in recs}
            return outs, ids, count, got
        finally:
            await s.aclose()
            s.close()

    outs, ids, count, got = asyncio.run(main())
    with ValkeyStore(settings) as s:
        try:
            for i, how in enumerate(outs):
                assert how in ("ok", "cancelled"), (i, how)
                rec = got[i]
                if how == "ok":
                    assert rec is not None, i
                assert (rec is not None) == (f"s{i}" in ids), i
                if rec is not None:
                    assert rec.content == f"content {i}"
                    hits = s.search(recs[i].embedding, scope_prefix="/cs", limit=1)
                    assert hits and hits[0][0].id == f"s{i}", i
            assert "after" in ids
            assert count == len(ids), (count, len(ids))
        finally:
            s.reset()


# =============================================================================== 10
def test_async_with_store_body_timing_out_mid_puts_closes_and_a_new_loop_reads_the_puts(settings, run_worker):
    """``async with QueuedStore(...)`` whose body is cut by ``asyncio.timeout`` while
    many tasks put: leaving the block closes the store without an error of its own (the
    caller gets ``TimeoutError``), and a new store on a new loop reads every put that
    returned."""
    run_worker()
    done: list[str] = []

    async def putter(store, i):
        for j in range(1000):
            await store.aput(NS, f"c{i}-{j}", {"text": f"harbor {i} {j}"})
            done.append(f"c{i}-{j}")

    async def main():
        store = QueuedStore(settings, index=INDEX, producer_id="helper85-close")
        with pytest.raises(TimeoutError):
            async with store:
                async with asyncio.timeout(0.4):
                    async with asyncio.TaskGroup() as tg:
                        for i in range(4):
                            tg.create_task(putter(store, i))
        return store

    first = asyncio.run(main())
    assert done, "no put completed before the timeout: the test proves nothing"

    async def later():
        async with QueuedStore(settings, index=INDEX, producer_id="helper85-close") as store:
            return {k: await asyncio.wait_for(store.aget(NS, k), HANG) for k in done}

    got = asyncio.run(later())
    missing = [k for k, v in got.items() if v is None]
    assert missing == [], missing[:5]
    first.close()
    with QueuedStore(settings, index=INDEX) as s:
        s.store.reset()


# =============================================================================== 11
def test_a_shutdown_that_cancels_every_other_task_leaves_the_group_usable(make_store, run_worker):
    """A graceful-shutdown routine cancels every other task of the loop, then flushes a
    last put and reads it (the loop goes on). If the group's sender task was just
    created (the leader's send ended, puts of other tasks waited for it), it is among
    the cancelled tasks before its first step. group.py: "If the sender task itself is
    cancelled (the loop shutting down), every caller it owed a result is cancelled
    too: none waits for ever." The routine's own later ``aput`` must then complete (and
    its ``aget`` see it), not wait for ever on a group still marked busy."""
    run_worker()
    store = make_store(drain_timeout=20)

    async def main():
        gates = _Gates(store.queue, post=(0,))
        try:
            lead = asyncio.create_task(store.aput(NS, "lead", {"text": "apple"}))
            await asyncio.wait_for(gates._event(gates.ran, 0).wait(), HANG)
            waiters = [asyncio.create_task(store.aput(NS, f"w{i}", {"text": f"dog {i}"})) for i in range(3)]
            for _ in range(5):
                await asyncio.sleep(0)
            go = asyncio.Event()

            async def release():
                gates.post[0].set()  # the leader resumes first: it hands its waiters on
                go.set()  # ... then this routine runs, in the same loop iteration

            asyncio.create_task(release())
            await go.wait()
            me = asyncio.current_task()
            for t in asyncio.all_tasks():
                if t is not me:
                    t.cancel()
            for t in [lead, *waiters]:
                await _outcome(t)
        finally:
            gates.restore()
        try:
            await asyncio.wait_for(store.aput(NS, "final", {"text": "cherry"}), 10)
        except TimeoutError:
            q = store._agroup._queue(asyncio.get_running_loop())  # noqa: SLF001
            return ("hang", f"busy={q.busy} sender={q.task!r} waiting={len(q.waiting)}")
        return await asyncio.wait_for(store.aget(NS, "final"), HANG)

    got = asyncio.run(main())
    assert not (isinstance(got, tuple) and got[0] == "hang"), (
        "after a shutdown routine cancelled the group's sender task before its first "
        f"step, the next aput of the loop waited for ever (the group stayed busy): {got}"
    )
    assert got is not None and got.value == {"text": "cherry"}


# =============================================================================== 12
def test_aclose_while_tasks_put_and_read_leaves_no_task_hanging_and_the_store_reusable(make_store, run_worker):
    """``aclose()`` called while other tasks of the loop put and read: none of them
    hangs or ends cancelled (each ends ok or with an error saying the call failed),
    the next ``aput`` / ``aget`` on the same loop make new clients and work, and every
    put that returned is read back."""
    run_worker()
    store = make_store(drain_timeout=20)
    done: list[str] = []

    async def putter(i):
        for j in range(40):
            await store.aput(NS, f"x{i}-{j}", {"text": f"guitar {i} {j}"})
            done.append(f"x{i}-{j}")
            if j % 5 == 0:
                await store.aget(NS, f"x{i}-{j}")

    async def main():
        tasks = [asyncio.create_task(putter(i)) for i in range(4)]
        for _ in range(200):
            if len(done) >= 10:
                break
            await asyncio.sleep(0.005)
        await asyncio.wait_for(store.aclose(), HANG)
        outcomes = [await _outcome(t) for t in tasks]
        await asyncio.wait_for(store.aput(NS, "after", {"text": "harbor"}), HANG)
        got = {k: await asyncio.wait_for(store.aget(NS, k), HANG) for k in [*done, "after"]}
        await asyncio.wait_for(store.aclose(), HANG)
        return outcomes, got

    outcomes, got = asyncio.run(main())
    assert len(done) >= 10
    for how, detail in outcomes:
        assert how in ("ok", "error"), (how, detail)
        if how == "error":
            assert isinstance(detail, Exception) and not isinstance(detail, asyncio.CancelledError), detail
    missing = [k for k, v in got.items() if v is None]
    assert missing == [], missing[:5]


# =============================================================================== 13
def test_a_first_async_call_cancelled_while_the_scripts_load_keeps_its_client(settings, monkeypatch):
    """The async face makes its loop's client on first use, then loads the scripts. A
    caller cancelled while they load left the new client to the garbage collector (a
    ``ResourceWarning``, a connection open until then) and the next call made another:
    the client is kept, the next call uses it, ``aclose`` closes it."""
    import glide

    store = ValkeyStore(settings)
    made: list = []
    loading: list = []
    gate = asyncio.Event()  # binds to the loop that first waits on it
    real_create = glide.GlideClient.create

    async def create(config):
        client = await real_create(config)
        made.append(client)
        real = client.custom_command

        async def custom_command(args):
            if list(args[:2]) == ["SCRIPT", "LOAD"] and not gate.is_set():
                loading.append(client)
                await gate.wait()  # held: the caller is cancelled meanwhile
            return await real(args)

        client.custom_command = custom_command
        return client

    monkeypatch.setattr(glide.GlideClient, "create", staticmethod(create))

    async def main():
        first = asyncio.create_task(store.acount())
        for _ in range(2000):
            if loading:
                break
            await asyncio.sleep(0.01)
        assert loading, "the first call never loaded the scripts"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        assert await asyncio.wait_for(store.acount(), 20) == 0
        kept = store._async._client  # noqa: SLF001
        await store.aclose()
        return kept

    kept = asyncio.run(main())
    assert len(made) == 1, "the next call made a second client"
    assert kept is made[0]
    store.close()
