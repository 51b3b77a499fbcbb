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
   with an instant fake embedder (the queue alone) and with the bundled model;
D. metrics overhead: jobs/s of one default worker on a backlog of single-text jobs,
   ``--metrics-port`` off vs on.

``--plot PNG`` draws one figure of the raw measurements (matplotlib, the ``bench`` extra):
A's enqueue latencies and C's enqueue -> committed latencies as distributions
(empirical CDFs, log ms), and D's jobs/s off vs on.

    .venv/bin/python benchmarks/queue_bench.py            # default run (~2 min)
    .venv/bin/python benchmarks/queue_bench.py --quick    # smoke run
    .venv/bin/python benchmarks/queue_bench.py --plot docs/queue_latency.png
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers as S  # noqa: E402
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
    parser.add_argument(
        "--plot", metavar="PNG", help="also draw the latency distributions and D as a PNG (matplotlib)"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.records = 80, 100
    if args.plot:
        S.pyplot()  # fail now, not after the run, without matplotlib
    figures: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M %Z")}
    enqueue_lat: dict[str, list[float]] = {}
    inline_lat: dict[str, list[float]] = {}
    pickup_lat: dict[str, list[float]] = {}
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
            enqueue_lat[f"{size} text(s), {threads} thread(s)"] = lat
            if threads == 1:
                inline_lat[f"{size} text(s)"] = base
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
            pickup_lat[label] = lat
        t0 = time.perf_counter()
        for i in range(20):
            embedder.encode([TEXT.format(i=90_000 + i)])
        one_text_ms = (time.perf_counter() - t0) * 50
        rows.append(["embedding one text alone (this process)", f"{one_text_ms:.1f}", "-"])
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
    if args.plot:
        figures.update(
            calls=args.calls, enqueue=enqueue_lat, inline=inline_lat, pickup=pickup_lat,
            one_text_ms=one_text_ms, metrics=rates, metrics_jobs=jobs,
        )  # fmt: skip
        plot(args.plot, figures)


def ecdf(ax: Any, values: list[float], **kwargs: Any) -> None:
    """The empirical CDF of ``values`` as a step line (fraction of calls at or below x)."""
    xs = sorted(values)
    n = len(xs)
    ax.step(xs, [(i + 1) / n for i in range(n)], where="post", **kwargs)


def plot(path: str, f: dict[str, Any]) -> None:
    """One PNG with a panel per section that measured something: A's and C's latency
    distributions (empirical CDFs, log x) and D's jobs/s off vs on."""
    plt = S.pyplot()
    panels = [k for k in ("enqueue", "pickup") if any(f.get(k, {}).values())]
    rates = f.get("metrics") or {}
    if rates.get("off") and rates.get("on"):
        panels.append("metrics")
    if not panels:
        S.say("   plot: nothing measured, no figure")
        return
    widths = {"enqueue": 5.2, "pickup": 5.2, "metrics": 3.6}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(sum(widths[p] for p in panels), 5.2), squeeze=False,
        gridspec_kw={"width_ratios": [widths[p] for p in panels]},
    )  # fmt: skip
    for ax, key in zip(axes[0], panels):
        if key in ("enqueue", "pickup"):
            colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
            for label, lat in f[key].items():
                if lat:
                    ecdf(ax, lat, color=next(colors), lw=1.6,
                         label=f"{label}: p50 {median(lat):.2f} ms, p99 {pct(lat, 99):.2f} ms")  # fmt: skip
            if key == "enqueue":
                for label, lat in f["inline"].items():
                    if lat:
                        label = f"baseline: the agent embeds {label} inline, p50 {median(lat):.1f} ms"
                        ecdf(ax, lat, color="0.55", lw=1.1, ls="--", label=label)
                ax.set_title(
                    f"A. enqueue_encode call, {f['calls']:,} calls per case\n(no worker running)"
                )
                ax.set_xlabel("enqueue latency, ms (log)")
            else:
                label = f"embedding one text alone (this process): {f['one_text_ms']:.1f} ms, mean"
                ax.axvline(f["one_text_ms"], color="0.55", ls=":", lw=1.2, label=label)
                n = max(len(v) for v in f[key].values())
                ax.set_title(
                    "C. idle pickup: enqueue -> committed,\n"
                    f"one 1-text job at a time ({n} jobs per case)"
                )
                ax.set_xlabel("time to searchable, ms (log)")
            ax.set_xscale("log")
            S.plain_log_ticks(ax.xaxis)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel(f"fraction of {'jobs' if key == 'pickup' else 'calls'} at or below (CDF)")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        else:
            off, on = median(rates["off"]), median(rates["on"])
            ax.bar(["off", "on"], [off, on], color=["#888", "#37a"], width=0.6,
                   label="median of the rounds")  # fmt: skip
            for x, label in enumerate(("off", "on")):
                ax.plot([x] * len(rates[label]), rates[label], "o", color="k", ms=4,
                        label="each round" if x == 0 else None)  # fmt: skip
            for x, v in enumerate((off, on)):
                ax.text(x, v / 2, f"{v:,.0f}\njobs/s", ha="center", va="center", fontsize=8,
                        color="white")  # fmt: skip
            ax.set_title(f"D. metrics overhead {100 * (1 - on / off):.1f}% (1 - on / off)\n"
                         f"backlog of {f['metrics_jobs']:,} 1-text jobs, instant embedder")  # fmt: skip
            ax.set_ylabel("jobs committed per second")
            ax.set_ylim(0, max(rates["off"] + rates["on"]) * 1.3)
            ax.set_xlabel("worker --metrics-port")
            ax.legend(fontsize=7, loc="upper center", ncol=2)
        ax.title.set_fontsize(9)
    fig.suptitle(f"queue_bench.py, {f['started']}, {os.cpu_count()} cores, one valkey-server "
                 "(no module), memworker worker subprocesses", fontsize=10)  # fmt: skip
    fig.tight_layout()
    S.save_figure(fig, path)


def backlog_rate(settings: Settings, jobs: int, *, metrics: bool) -> float:
    """Committed jobs/s of one default worker (instant embedder) on a backlog of
    single-text jobs enqueued before it starts, from the moment it is healthy."""
    import redis

    from memworker.queue.jobs import QueueKeys
    from memworker.testing import free_port

    with MemoryQueue(settings, producer_id="backlog") as q:
        for i in range(jobs):
            q.enqueue_encode([TEXT.format(i=200_000 + i)])
    env = {"MEMWORKER_METRICS_PORT": str(free_port()), "MEMWORKER_METRICS_ADDRESS": "127.0.0.1"} if metrics else {}
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
