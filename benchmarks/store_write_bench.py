#!/usr/bin/env python
"""Write throughput: ValkeyStore.save (batches of 200) vs. the original proposal's pattern.

Records: pre-embedded 384-dim random unit float32 vectors, ~200-char content,
5 scopes, 1-2 of 8 categories, 3 metadata pairs, CrewAI ``MemoryRecord`` objects.

memworker: ``store.save(batch)`` with batches of 200 records, i.e. one EVALSHA
per batch that writes every record hash and its side indexes atomically
(validation and token hashing in Python are inside the timing).

baseline (the pattern of the original proposal): per record, unpipelined, with a
``glide_sync.GlideClient`` and ``custom_command``:

    HSET base:mem:<id> id .. content .. scope .. categories .. metadata .. importance ..
         created_at .. last_accessed .. source .. private .. embedding <1536 float32 bytes>
    ZADD base:scope:<scope> <created_at> <id>
    SADD base:categories <category> [<category> ...]

i.e. 3 round trips per record (vector-to-bytes and JSON encoding inside the timing).

Both run in the same process against the same server, interleaved in rounds
(memworker round, baseline round, ...) so machine noise hits both alike; each
writes to its own keys, and with the RediSearch module each prefix has its own
HNSW index with the same parameters (M=16, EF_CONSTRUCTION=128, COSINE, FLOAT32,
384), so the baseline pays for vector indexing too: a fair comparison.

    python benchmarks/store_write_bench.py            # N=20,000 plain, 5,000 with module
    python benchmarks/store_write_bench.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import _servers as S
import numpy as np

from memworker.settings import DEFAULT_HNSW_EF_CONSTRUCTION
from memworker.store.codec import to_rows

BASE = "base"


def baseline_index(client: Any, dim: int) -> None:
    """The same kind of HNSW index memworker creates, over the baseline's prefix."""
    # fmt: off
    client.custom_command([
        "FT.CREATE", f"{BASE}:idx", "ON", "HASH", "PREFIX", "1", f"{BASE}:mem:", "SCHEMA",
        "embedding", "VECTOR", "HNSW", "12", "TYPE", "FLOAT32", "DIM", str(dim),
        "DISTANCE_METRIC", "COSINE", "M", "16", "EF_CONSTRUCTION", str(DEFAULT_HNSW_EF_CONSTRUCTION), "EF_RUNTIME", "64",
        "scope", "TAG", "SEPARATOR", ",",
        "categories", "TAG", "SEPARATOR", ",",
        "source", "TAG", "SEPARATOR", ",",
        "importance", "NUMERIC",
        "created_at", "NUMERIC",
    ])
    # fmt: on


def baseline_write(client: Any, records: list[Any]) -> None:
    """The original proposal: HSET + ZADD + SADD per record, one round trip each."""
    for r in records:
        created = r.created_at.timestamp()
        key = f"{BASE}:mem:{r.id}"
        args = [
            "HSET", key,
            "id", r.id,
            "content", r.content,
            "scope", r.scope,
            "categories", ",".join(r.categories),
            "metadata", json.dumps(r.metadata),
            "importance", repr(float(r.importance)),
            "created_at", repr(created),
            "last_accessed", repr(r.last_accessed.timestamp()),
            "private", "1" if r.private else "0",
            "embedding", np.asarray(r.embedding, dtype=np.float32).tobytes(),
        ]  # fmt: skip
        if r.source is not None:
            args += ["source", r.source]
        client.custom_command(args)
        client.custom_command(["ZADD", f"{BASE}:scope:{r.scope}", repr(created), r.id])
        client.custom_command(["SADD", f"{BASE}:categories", *r.categories])


def command_usec(client: Any) -> dict[str, int]:
    """Server-side microseconds spent per command (INFO commandstats)."""
    raw = client.custom_command(["INFO", "commandstats"])
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            stats = dict(kv.split("=", 1) for kv in rest.split(","))
            out[name] = int(stats["usec"])
    return out


def run(module: bool, n: int, batch: int, round_size: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    with S.server(module) as srv:
        client = S.glide_client(srv)
        store = S.make_store(srv, f"mw{uuid.uuid4().hex[:8]}", batch_size=batch)
        try:
            if module:
                baseline_index(client, S.DIM)
            # Warm-up (not timed): connections, script load, memworker's FT.CREATE.
            warm = S.make_records(rng, S.unit_vectors(rng, batch), start=10**7, prefix="w")
            store.save(warm)
            baseline_write(client, warm)

            t_mw = t_base = t_enc = 0.0
            done = 0
            before = command_usec(client)
            while done < n:
                size = min(round_size, n - done)
                records = S.make_records(rng, S.unit_vectors(rng, size), start=done)
                t0 = time.perf_counter()
                for i in range(0, size, batch):
                    store.save(records[i : i + batch])
                t1 = time.perf_counter()
                baseline_write(client, records)
                t2 = time.perf_counter()
                to_rows(records)  # the Python share of a save (timed apart, not counted)
                t_enc += time.perf_counter() - t2
                t_mw += t1 - t0
                t_base += t2 - t1
                done += size
            after = command_usec(client)
            mw_count = store.count()
            base_count = int(client.custom_command(["EXISTS", f"{BASE}:mem:m{n - 1:08d}"]) or 0)
            if mw_count != n + batch or base_count != 1:
                raise SystemExit(
                    f"write check failed: memworker count {mw_count}, baseline last key {base_count}"
                )
            if module:
                for name in (store.keys.index, f"{BASE}:idx"):
                    info = S.ft_info(client, name)
                    docs = int(info.get("num_docs", 0))
                    if docs != n + batch:
                        raise SystemExit(f"index {name} holds {docs} docs, expected {n + batch}")
        finally:
            store.close()
            client.close()
    return {
        "server": S.kind_label(srv),
        "n": n,
        "mw_rps": n / t_mw,
        "base_rps": n / t_base,
        "mw_s": t_mw,
        "base_s": t_base,
        "enc_us": t_enc / n * 1e6,
        "mw_server_us": (after.get("evalsha", 0) - before.get("evalsha", 0)) / n,
        "base_server_us": sum(after.get(c, 0) - before.get(c, 0) for c in ("hset", "zadd", "sadd"))
        / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=20_000, help="records without a module (default 20000)"
    )
    ap.add_argument(
        "--n-module", type=int, default=5_000, help="records with RediSearch (default 5000)"
    )
    ap.add_argument(
        "--batch", type=int, default=200, help="records per store.save call (default 200)"
    )
    ap.add_argument(
        "--round", type=int, default=1_000, help="records per interleaved round (default 1000)"
    )
    ap.add_argument("--no-module", action="store_true", help="skip the RediSearch server")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: N=600 / 400")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_module, args.round = 600, 400, 200

    S.banner("store_write_bench: ValkeyStore.save vs. unpipelined HSET+ZADD+SADD (glide_sync)")
    S.say(f"   dim={S.DIM}, batch={args.batch}, interleaved rounds of {args.round} records")
    results = [run(False, args.n, args.batch, args.round, args.seed)]
    if not args.no_module:
        S.say("   (with RediSearch both sides pay synchronous HNSW indexing; expect ~1-2k rec/s)")
        results.append(run(True, args.n_module, args.batch, args.round, args.seed))
    rows = []
    for r in results:
        ratio = r["mw_rps"] / r["base_rps"]
        target = (
            (">=10x: " + ("MET" if ratio >= 10 else "MISSED"))
            if r["server"] == "plain"
            else "(report)"
        )
        rows.append([r["server"], r["n"], r["mw_rps"], r["base_rps"], f"{ratio:.1f}x", target])
    S.say("")
    S.say(
        S.table(["server", "records", "memworker rec/s", "baseline rec/s", "ratio", "target"], rows)
    )
    S.say("")
    S.say("per record, microseconds (where the time goes):")
    rows = []
    for r in results:
        mw_total = r["mw_s"] / r["n"] * 1e6
        base_total = r["base_s"] / r["n"] * 1e6
        rows.append([
            r["server"], mw_total, r["enc_us"], r["mw_server_us"],
            max(0.0, mw_total - r["enc_us"] - r["mw_server_us"]),
            base_total, r["base_server_us"], (base_total - r["base_server_us"]) / 3,
        ])  # fmt: skip
    S.say(S.table([
        "server", "mw total", "mw encode (py)", "mw server (lua)", "mw client+io",
        "base total", "base server", "base per round trip (client+io)",
    ], rows))  # fmt: skip
    plain = results[0]
    mw_us = plain["mw_s"] / plain["n"] * 1e6
    base_cpu = plain["base_s"] / plain["n"] * 1e6
    S.say("")
    S.say("projection (plain, not measured): adding a network round trip of RTT per command,")
    S.say(f"memworker pays RTT/{args.batch} per record, the baseline 3*RTT:")
    proj = []
    for rtt in (0.1, 0.25, 0.5, 1.0):
        mw = 1e6 / (mw_us + rtt * 1000 / args.batch)
        base = 1e6 / (base_cpu + 3 * rtt * 1000)
        proj.append([f"+{rtt} ms", mw, base, f"{mw / base:.1f}x"])
    S.say(S.table(["extra RTT", "memworker rec/s", "baseline rec/s", "ratio"], proj))


if __name__ == "__main__":
    main()
