"""Work done inside an event loop as it ends.

A client bound to one event loop (``redis.asyncio``, glide's async client) can only be
closed on that loop. ``asyncio.run`` and ``asyncio.Runner`` call
``loop.shutdown_asyncgens()`` before they close their loop: every async generator the
loop saw start and that is still suspended is closed there, its ``finally`` awaited on
the loop. :class:`LoopEnd` is such a generator, started by hand (its body does not
await before its ``yield``), so a driver's per-loop client is closed by the loop that
owns it instead of being dropped open when the next loop arrives.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

log = logging.getLogger("memworker.client")


class LoopEnd:
    """Run ``closer()`` on the running event loop when it ends.

    Must be made with that loop running (the loop's async-generator hooks are
    per-thread and installed while it runs). The owner keeps the object: the loop holds
    it weakly. :meth:`cancel` when the owner closed the resources itself, or before it
    drops the object of a loop that ended without ``shutdown_asyncgens()`` (a
    ``loop.close()`` by hand): a suspended generator collected later would ask that
    closed loop to close it.

    A loop that tracks no async generators (no hooks) gets nothing: its owner falls
    back to dropping the resources once the loop is closed. One made while the loop
    is closing its async generators already (a user's generator calling memworker in
    its ``finally``) is :attr:`late`: the loop will not run it, so its owner closes the
    resources once the call that made them is done.
    """

    __slots__ = ("_agen", "_done", "late")

    def __init__(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._done = False
        self._agen: Any = None
        self.late = False
        if sys.get_asyncgen_hooks().firstiter is None:
            return
        if getattr(asyncio.get_running_loop(), "_asyncgens_shutdown_called", False):
            # (its firstiter hook would warn, and the loop would not close this one)
            self.late = True
            return
        agen = self._watch(closer)
        step: Any = agen.__anext__()  # the loop's firstiter hook registers the generator here
        try:
            step.send(None)  # runs to the yield: no await before it
        except StopIteration:
            self._agen = agen

    @property
    def armed(self) -> bool:
        """Whether the loop will run the closer when it ends."""
        return self._agen is not None and not self._done

    async def _watch(self, closer: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not self._done:
                self._done = True
                try:
                    await closer()
                except Exception:  # noqa: BLE001 - the loop is ending; its sockets go with it
                    log.debug("closing a client as its event loop ended failed", exc_info=True)

    def cancel(self) -> None:
        """Never run the closer; ends the generator here (needs no loop)."""
        self._done = True
        agen, self._agen = self._agen, None
        if agen is None:
            return
        try:
            closing: Any = agen.aclose()
            closing.send(None)  # the finally awaits nothing once _done is set
        except StopIteration:
            pass
        except RuntimeError:  # being closed by its loop in another thread right now
            pass
