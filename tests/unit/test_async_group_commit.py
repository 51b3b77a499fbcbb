"""AsyncGroupCommit: concurrent tasks' submits share sends; each gets its own result.

The sends are held on asyncio events, so every grouping asserted is the only one
possible (no timing). Its users against a real Valkey: QueuedStore's ``aput`` in
tests/integration/test_langgraph.py, the queue's ``aenqueue_*`` in
tests/integration/test_queue_async_group.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from memworker.queue.group import AsyncGroupCommit


class Sender:
    """Records each send; the first one can be held until released."""

    def __init__(self, hold_first: bool = False, fail_on: int | None = None) -> None:
        self.sends: list[list[str]] = []
        self.hold_first = hold_first
        self.fail_on = fail_on
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, entries: list[str]) -> list[str]:
        self.sends.append(list(entries))
        if self.hold_first and len(self.sends) == 1:
            self.entered.set()
            await self.release.wait()
        if self.fail_on == len(self.sends):
            raise ConnectionError(f"send {len(self.sends)} failed")
        return [f"sent:{e}" for e in entries]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _outcome(task: asyncio.Task) -> object:
    """The task's result, error or "cancelled"; a task still waiting after 10 s fails
    the test (raises TimeoutError) instead of hanging it."""
    try:
        return await asyncio.wait_for(task, 10)
    except asyncio.CancelledError:
        return "cancelled"
    except Exception as exc:  # noqa: BLE001
        return exc


def test_a_lone_submit_sends_alone() -> None:
    async def main() -> None:
        sender = Sender()
        group = AsyncGroupCommit(sender, limit=8)
        assert await group.submit("a") == "sent:a"
        assert await group.submit("b") == "sent:b"
        assert sender.sends == [["a"], ["b"]]

    asyncio.run(main())


def test_submits_of_one_turn_share_the_first_send() -> None:
    async def main() -> None:
        sender = Sender()
        group = AsyncGroupCommit(sender, limit=64)
        results = await asyncio.gather(*(group.submit(f"e{i}") for i in range(10)))
        assert results == [f"sent:e{i}" for i in range(10)]
        assert sender.sends == [[f"e{i}" for i in range(10)]]

    asyncio.run(main())


async def _behind_a_held_send(group: AsyncGroupCommit, sender: Sender, entries: list[str]):
    """Submit "first" (its send held), then ``entries`` while it is held; release it.
    Returns each caller's outcome and the sends made before the release."""
    first = asyncio.create_task(group.submit("first"))
    await sender.entered.wait()
    others = {e: asyncio.create_task(group.submit(e)) for e in entries}
    await _turns()
    held = [list(batch) for batch in sender.sends]
    sender.release.set()
    outcomes = {"first": await _outcome(first)}
    for e, task in others.items():
        outcomes[e] = await _outcome(task)
    return outcomes, held


def test_submits_during_a_send_go_together_in_the_next_one() -> None:
    async def main() -> None:
        sender = Sender(hold_first=True)
        group = AsyncGroupCommit(sender, limit=64)
        entries = [f"e{i}" for i in range(10)]
        outcomes, held = await _behind_a_held_send(group, sender, entries)
        assert held == [["first"]]
        assert sender.sends == [["first"], entries]
        assert outcomes == {e: f"sent:{e}" for e in ["first", *entries]}

    asyncio.run(main())


def test_a_send_carries_at_most_limit_entries_oldest_first() -> None:
    async def main() -> None:
        sender = Sender(hold_first=True)
        group = AsyncGroupCommit(sender, limit=3)
        outcomes, _ = await _behind_a_held_send(group, sender, [f"e{i}" for i in range(7)])
        assert sender.sends == [["first"], ["e0", "e1", "e2"], ["e3", "e4", "e5"], ["e6"]]
        assert all(v == f"sent:{k}" for k, v in outcomes.items()) and len(outcomes) == 8

    asyncio.run(main())


def test_a_failed_send_fails_its_own_callers_only() -> None:
    async def main() -> None:
        sender = Sender(hold_first=True, fail_on=2)
        group = AsyncGroupCommit(sender, limit=2)
        outcomes, _ = await _behind_a_held_send(group, sender, ["a", "b", "c"])
        assert sender.sends == [["first"], ["a", "b"], ["c"]]
        assert isinstance(outcomes["a"], ConnectionError) and isinstance(outcomes["b"], ConnectionError)
        assert outcomes["first"] == "sent:first" and outcomes["c"] == "sent:c"
        assert await group.submit("after") == "sent:after"  # the group is not left busy

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
    async def main() -> None:
        sender = Sender(hold_first=True)
        group = AsyncGroupCommit(sender, limit=8)
        first = asyncio.create_task(group.submit("first"))
        await sender.entered.wait()
        gone = asyncio.create_task(group.submit("gone"))
        kept = asyncio.create_task(group.submit("kept"))
        await _turns()
        gone.cancel()
        await _turns()
        sender.release.set()
        assert await _outcome(first) == "sent:first"
        assert await _outcome(gone) == "cancelled"
        assert await _outcome(kept) == "sent:kept"
        assert sender.sends == [["first"], ["kept"]]  # nothing of "gone" was sent

    asyncio.run(main())


def test_a_caller_cancelled_during_its_send_leaves_the_others_their_results() -> None:
    async def main() -> None:
        sender = Sender(hold_first=True)
        group = AsyncGroupCommit(sender, limit=8)
        first = asyncio.create_task(group.submit("first"))
        second = asyncio.create_task(group.submit("second"))
        await sender.entered.wait()  # both in the held send
        first.cancel()
        await _turns()
        sender.release.set()
        assert await _outcome(first) == "cancelled"
        assert await _outcome(second) == "sent:second"
        assert sender.sends == [["first", "second"]]
        assert await group.submit("after") == "sent:after"

    asyncio.run(main())


def test_a_cancelled_sender_cancels_every_caller_it_owed() -> None:
    async def main() -> None:
        sender = Sender(hold_first=True)
        group = AsyncGroupCommit(sender, limit=1)
        first = asyncio.create_task(group.submit("first"))
        await sender.entered.wait()
        waiting = asyncio.create_task(group.submit("waiting"))
        await _turns()
        queue = group._queue(asyncio.get_running_loop())
        assert queue.task is not None
        queue.task.cancel()  # what asyncio.run does to the tasks left at its end
        assert await _outcome(first) == "cancelled"
        assert await _outcome(waiting) == "cancelled"
        assert queue.task is None and queue.waiting == []
        sender.hold_first = False
        assert await group.submit("after") == "sent:after"  # a new sender task

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
            return list(await asyncio.gather(*(group.submit(f"{name}{i}") for i in range(20))))

        outcomes[name] = asyncio.run(main())

    threads = [threading.Thread(target=in_a_loop, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    in_a_loop("c")
    for name in ("a", "b", "c"):
        assert outcomes[name] == [f"sent:{name}{i}" for i in range(20)]
