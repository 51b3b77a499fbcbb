"""Single-text jobs, the commonest workload (issue 13): where per-job costs bound a worker.

On a throwaway valkey-server with RediSearch loaded, in one run:

A. ``--jobs`` (2,000) single-text jobs (``enqueue_encode([one item])``) from 8 producer
   threads, one ``memworker worker`` process with default settings (1 process, 8
   threads): enqueue -> committed, from the first enqueue to the end of the last
   drain, against the raw model at batch 64 in this process (the mean of 2,048 texts
   embedded before the pipeline and 2,048 after it); once per backend of
   ``--backends`` (the bundled torch model, and onnx-int8: the worker with
   ``MEMWORKER_BACKEND=onnx-int8``, the raw model ``Embedder(backend="onnx-int8")``).
   The target column says met or missed (against both measurements of the model
   alone, else against their mean); or undecided when the two are more than 10% apart
   and the pipeline meets one but not the other (the host's speed moved inside the
   run; the figures are printed either way);
B. an instant embedder (the queue and the commit alone): a backlog of ``--backlog``
   (10,000) single-text jobs enqueued first, then one worker process started (start-up
   included) until every job is committed; and the same number of jobs from 8
   producers enqueueing while the worker runs;
C. idle pickup: one idle worker (instant embedder, default settings); ``--pickups``
   (200) single-text jobs, one at a time, each enqueued ``--pause-ms`` (50) after the
   previous one's drain returned: enqueue call start -> ``drain(job_ids=[job])``
   returned, p50 / p99 (the issue's goal: ~10 ms).

A's CPU budget: the CPU each job cost the worker, Valkey and this process (the producers
and the drains), and the rate the machine's cores allow at that cost (every core busy
all the time) as a fraction of the model alone: what the pipeline could reach here.

Per-job report of each A and B run, over its measured window:
- worker CPU per job: utime + stime of the worker process (``/proc/<pid>/stat``, with
  any child processes; ``memworker worker --processes 1`` serves in the CLI process
  itself, the health record's pid is checked against it) divided by the jobs committed
  in the window (the ``ns:stats`` counter). With the instant embedder the model costs
  ~0, so this is the worker's cost outside the model; with a real model it includes
  the model, and a rough estimate of the rest is printed (minus the raw model's CPU a
  text at the run's batch fill, in this process). For torch it is not meaningful: the
  worker runs two single-threaded batches side by side, which costs less CPU a text
  than this process's one batch on two threads, so the difference can be negative;
  the same holds for onnx-int8 (``MEMWORKER_BACKEND``: single-threaded sessions side by
  side in the worker);
- server round trips per job: ``INFO stats`` ``total_reads_processed`` (socket reads
  with requests: one per round trip, a pipeline or MULTI normally arriving in one)
  and server commands per job: ``INFO commandstats`` calls (commands run inside scripts
  and MULTI each count), both from every client (in B's backlog run the jobs were
  enqueued before the window, so it is the worker, the drains and the health beats;
  the other runs include each job's enqueue), divided by the jobs;
- server CPU per job: the server process's ``used_cpu_user + used_cpu_sys`` (``INFO
  cpu``) per job; and the script time per job (commandstats usec of EVAL/EVALSHA,
  which already includes the commands the scripts run: commandstats usec summed over
  every command would count those twice; usec is elapsed time, so on a saturated
  machine it includes waits for a CPU and can exceed the server's CPU time);
- batch fill: texts per inference batch, ``embed_texts / embed_batches`` of the
  worker's health record after the run (less the warm-up batch of one text);
- drain release: the workloads drain the 8 producers one after the other, so a drain
  either waits for its producer's last commit or starts after it. A subscriber thread
  of this process (every done channel; a commit publishes its job ids in its atomic
  step), started once every job is enqueued, notes when each producer's last job
  committed. Reported: for each drain that was waiting, from that notification to the
  drain's return; for each drain that started after, its call time; and from the last
  commit of all to the last drain's return (the workload's tail).

The report's reads run outside the timed windows; the subscriber runs inside them, during
the drains only (started during the producers, it cost the live-producer run 5-24% of its
throughput; started after them, 6 alternated pairs gave 0.80-1.07x, mean 0.95x: noise).

    .venv/bin/python benchmarks/single_text_bench.py            # the issue's workloads (~1.5 min)
    .venv/bin/python benchmarks/single_text_bench.py --quick    # smoke run (< 1 min)
    .venv/bin/python benchmarks/single_text_bench.py --old      # also B and C with the old path (~2.5 min)
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _servers import banner, median, pct, server, table  # noqa: E402
from queue_bench import items, start_workers, stop  # noqa: E402

from memworker.io.redispy import redis_client  # noqa: E402
from memworker.queue.admin import live_workers  # noqa: E402
from memworker.queue.jobs import QueueKeys  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402

PRODUCERS = 8
#: The worker's environment per backend of workload A.
BACKEND_ENV: dict[str, dict[str, str]] = {
    "torch": {},
    "onnx-int8": {"MEMWORKER_BACKEND": "onnx-int8"},
}
#: The old per-message path: every job through a worker thread, one commit and ack each.
OLD_PATH = {"MEMWORKER_INFLIGHT_RECORDS": "0"}
#: Texts of each measurement of the model alone (A's ceiling).
RAW_TEXTS = 2048
#: A's target: the pipeline at this fraction of the model alone, or more.
TARGET_RATIO = 0.85
#: The model alone measured further apart than this before and after A's pipeline, and
#: the pipeline meeting the target against one but not the other: the run cannot decide.
MAX_DRIFT = 0.10
#: The warm-up batch every worker runs before its first job (one text).
WARM_UP = (1, 1)


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


def drain_all(
    settings: Settings, jobs: list[tuple[str, list[str]]], times: dict[str, tuple[float, float]] | None = None
) -> None:
    """Drain each producer's jobs, one producer after the other; ``times`` gets each
    drain's (start, return) perf_counter times."""
    for producer, ids in jobs:
        with MemoryQueue(settings, producer_id=producer) as q:
            t0 = time.perf_counter()
            report = q.drain(timeout=1800, job_ids=ids)
            if times is not None:
                times[producer] = (t0, time.perf_counter())
            if report.failed:
                raise SystemExit(f"{len(report.failed)} job(s) failed: {report.failed[0].error}")


# --------------------------------------------------------------------------- per-job report
_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds (``/proc``)."""
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
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return ticks / _CLK


@dataclass
class ServerSnap:
    """The server's counters at one moment."""

    reads: int
    calls: dict[str, int]
    usec: dict[str, int]
    cpu: float

    @classmethod
    def take(cls, client: Any) -> ServerSnap:
        stats, commands, cpu = client.info("stats"), client.info("commandstats"), client.info("cpu")
        return cls(
            reads=int(stats["total_reads_processed"]),
            calls={k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in commands.items()},
            usec={k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in commands.items()},
            cpu=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        )


@dataclass
class Report:
    """Per-job figures of one run (see the module doc)."""

    label: str
    jobs: int  # committed in the window
    rate: float  # the workload's jobs/s (its own clock)
    worker_cpu_s: float
    reads: int
    calls: dict[str, int]
    cpu_s: float
    script_usec: int
    fill: float
    drains: dict[str, list[float]]
    texts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> list[str]:
        n = max(1, self.jobs)
        scripts = sum(v for k, v in self.calls.items() if k in ("eval", "evalsha", "eval_ro", "evalsha_ro"))
        return [
            self.label,
            f"{self.jobs:,}",
            f"{self.rate:,.0f}",
            f"{self.worker_cpu_s / n * 1000:.3f}",
            f"{self.reads / n:.2f}",
            f"{sum(self.calls.values()) / n:.1f}",
            f"{scripts / n:.3f}",
            f"{self.cpu_s / n * 1e6:.0f}",
            f"{self.script_usec / n:.0f}",
            f"{self.fill:.1f}",
        ]

    def drain_row(self) -> list[str]:
        d = self.drains
        waiting, after = d["waiting"], d["after"]
        return [
            self.label,
            f"{len(waiting)}",
            f"{median(waiting):.1f} / {max(waiting):.1f}" if waiting else "-",
            f"{len(after)}",
            f"{median(after):.1f}" if after else "-",
            f"{d['tail'][0]:.1f}" if d["tail"] else "-",
        ]


REPORT_HEADERS = [
    "run", "jobs", "jobs/s", "worker CPU ms/job", "round trips/job", "commands/job",
    "script calls/job", "server CPU us/job", "script us/job", "texts/batch",
]  # fmt: skip
DRAIN_HEADERS = [
    "run", "drains waiting at their last commit", "their release p50 / max ms",
    "drains started after their jobs committed", "their call p50 ms", "last commit -> last drain returned ms",
]  # fmt: skip


class Probe:
    """Watches one run: the worker's CPU, the server's counters and the committed
    counter at :meth:`begin` and :meth:`end`; from :meth:`listen` on, a subscriber of
    every done channel (the time of each producer's last commit notification).

    The subscriber starts once every job is enqueued, before the drains: running beside
    8 producer threads it cost the live-producer run 5-24% of its throughput (GIL
    contention). A producer with no notification seen committed its last job before
    the drains started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = QueueKeys(settings.namespace)
        self.client = redis_client(settings)
        self.last_done: dict[bytes, float] = {}  # channel -> perf_counter of its last message
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def listen(self) -> None:
        """Subscribe to every done channel (returns once subscribed)."""
        self._pubsub.psubscribe(self.keys.done_pattern)
        self._pubsub.get_message(timeout=1)  # the subscription's confirmation
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None:
                self.last_done[message["channel"]] = time.perf_counter()

    def committed(self) -> int:
        return int(self.client.hget(self.keys.stats, "committed") or 0)

    def begin(self, pid: int) -> None:
        self.pid = pid
        workers = live_workers(self.settings, client=self.client)
        pids = {int(w["pid"]) for w in workers}
        if pids != {pid}:
            print(f"note: the health records name worker pid(s) {sorted(pids)}, the process started is {pid}")
        self.cpu0 = cpu_seconds(pid)
        self.committed0 = self.committed()
        self.srv0 = ServerSnap.take(self.client)

    def end(self, label: str, rate: float, times: dict[str, tuple[float, float]]) -> Report:
        """Call right after the last drain returned (``times``: from :func:`drain_all`)."""
        cpu1 = cpu_seconds(self.pid)
        srv1 = ServerSnap.take(self.client)
        jobs = self.committed() - self.committed0
        wall = time.time()
        health: dict[str, Any] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # a health beat after the drain (every 1 s)
            rows = live_workers(self.settings, client=self.client)
            if rows and int(rows[0].get("beat_ms", 0)) > wall * 1000:
                health = rows[0]
                break
            time.sleep(0.1)
        batches = int(health.get("embed_batches", 0)) - WARM_UP[0]
        texts = int(health.get("embed_texts", 0)) - WARM_UP[1]
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pubsub.close()
        self.client.close()
        calls = {k: v - self.srv0.calls.get(k, 0) for k, v in srv1.calls.items()}
        usec = {k: v - self.srv0.usec.get(k, 0) for k, v in srv1.usec.items()}
        return Report(
            label=label,
            jobs=jobs,
            rate=rate,
            worker_cpu_s=cpu1 - self.cpu0,
            reads=srv1.reads - self.srv0.reads,
            calls={k: v for k, v in calls.items() if v},
            cpu_s=srv1.cpu - self.srv0.cpu,
            script_usec=sum(v for k, v in usec.items() if k.startswith("eval")),
            fill=texts / batches if batches > 0 else float("nan"),
            drains=self._drains(times),
            texts=texts,
        )

    def _drains(self, times: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
        """Milliseconds: each drain that was waiting when its producer's last job
        committed, from that notification to its return ("waiting"); the call time of
        each drain that started after ("after"); the last notification of all to the
        last drain's return ("tail")."""
        out: dict[str, list[float]] = {"waiting": [], "after": [], "tail": []}
        lasts = []
        for producer, (start, returned) in times.items():
            last = self.last_done.get(self.keys.producer(producer).done_channel.encode())
            if last is not None:
                lasts.append(last)
            if last is not None and last > start:
                out["waiting"].append((returned - last) * 1000)
            else:
                out["after"].append((returned - start) * 1000)
        if lasts and times:
            out["tail"].append((max(r for _, r in times.values()) - max(lasts)) * 1000)
        return out


def command_table(reports: list[Report], top: int = 14) -> str:
    """Server commands per job, the most frequent first."""
    names: set[str] = set()
    for r in reports:
        names |= set(r.calls)
    ranked = sorted(names, key=lambda k: -max(r.calls.get(k, 0) / max(1, r.jobs) for r in reports))
    rows = [[k] + [f"{r.calls.get(k, 0) / max(1, r.jobs):.3f}" for r in reports] for k in ranked[:top]]
    rest = ranked[top:]
    if rest:
        rows.append([f"({len(rest)} others)"]
                    + [f"{sum(r.calls.get(k, 0) for k in rest) / max(1, r.jobs):.3f}" for r in reports])  # fmt: skip
    return table(["command (calls/job)"] + [r.label for r in reports], rows)


# --------------------------------------------------------------------------- workloads
def model_rate(embedder: Any, batch: int = 64, n: int = 512) -> tuple[float, float]:
    """Texts/s of the raw model at ``batch`` in this process, and its CPU s a text."""
    texts = [str(t["text"]) for t in items(n, 90_000)]
    embedder.encode(texts[:batch])
    c0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, len(texts), batch):
        embedder.encode(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - t0), (time.process_time() - c0) / len(texts)


def workload_a(srv: Any, backend: str, jobs: int) -> tuple[list[str], Report, list[str]]:
    """One backend of A: (the table row, the per-job report, the CPU estimate row)."""
    from memworker.embedding.model import Embedder

    embedder = Embedder() if backend == "torch" else Embedder(backend=backend)
    embedder.encode(["warm up"])
    # the model alone, before and after the pipeline (as many texts as it embeds): the
    # ceiling is their mean; one short measurement moved by 20% with the machine's load
    before, cpu_before = model_rate(embedder, 64, RAW_TEXTS)
    settings = Settings.from_url(srv.url, namespace=f"single-a-{backend}")
    proc = start_workers(settings, 1, 8, env=BACKEND_ENV[backend])
    try:
        probe = Probe(settings)
        probe.begin(proc.pid)
        t0, own0 = time.perf_counter(), time.process_time()
        done = produce(settings, jobs, "a")
        probe.listen()
        times: dict[str, tuple[float, float]] = {}
        drain_all(settings, done, times)
        rate = jobs / (time.perf_counter() - t0)
        own = time.process_time() - own0
        report = probe.end(f"A {backend}", rate, times)
    finally:
        stop(proc)
    after, cpu_after = model_rate(embedder, 64, RAW_TEXTS)
    raw, raw_cpu = (before + after) / 2, (cpu_before + cpu_after) / 2
    report.extra = {"producers_cpu_s": own, "raw": raw, "raw_cpu_text": raw_cpu}
    fill = max(1, round(report.fill)) if report.fill == report.fill else 64
    _, cpu_text = model_rate(embedder, fill, max(256, fill * 8))
    n = max(1, report.jobs)
    worker_ms = report.worker_cpu_s / n * 1000
    estimate = [f"A {backend}", f"{worker_ms:.2f}", f"{fill}", f"{cpu_text * 1000:.2f}",
                f"{worker_ms - cpu_text * 1000:.2f}"]  # fmt: skip
    row = [backend, f"{rate:,.0f}", f"{raw:,.0f} ({before:,.0f} before, {after:,.0f} after)", f"{rate / raw:.2f}",
           verdict(rate, before, after)]  # fmt: skip
    return row, report, estimate


def verdict(rate: float, before: float, after: float) -> str:
    """A's check of the pipeline's ``rate`` against the target: met (or missed) against
    both measurements of the model alone, else against their mean; undecided when the two
    differ by more than ``MAX_DRIFT`` and the verdict depends on which one is taken (the
    machine's speed moved inside the run)."""
    if rate >= TARGET_RATIO * max(before, after):
        return "met"
    if rate < TARGET_RATIO * min(before, after):
        return "missed"
    drift = abs(before - after) / max(before, after)
    if drift > MAX_DRIFT:
        return f"undecided: met against one, missed against the other ({drift:.0%} apart)"
    return "met" if rate >= TARGET_RATIO * (before + after) / 2 else "missed"


def budget_row(report: Report) -> list[str]:
    """Where A's CPU went, ms a job, and the throughput the machine's cores allow at
    that CPU a job (every core busy all the time), as a fraction of the raw model."""
    n, x = max(1, report.jobs), report.extra
    worker, server_, producers = (report.worker_cpu_s / n * 1000, report.cpu_s / n * 1000,
                                  x["producers_cpu_s"] / n * 1000)  # fmt: skip
    total = worker + server_ + producers
    cores = os.cpu_count() or 1
    bound = cores / total * 1000
    budget = cores / (TARGET_RATIO * x["raw"]) * 1000  # total CPU a job at which the target fits
    return [report.label, f"{worker:.2f}", f"{server_:.2f}", f"{producers:.2f}", f"{total:.2f}",
            f"{x['raw_cpu_text'] * 1000:.2f}", f"{bound:,.0f} = {bound / x['raw']:.2f}x",
            f"{budget:.2f}", f"{report.rate / x['raw']:.2f}x"]  # fmt: skip


BUDGET_HEADERS = [
    "run", "worker ms/job (model included)", "Valkey ms/job", "producers + drains ms/job (this process)",
    "total ms/job", "raw model ms/text, batch 64", "cores / total: jobs/s = x raw",
    "total ms/job that 0.85x needs", "measured",
]  # fmt: skip


def workload_b(srv: Any, jobs: int, tag: str, env: dict[str, str], label: str) -> tuple[list[list[str]], list[Report]]:
    """B's two runs with the worker environment ``env``: (table rows, reports)."""
    rows, reports = [], []
    settings = Settings.from_url(srv.url, namespace=f"single-{tag}1")
    done = produce(settings, jobs, f"{tag}1")
    probe = Probe(settings)
    probe.listen()
    suffix = f", {label.strip(': ')}" if label else ""
    t0 = time.perf_counter()
    proc = start_workers(settings, 1, 8, fake=True, env=env)
    try:
        started = time.perf_counter() - t0
        startup_cpu = cpu_seconds(proc.pid)
        probe.begin(proc.pid)
        early = probe.committed0
        times: dict[str, tuple[float, float]] = {}
        drain_all(settings, done, times)
        rate = jobs / (time.perf_counter() - t0)
        rows.append([f"{label}backlog enqueued first, worker started after (start-up included)", f"{rate:,.0f}"])
        report = probe.end(f"B backlog{suffix}", rate, times)
        report.extra = {"startup_s": started, "startup_cpu_s": startup_cpu, "early": early}
        reports.append(report)
    finally:
        stop(proc)
    settings = Settings.from_url(srv.url, namespace=f"single-{tag}2")
    proc = start_workers(settings, 1, 8, fake=True, env=env)
    try:
        probe = Probe(settings)
        probe.begin(proc.pid)
        t0 = time.perf_counter()
        done = produce(settings, jobs, f"{tag}2")
        probe.listen()
        times = {}
        drain_all(settings, done, times)
        rate = jobs / (time.perf_counter() - t0)
        rows.append([f"{label}{PRODUCERS} producers enqueueing while the worker runs", f"{rate:,.0f}"])
        reports.append(probe.end(f"B live{suffix}", rate, times))
    finally:
        stop(proc)
    return rows, reports


def idle_pickup(srv: Any, n: int, pause_s: float, env: dict[str, str], tag: str) -> dict[str, list[float]]:
    """Milliseconds, one job at a time to an idle worker (instant embedder): enqueue
    call start -> drain returned ("total"); of it, enqueue call start -> the job's done
    notification seen by a subscriber thread here ("to_done") and from there to the
    drain's return ("release"), for the jobs whose notification was seen."""
    settings = Settings.from_url(srv.url, namespace=f"single-c-{tag}")
    proc = start_workers(settings, 1, 8, fake=True, env=env)
    producer = "idle"
    client = redis_client(settings)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(QueueKeys(settings.namespace).producer(producer).done_channel)
    seen: dict[str, float] = {}
    halt = threading.Event()

    def listen() -> None:
        while not halt.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                seen[message["data"].decode()] = time.perf_counter()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    out: dict[str, list[float]] = {"total": [], "to_done": [], "release": []}
    try:
        with MemoryQueue(settings, producer_id=producer) as q:
            job, _ = q.enqueue_encode_job(items(1, 10**6))  # connect, subscribe: not timed
            q.drain(timeout=60, job_ids=[job])
            for i in range(n):
                time.sleep(pause_s)  # the worker goes back to its blocking wait
                t0 = time.perf_counter()
                job, _ = q.enqueue_encode_job(items(1, i))
                report = q.drain(timeout=60, job_ids=[job])
                t1 = time.perf_counter()
                if report.committed != 1:
                    raise SystemExit(f"idle pickup: job {job} not committed ({report})")
                out["total"].append((t1 - t0) * 1000)
                deadline = time.monotonic() + 1
                while job not in seen and time.monotonic() < deadline:
                    time.sleep(0.001)
                if job in seen:
                    out["to_done"].append((seen[job] - t0) * 1000)
                    out["release"].append((t1 - seen[job]) * 1000)
    finally:
        halt.set()
        listener.join()
        pubsub.close()
        client.close()
        stop(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000, help="single-text jobs of workload A")
    ap.add_argument("--backlog", type=int, default=10_000, help="single-text jobs of workload B")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx-int8"], choices=sorted(BACKEND_ENV),
                    help="workload A's backends (default: torch onnx-int8)")  # fmt: skip
    ap.add_argument("--pickups", type=int, default=200, help="jobs of the idle pickup (C)")
    ap.add_argument("--pause-ms", type=float, default=50.0, help="idle time before each pickup job")
    ap.add_argument("--old", action="store_true",
                    help="also run B and C with the old per-message path (MEMWORKER_INFLIGHT_RECORDS=0)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200 and 800 jobs, 30 pickups")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.backlog, args.pickups = 200, 800, 30
    variants = [("", {})] + ([("old path: ", OLD_PATH)] if args.old else [])
    with server(True) as srv:
        banner(f"A. {args.jobs} single-text jobs, {PRODUCERS} producers, 1 worker process "
               "(default settings), RediSearch; per backend")  # fmt: skip
        a_rows, reports, estimates = [], [], []
        for backend in args.backends:
            row, report, estimate = workload_a(srv, backend, args.jobs)
            a_rows.append(row)
            reports.append(report)
            estimates.append(estimate)
        print(table(
            ["backend", "pipeline jobs (texts)/s", "the model alone, batch 64, this process, texts/s: mean of before and after",
             "pipeline / model", f"target >= {TARGET_RATIO}"],
            a_rows,
        ))  # fmt: skip

        banner(f"B. instant embedder: {args.backlog} single-text jobs, 1 worker process")
        b_rows = []
        for label, env in variants:
            rows, runs = workload_b(srv, args.backlog, "b" if not env else "bo", env, label)
            b_rows += rows
            reports += runs
        print(table(["workload (target >= 1,500 jobs/s)", "jobs committed/s"], b_rows))
        for r in reports:
            if "startup_s" in r.extra:
                print(f"{r.label}: worker start -> healthy {r.extra['startup_s']:.2f} s, "
                      f"{r.extra['startup_cpu_s']:.2f} s of worker CPU; {r.extra['early']} jobs committed "
                      "before it was seen healthy (the per-job window starts there)")  # fmt: skip

        banner("Per-job report (each run's measured window; see the module doc)")
        print(table(REPORT_HEADERS, [r.row() for r in reports]))
        print("A's worker CPU includes the model; a rough split (the raw model's CPU a text at the "
              "run's batch fill, measured in this process, which runs the model its own way):")  # fmt: skip
        print(table(["run", "worker CPU ms/job", "batch", "raw model CPU ms/text at that batch",
                     "difference: outside the model (rough)"], estimates))  # fmt: skip
        a_reports = [r for r in reports if "raw" in r.extra]
        print(f"A's CPU budget: every CPU ms a job cost on this machine ({os.cpu_count()} cores), "
              "and the rate those cores allow at that cost:")
        print(table(BUDGET_HEADERS, [budget_row(r) for r in a_reports]))
        print(command_table(reports))
        print("Drain release (the 8 drains run one after the other; times from a subscriber thread here):")
        print(table(DRAIN_HEADERS, [r.drain_row() for r in reports]))

        banner(f"C. idle pickup: {args.pickups} single-text jobs one at a time to an idle worker "
               f"(instant embedder), {args.pause_ms:.0f} ms idle before each")  # fmt: skip
        rows = []
        for label, env in variants:
            lat = idle_pickup(srv, args.pickups, args.pause_ms / 1000, env, "old" if env else "new")
            rows.append([
                label.strip(": ") or "batched path (default)",
                f"{median(lat['total']):.1f}", f"{pct(lat['total'], 99):.1f}",
                f"{median(lat['to_done']):.1f}", f"{median(lat['release']):.1f}",
            ])  # fmt: skip
        print(table(["enqueue -> drain returned (target ~10 ms)", "p50 ms", "p99 ms",
                     "to done notification p50 ms", "then to drain return p50 ms"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
