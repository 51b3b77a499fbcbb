"""Hostile review of ``QueuedMemory``'s async, cancellation, concurrency and lifecycle
paths (a review of 2026-12, after the LangGraph store's), on a real Valkey and real
in-process workers.

Each test's docstring names the defect it proves (DEFECT) or the behaviour it pins.
Interleavings are forced by wrapping real calls (never a mock of the client): a hook
runs inside the real call and waits on a condition, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time

import pytest

pytest.importorskip("crewai")

from forking import fork_and_wait, isolated  # noqa: E402

from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import JobFailedError, LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import DrainTimeout, QueueConnectionLostError, QueueError, ValidationError  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

F = dict(categories=["c"], importance=0.5)  # every field given: the grouped fast path


@pytest.fixture(scope="module")
def embedder():
    return LocalEmbedder()


@pytest.fixture
def env(plain_server, namespace, embedder, monkeypatch):
    """A QueuedMemory factory on a fresh namespace, and ``env.worker()``: a running
    in-process worker (a context manager) WITHOUT an LLM (a job that needs one fails:
    "no LLM"). No worker runs unless a test starts one."""
    monkeypatch.delenv(crewai_config.MEMORY_FACTORY_ENV, raising=False)
    monkeypatch.delenv(crewai_config.LLM_ENV, raising=False)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    made: list[QueuedMemory] = []

    def make(**kwargs):
        kwargs.setdefault("consolidation_threshold", 1.0)
        kwargs.setdefault("drain_timeout", 60)
        m = QueuedMemory(storage=ValkeyStore(settings), embedder=embedder, llm=StandInLLM(), **kwargs)
        made.append(m)
        return m

    def worker():
        return worker_mod.running_worker(
            settings, threads=4, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=0
        )

    make.worker = worker
    make.settings = settings
    yield make
    with worker():
        for m in made:
            try:
                m.drain_timeout = 30
                m.reset_all()
                m.close()
            except Exception:  # noqa: BLE001
                pass
    crewai_config.reset_worker_memory_config()


def _wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _records(memory: QueuedMemory, scope: str) -> list:
    """What the store holds in ``scope`` (read straight from the store: no drain)."""
    with ValkeyStore(memory.store.settings) as s:
        return s.list_records(scope_prefix=scope, limit=100)


def _lose_replies(memory: QueuedMemory) -> list:
    """Every enqueue from now on reaches Valkey (the real script runs) but its caller
    gets ``QueueConnectionLostError``, as when the reply of the last retry is lost."""
    group = memory.queue._sends
    real = group._send
    sent: list = []

    def send(steps):
        results = real(steps)
        sent.extend(s.args[-1] for s in steps)
        return [r if r is not None else QueueConnectionLostError("Valkey did not answer (reply lost)")
                for r in results]  # fmt: skip

    group._send = send
    return sent


# ============================================================================ 1. reply lost
def test_a_remember_whose_enqueue_reply_was_lost_is_still_waited_for(env):
    """DEFECT: ``remember()``'s enqueue reached Valkey but its reply was lost
    (``QueueConnectionLostError`` after the script ran). The job id was chosen before
    the send, yet it is never watched: ``drain_writes()`` (so every ``recall``) returns
    at once while the job is pending, and the memory the caller was told failed
    appears later. Expected: the job is watched anyway (the settler finds it
    committed, or "lost" if it never arrived), so the next drain waits for it."""
    memory = env(drain_timeout=1.0)
    sent = _lose_replies(memory)
    with pytest.raises(QueueConnectionLostError):
        memory.remember("a fact whose reply was lost", scope="/lost", **F)
    assert len(sent) == 1 and memory.queue.pending() == [sent[0]]  # the job IS in Valkey
    try:
        memory.drain_writes()  # no worker: a drain that waits for the job times out
        drained = "returned at once"
    except DrainTimeout:
        drained = "waited for the job"
    with env.worker():
        appeared = _wait_for(lambda: len(_records(memory, "/lost")) == 1)
    assert appeared  # the write the caller saw fail is committed later
    assert drained == "waited for the job", (
        f"drain_writes {drained} while job {sent[0]} of a remember() that raised "
        "QueueConnectionLostError was pending in Valkey; its record appeared after the drain"
    )


def test_a_remember_many_whose_enqueue_reply_was_lost_is_still_waited_for(env):
    """DEFECT: the same for ``remember_many`` (the save thread's enqueue): the reply
    lost after the job reached Valkey, the call is reported as "nothing enqueued"
    (``MemorySaveFailedEvent``) and nothing watches the job: ``drain_writes()`` returns
    while it is pending, and its records appear later, unannounced."""
    memory = env(drain_timeout=1.0, background_enqueue=False)
    sent = _lose_replies(memory)
    memory.remember_many(["fact one", "fact two"], scope="/lostmany", **F)  # failures are events
    assert len(sent) == 1 and memory.queue.pending() == [sent[0]]
    try:
        memory.drain_writes()
        drained = "returned at once"
    except DrainTimeout:
        drained = "waited for the job"
    with env.worker():
        appeared = _wait_for(lambda: len(_records(memory, "/lostmany")) == 2)
    assert appeared
    assert drained == "waited for the job", (
        f"drain_writes {drained} while job {sent[0]} of a remember_many() reported as "
        "'nothing enqueued' was pending in Valkey; its 2 records appeared after the drain"
    )


# ============================================================================ 2. group split
def _grouped_calls(memory: QueuedMemory, texts: dict[str, str], fail_single=None):
    """Run ``remember(text)`` for every ``texts`` entry in its own thread so that all
    but a first "leader" call share ONE group send (the leader's send is held until
    the others wait). ``fail_single(item)`` may raise in the single-item sends the
    group is split into. Returns ``{name: record or exception}``."""
    real = memory.queue.enqueue_encode_items
    state = {"n": 0}
    n_waiting = len(texts)

    def hooked(job_items, **kwargs):
        state["n"] += 1
        if state["n"] == 1:  # the leader: hold its send until the others queue up
            assert _wait_for(lambda: len(memory._group._waiting) >= n_waiting, 120)
        elif len(job_items) == 1 and fail_single is not None:
            fail_single(job_items[0])
        return real(job_items, **kwargs)

    memory.queue.enqueue_encode_items = hooked
    out: dict[str, object] = {}

    def call(name, text):
        try:
            out[name] = memory.remember(text, scope="/g", **F)
        except Exception as exc:  # noqa: BLE001
            out[name] = exc

    leader = threading.Thread(target=call, args=("leader", "the leader's own fact"))
    leader.start()
    assert _wait_for(lambda: state["n"] == 1)
    threads = []
    for i, (name, text) in enumerate(texts.items()):  # queued in this order
        t = threading.Thread(target=call, args=(name, text))
        t.start()
        threads.append(t)
        # generous: a loaded machine (the whole suite beside) once took over 30 s, and
        # once (CI, 2026-12-07) over 120 s: a call that ended instead says how
        queued = _wait_for(lambda i=i, name=name: len(memory._group._waiting) >= i + 1 or name in out, 120)
        assert name not in out, f"remember({name!r}) ended before the held send: {out[name]!r}"
        assert queued, f"remember({name!r}) did not queue in 120 s (threads: {threading.active_count()})"
    for t in [leader, *threads]:
        t.join(120)
    del memory.queue.enqueue_encode_items
    return out


def test_an_oversized_item_in_a_split_group_fails_only_its_own_caller(env):
    """DEFECT: concurrent ``remember()`` calls share one job; a group over
    ``max_job_bytes`` is sent item by item "so each caller gets its own item's
    verdict" (``QueuedMemory._send_group``). But when one item is too big for a job
    on its own, the ``ValidationError`` of its single send escapes the split and
    ``GroupCommit`` hands it to EVERY caller of the group: a caller whose item was
    already sent (and commits) is told "nothing was enqueued", and a caller whose
    good item came after the bad one is refused and never sent."""
    memory = env(drain_timeout=60)
    big = "y" * (600 * 1024)  # two of these make a group over 1 MiB; alone each fits
    huge = "z" * ((1 << 20) - 16)  # content within its limit, its job over max_job_bytes
    with env.worker():
        out = _grouped_calls(memory, {"a": "a" + big, "bad": huge, "c": "c" + big})
        memory.drain_writes()
        stored = sorted(r.content[0] for r in _records(memory, "/g"))
    assert isinstance(out["bad"], ValidationError), out["bad"]
    errors = {k: repr(v)[:120] for k, v in out.items() if isinstance(v, Exception) and k != "bad"}
    assert errors == {}, (
        f"callers with good items got the bad item's error: {errors}; "
        f"first letters of the records stored: {stored}"
    )


def test_a_server_error_in_one_split_send_fails_only_its_own_caller(env):
    """DEFECT: as above with a server error (``QueueError``, injected in the real
    single-item send of one caller's item): the split group's other callers all get
    that error, although the item sent before it is committed (the caller told it
    failed finds its memory later) and the one after it was never tried."""
    memory = env(drain_timeout=60)
    big = "y" * (600 * 1024)

    def fail_b(item):
        if item["content"].startswith("b"):
            raise QueueError("OOM command not allowed when used memory > 'maxmemory'")

    with env.worker():
        out = _grouped_calls(memory, {"a": "a" + big, "b": "b" + big, "c": "c" + big}, fail_b)
        memory.drain_writes()
        stored = sorted(r.content[0] for r in _records(memory, "/g"))
    assert isinstance(out["b"], QueueError), out["b"]
    told = {k: ("record" if not isinstance(v, Exception) else type(v).__name__) for k, v in out.items()}
    assert told["a"] == "record" and told["c"] == "record", (
        f"what each caller was told: {told}; first letters of the records stored: {stored}"
    )


def test_a_group_over_the_job_size_is_split_and_each_caller_gets_its_record(env):
    """Pinned: a group of good items over ``max_job_bytes`` is sent item by item and
    every caller gets its own committed record."""
    memory = env(drain_timeout=60)
    big = "y" * (600 * 1024)
    with env.worker():
        out = _grouped_calls(memory, {"a": "a" + big, "b": "b" + big, "c": "c" + big})
    assert all(not isinstance(v, Exception) and v is not None for v in out.values()), out
    assert sorted(out[k].content[0] for k in "abc") == ["a", "b", "c"]


# ============================================================================ 3. fork
def _fork(child) -> int | None:
    """``child()`` (its int is the exit code) in a forked child, waited for 60 s at
    most (``None``: it hung and was killed)."""
    return fork_and_wait(child, bound=60)


def test_a_forked_child_does_not_wait_for_the_parents_jobs(request, env):
    """DEFECT: a child forked (gunicorn/celery prefork) after the parent's memory
    enqueued a job shares the parent's producer id AND the settle futures it copied:
    its ``drain_writes()`` (every ``recall``) waits for the parent's job, and with no
    worker raises ``DrainTimeout`` naming it, although the child wrote nothing.
    (docs/guarantees.md promises a child's drains neither wait for nor consume the
    parent's jobs for a default producer id; ``QueuedMemory`` always makes its id
    explicit, and the Settler is never reset in a child.)"""
    if isolated(request):  # it forks: in a fresh interpreter (tests/forking.py)
        return
    memory = env(drain_timeout=1.0, background_enqueue=False)
    memory.remember_many(["the parent's fact"], scope="/p", **F)
    [parent_job] = memory.queue.pending()

    def child():
        try:
            memory.drain_writes()
        except DrainTimeout as exc:
            return 3 if parent_job in str(exc) else 4
        return 0

    code = _fork(child)
    assert code == 0, {
        3: f"the child's drain_writes waited for the parent's job {parent_job} (DrainTimeout naming it)",
        4: "the child's drain_writes raised DrainTimeout",
    }.get(code, f"child exit code {code}")


def test_a_forked_child_does_not_consume_the_parents_failure(request, env):
    """DEFECT: the child keeps the parent's producer id and the settle futures it
    copied at fork; its first ``remember()`` starts a settle thread that checks them
    all, the parent's too, and consumes their failure records (``HDEL`` + tombstone).
    When it reaches a failed job of the parent before the parent's own settle thread
    does (here forced: the parent's checks are held until the child is done;
    otherwise a race of two threads woken by one message), the parent's ``remember()``
    of a job the workers dead-lettered RETURNS as if saved (the tombstone reads as
    "reported") instead of raising ``JobFailedError``."""
    if isolated(request):  # it forks: in a fresh interpreter (tests/forking.py)
        return
    memory = env(drain_timeout=60)
    parent_pid = os.getpid()
    settler = memory._settler
    real_check = settler._check
    child_done = threading.Event()

    def held_check(client):
        if os.getpid() == parent_pid and not child_done.is_set():
            return None
        return real_check(client)

    settler._check = held_check
    out: dict[str, object] = {}

    def parent_remember():
        try:  # no fields and no LLM in the worker: the flow job fails ("no LLM")
            out["r"] = memory.remember("a fact that needs inference")
        except Exception as exc:  # noqa: BLE001
            out["r"] = exc

    def child():
        try:  # the child's own write (the parent's worker commits it), then its drain
            memory.remember("the child's fact", scope="/child", **F)
            memory.drain_writes()
        except BaseException:  # noqa: BLE001
            return 5
        return 0

    t = threading.Thread(target=parent_remember)
    with env.worker():
        t.start()
        assert _wait_for(lambda: len(settler.outstanding()) == 1)  # enqueued and watched
        [job] = settler.outstanding()
        assert _wait_for(lambda: memory.queue.pending() == [])  # dead-lettered: "no LLM"
        code = _fork(child)
        child_done.set()
        t.join(60)
    assert not t.is_alive()
    assert isinstance(out["r"], JobFailedError), (
        f"the parent's remember() of dead-lettered job {job} returned {out['r']!r} "
        f"(child exit code {code}: the child's settle thread consumed its failure report)"
    )


def test_a_child_forked_while_a_remember_is_in_flight_can_remember(request, env):
    """Pinned: a child forked while another parent thread is inside ``remember()``
    (its group send held open) neither hangs nor inherits the parent's group: its
    own ``remember()`` enqueues and commits (the parent's worker commits it)."""
    if isolated(request):  # it forks: in a fresh interpreter (tests/forking.py)
        return
    memory = env(drain_timeout=60)
    parent_pid = os.getpid()
    real = memory.queue.enqueue_encode_items
    release, inside = threading.Event(), threading.Event()

    def hooked(job_items, **kwargs):
        if os.getpid() == parent_pid and not release.is_set():
            inside.set()
            release.wait(60)
        return real(job_items, **kwargs)

    memory.queue.enqueue_encode_items = hooked
    out: dict[str, object] = {}

    def parent_remember():
        out["r"] = memory.remember("the parent's fact", scope="/fork", **F)

    t = threading.Thread(target=parent_remember)
    with env.worker():
        t.start()
        assert inside.wait(30)

        def child():
            try:
                record = memory.remember("the child's fact", scope="/fork", **F)
            except BaseException:  # noqa: BLE001
                return 6
            return 0 if record is not None and record.content == "the child's fact" else 7

        code = _fork(child)
        release.set()
        t.join(60)
    del memory.queue.enqueue_encode_items
    assert code == 0, f"child exit code {code}"
    assert out["r"].content == "the parent's fact"


# ============================================================================ 4. lifecycle
def test_close_does_not_strand_a_remember_that_enqueued_during_it(env):
    """DEFECT: ``close()`` drains, closes the store and the save pool, then stops the
    settle thread. A ``remember()`` of another thread that enqueued after close()'s
    drain (here: while the store closes) is watched by a settle thread that close()
    then stops: its job commits, but nothing resolves its future, so the caller
    waits its whole ``drain_timeout`` and gets ``DrainTimeout`` for a committed write
    (with ``drain_timeout=None`` it waits for ever). Here no worker runs during
    close(); one is started right after it (loading its model may take seconds: the
    caller's drain_timeout leaves room for it)."""
    memory = env(drain_timeout=60)
    store = memory.store
    real_close = store.close
    out: dict[str, object] = {}

    def other_thread():
        try:
            out["r"] = memory.remember("remembered while closing", scope="/closing", **F)
        except Exception as exc:  # noqa: BLE001
            out["r"] = exc

    t = threading.Thread(target=other_thread)

    def closing():
        t.start()  # another agent thread remembers while close() runs
        assert _wait_for(lambda: len(memory._settler.outstanding()) == 1)
        real_close()

    store.close = closing
    memory.close()  # no worker yet: the other thread's job stays pending through close()
    with env.worker():
        t.join(60)
        committed = len(_records(memory, "/closing"))
    del store.__dict__["close"]
    assert committed == 1
    assert not isinstance(out["r"], Exception), (
        f"remember() of a job committed during close() got {out['r']!r}"
    )


def test_use_after_close_remembers_and_recalls(env):
    """Pinned: a closed memory still works (CrewAI runs late saves synchronously
    after close): remember, remember_many and recall reconnect and see every write."""
    memory = env(drain_timeout=60)
    with env.worker():
        memory.remember("before close", scope="/after", **F)
        memory.close()
        record = memory.remember("after close", scope="/after", **F)
        assert record is not None and record.content == "after close"
        memory.remember_many(["many after close"], scope="/after", **F)
        found = {m.record.content for m in memory.recall("close", scope="/after", depth="shallow", limit=10)}
    assert found == {"before close", "after close", "many after close"}


def test_close_waits_for_remember_many_in_flight(env):
    """Pinned: ``close()`` right after ``remember_many`` (background hand-off) waits
    for the hand-off and the job: once it returns, the records are committed."""
    memory = env(drain_timeout=60)
    with env.worker():
        memory.remember_many([f"fact {i}" for i in range(20)], scope="/cl", **F)
        memory.close()
        assert len(_records(memory, "/cl")) == 20


def test_reset_all_waits_for_saves_in_flight_and_leaves_nothing_behind(env):
    """Pinned: ``reset_all()`` right after background ``remember_many`` calls drains
    them first, so no record of a save made before it appears after it."""
    memory = env(drain_timeout=60)
    with env.worker():
        for i in range(5):
            memory.remember_many([f"fact {i}-{j}" for j in range(10)], scope="/ra", **F)
        memory.reset_all()
        assert memory.queue.pending() == []
        assert _records(memory, "/ra") == []
        memory.remember("after the reset", scope="/ra", **F)  # the memory still works
        assert [r.content for r in _records(memory, "/ra")] == ["after the reset"]


def test_async_twins_work_across_two_event_loops(env):
    """Pinned: ``aremember``/``aremember_many``/``arecall`` (CrewAI's twins, which call
    the sync methods) work from two event loops in turn (``asyncio.run`` twice)."""
    memory = env(drain_timeout=60)

    async def one(i):
        await memory.aremember(f"async fact {i}", scope="/aio", **F)
        await memory.aremember_many([f"async many {i}"], scope="/aio", **F)
        return {m.record.content for m in await memory.arecall("async", scope="/aio", depth="shallow", limit=10)}

    with env.worker():
        first = asyncio.run(one(1))
        second = asyncio.run(one(2))
    assert first == {"async fact 1", "async many 1"}
    assert second == {"async fact 1", "async many 1", "async fact 2", "async many 2"}


def test_a_cancelled_aremember_is_waited_for_by_the_next_recall(env):
    """Pinned: ``aremember`` cancelled by ``asyncio.wait_for`` (it runs the sync
    remember in a thread here, as an app offloading it would) still leaves its job
    watched: the next ``recall`` waits for it and sees the memory."""
    from concurrent.futures import ThreadPoolExecutor

    memory = env(drain_timeout=60)
    # Its own pool: asyncio.run's default executor would wait at exit for the remember,
    # which waits for a worker that starts only after (60 s of nothing).
    pool = ThreadPoolExecutor(1)

    async def main():
        remember = functools.partial(memory.remember, "offloaded and cancelled", scope="/cx", **F)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(pool, remember), 0.001)

    asyncio.run(main())  # no worker yet: the remember is still waiting
    assert _wait_for(lambda: len(memory._settler.outstanding()) == 1)
    with env.worker():
        found = [m.record.content for m in memory.recall("offloaded", scope="/cx", depth="shallow")]
    assert found == ["offloaded and cancelled"]
    pool.shutdown(wait=True)  # the remember saw its job committed


def test_a_recall_from_another_thread_sees_every_write_that_returned_before_it(env):
    """Pinned: thread A remembers (``remember`` and background ``remember_many`` in
    turn); after each returns, thread B's recall (which started after that return)
    sees it."""
    memory = env(drain_timeout=60)
    returned: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    misses: list = []

    def writer():
        for i in range(12):
            text = f"threaded fact {i}"
            if i % 2:
                memory.remember(text, scope="/th", **F)
            else:
                memory.remember_many([text], scope="/th", **F)
            with lock:
                returned.append(text)
        stop.set()

    def reader():
        while not stop.is_set() or len(returned) < 12:
            with lock:
                expected = set(returned)
            seen = {m.record.content for m in memory.recall("threaded fact", scope="/th", depth="shallow", limit=50)}
            if not expected <= seen:
                misses.append(sorted(expected - seen))
            if stop.is_set():
                break

    with env.worker():
        tw, tr = threading.Thread(target=writer), threading.Thread(target=reader)
        tw.start()
        tr.start()
        tw.join(120)
        tr.join(120)
    assert len(returned) == 12
    assert misses == []
