"""The worker's metrics accumulate in memory and reach prometheus_client's
multiprocess files only at a flush (the health beat's, or the process's as it stops):
the samples are exactly those of direct writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("prometheus_client")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    from memworker.metrics import flush_worker_metrics, worker_metrics

    def samples():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        out = {}
        for family in registry.collect():
            for s in family.samples:
                key = s.name + json.dumps(sorted(s.labels.items()))
                out[key] = s.value
        return out

    m = worker_metrics()
    now_ms = __import__("time").time() * 1000
    m.committed_many("ns1", 7, [now_ms - 30, now_ms - 2_000, now_ms - 400_000], attempts=2)
    m.committed("ns2", 1, now_ms - 5, 1)
    m.jobs.labels("ns1", "retried").inc()
    m.jobs.labels("ns1", "failed").inc(2)
    for v in (0.0004, 0.003, 0.003, 7.0, 99.0, float("nan")):
        m.commit.labels("ns1").observe(v)
    m.inference.observe(0.02)
    m.batch_texts.observe(64)
    m.batch_texts.observe(1)
    before = samples()
    flush_worker_metrics()
    after = samples()
    flush_worker_metrics()  # nothing moved: nothing written twice
    again = samples()
    json.dump({"before": before, "after": after, "again": again}, sys.stdout)
    """
)


def _run(tmp_path) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _get(samples: dict[str, float], name: str, **labels: str) -> float:
    want = json.dumps(sorted(labels.items()))
    return samples.get(name + want, 0.0)


def test_worker_metrics_reach_prometheus_only_at_a_flush_and_exactly(tmp_path):
    got = _run(tmp_path)
    before, after, again = got["before"], got["after"], got["again"]
    assert not any(v for k, v in before.items() if not k.startswith("memworker_model_info")), before
    assert _get(after, "memworker_jobs_total", namespace="ns1", outcome="committed") == 3
    assert _get(after, "memworker_jobs_total", namespace="ns2", outcome="committed") == 1
    assert _get(after, "memworker_jobs_total", namespace="ns1", outcome="retried") == 1
    assert _get(after, "memworker_jobs_total", namespace="ns1", outcome="failed") == 2
    assert _get(after, "memworker_records_committed_total", namespace="ns1") == 7
    assert _get(after, "memworker_records_committed_total", namespace="ns2") == 1
    # times to searchable: ~0.03 s, ~2 s, ~400 s: buckets as observe() puts them
    count = _get(after, "memworker_enqueue_to_searchable_seconds_count", namespace="ns1")
    assert count == 3
    assert _get(after, "memworker_enqueue_to_searchable_seconds_bucket", namespace="ns1", le="0.01") == 0
    assert _get(after, "memworker_enqueue_to_searchable_seconds_bucket", namespace="ns1", le="0.05") == 1
    assert _get(after, "memworker_enqueue_to_searchable_seconds_bucket", namespace="ns1", le="2.5") == 2
    assert _get(after, "memworker_enqueue_to_searchable_seconds_bucket", namespace="ns1", le="300.0") == 2
    assert _get(after, "memworker_enqueue_to_searchable_seconds_bucket", namespace="ns1", le="+Inf") == 3
    assert 402 < _get(after, "memworker_enqueue_to_searchable_seconds_sum", namespace="ns1") < 403
    assert _get(after, "memworker_job_attempts_sum", namespace="ns1") == 6  # 3 jobs x 2 attempts
    assert _get(after, "memworker_job_attempts_bucket", namespace="ns1", le="1.0") == 0
    assert _get(after, "memworker_job_attempts_bucket", namespace="ns1", le="2.0") == 3
    # commit steps: NaN lands in no bucket (as with observe()) and, unlike observe(), leaves
    # the sum a number
    assert _get(after, "memworker_commit_seconds_bucket", namespace="ns1", le="0.001") == 1
    assert _get(after, "memworker_commit_seconds_bucket", namespace="ns1", le="0.005") == 3
    assert _get(after, "memworker_commit_seconds_bucket", namespace="ns1", le="10.0") == 4
    assert _get(after, "memworker_commit_seconds_bucket", namespace="ns1", le="+Inf") == 5
    assert abs(_get(after, "memworker_commit_seconds_sum", namespace="ns1") - 106.0064) < 1e-9
    assert _get(after, "memworker_inference_seconds_count") == 1
    assert _get(after, "memworker_embed_batch_texts_sum") == 65
    assert _get(after, "memworker_embed_batch_texts_bucket", le="1.0") == 1
    assert again == after
