"""Worker side: the dramatiq broker, the actors, the middleware and the process
runner (``memworker worker``).

Modules, in dependency order: :mod:`~memworker.worker.priority` (CPU priority),
:mod:`~memworker.worker.runtime` (the process's embedder and batcher),
:mod:`~memworker.worker.logs` (log redaction), :mod:`~memworker.worker.dedup`
(fast-path dedup), :mod:`~memworker.worker._dramatiq_compat` (dramatiq internals),
:mod:`~memworker.worker.middleware` (barrier, poison guard, isolation, health),
:mod:`~memworker.worker.broker` (``MemworkerBroker``, ``WakeConsumer``),
:mod:`~memworker.worker.actors` (the actors, ``make_broker``) and
:mod:`~memworker.worker.process` (``run_worker``, ``running_worker``).

The names below are imported on first use (module ``__getattr__``), so that importing
a leaf such as :mod:`memworker.worker.runtime` does not import the whole package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memworker._lazy import lazy_names

__all__ = [
    "DEFAULT_COMMIT_STEP",
    "DEFAULT_MAX_DELIVERIES",
    "HEARTBEAT_TIMEOUT_MS",
    "WORKER_TIMEOUT_MS",
    "BarrierMiddleware",
    "HealthMiddleware",
    "MemworkerBroker",
    "WakeConsumer",
    "get_batcher",
    "make_broker",
    "run_worker",
    "running_worker",
    "set_embedder_factory",
]

_LAZY = {
    "DEFAULT_COMMIT_STEP": "memworker.worker.actors",
    "make_broker": "memworker.worker.actors",
    "HEARTBEAT_TIMEOUT_MS": "memworker.worker.broker",
    "WORKER_TIMEOUT_MS": "memworker.worker.broker",
    "MemworkerBroker": "memworker.worker.broker",
    "WakeConsumer": "memworker.worker.broker",
    "DEFAULT_MAX_DELIVERIES": "memworker.worker.middleware",
    "BarrierMiddleware": "memworker.worker.middleware",
    "HealthMiddleware": "memworker.worker.middleware",
    "run_worker": "memworker.worker.process",
    "running_worker": "memworker.worker.process",
    "get_batcher": "memworker.worker.runtime",
    "set_embedder_factory": "memworker.worker.runtime",
}

if TYPE_CHECKING:
    from memworker.worker.actors import DEFAULT_COMMIT_STEP, make_broker
    from memworker.worker.broker import (
        HEARTBEAT_TIMEOUT_MS,
        WORKER_TIMEOUT_MS,
        MemworkerBroker,
        WakeConsumer,
    )
    from memworker.worker.middleware import (
        DEFAULT_MAX_DELIVERIES,
        BarrierMiddleware,
        HealthMiddleware,
    )
    from memworker.worker.process import run_worker, running_worker
    from memworker.worker.runtime import get_batcher, set_embedder_factory


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
