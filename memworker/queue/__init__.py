"""Producer side of the queue: :class:`MemoryQueue` (enqueue, drain), the job
schema and the queue's admin reads."""

from memworker.queue.jobs import DrainReport, DrainTimeout, FailedJob, QueueError
from memworker.queue.producer import (
    DRAIN_POLL_MS,
    HEALTH_TTL_MS,
    MemoryQueue,
    check_health,
    dead_list,
    dead_purge,
    dead_requeue,
    queue_status,
)

__all__ = [
    "DRAIN_POLL_MS",
    "HEALTH_TTL_MS",
    "DrainReport",
    "DrainTimeout",
    "FailedJob",
    "MemoryQueue",
    "QueueError",
    "check_health",
    "dead_list",
    "dead_purge",
    "dead_requeue",
    "queue_status",
]
