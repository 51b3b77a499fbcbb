"""AsyncGroupCommit: concurrent tasks' submits share sends; each gets its own result.

The sends are held on asyncio events, so every grouping asserted is the only one
possible (no timing). Its users against a real Valkey: QueuedStore's ``aput`` in
tests/integration/test_langgraph.py, the queue's ``aenqueue_*`` in
tests/integration/test_queue_async_group.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from memworker.queue.group import AsyncGroupCommit


class Sender:
    """Records each send; the sends numbered in ``hold`` (1 = the first) wait until
    ``release(n)``; the send numbered ``fail_on`` raises."""

    def __init__(self, hold: tuple[int, ...] = (), fail_on: int | None = None) -> None:
        self.sends: list[list[str]] = []
        self.hold = set(hold)
        self.fail_on = fail_on
        self._entered: dict[int, asyncio.Event] = {}
        self._release: dict[int, asyncio.Event] = {}

    def _event(self, which: dict[int, asyncio.Event], n: int) -> asyncio.Event:
        return which.setdefault(n, asyncio.Event())

    async def entered(self, n: int) -> None:
        await asyncio.wait_for(self._event(self._entered, n).wait(), 10)

    def release(self, n: int) -> None:
        self._event(self._release, n).set()

    async def __call__(self, entries: list[str]) -> list[str]:
        self.sends.append(list(entries))
        n = len(self.sends)
        await asyncio.sleep(0)  # like a real send, which waits for the server
        if n in self.hold:
            self._event(self._entered, n).set()
            await self._event(self._release, n).wait()
        if self.fail_on == n:
            raise ConnectionError(f"send {n} failed")
        return [f"sent:{e}" for e in entries]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _outcomes(tasks: dict[str, asyncio.Task]) -> dict[str, object]:
    """Each task's result, error or "cancelled", once all are done; a task still
    waiting after 10 s is cancelled and reported "hung" (the test fails, not hangs)."""
    await asyncio.wait(tasks.values(), timeout=10)
    out: dict[str, object] = {}
    for name, task in tasks.items():
        if not task.done():
            task.cancel()
            out[name] = "hung"
        elif task.cancelled():
            out[name] = "cancelled"
        else:
            out[name] = task.exception() or task.result()
    return out


async def _outcome(task: asyncio.Task) -> object:
    return (await _outcomes({"task": task}))["task"]


def test_an_uncontended_submit_sends_at_once() -> None:
    async def main() -> None:
        sender = Sender()
        group = AsyncGroupCommit(sender, limit=8)
        assert await group.submit("a") == "sent:a"
        assert await group.submit("b") == "sent:b"
        assert sender.sends == [["a"], ["b"]]
        assert group._queue(asyncio.get_running_loop()).task is None  # no hand-off made

    asyncio.run(main())


def test_of_many_submits_at_once_the_first_goes_alone_the_rest_together() -> None:
    async def main() -> None:
        sender = Sender()
        group = AsyncGroupCommit(sender, limit=64)
        results = await asyncio.wait_for(asyncio.gather(*(group.submit(f"e{i}") for i in range(10))), 10)
        assert results == [f"sent:e{i}" for i in range(10)]
        assert sender.sends == [["e0"], [f"e{i}" for i in range(1, 10)]]

    asyncio.run(main())


async def _behind_the_first(group: AsyncGroupCommit, sender: Sender, entries: Sequence[str]):
    """Submit "first" (its send, the first, held), then ``entries`` while it is held.
    Returns the task of "first" and those of ``entries`` (by entry), all waiting."""
    first = asyncio.create_task(group.submit("first"))
    await sender.entered(1)
    others = {e: asyncio.create_task(group.submit(e)) for e in entries}
    await _turns()
    return first, others


async def _behind_a_held_send(group: AsyncGroupCommit, sender: Sender, entries: list[str]):
    """Submit "first" (its send, the first, held), then ``entries`` while it is held;
    release it. Returns each caller's outcome and the sends made before the release."""
    first, others = await _behind_the_first(group, sender, entries)
    held = [list(batch) for batch in sender.sends]
    sender.release(1)
    return await _outcomes({"first": first, **others}), held


def test_submits_during_a_send_go_together_in_the_next_one() -> None:
    async def main() -> None:
        sender = Sender(hold=(1,))
        group = AsyncGroupCommit(sender, limit=64)
        entries = [f"e{i}" for i in range(10)]
        outcomes, held = await _behind_a_held_send(group, sender, entries)
        assert held == [["first"]]
        assert sender.sends == [["first"], entries]
        assert outcomes == {e: f"sent:{e}" for e in ["first", *entries]}

    asyncio.run(main())


def test_a_send_carries_at_most_limit_entries_oldest_first() -> None:
    async def main() -> None:
        sender = Sender(hold=(1,))
        group = AsyncGroupCommit(sender, limit=3)
        outcomes, _ = await _behind_a_held_send(group, sender, [f"e{i}" for i in range(7)])
        assert sender.sends == [["first"], ["e0", "e1", "e2"], ["e3", "e4", "e5"], ["e6"]]
        assert all(v == f"sent:{k}" for k, v in outcomes.items()) and len(outcomes) == 8

    asyncio.run(main())


def test_a_failed_send_fails_its_own_callers_only() -> None:
    async def main() -> None:
        sender = Sender(hold=(1,), fail_on=2)
        group = AsyncGroupCommit(sender, limit=2)
        outcomes, _ = await _behind_a_held_send(group, sender, ["a", "b", "c"])
        assert sender.sends == [["first"], ["a", "b"], ["c"]]
        assert isinstance(outcomes["a"], ConnectionError) and isinstance(outcomes["b"], ConnectionError)
        assert outcomes["first"] == "sent:first" and outcomes["c"] == "sent:c"
        assert await group.submit("after") == "sent:after"  # the group is not left busy
        sender.fail_on = len(sender.sends) + 1
        with pytest.raises(ConnectionError):  # an uncontended send's error, to its caller
            await group.submit("fails")
        assert await group.submit("after again") == "sent:after again"

    asyncio.run(main())


def test_a_send_must_return_one_result_per_entry() -> None:
    async def empty(entries: list[str]) -> list[str]:
        return []

    async def main() -> None:
        group = AsyncGroupCommit(empty, limit=4)
        with pytest.raises(ValueError, match="0 results for 1 entries"):
            await group.submit("x")

    asyncio.run(main())
    with pytest.raises(ValueError, match="limit"):
        AsyncGroupCommit(empty, limit=0)


def test_a_caller_cancelled_before_its_send_takes_its_entry_back() -> None:
    """Cancelled while the first (uncontended) send is out, or while the sender task
    sends others: either way nothing of its entry is sent."""

    async def main() -> None:
        sender = Sender(hold=(1, 2))
        group = AsyncGroupCommit(sender, limit=1)
        first, tasks = await _behind_the_first(group, sender, ("gone1", "a", "gone2", "kept"))
        tasks["gone1"].cancel()
        await _turns()
        sender.release(1)
        await sender.entered(2)  # the sender task's send of "a"
        tasks["gone2"].cancel()
        await _turns()
        sender.release(2)
        assert await _outcome(first) == "sent:first"
        assert await _outcomes(tasks) == {
            "gone1": "cancelled", "a": "sent:a", "gone2": "cancelled", "kept": "sent:kept"
        }  # fmt: skip
        assert sender.sends == [["first"], ["a"], ["kept"]]

    asyncio.run(main())


def test_a_caller_cancelled_during_a_shared_send_leaves_the_others_their_results() -> None:
    async def main() -> None:
        sender = Sender(hold=(1, 2))
        group = AsyncGroupCommit(sender, limit=8)
        first, others = await _behind_the_first(group, sender, ("a", "b"))
        a, b = others["a"], others["b"]
        sender.release(1)
        await sender.entered(2)  # "a" and "b" in the sender task's held send
        a.cancel()
        await _turns()
        sender.release(2)
        assert await _outcome(first) == "sent:first"
        assert await _outcome(a) == "cancelled"
        assert await _outcome(b) == "sent:b"
        assert sender.sends == [["first"], ["a", "b"]]
        assert await group.submit("after") == "sent:after"

    asyncio.run(main())


def test_a_cancelled_uncontended_caller_hands_the_waiting_entries_on() -> None:
    async def main() -> None:
        sender = Sender(hold=(1,))
        group = AsyncGroupCommit(sender, limit=8)
        first, others = await _behind_the_first(group, sender, ("waiting",))
        waiting = others["waiting"]
        first.cancel()  # its own send is cancelled with it
        assert await _outcome(first) == "cancelled"
        assert await _outcome(waiting) == "sent:waiting"
        assert sender.sends == [["first"], ["waiting"]]

    asyncio.run(main())


def test_a_cancelled_sender_task_cancels_every_caller_it_owed() -> None:
    async def main() -> None:
        sender = Sender(hold=(1, 2))
        group = AsyncGroupCommit(sender, limit=1)
        first, others = await _behind_the_first(group, sender, ("w1", "w2"))
        owed = list(others.values())
        sender.release(1)
        await sender.entered(2)  # the sender task's send of "w1", held; "w2" waits
        queue = group._queue(asyncio.get_running_loop())
        assert queue.task is not None
        queue.task.cancel()  # what asyncio.run does to the tasks left at its end
        assert await _outcome(first) == "sent:first"
        assert list((await _outcomes({str(i): t for i, t in enumerate(owed)})).values()) == ["cancelled", "cancelled"]
        assert queue.task is None and queue.waiting == [] and not queue.busy
        assert await group.submit("after") == "sent:after"

    asyncio.run(main())


def test_each_event_loop_has_its_own_queue() -> None:
    """One group used from two loops at once (two threads) and from a loop after
    another has ended: every caller gets its own result."""

    async def sent(entries: list[str]) -> list[str]:
        await asyncio.sleep(0.001)
        return [f"sent:{e}" for e in entries]

    group = AsyncGroupCommit(sent, limit=4)
    outcomes: dict[str, list[str]] = {}

    def in_a_loop(name: str) -> None:
        async def main() -> list[str]:
            return list(await asyncio.wait_for(asyncio.gather(*(group.submit(f"{name}{i}") for i in range(20))), 10))

        outcomes[name] = asyncio.run(main())

    threads = [threading.Thread(target=in_a_loop, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    in_a_loop("c")
    for name in ("a", "b", "c"):
        assert outcomes[name] == [f"sent:{name}{i}" for i in range(20)]


def test_under_uvloop_too() -> None:
    """LangGraph's server runs on uvloop: its loops key the group's queues as well."""
    uvloop = pytest.importorskip("uvloop")

    async def sent(entries: list[str]) -> list[str]:
        await asyncio.sleep(0)
        return [f"sent:{e}" for e in entries]

    group = AsyncGroupCommit(sent, limit=64)

    async def main() -> list[str]:
        return list(await asyncio.wait_for(asyncio.gather(*(group.submit(f"e{i}") for i in range(10))), 10))

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == [f"sent:e{i}" for i in range(10)]
    finally:
        loop.close()
