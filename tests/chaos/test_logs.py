"""Memory contents in worker logs (issue 17, point 5): a real ``memworker -v worker``
(debug level, every logger) fails a job whose text makes the model raise an error
quoting it, retries it and dead-letters it, and fails a save job permanently (wrong
dimension). No text, metadata value, source or embedding of either job may appear in
its log; the job ids and record ids must."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import uuid

import numpy as np
from harness import child_env, record

from memworker.queue.producer import MemoryQueue

MARK_TEXT = "MARKERTEXT"
MARK_META = "MARKERMETA"


def test_worker_logs_name_jobs_never_their_contents(chaos_server, ns, workdir):
    secret = uuid.uuid4().hex
    log_file = workdir / "worker-verbose.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memworker.cli", "-v", "--url", chaos_server.url,
             "--namespace", ns, "worker", "--processes", "1", "--threads", "2",
             "--max-retries", "2", "--min-backoff-ms", "10"],
            env=child_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    vector = np.arange(1, 8, dtype="<f4") / 8  # 7 dimensions; the chaos model's are 32
    try:
        with MemoryQueue(chaos_server.url, namespace=ns, producer_id="plog") as q:
            good = q.enqueue_encode_job(["a plain text that sets the dimension"])[0]
            assert q.drain(timeout=60, job_ids=[good]).committed == 1
            # The chaos model raises PoisonError(f"poison text {text[:40]!r}").
            poison, poison_ids = q.enqueue_encode_job(
                [{"text": f"POISON {MARK_TEXT}-{secret}", "scope": "/s",
                  "metadata": {"who": f"{MARK_META}-{secret}"}, "source": f"{MARK_META}-src"}]
            )  # fmt: skip
            save = q.enqueue_save(
                [{"id": f"rec-{secret[:8]}", "content": f"{MARK_TEXT}-{secret}-save",
                  "metadata": {"who": f"{MARK_META}-{secret}"}, "embedding": vector.tolist()}]
            )  # fmt: skip
            report = q.drain(timeout=60, job_ids=[poison, save])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    logs = log_file.read_text(errors="replace")
    markers = (secret, MARK_TEXT, MARK_META, base64.b64encode(vector.tobytes()).decode()[:16])
    leaks = [line for line in logs.splitlines() if any(m in line for m in markers)]
    failed = {f.job_id: f for f in report.failed}
    record(
        "Memory contents in worker logs",
        injections=2,
        leaks=len(leaks),
        log_lines=len(logs.splitlines()),
        attempts_logged=logs.count("Received message"),
    )
    assert set(failed) == {poison, save}
    assert "PoisonError" in failed[poison].error and "dimension" in failed[save].error
    assert "Retrying message" in logs and "Received message" in logs  # debug lines were written
    assert not leaks, leaks[:5]
    assert poison in logs and save in logs and poison_ids[0] in logs
