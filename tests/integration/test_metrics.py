"""Prometheus metrics: a real `memworker worker --metrics-port` (two processes) that
committed, retried and failed jobs serves every metric for both processes together,
with values that match what happened, nothing of the memories in any label, and every
metric the Grafana dashboard queries; a producer's opt-in metrics count its enqueues,
drains and drain timeouts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from valkey_servers import free_port

from memworker.errors import DrainTimeout
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

CHAOS = Path(__file__).resolve().parents[1] / "chaos"
SECRET_TEXT = "the launch code is 0000"


def _deploy_metrics() -> Any:
    """tests/unit/test_deploy_metrics.py (the dashboard's queries), loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "unit" / "test_deploy_metrics.py"
    spec = importlib.util.spec_from_file_location("_deploy_metrics", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scrape(port: int) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(
        (k, val) in ls for k, val in labels.items()))


def test_a_worker_serves_every_metric_for_all_its_processes(plain_server, namespace, tmp_path) -> None:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(CHAOS), os.environ.get("PYTHONPATH", "")]),
               MEMWORKER_EMBEDDER="chaos_embedder:make", MEMWORKER_METRICS_ADDRESS="127.0.0.1")  # fmt: skip
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "--url", plain_server.url, "--namespace", namespace,
         "worker", "--processes", "2", "--threads", "2", "--metrics-port", str(port),
         "--max-retries", "1", "--min-backoff-ms", "10"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
        with MemoryQueue(settings, producer_id="private-producer") as q:
            good = [q.enqueue_encode_job([f"{SECRET_TEXT} {i}", f"second text {i}"])[0] for i in range(20)]
            bad = q.enqueue_encode_job(["POISON: the embedder refuses this one"])[0]
            report = q.drain(timeout=120, job_ids=[*good, bad])
        assert report.committed == 20 and [f.job_id for f in report.failed] == [bad]
        ns = {"namespace": namespace}
        # the workers write what their jobs recorded at each health beat (every second)
        deadline = time.monotonic() + 30
        while True:
            text = _scrape(port)
            samples = _samples(text)
            # the retry and the failure of the poison job may be in different processes,
            # whose beats come at different times: wait for all three outcomes
            if (
                _value(samples, "memworker_jobs_total", outcome="failed", **ns) >= 1
                and _value(samples, "memworker_jobs_total", outcome="retried", **ns) >= 1
                and _value(samples, "memworker_jobs_total", outcome="committed", **ns) >= 20
            ):
                break
            assert time.monotonic() < deadline, "the jobs never showed on /metrics"
            time.sleep(0.2)
        assert _value(samples, "memworker_jobs_total", outcome="committed", **ns) == 20
        assert _value(samples, "memworker_jobs_total", outcome="failed", **ns) == 1
        assert _value(samples, "memworker_jobs_total", outcome="retried", **ns) >= 1
        assert _value(samples, "memworker_records_committed_total", **ns) == 40
        assert _value(samples, "memworker_enqueue_to_searchable_seconds_count", **ns) == 20
        assert _value(samples, "memworker_job_attempts_count", **ns) == 20
        assert _value(samples, "memworker_commit_seconds_count", **ns) >= 1
        assert _value(samples, "memworker_embed_batch_texts_sum") >= 40  # both processes' batches
        assert _value(samples, "memworker_inference_seconds_count") >= 1
        assert _value(samples, "memworker_model_info") == 1
        assert _value(samples, "memworker_dead_letters", **ns) == 1
        assert _value(samples, "memworker_queue_depth", **ns) == 0
        assert _value(samples, "memworker_pending", **ns) == 0
        assert _value(samples, "memworker_valkey_up", **ns) == 1
        deadline = time.monotonic() + 30
        while _value(_samples(_scrape(port)), "memworker_live_workers", **ns) != 2:
            assert time.monotonic() < deadline, "two live workers never showed"
            time.sleep(0.5)
        # nothing of the memories, the producer or the server's address in any label or value
        for leak in ("launch code", "POISON", "private-producer", "second text"):
            assert leak not in text, leak
        # the port as a number of its own (not digits inside a float value)
        assert not re.search(rf"(?<![\d.]){plain_server.port}(?![\d.])", text), plain_server.port
        served = {name for name, _ in samples} | {f.name for f in text_string_to_metric_families(text)}
        missing = _deploy_metrics().dashboard_metric_names(producer=False) - served
        assert missing == set(), f"the dashboard queries metrics no worker serves: {missing}"
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()


def test_producer_metrics_count_enqueues_drains_and_timeouts(plain_server, namespace) -> None:
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"namespace": namespace}) or 0.0

    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p", metrics=True) as q:
        q.enqueue_encode(["one"])
        q.enqueue_encode(["two"])
        assert value("memworker_enqueue_seconds_count") == 2
        with pytest.raises(DrainTimeout):
            q.drain(timeout=0.2)  # no worker runs
        assert value("memworker_drain_timeouts_total") == 1
        assert value("memworker_drain_wait_seconds_count") == 1
    with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p2") as quiet:
        quiet.enqueue_encode(["three"])  # metrics off by default
    assert value("memworker_enqueue_seconds_count") == 2


def test_the_queue_collector_reuses_its_connection_across_scrapes(plain_server, namespace) -> None:
    """Each scrape opened (and closed) a connection of its own: Prometheus scraping
    every few seconds from several replicas churned connections on the server."""
    from valkey_servers import raw_client

    from memworker.metrics import QueueCollector

    raw = raw_client(plain_server)
    collector = QueueCollector(Settings.from_url(plain_server.url, namespace=namespace))
    try:
        with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
            q.enqueue_encode(["one"])

        def scrape() -> dict[str, float]:
            return {f.name: f.samples[0].value for f in collector.collect()}

        first = scrape()
        assert first["memworker_valkey_up"] == 1 and first["memworker_pending"] == 1
        before = int(raw.info("stats")["total_connections_received"])
        for _ in range(5):
            assert scrape()["memworker_queue_depth"] == 1
        assert int(raw.info("stats")["total_connections_received"]) == before
    finally:
        collector.close()
        raw.close()


def test_the_queue_collector_reports_valkey_down_and_recovers(plain_server, namespace) -> None:
    """Unreachable: memworker_valkey_up 0 and no other gauge; the kept client reconnects."""
    from memworker.metrics import QueueCollector

    port = free_port()
    down = QueueCollector(Settings.from_url(f"redis://127.0.0.1:{port}", namespace=namespace))
    up = QueueCollector(Settings.from_url(plain_server.url, namespace=namespace))
    try:
        families = list(down.collect())
        assert [(f.name, f.samples[0].value) for f in families] == [("memworker_valkey_up", 0)]
        assert {f.name: f.samples[0].value for f in up.collect()}["memworker_valkey_up"] == 1
        up.close()  # a scrape after close connects again
        assert {f.name: f.samples[0].value for f in up.collect()}["memworker_valkey_up"] == 1
    finally:
        down.close()
        up.close()
