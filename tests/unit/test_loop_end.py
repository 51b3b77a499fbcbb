"""memworker.io.loops.LoopEnd: a closer run on an event loop as that loop ends."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from memworker.io.loops import LoopEnd


class _Closer:
    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []

    async def __call__(self) -> None:
        self.loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)  # a real await: the loop is still running


def test_the_closer_runs_on_its_own_loop_when_asyncio_run_ends() -> None:
    closer, kept = _Closer(), []

    async def body() -> asyncio.AbstractEventLoop:
        kept.append(LoopEnd(closer))
        assert kept[0].armed and not closer.loops
        return asyncio.get_running_loop()

    loop = asyncio.run(body())
    assert closer.loops == [loop]
    assert not kept[0].armed


def test_the_closer_runs_once_when_an_asyncio_runner_closes_not_between_runs() -> None:
    closer, kept = _Closer(), []

    async def arm() -> None:
        kept.append(LoopEnd(closer))

    async def nothing() -> None:
        await asyncio.sleep(0)

    with asyncio.Runner() as runner:
        runner.run(arm())
        runner.run(nothing())
        assert closer.loops == []
        loop = runner.get_loop()
    assert closer.loops == [loop]


def test_cancel_means_the_closer_never_runs(unraisable) -> None:
    closer = _Closer()

    async def body() -> None:
        end = LoopEnd(closer)
        end.cancel()
        end.cancel()  # twice is harmless
        assert not end.armed

    asyncio.run(body())
    assert closer.loops == []
    assert unraisable == []


def test_made_outside_a_running_loop_it_is_not_armed_and_never_runs() -> None:
    closer = _Closer()
    end = LoopEnd(closer)
    assert not end.armed
    end.cancel()
    assert closer.loops == []


def test_a_loop_closed_by_hand_never_runs_it_and_dropping_it_later_reports_nothing(unraisable) -> None:
    """loop.close() without shutdown_asyncgens(): the generator stays suspended. Dropped
    afterwards (cancelled or simply collected) it must not print "Exception ignored"."""
    closer = _Closer()
    loop = asyncio.new_event_loop()
    kept: list[LoopEnd] = []

    async def arm() -> None:
        kept.append(LoopEnd(closer))
        kept.append(LoopEnd(closer))

    loop.run_until_complete(arm())
    loop.close()
    assert closer.loops == []
    kept[0].cancel()
    kept.clear()  # the second one is collected still suspended
    gc.collect()
    assert closer.loops == []
    assert unraisable == [], [u.exc_value for u in unraisable]


def test_collected_while_its_loop_still_runs_the_closer_runs_on_that_loop(unraisable) -> None:
    """An owner dropped while its loop runs (not at the loop's end): the loop's
    finalizer hook schedules the close there rather than losing it."""
    closer = _Closer()

    async def body() -> None:
        end = LoopEnd(closer)
        del end
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(body())
    assert len(closer.loops) == 1
    assert unraisable == []


def test_a_failing_closer_does_not_fail_the_loops_shutdown(caplog) -> None:
    async def broken() -> None:
        raise ConnectionError("gone")

    kept = []

    async def body() -> None:
        kept.append(LoopEnd(broken))

    caplog.set_level("DEBUG", logger="memworker.client")
    asyncio.run(body())  # raises nothing
    assert any("as its event loop ended" in r.getMessage() for r in caplog.records)


def test_loops_in_threads_each_close_only_their_own() -> None:
    closer = _Closer()
    loops: list[asyncio.AbstractEventLoop] = []
    kept: list[LoopEnd] = []
    lock = threading.Lock()

    def one() -> None:
        async def body() -> None:
            with lock:
                kept.append(LoopEnd(closer))
                loops.append(asyncio.get_running_loop())

        asyncio.run(body())

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(id, closer.loops)) == sorted(map(id, loops))


def test_made_while_the_loop_closes_async_generators_it_is_not_armed_and_warns_nothing(recwarn) -> None:
    """A user's async generator whose finally calls memworker (a first call on that
    loop) runs inside shutdown_asyncgens(): too late to be closed by it."""
    import warnings

    warnings.simplefilter("always", ResourceWarning)
    closer, kept = _Closer(), []

    async def users_generator():
        try:
            yield 1
        finally:
            kept.append(LoopEnd(closer))

    async def body() -> None:
        gen = users_generator()
        await gen.__anext__()
        kept.append(gen)  # left suspended: asyncio.run's shutdown_asyncgens closes it

    asyncio.run(body())
    ends = [k for k in kept if isinstance(k, LoopEnd)]
    assert len(ends) == 1 and not ends[0].armed
    assert closer.loops == []
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)], [str(w.message) for w in recwarn]
