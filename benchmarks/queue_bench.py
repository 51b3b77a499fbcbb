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
   with an instant fake embedder (the queue alone) and with the bundled model; and, on
   the same workers, the drain wait: a producer enqueues one job (1 or 50 texts) and
   calls ``MemoryQueue.drain()``; the seconds each drain blocked (p50/p99);
D. metrics overhead: one default worker (instant embedder) on a backlog of
   ``--metrics-jobs`` single-text jobs, ``--metrics-port`` off vs on, in
   ``--metrics-pairs`` interleaved pairs (off-on, on-off, off-on, ...; a fresh worker
   and a flushed server each round). Per round: committed jobs/s and the worker's CPU
   seconds per job (utime + stime of its processes from ``/proc/<pid>/stat``), both
   over the same window (worker healthy -> last job committed). Reported: each pair's
   on / off ratio, their median and spread.

``--plot PNG`` draws one figure of the raw measurements (matplotlib, the ``bench`` extra):
A's enqueue latencies, C's enqueue -> committed latencies and drain waits as
distributions (empirical CDFs, log ms), and D's per-pair on / off ratios.

Nothing is asserted on time: the benchmark prints tables (and the figure).

    .venv/bin/python benchmarks/queue_bench.py            # default run (~8 min)
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


def drain_wait(settings: Settings, n: int, size: int) -> tuple[list[float], list[float]]:
    """One job of ``size`` texts at a time to an idle worker: the producer enqueues it,
    then calls ``drain()``. Milliseconds each drain blocked, and from the enqueue call
    to the drain's return."""
    waits, totals = [], []
    with MemoryQueue(settings, producer_id=f"drain-{size}") as q:
        for i in range(n):
            time.sleep(0.3)  # let the worker go idle
            t0 = time.perf_counter()
            q.enqueue_encode(items(size, 300_000 + i * size))
            t1 = time.perf_counter()
            report = q.drain(timeout=60)
            t2 = time.perf_counter()
            if report.committed != 1 or report.failed:
                raise SystemExit(f"drain {i} ({size} texts): {report}")
            waits.append((t2 - t1) * 1000)
            totals.append((t2 - t0) * 1000)
    return waits, totals


_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, descendants: bool = True) -> float:
    """utime + stime of ``pid`` and (``descendants``) its live descendants, in seconds
    (``/proc/<pid>/stat``; a process's counts include its threads', live and ended)."""
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: the 14th and 15th
        for task in tasks if descendants else ():
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return ticks / _CLK


def machine_busy() -> float:
    """CPU seconds the machine's cores have been busy since boot (``/proc/stat``: user,
    nice, system, irq, softirq and steal; not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLK


#: D: a round during which the rest of the machine used less CPU than this counts as quiet.
QUIET_CORES = 0.15


def wait_quiet(server_pid: int, limit_s: float, cores: float = QUIET_CORES) -> float:
    """Wait (at most ``limit_s``) for a second in which the rest of the machine (all
    but the valkey-server and this process) used under ``cores``: on a shared machine,
    a round then starts with nothing else running. Returns the seconds waited."""
    started = time.perf_counter()
    while True:
        here0 = cpu_seconds(server_pid, descendants=False) + cpu_seconds(os.getpid(), descendants=False)
        busy0 = machine_busy()
        time.sleep(1.0)
        here1 = cpu_seconds(server_pid, descendants=False) + cpu_seconds(os.getpid(), descendants=False)
        other = (machine_busy() - busy0) - (here1 - here0)
        waited = time.perf_counter() - started
        if other < cores or waited >= limit_s:
            return waited


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
        "--metrics-pairs", type=int, default=10, help="off/on pairs of rounds of the metrics-overhead case"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60, metavar="S",
        help="before each metrics-overhead round, wait up to S seconds for the rest of the machine to be idle",
    )  # fmt: skip
    parser.add_argument("--skip", default="", help="parts to skip, e.g. AB (D alone: --skip ABC)")
    parser.add_argument(
        "--plot", metavar="PNG", help="also draw the latency distributions and D as a PNG (matplotlib)"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.records, args.metrics_pairs = 80, 100, 1
    skip = set(args.skip.upper())
    if args.plot:
        S.pyplot()  # fail now, not after the run, without matplotlib
    figures: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M %Z")}
    enqueue_lat: dict[str, list[float]] = {}
    inline_lat: dict[str, list[float]] = {}
    pickup_lat: dict[str, list[float]] = {}
    drain_lat: dict[str, list[float]] = {}
    one_text_ms = 0.0
    rounds: list[dict[str, Any]] = []
    from memworker.embedding.model import Embedder

    embedder = Embedder()
    embedder.encode(["warm up"])
    with server(False) as srv:
        settings = Settings.from_url(srv.url, namespace="qbench")
        if "A" not in skip:
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

        if "B" not in skip:
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

        if "C" not in skip:
            banner("C. idle pickup and drain wait: one job at a time to an idle worker")
            rows, drain_rows = [], []
            n = 10 if args.quick else 40
            for label, fake in (("no model (queue + commit only)", True), ("bundled model", False)):
                settings = Settings.from_url(srv.url, namespace=f"qbench-c-{int(fake)}")
                proc = start_workers(settings, 1, 2, fake=fake)
                try:
                    lat = idle_pickup(settings, n)
                    drains = {size: drain_wait(settings, n, size) for size in (1, 50)}
                finally:
                    stop(proc)
                rows.append([label, f"{median(lat):.1f}", f"{pct(lat, 99):.1f}"])
                pickup_lat[label] = lat
                for size, (waits, totals) in drains.items():
                    case = f"{size} text{'s' if size > 1 else ''}, {'no model' if fake else 'bundled model'}"
                    drain_lat[case] = waits
                    drain_rows.append([case, f"{median(waits):.1f}", f"{pct(waits, 99):.1f}",
                                       f"{median(totals):.1f}"])  # fmt: skip
            t0 = time.perf_counter()
            for i in range(20):
                embedder.encode([TEXT.format(i=90_000 + i)])
            one_text_ms = (time.perf_counter() - t0) * 50
            rows.append(["embedding one text alone (this process)", f"{one_text_ms:.1f}", "-"])
            print(table(["enqueue -> committed (done notification)", "p50 ms", "p99 ms"], rows))
            print("dramatiq's Redis consumer alone would wait up to its 1 s idle backoff before a fetch.")
            print(f"drain wait: one job at a time ({n} per case), enqueue_encode then drain(); "
                  "the time drain() blocked:")  # fmt: skip
            print(table(["job, worker", "drain p50 ms", "drain p99 ms", "enqueue + drain p50 ms"], drain_rows))

        jobs = 500 if args.quick else args.metrics_jobs
        if "D" not in skip:
            banner(f"D. metrics overhead: a backlog of {jobs:,} single-text jobs, one default worker, "
                   f"instant embedder, --metrics-port off vs on, {args.metrics_pairs} interleaved pairs")  # fmt: skip
            rounds = metrics_rounds(srv, jobs, args.metrics_pairs, 0 if args.quick else args.quiet_wait)
            print(metrics_table(rounds))
    if args.plot:
        figures.update(
            calls=args.calls, enqueue=enqueue_lat, inline=inline_lat, pickup=pickup_lat,
            drain=drain_lat, one_text_ms=one_text_ms, metrics=rounds, metrics_jobs=jobs,
        )  # fmt: skip
        plot(args.plot, figures)


def ecdf(ax: Any, values: list[float], **kwargs: Any) -> None:
    """The empirical CDF of ``values`` as a step line (fraction of calls at or below x)."""
    xs = sorted(values)
    n = len(xs)
    ax.step(xs, [(i + 1) / n for i in range(n)], where="post", **kwargs)


def plot(path: str, f: dict[str, Any]) -> None:
    """One PNG with a panel per part that measured something (two columns): A's
    enqueue latencies, C's enqueue -> committed latencies and drain waits (empirical
    CDFs, log x), and D's per-pair on / off ratios (jobs/s and CPU per job)."""
    plt = S.pyplot()
    panels = [k for k in ("enqueue", "pickup", "drain") if any(f.get(k, {}).values())]
    if f.get("metrics"):
        panels.append("metrics")
    if not panels:
        S.say("   plot: nothing measured, no figure")
        return
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        if key == "metrics":
            metrics_panel(ax, f)
        else:
            latency_panel(ax, key, f, plt)
        ax.title.set_fontsize(9)
    fig.suptitle(f"queue_bench.py, {f['started']}, {os.cpu_count()} cores, one valkey-server "
                 "(no module), memworker worker subprocesses", fontsize=10)  # fmt: skip
    fig.tight_layout()
    S.save_figure(fig, path)


def latency_panel(ax: Any, key: str, f: dict[str, Any], plt: Any) -> None:
    """A's, C's pickup or C's drain latencies as empirical CDFs (log ms)."""
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for label, lat in f[key].items():
        if lat:
            ecdf(ax, lat, color=next(colors), lw=1.6,
                 label=f"{label}: p50 {median(lat):.2f} ms, p99 {pct(lat, 99):.2f} ms")  # fmt: skip
    n = max(len(v) for v in f[key].values())
    if key == "enqueue":
        for label, lat in f["inline"].items():
            if lat:
                label = f"baseline: the agent embeds {label} inline, p50 {median(lat):.1f} ms"
                ecdf(ax, lat, color="0.55", lw=1.1, ls="--", label=label)
        ax.set_title(f"A. enqueue_encode call, {f['calls']:,} calls per case\n(no worker running)")
        ax.set_xlabel("enqueue latency, ms (log)")
    elif key == "pickup":
        label = f"embedding one text alone (this process): {f['one_text_ms']:.1f} ms, mean"
        ax.axvline(f["one_text_ms"], color="0.55", ls=":", lw=1.2, label=label)
        ax.set_title(f"C. idle pickup: enqueue -> committed,\none 1-text job at a time ({n} jobs per case)")
        ax.set_xlabel("time to searchable, ms (log)")
    else:
        ax.set_title(
            "C. drain wait: enqueue_encode one job, then drain();\n"
            f"the time drain() blocked, idle worker ({n} jobs per case)"
        )
        ax.set_xlabel("drain wait, ms (log)")
    ax.set_xscale("log")
    S.plain_log_ticks(ax.xaxis)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"fraction of {'calls' if key == 'enqueue' else 'jobs'} at or below (CDF)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)


def metrics_panel(ax: Any, f: dict[str, Any]) -> None:
    """D: each pair's on / off ratio of jobs/s and of worker CPU per job, their medians,
    and the 3% band around 1."""
    m = metrics_summary(f["metrics"])
    ax.axhspan(0.97, 1.03, color="#9c9", alpha=0.25, label="within 3% of metrics off")
    ax.axhline(1.0, color="0.4", lw=0.8)
    for x, (key, color) in enumerate((("rate", "#37a"), ("cpu", "#c62"))):
        ratios = m[f"{key}_ratios"]
        xs = [x + 0.18 * ((i % 5) - 2) / 2 for i in range(len(ratios))]
        for quiet in (True, False):
            pts = [(px, r) for px, r, q in zip(xs, ratios, m["quiet_flags"]) if q == quiet]
            if not pts:
                continue
            label = (f"one pair (off and on back to back), nothing else ran (< {QUIET_CORES} cores)" if quiet
                     else f"one pair during which the rest of the machine used >= {QUIET_CORES} cores")
            ax.plot([px for px, _ in pts], [r for _, r in pts], "o", ms=5, alpha=0.85, color=color,
                    markerfacecolor=color if quiet else "none", label=label if x == 0 else None)  # fmt: skip
        mid = median(ratios)
        ax.plot([x - 0.3, x + 0.3], [mid, mid], color="k", lw=2, label="median of the pairs" if x == 0 else None)
        ax.text(x + 0.33, mid, f"{mid:.3f}", va="center", fontsize=8)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["jobs/s, on / off\n(below 1: slower)", "worker CPU per job, on / off\n(above 1: costlier)"])
    ax.set_xlim(-0.6, 1.7)
    lo = min(m["rate_ratios"] + m["cpu_ratios"] + [0.95])
    hi = max(m["rate_ratios"] + m["cpu_ratios"] + [1.05])
    ax.set_ylim(lo - 0.02, hi + 0.02)
    ax.set_ylabel("metrics on / metrics off, per pair of rounds")
    ax.set_title(
        f"D. metrics overhead (--metrics-port), {len(m['rate_ratios'])} interleaved pairs,\n"
        f"backlog of {f['metrics_jobs']:,} 1-text jobs, one default worker, instant embedder"
    )
    ax.grid(True, axis="y", alpha=0.3)
    if m["quiet_rate_ratios"]:
        for x, key in enumerate(("quiet_rate_ratios", "quiet_cpu_ratios")):
            mid = median(m[key])
            ax.plot([x - 0.3, x + 0.3], [mid, mid], color="k", lw=1, ls="--",
                    label="median of the quiet pairs" if x == 0 else None)  # fmt: skip
            ax.text(x + 0.33, mid, f"{mid:.3f} quiet", va="center", fontsize=7)
    note = (f"medians of the rounds: off {m['off_rate']:,.0f} jobs/s, {m['off_cpu']:.0f} us CPU/job; "
            f"on {m['on_rate']:,.0f} jobs/s, {m['on_cpu']:.0f} us CPU/job")  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    handles.append(plt_blank())
    labels.append(note)
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)


def plt_blank() -> Any:
    """An invisible legend handle (a line of text in the legend)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="none")


def backlog_round(
    settings: Settings, jobs: int, server_pid: int, *, metrics: bool, quiet_s: float = 0
) -> dict[str, Any]:
    """One round of D: ``jobs`` single-text jobs enqueued, then one default worker
    (instant embedder) started. Over the window from the worker being healthy to the
    last commit: committed jobs/s and the worker's CPU microseconds per job (utime +
    stime of its processes, ``/proc/<pid>/stat``); the jobs it committed before the
    window opened count in neither. Also the CPU the rest of the machine used in the
    window (every core's busy time less the worker's, the valkey-server's and this
    process's), in cores: what else ran beside the measurement. ``quiet_s``: wait up to
    that long for a quiet machine (:func:`wait_quiet`) before starting the worker."""
    import redis

    from memworker.queue.jobs import QueueKeys
    from memworker.testing import free_port

    with MemoryQueue(settings, producer_id="backlog") as q:
        for i in range(jobs):
            q.enqueue_encode([TEXT.format(i=200_000 + i)])
    env = {"MEMWORKER_METRICS_PORT": str(free_port()), "MEMWORKER_METRICS_ADDRESS": "127.0.0.1"} if metrics else {}
    client = redis.Redis.from_url(settings.url(redact=False, scheme="redis"))
    stats = QueueKeys(settings.namespace).stats
    waited = wait_quiet(server_pid, quiet_s) if quiet_s else 0.0
    proc = start_workers(settings, 1, 8, fake=True, env=env)
    try:

        def ours() -> tuple[float, float]:
            here = cpu_seconds(server_pid, descendants=False) + cpu_seconds(os.getpid(), descendants=False)
            return cpu_seconds(proc.pid), here

        before = int(client.hget(stats, "committed") or 0)
        t0, (cpu0, here0), busy0 = time.perf_counter(), ours(), machine_busy()
        while (done := int(client.hget(stats, "committed") or 0)) < jobs:
            time.sleep(0.01)
        t1, (cpu1, here1), busy1 = time.perf_counter(), ours(), machine_busy()
    finally:
        stop(proc)
        client.close()
    n, window = done - before, t1 - t0
    other = max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (here1 - here0)) / window
    return {"metrics": metrics, "jobs": n, "jobs_s": n / window, "cpu_us": 1e6 * (cpu1 - cpu0) / max(1, n),
            "other_cores": other, "waited_s": waited}  # fmt: skip


def metrics_rounds(srv: Any, jobs: int, pairs: int, quiet_s: float = 0) -> list[dict[str, Any]]:
    """D's rounds: ``pairs`` pairs, off-on then on-off alternately (a drift over the run
    falls on both sides), each round on a flushed server with a fresh worker, started
    once the machine is quiet (``quiet_s``, :func:`backlog_round`)."""
    import redis

    client = redis.Redis.from_url(Settings.from_url(srv.url).url(redact=False, scheme="redis"))
    out = []
    try:
        for pair in range(pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for metrics in order:
                client.flushall()
                settings = Settings.from_url(srv.url, namespace=f"qbench-d-{pair}-{int(metrics)}")
                r = backlog_round(settings, jobs, srv.process.pid, metrics=metrics, quiet_s=quiet_s)
                r["pair"] = pair
                out.append(r)
                S.say(f"   pair {pair + 1}/{pairs}, metrics {'on ' if metrics else 'off'}: "
                      f"{r['jobs_s']:,.0f} jobs/s, {r['cpu_us']:.0f} us CPU/job ({r['jobs']:,} jobs in the window; "
                      f"the rest of the machine: {r['other_cores']:.2f} cores; waited {r['waited_s']:.0f} s "
                      "for a quiet machine)")  # fmt: skip
    finally:
        client.close()
    return out


def metrics_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-pair on / off ratios of jobs/s and CPU per job, and each side's medians."""
    by_pair: dict[int, dict[bool, dict[str, Any]]] = {}
    for r in rounds:
        by_pair.setdefault(r["pair"], {})[r["metrics"]] = r
    pairs = [p for _, p in sorted(by_pair.items()) if len(p) == 2]
    side = {m: [r for r in rounds if r["metrics"] == m] for m in (False, True)}
    quiet = [p for p in pairs if max(p[False]["other_cores"], p[True]["other_cores"]) < QUIET_CORES]
    return {
        "pairs": pairs,
        "quiet_flags": [any(p is q for q in quiet) for p in pairs],
        "quiet_rate_ratios": [p[True]["jobs_s"] / p[False]["jobs_s"] for p in quiet],
        "quiet_cpu_ratios": [p[True]["cpu_us"] / p[False]["cpu_us"] for p in quiet],
        "rate_ratios": [p[True]["jobs_s"] / p[False]["jobs_s"] for p in pairs],
        "cpu_ratios": [p[True]["cpu_us"] / p[False]["cpu_us"] for p in pairs],
        "off_rate": median([r["jobs_s"] for r in side[False]]),
        "on_rate": median([r["jobs_s"] for r in side[True]]),
        "off_cpu": median([r["cpu_us"] for r in side[False]]),
        "on_cpu": median([r["cpu_us"] for r in side[True]]),
    }


def quiet_line(m: dict[str, Any]) -> str:
    """The medians over the pairs in which nothing else ran (both rounds' rest of the
    machine under QUIET_CORES), a line of D's table."""
    qr, qc = m["quiet_rate_ratios"], m["quiet_cpu_ratios"]
    head = f"pairs with the rest of the machine under {QUIET_CORES} cores in both rounds: {len(qr)} of {len(m['pairs'])}"
    if not qr:
        return head + "\n"
    return (f"{head}; their jobs/s on/off median {median(qr):.3f} ({min(qr):.3f}-{max(qr):.3f}), "
            f"CPU per job on/off median {median(qc):.3f} ({min(qc):.3f}-{max(qc):.3f})\n")  # fmt: skip


def metrics_table(rounds: list[dict[str, Any]]) -> str:
    """D's table: one row per pair, then the medians and spread of the ratios."""
    m = metrics_summary(rounds)
    rows: list[list[str]] = []
    for n, p in enumerate(m["pairs"]):
        off, on = p[False], p[True]
        rows.append([f"pair {n + 1} ({'off, on' if n % 2 == 0 else 'on, off'})",
                     f"{off['jobs_s']:,.0f}", f"{on['jobs_s']:,.0f}", f"{on['jobs_s'] / off['jobs_s']:.3f}",
                     f"{off['cpu_us']:.0f}", f"{on['cpu_us']:.0f}", f"{on['cpu_us'] / off['cpu_us']:.3f}",
                     f"{off['other_cores']:.2f} / {on['other_cores']:.2f}"])  # fmt: skip

    def spread(v: list[float]) -> str:
        return f"{min(v):.3f}-{max(v):.3f}, quartiles {pct(v, 25):.3f}-{pct(v, 75):.3f}"

    rr, cr = m["rate_ratios"], m["cpu_ratios"]
    rows.append(["median", f"{m['off_rate']:,.0f}", f"{m['on_rate']:,.0f}", f"{median(rr):.3f}",
                 f"{m['off_cpu']:.0f}", f"{m['on_cpu']:.0f}", f"{median(cr):.3f}", ""])  # fmt: skip
    text = table(["pair (order)", "off jobs/s", "on jobs/s", "on/off", "off us CPU/job", "on us CPU/job",
                  "on/off", "rest of machine, cores off / on"], rows)  # fmt: skip
    return (f"{text}\n"
            f"jobs/s on/off: median {median(rr):.3f} (pairs {spread(rr)}): "
            f"throughput overhead {100 * (1 - median(rr)):.1f}%\n"
            f"CPU per job on/off: median {median(cr):.3f} (pairs {spread(cr)}): "
            f"{100 * (median(cr) - 1):+.1f}% CPU per job\n"
            + quiet_line(m) + "the issue's target: an overhead under 3%")  # fmt: skip


if __name__ == "__main__":
    main()
