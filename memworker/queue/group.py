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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Slot:
    __slots__ = ("entry", "done", "lead", "result", "error")

    def __init__(self, entry: Any) -> None:
        self.entry = entry
        #: Made only for a caller that waits (an uncontended call sends at once).
        self.done: threading.Event | None = None
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
                slot.done = threading.Event()
            self._busy = True
        if slot.done is not None:
            slot.done.wait()  # set when sent by a leader, or when promoted to lead
        if slot.lead:
            self._flush()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[no-any-return]

    def _flush(self) -> None:
        """Send the oldest waiting entries (the leader's own first), then hand the lead
        to the oldest entry still waiting, or end the busy spell."""
        with self._lock:
            batch = self._waiting[: self._limit]
            del self._waiting[: self._limit]
        try:
            results = self._send([s.entry for s in batch])
            if len(results) != len(batch):
                raise ValueError(f"send returned {len(results)} results for {len(batch)} entries")
            for s, result in zip(batch, results):
                s.result = result
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for s in batch:
                s.error = exc
        finally:
            with self._lock:
                successor = self._waiting[0] if self._waiting else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._busy = False
            for s in batch:
                if s.done is not None:
                    s.done.set()
            if successor is not None and successor.done is not None:
                successor.done.set()
