"""OpenTelemetry traces from ``remember()`` to searchable (the ``otel`` extra).

Off unless OpenTelemetry is configured: with only ``opentelemetry-api`` installed and
no SDK set up, every span here is a no-op. In an agent's process the application sets
up its SDK as usual; a worker process sets one up at start when the standard
``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables ask for it (OTLP
or console), or calls ``MEMWORKER_OTEL_SETUP=module:function`` (your own set-up).

- The producer's ``memworker.enqueue`` span (a child of whatever span is current,
  e.g. CrewAI's ``remember``) carries the job id, its record count and the namespace;
  its context travels in the job's message (option ``trace``: W3C ``traceparent`` and
  ``tracestate`` only).
- The worker's ``memworker.embed`` and ``memworker.commit`` spans of a job are children
  of that context, so ``QueuedMemory.remember`` shows as one trace from the agent to
  the commit, with the job id, record count, namespace and outcome as attributes. In
  a batched commit of many jobs each job gets its own ``memworker.commit`` span with
  the step's timing (``memworker.batched_jobs``: how many shared it). Jobs that need
  CrewAI's encoding flow run in one ``memworker.flow`` span.

No span, attribute, event or status carries memory text, metadata, scopes or secrets:
a failed span names the exception's type, never its message or traceback. A ``trace``
option that is not two short strings of the W3C format is ignored (it comes from the
message, like any payload field).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "TRACE_OPTION",
    "enabled",
    "extract",
    "inject",
    "job_span",
    "setup_worker_tracing",
    "shutdown_worker_tracing",
    "span",
]

log = logging.getLogger("memworker.tracing")

#: The message option that carries the producer's trace context.
TRACE_OPTION = "trace"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_MAX_STATE = 512
#: A W3C ``tracestate`` list member (key ``=`` value, printable ASCII only): a state
#: with any other member is dropped whole before OpenTelemetry parses it (it logs a
#: bad member as it came: a control character of a crafted message would reach the
#: worker's log).
_STATE_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
#: List members W3C allows in one ``tracestate``.
_MAX_MEMBERS = 32
_provider: Any = None


@functools.cache
def _trace() -> Any:
    """``opentelemetry.trace``, or ``None`` without the API (looked up once: every
    enqueue asks)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


@functools.cache
def _proxy_provider() -> type:
    from opentelemetry.trace import ProxyTracerProvider

    return ProxyTracerProvider


@functools.cache
def _propagate() -> Any:
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate


def _tracer() -> Any:
    trace = _trace()
    return None if trace is None else trace.get_tracer("memworker")


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any], *, parent: Any = None, links: Any = ()) -> Iterator[Any]:
    """A span (``None`` without OpenTelemetry), current for the block; an exception
    marks it failed (its type only: see :func:`_failed`) and propagates."""
    if not enabled():  # no SDK: every span would be a no-op (skip its ~15 us)
        yield None
        return
    tracer = _tracer()
    with tracer.start_as_current_span(
        name, context=parent, attributes=dict(attributes), links=list(links),
        record_exception=False, set_status_on_exception=False,
    ) as current:  # fmt: skip
        try:
            yield current
        except GeneratorExit:
            raise
        except BaseException as exc:  # a cancelled task's span fails too (CancelledError)
            _failed(current, exc)
            raise


def _failed(current: Any, exc: BaseException) -> None:
    """Mark ``current`` failed by ``exc``'s type alone. OpenTelemetry's own recording
    puts the exception's message and traceback on the span (an event, and the status
    description): an embedder's or LLM client's error may quote the memory's text, and
    a refused item's error names the user's field. The message is in the worker's
    redacted log (``loggable_error``), by job id."""
    from opentelemetry.trace import Status, StatusCode

    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    current.add_event("exception", {"exception.type": kind, "exception.escaped": True})
    current.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def enabled() -> bool:
    """Whether an SDK (or any real provider) is set up: without one every span is a
    no-op, and the per-job spans of a batched commit are skipped altogether."""
    trace = _trace()
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, _proxy_provider()) and type(provider).__name__ != "NoOpTracerProvider"


def job_span(name: str, parent: Any, attributes: Mapping[str, Any], start_ns: int, end_ns: int) -> None:
    """A finished span of one job (in a batched step) with a given timing."""
    tracer = _tracer()
    if tracer is None:
        return
    current = tracer.start_span(name, context=parent, attributes=dict(attributes), start_time=start_ns)
    current.end(end_time=end_ns)


def inject() -> dict[str, str] | None:
    """The current trace context as a message option (``None`` when there is none)."""
    propagate = _propagate()
    if propagate is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}
    return out if "traceparent" in out else None


def extract(carrier: Any) -> Any:
    """The context of a message's ``trace`` option, or ``None`` when it is absent or
    not the W3C format (it comes from the message: never trusted beyond that)."""
    if not isinstance(carrier, Mapping):
        return None
    parent = carrier.get("traceparent")
    state = carrier.get("tracestate", "")
    if not isinstance(parent, str) or not _TRACEPARENT.fullmatch(parent):
        return None
    if not isinstance(state, str) or len(state) > _MAX_STATE or not _valid_state(state):
        state = ""
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return TraceContextTextMapPropagator().extract({"traceparent": parent, "tracestate": state})


def _valid_state(state: str) -> bool:
    """Whether ``state`` is a W3C ``tracestate``: at most 32 list members, each
    :data:`_STATE_MEMBER`, between commas and optional spaces or tabs."""
    members = [m.strip(" \t") for m in state.split(",")]
    members = [m for m in members if m]
    return len(members) <= _MAX_MEMBERS and all(_STATE_MEMBER.fullmatch(m) for m in members)


def setup_worker_tracing(env: Mapping[str, str] | None = None) -> None:
    """Set up the OpenTelemetry SDK in a worker process when the environment asks
    for it (see the module docstring); nothing otherwise."""
    global _provider
    env = os.environ if env is None else env
    hook = env.get("MEMWORKER_OTEL_SETUP")
    if hook:
        _setup_hook(hook)()
        return
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter_name in ("", "none") and not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_* variables are set but opentelemetry-sdk is not installed: no traces")
        return
    if exporter_name == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("no OTLP exporter installed (pip install 'memworker[otel]'): no traces")
            return
        exporter = OTLPSpanExporter()
    name = env.get("OTEL_SERVICE_NAME", "memworker-worker")
    _provider = TracerProvider(resource=Resource.create({"service.name": name}))
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)


def _setup_hook(hook: str) -> Any:
    """The function ``MEMWORKER_OTEL_SETUP`` names (``module:function``; ``module``
    alone calls its ``setup``).

    Raises:
        ConfigError: Naming the variable, when the module cannot be imported or has no
            such function.
    """
    from memworker.errors import ConfigError, shown

    expected = "must be 'module:function' (a function that sets up OpenTelemetry)"
    module, _, function = hook.partition(":")
    function = function or "setup"
    if not module.strip() or not function.isidentifier():
        raise ConfigError(f"MEMWORKER_OTEL_SETUP {expected}, got {shown(hook)}")
    try:
        loaded = importlib.import_module(module)
    except (ImportError, ValueError, TypeError) as exc:  # not found, '', '.relative'
        raise ConfigError(
            f"MEMWORKER_OTEL_SETUP {expected}: cannot import {shown(module)} ({shown(str(exc), 300)})"
        ) from exc
    target = getattr(loaded, function, None)
    if not callable(target):
        raise ConfigError(
            f"MEMWORKER_OTEL_SETUP {expected}: module {shown(module)} has no function {shown(function)}"
        )
    return target


def shutdown_worker_tracing() -> None:
    """Flush and stop what :func:`setup_worker_tracing` set up (at worker exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
    else:
        trace = _trace()
        provider = None if trace is None else trace.get_tracer_provider()
        if provider is not None and hasattr(provider, "force_flush"):
            provider.force_flush()
