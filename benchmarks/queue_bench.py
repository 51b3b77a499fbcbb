"""Queue and worker: what an agent waits for, and what the workers deliver.

Measures, on a throwaway valkey-server, in one run:

A. agent-side enqueue latency (p50/p99) of ``MemoryQueue.enqueue_encode`` for 1 and
   50 texts, from 1 and 8 threads, with no worker running -- against the baseline of
   an agent that embeds the same texts itself before saving (what CrewAI's Memory
   does on its save thread), measured in the same run;
B. end-to-end throughput: producers enqueue ``--records`` texts in jobs of 50,
   ``memworker worker`` processes embed (bundled model) and commit; records/s from
   the first enqueue to the end of the drain, against the model alone in this process;
C. idle pickup: one small job at a time to an idle worker, enqueue -> committed (p50/p99),
   with an instant fake embedder (the queue alone) and with the bundled model.

    .venv/bin/python benchmarks/queue_bench.py            # default run (~2 min)
    .venv/bin/python benchmarks/queue_bench.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import banner, median, pct, server, table  # noqa: E402

from memworker.queue.admin import check_health  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402

TEXT = "Acme asked about the refund of invoice {i}; follow up with the billing team next week."


def items(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"text": TEXT.format(i=start + i), "scope": "/bench", "categories": ["billing"], "importance": 0.5}
        for i in range(n)
    ]


def enqueue_latency(settings: Settings, calls: int, size: int, threads: int) -> list[float]:
    """Milliseconds per enqueue_encode call."""
    out: list[float] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        mine: list[float] = []
        with MemoryQueue(settings, producer_id=f"lat-{size}-{threads}-{k}") as q:
            q.enqueue_encode(items(size))  # connect outside the clock
            for i in range(calls // threads):
                t0 = time.perf_counter()
                q.enqueue_encode(items(size, i * size))
                mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            out.extend(mine)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return out


def idle_pickup(settings: Settings, n: int) -> list[float]:
    """Milliseconds from enqueue to the commit notification, one job at a time, the
    worker idle (blocked on its wake-up list) before each."""
    from memworker.queue.jobs import QueueKeys
    from memworker.io.redispy import redis_client

    client = redis_client(settings)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(QueueKeys(settings.namespace).producer("idle").done_channel)
    out = []
    try:
        with MemoryQueue(settings, producer_id="idle") as q:
            for i in range(n):
                time.sleep(0.3)  # let the worker go idle
                t0 = time.perf_counter()
                job, _ = q.enqueue_encode_job(items(1, i))
                while True:
                    message = pubsub.get_message(timeout=10)
                    if message is not None and message["data"].decode() == job:
                        break
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        pubsub.close()
        client.close()
    return out


def start_workers(
    settings: Settings,
    processes: int,
    threads: int,
    *,
    fake: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``memworker worker`` as a subprocess (environment: this one's, then ``env``),
    once it is healthy. ``fake``: the instant embedder of ``_fake_embedder``."""
    full = dict(os.environ, VALKEY_URL=settings.url(redact=False), MEMWORKER_NAMESPACE=settings.namespace)
    if fake:  # no model: what is measured is the queue and the commit alone
        here = str(Path(__file__).resolve().parent)
        full.update(MEMWORKER_EMBEDDER="_fake_embedder:make", PYTHONPATH=here)
    full.update(env or {})
    cmd = [sys.executable, "-m", "memworker.cli", "worker", "--processes", str(processes), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not check_health(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("workers did not start")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--calls", type=int, default=2000, help="enqueue calls per latency case")
    parser.add_argument("--records", type=int, default=2000, help="records for the throughput case")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--metrics-jobs", type=int, default=6000, help="backlog of the metrics-overhead case")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.records = 80, 100
    from memworker.embedding.model import Embedder

    embedder = Embedder()
    embedder.encode(["warm up"])
    with server(False) as srv:
        settings = Settings.from_url(srv.url, namespace="qbench")
        banner(f"A. agent-side enqueue latency ({args.calls} calls per case, no worker running)")
        rows = []
        for size, threads in ((1, 1), (1, 8), (50, 1), (50, 8)):
            lat = enqueue_latency(settings, args.calls, size, threads)
            # Baseline: the agent embeds the same texts itself (one call per save).
            base = []
            for i in range(max(5, min(50, args.calls // 20))):
                t0 = time.perf_counter()
                embedder.encode([str(t["text"]) for t in items(size, 10_000 + i * size)])
                base.append((time.perf_counter() - t0) * 1000)
            rows.append(
                [f"{size} text(s), {threads} thread(s)", f"{median(lat):.3f}", f"{pct(lat, 99):.3f}",
                 f"{median(base):.1f}", f"{median(base) / median(lat):.0f}x"]
            )  # fmt: skip
        print(table(["case", "enqueue p50 ms", "enqueue p99 ms", "embed-inline p50 ms", "ratio"], rows))

        banner(f"B. throughput: {args.records} records in jobs of 50, {args.processes} worker process(es)")
        settings = Settings.from_url(srv.url, namespace="qbench-b")
        proc = start_workers(settings, args.processes, args.threads)
        try:
            t0 = time.perf_counter()
            producers = 4

            def produce(k: int) -> None:
                with MemoryQueue(settings, producer_id=f"tp-{k}") as q:
                    share = args.records // producers
                    for start in range(0, share, 50):
                        q.enqueue_encode(items(min(50, share - start), k * share + start))
                    q.drain(timeout=600)

            threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pipeline_s = time.perf_counter() - t0
        finally:
            stop(proc)
        texts = [str(t["text"]) for t in items(min(args.records, 512), 50_000)]
        t0 = time.perf_counter()
        for start in range(0, len(texts), 64):
            embedder.encode(texts[start : start + 64])
        model_rate = len(texts) / (time.perf_counter() - t0)
        rate = args.records / pipeline_s
        print(table(
            ["path", "records/s"],
            [["enqueue -> worker embed -> commit -> drained", f"{rate:,.0f}"],
             ["the model alone, batch 64, this process", f"{model_rate:,.0f}"],
             ["pipeline / model", f"{rate / model_rate:.2f}"]],
        ))  # fmt: skip

        banner("C. idle pickup: one 1-text job at a time to an idle worker, enqueue -> committed")
        rows = []
        for label, fake in (("no model (queue + commit only)", True), ("bundled model", False)):
            settings = Settings.from_url(srv.url, namespace=f"qbench-c-{int(fake)}")
            proc = start_workers(settings, 1, 2, fake=fake)
            try:
                lat = idle_pickup(settings, 10 if args.quick else 40)
            finally:
                stop(proc)
            rows.append([label, f"{median(lat):.1f}", f"{pct(lat, 99):.1f}"])
        t0 = time.perf_counter()
        for i in range(20):
            embedder.encode([TEXT.format(i=90_000 + i)])
        rows.append(["embedding one text alone (this process)", f"{(time.perf_counter() - t0) * 50:.1f}", "-"])
        print(table(["enqueue -> committed (done notification)", "p50 ms", "p99 ms"], rows))
        print("dramatiq's Redis consumer alone would wait up to its 1 s idle backoff before a fetch.")

        jobs = 500 if args.quick else args.metrics_jobs
        banner(f"D. metrics overhead: a backlog of {jobs:,} single-text jobs, one default worker, "
               "instant embedder, --metrics-port off vs on (alternating rounds)")
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for round_ in range(1 if args.quick else 3):
            for label in ("off", "on"):
                settings = Settings.from_url(srv.url, namespace=f"qbench-d-{label}-{round_}")
                rates[label].append(backlog_rate(settings, jobs, metrics=label == "on"))
        off, on = median(rates["off"]), median(rates["on"])
        print(table(
            ["metrics", "jobs/s (median)", "rounds"],
            [["off", f"{off:,.0f}", ", ".join(f"{r:,.0f}" for r in rates["off"])],
             ["on (--metrics-port)", f"{on:,.0f}", ", ".join(f"{r:,.0f}" for r in rates["on"])],
             ["on / off", f"{on / off:.3f}", f"overhead {100 * (1 - on / off):.1f}%"]],
        ))  # fmt: skip


def backlog_rate(settings: Settings, jobs: int, *, metrics: bool) -> float:
    """Committed jobs/s of one default worker (instant embedder) on a backlog of
    single-text jobs enqueued before it starts, from the moment it is healthy."""
    import redis

    from memworker.queue.jobs import QueueKeys
    from memworker.testing import free_port

    with MemoryQueue(settings, producer_id="backlog") as q:
        for i in range(jobs):
            q.enqueue_encode([TEXT.format(i=200_000 + i)])
    env = {"MEMWORKER_METRICS_PORT": str(free_port())} if metrics else {}
    client = redis.Redis.from_url(settings.url(redact=False, scheme="redis"))
    stats = QueueKeys(settings.namespace).stats
    proc = start_workers(settings, 1, 8, fake=True, env=env)
    try:
        t0 = time.perf_counter()
        while int(client.hget(stats, "committed") or 0) < jobs:
            time.sleep(0.01)
        return jobs / (time.perf_counter() - t0)
    finally:
        stop(proc)
        client.close()


if __name__ == "__main__":
    main()
