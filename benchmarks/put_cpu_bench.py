"""The agent's CPU per sync put: ``QueuedStore.put()`` from threads, no worker running.

Issue 16's put latency from 8 threads in a tight loop is bounded by the agent process's
CPU per put (the threads share one GIL: p50 ~ threads x CPU per put). This measures that
CPU, on one throwaway valkey-server with RediSearch and nothing else competing:

- for ``--threads`` (default 1 and 8), each thread putting its share of ``--n`` items
  (default 4,000) one ``put`` after another in its own namespace (``langgraph_bench.py``'s
  ``put_many``, ``index={"dims": 384, "fields": ["text"]}``);
- *full*: the store as shipped (group commit: one job and one script call for the puts
  that gathered); *own work*: the same puts with the group's send replaced by a no-op
  (nothing reaches Valkey): validation, the job item and the group's hand-offs;
- ``--rounds`` rounds (default 4), the two alternated (each goes first in half of them),
  after one unmeasured warm-up; medians. Printed: CPU per put (process time / puts),
  puts/s, put p50/p99, mean puts a send, and own work against full as a ratio. Read
  own work's CPU, not its latency: the stub never waits on a socket, so with many
  threads one holds the GIL until Python's switch interval (5 ms) takes it away.

To compare two revisions, run it from each checkout in turn (``PYTHONPATH=<checkout>``),
alternating. Nothing is asserted on time.

    .venv/bin/python benchmarks/put_cpu_bench.py                 # ~1 min
    .venv/bin/python benchmarks/put_cpu_bench.py --n 400 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import banner, pct, rotated_rounds, server, table  # noqa: E402
from langgraph_bench import put_many  # noqa: E402

from memworker.settings import Settings  # noqa: E402

#: The paths measured: the store as shipped, and its puts with the send stubbed.
PATHS = ("full", "own work")


def one_run(srv: Any, n: int, threads: int, path: str, tag: str) -> dict[str, Any]:
    from memworker.langgraph import QueuedStore

    settings = Settings.from_url(srv.url, namespace=f"putcpu-{tag}")
    with QueuedStore(settings, index={"dims": 384, "fields": ["text"]}) as store:
        store.put(("warm",), "w", {"text": "warm up"})  # connects, loads the script
        sizes: list[int] = []
        shipped = store._group._send  # noqa: SLF001

        def counted(items: list[Any]) -> Any:
            sizes.append(len(items))
            return shipped(items) if path == "full" else [None] * len(items)

        store._group._send = counted  # noqa: SLF001
        cpu0 = time.process_time()  # from before the threads start: ~0.1 ms in all
        lat, first, last = put_many(store, n, threads)
        cpu = time.process_time() - cpu0
    return {
        "cpu_us": cpu / len(lat) * 1e6,
        "rate": len(lat) / (last - first),
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "group": len(lat) / max(1, len(sizes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="puts per measurement (default 4,000)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="threads putting (default 1 8)")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds (default 4)")
    args = parser.parse_args()
    if args.rounds < 1 or min(args.threads) < 1 or args.n < max(args.threads):
        raise SystemExit("--rounds and --threads must be >= 1, --n >= the most threads")
    banner(f"QueuedStore.put(): {args.n:,} puts from threads, full vs own work (send stubbed), "
           f"no worker, {args.rounds} alternated rounds")  # fmt: skip
    with server(True) as srv:
        one_run(srv, args.n, max(args.threads), "full", "warm-up")
        med = rotated_rounds(
            args.rounds, args.threads, PATHS, lambda threads, path, tag: one_run(srv, args.n, threads, path, tag),
            "thread(s)", lambda res: f"{res['cpu_us']:.0f} us CPU a put, {res['rate']:,.0f} puts/s, "
                                     f"p50 {res['p50']:.2f} / p99 {res['p99']:.2f} ms, {res['group']:.2f} a send",
        )  # fmt: skip

    rows = []
    for threads in args.threads:
        for path in PATHS:
            rows.append([f"{threads}", "full" if path == "full" else "own work (send stubbed)",
                         f"{med(threads, path, 'cpu_us'):.0f}", f"{med(threads, path, 'rate'):,.0f}",
                         f"{med(threads, path, 'p50'):.2f}", f"{med(threads, path, 'p99'):.2f}",
                         f"{med(threads, path, 'group'):.2f}"])  # fmt: skip
        rows.append([f"{threads}", "own work / full",
                     f"{med(threads, 'own work', 'cpu_us') / med(threads, 'full', 'cpu_us'):.2f}x", "", "", "", ""])  # fmt: skip
    print(table(["threads", "path", "CPU us / put", "puts/s", "put p50 ms", "put p99 ms", "puts a send"], rows))
    print(f"medians over {args.rounds} round(s); the agent's process alone (no worker running)")


if __name__ == "__main__":
    main()
