"""The worker's log redaction: no memory contents (texts, metadata, embeddings) in log lines.

Log lines name a job by its id and record ids, never its texts, metadata or
embeddings: :class:`RedactingFilter`, installed on dramatiq's and memworker's
loggers by :func:`~memworker.worker.make_broker` and at worker boot
(:class:`LogRedaction`), replaces dramatiq's message arguments (whose ``str`` is the
whole job) and withholds the messages of exceptions not raised by memworker or a
Valkey client (:func:`loggable_error`).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from dramatiq.broker import MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from memworker.errors import escape
from memworker.queue.payload import job_identity

__all__ = [
    "LogRedaction",
    "RedactingFilter",
    "escape",
    "ids_text",
    "loggable_error",
    "redact_worker_logs",
    "redacted_traceback",
]

#: Modules whose exceptions' messages are shown in log lines: memworker's own (they name
#: fields and limits, never values) and the Valkey clients'. Any other exception (an
#: embedder's, CrewAI's, an LLM client's, pydantic's) may quote the texts it was given:
#: its type and traceback frames are logged, its message withheld.
_MESSAGE_SAFE_MODULES = ("memworker", "redis", "valkey", "glide")
#: dramatiq loggers created only once a Worker runs (its threads, its consumers: also
#: ``dramatiq.worker.ConsumerThread(<queue>)`` per queue, added by
#: :func:`redact_worker_logs`); the others exist by the time make_broker installs the
#: filter, and it is installed again at worker boot.
_DRAMATIQ_LOGGERS = (
    "dramatiq",
    "dramatiq.worker.Worker",
    "dramatiq.worker.WorkerThread",
    "dramatiq.worker._WorkerMiddleware",
    "dramatiq.brokers.redis.WakeConsumer",
    "dramatiq.broker.MemworkerBroker",
    "dramatiq.middleware.retries.Retries",
)
_MAX_LOGGED_IDS = 8


def loggable_error(exc: BaseException) -> str:
    """``"Type: message"`` of an exception for a log line, or ``"Type (message
    withheld ...)"`` for an exception whose message may quote memory contents (any
    not raised by memworker or a Valkey client)."""
    name = type(exc).__name__
    if str(type(exc).__module__).split(".", 1)[0] not in _MESSAGE_SAFE_MODULES:
        return f"{name} (message withheld: it may quote memory contents)"
    text = str(exc)
    if len(text) > 500:
        text = text[:500] + "..."
    return f"{name}: {escape(text)}" if text else name


def ids_text(ids: list[str]) -> str:
    """The first record ids of a job, quoted and cut, for a log line."""
    shown = ", ".join(repr(i[:64]) for i in ids[:_MAX_LOGGED_IDS])
    more = f", ... {len(ids)} in all" if len(ids) > _MAX_LOGGED_IDS else ""
    return f"[{shown}{more}]"


class _Summary(str):
    """A summary standing for a log argument: the same text for ``%s`` and ``%r``."""

    def __repr__(self) -> str:
        return str(self)


def _job_summary(actor: Any, message_id: Any, args: Any) -> str:
    """``actor(job <id>, records [<ids>])``: what a log line says of a job."""
    job_id, _producer, record_ids = job_identity(args)
    if job_id is None:
        job_id = escape(str(message_id)[:128]) if message_id is not None else "?"
    return _Summary(f"{escape(str(actor)[:64])}(job {job_id}, records {ids_text(record_ids)})")


def _is_job(value: Any) -> bool:
    return isinstance(value, dict) and "items" in value and "job" in value


def _redacted(value: Any) -> Any:
    """A log argument with memory contents replaced by a summary (job id, record ids)."""
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, (Message, MessageProxy)):
        return _job_summary(value.actor_name, value.message_id, value.args)
    if isinstance(value, BaseException):
        return loggable_error(value)
    if isinstance(value, (tuple, list)) and value and _is_job(value[0]):
        return _Summary(f"({_job_summary('job', None, value)},)")
    if _is_job(value):
        return _job_summary("job", None, (value,))
    if isinstance(value, (tuple, list, dict, set, frozenset, bytes, bytearray)):
        return value if not value else f"<{type(value).__name__} of {len(value)}: withheld>"
    return value


def redacted_traceback(exc: BaseException) -> str:
    """An exception's traceback as logging prints it, with :func:`loggable_error` in
    place of each message (the frames show code, not values)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8 and all(current is not e for e in chain):
        chain.append(current)
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    parts: list[str] = []
    for i, e in enumerate(reversed(chain)):
        if i:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(e.__traceback__))
        parts.append(loggable_error(e) + "\n")
    return "".join(parts).rstrip("\n")


class RedactingFilter(logging.Filter):
    """Keeps memory contents out of the log lines of a worker (dramatiq's and
    memworker's loggers): a dramatiq message argument (whose ``str`` is the actor call
    with the whole job: texts, metadata, embeddings) becomes ``actor(job <id>,
    records [<ids>])``; an exception's message is kept only when memworker or a Valkey
    client raised it (:func:`loggable_error`), in the argument and in the traceback;
    strings with control characters are escaped. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.args, dict):
                record.args = {k: _redacted(v) for k, v in record.args.items()}
            elif record.args:
                record.args = tuple(_redacted(a) for a in record.args)
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redacted_traceback(record.exc_info[1])
                record.exc_info = None
        except Exception:  # noqa: BLE001 - never let a log call fail; say nothing then
            record.msg, record.args = f"{record.msg!s:.200} (arguments withheld)", ()
            record.exc_info, record.exc_text = None, None
        return True


_log_filter: RedactingFilter | None = None


def redact_worker_logs(broker: Any = None) -> None:
    """Install :class:`RedactingFilter` on dramatiq's and memworker's loggers: those
    that exist now, and the ones a dramatiq ``Worker`` of ``broker`` creates (its
    threads, a consumer per declared queue). Idempotent; called by :func:`make_broker`
    and at worker boot, never at import."""
    global _log_filter
    names = set(_DRAMATIQ_LOGGERS)
    if broker is not None:
        queues = set(broker.get_declared_queues()) | set(broker.get_declared_delay_queues())
        names.update(f"dramatiq.worker.ConsumerThread({q})" for q in queues)
    names.update(
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".", 1)[0] in ("dramatiq", "memworker")
    )
    if _log_filter is None:
        _log_filter = RedactingFilter()
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(_log_filter)


class LogRedaction(Middleware):
    """Installs the log filter once a worker has created its threads' loggers."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        redact_worker_logs(broker)

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        redact_worker_logs(broker)

