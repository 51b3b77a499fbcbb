"""``memworker demo``: a realistic memory workload on the local (embedded) Valkey.

Several simulated agents produce memories; they are embedded in batches with the
bundled model through one :class:`~memworker.embedding.EmbeddingBatcher`, committed
in atomic batches into a :class:`~memworker.store.ValkeyStore`, then recalled with
scope and category filters. Prints a table of what it measured.
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memworker.settings import Settings

__all__ = ["DemoResult", "run_demo", "synthetic_memories"]

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
    """What the demo measured."""

    records: int
    embed_seconds: float
    save_seconds: float
    search_ms: list[float] = field(default_factory=list)
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
        return bar.update
    done = [0]

    def update(k: int) -> None:
        done[0] += k
        print(f"\r{label}: {done[0]}/{total}", end="", file=sys.stderr, flush=True)

    return update


def run_demo(
    settings: Settings | None = None,
    *,
    records: int = 2000,
    agents: int = 8,
    batch: int = 50,
    namespace: str = "memworker-demo",
) -> DemoResult:
    """Run the workload and return what it measured (the namespace is reset first)."""
    from memworker.embedding import Embedder, EmbeddingBatcher
    from memworker.store import ValkeyStore
    from memworker.types import record_types

    settings = Settings.resolve(settings, namespace=namespace)
    store = ValkeyStore(settings)
    store.reset()
    embedder = Embedder.from_env()
    batcher = EmbeddingBatcher(embedder, batch_size=64, max_wait_ms=5)
    record_cls = record_types()[0]
    items = synthetic_memories(records, agents)
    update = _progress(records, "embed + commit")

    per_agent: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        per_agent.setdefault(str(item["source"]), []).append(item)
    embed_time = [0.0]
    save_time = [0.0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def agent_loop(mine: list[dict[str, Any]]) -> None:
        try:
            for start in range(0, len(mine), batch):
                chunk = mine[start : start + batch]
                t0 = time.perf_counter()
                vectors = batcher.submit([c["content"] for c in chunk]).result()
                t1 = time.perf_counter()
                store.save([record_cls(**c, embedding=v.tolist()) for c, v in zip(chunk, vectors)])
                t2 = time.perf_counter()
                with lock:
                    embed_time[0] += t1 - t0
                    save_time[0] += t2 - t1
                update(len(chunk))
        except BaseException as exc:  # noqa: BLE001 - reported after join
            errors.append(exc)

    embedder.encode(["warm up"])  # load the model before the clock starts
    started = time.perf_counter()
    threads = [threading.Thread(target=agent_loop, args=(m,)) for m in per_agent.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    batcher.close()
    print(file=sys.stderr)
    if errors:
        raise errors[0]

    result = DemoResult(
        records=store.count(),
        embed_seconds=wall * embed_time[0] / max(embed_time[0] + save_time[0], 1e-9),
        save_seconds=wall * save_time[0] / max(embed_time[0] + save_time[0], 1e-9),
        module=store.search_module,
        server=settings.redacted_url(),
    )
    queries = [
        ("who had trouble signing in?", "/crew/agent-1", None),
        ("refund requests", None, ["billing"]),
        ("what features do customers want?", "/crew", ["product"]),
        ("pricing of competitors", None, None),
    ]
    for text, scope, cats in queries * 10:
        vector = embedder.encode([text])[0].tolist()
        t0 = time.perf_counter()
        hits = store.search(vector, scope_prefix=scope, categories=cats, limit=3)
        result.search_ms.append((time.perf_counter() - t0) * 1000)
        if len(result.examples) < len(queries):
            result.examples.append((text, [(r.content, s) for r, s in hits]))
    store.close()
    return result


def print_report(result: DemoResult, out: Any = None) -> None:
    """Print the demo's table."""
    out = out or sys.stdout
    total = result.embed_seconds + result.save_seconds
    rows = [
        ("server", f"{result.server} ({'search module' if result.module else 'exact search, no module'})"),
        ("records committed", f"{result.records}"),
        ("end-to-end throughput", f"{result.records / max(total, 1e-9):,.0f} records/s"),
        ("  share of time embedding", f"{100 * result.embed_seconds / max(total, 1e-9):.0f} %"),
        ("  share of time committing", f"{100 * result.save_seconds / max(total, 1e-9):.0f} %"),
        ("search p50 / p99", _percentiles(result.search_ms)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nmemworker demo", file=out)
    print("-" * (width + 40), file=out)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}", file=out)
    print("-" * (width + 40), file=out)
    for query, hits in result.examples:
        print(f"\nrecall: {query!r}", file=out)
        for content, score in hits:
            print(f"  {score:.3f}  {content}", file=out)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"{statistics.median(ordered):.2f} ms / {p99:.2f} ms"
