"""Embedding throughput: the model at several batch sizes, and the batcher vs a lock.

Prints two tables:

1. texts/s of :class:`~memworker.embedding.Embedder` called directly with batches of
   1, 32 and 64 texts, per backend (torch; onnx-int8 when the onnx extra is installed).
2. ``--threads`` threads each embedding single texts, once through one
   :class:`~memworker.embedding.EmbeddingBatcher` and once by calling the model
   directly under a lock (the baseline), in the same run; with their ratio.

Run: ``.venv/bin/python benchmarks/embedding_bench.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

from memworker.embedding import Embedder, EmbeddingBatcher, configure_threads

#: Exit code of a completed run.
EXIT_OK = 0

_SUBJECTS = ["The user", "Our customer", "The agent", "Alice", "The team lead", "Bob"]
_FACTS = [
    "prefers green tea in the morning",
    "asked to move the weekly sync to Thursday afternoon",
    "is allergic to peanuts and avoids restaurants that cook with them",
    "deploys the billing service from the release branch only",
    "said the quarterly report must include churn by region",
    "likes short answers",
]


def make_texts(n: int, offset: int = 0) -> list[str]:
    """Distinct memory-like texts of varied length."""
    return [f"{_SUBJECTS[i % 6]} {_FACTS[(i // 6) % 6]} (note {i + offset})." for i in range(n)]


def model_rate(embedder: Embedder, batch: int, seconds: float) -> float:
    """Texts/s of ``embedder.encode`` on batches of ``batch`` distinct texts."""
    texts = make_texts(max(batch * 8, 64))
    embedder.encode(texts[:batch])  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = texts[(done % len(texts)) :][:batch] or texts[:batch]
        embedder.encode(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - start)


def threaded_rate(threads: int, per_thread: int, call: Callable[[list[str]], object]) -> float:
    """Texts/s of ``threads`` threads each calling ``call`` on ``per_thread`` single texts."""
    texts = make_texts(threads * per_thread, offset=10_000)
    barrier = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        barrier.wait()
        for text in texts[k * per_thread : (k + 1) * per_thread]:
            call([text])

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return len(texts) / (time.perf_counter() - start)


def make_argument_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model name or path (default: bundled)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per model measurement")
    parser.add_argument("--batches", default="1,32,64", help="batch sizes of table 1")
    parser.add_argument(
        "--backends", default=None, help="comma-separated; default torch (+ onnx-int8 if available)"
    )
    parser.add_argument("--threads", type=int, default=32, help="threads of table 2")
    parser.add_argument("--per-thread", type=int, default=20, help="single texts per thread")
    parser.add_argument("--batch-size", type=int, default=64, help="batcher batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batcher max_wait_ms")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    args = make_argument_parser().parse_args(argv)
    has_onnx = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))
    backends = (args.backends or ("torch,onnx-int8" if has_onnx else "torch")).split(",")
    batches = [int(b) for b in args.batches.split(",")]
    print(f"cores={os.cpu_count()} threads={configure_threads(1)} python={sys.version.split()[0]}")

    print(f"\n{'backend':<10} {'batch':>5} {'texts/s':>9}")
    torch_embedder = None
    for backend in backends:
        embedder = Embedder(args.model, backend=backend)
        start = time.perf_counter()
        embedder.encode(["load"])
        print(f"# {backend}: {embedder.model_id} ready in {time.perf_counter() - start:.1f} s")
        torch_embedder = torch_embedder or (embedder if backend == "torch" else None)
        for batch in batches:
            print(f"{backend:<10} {batch:>5} {model_rate(embedder, batch, args.seconds):>9.1f}")

    embedder = torch_embedder or Embedder(args.model, backend=backends[0])
    lock = threading.Lock()

    def locked(texts: list[str]) -> object:
        with lock:
            return embedder.encode(texts)

    with EmbeddingBatcher(
        embedder, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms
    ) as batcher:
        batched = threaded_rate(args.threads, args.per_thread, batcher.encode)
        stats = batcher.stats
    direct = threaded_rate(args.threads, args.per_thread, locked)
    mean = stats.texts / max(stats.batches, 1)
    print(f"\n{args.threads} threads x {args.per_thread} single texts ({embedder.backend})")
    print(f"{'mode':<22} {'texts/s':>9}")
    print(f"{'model under a lock':<22} {direct:>9.1f}")
    print(f"{'EmbeddingBatcher':<22} {batched:>9.1f}   ({stats.batches} batches, mean {mean:.1f})")
    print(f"{'ratio':<22} {batched / direct:>9.2f}x")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
