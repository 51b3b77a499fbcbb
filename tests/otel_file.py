"""An OpenTelemetry set-up for worker processes under test
(``MEMWORKER_OTEL_SETUP=otel_file:setup``): every finished span is appended as one
JSON line to ``$MEMWORKER_TRACE_FILE``, which the test reads."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any


def setup() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    path = os.environ["MEMWORKER_TRACE_FILE"]

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a", encoding="utf-8") as fh:
                for s in spans:
                    fh.write(json.dumps(as_dict(s)) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def as_dict(s: Any) -> dict[str, Any]:
    """What the tests compare: names, ids, parentage, links and attributes."""
    return {
        "name": s.name,
        "trace_id": f"{s.context.trace_id:032x}",
        "span_id": f"{s.context.span_id:016x}",
        "parent_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
        "attributes": dict(s.attributes or {}),
    }


_memory: Any = None


def memory_exporter() -> Any:
    """An in-memory exporter on this process's SDK provider (set up once: a process
    has one provider), for tests whose producer and worker run in the test process."""
    global _memory
    if _memory is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        _memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_memory))
    return _memory
