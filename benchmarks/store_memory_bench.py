#!/usr/bin/env python
"""Server memory per record of ValkeyStore, without and with the RediSearch module.

For each server kind, on a fresh server: ``INFO memory`` used_memory before and
after ``store.save`` of N records (384-dim vectors, ~200-char content, 5 scopes
up to 3 levels deep, 1-2 categories, 3 metadata pairs), divided by N. With the
module the store runs twice: ``vector_type="auto"`` (float16 on RediSearch >= 2.10,
the default) and ``"float32"``. The difference to the plain server is what the
vector index costs.

Split (from the same run):
- record hashes: ``MEMORY USAGE`` of a sample of record keys, scaled to N;
- side indexes: ``MEMORY USAGE`` of every ``tree``/``children``/``cats``/``meta`` key;
- the vector index: used_memory delta with the module minus without, and the
  FT.INFO size fields RediSearch reports;
- the bytes of each hash field's value (what a record carries before overhead).

    python benchmarks/store_memory_bench.py            # N=20,000
    python benchmarks/store_memory_bench.py --quick    # N=1,000
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import defaultdict
from typing import Any

import _servers as S
import numpy as np

from memworker.store.codec import to_rows

TARGET = 4096


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def scan_keys(client: Any, pattern: str) -> list[str]:
    keys: list[str] = []
    cursor = "0"
    while True:
        cursor, batch = client.custom_command(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"])
        keys += [_text(k) for k in batch]
        cursor = _text(cursor)
        if cursor == "0":
            return keys


def memory_usage(client: Any, key: str) -> int:
    return int(client.custom_command(["MEMORY", "USAGE", key, "SAMPLES", "0"]) or 0)


def run(
    module: bool, n: int, batch: int, sample: int, seed: int, *extra: str, vector_type: str = "auto"
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ns = f"mw{uuid.uuid4().hex[:6]}"
    with S.server(module, *extra) as srv:
        client = S.glide_client(srv)
        store = S.make_store(srv, ns, batch_size=batch, vector_type=vector_type)
        try:
            time.sleep(0.2)
            before = S.used_memory(client)
            records: list[Any] = []
            t0 = time.perf_counter()
            for lo in range(0, n, 5_000):
                chunk = S.make_records(rng, S.unit_vectors(rng, min(5_000, n - lo)), start=lo)
                if lo == 0:
                    records = chunk[:200]  # kept for the field-size table
                for i in range(0, len(chunk), batch):
                    store.save(chunk[i : i + batch])
            load_s = time.perf_counter() - t0
            time.sleep(0.2)
            after = S.used_memory(client)
            ids = [f"m{int(i):08d}" for i in rng.choice(n, size=min(sample, n), replace=False)]
            hashes = float(np.mean([memory_usage(client, store.keys.rec(i)) for i in ids]))
            side = sum(
                memory_usage(client, k)
                for pat in ("tree", "children", "cats")
                for k in scan_keys(client, f"{{{ns}}}:{pat}:*")
            ) + memory_usage(client, store.keys.meta)
            enc = client.custom_command(["OBJECT", "ENCODING", store.keys.rec(ids[0])])
            vtype = store.vector_type
            ft: dict[str, Any] = {}
            if module:
                info = S.ft_info(client, store.keys.index)
                ft = {k: v for k, v in info.items() if k.endswith(("_mb", "_sz_mb")) or "size" in k}
                ft["num_docs"] = info.get("num_docs")
        finally:
            store.close()
            client.close()
    return {
        "server": S.kind_label(srv) + (" " + " ".join(x.lstrip("-") for x in extra) if extra else ""),
        "n": n,
        "per_record": (after - before) / n,
        "vtype": vtype,
        "hash": hashes,
        "side": side / n,
        "encoding": _text(enc),
        "ft": ft,
        "load_rps": n / load_s,
        "records": records,
    }


def field_sizes(records: list[Any]) -> list[list[Any]]:
    sums: dict[str, float] = defaultdict(float)
    for rec in to_rows(records):
        for name, value in rec.fields:
            sums[name] += len(value.encode() if isinstance(value, str) else value)
    total = sum(sums.values())
    rows = [
        [name, size / len(records)] for name, size in sorted(sums.items(), key=lambda kv: -kv[1])
    ]
    rows.append(["(all field values)", total / len(records)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="records per server (default 20000)")
    ap.add_argument("--batch", type=int, default=500, help="records per store.save (default 500)")
    ap.add_argument("--sample", type=int, default=500, help="record keys sampled with MEMORY USAGE")
    ap.add_argument("--no-module", action="store_true", help="skip the RediSearch server")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: N=1000")
    args = ap.parse_args()
    if args.quick:
        args.n, args.sample = 1_000, 100

    S.banner(f"store_memory_bench: bytes per record, N={args.n:,}, dim={S.DIM}")
    results = [run(False, args.n, args.batch, args.sample, args.seed)]
    if not args.no_module:
        S.say(f"   (loading {args.n:,} records with RediSearch: HNSW indexing, ~1-2k rec/s)")
        results.append(run(True, args.n, args.batch, args.sample, args.seed))  # auto: float16
        results.append(run(True, args.n, args.batch, args.sample, args.seed, vector_type="float32"))
    # What-if: a server config that keeps record hashes in listpack encoding (the
    # 1,536-byte embedding is above the default hash-max-listpack-value of 64).
    listpack = ("--hash-max-listpack-value", "4096")
    results.append(run(False, args.n, args.batch, args.sample, args.seed, *listpack))
    if not args.no_module:
        results.append(run(True, args.n, args.batch, args.sample, args.seed, *listpack))

    rows = []
    for r in results:
        rows.append([
            r["server"], r["vtype"], r["n"], r["per_record"], r["hash"], r["side"],
            max(0.0, r["per_record"] - r["hash"] - r["side"]),
            "MET" if r["per_record"] <= TARGET else "MISSED",
        ])  # fmt: skip
    S.say("")
    S.say(S.table([
        "server", "vectors", "records", "used_memory/record B", "record hash B", "side indexes B",
        "rest (index, allocator) B", f"<= {TARGET} B",
    ], rows))  # fmt: skip
    S.say("record hash encoding: " + ", ".join(f"{r['server']}: {r['encoding']}" for r in results))
    if not args.no_module:
        for r in results[1:3]:
            index = r["per_record"] - results[0]["per_record"]
            width = S.DIM * (2 if r["vtype"] == "float16" else 4)
            S.say(
                f"{r['vtype']} index: module minus plain (float32) = {index:,.0f} B/record "
                f"(a {r['vtype']} vector is {width:,} B, in the hash and again in the index)"
            )
        ft = results[1]["ft"]
        mb = {k: float(_text(v)) for k, v in ft.items() if k.endswith("_mb")}
        S.say(
            "FT.INFO per record: "
            + ", ".join(
                f"{k.replace('_sz_mb', '').replace('_mb', '')}={v * 2**20 / args.n:,.0f} B"
                for k, v in mb.items()
                if v
            )
        )
    S.say("")
    S.say("hash field values per record (bytes, before per-field overhead):")
    S.say(S.table(["field", "bytes"], field_sizes(results[0]["records"])))


if __name__ == "__main__":
    main()
