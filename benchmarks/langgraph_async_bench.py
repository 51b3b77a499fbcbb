"""Async puts: ``QueuedStore.aput()`` from many tasks, with and without group commit.

LangGraph's nodes and its server run async, so an agent's memory writes are often
``await store.aput(...)`` from many tasks of one event loop. Since ``AsyncGroupCommit``
the puts of tasks that run at once go out as one job (and the queue's script calls are
shared), as ``put()`` from threads already did. This measures what that changed, in one
run, on one throwaway valkey-server with RediSearch and no worker (the agent's side
alone: nothing competes for the cores but the server):

- for ``--tasks`` (default 1, 8 and 64) tasks, each putting its share of ``--n`` items
  (default 2,000) one ``aput`` after another, in its own namespace;
- *grouped*: the store as shipped; *one job per put*: the same store with both async
  groups replaced by a direct send (each put its own job and script call: the path
  before the change); *grouped, pool*: the store as shipped but its queue's script
  calls made through ``redis.asyncio``'s ``execute_command`` (its pool's lock, retry
  and observability wrappers: the path before the async driver kept connections of
  its own for script calls);
- the three in turn ``--rounds`` times (default 4; the order rotates each round)
  after one unmeasured warm-up, so that a drifting host moves them alike;
  printed: the agent's CPU per put (process time / puts), puts/s, put p50/p99, jobs
  enqueued, and grouped against one-job-per-put and against the pool path as ratios
  (medians over the rounds).

Nothing is asserted on time.

    .venv/bin/python benchmarks/langgraph_async_bench.py             # ~2 min
    .venv/bin/python benchmarks/langgraph_async_bench.py --n 400 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import banner, median, pct, rotated_rounds, server, table  # noqa: E402

from memworker.settings import Settings  # noqa: E402

TEXT = "User {u} said the refund of invoice {i} is late; follow up with the billing team next week."


class Direct:
    """A stand-in for an ``AsyncGroupCommit``: every submit is sent alone, at once."""

    def __init__(self, send: Callable[[list[Any]], Awaitable[Sequence[Any]]]) -> None:
        self._send = send

    async def submit(self, entry: Any) -> Any:
        return (await self._send([entry]))[0]


async def put_many(store: Any, n: int, tasks: int) -> dict[str, Any]:
    """``tasks`` tasks, each putting ``n // tasks`` items one ``aput`` after another."""
    lat: list[float] = []
    start = asyncio.Event()

    async def run(t: int) -> None:
        ns = ("users", f"u{t}")
        await start.wait()
        for i in range(n // tasks):
            t0 = time.perf_counter()
            await store.aput(ns, f"m{i}", {"text": TEXT.format(u=t, i=i), "kind": "billing"})
            lat.append((time.perf_counter() - t0) * 1000)

    runners = [asyncio.create_task(run(t)) for t in range(tasks)]
    await asyncio.sleep(0)
    jobs0, cpu0, wall0 = store._enqueued, time.process_time(), time.perf_counter()  # noqa: SLF001
    start.set()
    await asyncio.gather(*runners)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"cpu_us": cpu / len(lat) * 1e6, "rate": len(lat) / wall, "p50": median(lat), "p99": pct(lat, 99),
            "jobs": store._enqueued - jobs0}  # noqa: SLF001  # fmt: skip


#: The paths measured: the store as shipped, one job per put, the pool's script calls.
PATHS = ("grouped", "one job per put", "grouped, pool")


async def via_pool(client: Any, *args: Any) -> Any:
    """A script call through ``redis.asyncio``'s ``execute_command`` (its pool)."""
    return await client.execute_command(*args)


def one_run(srv: Any, n: int, tasks: int, path: str, tag: str) -> dict[str, Any]:
    from memworker.langgraph import QueuedStore

    settings = Settings.from_url(srv.url, namespace=f"lgasync-{tag}")
    store = QueuedStore(settings, index={"dims": 384, "fields": ["text"]})
    if path == "one job per put":
        store._agroup = Direct(store._asend_group)  # type: ignore[assignment]  # noqa: SLF001
        store.queue._asends = Direct(store.queue._asend_enqueues)  # type: ignore[assignment]  # noqa: SLF001
    elif path == "grouped, pool":
        store.queue._adriver._script_call = via_pool  # type: ignore[method-assign]  # noqa: SLF001

    async def main() -> dict[str, Any]:
        await store.aput(("warm",), "w", {"text": "warm up"})  # connects, loads the script
        try:
            return await put_many(store, n, tasks)
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="puts per measurement (default 2,000)")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 64], help="tasks putting (default 1 8 64)")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds (default 4)")
    args = parser.parse_args()
    if args.rounds < 1 or min(args.tasks) < 1 or args.n < max(args.tasks):
        raise SystemExit("--rounds and --tasks must be >= 1, --n >= the most tasks")
    banner(f"QueuedStore.aput(): {args.n:,} puts from 1 event loop, grouped vs one job per put vs "
           f"the pool's script calls, no worker, {args.rounds} rounds")  # fmt: skip
    with server(True) as srv:
        one_run(srv, args.n, max(args.tasks), "grouped", "warm-up")  # imports, first connections
        med = rotated_rounds(
            args.rounds, args.tasks, PATHS, lambda tasks, path, tag: one_run(srv, args.n, tasks, path, tag),
            "task(s)", lambda res: f"{res['cpu_us']:.0f} us CPU a put, {res['rate']:,.0f} puts/s, "
                                   f"p50 {res['p50']:.2f} / p99 {res['p99']:.2f} ms, {res['jobs']:,} jobs",
        )  # fmt: skip

    def ratio(tasks: int, path: str, base: str) -> list[str]:
        return [f"{tasks}", f"{path} / {base}",
                *(f"{med(tasks, path, key) / med(tasks, base, key):.2f}x"
                  for key in ("cpu_us", "rate", "p50", "p99", "jobs"))]  # fmt: skip

    rows = []
    for tasks in args.tasks:
        for path in ("one job per put", "grouped", "grouped, pool"):
            rows.append([f"{tasks}", path, f"{med(tasks, path, 'cpu_us'):.0f}",
                         f"{med(tasks, path, 'rate'):,.0f}", f"{med(tasks, path, 'p50'):.2f}",
                         f"{med(tasks, path, 'p99'):.2f}", f"{med(tasks, path, 'jobs'):,.0f}"])  # fmt: skip
        rows.append(ratio(tasks, "grouped", "one job per put"))
        rows.append(ratio(tasks, "grouped", "grouped, pool"))
    print(table(["tasks", "path", "CPU us / put", "puts/s", "put p50 ms", "put p99 ms", "jobs"], rows))
    print(f"medians over {args.rounds} round(s); the agent's process alone (no worker running)")


if __name__ == "__main__":
    main()
