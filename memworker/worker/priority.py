"""CPU priority of a worker's inference: the ``nice`` option of ``memworker worker``.

A leaf module: :mod:`memworker.worker.runtime` lowers the inference thread's priority
with :func:`lower_priority`, and :mod:`memworker.worker.process` checks the option.
"""

from __future__ import annotations

import os
from typing import Any, Union

from memworker.errors import ConfigError, shown

__all__ = ["Nice", "check_nice", "lower_priority"]

#: A worker's CPU priority: a nice increment (0-19) or ``"idle"`` (SCHED_IDLE).
Nice = Union[int, str]


def check_nice(nice: Any) -> None:
    """Raise ConfigError unless ``nice`` is an integer from 0 to 19 or ``"idle"``."""
    if nice == "idle" and isinstance(nice, str):
        return
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ConfigError(f"nice must be an integer from 0 to 19 or 'idle', got {shown(nice)}")


def lower_priority(nice: Nice) -> None:
    """Lower the calling thread's CPU priority; threads it starts later inherit it
    (Linux: policy and nice value are per thread).

    ``"idle"``: ``SCHED_IDLE`` where the OS has it (Linux): the thread runs only on
    CPU time no normal task wants, and a normal task that wakes up preempts it at once;
    elsewhere nice 19. An integer: ``os.nice(nice)``.
    """
    check_nice(nice)
    if nice == "idle":
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        nice = 19
    if nice:
        os.nice(int(nice))

