"""Producer side of the queue: :class:`MemoryQueue` (enqueue), the drain barrier,
the job schema and the queue's admin reads.

Modules: ``producer`` (:class:`MemoryQueue`), ``drain`` (the drain plan and its
drivers), ``admin`` (status, live workers, health, dead letters), ``jobs`` (the job
schema). Errors live in :mod:`memworker.errors`, key names in :mod:`memworker.keys`.
"""

from memworker.errors import (
    DrainTimeout,
    JobPayloadError,
    PoisonJobError,
    QueueConnectionLostError,
    QueueError,
)
from memworker.keys import QueueKeys
from memworker.queue.admin import (
    HEALTH_TTL_MS,
    check_health,
    dead_list,
    dead_purge,
    dead_requeue,
    live_workers,
    queue_status,
)
from memworker.queue.drain import DRAIN_POLL_MS
from memworker.queue.jobs import DrainReport, FailedJob
from memworker.queue.producer import MemoryQueue

__all__ = [
    # producer
    "MemoryQueue",
    # drain
    "DRAIN_POLL_MS",
    "DrainReport",
    "FailedJob",
    # admin
    "HEALTH_TTL_MS",
    "check_health",
    "dead_list",
    "dead_purge",
    "dead_requeue",
    "live_workers",
    "queue_status",
    # keys
    "QueueKeys",
    # errors
    "DrainTimeout",
    "JobPayloadError",
    "PoisonJobError",
    "QueueConnectionLostError",
    "QueueError",
]
