"""``memworker demo``: the write-behind pipeline end to end on the local Valkey.

It starts worker processes (``memworker worker``) on the embedded Valkey (or the
configured one), lets several simulated agents enqueue a few thousand memories
through :class:`~memworker.queue.MemoryQueue` while a progress bar follows the
commits, drains each agent's writes, recalls from every agent's scope, and prints
a table: agent-side enqueue latency, throughput, time-to-searchable and drain wait.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memworker.embedded import ensure_embedded
from memworker.settings import Settings

__all__ = ["DemoResult", "run_demo", "print_report", "synthetic_memories"]

_TOPICS = {
    "billing": ["invoice", "refund", "payment method", "subscription tier", "VAT number"],
    "support": ["login issue", "password reset", "two-factor device", "API rate limit", "timeout"],
    "product": ["dark mode", "export to CSV", "Slack integration", "mobile app", "search filters"],
    "research": ["competitor pricing", "market size", "user interviews", "churn drivers", "NPS trend"],
}
_CUSTOMERS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka"]
_VERBS = ["asked about", "complained about", "praised", "requested", "reported a problem with", "mentioned"]


def synthetic_memories(n: int, agents: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` memory items from ``agents`` agents: content, scope, categories, metadata."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        agent = f"agent-{i % agents}"
        topic = rng.choice(list(_TOPICS))
        thing = rng.choice(_TOPICS[topic])
        customer = rng.choice(_CUSTOMERS)
        content = (
            f"{customer} {rng.choice(_VERBS)} {thing} during session {rng.randint(1, 500)}; "
            f"follow up within {rng.randint(1, 14)} days."
        )
        items.append(
            {
                "content": content,
                "scope": f"/crew/{agent}/{customer.lower()}",
                "categories": [topic],
                "metadata": {"customer": customer, "agent": agent, "turn": i},
                "importance": round(rng.uniform(0.2, 0.9), 2),
                "source": agent,
            }
        )
    return items


@dataclass
class DemoResult:
    """What the demo measured (times in seconds unless named ``_ms``)."""

    records: int
    enqueued: int
    agents: int
    processes: int
    threads: int
    wall_seconds: float
    enqueue_ms: list[float] = field(default_factory=list)
    searchable_s: list[float] = field(default_factory=list)
    drain_s: list[float] = field(default_factory=list)
    recall_ms: list[float] = field(default_factory=list)
    own_writes_seen: int = 0
    failed_jobs: int = 0
    module: bool = False
    server: str = ""
    examples: list[tuple[str, list[tuple[str, float]]]] = field(default_factory=list)


def _progress(total: int, label: str) -> Callable[[int], None]:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc=label, unit="rec", file=sys.stderr, leave=True)
        advance: Callable[[int], None] = bar.update
        return advance
    done = [0]

    def update(k: int) -> None:
        done[0] += k
        print(f"\r{label}: {done[0]}/{total}", end="", file=sys.stderr, flush=True)

    return update


def _start_workers(settings: Settings, processes: int, threads: int) -> subprocess.Popen[bytes]:
    """``memworker worker`` in a child process, configured through its environment
    (a URL with a password never appears on a command line)."""
    env = dict(os.environ)
    env["MEMWORKER_NAMESPACE"] = settings.namespace
    env["MEMWORKER_HOME"] = str(settings.home)
    if not settings.embedded:
        env["VALKEY_URL"] = settings.url(redact=False)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "worker", "--processes", str(processes),
         "--threads", str(threads), "--nice", "idle"],  # fmt: skip
        env=env,
    )


def _stop_workers(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(
    settings: Settings | None = None,
    *,
    records: int = 2000,
    agents: int = 8,
    batch: int = 25,
    processes: int = 1,
    threads: int = 8,
    think_ms: float = 0.0,
    namespace: str = "memworker-demo",
    timeout: float = 600.0,
) -> DemoResult:
    """Run the workload through real worker processes; returns what it measured.

    Args:
        settings: Where Valkey is (default: environment, else the embedded server).
        records: Memories to write in all.
        agents: Simulated agents, each a thread with its own producer id.
        batch: Memories per ``enqueue_encode`` call (one job).
        processes: Worker processes.
        threads: Threads per worker process.
        think_ms: Pause between an agent's calls (its "LLM time"); 0 = saturate.
        namespace: Key namespace (its records are deleted first).
        timeout: Longest drain wait per agent, in seconds.
    """
    from memworker.embedding.model import Embedder
    from memworker.queue.jobs import QueueKeys
    from memworker.io.redispy import redis_client
    from memworker.queue.admin import check_health
    from memworker.queue.producer import MemoryQueue
    from memworker.store.store import ValkeyStore

    settings = Settings.resolve(settings, namespace=namespace)
    ensure_embedded(settings)  # start (or find) the embedded server before the workers do
    store = ValkeyStore(settings)
    store.reset()
    keys = QueueKeys(settings.namespace)
    items = synthetic_memories(records, agents)
    per_agent: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        per_agent.setdefault(str(item["source"]), []).append(item)
    producers = {agent: f"demo-{agent}" for agent in per_agent}

    print(f"memworker demo: {records} memories from {agents} agents, "
          f"{processes} worker process(es) x {threads} threads on {settings.redacted_url()}",
          file=sys.stderr)  # fmt: skip
    workers = _start_workers(settings, processes, threads)
    listener_client = redis_client(settings)
    pubsub = listener_client.pubsub(ignore_subscribe_messages=True)
    try:
        deadline = time.monotonic() + 120
        while not check_health(settings):
            if workers.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"memworker demo: the workers did not start (exit {workers.poll()})")
            time.sleep(0.1)
        embedder = Embedder.from_env()
        from memworker.records import record_types

        record_types()  # crewai's types take seconds to import: not on the clock
        # Warm-up: the workers load the model on their first job; keep it off the clock.
        with MemoryQueue(settings, producer_id="demo-warmup") as warm:
            warm.enqueue_encode([{"text": "warm up", "scope": "/warmup", "categories": ["x"]}])
            warm.drain(timeout=timeout)
        embedder.encode(["warm up"])

        enqueued_at: dict[str, tuple[float, int]] = {}
        committed_at: dict[str, float] = {}
        lock = threading.Lock()
        update = _progress(records, "enqueue -> embed -> commit")
        pubsub.subscribe(*[keys.producer(p).done_channel for p in producers.values()])
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.1)
                if message is None:
                    continue
                job = message["data"].decode()
                now = time.monotonic()
                with lock:
                    committed_at[job] = now
                    size = enqueued_at.get(job, (now, 0))[1]
                if size:
                    update(size)

        listener = threading.Thread(target=listen, name="demo-listener", daemon=True)
        listener.start()
        result = DemoResult(
            records=0, enqueued=records, agents=agents, processes=processes, threads=threads,
            wall_seconds=0.0, server=settings.redacted_url(),
        )  # fmt: skip
        errors: list[BaseException] = []

        def agent_loop(agent: str, mine: list[dict[str, Any]]) -> None:
            try:
                with MemoryQueue(settings, producer_id=producers[agent]) as queue:
                    for start in range(0, len(mine), batch):
                        chunk = [
                            {k: v for k, v in c.items() if k != "content"} | {"text": c["content"]}
                            for c in mine[start : start + batch]
                        ]
                        t0 = time.monotonic()
                        job_id, _ = queue.enqueue_encode_job(chunk)
                        t1 = time.monotonic()
                        with lock:
                            enqueued_at[job_id] = (t0, len(chunk))
                            result.enqueue_ms.append((t1 - t0) * 1000)
                            late = committed_at.get(job_id)
                        if late is not None:  # committed before we recorded it
                            update(len(chunk))
                        if think_ms:
                            time.sleep(think_ms / 1000)
                    t2 = time.monotonic()
                    report = queue.drain(timeout=timeout)
                    with lock:
                        result.drain_s.append(time.monotonic() - t2)
                        result.failed_jobs += len(report.failed)
                    vector = embedder.encode([f"what did customers of {agent} ask about?"])[0].tolist()
                    t3 = time.monotonic()
                    hits = store.search(vector, scope_prefix=f"/crew/{agent}", limit=5)
                    with lock:
                        result.recall_ms.append((time.monotonic() - t3) * 1000)
                        result.own_writes_seen += store.count(f"/crew/{agent}")
                        if hits and len(result.examples) < 2:
                            result.examples.append(
                                (f"(scope /crew/{agent}) what did customers ask about?",
                                 [(r.content, sc) for r, sc in hits[:3]])
                            )  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - re-raised after join
                errors.append(exc)

        started = time.monotonic()
        threads_ = [threading.Thread(target=agent_loop, args=(a, m)) for a, m in per_agent.items()]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        stop.set()
        listener.join(5)
        print(file=sys.stderr)
        if errors:
            raise errors[0]
        last_commit = max(committed_at.values(), default=started)
        result.wall_seconds = max(last_commit - started, 1e-9)
        result.searchable_s = [
            committed_at[j] - t0 for j, (t0, _) in enqueued_at.items() if j in committed_at
        ]
        result.records = store.count("/crew")
        result.module = store.search_module
        for text, cats in (("refund requests", ["billing"]), ("pricing of competitors", None)):
            vector = embedder.encode([text])[0].tolist()
            hits = store.search(vector, categories=cats, limit=3)
            result.examples.append((text, [(r.content, sc) for r, sc in hits]))
        return result
    finally:
        pubsub.close()
        listener_client.close()
        _stop_workers(workers)
        store.close()


def print_report(result: DemoResult, out: Any = None) -> None:
    """Print the demo's table."""
    out = out or sys.stdout
    rows = [
        ("server", f"{result.server} ({'search module' if result.module else 'exact search, no module'})"),
        ("workers", f"{result.processes} process(es) x {result.threads} threads"),
        ("agents", f"{result.agents}"),
        ("records enqueued / committed", f"{result.enqueued} / {result.records}"),
        ("failed jobs", f"{result.failed_jobs}"),
        ("agent-side enqueue p50 / p99", _percentiles(result.enqueue_ms, "ms")),
        ("throughput (enqueue -> commit)", f"{result.records / result.wall_seconds:,.0f} records/s"),
        ("time-to-searchable p50 / p99", _percentiles(result.searchable_s, "s")),
        ("drain wait p50 / max", _percentiles(result.drain_s, "s", high=1.0)),
        ("recall (shallow search) p50 / p99", _percentiles(result.recall_ms, "ms")),
        ("own writes seen after drain", f"{result.own_writes_seen} of {result.enqueued}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nmemworker demo", file=out)
    print("-" * (width + 44), file=out)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}", file=out)
    print("-" * (width + 44), file=out)
    print(
        "time-to-searchable counts from enqueue to commit; with agents enqueueing as fast as\n"
        "they can it includes the queue backlog (use --think-ms to pace them).",
        file=out,
    )
    for query, hits in result.examples:
        print(f"\nrecall: {query!r}", file=out)
        for content, score in hits:
            print(f"  {score:.3f}  {content}", file=out)


def _percentiles(values: list[float], unit: str, high: float = 0.99) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    top = ordered[min(len(ordered) - 1, int(round(high * (len(ordered) - 1))))]
    return f"{statistics.median(ordered):.2f} {unit} / {top:.2f} {unit}"
