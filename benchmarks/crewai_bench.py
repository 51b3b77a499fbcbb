"""CrewAI memory writes: QueuedMemory (one memworker worker process) vs CrewAI's
default Memory (LanceDB, one save thread in the agent's process), same run, same
local embedder (bundled all-MiniLM-L6-v2), explicit fields, consolidation off.

Prints a table; not a timed test. Run:

    .venv/bin/python benchmarks/crewai_bench.py [--seconds 20] [--backends torch onnx-int8]

Rows:
- remember() from 32 agent threads: records/s (each call returns its record).
- remember_many(50 per call) from 4 agent threads, until drain_writes() returns:
  records/s, and the agent-side blocking time per call (p50/p99), once with the
  agents calling back to back and once paced (``--think-ms``, default 50 ms between an agent's calls,
  still far more than the worker embeds, so it works through a backlog throughout),
  and paced again before the worker starts: the agents' own cost, as when the
  workers run on other hosts. Both memories return from remember_many before the
  write (each hands the call to its save thread), so for QueuedMemory the paced run
  also reports when each call's job was in Valkey (the hand-off, from the call).
- recall(depth="shallow") latency, p50/p99, on what was written.

The worker runs with ``--nice idle`` (``--worker-nice``; Linux SCHED_IDLE: background
embedding yields the 2 cores to the agents at once, as recommended when workers share
a host with them).

The LLM is memworker's deterministic StandInLLM (never called with explicit fields
and consolidation off).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")  # no OTEL span per save event
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FIELDS = {"scope": "/bench", "categories": ["bench"], "importance": 0.5}


def onnx_int8_embedder():  # MEMWORKER_EMBEDDER=crewai_bench:onnx_int8_embedder
    from memworker.embedding.model import Embedder

    return Embedder(backend="onnx-int8")


def _pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _text(i: int) -> str:
    return f"agent note {i}: customer {i % 97} asked about order {i * 7 % 1013} and shipping option {i % 5}"


def bench_remember(memory, seconds: float, threads: int = 32) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def agent(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            memory.remember(_text(i), **FIELDS)
            counts[k] += 1
            i += threads

    start = time.monotonic()
    ts = [threading.Thread(target=agent, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def bench_remember_many(
    memory, calls: int, threads: int = 4, per_call: int = 50, think_ms: float = 0.0, drain: bool = True,
    base: int = 0, starts: dict[str, float] | None = None,
):
    """``calls`` remember_many calls from ``threads`` agents, then drain_writes().
    ``think_ms``: each agent pauses about this long after a call (0: back to back);
    paced agents start staggered and draw each pause from 0.5-1.5x ``think_ms``, so
    they do not call in lockstep."""
    blocking: list[float] = []
    lock = threading.Lock()
    base = base or (100_000 if not think_ms else 500_000)

    def agent(k: int) -> None:
        # Paced agents are not in lockstep: staggered starts, pauses drawn around think_ms.
        rng = random.Random(k)
        if think_ms:
            time.sleep(think_ms * k / threads / 1000)
        for c in range(k, calls, threads):
            texts = [_text(base + c * per_call + j) for j in range(per_call)]
            t0 = time.perf_counter()
            if starts is not None:
                starts[texts[0]] = t0
            memory.remember_many(texts, **FIELDS)
            dt = time.perf_counter() - t0
            with lock:
                blocking.append(dt * 1000)
            if think_ms:
                time.sleep(think_ms * rng.uniform(0.5, 1.5) / 1000)

    start = time.monotonic()
    ts = [threading.Thread(target=agent, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if drain:
        memory.drain_writes()
    return calls * per_call / (time.monotonic() - start), blocking


def track_handoff(memory) -> tuple[dict[str, float], list[float]]:
    """``(starts, latencies)``: give ``starts`` to bench_remember_many; each call's
    time from remember_many to its job's enqueue returning lands in ``latencies`` (ms)."""
    starts: dict[str, float] = {}
    out: list[float] = []
    real = memory.queue.enqueue_encode_jobs  # what remember_many's save thread calls

    def timed(chunks, *callbacks):
        result = real(chunks, *callbacks)
        t0 = starts.pop(chunks[0][0]["text"], None)
        if t0 is not None:
            out.append((time.perf_counter() - t0) * 1000)
        return result

    memory.queue.enqueue_encode_jobs = timed
    return starts, out


def bench_recall(memory, n: int = 40):
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        memory.recall(f"what did customer {i} ask about shipping", depth="shallow", limit=5)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def start_worker(
    url: str, namespace: str, backend: str, threads: int, extra_env: list[str], cpus: set[int] | None = None,
    nice: str = "idle",
) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if backend == "onnx-int8":
        env["MEMWORKER_EMBEDDER"] = "crewai_bench:onnx_int8_embedder"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", namespace,
         "worker", "--processes", "1", "--threads", str(threads), "--nice", nice],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if cpus:  # set from here, not in a preexec_fn (unsafe with threads); the worker reads
        os.sched_setaffinity(proc.pid, cpus)  # its cores when it loads the model, later
    from memworker.queue.admin import check_health
    from memworker.settings import Settings

    settings = Settings.from_url(url, namespace=namespace)
    deadline = time.monotonic() + 180
    while not check_health(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start (exit {proc.poll()})")
        time.sleep(0.2)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="remember() phase length")
    parser.add_argument("--calls", type=int, default=24, help="remember_many calls (x50 records)")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx-int8"])
    parser.add_argument("--worker-threads", type=int, default=32, help="worker threads (jobs in flight)")
    parser.add_argument("--worker-cpus", default="",
                        help="pin the worker to these CPUs, e.g. 1 (it then runs one inference thread)")  # fmt: skip
    parser.add_argument("--think-ms", type=float, default=50.0,
                        help="pause after each remember_many call in the paced run (default 50 ms)")  # fmt: skip
    parser.add_argument("--worker-nice", default="idle",
                        help="the worker's --nice: 0-19 or idle (SCHED_IDLE, default)")  # fmt: skip
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment of the worker process, e.g. OMP_NUM_THREADS=1")  # fmt: skip
    args = parser.parse_args()

    from _servers import server
    from crewai.memory.unified_memory import Memory

    from memworker.crewai import LocalEmbedder, QueuedMemory
    from memworker.crewai.testing import StandInLLM

    embedder = LocalEmbedder()
    embedder(["warm up"])
    rows = []
    alone: list[tuple[str, list[float]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="crewai-bench-"))
    try:
        # ---- CrewAI default: LanceDB, one save thread
        base = Memory(storage=str(tmp / "lance"), embedder=embedder, llm=StandInLLM(),
                      consolidation_threshold=1.0)  # fmt: skip
        base.remember("warm up", **FIELDS)
        b_single = bench_remember(base, args.seconds)
        b_many, b_block = bench_remember_many(base, max(4, args.calls // 3))
        _, b_paced = bench_remember_many(base, 8, think_ms=args.think_ms)
        b_recall = bench_recall(base)
        base.close()
        rows.append(("CrewAI Memory (LanceDB)", "torch (agent proc)", b_single, b_many, b_block, b_paced,
                     b_recall))  # fmt: skip

        with server(module=True) as srv:
            for backend in args.backends:
                ns = f"bench{uuid.uuid4().hex[:8]}"
                cpus = {int(c) for c in args.worker_cpus.split(",") if c}
                memory = QueuedMemory(storage=srv.url, namespace=ns, embedder=embedder,
                                      llm=StandInLLM(), consolidation_threshold=1.0)  # fmt: skip
                # The agents' own cost, as when workers run on other hosts: paced calls with
                # no worker running here (the jobs wait in the queue until it starts).
                bench_remember_many(memory, 4, drain=False, base=800_000)  # warm up: connections
                _, q_alone = bench_remember_many(memory, max(64, args.calls), think_ms=args.think_ms,
                                                 drain=False, base=900_000)  # fmt: skip
                worker = start_worker(srv.url, ns, backend, args.worker_threads, args.worker_env, cpus,
                                      args.worker_nice)  # fmt: skip
                try:
                    memory.drain_writes()
                    memory.remember("warm up", **FIELDS)
                    q_single = bench_remember(memory, args.seconds)
                    q_many, q_block = bench_remember_many(memory, args.calls)
                    starts, handoff = track_handoff(memory)
                    _, q_paced = bench_remember_many(memory, max(64, args.calls), think_ms=args.think_ms,
                                                     starts=starts)  # fmt: skip
                    q_recall = bench_recall(memory)
                    memory.reset_all()
                    memory.close()
                finally:
                    worker.terminate()
                    worker.wait(30)
                rows.append(("QueuedMemory, 1 worker proc", f"{backend} (worker)", q_single, q_many,
                             q_block, q_paced, q_recall))  # fmt: skip
                alone.append((backend, q_alone, handoff))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    b = rows[0]
    print(f"\ncores: {os.cpu_count()}; remember(): 32 agent threads, {args.seconds:.0f} s; "
          "remember_many: 50 per call, 4 agent threads, until drain_writes(), back to back "
          f"(block) and with {args.think_ms:g} ms between an agent's calls (paced; the worker "
          f"still has a backlog); worker threads: {args.worker_threads}; explicit fields, "
          "consolidation off\n")  # fmt: skip
    head = (f"{'memory':<28} {'embedder':<20} {'remember rec/s':>15} {'x':>6} {'many rec/s':>11} {'x':>6} "
            f"{'block p50/p99 ms':>17} {'paced p50/p99 ms':>17} {'recall p50/p99 ms':>18}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, emb, single, many, block, paced, recall in rows:
        print(
            f"{name:<28} {emb:<20} {single:>15.1f} {single / b[2]:>6.1f} {many:>11.1f} {many / b[3]:>6.1f} "
            f"{_pct(block, .5):>8.2f}/{_pct(block, .99):<8.2f} {_pct(paced, .5):>8.2f}/{_pct(paced, .99):<8.2f} "
            f"{statistics.median(recall):>9.1f}/{_pct(recall, .99):<8.1f}"
        )
    for backend, blocking, handoff in alone:
        print(
            f"QueuedMemory, no worker on this host ({backend} run): remember_many blocking, paced: "
            f"p50 {_pct(blocking, .5):.2f} ms, p99 {_pct(blocking, .99):.2f} ms"
        )
        print(
            f"QueuedMemory ({backend} run, paced): each remember_many's job in Valkey after "
            f"p50 {_pct(handoff, .5):.2f} ms, p99 {_pct(handoff, .99):.2f} ms (the save thread's hand-off)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
