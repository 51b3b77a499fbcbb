"""Worker side: the dramatiq broker, the actors, the middleware and the process
runner (``memworker worker``)."""

from memworker.worker.broker import (
    DEFAULT_COMMIT_STEP,
    DEFAULT_MAX_DELIVERIES,
    HEARTBEAT_TIMEOUT_MS,
    WORKER_TIMEOUT_MS,
    BarrierMiddleware,
    HealthMiddleware,
    MemworkerBroker,
    WakeConsumer,
    get_batcher,
    make_broker,
    run_worker,
    running_worker,
    set_embedder_factory,
)

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
