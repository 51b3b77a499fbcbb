"""Single-text jobs, the commonest workload (issue 13): where per-job costs bound a worker.

On a throwaway valkey-server with RediSearch loaded, in one run:

A. ``--jobs`` (2,000) single-text jobs (``enqueue_encode([one item])``) from 8 producer
   threads, one ``memworker worker`` process with default settings (1 process, 8
   threads), the bundled torch model: enqueue -> committed, from the first enqueue to
   the end of the last drain, against the raw model at batch 64 in this process;
B. an instant embedder (the queue and the commit alone): a backlog of ``--backlog``
   (10,000) single-text jobs enqueued first, then one worker process started (start-up
   included) until every job is committed; and the same number of jobs from 8
   producers enqueueing while the worker runs.

    .venv/bin/python benchmarks/single_text_bench.py            # the issue's workloads (~3 min)
    .venv/bin/python benchmarks/single_text_bench.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import banner, server, table  # noqa: E402
from queue_bench import items, start_workers, stop  # noqa: E402

from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402

PRODUCERS = 8


def produce(settings: Settings, jobs: int, tag: str) -> list[tuple[str, list[str]]]:
    """``jobs`` single-text jobs from PRODUCERS threads; returns (producer, job ids)."""
    out: list[tuple[str, list[str]]] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        producer = f"{tag}-{k}"
        with MemoryQueue(settings, producer_id=producer) as q:
            ids = [q.enqueue_encode_job(items(1, k * jobs + i))[0] for i in range(jobs // PRODUCERS)]
        with lock:
            out.append((producer, ids))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(PRODUCERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def drain_all(settings: Settings, jobs: list[tuple[str, list[str]]]) -> None:
    for producer, ids in jobs:
        with MemoryQueue(settings, producer_id=producer) as q:
            report = q.drain(timeout=1800, job_ids=ids)
            if report.failed:
                raise SystemExit(f"{len(report.failed)} job(s) failed: {report.failed[0].error}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000, help="single-text jobs of workload A")
    ap.add_argument("--backlog", type=int, default=10_000, help="single-text jobs of workload B")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200 and 800 jobs")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.backlog = 200, 800
    from memworker.embedding.model import Embedder

    embedder = Embedder()
    embedder.encode(["warm up"])
    with server(True) as srv:
        banner(f"A. {args.jobs} single-text jobs, {PRODUCERS} producers, 1 worker process "
               "(default settings), bundled model, RediSearch")  # fmt: skip
        settings = Settings.from_url(srv.url, namespace="single-a")
        proc = start_workers(settings, 1, 8)
        try:
            t0 = time.perf_counter()
            jobs = produce(settings, args.jobs, "a")
            drain_all(settings, jobs)
            rate_a = args.jobs / (time.perf_counter() - t0)
        finally:
            stop(proc)
        texts = [str(t["text"]) for t in items(512, 90_000)]
        t0 = time.perf_counter()
        for start in range(0, len(texts), 64):
            embedder.encode(texts[start : start + 64])
        model_rate = len(texts) / (time.perf_counter() - t0)
        print(table(
            ["path", "jobs (texts)/s"],
            [["enqueue -> worker embed -> commit -> drained", f"{rate_a:,.0f}"],
             ["the model alone, batch 64, this process", f"{model_rate:,.0f}"],
             ["pipeline / model (target >= 0.85)", f"{rate_a / model_rate:.2f}"]],
        ))  # fmt: skip

        banner(f"B. instant embedder: {args.backlog} single-text jobs, 1 worker process")
        rows = []
        settings = Settings.from_url(srv.url, namespace="single-b1")
        jobs = produce(settings, args.backlog, "b1")
        t0 = time.perf_counter()
        proc = start_workers(settings, 1, 8, fake=True)
        try:
            drain_all(settings, jobs)
            rows.append(["backlog enqueued first, worker started after (start-up included)",
                         f"{args.backlog / (time.perf_counter() - t0):,.0f}"])  # fmt: skip
        finally:
            stop(proc)
        settings = Settings.from_url(srv.url, namespace="single-b2")
        proc = start_workers(settings, 1, 8, fake=True)
        try:
            t0 = time.perf_counter()
            jobs = produce(settings, args.backlog, "b2")
            drain_all(settings, jobs)
            rows.append([f"{PRODUCERS} producers enqueueing while the worker runs",
                         f"{args.backlog / (time.perf_counter() - t0):,.0f}"])  # fmt: skip
        finally:
            stop(proc)
        print(table(["workload (target >= 1,500 jobs/s)", "jobs committed/s"], rows))


if __name__ == "__main__":
    main()
