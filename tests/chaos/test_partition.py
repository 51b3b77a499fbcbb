"""The link between a worker and Valkey cut while retries wait in the delay queue.

A job whose embedding fails once (a FLAKY text) is retried after a backoff: dramatiq
puts it on the delay queue, and the worker holds it in memory until it is due. The
worker process talks to Valkey through a TCP forwarder that the test cuts several
times (every connection reset, new ones refused) while such retries wait, and while
they are moved back; the producer talks to Valkey directly. Every job must commit
exactly once in effect, none reported failed, the worker process alive
(tests/integration/test_delay_queue_hostile.py has the two exact faults this found:
a waiting retry dropped from memory but still held, and the delay queue's consumer
thread killed by redis-py's error).
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from harness import audit, record, wait_for
from netcut import Forwarder

from memworker.queue.producer import MemoryQueue

#: Jobs enqueued, a quarter before each outage; every other one has a FLAKY text
#: (retried, first after 4-8 s).
JOBS = 60
#: Link outages (seconds) and the seconds between them.
OUTAGES = (2.0, 5.0, 3.0, 6.0)
UP_S = 2.0


def test_worker_link_cut_while_retries_wait_in_the_delay_queue(chaos_server, ns, workdir, cli_workers):
    client = chaos_server.client()
    link = Forwarder(chaos_server.port)
    calls = workdir / "calls.jsonl"
    try:
        workers = cli_workers(
            server=SimpleNamespace(url=f"valkey://127.0.0.1:{link.port}"),
            MEMWORKER_MIN_BACKOFF_MS="4000", MEMWORKER_CHAOS_CALLS=str(calls),
        )  # fmt: skip
        proc = workers.start(threads=2)
        workers.wait_live(client)
        texts = [f"{'FLAKY ' if n % 2 else ''}partition job {n}" for n in range(JOBS)]
        per_outage = JOBS // len(OUTAGES)
        with MemoryQueue(chaos_server.url, namespace=ns, producer_id="pp") as q:
            jobs: list[str] = []
            dq_acks = f"{{{ns}}}:dq:__acks__.*.default.DQ"
            waiting = []
            for k, outage in enumerate(OUTAGES):
                jobs += [q.enqueue_encode_job([t])[0] for t in texts[k * per_outage : (k + 1) * per_outage]]
                wait_for(lambda: any(client.scard(key) for key in client.keys(dq_acks)), 60, "a retry held")
                waiting.append(sum(client.scard(key) for key in client.keys(dq_acks)))
                link.cut()
                time.sleep(outage)
                link.restore()
                time.sleep(UP_S)
            started = time.monotonic()
            report = q.drain(timeout=120, job_ids=jobs)
            took = time.monotonic() - started
        a = audit(client, ns)
        alive = proc.poll() is None
    finally:
        link.close()
    runs: dict[str, int] = {}
    for line in calls.read_text().splitlines():
        for t in json.loads(line)["texts"]:
            runs[t] = runs.get(t, 0) + 1
    failed_ids = {i for f in report.failed for i in f.record_ids}
    lost = JOBS - len(a.ids) - len(failed_ids)
    committed = int(client.hget(f"{{{ns}}}:stats", "committed") or 0)
    record("Worker's link to Valkey cut while retries wait in the delay queue",
           injections=len(OUTAGES), lost=lost, duplicates=a.records - len(a.ids),
           outage_s=sum(OUTAGES), retries_held_at_cuts=sum(waiting), jobs=JOBS,
           jobs_failed=len(report.failed), commits_counted=committed,
           embedded_more_than_needed=sum(max(0, n - 1) for n in runs.values()),
           drain_after_s=round(took, 1), worker_survived=alive)  # fmt: skip
    assert report.committed == JOBS and not report.failed, report
    assert lost == 0 and a.records == JOBS and a.bad_records == []
    assert committed == JOBS  # each job counted once: no commit ran twice in effect
    assert alive
    assert sum(waiting) > 0  # the cuts fell while retries waited
