"""A hostile review of session 31's changes: the retention sweep's pass over LangGraph
items (store.lua ``old_outside``), the drain's wake-ups (queue/drain.py ``_Wakeups``),
the embedded server's process finding (memworker/embedded) and failed spans (tracing).

Defects proven (8 of 27 failed before their fixes): a sweep of limit 1 read 100 passed-
over items, not at most 4 x limit (a page was never smaller than 100); a saved position
that is not a count (``retskip:/`` = "1.5" written by hand) failed every sweep, expiries
and tombstone trimming included."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
import redis
from test_worker import fake, workers  # noqa: F401

from memworker.errors import DrainTimeout, MemworkerError
from memworker.keys import LANGGRAPH_ROOT
from memworker.queue.producer import MemoryQueue
from memworker.records import utcnow
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

ON_CLUSTER = True


# ----------------------------------------------------------------------------- sweep
def _lg(i: int, created, **extra) -> dict:
    return {"id": f"lg{i}", "content": "x", "scope": f"{LANGGRAPH_ROOT}/users/u{i % 3}",
            "created_at": created, "embedding": [1.0, 0], **extra}  # fmt: skip


def _crew(name: str, created, scope: str = "/crew") -> dict:
    return {"id": name, "content": "x", "scope": scope, "created_at": created, "embedding": [1.0, 0]}


def test_sweep_limit_one_reads_at_most_four_langgraph_items(store):
    """store.lua documents "at most 4 x limit of them read a sweep" (the bound of one
    atomic step's work); a page is at least 100 entries, so limit=1 reads 100."""
    old = utcnow() - timedelta(days=40)
    store.save([_lg(i, old - timedelta(days=2, seconds=i)) for i in range(150)])
    store.set_retention("/", 30)
    got = store.sweep(limit=1)
    assert got["retained"] == 0
    assert got["scanned"] <= 4, got


def test_a_corrupt_retskip_does_not_stop_every_sweep(store, raw):
    """A hand-written policy that is not a number is skipped, "not fatal"; a retskip
    position that is not an integer made ZRANGEBYSCORE ... LIMIT fail: the whole sweep
    script (expiry included) failed at every sweep."""
    old = utcnow() - timedelta(days=40)
    store.save([_lg(0, old), _crew("due", old)])
    store.set_retention("/", 30)
    raw.hset(store.keys.meta, "retskip:/", "1.5")
    store.sweep(limit=10)
    assert store.get_record("due") is None
    assert store.get_record("lg0") is not None


def test_removed_langgraph_items_never_keep_a_due_record_for_long(store, raw):
    """Sweep 1 passes over the LangGraph items and saves its place; items before that
    place are deleted (their TTL, a delete) before the next sweep: the saved count now
    points past due CrewAI records. Every due record must still go, and LangGraph items
    never by retention."""
    old = utcnow() - timedelta(days=40)
    lg = [_lg(i, old - timedelta(days=3, seconds=i)) for i in range(120)]
    crew = [_crew(f"c{i}", old - timedelta(days=1, seconds=i)) for i in range(30)]
    store.save(lg + crew)
    store.set_retention("/", 30)
    store.sweep(limit=10)  # reads the first 100 items, saves its place
    store.delete(record_ids=[f"lg{i}" for i in range(0, 120, 2)])  # half the passed-over items go
    sweeps = 0
    while store.count("/crew") and sweeps < 20:
        store.sweep(limit=10)
        sweeps += 1
    assert store.count("/crew") == 0, sweeps
    assert store.count(LANGGRAPH_ROOT) == 60


def test_ties_and_interleaving_every_due_record_goes(store):
    """LangGraph items and CrewAI records with the same created_at (ties ordered by
    id), interleaved, swept with limit=1: every CrewAI record goes, no item."""
    old = utcnow() - timedelta(days=40)
    recs = []
    for i in range(60):
        recs.append({**_lg(i, old), "id": f"m{i:03d}lg"})
        recs.append(_crew(f"m{i:03d}cr", old, scope="/" if i % 2 else "/crew"))
    store.save(recs)
    store.set_retention("/", 30)
    for _ in range(400):
        if store.count("/") == 60:
            break
        store.sweep(limit=1)
        # a record saved later with the same old created_at, sorting before the items
        if _ == 5:
            store.save([_crew("a000late", old)])
    assert store.count(LANGGRAPH_ROOT) == 60
    assert store.count("/") == 60


def test_policy_removed_and_readded_with_a_stale_position(store):
    old = utcnow() - timedelta(days=40)
    store.save([_lg(i, old - timedelta(days=3, seconds=i)) for i in range(300)]
               + [_crew("due0", old)])  # fmt: skip
    store.set_retention("/", 30)
    store.sweep(limit=10)  # passes over 100 items, saves its place
    store.set_retention("/", None)
    store.delete(record_ids=[f"lg{i}" for i in range(300)])
    store.save([_lg(1000 + i, old - timedelta(days=3, seconds=i)) for i in range(20)] + [_crew("due1", old)])
    store.set_retention("/", 30)
    for _ in range(10):
        if store.get_record("due0") is None and store.get_record("due1") is None:
            break
        store.sweep(limit=10)
    assert store.get_record("due0") is None and store.get_record("due1") is None
    assert store.count(LANGGRAPH_ROOT) == 20


# ----------------------------------------------------------------------------- drain
def _acl_user(client, name: str, password: str, *rules: str) -> None:
    client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", "~*", "&*", "+@all", *rules)


def test_drain_refused_pubsub_raises_a_memworker_error(own_plain_server, namespace):
    """An ACL user without pub/sub: a drain that must wait raises memworker's error
    (not DrainTimeout after the whole timeout, not a redis error, not a hang)."""
    admin = redis.Redis(port=own_plain_server.port)
    _acl_user(admin, "nopubsub", "pw", "-@pubsub")
    url = f"valkey://nopubsub:pw@127.0.0.1:{own_plain_server.port}"
    s = Settings.from_url(url, namespace=namespace, search_mode="exact")
    with MemoryQueue(s, producer_id="p") as q:
        q.enqueue_encode_job(["x"])
        with pytest.raises(MemworkerError) as got:
            q.drain(timeout=8)
    assert not isinstance(got.value, DrainTimeout), got.value
    admin.close()


def test_adrain_refused_pubsub_raises_a_memworker_error(own_plain_server, namespace):
    admin = redis.Redis(port=own_plain_server.port)
    _acl_user(admin, "nopubsub", "pw", "-@pubsub")
    url = f"valkey://nopubsub:pw@127.0.0.1:{own_plain_server.port}"
    s = Settings.from_url(url, namespace=namespace, search_mode="exact")

    async def go():
        q = MemoryQueue(s, producer_id="p")
        try:
            q.enqueue_encode_job(["x"])
            return await q.adrain(timeout=8)
        finally:
            await q.aclose()

    with pytest.raises(MemworkerError) as got:
        asyncio.run(go())
    assert not isinstance(got.value, DrainTimeout), got.value
    admin.close()


def _killer(port: int, stop: threading.Event, kills: list) -> threading.Thread:
    def run():
        c = redis.Redis(port=port)
        while not stop.is_set():
            try:
                n = c.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                if n:
                    kills.append(n)
            except Exception:  # noqa: BLE001
                pass
            stop.wait(0.05)
        c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_drain_survives_pubsub_kills_and_commits_once(own_plain_server, namespace, fake, workers, use_async):  # noqa: F811
    s = Settings.from_url(own_plain_server.url, namespace=namespace, search_mode="exact")
    stop, kills = threading.Event(), []
    out: dict = {}
    with MemoryQueue(s, producer_id="p") as q:
        job = q.enqueue_encode_job(["hello world"])[0]

        def drain():
            try:
                if use_async:
                    out["report"] = asyncio.run(q.adrain(timeout=30))
                else:
                    out["report"] = q.drain(timeout=30)
            except BaseException as exc:  # noqa: BLE001
                out["error"] = exc

        killer = _killer(own_plain_server.port, stop, kills)
        t = threading.Thread(target=drain)
        t.start()
        while len(kills) < 3 and t.is_alive():
            time.sleep(0.05)
        assert t.is_alive(), out  # nothing committed: it must not return yet
        workers(s, threads=1)
        t.join(40)
        stop.set()
        killer.join(5)
        assert not t.is_alive()
        assert "error" not in out, out.get("error")
        report = out["report"]
        assert report.committed == 1 and report.lost == [] and report.failed == []
        again = q.drain(timeout=5, job_ids=[job])
        assert again.committed == 0
    with ValkeyStore(s) as st:
        assert st.count("/") == 1


# ----------------------------------------------------------------------------- embedded
def _home_pids(home) -> list[int]:
    from memworker.embedded.procs import home_servers

    return home_servers(home / "data")


@pytest.fixture
def two_homes(tmp_path):
    from memworker import embedded
    from memworker.embedded import stop_server

    made = []

    def make(name):
        made.append(tmp_path / name)
        return tmp_path / name

    yield make
    embedded.server._cache.clear()
    for h in made:
        try:
            stop_server(h)
        except Exception:  # noqa: BLE001
            pass
        for pid in _home_pids(h):
            import os
            import signal

            os.kill(pid, signal.SIGKILL)


def test_prefix_homes_never_touch_each_others_server(two_homes):
    """``.../home`` and ``.../home2``: a stop, a lost state file and a restart of one
    never stop or adopt the other's server."""
    from memworker import embedded
    from memworker.embedded import ensure_server, stop_server

    a, b = two_homes("home"), two_homes("home2")
    sa = ensure_server(a, search_module="none")
    sb = ensure_server(b, search_module="none")
    assert _home_pids(a) == [sa.pid] and _home_pids(b) == [sb.pid]
    from memworker.embedded.auth import STATE_FILE

    (a / STATE_FILE).unlink()  # its record lost: found by its working dir, not home2's
    embedded.server._cache.clear()
    assert stop_server(a) is True
    assert _home_pids(a) == []
    assert _home_pids(b) == [sb.pid]
    again = ensure_server(a, search_module="none")
    assert again.pid != sb.pid and again.port != sb.port
    stop_server(b)
    assert _home_pids(a) == [again.pid]
    assert redis.Redis(port=again.port, password=again.password).ping()


def test_a_home_server_moved_by_config_set_port_keeps_its_data_and_runs_once(two_homes):
    """ensure_server after ``CONFIG SET port``: one server on the home's data (never a
    second beside the first on the same AOF), answering, with the data written before."""
    from memworker import embedded
    from memworker.embedded import ensure_server

    home = two_homes("home")
    s = ensure_server(home, search_module="none")
    c = redis.Redis(port=s.port, password=s.password)
    c.set("k", "v")
    c.config_set("port", str(embedded._free_port()))
    c.close()
    embedded.server._cache.clear()
    found = ensure_server(home, search_module="none")
    assert len(_home_pids(home)) == 1
    c2 = redis.Redis(port=found.port, password=found.password)
    assert c2.get("k") == b"v"
    c2.close()


# ----------------------------------------------------------------------------- tracing
def test_a_failed_span_propagates_the_same_exception_and_names_its_type_only():
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.trace import StatusCode
    from otel_file import memory_exporter

    from memworker import tracing

    exp = memory_exporter()
    exp.clear()
    secret = "my bank password is hunter2"

    class Boom(ValueError):
        pass

    err = Boom(secret)
    with pytest.raises(Boom) as got:
        with tracing.span("memworker.review", {"n": 1}):
            raise err
    assert got.value is err and got.value.args == (secret,)
    spans = [s for s in exp.get_finished_spans() if s.name == "memworker.review"]
    assert len(spans) == 1
    sp = spans[0]
    assert sp.status.status_code == StatusCode.ERROR
    assert sp.status.description == "Boom"
    dump = repr(dict(sp.attributes or {})) + repr([(e.name, dict(e.attributes or {})) for e in sp.events])
    assert secret not in dump and "hunter2" not in dump and "Traceback" not in dump
    assert [dict(e.attributes)["exception.type"] for e in sp.events if e.name == "exception"] == [
        f"{Boom.__module__}.{Boom.__qualname__}"
    ]
    exp.clear()


def test_a_span_of_a_cancelled_task_fails_naming_the_cancellation():
    """A task cancelled inside a span (an ``adrain`` under ``asyncio.wait_for``) ends
    it failed, by the cancellation's type (it ended unset: only ``Exception`` was
    caught), and the cancellation propagates."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.trace import StatusCode
    from otel_file import memory_exporter

    from memworker import tracing

    exp = memory_exporter()
    exp.clear()

    async def slow():
        with tracing.span("memworker.cancelled", {}):
            await asyncio.sleep(60)

    async def main():
        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [sp] = [s for s in exp.get_finished_spans() if s.name == "memworker.cancelled"]
    assert sp.status.status_code == StatusCode.ERROR
    assert sp.status.description == "CancelledError"
    exp.clear()
