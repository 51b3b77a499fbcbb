"""Jobs committed per second by one default worker, against the producers and the job
size, with the old per-message path and the batched path; a table and a PNG.

On a throwaway valkey-server with RediSearch loaded, one ``memworker worker`` process
with default settings (``--processes 1``, 8 threads) and the instant embedder of
``_fake_embedder`` (the queue and the commit alone), started before the producers:

- producers 1, 8 and 32 (each a thread with its own ``MemoryQueue``), single-text jobs,
  ``--jobs`` (4,000) jobs per point;
- 1, 8 and 50 texts per job, 8 producers, ``--texts`` (8,000) texts per point;

each point measured with the old path (``MEMWORKER_INFLIGHT_RECORDS=0``: every job
through a dramatiq worker thread, one commit and one ack each) and the new one (the
default), one after the other on a fresh server, the order alternating from point to
point and round to round; ``--rounds`` (3) rounds over every point, the median shown
(the range as a bar; a single run swung the 8- and 50-text points by 1.5x). A point's
clock runs from the producers' start until the namespace's ``committed`` counter
(``ns:stats``, counted by each job's commit) shows every job committed, polled every
5 ms. Each producer then drains its own jobs, after the clock, to check that none
failed: a ``drain(job_ids=...)`` waiting while its jobs commit re-reads every id it
still waits for at each commit notification (``ZMSCORE``), which grows with the square
of the ids (measured: 8 drains of 1,000 ids each cost the server 1.1-1.2 s of
``ZMSCORE`` on the old path, 3.4-4.2x the cost with 500 ids each) and would be
measured with the worker. The producers share the machine's 2 cores with the worker
and the server.

The PNG (``--out``, default ``docs/single_text_scaling.png``) needs matplotlib, which
is not a dependency of memworker: ``.venv/bin/pip install matplotlib``. It is imported
only to write the PNG (``--no-png`` skips it).

    .venv/bin/python benchmarks/scaling_plot.py            # ~4 min (3 rounds)
    .venv/bin/python benchmarks/scaling_plot.py --quick    # smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _servers import banner, server, table  # noqa: E402
from queue_bench import items, start_workers, stop  # noqa: E402

from memworker.io.redispy import redis_client  # noqa: E402
from memworker.queue.jobs import QueueKeys  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402

#: The two paths compared: (label, the worker's extra environment).
PATHS: list[tuple[str, dict[str, str]]] = [
    ("old (MEMWORKER_INFLIGHT_RECORDS=0)", {"MEMWORKER_INFLIGHT_RECORDS": "0"}),
    ("new (batched path, default)", {}),
]
PRODUCER_COUNTS = (1, 8, 32)
JOB_SIZES = (1, 8, 50)
SIZE_PRODUCERS = 8
WORKER_THREADS = 8  # memworker worker's default
#: How often the clock's end (the committed counter) is polled, in seconds.
POLL_S = 0.005


def run_point(srv: object, namespace: str, env: dict[str, str], producers: int, jobs: int, size: int) -> float:
    """Seconds from the start of ``producers`` threads enqueueing ``jobs`` jobs of
    ``size`` texts in all (an equal share each) until the namespace's ``committed``
    counter shows them all committed, one fresh worker running. Each producer then
    drains its own jobs (after the clock: it checks that none failed)."""
    settings = Settings.from_url(srv.url, namespace=namespace)  # type: ignore[attr-defined]
    proc = start_workers(settings, 1, WORKER_THREADS, fake=True, env=env)
    errors: list[str] = []
    share = jobs // producers
    total = share * producers
    go = threading.Barrier(producers + 1)
    committed = threading.Event()

    def produce(k: int) -> None:
        with MemoryQueue(settings, producer_id=f"p{k}") as q:
            q.status()  # connect before the clock
            go.wait()
            ids = [q.enqueue_encode_job(items(size, (k * share + i) * size))[0] for i in range(share)]
            committed.wait(1800)
            report = q.drain(timeout=600, job_ids=ids)
            if report.failed or report.committed != len(ids):
                errors.append(f"producer {k}: {report.committed} committed, {len(report.failed)} failed")

    client = redis_client(settings)
    stats = QueueKeys(settings.namespace).stats
    try:
        threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        deadline = time.monotonic() + 1800
        while int(client.hget(stats, "committed") or 0) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"{namespace}: not every job committed in 30 min")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - t0
        committed.set()
        for t in threads:
            t.join()
    finally:
        committed.set()
        client.close()
        stop(proc)
    if errors:
        raise SystemExit("; ".join(errors))
    return seconds


def plot(
    out: Path,
    by_producers: dict[str, list[list[float]]],
    by_size: dict[str, list[list[float]]],
    title: str,
) -> None:
    """Two panels (log-log): jobs/s against producers, texts/s against texts per job;
    each value [median, low, high], drawn as the median with a bar over the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    styles = {PATHS[0][0]: ("tab:gray", "s", "--"), PATHS[1][0]: ("tab:blue", "o", "-")}
    panels = [
        (axes[0], PRODUCER_COUNTS, by_producers, "producer threads (single-text jobs)",
         "jobs committed / s", "throughput vs producers"),
        (axes[1], JOB_SIZES, by_size, f"texts per job ({SIZE_PRODUCERS} producers)",
         "texts (records) committed / s", "throughput vs job size"),
    ]  # fmt: skip
    for ax, xs, series, xlabel, ylabel, name in panels:
        for label, values in series.items():
            color, marker, line = styles[label]
            rates = [v[0] for v in values]
            bars = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
            ax.errorbar(xs, rates, yerr=bars, marker=marker, linestyle=line, color=color, label=label, capsize=3)
            for k, (x, y) in enumerate(zip(xs, rates)):
                # beside the point, above it when it is the higher of the two, else below
                higher = y >= max(other[k][0] for other in series.values())
                ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(7, 5 if higher else -11),
                            ha="left", fontsize=8, color=color)  # fmt: skip
        ax.set_xlim(xs[0] / 1.35, xs[-1] * 1.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(xs), [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        low, high = ax.get_ylim()
        ax.set_ylim(low / 1.3, high * 1.3)  # room for the labels
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Point:
    """One point of a panel: ``producers`` threads, ``jobs`` jobs of ``size`` texts."""

    panel: str  # "producers" or "size"
    producers: int
    jobs: int
    size: int

    @property
    def label(self) -> str:
        if self.panel == "producers":
            return f"{self.producers} producer(s), 1 text/job"
        return f"{self.producers} producers, {self.size} text(s)/job"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=4000, help="single-text jobs per producer-count point")
    ap.add_argument("--texts", type=int, default=8000, help="texts per job-size point")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each point and path (median)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "single_text_scaling.png",
                    help="the PNG (default: docs/single_text_scaling.png)")  # fmt: skip
    ap.add_argument("--no-png", action="store_true", help="print the table only")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 400 jobs and 800 texts a point, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.texts, args.rounds = 400, 800, 1
    points = [Point("producers", p, args.jobs // p * p, 1) for p in PRODUCER_COUNTS]
    for size in JOB_SIZES:
        jobs = max(SIZE_PRODUCERS, args.texts // size) // SIZE_PRODUCERS * SIZE_PRODUCERS
        points.append(Point("size", SIZE_PRODUCERS, jobs, size))
    seconds: dict[tuple[Point, str], list[float]] = {(pt, label): [] for pt in points for label, _ in PATHS}
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    banner(f"One default worker (1 process, {WORKER_THREADS} threads), instant embedder, RediSearch: "
           f"old vs new path, {args.rounds} round(s)")  # fmt: skip
    for r in range(args.rounds):
        for i, pt in enumerate(points):
            order = PATHS if (i + r) % 2 == 0 else PATHS[::-1]
            with server(True) as srv:  # a fresh server a point: nothing left from the others
                for label, env in order:
                    took = run_point(srv, f"scale-{i}-{len(env)}", env, pt.producers, pt.jobs, pt.size)
                    seconds[(pt, label)].append(took)
        print(f"round {r + 1} of {args.rounds} done", flush=True)

    rows: list[list[str]] = []
    curves: dict[str, dict[str, list[list[float]]]] = {"producers": {}, "size": {}}
    for pt in points:
        medians = {}
        for label, _ in PATHS:
            rates = sorted(pt.jobs / s for s in seconds[(pt, label)])
            medians[label] = statistics.median(rates)
            per = pt.size if pt.panel == "size" else 1  # the size panel plots texts/s
            curves[pt.panel].setdefault(label, []).append([statistics.median(rates) * per, rates[0] * per,
                                                           rates[-1] * per])  # fmt: skip
            spread = f"{rates[0]:,.0f}-{rates[-1]:,.0f}" if len(rates) > 1 else "-"
            rows.append([pt.label, label, f"{pt.jobs:,}", f"{pt.jobs * pt.size:,}", f"{medians[label]:,.0f}",
                         spread, f"{medians[label] * pt.size:,.0f}"])  # fmt: skip
        old, new = (medians[label] for label, _ in PATHS)
        rows.append([pt.label, "new / old (medians)", "", "", f"{new / old:.2f}x", "", ""])
    print(table(["point", "path", "jobs", "texts", "jobs/s (median)", "jobs/s (range)", "texts/s (median)"], rows))
    if not args.no_png:
        title = (f"memworker: one default worker, instant embedder, RediSearch, 2 cores; median of "
                 f"{args.rounds}, bars: range (scaling_plot.py, {started})")  # fmt: skip
        plot(args.out, curves["producers"], curves["size"], title)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
