"""``memworker reshard`` attacked (a hostile review of 2026-12-06, helper-77): the
mover SIGKILLed at each step (a subprocess running the CLI, killed from inside a
wrapper around one of the mover's real steps), then a rerun; the mover's link to the
target lost during the copy; a replica or the owner as target; namespaces sharing a slot;
another application's keys in the slot, keys with TTLs, more keys than one chunk;
LangGraph TTL items; producers and workers running through a move. Real servers
only (the session clusters of this run: each move leaves the namespace usable there).

Expectations come from docs/scaling.md ("Resharding") and memworker/reshard.py: the
namespace is whole on one node at every moment, a failure before the hand-over moves
nothing and resumes the source, a key keeps its expiry to the millisecond, errors are
``MemworkerError``s naming the problem, the source's pause is bounded by ``--pause-ms``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster, key_slot
from test_reshard import _keys, _records, _where, _writes_at_once
from test_worker import fake, workers  # noqa: F401

from memworker import ValkeyStore
from memworker.errors import ConfigError, MemworkerError
from memworker.keys import tag
from memworker.queue.producer import MemoryQueue
from memworker.reshard import ReshardError, move_namespace
from memworker.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAUSE_MS = 2_000
DIM = 8  # the fake embedder's (tests/integration/test_worker.py)


@pytest.fixture(params=["cluster_plain_server", "cluster_module_server"], ids=["plain", "module"])
def cluster(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


# ----------------------------------------------------------------------------- helpers
def _settings(cluster: Any, namespace: str) -> Settings:
    return Settings.from_url(cluster.url, namespace=namespace,
                             search_mode="module" if cluster.module else "exact")  # fmt: skip


def _seed(cluster: Any, namespace: str, n: int, *, other_app: int = 0, ttl_ms: int = 600_000) -> dict[bytes, Any]:
    """``n`` records, a queued job, and ``other_app`` keys of another application in the
    same slot (``app:{ns}:i``), every other one with a TTL. Returns the other
    application's keys -> (value, PEXPIRETIME)."""
    settings = _settings(cluster, namespace)
    with ValkeyStore(settings) as store:
        store.save(_records(n, DIM))
    with MemoryQueue(settings, producer_id="seed") as q:
        q.enqueue_encode([{"text": "queued before the move", "scope": "/q"}])
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        pipe = rc.pipeline()
        for i in range(other_app):
            key = f"app:{tag(namespace)}:{i}"
            if i % 2:
                pipe.set(key, f"v{i}", px=ttl_ms + i)
            else:
                pipe.set(key, f"v{i}")
        pipe.execute()
        out = {}
        for i in range(other_app):
            key = f"app:{tag(namespace)}:{i}".encode()
            out[key] = (rc.get(key), rc.execute_command("PEXPIRETIME", key))
        return out
    finally:
        rc.close()


def _other_app_now(cluster: Any, keys: list[bytes]) -> dict[bytes, Any]:
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        return {k: (rc.get(k), rc.execute_command("PEXPIRETIME", k)) for k in keys}
    finally:
        rc.close()


def _wait_writable(node: redis.Redis, namespace: str, limit_s: float) -> None:
    """The node takes a write again within ``limit_s`` (a pause of the mover ends)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            _writes_at_once(node, namespace)
            return
        except redis.exceptions.MovedError:
            return  # not paused: the write was answered (it belongs elsewhere now)
        except (redis.TimeoutError, redis.ConnectionError, redis.ResponseError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"the node still refuses writes {limit_s} s later: {exc!r}") from exc


def _usable(cluster: Any, namespace: str, n: int, *, queued: int = 1) -> None:
    """The namespace answers on its (new) shard: all ``n`` records, a search, the queued
    job, a new save found by a search."""
    settings = _settings(cluster, namespace)
    recs = _records(n, DIM)
    with ValkeyStore(settings) as store:
        assert store.count() == n
        hits = [r.id for r, _ in store.search(recs[7].embedding, limit=3)]
        assert hits and hits[0] == "r7", hits
        extra = _records(n + 1, DIM)[-1].model_copy(update={"id": "after-the-move"})
        store.save([extra])
        assert store.get_record("after-the-move") is not None
        assert store.count() == n + 1
    with MemoryQueue(settings, producer_id="seed") as q:
        assert q.status()["depth"] == queued


def _run_cli_killed_at(cluster: Any, namespace: str, to: str, step: str) -> int:
    """Run ``memworker reshard`` in a subprocess that SIGKILLs itself at ``step``
    (the mover's real steps, wrapped). Returns its exit status."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import memworker.reshard as r
        from memworker.cli import main

        step = {step!r}
        def die():
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        drop, copy, handover = r._drop_index, r._copy_slot, r._wait_handover
        def drop_then(source, index, *, slot, target_id):
            if step == "after-importing" and slot is None:
                die()  # the target imports the slot; nothing paused yet
            if step == "after-handover" and slot is not None:
                die()  # handed over and unpaused, indexes not made
            return drop(source, index, slot=slot, target_id=target_id)

        def copy_then(source, target, slot, *, deadline):
            if step in ("mid-copy", "after-copy"):
                class Pipe:
                    def __init__(self, p): self.p = p
                    def __getattr__(self, a): return getattr(self.p, a)
                    def execute(self):
                        out = self.p.execute()
                        die()  # the first chunk restored on the target, source paused
                class Target:
                    def __getattr__(self, a): return getattr(target, a)
                    def pipeline(self, **kw): return Pipe(target.pipeline(**kw))
                return copy(source, Target(), slot, deadline=deadline)
            moved = copy(source, target, slot, deadline=deadline)
            if step == "after-copy":
                die()  # everything copied, no SETSLOT NODE yet
            return moved

        def handover_then(*a, **kw):
            if step == "before-handover-wait":
                die()  # the target took the slot, nobody else told, source paused
            return handover(*a, **kw)

        r._drop_index, r._copy_slot, r._wait_handover = drop_then, copy_then, handover_then
        r._CHUNK = 40
        sys.exit(main(["reshard", "--url", {cluster.url!r}, "--namespace", {namespace!r},
                       "--to", {to!r}, "--pause-ms", "{PAUSE_MS}"]))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", CREWAI_TESTING="true")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=120)
    return proc.returncode


def _slot_owner_port(cluster: Any, namespace: str) -> int:
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        return int(rc.get_node_from_key(tag(namespace)).port)
    finally:
        rc.close()


def _clean_target_as_told(target: redis.Redis, slot: int) -> None:
    """What the refusal tells the operator: ASKING + DEL every key of the slot on the
    target, then CLUSTER SETSLOT <slot> STABLE there."""
    while keys := target.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 500):
        pipe = target.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("ASKING")
            pipe.execute_command("DEL", key)
        pipe.execute()
    target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


# ----------------------------------------------------------------------------- kills
@pytest.mark.parametrize("step", ["after-importing", "mid-copy", "after-copy", "before-handover-wait",
                                  "after-handover"])  # fmt: skip
def test_a_reshard_killed_at_each_step_is_finished_by_a_rerun_losing_nothing(cluster, namespace, step) -> None:
    n = 90  # more than two of the subprocess's 40-key chunks
    other = _seed(cluster, namespace, n, other_app=30)
    source, target, slot, to = _where(cluster, namespace)
    _writes_at_once(source, namespace)  # the probe key _wait_writable writes, counted
    keys_before = _keys(source, slot)

    rc = _run_cli_killed_at(cluster, namespace, to, step)
    assert rc == -9, f"the mover was not killed at {step} (exit {rc})"
    # the pause a killed mover left ends by itself (CLIENT PAUSE <pause-ms>)
    _wait_writable(source, namespace, PAUSE_MS / 1000 + 5)
    settings = _settings(cluster, namespace)
    handed_over = step in ("before-handover-wait", "after-handover")
    if handed_over:
        # the target took the slot: it holds the namespace, the source learns it
        deadline = time.monotonic() + 30
        while _keys(source, slot) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (_keys(source, slot), _keys(target, slot)) == (0, keys_before)
    else:
        # nothing handed over: the namespace is whole on its source and usable
        assert _keys(source, slot) == keys_before
        with ValkeyStore(settings) as store:
            assert store.count() == n

    if step in ("mid-copy", "after-copy"):
        # documented: a target holding keys of the slot is refused, naming the cleanup
        with pytest.raises(ReshardError, match=rf"already holds keys of slot {slot}.*ASKING.*SETSLOT {slot} STABLE"):
            move_namespace(settings, to)
        _clean_target_as_told(target, slot)

    report = move_namespace(settings, to)
    assert report.target == to
    assert (_keys(source, slot), _keys(target, slot)) == (0, keys_before)
    if cluster.module:
        # docs/scaling.md step 5: the index is made on the target; the source keeps none
        assert report.index is True, report
        assert f"{tag(namespace)}:idx".encode() in target.execute_command("FT._LIST")
        assert f"{tag(namespace)}:idx".encode() not in source.execute_command("FT._LIST")
    assert _other_app_now(cluster, list(other)) == other
    _usable(cluster, namespace, n)


def test_losing_the_target_during_the_copy_leaves_the_source_taking_writes(
    cluster_plain_server, namespace, monkeypatch
) -> None:
    """The mover's link to the target drops while the slot is copied (source paused):
    the mover's real client to the target (a subclass of redis.Redis) answers every
    command with ConnectionError from then on, as a network partition between the
    mover and the target would (the cluster itself stays healthy). The
    move must fail with a ReshardError and the source must take writes again at once
    (docs: a failure before the hand-over resumes the source; nothing moved)."""
    import memworker.reshard as reshard

    cluster = cluster_plain_server
    settings = _settings(cluster, namespace)
    with ValkeyStore(settings) as store:
        store.save(_records(20, DIM))
    source, target, slot, to = _where(cluster, namespace)
    _writes_at_once(source, namespace)  # the probe key, counted
    keys_before = _keys(source, slot)
    target_port = int(to.rsplit(":", 1)[1])
    lost = [False]
    real_redis = redis.Redis

    class Pipe:
        def __init__(self, pipe: Any) -> None:
            self.pipe = pipe

        def __getattr__(self, name: str) -> Any:
            return getattr(self.pipe, name)

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            if lost[0]:
                raise redis.ConnectionError("Error 111 connecting to the target. Connection refused.")
            return self.pipe.execute(*args, **kwargs)

    class MoverClient(real_redis):  # the real client; its link to the target can drop
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            if lost[0] and self.connection_pool.connection_kwargs["port"] == target_port:
                raise redis.ConnectionError("Error 111 connecting to the target. Connection refused.")
            return super().execute_command(*args, **kwargs)

        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            pipe = super().pipeline(*args, **kwargs)
            return Pipe(pipe) if self.connection_pool.connection_kwargs["port"] == target_port else pipe

    copy = reshard._copy_slot

    def link_drops(*args: Any, **kwargs: Any) -> int:
        lost[0] = True
        return copy(*args, **kwargs)

    monkeypatch.setattr(redis, "Redis", MoverClient)
    monkeypatch.setattr(reshard, "_copy_slot", link_drops)
    raised: BaseException | None = None
    try:
        move_namespace(settings, to, pause_ms=20_000)
    except BaseException as exc:  # noqa: BLE001 - checked below
        raised = exc
    monkeypatch.setattr(redis, "Redis", real_redis)
    lost[0] = False
    try:
        try:
            _writes_at_once(source, namespace)  # first: does the source take writes?
            paused = None
        except redis.RedisError as exc:
            paused = exc
        problems = []
        if paused is not None:
            problems.append(f"the source still pauses its writes after the move failed: {paused!r}")
        if not (isinstance(raised, ReshardError) and "nothing moved" in str(raised)):
            problems.append(f"the move raised {raised!r}, not a ReshardError saying nothing moved")
        assert not problems, "; ".join(problems)
        assert _keys(source, slot) == keys_before
    finally:
        _wait_writable(source, namespace, 25)
        if _slot_owner_port(cluster, namespace) != target_port:
            _clean_target_as_told(target, slot)
        with ValkeyStore(settings) as store:
            assert store.count() == 20


@pytest.mark.parametrize("answer", ["lost", "refused"])
def test_a_hand_over_whose_reply_is_lost_or_refused_ends_as_what_the_cluster_did(
    cluster_plain_server, namespace, monkeypatch, answer
) -> None:
    """``SETSLOT NODE`` on the target runs but its reply never comes back (the link
    drops just after it): the slot is the target's, so the move must finish and report
    it, not raise a raw connection error half-way. Or the target refuses it (an error
    reply, the slot not taken): the move must fail saying nothing moved, and the source
    take writes again."""
    cluster = cluster_plain_server
    settings = _settings(cluster, namespace)
    with ValkeyStore(settings) as store:
        store.save(_records(12, DIM))
    source, _, slot, to = _where(cluster, namespace)
    keys_before = _keys(source, slot)
    target_port = int(to.rsplit(":", 1)[1])
    real_redis = redis.Redis

    class MoverClient(real_redis):  # the real client; one reply is lost or refused
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            handover = args[:2] == ("CLUSTER", "SETSLOT") and len(args) > 3 and args[3] == "NODE"
            if handover and self.connection_pool.connection_kwargs["port"] == target_port:
                if answer == "refused":
                    raise redis.ResponseError("ERR I refuse the slot")
                super().execute_command(*args, **kwargs)
                raise redis.ConnectionError("Connection reset by peer (the reply is lost)")
            return super().execute_command(*args, **kwargs)

    monkeypatch.setattr(redis, "Redis", MoverClient)
    try:
        if answer == "lost":
            report = move_namespace(settings, to, pause_ms=PAUSE_MS)
        else:
            with pytest.raises(ReshardError, match="nothing moved: ERR I refuse the slot"):
                move_namespace(settings, to, pause_ms=PAUSE_MS)
    finally:
        monkeypatch.setattr(redis, "Redis", real_redis)
    if answer == "lost":
        assert report.keys == keys_before and _slot_owner_port(cluster, namespace) == target_port
    else:
        assert _slot_owner_port(cluster, namespace) != target_port
        assert _keys(source, slot) == keys_before
        _writes_at_once(source, namespace)
    _wait_writable(source, namespace, 25)
    with ValkeyStore(settings) as store:
        assert store.count() == 12


# ----------------------------------------------------------------------------- targets
def test_a_replica_or_the_owner_as_target_moves_nothing_and_names_the_problem(cluster_plain_server, namespace) -> None:
    cluster = cluster_plain_server
    _seed(cluster, namespace, 5)
    settings = _settings(cluster, namespace)
    source, _, slot, _ = _where(cluster, namespace)
    keys_before = _keys(source, slot)
    replica = cluster.nodes[cluster.primaries]  # a replica of the first primary
    assert redis.Redis(port=replica.port).execute_command("ROLE")[0] == b"slave"
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{replica.port}' is not a primary .*primaries: 127.0.0.1:"):
        move_namespace(settings, f"127.0.0.1:{replica.port}")
    replica_id = redis.Redis(port=replica.port).execute_command("CLUSTER", "MYID")
    with pytest.raises(ConfigError, match="is not a primary"):
        move_namespace(settings, replica_id.decode() if isinstance(replica_id, bytes) else replica_id)
    owner = f"127.0.0.1:{source.connection_pool.connection_kwargs['port']}"
    same = move_namespace(settings, owner)
    assert (same.source, same.target, same.keys, same.paused_ms) == (owner, owner, 0, 0.0)
    assert _keys(source, slot) == keys_before
    _writes_at_once(source, namespace)


def test_a_namespace_with_hash_tag_characters_is_refused_before_anything_is_touched(cluster_plain_server) -> None:
    for bad in ("a{b}", "{x}", "a}b", "a{", "ns:x"):
        with pytest.raises(ConfigError, match="namespace may contain only"):
            move_namespace(Settings.from_url(cluster_plain_server.url, namespace=bad), "127.0.0.1:1")


# ----------------------------------------------------------------------------- slot contents
def _twin(namespace: str) -> str:
    """Another valid namespace whose tag hashes to the same slot."""
    slot = key_slot(tag(namespace).encode())
    i = 0
    while True:
        cand = f"twin{i}"
        if key_slot(tag(cand).encode()) == slot and cand != namespace:
            return cand
        i += 1


def test_a_namespace_sharing_the_slot_moves_with_it_and_is_named(cluster, namespace) -> None:
    twin = _twin(namespace)
    _seed(cluster, namespace, 12)
    _seed(cluster, twin, 15)
    if cluster.module:
        with ValkeyStore(_settings(cluster, twin)) as store:
            store.ensure_index(60)  # its index on the source: the mover finds it
    source, target, slot, to = _where(cluster, namespace)
    try:
        report = move_namespace(_settings(cluster, namespace), to)
        assert _keys(source, slot) == 0
        if cluster.module:
            assert report.also_moved == (twin,)  # documented: named when it has an index
            assert f"{tag(twin)}:idx".encode() in target.execute_command("FT._LIST")
            assert f"{tag(twin)}:idx".encode() not in source.execute_command("FT._LIST")
        else:
            assert report.also_moved == ()  # documented: nothing lists them without a module
        _usable(cluster, twin, 15)
        _usable(cluster, namespace, 12)
    finally:
        with ValkeyStore(_settings(cluster, twin)) as store:
            store.reset()


def test_a_slot_of_many_keys_with_ttls_moves_whole_keeping_each_expiry(cluster, namespace, fake, workers) -> None:  # noqa: F811
    """More keys than one copy chunk (500), half of another application's keys with a
    TTL (kept to the millisecond, docs/scaling.md step 2), one that expires during the
    move is not created; then a worker drains the queued job on the new shard."""
    other = _seed(cluster, namespace, 40, other_app=1_200)
    rc = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        rc.set(f"app:{tag(namespace)}:short", "gone soon", px=300)
    finally:
        rc.close()
    source, target, slot, to = _where(cluster, namespace)
    keys_before = _keys(source, slot)
    time.sleep(0.4)  # the short key is due (may still be in the keyspace, unswept)
    report = move_namespace(_settings(cluster, namespace), to)
    assert report.keys in (keys_before, keys_before - 1)
    assert _keys(source, slot) == 0
    assert _keys(target, slot) == report.keys
    assert _other_app_now(cluster, list(other)) == other  # values and PEXPIRETIMEs
    assert redis.Redis(port=target.connection_pool.connection_kwargs["port"]).execute_command(
        "PEXPIRETIME", f"app:{tag(namespace)}:short") == -2  # fmt: skip
    settings = _settings(cluster, namespace)
    workers(settings, threads=2)
    with MemoryQueue(settings, producer_id="seed") as q:
        job, ids = q.enqueue_encode_job([{"id": "own-write", "text": "mine", "scope": "/q"}])
        drained = q.drain_all(timeout=60)
        assert drained.lost == [] and drained.failed == []
    with ValkeyStore(settings) as store:
        assert store.get_record("own-write") is not None
        assert store.count() == 40 + 2  # the seed's queued job committed too


def test_langgraph_ttl_items_keep_their_expiry_across_a_move(cluster_plain_server, namespace) -> None:
    from test_langgraph import DIM, WordEmbedder  # noqa: F401

    from memworker import worker as worker_mod
    from memworker.langgraph import QueuedStore

    cluster = cluster_plain_server
    settings = _settings(cluster, namespace)
    worker_mod.set_embedder_factory(WordEmbedder)
    ctx = worker_mod.running_worker(settings, threads=2, min_backoff_ms=10, max_backoff_ms=50, max_retries=3,
                                    worker_timeout_ms=100)  # fmt: skip
    try:
        ctx.__enter__()
    except BaseException:
        worker_mod.set_embedder_factory(None)  # a failed start must not leak into later tests
        raise
    try:
        lg = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]},
                         ttl={"refresh_on_read": False})  # fmt: skip
        try:
            lg.put(("u",), "short", {"text": "apple"}, ttl=60)
            lg.put(("u",), "forever", {"text": "pear"}, ttl=None)
            before = lg.get(("u",), "short")
            assert before is not None
            rc = RedisCluster(host="127.0.0.1", port=cluster.port)
            expiry_key = f"{tag(namespace)}:expiry"
            scores_before = dict(rc.zrange(expiry_key, 0, -1, withscores=True))
            assert len(scores_before) == 1  # the TTL item's expiry, not the forever one
            _, _, _, to = _where(cluster, namespace)
            move_namespace(settings, to)
            scores_after = dict(rc.zrange(expiry_key, 0, -1, withscores=True))
            rc.close()
            assert scores_after == scores_before
            after = lg.get(("u",), "short")
            assert after is not None and after.value == {"text": "apple"}
            assert [i.key for i in lg.search(("u",), query="apple", limit=1)] == ["short"]
            assert lg.get(("u",), "forever").value == {"text": "pear"}
        finally:
            lg.store.reset()
            lg.close()
    finally:
        ctx.__exit__(None, None, None)
        worker_mod.set_embedder_factory(None)


def test_producers_and_a_worker_during_a_move_lose_nothing_and_read_their_writes(
    cluster, namespace, fake, workers  # noqa: F811
) -> None:
    """Two producers enqueue and drain their own jobs in a loop while in-process
    workers commit and ``memworker reshard`` moves the namespace: no job lost, failed
    or committed twice, every drain's records readable when it returns, searches
    answer on the new shard."""
    import threading


    settings = _settings(cluster, namespace)
    workers(settings, threads=2)
    stop = threading.Event()
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    def producer(name: str) -> None:
        mine = out[name] = {"ids": [], "committed": 0}
        with MemoryQueue(settings, producer_id=name) as q:
            n = 0
            while not stop.is_set() or n < 6:
                batch = []
                for _ in range(3):
                    rid = f"{name}-{n}"
                    job, _ids = q.enqueue_encode_job([{"id": rid, "text": f"{name} says {n}", "scope": "/p"}])
                    batch.append(job)
                    mine["ids"].append(rid)
                    n += 1
                try:
                    report = q.drain(timeout=60, job_ids=batch)
                except MemworkerError as exc:
                    problems.append(f"{name}: drain raised {exc!r}")
                    continue
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{name}: drain raised a non-memworker error {exc!r}")
                    continue
                mine["committed"] += report.committed
                if report.lost or report.failed:
                    problems.append(f"{name}: lost={report.lost} failed={report.failed}")
                with ValkeyStore(settings) as store:
                    unread = [r for r in mine["ids"][-3:] if store.get_record(r) is None]
                if unread:
                    problems.append(f"{name}: drain returned before {unread} were readable")

    threads = [threading.Thread(target=producer, args=(p,), daemon=True) for p in ("pa", "pb")]
    for t in threads:
        t.start()
    time.sleep(1.0)
    source, target, slot, to = _where(cluster, namespace)
    report = move_namespace(settings, to)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a producer hung"
    assert report.keys > 0 and _keys(source, slot) == 0
    assert problems == []
    ids = [r for o in out.values() for r in o["ids"]]
    assert [o["committed"] for o in out.values()] == [len(o["ids"]) for o in out.values()]
    with ValkeyStore(settings) as store:
        assert store.count() == len(ids) == len(set(ids))  # none lost, none twice
        assert [r for r in ids if store.get_record(r) is None] == []
    with MemoryQueue(settings, producer_id="check") as q:
        assert q.status()["depth"] == 0
