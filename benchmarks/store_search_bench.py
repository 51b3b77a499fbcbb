#!/usr/bin/env python
"""Search and list latency of ValkeyStore, with recall against exact numpy top-10.

(a) RediSearch module, N records (default 100,000) in one scope: ``store.search``
    top-10 p50/p95 over Q queries (default 200) and recall@10 against the exact
    cosine top-10 computed here with numpy; variants: no filter, the scope filter,
    a category filter (~23% of records). Also the raw module (FT.SEARCH, ids only)
    at several EF_RUNTIME values, to split module time from memworker's and show
    the recall/latency trade-off of ``hnsw_ef_runtime``.
(b) No module (the exact numpy path): ``store.search`` p50 at 1k, 10k and 50k
    records in one scope, and where its time goes (reading the vectors).
(c) ``store.list_records`` page of 50 (random offsets, and the first page) at
    N records, on the module server and on the plain one (timed interleaved).

Vectors: ``clustered`` (default) puts 200 Gaussian topics in a 32-dim subspace
of the 384 dimensions plus isotropic noise (nearest-neighbour cosine ~0.85,
median pair ~0), like text embeddings whose intrinsic dimension is far below
384; ``random`` is isotropic unit vectors, where all neighbours are nearly
equidistant and HNSW recall collapses (a worst case, not a realistic one).

Records are loaded with ``store.save`` in batches of 500. Loading 100k records
with the module takes a few minutes (RediSearch inserts into HNSW synchronously,
~1k rec/s here); the plain server loads ~10x faster.

    python benchmarks/store_search_bench.py                    # N=100000 (several minutes)
    python benchmarks/store_search_bench.py --data random      # isotropic vectors (HNSW worst case)
    python benchmarks/store_search_bench.py --quick            # N=2000, a few seconds
    python benchmarks/store_search_bench.py --n 20000 --sizes 1000,5000,20000 --plot s.png

``--sizes`` times (a)'s ``store.search`` variants at several record counts on the way to
N (default: at N alone); ``--plot PNG`` draws p50 and p99 of every ``store.search``
path and filter against records, from (a) and (b) (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
from typing import Any

import _servers as S
import numpy as np

SCOPE = "/crew/research"
FILTER_CATEGORY = "decision"


class Dataset:
    """Vectors and categories of the loaded records, for exact ground truth."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.clustered = S.Clustered(self.rng) if kind == "clustered" else None
        self.vectors = np.zeros((0, S.DIM), dtype=np.float32)
        self.has_cat = np.zeros(0, dtype=bool)

    def draw(self, n: int) -> np.ndarray:
        if self.kind == "random":
            return S.unit_vectors(self.rng, n)
        return self.clustered.draw(self.rng, n)

    def queries(self, q: int) -> np.ndarray:
        return self.draw(q)

    def load(self, stores: list[Any], upto: int, batch: int, label: str) -> float:
        """Generate records up to ``upto`` and save them into every store; returns seconds saving."""
        start = len(self.vectors)
        spent = 0.0
        step = 5_000
        last_report = time.monotonic()
        t_begin = time.perf_counter()
        for lo in range(start, upto, step):
            hi = min(upto, lo + step)
            vecs = self.draw(hi - lo)
            records = S.make_records(self.rng, vecs, start=lo, scope=SCOPE)
            self.vectors = np.vstack([self.vectors, vecs])
            self.has_cat = np.concatenate(
                [self.has_cat, [FILTER_CATEGORY in r.categories for r in records]]
            )
            for store in stores:
                t0 = time.perf_counter()
                for i in range(0, len(records), batch):
                    store.save(records[i : i + batch])
                spent += time.perf_counter() - t0
            if time.monotonic() - last_report > 15:
                S.say(
                    f"   ... {label}: {hi:,}/{upto:,} records, {hi - start:,} in {time.perf_counter() - t_begin:.0f}s"
                )
                last_report = time.monotonic()
        return spent

    def truth(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[set[int]]:
        scores = queries @ self.vectors.T  # unit vectors: cosine = dot
        if mask is not None:
            scores[:, ~mask] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return [set(map(int, row)) for row in top]


def rid(record_id: str) -> int:
    return int(record_id.lstrip("m"))


def time_searches(
    store: Any, queries: np.ndarray, **kwargs: Any
) -> tuple[list[float], list[list[int]]]:
    for q in queries[:3]:  # warm-up
        store.search(q.tolist(), limit=10, **kwargs)
    lat, hits = [], []
    for q in queries:
        vec = q.tolist()
        t0 = time.perf_counter()
        res = store.search(vec, limit=10, **kwargs)
        lat.append((time.perf_counter() - t0) * 1000)
        hits.append([rid(r.id) for r, _ in res])
    return lat, hits


def recall(hits: list[list[int]], truth: list[set[int]], k: int = 10) -> float:
    return float(np.mean([len(set(h) & t) / k for h, t in zip(hits, truth)]))


def raw_knn(
    client: Any, index: str, queries: np.ndarray, ef: int, vtype: str = "float32"
) -> tuple[list[float], list[list[int]]]:
    """FT.SEARCH ids only, with an explicit EF_RUNTIME (module time without memworker);
    the query in the index's vector type."""
    dtype = "<f2" if vtype == "float16" else "<f4"
    lat, hits = [], []
    for q in queries:
        t0 = time.perf_counter()
        reply = client.custom_command([
            "FT.SEARCH", index, "*=>[KNN 10 @embedding $vec EF_RUNTIME $ef AS dist]",
            "PARAMS", "4", "vec", q.astype(dtype).tobytes(), "ef", str(ef),
            "SORTBY", "dist", "NOCONTENT", "LIMIT", "0", "10", "DIALECT", "2",
        ])  # fmt: skip
        lat.append((time.perf_counter() - t0) * 1000)
        # glide gives [total, {key: fields}] or, with NOCONTENT, [total, key, key, ...]
        keys = list(reply[1].keys()) if len(reply) > 1 and isinstance(reply[1], dict) else reply[1:]
        hits.append(
            [rid((k.decode() if isinstance(k, bytes) else k).rsplit(":", 1)[1]) for k in keys]
        )
    return lat, hits


def time_lists(
    stores: list[Any], n: int, reps: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Per store: p50 (ms) of a page of 50 at random offsets, and of the first page.
    Stores are timed interleaved (same offsets, same moment) so noise hits them alike."""
    for store in stores:
        for _ in range(3):
            store.list_records(SCOPE, limit=50, offset=0)
    rand: list[list[float]] = [[] for _ in stores]
    first: list[list[float]] = [[] for _ in stores]
    for _ in range(reps):
        off = int(rng.integers(0, max(1, n - 50)))
        for j, store in enumerate(stores):
            t0 = time.perf_counter()
            page = store.list_records(SCOPE, limit=50, offset=off)
            rand[j].append((time.perf_counter() - t0) * 1000)
            if len(page) != min(50, n - off):
                raise SystemExit(f"list_records returned {len(page)} records at offset {off}")
            t0 = time.perf_counter()
            store.list_records(SCOPE, limit=50, offset=0)
            first[j].append((time.perf_counter() - t0) * 1000)
    return [(S.median(r), S.median(f)) for r, f in zip(rand, first)]


def fetch_diagnosis(client: Any, store: Any, n: int) -> tuple[float, float]:
    """Where the exact path's time goes: the store's way of reading n embeddings
    (pipelined HMGET, 2,000 per round trip) vs. the same bytes as one GET."""
    from glide_shared.commands.batch import Batch

    ids = [
        (i.decode() if isinstance(i, bytes) else i)
        for i in client.custom_command(["ZRANGE", store.keys.tree(SCOPE), "0", "-1"])
    ]

    def hmget() -> int:
        size = 0
        for lo in range(0, len(ids), 2_000):
            batch = Batch(is_atomic=False)
            for i in ids[lo : lo + 2_000]:
                batch.custom_command(["HMGET", store.keys.rec(i), "embedding"])
            size += sum(len(r[0]) for r in client.exec(batch, raise_on_error=True))
        return size

    size = hmget()
    client.custom_command(["SET", "bench:blob", b"\0" * size])

    def get() -> int:
        return len(np.frombuffer(client.custom_command(["GET", "bench:blob"]), dtype="<f4"))

    t_h, t_g = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        hmget()
        t1 = time.perf_counter()
        get()
        t_h.append((t1 - t0) * 1000)
        t_g.append((time.perf_counter() - t1) * 1000)
    client.custom_command(["DEL", "bench:blob"])
    return S.median(t_h), S.median(t_g)


def mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=100_000, help="records for (a) and (c) (default 100000)"
    )
    ap.add_argument("--queries", type=int, default=200, help="queries for (a) (default 200)")
    ap.add_argument(
        "--sizes",
        default=None,
        help="record counts at which (a) times store.search while its index grows to N, "
        "comma-separated, each <= N (default: N alone); the EF_RUNTIME sweep runs at N",
    )
    ap.add_argument(
        "--exact-sizes",
        default="1000,10000,50000",
        help="record counts for (b), comma-separated (default 1000,10000,50000)",
    )
    ap.add_argument(
        "--exact-queries", type=int, default=50, help="queries per size for (b) (default 50)"
    )
    ap.add_argument(
        "--data",
        choices=("clustered", "random"),
        default="clustered",
        help="clustered: 200 topics in a 32-dim subspace + noise, like text embeddings "
        "(default); random: isotropic unit vectors, the worst case for HNSW",
    )
    ap.add_argument(
        "--ef", default="10,64,128,256", help="EF_RUNTIME values for the raw-module sweep"
    )
    ap.add_argument(
        "--batch", type=int, default=500, help="records per store.save when loading (default 500)"
    )
    ap.add_argument("--no-module", action="store_true", help="skip (a) and the module half of (c)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smoke run: N=2000, 30 queries")
    ap.add_argument(
        "--plot", metavar="PNG", help="also draw search p50/p99 against records as a PNG (matplotlib)"
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.queries, args.exact_sizes, args.exact_queries, args.ef = (
            2000,
            30,
            "1000,2000",
            10,
            "64",
        )
    sizes = sorted({int(x) for x in args.exact_sizes.split(",") if x})
    module_sizes = sorted({int(x) for x in (args.sizes or "").split(",") if x} | {args.n})
    if module_sizes[-1] > args.n:
        ap.error(f"--sizes: {module_sizes[-1]:,} is above N={args.n:,} (--n)")
    efs = [int(x) for x in args.ef.split(",") if x]
    if args.plot:
        S.pyplot()  # fail now, not after the run, without matplotlib
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    #: For --plot: per search path and filter, record count -> latencies (ms) of its queries.
    curves: dict[str, dict[int, list[float]]] = {}
    t_start = time.perf_counter()

    S.banner(f"store_search_bench: N={args.n:,}, data={args.data}, dim={S.DIM}, top-10")
    summary: list[list[Any]] = []
    rng = np.random.default_rng(args.seed + 1)
    list_stores: list[tuple[str, Any]] = []

    with contextlib.ExitStack() as stack:
        # -------------------------------------------------------------- (a) with the module
        if not args.no_module:
            data = Dataset(args.data, args.seed)
            msrv = stack.enter_context(S.server(True))
            mclient = S.glide_client(msrv)
            stack.callback(mclient.close)
            mstore = S.make_store(
                msrv, f"mw{uuid.uuid4().hex[:6]}", batch_size=args.batch, timeout_ms=120_000
            )
            stack.callback(mstore.close)
            for n_a in module_sizes:
                S.say(
                    f"(a) loading {n_a:,} records into RediSearch with store.save (batches of {args.batch}); "
                    "HNSW indexing runs inside each save, so this is the slow part (minutes at 100k)"
                )
                loaded = len(data.vectors)
                spent = data.load([mstore], n_a, args.batch, "module load")
                info = S.ft_info(mclient, mstore.keys.index)
                S.say(
                    f"    loaded at {(n_a - loaded) / spent:,.0f} rec/s, "
                    f"{spent / ((n_a - loaded) / args.batch) * 1000:,.0f} ms per "
                    f"save of {args.batch}; index num_docs={info.get('num_docs')}"
                )
                queries = data.queries(args.queries)
                rows = []
                variants = [
                    ("no filter", {}, None),
                    (f"scope {SCOPE} (all records)", {"scope_prefix": SCOPE}, None),
                    (f"category '{FILTER_CATEGORY}' ({data.has_cat.mean():.0%} of records)",
                     {"categories": [FILTER_CATEGORY]}, data.has_cat),
                ]  # fmt: skip
                curve_names = ("RediSearch, no filter", "RediSearch, scope filter", "category")
                for (name, kwargs, mask), curve in zip(variants, curve_names):
                    lat, hits = time_searches(mstore, queries, **kwargs)
                    rec = recall(hits, data.truth(queries, 10, mask))
                    rows.append([name, S.pct(lat, 50), S.pct(lat, 95), rec])
                    curves.setdefault(curve, {})[n_a] = lat
                    if not kwargs:
                        p50_a, p95_a, rec_a = S.pct(lat, 50), S.pct(lat, 95), rec
                    if mask is not None:
                        p50_cat, rec_cat = S.pct(lat, 50), rec
                S.say("")
                S.say(
                    f"(a) store.search top-10 with RediSearch, {n_a:,} records, {len(queries)} queries"
                )
                S.say(S.table(["variant", "p50 ms", "p95 ms", "recall@10"], rows))
                if n_a < args.n:
                    S.say("")
            share = f"~{data.has_cat.mean():.0%} of records"
            curves[f"RediSearch, category '{FILTER_CATEGORY}' ({share})"] = curves.pop("category")
            summary.append(
                [
                    f"(a) module search p50 (p95) @ {args.n:,}",
                    f"{p50_a:.2f} ms ({p95_a:.2f})",
                    "<= 5 ms",
                    mark(p50_a <= 5),
                ]
            )
            summary.append(
                [
                    f"(a) module recall@10 @ {args.n:,}, {args.data}",
                    f"{rec_a:.3f}",
                    ">= 0.95",
                    mark(rec_a >= 0.95),
                ]
            )
            summary.append(
                [f"(a) category-filtered p50 (recall {rec_cat:.3f})", f"{p50_cat:.2f} ms", "-", "-"]
            )

            truth = data.truth(queries, 10)
            rows = []
            for ef in efs:
                lat, hits = raw_knn(mclient, mstore.keys.index, queries, ef, mstore.vector_type)
                rows.append([ef, S.pct(lat, 50), S.pct(lat, 95), recall(hits, truth)])
            S.say("")
            S.say(
                "    raw FT.SEARCH (ids only, no filter, no record decoding) by EF_RUNTIME; "
                "the store's index uses hnsw_ef_runtime=64"
            )
            S.say(S.table(["EF_RUNTIME", "p50 ms", "p95 ms", "recall@10"], rows))
            list_stores.append(("RediSearch", mstore))
            del data

        # -------------------------------------------------------------- (b) without a module
        data = Dataset(args.data, args.seed + 100)
        psrv = stack.enter_context(S.server(False))
        pclient = S.glide_client(psrv)
        stack.callback(pclient.close)
        pstore = S.make_store(psrv, f"mw{uuid.uuid4().hex[:6]}", batch_size=args.batch)
        stack.callback(pstore.close)
        exact_rows = []
        diag = None
        S.say("")
        S.say(f"(b) exact path (no module), growing one scope to {max(sizes + [args.n]):,} records")
        for n in sorted(set(sizes) | {args.n}):
            data.load([pstore], n, args.batch, "plain load")
            if n not in sizes:
                continue
            nq = args.exact_queries if n <= 10_000 else max(5, args.exact_queries // 3)
            queries = data.queries(nq)
            lat, hits = time_searches(pstore, queries)
            curves.setdefault("exact (no module), no filter", {})[n] = lat
            exact_rows.append(
                [n, S.pct(lat, 50), S.pct(lat, 95), recall(hits, data.truth(queries, 10)), nq]
            )
            if n == 10_000 or (n == max(sizes) and 10_000 not in sizes):
                summary.append(
                    [
                        f"(b) exact search p50 @ {n:,}",
                        f"{S.pct(lat, 50):.1f} ms",
                        "<= 50 ms",
                        mark(S.pct(lat, 50) <= 50),
                    ]
                )
                diag = (n, *fetch_diagnosis(pclient, pstore, n))
        S.say(S.table(["records", "p50 ms", "p95 ms", "recall@10", "queries"], exact_rows))
        if diag:
            S.say(
                f"    reading the {diag[0]:,} embeddings the store's way (pipelined HMGET, 2,000 per round trip): "
                f"{diag[1]:.1f} ms; the same bytes as one GET: {diag[2]:.1f} ms"
            )

        # -------------------------------------------------------------- (c) list_records
        list_stores.append(("plain", pstore))
        reps = max(20, min(200, args.queries))
        results = time_lists([st for _, st in list_stores], args.n, reps, rng)
        S.say("")
        S.say(
            f"(c) list_records(limit=50), {args.n:,} records in one scope, {reps} pages, servers interleaved"
        )
        rows = [[name, r, f] for (name, _), (r, f) in zip(list_stores, results)]
        S.say(S.table(["server", "p50 ms random offset", "p50 ms first page"], rows))
        for (name, _), (r, _f) in zip(list_stores, results):
            summary.append(
                [
                    f"(c) list page of 50 p50 @ {args.n:,} ({name})",
                    f"{r:.2f} ms",
                    "<= 2 ms",
                    mark(r <= 2),
                ]
            )

    S.say("")
    S.say(f"summary (total {time.perf_counter() - t_start:.0f} s)")
    S.say(S.table(["measure", "value", "target", ""], summary))
    if args.plot:
        plot(args.plot, curves, args, started)


def plot(path: str, curves: dict[str, dict[int, list[float]]], args: Any, started: str) -> None:
    """p50 and p99 of store.search top-10 against records, one line per path and filter,
    log-log (matplotlib, the bench extra)."""
    plt = S.pyplot()
    from matplotlib.ticker import LogLocator

    curves = {name: pts for name, pts in curves.items() if pts}
    if not curves:
        S.say("   plot: nothing measured, no figure")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharey=True)
    styles = {"RediSearch, no filter": ("#37a", "o"), "RediSearch, scope filter": ("#3a7", "s"),
              "exact (no module), no filter": ("#c52", "D")}  # fmt: skip
    counts = sorted({n for pts in curves.values() for n in pts})
    for ax, q in zip(axes, (50, 99)):
        for name, pts in curves.items():
            color, marker = styles.get(name, ("#a3a", "^"))
            ns = sorted(pts)
            queries = "/".join(str(k) for k in sorted({len(pts[n]) for n in ns}))
            ax.plot(ns, [S.pct(pts[n], q) for n in ns], marker=marker, color=color, lw=1.5, ms=5,
                    label=f"{name}: {queries} queries a point")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        S.plain_log_ticks(ax.yaxis)
        ax.set_xticks(counts, [f"{n:,}" for n in counts], minor=False)
        ax.set_xticks([], minor=True)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("records in the scope (log)")
        ax.set_title(f"store.search top-10, p{q} latency", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel("ms per search (log)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(
        f"store_search_bench.py, {started}, {os.cpu_count()} cores, data={args.data}, dim={S.DIM}\n"
        "RediSearch HNSW (M=16, EF_RUNTIME 64) and the exact numpy path, one valkey-server each",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    S.save_figure(fig, path)


if __name__ == "__main__":
    main()
