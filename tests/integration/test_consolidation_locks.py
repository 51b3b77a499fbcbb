"""Hierarchical consolidation locks (memworker.crewai_locks.scope_locks) on a real Valkey,
and two CrewAI EncodingFlows in nested scopes run by a real worker."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memworker.crewai import config as crewai_config
from memworker.crewai import locks as crewai_locks
from memworker.errors import ValidationError

HELD = "held"


@pytest.fixture
def client(plain_server):
    import redis

    made = redis.Redis(host="127.0.0.1", port=plain_server.port, decode_responses=True)
    yield made
    made.close()


def _busy(client, namespace, scope, *blockers):
    """Assert that ``scope`` cannot be locked now, blocked by one of ``blockers`` (any
    when none is given)."""
    names = "|".join(re.escape(repr(b)) for b in blockers) or ".*"
    with (
        pytest.raises(crewai_locks.ScopeBusyError, match=f"blocked by the lock on (?:{names}) "),
        crewai_locks.scope_locks(client, namespace, [scope], wait_ms=0),
    ):
        pass


def _free(client, namespace, scope):
    with crewai_locks.scope_locks(client, namespace, [scope], wait_ms=0) as got:
        assert got == [scope]


def _lock_keys(client, namespace):
    return sorted(client.scan_iter(match=f"{{{namespace}}}:lock:*"))


def _under(client, namespace, scope):
    """Scopes entered in ``ns:lock:under:<scope>`` (members are <32-hex token><scope>)."""
    return sorted(m[32:] for m in client.zrange(crewai_locks.lock_under_key(namespace, scope), 0, -1))


# ----------------------------------------------------------------------------- order
def test_lock_order_drops_covered_scopes_and_sorts_in_tree_preorder():
    order = crewai_locks.lock_order
    assert order(["/a-x", "/a/b", "/ab", "a/", "/a/b/c", "/b/"]) == ["/a", "/a-x", "/ab", "/b"]
    assert order(["/a-x", "/a/b", "/a/c"]) == ["/a/b", "/a/c", "/a-x"]  # not string order
    assert order(["/x", None, "/y"]) == ["/"]
    assert order(["/a", "/a", "a"]) == ["/a"]
    assert order([]) == []


# ----------------------------------------------------------------------------- exclusion
def test_a_lock_excludes_its_ancestors_and_descendants(client, namespace):
    with crewai_locks.scope_locks(client, namespace, ["/a"]):
        _busy(client, namespace, "/a", "/a")
        _busy(client, namespace, "/a/b", "/a")
        _busy(client, namespace, "/a/b/c", "/a")
        _busy(client, namespace, "/", "/a")
    with crewai_locks.scope_locks(client, namespace, ["/a/b"]):
        _busy(client, namespace, "/a", "/a/b")
        _busy(client, namespace, "/", "/a/b")
        _busy(client, namespace, "/a/b/c", "/a/b")
        assert _under(client, namespace, "/") == _under(client, namespace, "/a") == ["/a/b"]
    with crewai_locks.scope_locks(client, namespace, ["/"]):
        _busy(client, namespace, "/a", "/")
    assert _lock_keys(client, namespace) == []  # every release cleans up


def test_siblings_and_string_prefixes_do_not_exclude_each_other(client, namespace):
    with crewai_locks.scope_locks(client, namespace, ["/a/b"]):
        with crewai_locks.scope_locks(client, namespace, ["/a/c"], wait_ms=0):
            _free(client, namespace, "/a/bc")
            _free(client, namespace, "/a/b-c")
            _busy(client, namespace, "/a", "/a/b", "/a/c")
            assert _under(client, namespace, "/a") == ["/a/b", "/a/c"]
        assert _under(client, namespace, "/a") == ["/a/b"]
    with crewai_locks.scope_locks(client, namespace, ["/a"]):
        _free(client, namespace, "/ab")
        _free(client, namespace, "/ab/c")
        _free(client, namespace, "/b")
    with crewai_locks.scope_locks(client, namespace, ["/ab"]):
        _free(client, namespace, "/a")
        _free(client, namespace, "/a/b")
    assert _lock_keys(client, namespace) == []


def test_scope_strings_are_only_key_names(client, namespace):
    odd = "/a*/[x]?"
    with crewai_locks.scope_locks(client, namespace, [odd]):
        _free(client, namespace, "/a")  # no glob: "/a*" is a name like any other
        _free(client, namespace, "/a*/x")
        _busy(client, namespace, "/a*", odd)
        _busy(client, namespace, odd + "/:lock:consolidate:/", odd)
        assert client.get(crewai_locks.lock_key(namespace, odd)) is not None
    with crewai_locks.scope_locks(client, namespace, ["/a:lock:under:/b"]):
        _free(client, namespace, "/b")
    assert _lock_keys(client, namespace) == []


def test_one_job_takes_only_the_ancestor_of_its_nested_scopes(client, namespace):
    with crewai_locks.scope_locks(client, namespace, ["/a/b", "/c", "/a"]) as got:
        assert got == ["/a", "/c"]
        assert client.exists(crewai_locks.lock_key(namespace, "/a/b")) == 0
        _busy(client, namespace, "/c/d", "/c")
        _free(client, namespace, "/d")


def test_scope_lock_takes_a_lock_key(client, namespace):
    with crewai_locks.scope_lock(client, crewai_locks.lock_key(namespace, "/a")) as scope:
        assert scope == "/a"
        _busy(client, namespace, "/a/b", "/a")
    with pytest.raises(ValidationError), crewai_locks.scope_lock(client, f"{{{namespace}}}:something:/a"):
        pass


def test_waiter_gets_the_lock_when_the_ancestor_is_released(client, namespace):
    order = []
    with crewai_locks.scope_locks(client, namespace, ["/a"]):

        def nested():
            with crewai_locks.scope_locks(client, namespace, ["/a/b"], wait_ms=10_000):
                order.append("nested")

        t = threading.Thread(target=nested)
        t.start()
        time.sleep(0.3)
        order.append("ancestor released")
    t.join(15)
    assert order == ["ancestor released", "nested"]


# ----------------------------------------------------------------------------- leases
class _OneRound(threading.Event):
    """A stop event for ``crewai_locks._renew`` that lets exactly one renewal round run, at
    once: the renewal loop is tested without sleeping through leases."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.rounds += 1
        return self.rounds > 1


def test_renewal_extends_the_descendant_bookkeeping(client, namespace):
    lock = crewai_locks._Lock(namespace, "/a/b")
    assert lock.call(client, "acquire", 60_000) == 1
    under = crewai_locks.lock_under_key(namespace, "/a")
    (before,) = client.zrange(under, 0, -1, withscores=True)
    # The server's clock before the renewal: every expiry the renewal sets is at least
    # this plus the new lease (no assertion depends on how long the test takes).
    seconds, micros = client.time()
    renewed_at = seconds * 1000 + micros // 1000
    # One round of the renewal thread's loop, with a lease ten times longer.
    crewai_locks._renew(client, [lock], 600_000, _OneRound())
    _busy(client, namespace, "/a", "/a/b")
    _busy(client, namespace, "/", "/a/b")
    (expiry,) = client.zrange(under, 0, -1, withscores=True)
    assert expiry[1] >= renewed_at + 600_000  # in the server's future, a whole lease out
    assert expiry[1] >= before[1] + 500_000  # moved by the renewal, not by the clock
    # the lock key's own expiry, absolute (PEXPIRETIME), moved the same way
    assert client.execute_command("PEXPIRETIME", crewai_locks.lock_key(namespace, "/a/b")) >= renewed_at + 600_000
    assert lock.call(client, "release", 0) == 1
    _free(client, namespace, "/a")
    assert _lock_keys(client, namespace) == []


_CRASHER = """
import sys, redis
from memworker.crewai import locks as crewai_locks
client = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
locks = crewai_locks.scope_locks(client, sys.argv[2], ["/a/b"], lease_ms=int(sys.argv[3]))
locks.__enter__()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_crashed_holders_lock_and_bookkeeping_expire_with_its_lease(
    plain_server, client, namespace
):
    with crewai_locks.scope_locks(client, namespace, ["/x/y"]):  # a live holder elsewhere
        proc = subprocess.Popen(
            [sys.executable, "-c", _CRASHER, str(plain_server.port), namespace, "3000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        try:
            assert proc.stdout.readline().decode().strip() == HELD
            proc.kill()  # SIGKILL: no release, no more renewal
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        _busy(client, namespace, "/a", "/a/b")  # until its lease ends
        assert _under(client, namespace, "/") == ["/a/b", "/x/y"]
        with crewai_locks.scope_locks(client, namespace, ["/a"], wait_ms=10_000):
            assert client.exists(crewai_locks.lock_key(namespace, "/a/b")) == 0
            assert client.exists(crewai_locks.lock_under_key(namespace, "/a")) == 0
            # the crashed holder's entry is pruned; the live holder's stays
            assert _under(client, namespace, "/") == ["/a", "/x/y"]
            _busy(client, namespace, "/", "/a", "/x/y")
        _busy(client, namespace, "/", "/x/y")
        assert _under(client, namespace, "/") == ["/x/y"]
    assert _lock_keys(client, namespace) == []


def test_release_removes_only_its_own_token(client, namespace, monkeypatch):
    stalled = crewai_locks.scope_locks(client, namespace, ["/a/b"], lease_ms=300)
    monkeypatch.setattr(crewai_locks, "_renew", lambda *args: None)  # a holder that stops renewing
    stalled.__enter__()
    monkeypatch.undo()
    try:
        with crewai_locks.scope_locks(client, namespace, ["/a/b"], wait_ms=10_000):  # after its lease
            stalled.__exit__(None, None, None)  # the stale holder releases: must not free ours
            stalled = None
            assert client.exists(crewai_locks.lock_key(namespace, "/a/b")) == 1
            assert _under(client, namespace, "/a") == ["/a/b"]
            _busy(client, namespace, "/a", "/a/b")
            _busy(client, namespace, "/a/b", "/a/b")
    finally:
        if stalled is not None:
            stalled.__exit__(None, None, None)
    assert _lock_keys(client, namespace) == []


def test_jobs_with_interleaved_scopes_do_not_deadlock(client, namespace):
    # With plain string order the first job would take /a-x then wait for /a/b while
    # the second holds /a and waits for /a-x; tree pre-order takes /a/b first.
    errors = []

    def job(scopes):
        try:
            for _ in range(30):
                with crewai_locks.scope_locks(client, namespace, scopes, wait_ms=10_000):
                    time.sleep(0.001)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(s,)) for s in (["/a-x", "/a/b"], ["/a", "/a-x"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and _lock_keys(client, namespace) == []


# ----------------------------------------------------------------------------- the flow
class _Gate:
    """Consolidation calls of the worker's LLM wait here until the test opens it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.open = False
        self.entered: list[str] = []
        self.inside = 0
        self.most_inside = 0

    def wait_entered(self, n: int, errors: list, timeout: float = 60) -> bool:
        """Wait until ``n`` consolidations are inside (``False`` if a remember failed)."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.entered) >= n or errors, timeout)
            return len(self.entered) >= n

    def release(self) -> None:
        with self.cond:
            self.open = True
            self.cond.notify_all()


GATE = _Gate()


def gated_memory_config():
    """``MEMWORKER_MEMORY_FACTORY`` of these tests: the stand-in LLM behind :data:`GATE`."""
    from memworker.crewai.testing import StandInLLM

    class GatedLLM(StandInLLM):
        def call(self, messages, *args, **kwargs):
            user = messages if isinstance(messages, str) else "\n".join(
                str(m.get("content", "")) for m in messages if m.get("role") == "user"
            )  # fmt: skip
            if not user.startswith("New content to consider storing:"):
                return super().call(messages, *args, **kwargs)
            gate = GATE
            with gate.cond:
                gate.entered.append(user.split("\n", 2)[1])
                gate.inside += 1
                gate.most_inside = max(gate.most_inside, gate.inside)
                gate.cond.notify_all()
                gate.cond.wait_for(lambda: gate.open, 60)
                gate.inside -= 1
            return super().call(messages, *args, **kwargs)

    return {"llm": GatedLLM()}


@pytest.fixture
def flows(plain_server, namespace, monkeypatch):
    """A running worker whose LLM is gated, and a factory of QueuedMemory objects."""
    global GATE
    pytest.importorskip("crewai")
    from memworker import worker as worker_mod
    from memworker.crewai import LocalEmbedder, QueuedMemory
    from memworker.crewai.testing import StandInLLM
    from memworker.settings import Settings

    GATE = _Gate()
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, f"{__name__}:gated_memory_config")
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    embedder = LocalEmbedder()
    made = []

    def make(**kwargs):
        memory = QueuedMemory(
            storage=plain_server.url, namespace=namespace, embedder=embedder,
            llm=StandInLLM(), drain_timeout=60, **kwargs,
        )  # fmt: skip
        made.append(memory)
        return memory

    try:
        with worker_mod.running_worker(settings, threads=4, worker_timeout_ms=100, max_retries=0):
            yield make
            GATE.release()
            for memory in made:
                memory.reset_all()
                memory.close()
    finally:
        GATE.release()
        crewai_config.reset_worker_memory_config()


def _remember_concurrently(memory, calls):
    results, errors = {}, []

    def run(text, scope):
        try:
            results[scope] = memory.remember(text, scope=scope, categories=["p"], importance=0.5)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            with GATE.cond:
                errors.append(exc)
                GATE.cond.notify_all()

    threads = [threading.Thread(target=run, args=call) for call in calls]
    for t in threads:
        t.start()
    return threads, results, errors


def test_flows_in_nested_scopes_are_serialized(flows, client, namespace):
    seeder = flows(consolidation_threshold=1.0)
    seeder.remember("Project Falcon kickoff notes", scope="/a/b", categories=["p"], importance=0.5)
    memory = flows(consolidation_threshold=0.05)  # the seed is similar enough to consolidate
    threads, results, errors = _remember_concurrently(
        memory, [("Project Falcon budget review", "/a"), ("Project Falcon hiring plan", "/a/b")]
    )
    assert GATE.wait_entered(1, errors), errors
    time.sleep(1.0)  # time for the other job to (wrongly) reach its consolidation
    assert len(GATE.entered) == 1, GATE.entered
    locked = [s for s in ("/a", "/a/b") if client.exists(crewai_locks.lock_key(namespace, s))]
    assert len(locked) == 1  # the job in the other scope waits for it
    GATE.release()
    for t in threads:
        t.join(60)
    assert errors == [] and len(GATE.entered) == 2 and GATE.most_inside == 1
    assert {r.scope for r in results.values()} == {"/a", "/a/b"}
    assert memory.info("/a").record_count == 3
    # Released just after each job's commit (which is what remember() waits for).
    deadline = time.monotonic() + 10
    while _lock_keys(client, namespace) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _lock_keys(client, namespace) == []


def test_flows_in_sibling_scopes_consolidate_side_by_side(flows, client, namespace):
    seeder = flows(consolidation_threshold=1.0)
    seeder.remember("Project Falcon kickoff notes", scope="/a/b", categories=["p"], importance=0.5)
    seeder.remember("Project Falcon kickoff notes", scope="/a/c", categories=["p"], importance=0.5)
    memory = flows(consolidation_threshold=0.05)
    threads, _, errors = _remember_concurrently(
        memory, [("Project Falcon budget review", "/a/b"), ("Project Falcon hiring plan", "/a/c")]
    )
    both = GATE.wait_entered(2, errors)  # both inside their consolidation at once
    GATE.release()
    for t in threads:
        t.join(60)
    assert both, (GATE.entered, errors)
    assert errors == [] and GATE.most_inside == 2
    assert memory.info("/a").record_count == 4
