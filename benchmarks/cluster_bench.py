#!/usr/bin/env python
"""Valkey Cluster vs. one server: indexed write capacity, search latency, replica WAIT.

Every key of a memworker namespace carries the hash tag ``{ns}``, so a namespace
lives in one slot, i.e. on one shard. This benchmark measures what a cluster buys
(and costs) with the RediSearch module loaded on every node. Records are
pre-embedded (random 384-dim unit float32 vectors, ~200-char content, CrewAI
``MemoryRecord`` objects), so the store is the bottleneck, not an embedding model.

Part 1, indexed write capacity. Three namespaces are written concurrently by three
threads (one ValkeyStore each), ``store.save`` in batches of 50, N records per
namespace:
  (a) one shard: a standalone server holds all three namespaces;
  (b) a 3-primary cluster (no replicas), the three namespaces chosen so that they
      land on three different shards (checked with redis-py's
      ``RedisCluster.get_node_from_key("{ns}:meta")``).
  Reports total records/s, per-namespace (= per-shard in (b)) records/s and the
  ratio (b)/(a). Both runs write the same pre-built records.

Part 2, search latency at M records in one namespace: the same M records loaded
into a standalone server and into a 3-primary cluster, ``ensure_index()`` (waits
until the index is built), then 200 ``store.search(vector, limit=10)`` with random
query vectors (after 20 untimed warm-up queries). Reports p50/p99 and the ratio
cluster/standalone.

Part 3, the cost of ``MEMWORKER_COMMIT_REPLICAS=1`` where memworker waits for a
replica (``SET`` + ``WAIT`` on one connection): the latency of an enqueue of one text
and of a drain with nothing to wait for, with the setting at 0 and at 1, on a
3-primary cluster with one replica per primary. The worker's commit does not wait
(docs/guarantees.md, section 3), so a commit step costs nothing more.

Part 4, ``memworker reshard`` (a namespace moved whole to another primary; the source
pauses its writes while the slot is copied): namespaces of 1,000, 10,000 and 50,000
records (``--sizes``) on a 3-primary cluster with one replica each, each moved once with
no other load. Reports the keys moved, how long the source paused its writes, keys/s,
the time to rebuild the index on the target, and the longest write of a neighbour (a
thread writing one key of another slot on the source shard in a loop, i.e. what every
other namespace on that shard sees).

Timings come from one process; the machine may be shared, so compare the ratios
measured within one run rather than absolute figures. Note: with few cores, three
shards plus three client threads (which share the GIL for encoding) compete for
CPU, which caps the cluster's write scaling well below 3x. No assertions on time.

    python benchmarks/cluster_bench.py                 # N=20,000 x3, M=100,000, 200 reps
    python benchmarks/cluster_bench.py --quick         # N=3,000 x3, M=10,000, 50 reps
    python benchmarks/cluster_bench.py --part 1        # only part 1 (repeatable option)
    python benchmarks/cluster_bench.py --part 4 --sizes 1000,10000   # memworker reshard
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")

import argparse  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import _servers as S  # noqa: E402
import numpy as np  # noqa: E402

from memworker.testing import start_cluster, start_server  # noqa: E402

BATCH = 50
TIMEOUT_MS = 30_000


def make_store(url: str, namespace: str) -> Any:
    from memworker import ValkeyStore

    return ValkeyStore(
        f"{url}?request_timeout_ms={TIMEOUT_MS}", namespace=namespace, search_mode="module"
    )


def slot_port(cluster: Any, namespace: str) -> int:
    """Port of the primary that owns the namespace's slot."""
    from redis.cluster import RedisCluster

    rc = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        return int(rc.get_node_from_key(f"{{{namespace}}}:meta").port)
    finally:
        rc.close()


def distinct_shard_namespaces(cluster: Any, count: int, prefix: str) -> list[tuple[str, int]]:
    """``count`` namespaces ``prefix<i>`` whose slots sit on ``count`` different primaries."""
    from redis.cluster import RedisCluster

    rc = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        chosen: dict[int, str] = {}
        i = 0
        while len(chosen) < count:
            ns = f"{prefix}{i}"
            port = int(rc.get_node_from_key(f"{{{ns}}}:meta").port)
            chosen.setdefault(port, ns)
            i += 1
            if i > 10_000:
                raise SystemExit("could not find namespaces on distinct shards")
    finally:
        rc.close()
    return [(ns, port) for port, ns in chosen.items()]


def build_records(seed: int, n: int, prefix: str) -> list[Any]:
    rng = np.random.default_rng(seed)
    return S.make_records(rng, S.unit_vectors(rng, n), prefix=prefix)


# --------------------------------------------------------------------------- part 1
def server_cpu(ports: list[int]) -> float:
    """Sum of ``INFO cpu`` used_cpu_user + used_cpu_sys (seconds) over the given nodes."""
    import redis

    total = 0.0
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            client.close()
    return total


def concurrent_writes(
    url: str, namespaces: list[str], data: list[list[Any]], ports: list[int]
) -> dict[str, Any]:
    """Each thread saves its records into its namespace; returns wall and per-thread
    times, and the CPU seconds the client process and the servers spent meanwhile."""
    stores = [make_store(url, ns) for ns in namespaces]
    try:
        # Warm-up (untimed): connect, load the script, create each namespace's index.
        for k, st in enumerate(stores):
            st.save(build_records(100 + k, 10, prefix="w"))
        barrier = threading.Barrier(len(stores) + 1)
        times: list[float] = [0.0] * len(stores)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                st, recs = stores[k], data[k]
                barrier.wait()
                t0 = time.perf_counter()
                for i in range(0, len(recs), BATCH):
                    st.save(recs[i : i + BATCH])
                times[k] = time.perf_counter() - t0
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(stores))]
        for t in threads:
            t.start()
        cpu0, scpu0 = time.process_time(), server_cpu(ports)
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        client_cpu, srv_cpu = time.process_time() - cpu0, server_cpu(ports) - scpu0
        if errors:
            raise errors[0]
        counts = [st.count() for st in stores]
        for st in stores:
            st.ensure_index()
        return {
            "wall": wall, "times": times, "counts": counts,
            "client_cpu": client_cpu, "server_cpu": srv_cpu,
        }
    finally:
        for st in stores:
            st.close()


def part1(n: int, seed: int) -> str:
    S.say(f"\n-- part 1: indexed write capacity, 3 namespaces x {n:,} records, 3 threads, "
          f"batches of {BATCH}")
    t0 = time.perf_counter()
    data = [build_records(seed + k, n, prefix=f"n{k}_") for k in range(3)]
    S.say(f"   (built {3 * n:,} records in {time.perf_counter() - t0:.1f} s, untimed)")
    rows: list[list[Any]] = []
    results: dict[str, dict[str, Any]] = {}

    srv = start_server(True)
    try:
        names = [f"one{k}" for k in range(3)]
        r = concurrent_writes(srv.url, names, data, [srv.port])
        results["a"] = r
        for k, ns in enumerate(names):
            rows.append(["(a) standalone", ns, srv.port, r["counts"][k], n / r["times"][k]])
    finally:
        srv.stop()

    cluster = start_cluster(3, 0, module=True)
    try:
        chosen = distinct_shard_namespaces(cluster, 3, "shard")
        names = [ns for ns, _ in chosen]
        r = concurrent_writes(cluster.url, names, data, cluster.ports)
        results["b"] = r
        for k, (ns, port) in enumerate(chosen):
            rows.append(["(b) cluster 3x0", ns, port, r["counts"][k], n / r["times"][k]])
    finally:
        cluster.stop()

    rate_a = 3 * n / results["a"]["wall"]
    rate_b = 3 * n / results["b"]["wall"]
    S.say(S.table(["setup", "namespace", "shard port", "count", "rec/s (this ns)"], rows))
    S.say("")
    S.say(S.table(
        ["setup", "records", "wall s", "total rec/s", "per-shard rec/s",
         "client CPU s", "server CPU s"],
        [
            ["(a) one shard", 3 * n, results["a"]["wall"], rate_a, rate_a,
             results["a"]["client_cpu"], results["a"]["server_cpu"]],
            ["(b) 3 shards", 3 * n, results["b"]["wall"], rate_b, rate_b / 3,
             results["b"]["client_cpu"], results["b"]["server_cpu"]],
        ],
    ))
    S.say("   (CPU s during the timed writes: client = this process, all threads; "
          "server = INFO cpu summed over the nodes; the machine has "
          f"{os.cpu_count()} cores)")
    S.say(f"   ratio (b)/(a) total rec/s: {rate_b / rate_a:.2f}x")
    FIGURES["part1"] = {"one shard": rate_a, "3 shards": rate_b, "n": n}
    return (f"part 1: write capacity 3 shards / 1 shard = {rate_b / rate_a:.2f}x "
            f"({rate_b:,.0f} vs {rate_a:,.0f} rec/s, N={n:,} per namespace)")


# --------------------------------------------------------------------------- part 2
def search_latency(url: str, namespace: str, data: list[Any], queries: np.ndarray) -> dict:
    st = make_store(url, namespace)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(data), BATCH):
            st.save(data[i : i + BATCH])
        load = time.perf_counter() - t0
        st.ensure_index()
        count = st.count()
        for q in queries[:20]:
            st.search(q.tolist(), limit=10)
        lat: list[float] = []
        for q in queries[20:]:
            v = q.tolist()
            t = time.perf_counter()
            res = st.search(v, limit=10)
            lat.append((time.perf_counter() - t) * 1e3)
            if len(res) != 10:
                raise SystemExit(f"search returned {len(res)} results, expected 10")
        return {"load_rps": len(data) / load, "count": count, "lat": lat}
    finally:
        st.close()


def part2(m: int, n_queries: int, seed: int) -> str:
    S.say(f"\n-- part 2: search latency, {m:,} records in one namespace, "
          f"{n_queries} queries of limit 10")
    t0 = time.perf_counter()
    data = build_records(seed + 10, m, prefix="s")
    rng = np.random.default_rng(seed + 11)
    queries = S.unit_vectors(rng, n_queries + 20)
    S.say(f"   (built {m:,} records in {time.perf_counter() - t0:.1f} s, untimed)")
    res: dict[str, dict] = {}
    srv = start_server(True)
    try:
        res["standalone"] = search_latency(srv.url, "lat", data, queries)
    finally:
        srv.stop()
    cluster = start_cluster(3, 0, module=True)
    try:
        res["cluster 3x0"] = search_latency(cluster.url, "lat", data, queries)
    finally:
        cluster.stop()
    rows = []
    for name, r in res.items():
        rows.append([name, r["count"], r["load_rps"], S.pct(r["lat"], 50), S.pct(r["lat"], 99)])
    S.say(S.table(["setup", "records", "load rec/s", "p50 ms", "p99 ms"], rows))
    a, b = res["standalone"]["lat"], res["cluster 3x0"]["lat"]
    r50, r99 = S.pct(b, 50) / S.pct(a, 50), S.pct(b, 99) / S.pct(a, 99)
    S.say(f"   ratio cluster/standalone: p50 {r50:.2f}x, p99 {r99:.2f}x")
    FIGURES["part2"] = {"m": m, **{name: (S.pct(r["lat"], 50), S.pct(r["lat"], 99)) for name, r in res.items()}}
    return (f"part 2: search at {m:,} records cluster/standalone p50 = {r50:.2f}x, "
            f"p99 = {r99:.2f}x")


# --------------------------------------------------------------------------- part 3
def part3(reps: int, seed: int) -> str:
    """What MEMWORKER_COMMIT_REPLICAS=1 costs where memworker waits: an enqueue and a
    drain (the worker's commit does not wait: docs/guarantees.md, section 3)."""
    from memworker.queue.producer import MemoryQueue
    from memworker.settings import Settings

    S.say(f"\n-- part 3: MEMWORKER_COMMIT_REPLICAS, {reps} enqueues of one text and {reps} "
          "empty drains, 3x1 cluster")
    cluster = start_cluster(3, 1, module=True)
    rows, medians = [], {}
    try:
        for replicas in (0, 1):
            settings = Settings.from_url(cluster.url, namespace=f"wait{replicas}", commit_replicas=replicas)
            with MemoryQueue(settings, producer_id="bench") as q:
                for i in range(5):  # warm-up
                    q.enqueue_encode([f"warm {i}"])
                t_enq: list[float] = []
                for i in range(reps):
                    t0 = time.perf_counter()
                    q.enqueue_encode([f"text {i}"])
                    t_enq.append((time.perf_counter() - t0) * 1e3)
                t_drain: list[float] = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    q.drain(timeout=60, job_ids=[])
                    t_drain.append((time.perf_counter() - t0) * 1e3)
            medians[replicas] = (S.median(t_enq), S.median(t_drain))
            rows.append([f"COMMIT_REPLICAS={replicas}", S.median(t_enq), S.pct(t_enq, 99),
                         S.median(t_drain), S.pct(t_drain, 99)])
    finally:
        cluster.stop()
    S.say(S.table(["setting", "enqueue p50 ms", "enqueue p99 ms", "drain p50 ms", "drain p99 ms"], rows))
    (e0, d0), (e1, d1) = medians[0], medians[1]
    FIGURES["part3"] = {"enqueue": (e0, e1), "drain": (d0, d1)}
    return (f"part 3: COMMIT_REPLICAS=1 enqueue p50 {e1:.2f} vs {e0:.2f} ms ({e1 / e0:.2f}x), "
            f"drain p50 {d1:.2f} vs {d0:.2f} ms ({d1 / d0:.2f}x)")


# --------------------------------------------------------------------------- part 4
def part4(sizes: list[int], seed: int) -> str:
    """memworker reshard: the source's write pause against the namespace's size."""
    import redis
    from redis.cluster import RedisCluster

    from memworker.reshard import move_namespace
    from memworker.settings import Settings

    S.say(f"\n-- part 4: memworker reshard, namespaces of {', '.join(f'{n:,}' for n in sizes)} "
          "records, 3x1 cluster, RediSearch")
    cluster = start_cluster(3, 1, module=True)
    rows, figures = [], []
    try:
        rc = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        for i, n in enumerate(sizes):
            ns = f"move{i}"
            with make_store(cluster.url, ns) as store:
                data = build_records(seed + i, n, f"m{i}-")
                for j in range(0, n, 500):
                    store.save(data[j : j + 500])
                store.ensure_index()
            source = rc.get_node_from_key(f"{{{ns}}}:meta")
            target = next(p for p in rc.get_primaries() if p.port != source.port)
            neighbour = next(f"probe{k}" for k in range(10_000)
                             if rc.get_node_from_key(f"probe{k}").port == source.port)  # fmt: skip
            probe = redis.Redis(port=source.port)
            worst = [0.0]
            stop = threading.Event()

            def write_loop() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    probe.set(neighbour, 1)
                    worst[0] = max(worst[0], (time.perf_counter() - t0) * 1e3)

            thread = threading.Thread(target=write_loop, daemon=True)
            thread.start()
            time.sleep(0.2)
            worst[0] = 0.0
            t0 = time.perf_counter()
            report = move_namespace(Settings.from_url(cluster.url, namespace=ns), f"127.0.0.1:{target.port}",
                                    pause_ms=120_000)
            total = time.perf_counter() - t0
            stop.set()
            thread.join()
            probe.close()
            rate = report.keys / (report.paused_ms / 1e3)
            figures.append((n, report.paused_ms))
            rows.append([f"{n:,}", report.keys, report.paused_ms, f"{rate:,.0f}", worst[0],
                         round(total - report.paused_ms / 1e3, 2)])
        rc.close()
    finally:
        cluster.stop()
    S.say(S.table(["records", "keys moved", "writes paused ms", "keys/s", "neighbour's worst write ms",
                   "index rebuilt s"], rows))  # fmt: skip
    FIGURES["part4"] = {"sizes": figures}
    n, paused = figures[-1]
    return f"part 4: memworker reshard of {n:,} records paused the source's writes {paused:,.0f} ms"


#: Each part's figures, for --plot.
FIGURES: dict[str, dict[str, Any]] = {}


def plot(path: str) -> None:
    """One PNG with a panel per part that ran (matplotlib, the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("part1", "part2", "part3", "part4") if k in FIGURES]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        f = FIGURES[key]
        if key == "part1":
            ax.bar(["1 shard", "3 shards"], [f["one shard"], f["3 shards"]], color=["#888", "#3a7"])
            ax.set_title(f"indexed writes, 3 namespaces x {f['n']:,}")
            ax.set_ylabel("records/s")
        elif key == "part2":
            names = [k for k in f if k != "m"]
            ax.bar([f"{n}\np50" for n in names], [f[n][0] for n in names], color="#37a")
            ax.bar([f"{n}\np99" for n in names], [f[n][1] for n in names], color="#9bd")
            ax.set_title(f"search, {f['m']:,} records, limit 10")
            ax.set_ylabel("ms")
        elif key == "part4":
            ax.plot([n for n, _ in f["sizes"]], [ms for _, ms in f["sizes"]], "o-", color="#a37")
            ax.set_xscale("log")
            ax.set_title("memworker reshard: source writes paused")
            ax.set_xlabel("records in the namespace")
            ax.set_ylabel("ms")
        else:
            labels = ["enqueue\nN=0", "enqueue\nN=1", "drain\nN=0", "drain\nN=1"]
            values = [*f["enqueue"], *f["drain"]]
            ax.bar(labels, values, color=["#888", "#a73", "#888", "#a73"])
            ax.set_title("MEMWORKER_COMMIT_REPLICAS=N, p50")
            ax.set_ylabel("ms")
    fig.suptitle(f"memworker on a Valkey Cluster (RediSearch, {os.cpu_count()} shared cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    S.say(f"   plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="part 1 records per namespace")
    ap.add_argument("--m", type=int, default=100_000, help="part 2 records in the namespace")
    ap.add_argument("--queries", type=int, default=200, help="part 2 timed queries")
    ap.add_argument("--reps", type=int, default=200, help="part 3 repetitions")
    ap.add_argument("--sizes", default="1000,10000,50000", help="part 4 namespace sizes (records)")
    ap.add_argument("--part", type=int, action="append", choices=(1, 2, 3, 4),
                    help="run only this part (repeatable; default all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="N=3,000, M=10,000, 50 repetitions")
    ap.add_argument("--plot", metavar="PNG", help="also draw the figures (needs matplotlib)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.m, args.reps = 3_000, 10_000, 50
    parts = sorted(set(args.part or (1, 2, 3, 4)))

    S.banner("cluster_bench: Valkey Cluster vs. one server (RediSearch module on every node)")
    S.say(f"   dim={S.DIM}, batch={BATCH}, parts={parts}")
    summary: list[str] = []
    t0 = time.perf_counter()
    if 1 in parts:
        summary.append(part1(args.n, args.seed))
    if 2 in parts:
        summary.append(part2(args.m, args.queries, args.seed))
    if 3 in parts:
        summary.append(part3(args.reps, args.seed))
    if 4 in parts:
        summary.append(part4([int(x) for x in args.sizes.split(",")], args.seed))
    S.say(f"\n== summary ({time.perf_counter() - t0:.0f} s)")
    for line in summary:
        S.say("   " + line)
    if args.plot:
        plot(args.plot)


if __name__ == "__main__":
    main()
