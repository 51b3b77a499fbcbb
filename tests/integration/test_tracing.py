"""OpenTelemetry: a producer's enqueue span and a real worker process's embed and commit
spans are one trace (the context travels in the job's message), on the batched path
and on the per-message path, with ids, counts and outcomes as attributes and never a
memory's text; a hostile ``trace`` option is ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.tracing import extract

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
SECRET = "my bank password is hunter2"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The test process's spans (one SDK provider per process, shared with test_crewai)."""
    from otel_file import memory_exporter

    return memory_exporter()


def _worker(url: str, namespace: str, trace_file: Path, log: Path, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", MEMWORKER_EMBEDDER="chaos_embedder:make",
        MEMWORKER_OTEL_SETUP="otel_file:setup", MEMWORKER_TRACE_FILE=str(trace_file),
        PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS / "chaos"), os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", namespace, "worker",
         "--processes", "1", "--threads", "2", *args],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.parametrize("path", ["batched", "per-message"])
def test_enqueue_embed_and_commit_are_one_trace(plain_server, namespace, tmp_path, exporter, path) -> None:
    trace_file = tmp_path / "worker-spans.jsonl"
    args = ("--inflight-records", "0") if path == "per-message" else ()
    worker = _worker(plain_server.url, namespace, trace_file, tmp_path / "worker.log", *args)
    exporter.clear()
    try:
        settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
        tracer = trace.get_tracer("test")
        with MemoryQueue(settings, producer_id="p") as q:
            with tracer.start_as_current_span("agent.remember") as root:
                job, ids = q.enqueue_encode_job([f"{SECRET} {i}" for i in range(3)])
            assert q.drain(timeout=60, job_ids=[job]).committed == 1
    finally:
        worker.terminate()  # flushes its spans
        assert worker.wait(60) == 0
    trace_id = f"{root.get_span_context().trace_id:032x}"
    (enqueue,) = [s for s in exporter.get_finished_spans() if s.name == "memworker.enqueue"]
    assert f"{enqueue.context.trace_id:032x}" == trace_id and enqueue.parent.span_id == root.get_span_context().span_id
    assert enqueue.attributes["memworker.job_id"] == job and enqueue.attributes["memworker.records"] == 3
    assert enqueue.attributes["memworker.namespace"] == namespace
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    by_name = {s["name"]: s for s in spans if s["attributes"].get("memworker.job_id") == job}
    assert {"memworker.embed", "memworker.commit"} <= set(by_name), spans
    for name in ("memworker.embed", "memworker.commit"):
        s = by_name[name]
        assert s["trace_id"] == trace_id  # one trace from the agent to the commit
        assert s["parent_id"] == f"{enqueue.context.span_id:016x}"
        assert s["attributes"]["memworker.records"] == 3
        assert s["attributes"]["memworker.namespace"] == namespace
    assert by_name["memworker.commit"]["attributes"]["memworker.outcome"] == "committed"
    everything = trace_file.read_text() + repr([s.attributes for s in exporter.get_finished_spans()])
    assert "hunter2" not in everything and "bank password" not in everything


def test_a_hostile_trace_option_is_ignored() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert extract(None) is None and extract("00-abc") is None and extract(["x"]) is None
    for bad in ("x" * 10_000, "00-zz-yy-01", good + "\n", {"nested": 1}, 42):
        assert extract({"traceparent": bad}) is None
    ctx = extract({"traceparent": good, "tracestate": "k=" + "v" * 10_000})
    span = trace.get_current_span(ctx)
    assert f"{span.get_span_context().trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert len(str(span.get_span_context().trace_state)) < 600  # the oversized state dropped


def test_a_job_with_a_hostile_trace_option_commits(plain_server, namespace, tmp_path) -> None:
    """A crafted message whose ``trace`` option is garbage is committed as usual."""
    import redis

    from memworker.keys import QueueKeys
    from memworker.io.scripts import script_source
    from memworker.queue.jobs import ENCODE_ACTOR, build_message, embed_items
    from memworker.queue.producer import enqueue_step

    trace_file = tmp_path / "spans.jsonl"
    worker = _worker(plain_server.url, namespace, trace_file, tmp_path / "worker.log")
    keys = QueueKeys(namespace)
    try:
        items = embed_items(["a text with a strange trace"], 10)
        redis_id, data = build_message(ENCODE_ACTOR, "job-hostile", "p", items, 1 << 20,
                                       trace={"traceparent": "00-" + "f" * 5000, "tracestate": "\x00" * 99})  # fmt: skip
        client = redis.Redis(port=plain_server.port)
        step = enqueue_step(keys, "p", "job-hostile", redis_id, data)
        client.eval(script_source(step.name)[0], 1, f"{{{namespace}}}:meta", *step.args)
        client.close()
        with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
            assert q.drain(timeout=60, job_ids=["job-hostile"]).committed == 1
        time.sleep(0.1)
    finally:
        worker.terminate()
        assert worker.wait(60) == 0
