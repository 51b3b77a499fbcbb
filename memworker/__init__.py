"""memworker: write-behind memory for AI agents on Valkey.

Importing this package starts nothing: public names are loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memworker._lazy import lazy_names

__version__ = "0.1.0"

__all__ = [
    # Configuration
    "Settings",
    "WorkerSettings",
    # Store
    "ValkeyStore",
    "ValkeyCache",
    # Queue
    "MemoryQueue",
    "DrainReport",
    "DrainTimeout",
    # Errors
    "MemworkerError",
    "ConfigError",
    "ValidationError",
    "DimensionMismatchError",
    "StoreError",
    "ConnectionLostError",
    "EmbeddedServerError",
    "QueueError",
    "JobPayloadError",
    "PoisonJobError",
    "ReplicationTimeout",
    "JobFailedError",
    "WorkerLLMMissingError",
    "ScopeBusyError",
    "SearchModuleMissing",
    "ServerStartError",
]

_LAZY = {
    "Settings": "memworker.settings",
    "WorkerSettings": "memworker.worker_settings",
    "ValkeyStore": "memworker.store.store",
    "ValkeyCache": "memworker.store.cache",
    "MemoryQueue": "memworker.queue.producer",
    "DrainReport": "memworker.queue.jobs",
    "DrainTimeout": "memworker.errors",
    "MemworkerError": "memworker.errors",
    "ConfigError": "memworker.errors",
    "ValidationError": "memworker.errors",
    "DimensionMismatchError": "memworker.errors",
    "StoreError": "memworker.errors",
    "ConnectionLostError": "memworker.errors",
    "EmbeddedServerError": "memworker.errors",
    "QueueError": "memworker.errors",
    "JobPayloadError": "memworker.errors",
    "PoisonJobError": "memworker.errors",
    "ReplicationTimeout": "memworker.errors",
    "JobFailedError": "memworker.errors",
    "WorkerLLMMissingError": "memworker.errors",
    "ScopeBusyError": "memworker.errors",
    "SearchModuleMissing": "memworker.errors",
    "ServerStartError": "memworker.errors",
}

if TYPE_CHECKING:
    from memworker.store.cache import ValkeyCache
    from memworker.errors import (
        ConfigError,
        ConnectionLostError,
        DimensionMismatchError,
        DrainTimeout,
        EmbeddedServerError,
        JobFailedError,
        JobPayloadError,
        MemworkerError,
        PoisonJobError,
        QueueError,
        ScopeBusyError,
        SearchModuleMissing,
        ServerStartError,
        StoreError,
        ValidationError,
        WorkerLLMMissingError,
    )
    from memworker.queue.jobs import DrainReport
    from memworker.queue.producer import MemoryQueue
    from memworker.settings import Settings
    from memworker.store.store import ValkeyStore
    from memworker.worker_settings import WorkerSettings


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
