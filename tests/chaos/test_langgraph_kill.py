"""LangGraph's ``QueuedStore`` with its worker SIGKILLed mid-batch while agents put:
nothing is lost, the later put of a key wins, and deleted keys stay deleted.

Several producer threads (each its own ``QueuedStore``, one memworker namespace) put
their own keys over and over (a key belongs to one thread, so the last put of each
key is the thread's last put of it) and delete some. Meanwhile the test's own store
puts "gate" values: the chaos embedder blocks on a ``GATE`` text in every worker but
the last one (each worker has its own gate folder, closed, except the last one's),
so a worker that reaches one is mid-batch, holding jobs, when it is SIGKILLed and a
replacement started. Those gate puts can only commit in the last worker, after a
later put of the same key (which must win) or after the key's delete (the tombstone
must keep it deleted). At the end every store reads (its drain barrier) and the
store must hold exactly the live keys, each with its last value and version.
"""

from __future__ import annotations

import threading
import time

import pytest
from harness import audit, record, wait_for

pytest.importorskip("langgraph.store.base")

from memworker import langgraph as lg_mod  # noqa: E402
from memworker.errors import DrainTimeout  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402

DIM = 32  # chaos_embedder.DIM
PRODUCERS = 4
KEYS_PER_PRODUCER = 20
KILLS = 3
MIN_PASSES = 6  # every key of a producer is put at least this many times
DELETE_PASS = 2  # "dead" keys are deleted after this pass; "revived" ones put again after
PUT_PAUSE = 0.01
SLOW_MS = 2  # each producer text costs the embedder this long: batches take real time


def _acks_keys(client, ns) -> set[bytes]:
    """The workers' acks sets (one per broker and queue): messages fetched, not acked."""
    return set(client.scan_iter(f"{{{ns}}}:dq:__acks__.*"))


def _held(client, ns, before: set[bytes]) -> int:
    """Messages held by the worker started after ``before`` was taken."""
    return sum(client.scard(k) for k in _acks_keys(client, ns) - before)


def _kind(k: int) -> str:
    return {0: "dead", 1: "revived"}.get(k % 5, "live")


def test_sigkill_worker_mid_put_nothing_lost_later_put_wins(chaos_server, ns, workdir, cli_workers,
                                                             monkeypatch):
    client = chaos_server.client()
    # The version each put or delete of this thread got (next_version is called once
    # per op, in the calling thread, before the op is enqueued or applied).
    seen = threading.local()
    original = lg_mod.next_version

    def traced() -> int:
        seen.version = original()
        return seen.version

    monkeypatch.setattr(lg_mod, "next_version", traced)

    def make_store() -> QueuedStore:
        return QueuedStore(chaos_server.url, namespace=ns, index={"dims": DIM, "fields": ["text"]},
                           drain_timeout=240)

    # key (namespace, key) -> last value put (None: deleted) and the versions it got, in order
    expected: dict[tuple[tuple[str, ...], str], dict | None] = {}
    versions: dict[tuple[tuple[str, ...], str], list[int]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    passes = [0] * PRODUCERS
    kills_done = threading.Event()
    stores = [make_store() for _ in range(PRODUCERS)]
    gate_store = make_store()

    ops = {"puts": 0, "deletes": 0}

    def note(namespace, key, value) -> None:
        with lock:
            ops["puts" if value is not None else "deletes"] += 1
            expected[(namespace, key)] = value
            versions.setdefault((namespace, key), []).append(seen.version)

    def produce(t: int) -> None:
        s, namespace = stores[t], ("lg", f"t{t}")
        try:
            n = 0
            while n < MIN_PASSES or not kills_done.is_set():
                for k in range(KEYS_PER_PRODUCER):
                    key, kind = f"k{k}", _kind(k)
                    if kind == "dead" and n > DELETE_PASS:
                        continue
                    value = {"text": f"SLOW{SLOW_MS} t{t} k{k} seq{n}", "seq": n, "t": t}
                    s.put(namespace, key, value)
                    note(namespace, key, value)
                    if kind != "live" and n == DELETE_PASS:
                        s.delete(namespace, key)  # at once, with a tombstone
                        note(namespace, key, None)
                    time.sleep(PUT_PAUSE)
                n += 1
                passes[t] = n
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    gates = [workdir / f"gate-{i}" for i in range(KILLS + 1)]
    for g in gates:
        g.mkdir()
    (gates[-1] / "open").touch()  # only the last worker ever commits a GATE text
    workers = cli_workers()
    # A gate job is delivered to each killed worker at most once more than the
    # kills: past --max-deliveries it would be failed as poison, not redelivered.
    worker_args = ("--max-deliveries", str(KILLS + 3))
    acks_before = _acks_keys(client, ns)
    proc = workers.start(threads=2, args=worker_args, MEMWORKER_CHAOS_GATE=str(gates[0]))
    workers.wait_live(client)

    threads = [threading.Thread(target=produce, args=(t,), daemon=True) for t in range(PRODUCERS)]
    for th in threads:
        th.start()
    gate_ns = ("lg", "gate")
    held_at_kills: list[int] = []
    try:
        for r in range(KILLS):
            # The producers are putting (a pass or more since the last kill).
            wait_for(lambda: min(passes) >= r + 1 or errors, 120, f"producer pass {r + 1}")
            # Two puts the current worker blocks on: a key that gets a later put, and
            # a key that gets deleted, both while the first put is held.
            early = {"text": f"GATE early r{r}", "seq": 0}
            gate_store.put(gate_ns, f"g{r}", early)
            note(gate_ns, f"g{r}", early)
            gate_store.put(gate_ns, f"d{r}", {"text": f"GATE doomed r{r}", "seq": 0})
            note(gate_ns, f"d{r}", {"text": f"GATE doomed r{r}", "seq": 0})
            wait_for(lambda: any(gates[r].glob("started-*")) or errors, 120,
                     f"worker {r} to block mid-batch")
            later = {"text": f"later r{r}", "seq": 1}
            gate_store.put(gate_ns, f"g{r}", later)
            note(gate_ns, f"g{r}", later)
            gate_store.delete(gate_ns, f"d{r}")
            note(gate_ns, f"d{r}", None)
            held_at_kills.append(_held(client, ns, acks_before))
            workers.kill(proc)  # SIGKILL while it embeds a batch
            acks_before = _acks_keys(client, ns)
            proc = workers.start(threads=2, args=worker_args,
                                 MEMWORKER_CHAOS_GATE=str(gates[r + 1]))
    finally:
        kills_done.set()
        for th in threads:
            th.join(300)
    assert not errors, f"a producer failed: {errors[0]!r}\n{workers.logs()}"
    assert not any(th.is_alive() for th in threads), "a producer did not finish"

    # Every store reads: each drains its own pending puts first.
    hangs = 0
    t0 = time.monotonic()
    for s in [*stores, gate_store]:
        try:
            s.get(("lg", "drain"), "none")
        except DrainTimeout:
            hangs += 1
    drain_s = time.monotonic() - t0
    assert hangs == 0, workers.logs()

    reader = stores[0]
    live = {nk: v for nk, v in expected.items() if v is not None}
    dead = [nk for nk, v in expected.items() if v is None]
    missing = stale = resurrected = 0
    stale_keys: list[str] = []
    for (namespace, key), value in expected.items():
        item = reader.get(namespace, key, refresh_ttl=False)
        if value is None:
            resurrected += item is not None
        elif item is None:
            missing += 1
        elif item.value != value:
            stale += 1
            stale_keys.append(f"{namespace}/{key}: {item.value} != {value}")
    count = reader.store.count("/langgraph")
    listed = reader.search(("lg",), limit=10_000)
    listed_keys = [(h.namespace, h.key) for h in listed]
    a = audit(client, ns)
    extra = max(0, count - len(live))

    # Versions: strictly increasing per key in put order; the stored record (or the
    # tombstone of a deleted key) carries the version of the last op.
    non_monotonic = sum(1 for vs in versions.values() if any(b <= a_ for a_, b in zip(vs, vs[1:])))
    wrong_version = 0
    for nk, vs in versions.items():
        rid = record_id(*nk)
        if expected[nk] is None:
            tomb = client.zscore(f"{{{ns}}}:tomb", rid)
            wrong_version += tomb is None or int(tomb) < vs[-1]
        else:
            stored = client.hget(f"{{{ns}}}:rec:{rid}", "ver")
            wrong_version += stored is None or int(stored) != vs[-1]

    # lost: keys missing or holding an earlier value than their last put (a lost
    # update); duplicates: records beyond the live keys (a resurrected delete included).
    record("SIGKILL worker mid-put (LangGraph QueuedStore: later put wins, deletes stay)",
           injections=KILLS, lost=missing + stale, duplicates=extra, hangs=hangs,
           keys=len(expected), puts=ops["puts"], deletes=ops["deletes"], stale_values=stale,
           resurrected_deletes=resurrected, wrong_versions=wrong_version,
           jobs_held_by_killed_workers=sum(held_at_kills), drain_s=round(drain_s, 1))
    for s in [*stores, gate_store]:
        s.close()

    assert missing == 0 and stale == 0, stale_keys[:5]
    assert resurrected == 0
    assert count == len(live) == a.records and a.tree_root == a.records
    assert sorted(listed_keys) == sorted(live), "a key listed twice, a dead one, or one missing"
    assert a.bad_records == [] and a.categories_ok
    assert non_monotonic == 0 and wrong_version == 0
    assert all(h >= 1 for h in held_at_kills), "a worker was killed holding no job"
    # The scenario happened: each producer put each live key many times, deleted some.
    assert min(passes) >= MIN_PASSES and len(dead) >= PRODUCERS * 2 + KILLS
