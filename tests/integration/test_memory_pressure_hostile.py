"""A hostile review of memworker on a Valkey that can lose data or refuse writes.

Not covered by test_queue.py (a sync ``enqueue_encode`` refused under ``maxmemory``),
test_store.py / test_retention.py / test_maintenance_hostile.py (index entries of an
evicted record hash), test_reshard.py (RESTORE refused), the chaos restart tests (AOF
and SIGKILL):

- an evicting ``maxmemory-policy`` (``allkeys-lru`` ...) with ``maxmemory`` set: is it
  detected by the worker at start, by a producer, by ``memworker check``? What does a
  drain do when a queued message is evicted while its pending mark survives?
- ``maxmemory`` reached under ``noeviction``: enqueues (async, grouped) refused with a
  clear error and nothing half-written; a worker started, or a commit made, while the
  server is full; a drain's claim while the server is full; recovery once memory frees;
- ``FLUSHALL`` behind the producer's and the worker's back.

Every test runs on a valkey-server of its own (``CONFIG SET`` changes never leak to
another test's server). Workers run in-process (:func:`memworker.worker.running_worker`)
with the deterministic :class:`FakeEmbedder` of test_worker.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from test_worker import _record, fake, workers  # noqa: F401

from memworker.errors import DrainTimeout, MemworkerError, QueueError
from memworker.keys import QueueKeys
from memworker.queue.admin import check_health
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from valkey_servers import raw_client, start_server, stop_server

EVICTING = "allkeys-lru"


@pytest.fixture
def srv() -> Iterator:
    """A plain valkey-server of this test alone (no persistence)."""
    server = start_server("plain")
    yield server
    stop_server(server)


@pytest.fixture
def raw(srv):
    client = raw_client(srv)
    yield client
    client.close()


@pytest.fixture
def settings(srv, namespace) -> Settings:
    return Settings.from_url(srv.url, namespace=namespace, search_mode="exact")


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _oom_errors(raw) -> int:
    return int(raw.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def _fill_until_evicted(raw, key: str, policy: str = EVICTING, touch: Callable[[], object] = lambda: None) -> None:
    """Make the server evict ``key`` the way it evicts under memory pressure: an
    evicting ``policy``, ``maxmemory`` a little above what the server uses, then filler
    keys until ``key`` went. ``touch`` runs before each filler write (reads that keep
    other keys fresh in the LRU clock, so an LRU policy takes the idle ``key`` first)."""
    raw.config_set("maxmemory-samples", 64)
    used = int(raw.info("memory")["used_memory"])
    raw.config_set("maxmemory", used + 2 * 1024 * 1024)
    raw.config_set("maxmemory-policy", policy)
    filler = b"x" * 8192
    for i in range(100_000):
        touch()
        raw.set(f"filler:{i}", filler)
        if not raw.exists(key):  # EXISTS does not touch the LRU clock
            break
    assert not raw.exists(key), "the filler never evicted the key"
    assert int(raw.info("stats")["evicted_keys"]) > 0


def _drain_in_background(q: MemoryQueue, raw, keys: QueueKeys) -> tuple[threading.Thread, dict]:
    """``q.drain(timeout=60)`` in a thread, once it waits (subscribed to producer p's
    done channel); its report (or error) lands in the dict."""
    out: dict = {}

    def drain() -> None:
        try:
            out["report"] = q.drain(timeout=60)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=drain)
    t.start()
    _wait_for(lambda: int(raw.pubsub_numsub(keys.producer("p").done_channel)[0][1]) > 0, "the drain")
    return t, out


# ------------------------------------------------------------------ evicting policies
def test_worker_refuses_to_start_on_an_evicting_maxmemory_policy(settings, raw, fake):  # noqa: F811
    """Defect: a worker starts and serves on a server with ``maxmemory`` set and an
    evicting ``maxmemory-policy`` (allkeys-lru), where queued messages, pending marks,
    failure records and committed records can vanish silently. deploy/README.md says
    "Valkey must never evict keys" but nothing checks it: the worker should refuse to
    start (as it does for a dimension mismatch), naming the policy."""
    from memworker import worker as worker_mod

    raw.config_set("maxmemory", 1024**3)
    raw.config_set("maxmemory-policy", EVICTING)
    started = None
    try:
        with pytest.raises(MemworkerError, match="maxmemory-policy"):
            started = worker_mod.running_worker(settings, threads=1, worker_timeout_ms=100)
            started.__enter__()
    finally:
        if started is not None:
            started.__exit__(None, None, None)


def test_check_reports_an_evicting_maxmemory_policy(srv, settings, raw, fake, workers, capsys):  # noqa: F811
    """Defect: ``memworker check`` (the health probe and the operator's first look)
    prints "ok" and exits 0 on a server whose ``maxmemory-policy`` evicts keys: the
    one setting that makes memworker lose saved memories silently goes unnoticed. It
    should fail (or at least warn) naming ``maxmemory-policy``."""
    from memworker.cli import main

    workers(settings, threads=1)
    _wait_for(lambda: check_health(settings), "the worker's health key")
    raw.config_set("maxmemory", 1024**3)
    raw.config_set("maxmemory-policy", EVICTING)
    code = main(["--url", srv.url, "--namespace", settings.namespace, "check", "--any"])
    out = capsys.readouterr()
    said = out.out + out.err
    assert "maxmemory-policy" in said or "evict" in said, (
        f"check exited {code} and said {said!r} on maxmemory-policy {EVICTING}"
    )


def test_producer_warns_about_an_evicting_maxmemory_policy(settings, raw, caplog):
    """Defect: a producer enqueues onto a server whose ``maxmemory-policy`` evicts, and
    the enqueue "returned, so it is committed or reported" promise silently stops
    holding. A producer should at least warn once (log or warning) naming the policy,
    or refuse with a MemworkerError."""
    raw.config_set("maxmemory", 1024**3)
    raw.config_set("maxmemory-policy", EVICTING)
    caplog.set_level(logging.WARNING)
    refused = None
    with warnings.catch_warnings(record=True) as caught, MemoryQueue(settings, producer_id="p") as q:
        warnings.simplefilter("always")
        try:
            q.enqueue_save([_record(1)])
        except MemworkerError as exc:
            refused = exc
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    said += [str(refused)] if refused is not None else []
    assert any("maxmemory-policy" in s or "evict" in s for s in said), (
        f"nothing said about maxmemory-policy {EVICTING}: {said!r}"
    )


def test_a_drain_waiting_for_an_evicted_message_names_the_cause(settings, raw, fake, workers):  # noqa: F811
    """The server evicts a queued message (its ``msgs`` hash and queue list) while the
    job's pending mark survives: no worker can ever run the job. Found: the drain's
    DrainTimeout blamed saturated workers ("0 message(s) queued ahead"). Now it says
    the messages are gone from the server (a pending job's message is always in the
    queue's or the delay queue's hash until its commit, so none at all means they went
    behind memworker's back). Known limit: the drain still waits its timeout (with
    ``timeout=None``, for ever): it cannot tell which messages went, so it reports
    none lost; workers refuse a server that may evict (test above)."""
    keys = QueueKeys(settings.namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_save([_record(1)])
        pending = keys.producer("p").pending
        _wait_for(lambda: int(raw.object("idletime", keys.msgs()) or 0) >= 2, "the message to idle")
        _fill_until_evicted(
            raw, keys.msgs(), touch=lambda: (raw.zscore(pending, job), raw.smembers(keys.producers))
        )
        assert raw.zscore(pending, job) is not None  # the pending mark survived
        # the operator notices and fixes the server; a worker is running
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", 0)
        workers(settings, threads=2)
        _wait_for(lambda: check_health(settings), "the worker's health key")
        with pytest.raises(DrainTimeout, match="gone from the server") as caught:
            q.drain(timeout=3)
        assert job in caught.value.job_ids and "saturated" not in str(caught.value)


def test_a_drain_waiting_on_jobs_whose_pending_marks_were_evicted_reports_them_lost(settings, raw):
    """Pins: a drain that snapshotted its jobs, whose pending set is then evicted
    (never committed), reports each of them lost; it neither hangs nor says committed."""
    keys = QueueKeys(settings.namespace)
    pending = keys.producer("p").pending
    with MemoryQueue(settings, producer_id="p") as q:
        jobs = [q.enqueue_save([_record(i)]) for i in range(3)]
        t, out = _drain_in_background(q, raw, keys)
        _fill_until_evicted(raw, pending, policy="allkeys-random")
        t.join(90)
        assert "error" not in out, out.get("error")
        report = out["report"]
        assert report.committed == 0 and sorted(report.lost) == sorted(jobs)


# ------------------------------------------------------------------ noeviction, full
def test_grouped_and_async_enqueues_refused_when_full_write_nothing(settings, raw):
    """Pins: with the server full (noeviction), enqueues sent together by threads
    sharing one queue (one grouped script call) and async enqueues each raise a
    QueueError naming maxmemory (an Exception, never a RuntimeError), and nothing of
    any of them is written: no message, queue entry, wake-up token or pending mark."""
    keys = QueueKeys(settings.namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        q.enqueue_save([_record(0)])
        raw.config_set("maxmemory", 1)
        try:
            errors: list[BaseException | None] = [None] * 8
            barrier = threading.Barrier(8)

            def one(i: int) -> None:
                barrier.wait()
                try:
                    q.enqueue_save([_record(i + 1)])
                except BaseException as exc:  # noqa: BLE001
                    errors[i] = exc

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

            async def a() -> BaseException | None:
                try:
                    await q.aenqueue_encode(["async, refused"])
                except BaseException as exc:  # noqa: BLE001
                    return exc
                finally:
                    await q.aclose()
                return None

            errors.append(asyncio.run(a()))
        finally:
            raw.config_set("maxmemory", 0)
        for exc in errors:
            assert isinstance(exc, QueueError) and not isinstance(exc, RuntimeError), repr(exc)
            assert "maxmemory" in str(exc)
        assert raw.llen(keys.q()) == 1 and raw.hlen(keys.msgs()) == 1
        assert raw.llen(keys.wake()) == 1 and raw.zcard(keys.producer("p").pending) == 1


def test_a_commit_refused_for_memory_is_retried_and_commits_once_memory_frees(settings, raw, fake, workers):  # noqa: F811
    """Pins: the server fills up (noeviction) after a worker fetched a job and before
    its commit: the commit is refused (OOM), the job is neither acked nor lost nor
    reported, and once memory frees it commits and the drain reports it committed."""
    keys = QueueKeys(settings.namespace)
    workers(settings, threads=2, max_retries=20, min_backoff_ms=200, max_backoff_ms=400)
    with MemoryQueue(settings, producer_id="p") as q:
        fake.gate.clear()
        job, ids = q.enqueue_encode_job(["B: held in the embedder"])
        _wait_for(lambda: raw.llen(keys.q()) == 0 and fake.calls > 0, "the worker to take the job")
        before = _oom_errors(raw)
        raw.config_set("maxmemory", 1)
        try:
            fake.gate.set()
            _wait_for(lambda: _oom_errors(raw) >= before + 3, "commits refused for memory")
            assert raw.zscore(keys.producer("p").pending, job) is not None
            assert not raw.exists(f"{{{settings.namespace}}}:rec:{ids[0]}")
        finally:
            raw.config_set("maxmemory", 0)
        report = q.drain(timeout=60)
        assert report.committed == 1 and report.failed == [], report
        assert raw.exists(f"{{{settings.namespace}}}:rec:{ids[0]}")


def test_a_worker_that_started_while_the_server_was_full_is_seen_live_once_it_frees(
    settings, raw, fake, workers  # noqa: F811
):
    """Defect: a worker started while the server is full (noeviction) fails its first
    health beat in ``HealthMiddleware.after_worker_boot``, which then never starts its
    beat thread. Once memory frees the worker commits the jobs queued meanwhile (that
    part passes), but it never writes a health key again: ``memworker check`` says "no
    live worker" for ever (a liveness probe restarts a healthy worker; drains blame
    "no live worker")."""
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_save([_record(1)])
        before = _oom_errors(raw)
        raw.config_set("maxmemory", 1)
        try:
            workers(settings, threads=2)
            _wait_for(lambda: _oom_errors(raw) >= before + 3, "the worker's writes refused for memory")
        finally:
            raw.config_set("maxmemory", 0)
        report = q.drain(timeout=60, job_ids=[job])
        assert report.committed == 1 and report.failed == []
        _wait_for(lambda: check_health(settings), "the worker's health key after memory freed", 20)


def test_a_drain_while_the_server_is_full_raises_then_reports_once(settings, raw, fake, workers):  # noqa: F811
    """Pins: a drain whose jobs committed, run while the server is full (noeviction),
    either reports them or raises a QueueError naming maxmemory and consumes nothing;
    the next drain, once memory frees, reports each job exactly once."""
    workers(settings, threads=2)
    with MemoryQueue(settings, producer_id="p") as q:
        jobs = [q.enqueue_save([_record(i)]) for i in range(3)]
        _wait_for(lambda: not q.pending(), "the commits")
        workers.stop_all()
        raw.config_set("maxmemory", 1)
        first = None
        try:
            first = q.drain(timeout=10, job_ids=jobs)
        except QueueError as exc:
            assert not isinstance(exc, RuntimeError) and "maxmemory" in str(exc), repr(exc)
        finally:
            raw.config_set("maxmemory", 0)
        second = q.drain(timeout=10, job_ids=jobs)
        committed = (first.committed if first else 0) + second.committed
        assert committed == 3 and second.failed == [] and (first is None or first.failed == [])


# ------------------------------------------------------------------ data gone: FLUSHALL
def test_a_drain_of_the_producer_that_enqueued_reports_jobs_flushed_before_it(settings, raw):
    """Defect: the server loses everything (FLUSHALL, or a restart without
    persistence) between a producer's enqueue and its drain. The same MemoryQueue that
    enqueued the job then drains and gets a clean report (nothing committed, nothing
    failed, nothing lost): the caller reads "all my writes are in" though its memory
    is gone. docs/guarantees.md says a drain without job_ids cannot know of such a
    job; but this producer made it: it should remember the ids it enqueued since its
    last drain and report those that are nowhere as lost."""
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_save([_record(1)])
        raw.flushall()
        report = q.drain(timeout=10)
        assert job in report.lost, f"a flushed job went unreported: {report}"


def test_a_flushall_during_a_drain_is_reported_and_the_worker_carries_on(settings, raw, fake, workers):  # noqa: F811
    """Pins: FLUSHALL while a drain waits for a job no worker has taken: the drain
    reports it lost (never committed, never a hang); a worker started on the emptied
    server, and one running through a second FLUSHALL, commit new jobs and the drain
    reports them."""
    keys = QueueKeys(settings.namespace)
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_save([_record(1)])
        t, out = _drain_in_background(q, raw, keys)
        raw.flushall()
        t.join(60)
        assert "error" not in out, out.get("error")
        assert out["report"].lost == [job] and out["report"].committed == 0
        workers(settings, threads=2)
        after = q.enqueue_save([_record(2)])
        assert q.drain(timeout=60, job_ids=[after]).committed == 1
        raw.flushall()
        again = q.enqueue_save([_record(3)])
        report = q.drain(timeout=60, job_ids=[again])
        assert report.committed == 1 and report.failed == [], report
        assert raw.exists(f"{{{settings.namespace}}}:rec:rec3")


# ------------------------------------------------------------------ the policy check, further
def test_allow_eviction_lets_the_worker_and_check_run_with_a_warning(srv, settings, raw, fake, workers, monkeypatch, caplog, capsys):  # noqa: F811,E501
    """``MEMWORKER_ALLOW_EVICTION=1`` is the operator's informed choice: the worker
    starts and logs the risk, ``memworker check`` passes and warns, ``memworker
    status`` prints the warning; without it ``check`` fails naming the fix."""
    from memworker.cli import main

    raw.config_set("maxmemory", 1024**3)
    raw.config_set("maxmemory-policy", "volatile-lru")  # even volatile-*: reports carry TTLs
    monkeypatch.setenv("MEMWORKER_ALLOW_EVICTION", "1")
    caplog.set_level(logging.WARNING)
    workers(settings, threads=1)
    _wait_for(lambda: check_health(settings), "the worker's health key")
    assert any("maxmemory-policy 'volatile-lru'" in r.getMessage() for r in caplog.records)
    args = ["--url", srv.url, "--namespace", settings.namespace]
    assert main([*args, "check", "--any"]) == 0
    assert "volatile-lru" in capsys.readouterr().err
    monkeypatch.delenv("MEMWORKER_ALLOW_EVICTION")
    assert main([*args, "check", "--any"]) == 1
    err = capsys.readouterr().err
    assert "set maxmemory-policy noeviction" in err and "MEMWORKER_ALLOW_EVICTION=1" in err
    assert main([*args, "status"]) == 0
    assert "warning:" in capsys.readouterr().err
    raw.config_set("maxmemory-policy", "noeviction")
    assert main([*args, "check", "--any"]) == 0
    assert capsys.readouterr().err == ""


def test_the_policy_is_read_from_the_namespaces_own_shard(cluster_plain_server, namespace):
    """On a Valkey Cluster the namespace's queue and records live on one shard: the
    check reads that shard's policy (a script call routed by the namespace's key), not
    whichever node a keyless command would reach."""
    import valkey

    from memworker.keys import tag
    from memworker.queue.admin import eviction_risk

    settings = Settings.from_url(cluster_plain_server.url, namespace=namespace)
    assert eviction_risk(settings) is None
    probe = valkey.Valkey(host="127.0.0.1", port=cluster_plain_server.port)
    slot = int(probe.execute_command("CLUSTER", "KEYSLOT", tag(namespace)))
    owner = next(s for s in probe.execute_command("CLUSTER", "SLOTS") if s[0] <= slot <= s[1])
    probe.close()
    node = valkey.Valkey(host="127.0.0.1", port=int(owner[2][1]))
    others = [valkey.Valkey(host="127.0.0.1", port=p) for p in cluster_plain_server.ports if p != int(owner[2][1])]
    try:
        for other in others:  # every other node evicts: not the namespace's concern
            other.config_set("maxmemory", 1024**3)
            other.config_set("maxmemory-policy", "allkeys-lru")
        assert eviction_risk(settings) is None
        node.config_set("maxmemory", 1024**3)
        node.config_set("maxmemory-policy", "allkeys-random")
        assert "allkeys-random" in (eviction_risk(settings) or "")
    finally:
        for c in [node, *others]:
            c.config_set("maxmemory", 0)
            c.config_set("maxmemory-policy", "noeviction")
            c.close()


# ------------------------------------------------------------------ jobs found nowhere
def test_a_drain_that_timed_out_still_reports_its_jobs_lost_later(settings, raw):
    """A drain that timed out gives back the jobs it was to look for: the server
    flushed afterwards, the next drain reports the job lost (it would have seen an
    empty pending set and said nothing)."""
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_save([_record(1)])
        with pytest.raises(DrainTimeout):
            q.drain(timeout=0.3)  # no worker
        raw.flushall()
        assert q.drain(timeout=10).lost == [job]
        assert q.drain(timeout=10).lost == []  # reported once


def test_a_job_reported_by_id_is_not_reported_again_nor_lost(settings, raw, fake, workers):  # noqa: F811
    """A job a drain waited for by id is forgotten: the next drain neither reports it
    again nor, once its reports are gone, calls it lost; an async drain after a flush
    reports its own jobs lost too."""
    workers(settings, threads=2)
    with MemoryQueue(settings, producer_id="p") as q:
        first = q.enqueue_save([_record(1)])
        second = q.enqueue_save([_record(2)])
        assert q.drain(timeout=30, job_ids=[first]).committed == 1
        report = q.drain(timeout=30)
        assert report.committed == 1 and report.lost == []  # the second only
        workers.stop_all()
        third = q.enqueue_save([_record(3)])
        raw.flushall()

        async def adrain():
            try:
                return await q.adrain(timeout=10)
            finally:
                await q.aclose()

        assert asyncio.run(adrain()).lost == [third]
    assert second != third
