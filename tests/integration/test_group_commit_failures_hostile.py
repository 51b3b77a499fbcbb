"""The group commit (``memworker/queue/group.py``) under failure and hostility (a
hostile review of 2026-12-06), through ``QueuedStore.put`` and ``MemoryQueue``, on a
real Valkey with a real in-process worker.

The rules checked: a caller whose own put is bad gets the error (an ``Exception``,
never a ``RuntimeError``, naming the limit) and nothing of it is written, while the
other callers of its group return normally and their puts commit, each once, the
later value of a key winning; a caller interrupted, or a leader interrupted, never
hands another thread a ``KeyboardInterrupt`` nor leaves the group stuck; a connection
killed mid-group fails no caller silently; a child forked while the group is
mid-flight can put.

Fault injection wraps the group's ``send`` callable (the real send still runs against
the server); the Valkey client is never mocked.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

pytest.importorskip("langgraph.store.base")

from test_langgraph import embedder  # noqa: E402,F401
from forking import fork_and_wait, isolated  # noqa: E402
from test_langgraph_async_hostile import (  # noqa: E402,F401
    _wait_for,
    make_store,
    run_worker,
    settings,
)
from valkey_servers import raw_client  # noqa: E402

from memworker.errors import ValidationError  # noqa: E402

NS = ("grp", "u1")
SMALL_JOB = 8192  # a store's queue max_job_bytes in the size tests
BIG = "apple " * 2000  # ~12 KB of indexed text: over SMALL_JOB alone, under MAX_CONTENT_BYTES


def _gated(group):
    """Wrap ``group._send``: the first send waits for ``gate`` (a send in flight, so the
    next submits gather); returns (gate, in_first_send, calls, real)."""
    real = group._send  # noqa: SLF001
    gate, in_first = threading.Event(), threading.Event()
    calls: list[int] = []

    def send(entries):
        calls.append(len(entries))
        if len(calls) == 1:
            in_first.set()
            gate.wait(60)
        return real(entries)

    group._send = send  # noqa: SLF001
    return gate, in_first, calls, real


def _put_in_thread(store, key, value, outcomes):
    def run():
        try:
            store.put(NS, key, value)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what is checked
            outcomes[key] = exc
        else:
            outcomes[key] = None

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _gathered(group, n):
    return _wait_for(lambda: len(group._waiting) >= n, bound=30)  # noqa: SLF001


def _settled(store):
    assert _wait_for(lambda: store.queue.pending() == [], bound=60), "jobs never committed"


def _value(store, key):
    got = store.get(NS, key)
    return None if got is None else got.value


# ----------------------------------------------------------------------------- a bad put among good ones


def test_a_put_too_big_for_a_job_among_good_puts_of_its_group_fails_alone(make_store, run_worker):
    """Threads put while a send is in flight, one value too big for a job: that caller
    alone gets a ValidationError naming the limit, nothing of it is written; the others
    return and commit."""
    run_worker()
    store = make_store()
    store.queue.max_job_bytes = SMALL_JOB
    with pytest.raises(ValidationError):  # alone, the big put is refused
        store.put(NS, "alone", {"text": BIG})
    gate, in_first, calls, _ = _gated(store._group)  # noqa: SLF001
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "lead", {"text": "cherry"}, outcomes)]
    assert in_first.wait(30)
    for key, text in (("a", "dog"), ("bad", BIG), ("b", "cat")):
        threads.append(_put_in_thread(store, key, {"text": text}, outcomes))
        assert _gathered(store._group, len(threads) - 1)  # noqa: SLF001 - in order
    gate.set()
    for t in threads:
        t.join(60)
    assert calls[:2] == [1, 3]  # the three gathered went as one group
    assert outcomes["lead"] is None and outcomes["a"] is None and outcomes["b"] is None, outcomes
    bad = outcomes["bad"]
    assert isinstance(bad, ValidationError) and not isinstance(bad, RuntimeError), repr(bad)
    assert "max_job_bytes" in str(bad), str(bad)
    _settled(store)
    assert _value(store, "a") == {"text": "dog"} and _value(store, "b") == {"text": "cat"}
    assert _value(store, "bad") is None and _value(store, "alone") is None
    assert _value(store, "lead") == {"text": "cherry"}


def test_a_put_too_big_for_a_job_is_refused_naming_its_key_in_a_group_as_in_a_batch(make_store, run_worker):
    """A put too big for a job, refused by the group commit (alone, or in a group with
    another thread's put), names the put's key as the same put in ``batch`` does
    ("put of 'bigkey' is ... bytes as a job"): the caller of a store shared by many
    agents learns which put was refused."""
    from langgraph.store.base import PutOp

    store = make_store()
    store.queue.max_job_bytes = SMALL_JOB
    with pytest.raises(ValidationError) as in_batch:
        store.batch([PutOp(NS, "small", {"text": "dog"}), PutOp(NS, "bigkey", {"text": BIG})])
    assert "'bigkey'" in str(in_batch.value)
    gate, in_first, calls, real = _gated(store._group)  # noqa: SLF001
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "lead", {"text": "cherry"}, outcomes)]
    assert in_first.wait(30)
    threads.append(_put_in_thread(store, "other", {"text": "cat"}, outcomes))
    assert _gathered(store._group, 1)  # noqa: SLF001
    threads.append(_put_in_thread(store, "bigkey", {"text": BIG}, outcomes))
    assert _gathered(store._group, 2)  # noqa: SLF001
    gate.set()
    for t in threads:
        t.join(60)
    store._group._send = real  # noqa: SLF001
    assert outcomes["other"] is None and outcomes["lead"] is None, outcomes
    assert isinstance(outcomes["bigkey"], ValidationError), repr(outcomes["bigkey"])
    with pytest.raises(ValidationError) as alone:
        store.put(NS, "bigkey", {"text": BIG})
    for exc in (outcomes["bigkey"], alone.value):
        assert "'bigkey'" in str(exc), f"the error does not name the put: {exc}"


@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-then-good", "good-then-bad"])
def test_two_puts_of_one_key_in_a_group_one_too_big_the_big_one_is_refused(make_store, run_worker, bad_first):
    """Two threads put one key while a send is in flight, one value too big for a job.
    Put alone (or one after the other) the big one raises ValidationError; in a group
    it must too, whatever its place: a caller is never told its put was accepted when
    its value could not have been written. The good value is stored."""
    run_worker()
    store = make_store()
    store.queue.max_job_bytes = SMALL_JOB
    gate, in_first, calls, _ = _gated(store._group)  # noqa: SLF001
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "lead", {"text": "cherry"}, outcomes)]
    assert in_first.wait(30)
    order = [("big", BIG), ("small", "dog")] if bad_first else [("small", "dog"), ("big", BIG)]

    for tag, text in order:
        def run(tag=tag, text=text):
            try:
                store.put(NS, "k", {"text": text})
            except BaseException as exc:  # noqa: BLE001
                outcomes[tag] = exc
            else:
                outcomes[tag] = None

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
        assert _gathered(store._group, len(threads) - 1)  # noqa: SLF001
    gate.set()
    for t in threads:
        t.join(60)
    assert calls[:2] == [1, 2]
    assert outcomes["small"] is None, repr(outcomes["small"])
    assert isinstance(outcomes["big"], ValidationError), (
        f"the too-big put of 'k' was told {outcomes['big']!r} (accepted) in a group"
    )
    _settled(store)
    assert _value(store, "k") == {"text": "dog"}


# ----------------------------------------------------------------------------- interrupts


def test_a_leader_interrupted_by_ctrl_c_hands_no_keyboardinterrupt_to_other_threads(make_store, run_worker):
    """The main thread leads a group of three puts (its own and two other threads'),
    and Ctrl-C (SIGINT) arrives while it sends. The main thread may get
    KeyboardInterrupt; the two other threads' puts were not interrupted: each must
    return normally or raise an ``Exception`` (their job may be in Valkey), never a
    KeyboardInterrupt of another thread. A put told it returned is committed, and the
    group still sends afterwards."""
    run_worker()
    store = make_store()
    store.put(NS, "warm", {"text": "apple"})  # clients made
    group = store._group  # noqa: SLF001
    real = group._send  # noqa: SLF001
    gate, in_first = threading.Event(), threading.Event()
    calls: list[int] = []

    def send(entries):
        calls.append(len(entries))
        if len(calls) == 1:
            in_first.set()
            gate.wait(60)
            return real(entries)
        if len(calls) == 2:  # the main thread's group: sent, then Ctrl-C before the reply is used
            out = real(entries)
            signal.raise_signal(signal.SIGINT)
            time.sleep(1)  # the handler runs here at the latest
            return out
        return real(entries)

    group._send = send  # noqa: SLF001
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "lead", {"text": "cherry"}, outcomes)]
    assert in_first.wait(30)

    def followers():  # once the main thread waits first in line, two more gather
        assert _gathered(group, 1)
        for i, key in enumerate(("x", "y")):
            threads.append(_put_in_thread(store, key, {"text": "dog" if key == "x" else "cat"}, outcomes))
            _gathered(group, 2 + i)
        gate.set()

    helper = threading.Thread(target=followers, daemon=True)
    helper.start()
    main_outcome: BaseException | None = None
    try:
        store.put(NS, "m", {"text": "moose"})
    except KeyboardInterrupt as exc:
        main_outcome = exc
    helper.join(60)
    for t in threads:
        t.join(60)
    group._send = real  # noqa: SLF001
    assert calls[:2] == [1, 3], calls  # the main thread led the group of m, x, y
    assert isinstance(main_outcome, KeyboardInterrupt)
    for key in ("x", "y"):
        got = outcomes[key]
        assert got is None or isinstance(got, Exception), (
            f"put of {key!r} in another thread got {got!r}: the main thread's Ctrl-C"
        )
    store.put(NS, "after", {"text": "eagle"})  # the group still sends
    _settled(store)
    assert _value(store, "after") == {"text": "eagle"}
    for key in ("x", "y"):
        if outcomes[key] is None:
            assert _value(store, key) is not None


def test_a_waiting_caller_interrupted_takes_its_put_back_and_the_group_goes_on(make_store, run_worker):
    """The main thread waits in the group (a send in flight) and gets Ctrl-C: its put is
    taken back (never written), the caller queued behind it is sent and returns, and
    later puts are not stuck."""
    run_worker()
    store = make_store()
    group = store._group  # noqa: SLF001
    gate, in_first, calls, real = _gated(group)
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "lead", {"text": "cherry"}, outcomes)]
    assert in_first.wait(30)

    def interrupter():
        assert _gathered(group, 1)  # the main thread waits
        threads.append(_put_in_thread(store, "behind", {"text": "dog"}, outcomes))
        assert _gathered(group, 2)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.5)
        gate.set()

    helper = threading.Thread(target=interrupter, daemon=True)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        store.put(NS, "taken-back", {"text": "moose"})
    helper.join(60)
    for t in threads:
        t.join(60)
    group._send = real  # noqa: SLF001
    assert outcomes == {"lead": None, "behind": None}, outcomes
    store.put(NS, "after", {"text": "eagle"})
    _settled(store)
    assert _value(store, "behind") == {"text": "dog"}
    assert _value(store, "after") == {"text": "eagle"}
    assert _value(store, "taken-back") is None


# ----------------------------------------------------------------------------- the server away


def test_connections_killed_while_a_group_gathers_fail_no_caller_silently(make_store, run_worker, plain_server):
    """A put's enqueue is in flight (the queue's group) and three more puts gather in
    the store's group, two of one key; every client connection of the server is killed
    before they go. Each put then returns (its job commits) or raises an ``Exception``
    that is not a ``RuntimeError``; of the key put twice, the later value wins."""
    store = make_store()
    store.put(NS, "warm", {"text": "apple"})
    gate, in_first, calls, real = _gated(store.queue._sends)  # noqa: SLF001 - the queue's group
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "lead", {"text": "cherry"}, outcomes)]
    assert in_first.wait(30)
    for i, (tag, key, text) in enumerate((("s1", "s1", "gnu"), ("k-first", "k", "cat"), ("k-later", "k", "fox"))):
        def run(tag=tag, key=key, text=text):
            try:
                store.put(NS, key, {"text": text})
            except BaseException as exc:  # noqa: BLE001
                outcomes[tag] = exc
            else:
                outcomes[tag] = None

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
        assert _gathered(store._group, i + 1)  # noqa: SLF001
    raw = raw_client(plain_server)
    try:
        raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    finally:
        raw.close()
    gate.set()
    for t in threads:
        t.join(90)
    store.queue._sends._send = real  # noqa: SLF001
    assert set(outcomes) == {"lead", "s1", "k-first", "k-later"}, outcomes
    for tag, got in outcomes.items():
        assert got is None or (isinstance(got, Exception) and not isinstance(got, RuntimeError)), (tag, got)
    run_worker()
    _settled(store)
    for key in ("lead", "s1"):
        if outcomes[key] is None:
            assert _value(store, key) is not None, key
    if outcomes["k-later"] is None:
        assert _value(store, "k") == {"text": "fox"}
    elif outcomes["k-first"] is None:
        assert _value(store, "k") in ({"text": "cat"}, {"text": "fox"})


# ----------------------------------------------------------------------------- fork


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_child_forked_while_the_queue_group_is_mid_flight_can_put(request, make_store, run_worker):
    """A thread's enqueue is in flight in the queue's group (``MemoryQueue._sends``) and
    two more wait behind it when the process forks: the child's puts through the same
    store go out (no lock copied held, no leader that is not there) and read back; the
    parent's three puts commit."""
    if isolated(request):  # it forks: in a fresh interpreter (tests/forking.py)
        return
    run_worker()
    store = make_store()
    store.put(NS, "warm", {"text": "apple"})
    inner = store.queue._sends  # noqa: SLF001
    gate, in_first, calls, real = _gated(inner)
    outcomes: dict[str, BaseException | None] = {}
    threads = [_put_in_thread(store, "p1", {"text": "dog"}, outcomes)]
    assert in_first.wait(30)
    threads.append(_put_in_thread(store, "p2", {"text": "cat"}, outcomes))
    assert _gathered(store._group, 1)  # noqa: SLF001

    def child():
        inner._send = real  # noqa: SLF001
        store.put(NS, "c1", {"text": "eel"})
        store.put(NS, "c2", {"text": "fox"})
        return _value(store, "c1") == {"text": "eel"} and _value(store, "c2") == {"text": "fox"}

    try:
        code = fork_and_wait(child, bound=45)
    finally:
        gate.set()
        for t in threads:
            t.join(60)
        inner._send = real  # noqa: SLF001
    assert code == 0, f"child exit {code} (None: it hung and was killed)"
    assert outcomes == {"p1": None, "p2": None}, outcomes
    _settled(store)
    assert _value(store, "p1") == {"text": "dog"} and _value(store, "p2") == {"text": "cat"}
