"""The agent's CPU per sync put: ``QueuedStore.put()`` from threads, no worker running.

Issue 16's put latency from 8 threads in a tight loop is bounded by the agent process's
CPU per put (the threads share one GIL: p50 ~ threads x CPU per put). This measures that
CPU, on one throwaway valkey-server with RediSearch and nothing else competing:

- for ``--threads`` (default 1 and 8), each thread putting its share of ``--n`` items
  (default 4,000) one ``put`` after another in its own namespace (the puts of
  ``langgraph_bench.py``, ``index={"dims": 384, "fields": ["text"]}``);
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
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import banner, median, pct, say, server, table  # noqa: E402

from memworker.settings import Settings  # noqa: E402

TEXT = "User {u} said the refund of invoice {i} is late; follow up with the billing team next week."


def one_run(srv: Any, n: int, threads: int, send: bool, tag: str) -> dict[str, Any]:
    from memworker.langgraph import QueuedStore

    settings = Settings.from_url(srv.url, namespace=f"putcpu-{tag}")
    with QueuedStore(settings, index={"dims": 384, "fields": ["text"]}) as store:
        store.put(("warm",), "w", {"text": "warm up"})  # connects, loads the script
        sizes: list[int] = []
        shipped = store._group._send  # noqa: SLF001

        def counted(items: list[Any]) -> Any:
            sizes.append(len(items))
            return shipped(items) if send else [None] * len(items)

        store._group._send = counted  # noqa: SLF001
        lat: list[float] = []
        lock = threading.Lock()
        gate = threading.Barrier(threads + 1)

        def run(t: int) -> None:
            mine = []
            namespace = ("users", f"u{t}")
            gate.wait()
            for i in range(n // threads):
                value = {"text": TEXT.format(u=t, i=t * 1_000_000 + i), "kind": "billing"}
                start = time.perf_counter()
                store.put(namespace, f"m{i}", value)
                mine.append(time.perf_counter() - start)
            with lock:
                lat.extend(mine)

        workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        gate.wait()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for w in workers:
            w.join()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ms = [x * 1000 for x in lat]
    return {
        "cpu_us": cpu / len(lat) * 1e6,
        "rate": len(lat) / wall,
        "p50": pct(ms, 50),
        "p99": pct(ms, 99),
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
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {}
    with server(True) as srv:
        one_run(srv, args.n, max(args.threads), True, "warm-up")
        for r in range(args.rounds):
            for threads in args.threads:
                for send in ((True, False) if r % 2 == 0 else (False, True)):
                    res = one_run(srv, args.n, threads, send, f"{r}-{threads}-{int(send)}")
                    runs.setdefault((threads, send), []).append(res)
                    say(f"   round {r + 1}, {threads} thread(s), {'full' if send else 'own work'}: "
                        f"{res['cpu_us']:.0f} us CPU a put, {res['rate']:,.0f} puts/s, "
                        f"p50 {res['p50']:.2f} / p99 {res['p99']:.2f} ms, {res['group']:.2f} a send")  # fmt: skip

    def med(threads: int, send: bool, key: str) -> float:
        return median([res[key] for res in runs[(threads, send)]])

    rows = []
    for threads in args.threads:
        for send in (True, False):
            rows.append([f"{threads}", "full" if send else "own work (send stubbed)",
                         f"{med(threads, send, 'cpu_us'):.0f}", f"{med(threads, send, 'rate'):,.0f}",
                         f"{med(threads, send, 'p50'):.2f}", f"{med(threads, send, 'p99'):.2f}",
                         f"{med(threads, send, 'group'):.2f}"])  # fmt: skip
        rows.append([f"{threads}", "own work / full", f"{med(threads, False, 'cpu_us') / med(threads, True, 'cpu_us'):.2f}x",
                     "", "", "", ""])  # fmt: skip
    print(table(["threads", "path", "CPU us / put", "puts/s", "put p50 ms", "put p99 ms", "puts a send"], rows))
    print(f"medians over {args.rounds} round(s); the agent's process alone (no worker running)")


if __name__ == "__main__":
    main()
