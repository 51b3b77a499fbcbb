"""Load soak (13), bounded: 4 producer processes, 2 worker processes, 20,000 records of
mixed sizes with random scopes (fake embedder, dim 32): exact final count, no duplicates,
records searchable (a sample), memory per record."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

from chaos_embedder import vector
from harness import audit, child_env, record

from memworker.store.store import ValkeyStore

TOTAL, PRODUCERS = 20_000, 4

PRODUCER = r"""
import json, random, sys
from memworker.queue.producer import MemoryQueue
url, ns, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(tag)
q = MemoryQueue(url, namespace=ns, producer_id=f"soak-{tag}")
made, jobs = 0, []
while made < n:
    size = min(n - made, rng.choice([1, 2, 5, 10, 25, 50]))
    items = [{"id": f"{tag}-{made + k}", "text": f"{tag} {made + k} " + "w" * rng.choice([5, 50, 500, 3000]),
              "scope": f"/s{rng.randrange(40)}/t{rng.randrange(5)}", "categories": [f"c{rng.randrange(8)}"]}
             for k in range(size)]
    jobs.append(q.enqueue_encode_job(items)[0])
    made += size
r = q.drain(timeout=400, job_ids=jobs)
print(json.dumps({"jobs": len(jobs), "committed": r.committed, "failed": len(r.failed)}))
"""


def test_soak_four_producers_two_workers(chaos_server, ns, cli_workers):
    client = chaos_server.client()
    before = int(client.info("memory")["used_memory"])
    workers = cli_workers()
    workers.start(threads=4)
    workers.start(threads=4)
    workers.wait_live(client, 2)
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, chaos_server.url, ns, f"p{i}",
                               str(TOTAL // PRODUCERS)], env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(PRODUCERS)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=420)
            assert p.returncode == 0, err[-2000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    took = time.monotonic() - started
    a = audit(client, ns)
    per_record = (int(client.info("memory")["used_memory"]) - before) / max(1, a.records)
    expected = {f"p{i}-{k}" for i in range(PRODUCERS) for k in range(TOTAL // PRODUCERS)}
    rng = random.Random(1)
    sample = rng.sample(sorted(a.ids & expected), 400)
    found = 0
    with ValkeyStore(chaos_server.url, namespace=ns, search_mode="exact") as store:
        for rid in sample:
            rec = store.get_record(rid)
            hits = store.search(vector(rec.content).tolist(), scope_prefix=rec.scope, limit=1)
            found += bool(hits) and hits[0][0].id == rid
    record("Load soak (4 producers, 2 workers, 20k records)", injections=PRODUCERS,
           lost=len(expected - a.ids), duplicates=a.records - len(expected & a.ids),
           seconds=round(took, 1), records_per_s=round(a.records / took),
           bytes_per_record=round(per_record), searched=len(sample), found=found,
           failed_jobs=sum(o["failed"] for o in outs))
    assert a.ids == expected and a.records == TOTAL and a.tree_root == TOTAL
    assert a.bad_records == [] and a.categories_ok
    assert sum(o["failed"] for o in outs) == 0 and found == len(sample)
