"""Objects that must start afresh in a child process made by ``os.fork`` (gunicorn or
celery prefork, ``multiprocessing``'s "fork"): a lock another thread held, a send in
flight, futures of the parent's jobs. Each registers itself; its ``_after_fork()`` runs
in the child right after the fork, before any thread of the child can use it."""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["reset_in_forked_children"]

#: What to reset in a forked child (weakly held: an object gone needs nothing).
_objects: weakref.WeakSet[Any] = weakref.WeakSet()
_hooked: list[bool] = []


def reset_in_forked_children(obj: Any) -> None:
    """Call ``obj._after_fork()`` in every child forked from now on. The fork hook is
    installed with the first object (nothing happens at import)."""
    _objects.add(obj)
    if not _hooked and hasattr(os, "register_at_fork"):
        _hooked.append(True)
        os.register_at_fork(after_in_child=_reset_all)


def _reset_all() -> None:
    for obj in list(_objects):
        obj._after_fork()
