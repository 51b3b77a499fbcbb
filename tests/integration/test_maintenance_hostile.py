"""Hostile review of the two maintenance paths (a review of 2026-12-05), on real
servers: ``memworker migrate`` (memworker/layout.py: layout-1 keys ``ns:...`` moved to
``{ns}:...``) and the workers' sweep (memworker/worker/sweep.py, ``lua/store.lua
sweep``: TTL expiries, retention policies, tombstones).

Migrate: an interrupted migration must never leave a namespace that the current
version serves half-empty; a re-run and a second run finish or do nothing; ``--dry-run``
writes nothing and foresees what stops the real run; corrupt layout-1 data moves as it
is; namespaces that are prefixes of each other stay apart.

Sweep: each step is one bounded script call (tombstones too); one corrupt value
(a retention policy, a record's expiry, the interval in ``{ns}:meta``) must not stop
every sweep of the namespace; retention of nested scopes, fractional and huge days.

Not duplicated here: tests/integration/test_layout.py, test_retention.py,
test_langgraph_ttl_races.py, test_store_versions.py, test_key_isolation_hostile.py,
test_hostile_admin.py.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from memworker import ValkeyStore
from memworker.cli import main
from memworker.errors import ConfigError
from memworker.keys import Keys
from memworker.layout import LayoutError, legacy_keys, migrate
from memworker.queue.producer import MemoryQueue
from memworker.records import utcnow
from memworker.store.validate import MAX_SWEEP_MS
from memworker.worker.sweep import MAX_STEPS, SWEEP_STEP, Sweeper

DAY_MS = 86_400_000


# --------------------------------------------------------------------------- helpers


def _rec(rid: str, scope: str = "/crew", **extra: Any) -> dict[str, Any]:
    out = {"id": rid, "content": f"memory {rid}", "scope": scope, "categories": ["c"],
           "embedding": [1.0, 0.0]}  # fmt: skip
    out.update(extra)
    return out


def _make_layout_1(server: Any, raw: Any, namespace: str, n: int = 12, queued: bool = True) -> None:
    """A namespace as layout 1 wrote it (as test_layout.py builds it): the same keys
    without the hash tag, ``layout`` 1 in its meta hash, a queued job."""
    store = ValkeyStore(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    store.save([_rec(f"r{i}", scope=f"/crew/{i % 3}") for i in range(n)])
    store.close()
    if queued:
        queue = MemoryQueue(server.url, namespace=namespace, producer_id="p")
        queue.enqueue_encode(["a queued text"])
        queue.close()
    keys = Keys(namespace)
    if server.module:
        raw.execute_command("FT.DROPINDEX", keys.index)
    for key in list(raw.scan_iter(match=keys.prefix + ":*")):
        raw.rename(key, namespace + key.decode()[len(keys.prefix) :])
    raw.hset(f"{namespace}:meta", "layout", "1")


def _old(raw: Any, namespace: str) -> list[str]:
    return sorted(k.decode() for k in raw.scan_iter(match=namespace + ":*"))


def _new(raw: Any, namespace: str) -> list[str]:
    return sorted(k.decode() for k in raw.scan_iter(match="{" + namespace + "}:*"))


def _snapshot(raw: Any) -> dict[bytes, tuple[Any, int]]:
    """Every key of the server with its serialized value and whether it has a TTL, but
    keys due to expire within 2 minutes (other tests' drain claim answers, 60 s, and
    health keys, 5 s, on the shared server: they vanish between two snapshots)."""
    out = {}
    for k in raw.scan_iter(count=1000):
        ttl = raw.pttl(k)
        if ttl == -1 or ttl > 120_000:
            out[k] = (raw.dump(k), ttl > 0)
    return out


def _script_calls(raw: Any) -> int:
    stats = raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha", "fcall"))


@pytest.fixture(autouse=True)
def _wipe(request):
    """Delete what a test left of its namespace in either layout (failing tests stop
    half way, with layout-1 keys the store's reset does not see)."""
    if "raw" not in request.fixturenames or "namespace" not in request.fixturenames:
        yield
        return
    raw, namespace = request.getfixturevalue("raw"), request.getfixturevalue("namespace")
    yield
    for pattern in (namespace + ":*", "{" + namespace + "}:*"):
        keys = list(raw.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            raw.delete(*keys[start : start + 1000])


@pytest.fixture
def raw_store(server, namespace):
    store = ValkeyStore(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    yield store
    try:
        store.reset()
    except Exception:  # noqa: BLE001
        pass
    store.close()


# =========================================================================== migrate


def test_an_interrupted_migration_is_refused_not_served_half_empty(server, raw, namespace) -> None:
    """``migrate`` renames keys in SCAN order, 500 per pipeline, and writes ``layout``
    2 into the new meta hash only at the very end (memworker/layout.py:129-147). A
    migration interrupted between two chunks (Ctrl-C, a lost connection, a conflict
    that raises in a later chunk) leaves some keys in each layout. The layout check
    (``p_refuse_legacy``, layout.py:58-68, ``_PROBES`` line 34) only probes five layout-1 keys (meta,
    tree:/, producers, dq:default(.msgs)): once those moved, a store, queue and
    worker serve the half-moved namespace without a word, showing fewer records than
    it holds; their writes then create ``{ns}:`` keys that the re-run finds "in both
    layouts" and stops on.

    Simulated here as an interrupted run leaves it: the probes (and the meta hash,
    still ``layout`` 1) moved, two scopes' records and trees not yet. Expected: the
    store refuses with :class:`LayoutError` (e.g. also refuse when ``{ns}:meta``
    says ``layout`` 1, which only the last step of ``migrate`` changes; and/or rename
    the probe keys last)."""
    _make_layout_1(server, raw, namespace, n=12)
    probes = set(legacy_keys(namespace)) | {f"{namespace}:meta"}
    for key in _old(raw, namespace):
        left_behind = key.endswith(("/crew/1", "/crew/2")) or (
            key.startswith(f"{namespace}:rec:") and int(key.rsplit("r", 1)[1]) % 3 != 0
        )
        if key in probes or not left_behind:
            raw.rename(key, "{" + namespace + "}:" + key[len(namespace) + 1 :])
    assert raw.hget("{" + namespace + "}:meta", "layout") == b"1"  # what migrate leaves until its end
    assert any(k.startswith(f"{namespace}:rec:") for k in _old(raw, namespace))  # 8 records still old
    store = ValkeyStore(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    try:
        with pytest.raises(LayoutError):
            n = store.count()
            seen = [r.id for r in store.list_records("/crew", limit=100)]
            pytest.fail(
                f"a half-migrated namespace was served: count() == {n} but {len(seen)} of the "
                f"12 records are listed ({sorted(seen)})"
            )
    finally:
        store.close()


def test_a_rerun_after_an_interruption_and_a_second_run_lose_nothing(server, raw, namespace) -> None:
    """A migration interrupted before its probes moved (some keys already ``{ns}:``)
    is finished by a re-run; a third run moves nothing and changes nothing."""
    _make_layout_1(server, raw, namespace, n=12)
    before = _old(raw, namespace)
    for key in before:
        if key.startswith(f"{namespace}:rec:") or key.startswith(f"{namespace}:children:"):
            raw.rename(key, "{" + namespace + "}:" + key[len(namespace) + 1 :])
    moved_already = len(_new(raw, namespace))
    report = migrate(raw, namespace)
    assert report.renamed == len(before) - moved_already
    assert _old(raw, namespace) == []
    assert _new(raw, namespace) == sorted("{" + namespace + "}" + k[len(namespace) :] for k in before)
    snap = _snapshot(raw)
    again = migrate(raw, namespace)
    assert again.renamed == 0 and not again.index_dropped
    assert _snapshot(raw) == snap
    with ValkeyStore(server.url, namespace=namespace, search_mode="module" if server.module else "exact") as store:
        assert store.count() == 12
        assert sorted(r.id for r in store.list_records("/crew", limit=100)) == sorted(f"r{i}" for i in range(12))
        store.reset()


def test_two_concurrent_migrations_both_succeed_and_lose_nothing(server, raw, namespace) -> None:
    """Two ``memworker migrate`` runs at once (two operators, a deploy hook run on two
    hosts): each SCANs the whole namespace, then RENAMENXes the keys it listed. A key
    the other run moved in between is gone: RENAMENX answers "no such key" and the run
    aborts with ``ConfigError("could not rename ...")`` (layout.py:138-139), leaving
    the namespace half moved if the other run did not finish, and telling the
    operator something is wrong when nothing is. Expected: a key listed but no
    longer there (moved by a concurrent run) is skipped; both runs succeed and every
    key ends in layout 2."""
    _make_layout_1(server, raw, namespace, n=3, queued=False)
    # many small keys, so the two SCAN + RENAMENX passes overlap
    with raw.pipeline(transaction=False) as pipe:
        for i in range(6000):
            pipe.set(f"{namespace}:cache:k{i}", "v")
        pipe.execute()
    total = len(_old(raw, namespace))
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        import valkey

        client = valkey.Valkey(host="127.0.0.1", port=server.port)
        try:
            barrier.wait()
            migrate(client, namespace)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _old(raw, namespace) == [] or errors
    assert len(_new(raw, namespace)) + len(_old(raw, namespace)) == total  # nothing lost either way
    assert errors == [], f"a concurrent migrate failed: {errors[0]!r}"
    assert len(_new(raw, namespace)) == total


def test_dry_run_writes_nothing_anywhere(server, raw, namespace, capsys) -> None:
    """``migrate --dry-run`` on layout-1 data with a layout-1 index (module server):
    every key of the server, value and TTL, and the index list are as before."""
    _make_layout_1(server, raw, namespace, n=5)
    raw.set(f"{namespace}:sweep", "w", px=600_000)  # a key with a TTL
    if server.module:
        raw.execute_command("FT.CREATE", f"{namespace}:idx", "ON", "HASH", "PREFIX", "1",
                            f"{namespace}:rec:", "SCHEMA", "content", "TEXT")  # fmt: skip
    indexes = sorted(raw.execute_command("FT._LIST")) if server.module else None
    snap = _snapshot(raw)
    assert main(["--url", server.url, "--namespace", namespace, "migrate", "--dry-run"]) == 0
    assert "would move" in capsys.readouterr().out
    assert _snapshot(raw) == snap
    if server.module:
        assert sorted(raw.execute_command("FT._LIST")) == indexes
    migrate(raw, namespace)  # leave nothing behind for the next test
    with ValkeyStore(server.url, namespace=namespace) as store:
        store.reset()


def test_dry_run_foresees_a_key_in_both_layouts(server, raw, namespace, capsys) -> None:
    """``--dry-run`` reports "would move N key(s)" and exits 0 on a namespace whose
    real run stops at once with "exists in both layouts" (layout.py:130-145: the dry
    run never looks at the ``{ns}:`` names). The operator's rehearsal says all is
    well; the migration fails in the maintenance window. Expected: the dry run
    names the keys that exist in both layouts (and exits non-zero), as the real run
    would."""
    _make_layout_1(server, raw, namespace, n=3)
    raw.set("{" + namespace + "}:stats", "written by a newer worker")
    raw.hset(f"{namespace}:stats", "committed", "1")
    code = main(["--url", server.url, "--namespace", namespace, "migrate", "--dry-run"])
    captured = capsys.readouterr()
    try:
        assert code != 0 or "both layouts" in captured.out + captured.err, (
            f"dry run exit {code}: {captured.out.strip()!r}"
        )
    finally:
        with pytest.raises(ConfigError, match="both layouts"):
            migrate(raw, namespace)


def test_migrate_of_a_namespace_leaves_its_prefix_siblings_alone(server, raw) -> None:
    """Namespaces ``a``, ``a.b``, ``a-b``, ``a_b`` and ``ab`` all in layout 1:
    migrating ``a`` moves ``a:...`` only; the others stay in layout 1, untouched, and
    are still refused (so they get their own migration)."""
    base = f"m{time.time_ns() % 10**9}"
    names = [base, f"{base}.b", f"{base}-b", f"{base}_b", f"{base}b"]
    for name in names:
        _make_layout_1(server, raw, name, n=3)
    others = {name: {k: raw.dump(k) for k in _old(raw, name)} for name in names[1:]}
    report = migrate(raw, base)
    assert report.renamed == len(_new(raw, base))
    assert _old(raw, base) == []
    for name, keys in others.items():
        assert {k: raw.dump(k) for k in _old(raw, name)} == keys
        assert _new(raw, name) == []
        with ValkeyStore(server.url, namespace=name) as s, pytest.raises(LayoutError):
            s.count()
    with ValkeyStore(server.url, namespace=base, search_mode="module" if server.module else "exact") as s:
        assert s.count() == 3
        s.reset()
    for name in names[1:]:
        migrate(raw, name)
        with ValkeyStore(server.url, namespace=name) as s:
            s.reset()


def test_corrupt_layout_1_data_moves_as_it_is_and_the_sweep_copes(server, raw, namespace) -> None:
    """Layout-1 data with a record hash missing most fields, tree/expiry entries of
    a record that does not exist and a due expiry: migrate moves every key
    byte for byte, and the store's count and sweep work on the result."""
    _make_layout_1(server, raw, namespace, n=6, queued=False)
    now = int(time.time() * 1000)
    raw.hset(f"{namespace}:rec:bare", mapping={"content": "no scope, no created_at"})
    raw.zadd(f"{namespace}:tree:/", {"ghost": 1.0})
    raw.zadd(f"{namespace}:tree:/crew", {"ghost": 1.0})
    raw.zadd(f"{namespace}:expiry", {"ghost": now - 1000})
    values = {k[len(namespace) :]: raw.dump(k) for k in _old(raw, namespace)}
    migrate(raw, namespace)
    moved = {k[len(namespace) + 2 :]: raw.dump(k) for k in _new(raw, namespace)}
    assert {k: v for k, v in moved.items() if k != ":meta"} == {k: v for k, v in values.items() if k != ":meta"}
    with ValkeyStore(server.url, namespace=namespace, search_mode="module" if server.module else "exact") as store:
        store.sweep(limit=10)
        assert raw.zscore(store.keys.expiry, "ghost") is None
        assert sorted(r.id for r in store.list_records("/crew", limit=100)) == [f"r{i}" for i in range(6)]
        store.reset()


# ============================================================================= sweep


def test_a_sweep_step_trims_at_most_limit_tombstones(raw_store, raw) -> None:
    """The tombstone trim is ``ZREMRANGEBYSCORE {ns}:tomb -inf (before`` with no
    limit (lua/store.lua:566): one sweep step removes EVERY tombstone older than 7
    days in one atomic call. Every expired versioned item and every versioned delete
    leaves one, so a namespace that expired 100k LangGraph items trims 100k entries in
    one script call a week later, holding the server for all of them, against the
    design's "each step one atomic script call of at most 500 records"
    (docs/design.md:772-775). Shown with 4,000 tombstones and ``limit=500``.
    Expected: at most ``limit`` tombstones per step (``ZRANGEBYSCORE ... LIMIT 0
    limit`` + ``ZREM``), and the Sweeper takes another step while a step trimmed
    ``limit`` (memworker/worker/sweep.py:107)."""
    store = raw_store
    now = int(time.time() * 1000)
    store.delete_versioned([(f"k{i}", now * 1000) for i in range(4000)])  # 4,000 versioned deletes now
    assert raw.zcard(store.keys.tomb) == 4000
    got = store.sweep(limit=500, now_ms=now + 8 * DAY_MS)  # a week and a day later
    assert got["tombs"] <= 500, f"one sweep step trimmed {got['tombs']} tombstones (limit 500)"


def test_one_corrupt_retention_policy_does_not_stop_every_sweep(raw_store, raw) -> None:
    """A retention value the Lua cannot read as a number (written by hand, by a
    tool, ``HSET {ns}:retention /x 30d``) makes ``tonumber(...)`` nil and the whole
    ``sweep`` script fail (lua/store.lua:551 arithmetic on nil) - before or after
    the TTL part, the step's deletes are one script: nothing is ever swept again,
    expired items and other scopes' retention included, and ``memworker retention
    list`` fails too (delete.py:100 ``float()``). Expected: the bad policy is
    skipped (and reported); due records are still deleted."""
    store = raw_store
    now = int(time.time() * 1000)
    store.save([_rec("due", scope="/lg", ver=1, exp=now - 1000), _rec("fresh", scope="/lg", ver=1, exp=now + DAY_MS)])
    raw.hset(store.keys.retention, "/x", "30d")
    try:
        got = store.sweep(limit=100)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"one unreadable retention policy failed the whole sweep: {exc!r}")
    assert got["expired"] == 1
    assert store.get_record("due") is None and store.get_record("fresh") is not None


def test_one_record_with_an_unreadable_expiry_does_not_stop_every_sweep(raw_store, raw) -> None:
    """A record hash whose ``exp`` is not a number (corrupt data, e.g. moved as it is
    by ``migrate``) while its ``{ns}:expiry`` entry is due: ``tonumber(exp) <=
    tonumber(now)`` compares nil (lua/store.lua:536) and the whole sweep script
    fails, at every sweep, for good: no expiry and no retention of the namespace
    runs again. Expected: the entry is dropped (or the record treated as due) and the
    rest is swept."""
    store = raw_store
    now = int(time.time() * 1000)
    store.save([_rec("due", scope="/lg", ver=1, exp=now - 2000), _rec("bad", scope="/lg", ver=1, exp=now - 3000)])
    raw.hset(store.keys.rec("bad"), "exp", "soon")
    try:
        got = store.sweep(limit=100)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"one record's unreadable exp failed the whole sweep: {exc!r}")
    assert got["expired"] >= 1
    assert store.get_record("due") is None


@pytest.mark.parametrize("raw_ms", [str(10**15), str(10**20)])
def test_the_sweep_lock_never_outlives_the_longest_interval(raw_store, raw, raw_ms) -> None:
    """``Sweeper.interval_ms`` takes ``{ns}:meta`` ``sweep_ms`` as it is
    (sweep.py:90-96, used at line 100): only the store's setter caps it at a day (MAX_SWEEP_MS). A
    larger value (written by hand, by an older version, moved by ``migrate``) is used
    as the lock's PX: ``10**15`` ms holds the lock ~31,000 years (no sweep of the
    namespace again, the very thing the cap is for); ``10**20`` is past SET's limit
    and ``maybe_sweep`` raises at every beat (no sweep either). Expected: the
    interval is clamped to MAX_SWEEP_MS (or the default used) and the sweep runs."""
    from memworker.io.redispy import redis_client

    store = raw_store
    raw.hset(store.keys.meta, "sweep_ms", raw_ms)
    client = redis_client(store.settings)
    try:
        sweeper = Sweeper(store, client, store.keys.namespace, "w1")
        try:
            got = sweeper.maybe_sweep()
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"sweep_ms={raw_ms} made every sweep fail: {exc!r}")
        assert got is not None
        assert 0 < raw.pttl(store.keys.sweep) <= MAX_SWEEP_MS
    finally:
        client.close()


def test_overlapping_policies_the_shorter_applies_and_the_cli_says_so(raw_store, server, namespace, capsys) -> None:
    """Policies ``/`` 30 days and ``/keep`` 3,650 days: each applies to its scope and
    below, so ``/``'s 30 days delete ``/keep``'s 40-day-old records too (the rule is
    "where policies overlap, the shorter one applies", docs/langgraph.md; a most
    specific rule would let the oldest protected records stall the parent's sweep
    steps). ``memworker retention set`` warns when it sets an overlapping policy that
    loses or wins, in both orders."""
    from memworker.cli import main

    store = raw_store
    old = utcnow() - timedelta(days=40)
    store.save([_rec("kept", scope="/keep/a", created_at=old), _rec("gone", scope="/other", created_at=old)])
    base = ["--url", server.url, "--namespace", namespace, "retention", "set"]
    assert main([*base, "/", "--days", "30"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*base, "/keep", "--days", "3650"]) == 0
    err = capsys.readouterr().err
    assert "/'s 30 day(s) also cover /keep" in err and "the shorter one applies" in err
    assert main([*base, "/", "--days", "20"]) == 0
    assert "/keep's 3650 day(s) no longer apply" in capsys.readouterr().err
    store.sweep(limit=100)
    assert store.get_record("gone") is None and store.get_record("kept") is None


def test_the_shorter_policy_on_a_subscope_applies_under_a_longer_parent(raw_store) -> None:
    """``/`` 90 days and ``/scratch`` 1 day: a 2-day-old scratch record goes, a
    2-day-old record elsewhere stays."""
    store = raw_store
    two = utcnow() - timedelta(days=2)
    store.save([_rec("s", scope="/scratch/x", created_at=two), _rec("o", scope="/other", created_at=two)])
    store.set_retention("/", 90)
    store.set_retention("/scratch", 1)
    assert store.sweep(limit=100)["retained"] == 1
    assert store.get_record("s") is None and store.get_record("o") is not None


def test_fractional_tiny_and_huge_retention_days(raw_store) -> None:
    """0.5 days deletes a 13-hour-old record and keeps an 11-hour-old one; 1e-9 days
    (accepted: above 0) deletes everything created before now and nothing after;
    36,500 days keeps a 1970 record and deletes a 1900 one (negative timestamps)."""
    from datetime import datetime

    store = raw_store
    now = utcnow()
    store.save([
        _rec("h13", scope="/half", created_at=now - timedelta(hours=13)),
        _rec("h11", scope="/half", created_at=now - timedelta(hours=11)),
        _rec("past", scope="/tiny", created_at=now - timedelta(seconds=5)),
        _rec("future", scope="/tiny", created_at=now + timedelta(hours=1)),
        _rec("y1970", scope="/huge", created_at=datetime(1970, 1, 2)),
        _rec("y1900", scope="/huge", created_at=datetime(1900, 1, 2)),
    ])  # fmt: skip
    store.set_retention("/half", 0.5)
    store.set_retention("/tiny", 1e-9)
    store.set_retention("/huge", 36_500)
    assert store.retention() == {"/half": 0.5, "/tiny": 1e-9, "/huge": 36_500.0}
    assert store.sweep(limit=100)["retained"] == 3
    assert sorted(r.id for r in store.list_records("/", limit=100)) == ["future", "h11", "y1970"]


def test_a_record_resaved_after_its_expiry_is_not_swept(raw_store) -> None:
    """A record due in ``{ns}:expiry`` but re-saved since (with a later expiry, or
    without one) survives the sweep; its expiry entry follows the new row."""
    store = raw_store
    now = int(time.time() * 1000)
    store.save([_rec("a", scope="/lg", ver=1, exp=now - 5000), _rec("b", scope="/lg", ver=1, exp=now - 5000)])
    store.save([_rec("a", scope="/lg", ver=2, exp=now + DAY_MS), _rec("b", scope="/lg", ver=2)])
    got = store.sweep(limit=100)
    assert got["expired"] == 0
    assert store.get_record("a") is not None and store.get_record("b") is not None
    assert store.expiries(["a", "b"]) == [now + DAY_MS, None]


def test_a_big_backlog_is_swept_in_bounded_script_calls(own_plain_server, namespace) -> None:
    """12,000 due records (more than one sweep takes): one ``maybe_sweep`` makes at
    most MAX_STEPS (20) store script calls of SWEEP_STEP (500) records plus the
    producers' prune, deletes exactly 20 x 500, and the next sweep the rest; the
    side indexes end empty. (Counted with the server's own commandstats.)"""
    import valkey

    from memworker.io.redispy import redis_client

    raw = valkey.Valkey(host="127.0.0.1", port=own_plain_server.port)
    store = ValkeyStore(own_plain_server.url, namespace=namespace, search_mode="exact")
    client = redis_client(store.settings)
    try:
        now = int(time.time() * 1000)
        for start in range(0, 12_000, 2000):
            store.save([_rec(f"e{i}", scope=f"/lg/{i % 7}", ver=now * 1000, exp=now - 1000)
                        for i in range(start, start + 2000)])  # fmt: skip
        assert store.count() == 12_000
        raw.config_resetstat()
        sweeper = Sweeper(store, client, namespace, "w1")
        got = sweeper.maybe_sweep()
        calls = _script_calls(raw)
        assert got is not None and got["expired"] == MAX_STEPS * SWEEP_STEP
        assert calls <= MAX_STEPS + 1, f"{calls} script calls for one sweep"
        assert store.count() == 12_000 - MAX_STEPS * SWEEP_STEP
        client.delete(store.keys.sweep)
        assert sweeper.maybe_sweep()["expired"] == 12_000 - MAX_STEPS * SWEEP_STEP
        assert store.count() == 0
        assert raw.zcard(store.keys.expiry) == 0
        assert raw.exists(store.keys.tree("/"), store.keys.tree("/lg")) == 0
        assert raw.zcard(store.keys.tomb) == 12_000  # each swept versioned item left one
    finally:
        client.close()
        store.close()
        raw.close()


def test_stale_expiry_entries_do_not_end_a_sweep_before_the_due_records(own_plain_server, namespace) -> None:
    """``{ns}:expiry`` entries whose record is gone (evicted under ``maxmemory``,
    deleted by hand, moved as they were by ``migrate``) come first in the expiry
    index. A sweep step takes ``limit`` of them, ZREMs them and deletes nothing, so
    ``expired + retained < SWEEP_STEP`` and ``Sweeper.maybe_sweep`` stops after that
    one step (memworker/worker/sweep.py:107): the due records behind them wait for
    the next interval, and 100k stale entries hold every expiry of the namespace
    back 200 intervals (200 minutes at the default 60 s), though each sweep could
    take 20 steps. Expected: a step that consumed ``limit`` entries (deleted or
    dropped as stale) lets the Sweeper take the next step; here, one sweep deletes
    the 10 due records behind 1,200 stale entries."""
    import valkey

    from memworker.io.redispy import redis_client

    raw = valkey.Valkey(host="127.0.0.1", port=own_plain_server.port)
    store = ValkeyStore(own_plain_server.url, namespace=namespace, search_mode="exact")
    client = redis_client(store.settings)
    try:
        now = int(time.time() * 1000)
        raw.zadd(store.keys.expiry, {f"evicted{i}": now - 60_000 - i for i in range(1200)})
        store.save([_rec(f"due{i}", scope="/lg", ver=now * 1000, exp=now - 1000) for i in range(10)])
        got = Sweeper(store, client, namespace, "w1").maybe_sweep()
        assert got is not None
        assert raw.zcard(store.keys.expiry) == 0, f"{raw.zcard(store.keys.expiry)} expiry entries left"
        assert got["expired"] == 10 and store.count() == 0
    finally:
        client.close()
        store.close()
        raw.close()


def test_two_sweepers_whose_lock_expired_mid_sweep_delete_each_record_once(raw_store, raw) -> None:
    """The sweep lock is never extended: with a 1 ms interval it expires while a
    sweep still runs, and two workers sweep at once. Each step is one atomic script,
    so together they delete every due record once: the counts add up to the number
    due, and every side index (trees, children, categories, expiry) ends empty."""
    from memworker.io.redispy import redis_client

    store = raw_store
    now = int(time.time() * 1000)
    store.save([_rec(f"e{i}", scope=f"/lg/{i % 5}", ver=now * 1000, exp=now - 1000) for i in range(3000)])
    store.set_sweep_interval(1)
    totals: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(owner: str) -> None:
        client = redis_client(store.settings)
        try:
            sweeper = Sweeper(store, client, store.keys.namespace, owner)
            barrier.wait()
            for _ in range(200):
                got = sweeper.maybe_sweep()
                if got is not None:
                    totals.append(got["expired"])
                if store.count() == 0:
                    break
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(totals) == 3000
    assert store.count() == 0
    assert raw.zcard(store.keys.expiry) == 0
    assert [k for k in raw.scan_iter(match=store.keys.prefix + ":*")
            if b":tree:" in k or b":children:" in k or b":cats:" in k or b":rec:" in k] == []  # fmt: skip
