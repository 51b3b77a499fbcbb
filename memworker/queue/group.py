"""Group commit: concurrent calls that each send a little share one send.

Thirty-two agent threads that each ``remember()`` one text would enqueue 32 one-item
jobs, and the worker would fetch, commit, acknowledge and announce each of them on its
own: per record, that costs more CPU than anything but the model. Instead, calls that
arrive while a send is in flight wait for it, and the next send carries all of them
(a database's group commit). Its users:

- ``QueuedMemory.remember()`` and ``QueuedStore.put()`` put the items of concurrent
  calls in ONE job;
- :class:`~memworker.queue.producer.MemoryQueue` sends the enqueues of concurrent calls
  in one script call, each still its own job (its own id, message, pending mark).

- An uncontended call sends at once: nothing waits for a batch to fill.
- One caller at a time (the *leader*) sends; the entries that queued up meanwhile go in
  the next send, made by the oldest of their callers (promoted when the send ends).
- Each caller gets its own entry's result (or the send's error).

:class:`AsyncGroupCommit` does the same for coroutines (``QueuedStore.aput()``, the
queue's ``aenqueue_*``): tasks of one event loop that submit while a send is in flight
go together in the next one.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from memworker.errors import QueueError
from memworker.forks import reset_in_forked_children

__all__ = ["AsyncGroupCommit", "GroupCommit"]

T = TypeVar("T")


class _Slot:
    __slots__ = ("entry", "done", "lead", "result", "error")

    def __init__(self, entry: Any) -> None:
        self.entry = entry
        #: Made only for a caller that waits (an uncontended call sends at once): a
        #: lock made held, released once to wake the caller (half the CPU of an
        #: Event's wait and set, which go through a Condition).
        self.done: Any = None
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Batches :meth:`submit` calls made from many threads into calls of ``send``.

    Args:
        send: ``send(entries) -> results``, one result per entry, in order. Called by
            one thread at a time, with 1 to ``limit`` entries.
        limit: Most entries per ``send``.
    """

    def __init__(self, send: Callable[[list[Any]], Sequence[T]], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._send = send
        self._limit = limit
        self._after_fork()
        reset_in_forked_children(self)

    def _after_fork(self) -> None:
        """No send in flight, nothing waiting (also in a forked child: a parent's
        thread that was sending is not there to finish, and its waiters' slots are
        copies nobody will wake)."""
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._busy = False

    def submit(self, entry: Any) -> T:
        """Send ``entry`` (with whatever else is waiting) and return its result.

        Raises:
            Exception: What ``send`` raised for the batch that held ``entry``.
        """
        slot = _Slot(entry)
        with self._lock:
            self._waiting.append(slot)
            slot.lead = not self._busy
            if not slot.lead:
                slot.done = _held_lock()
            self._busy = True
        try:
            if slot.done is not None:
                slot.done.acquire()  # released when sent by a leader, or when promoted to lead
                slot.done = None  # woken: a leader skips its own slot
            if slot.lead:
                self._flush()
        except BaseException:  # KeyboardInterrupt: the lead must not die with it
            self._abandon(slot)
            raise
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[no-any-return]

    def _abandon(self, slot: _Slot) -> None:
        """A caller interrupted while it waited: its entry is taken back unless a send
        has it already (then it goes out), and a lead it was just given passes to the
        next waiting entry (else every later submit would wait for ever)."""
        with self._lock:
            if slot not in self._waiting:
                return  # in a send: its sender releases a lock nobody waits on
            self._waiting.remove(slot)
            if not slot.lead:
                return
            successor = self._waiting[0] if self._waiting else None
            if successor is not None:
                successor.lead = True
            else:
                self._busy = False
        if successor is not None and successor.done is not None:
            successor.done.release()

    def _flush(self) -> None:
        """Send the oldest waiting entries (the leader's own first), then hand the lead
        to the oldest entry still waiting, or end the busy spell."""
        with self._lock:
            batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
        try:
            results = self._send([s.entry for s in batch])
            if len(results) != len(batch):
                raise ValueError(f"send returned {len(results)} results for {len(batch)} entries")
            for s, result in zip(batch, results):
                s.result = result
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for s in batch:
                # KeyboardInterrupt, SystemExit: the leader's own; the others get an
                # Exception their callers handle (their entries' fate is unknown)
                s.error = exc if isinstance(exc, Exception) or s.done is None else _interrupted(exc)
        finally:
            with self._lock:
                successor = self._waiting[0] if self._waiting else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._busy = False
            for s in batch:
                if s.done is not None:
                    s.done.release()
            if successor is not None and successor.done is not None:
                successor.done.release()


def _interrupted(exc: BaseException) -> QueueError:
    """What the callers whose entries another caller was sending get when that send
    was interrupted (``KeyboardInterrupt``, ``SystemExit``): an ``Exception`` (code that
    catches ``Exception``, CrewAI's save thread included, handles it), saying that
    their entries may or may not have reached Valkey, as after a lost connection."""
    error = QueueError(
        f"the send carrying this call was interrupted ({type(exc).__name__}) in the thread "
        "that made it; whether it reached Valkey is unknown (a drain reports it if it did)"
    )
    error.__cause__ = exc
    return error


def _held_lock() -> Any:
    lock = threading.Lock()
    lock.acquire()
    return lock


class _LoopQueue:
    """An event loop's entries waiting for a send, and whether a send is under way."""

    __slots__ = ("waiting", "busy", "task")

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self.busy = False
        #: The sender task of the entries that waited (kept: the loop holds tasks weakly).
        self.task: asyncio.Task[None] | None = None


class AsyncGroupCommit(Generic[T]):
    """:class:`GroupCommit` for coroutines: ``await submit(entry)`` from many tasks.

    Each event loop has its own queue. An uncontended call sends at once, in its own
    task. Calls that come while a send is under way wait; when it ends, one sender task
    takes the oldest waiting entries (at most ``limit``), awaits ``send`` on them, hands
    each caller its result (or the send's error), and goes on while entries wait.

    A caller cancelled before its entry went out takes it back (nothing of it is sent);
    cancelled while the sender task sends its entry, it stops waiting and the send goes
    on for the others. If the sender task itself is cancelled (the loop shutting down),
    every caller it owed a result is cancelled too: none waits for ever.

    Args:
        send: ``await send(entries) -> results``, one result per entry, in order;
            awaited by one task at a time per loop, with 1 to ``limit`` entries.
        limit: Most entries per ``send``.
    """

    def __init__(self, send: Callable[[list[Any]], Awaitable[Sequence[T]]], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._send = send
        self._limit = limit
        self._lock = threading.Lock()  # the map below; a loop's queue is its thread's
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )

    def _queue(self, loop: asyncio.AbstractEventLoop) -> _LoopQueue:
        with self._lock:
            found = self._loops.get(loop)
            if found is None:
                found = self._loops[loop] = _LoopQueue()
            return found

    async def submit(self, entry: Any) -> T:
        """Send ``entry`` (with whatever else waits in this loop) and return its result.

        Raises:
            Exception: What ``send`` raised for the batch that held ``entry``.
        """
        loop = asyncio.get_running_loop()
        queue = self._queue(loop)
        if not queue.busy:  # uncontended: at once, no hand-off to another task
            queue.busy = True
            try:
                return (await self._checked([entry]))[0]
            finally:
                self._hand_on(loop, queue)
        future: asyncio.Future[T] = loop.create_future()
        queue.waiting.append((entry, future))
        return await future

    async def _checked(self, entries: list[Any]) -> Sequence[T]:
        results = await self._send(entries)
        if len(results) != len(entries):
            raise ValueError(f"send returned {len(results)} results for {len(entries)} entries")
        return results

    def _hand_on(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue) -> None:
        """A send ended: the entries that came meanwhile go with a sender task."""
        queue.waiting = [(e, f) for e, f in queue.waiting if not f.done()]
        if queue.waiting:
            task = loop.create_task(self._run(queue))
            if not task.done():  # (an eager task factory may have run it to its end)
                queue.task = task
                task.add_done_callback(functools.partial(self._ended, loop, queue))
        else:
            queue.busy = False

    def _ended(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue, task: asyncio.Task[None]) -> None:
        """A sender task cancelled before its first step (a shutdown cancelling every
        task) never ran the ``finally`` of :meth:`_run`: the queue would stay busy and
        every later call wait for ever. Its callers still waiting go with a new task
        (those cancelled are dropped)."""
        if queue.task is task and task.cancelled():
            queue.task = None
            self._hand_on(loop, queue)

    async def _run(self, queue: _LoopQueue) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        try:
            while True:
                # Entries whose callers were cancelled while they waited are not sent.
                queue.waiting = [(e, f) for e, f in queue.waiting if not f.done()]
                if not queue.waiting:
                    break
                batch = queue.waiting[: self._limit]
                del queue.waiting[: self._limit]
                try:
                    results = await self._checked([e for e, _ in batch])
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - handed to each caller of the batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else _interrupted(exc))
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, future), result in zip(batch, results):
                        if not future.done():
                            future.set_result(result)
                batch = []
        finally:
            queue.task = None
            queue.busy = False
            if batch or queue.waiting:  # cancelled (or a BaseException): no caller is left waiting
                for _, future in [*batch, *queue.waiting]:
                    future.cancel()
                queue.waiting = []
