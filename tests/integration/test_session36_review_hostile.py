"""Hostile review (helper-88) of session 36's fixes, looking for second-order defects:

- ``AsyncGroupCommit._ended`` (a sender task cancelled before its first step hands the
  waiting entries to a new task): every waiting caller gets its own result, no entry
  goes out twice, a caller cancelled meanwhile is not sent, later calls still work;
- ``_p_ensure_model`` reading before recording: two stores racing with different
  models on an empty namespace, exactly one wins, the other gets the ConfigError;
- the glide async face keeping its client before the scripts load: a second caller
  meanwhile, and ``aclose()`` while the first caller loads them;
- ``ValkeyStore._server_time``: an ACL refusal gives ``None``, a granted TIME the clock.

Defect shown (failing test): ``aclose()`` while the first async call of a loop loads
the scripts makes that call fail with ``StoreError("Valkey error: 'NoneType' object has
no attribute 'exec'")``: ``AsyncConnection.client()`` returns ``self._client``, which
the close set to ``None`` (a call in flight at any other moment is retried on a new
client and succeeds).

Real valkey-servers throughout; the group commit's ``send`` is a coroutine of the test
(no Valkey client is mocked); glide's ``create`` is wrapped only to hold the script
load (as test_async_cancellation_hostile does).
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from test_langgraph_async_hostile import settings  # noqa: F401
from valkey_servers import raw_client

from memworker.errors import ConfigError, MemworkerError
from memworker.queue.group import AsyncGroupCommit
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

HANG = 20.0


# ============================================================== async group commit
class _Sender:
    """A send the test holds: records each batch, waits for the gate of its turn."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gates: list[asyncio.Event] = []

    async def __call__(self, entries: list[str]) -> list[str]:
        self.batches.append(list(entries))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
            return [f"ok:{e}" for e in entries]
        finally:
            self.in_flight -= 1

    async def through(self, coro):
        """Await ``coro`` while releasing every send it waits for (bounded)."""
        task = asyncio.ensure_future(coro)
        for _ in range(4000):
            for g in self.gates:
                g.set()
            await asyncio.sleep(0)
            if task.done():
                return task.result()
        task.cancel()
        raise AssertionError("the call hangs")

    async def open_all(self) -> None:
        """Release every held send until none waits (bounded)."""
        for _ in range(2000):
            for g in self.gates:
                g.set()
            await asyncio.sleep(0)
            if self.in_flight == 0:
                await asyncio.sleep(0)
                if self.in_flight == 0:
                    return
        raise AssertionError("sends still held")


def _sent(sender: _Sender) -> list[str]:
    return [e for b in sender.batches for e in b]


def test_waiters_of_a_sender_cancelled_before_its_first_step_each_go_once():
    """The leader's send ends; the sender task made for B and C is cancelled before its
    first step (as a shutdown routine cancelling other tasks would). B and C get their
    own results, each is sent exactly once, one send at a time, and a later call works."""
    sender = _Sender()
    group: AsyncGroupCommit[str] = AsyncGroupCommit(sender, 8)

    async def main():
        loop = asyncio.get_running_loop()
        a = asyncio.create_task(group.submit("a"))
        await asyncio.sleep(0)
        b = asyncio.create_task(group.submit("b"))
        c = asyncio.create_task(group.submit("c"))
        await asyncio.sleep(0)
        queue = group._queue(loop)  # noqa: SLF001
        assert [e for e, _ in queue.waiting] == ["b", "c"]
        sender.gates[0].set()
        # wait until a's send ended and handed b, c to a sender task (not yet stepped)
        for _ in range(200):
            if queue.task is not None:
                break
            await asyncio.sleep(0)
        assert queue.task is not None
        queue.task.cancel()  # before its first step
        for _ in range(50):
            await asyncio.sleep(0)
            for g in sender.gates:
                g.set()
        done, _ = await asyncio.wait({a, b, c}, timeout=HANG)
        assert done == {a, b, c}, "a caller hangs"
        d = await sender.through(group.submit("d"))
        await sender.open_all()
        return [t.result() if not t.cancelled() else "cancelled" for t in (a, b, c)], d

    results, d = asyncio.run(main())
    assert results == ["ok:a", "ok:b", "ok:c"]
    assert d == "ok:d"
    assert sorted(_sent(sender)) == ["a", "b", "c", "d"], sender.batches
    assert sender.most_in_flight == 1


def test_a_waiter_cancelled_with_its_sender_task_is_not_sent():
    """Same, but waiter B is cancelled together with the unstarted sender task: C alone
    goes (once), B's entry never goes out, and the group is free afterwards."""
    sender = _Sender()
    group: AsyncGroupCommit[str] = AsyncGroupCommit(sender, 8)

    async def main():
        loop = asyncio.get_running_loop()
        a = asyncio.create_task(group.submit("a"))
        await asyncio.sleep(0)
        b = asyncio.create_task(group.submit("b"))
        c = asyncio.create_task(group.submit("c"))
        await asyncio.sleep(0)
        queue = group._queue(loop)  # noqa: SLF001
        sender.gates[0].set()
        for _ in range(200):
            if queue.task is not None:
                break
            await asyncio.sleep(0)
        assert queue.task is not None
        queue.task.cancel()
        b.cancel()
        for _ in range(50):
            await asyncio.sleep(0)
            for g in sender.gates:
                g.set()
        done, _ = await asyncio.wait({a, b, c}, timeout=HANG)
        assert done == {a, b, c}, "a caller hangs"
        assert b.cancelled()
        e = await sender.through(group.submit("e"))
        await sender.open_all()
        return a.result(), c.result(), e, queue.busy

    a, c, e, busy = asyncio.run(main())
    assert (a, c, e) == ("ok:a", "ok:c", "ok:e")
    assert sorted(_sent(sender)) == ["a", "c", "e"], sender.batches
    assert sender.most_in_flight == 1
    assert busy is False


def test_many_waiters_cancelled_senders_repeatedly_no_double_send():
    """Forty tasks submit while sends are held; every sender task the group makes is
    cancelled before its first step, several times over. Each entry goes out at most
    once; every caller ends (result or cancelled) and none is left pending; those that
    got a result were sent."""
    sender = _Sender()
    group: AsyncGroupCommit[str] = AsyncGroupCommit(sender, 4)

    async def main():
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(group.submit("lead"))
        await asyncio.sleep(0)
        tasks = {f"e{i}": asyncio.create_task(group.submit(f"e{i}")) for i in range(40)}
        await asyncio.sleep(0)
        queue = group._queue(loop)  # noqa: SLF001
        cancelled_senders = 0
        for _ in range(4000):
            if queue.task is not None and cancelled_senders < 5:
                t = queue.task
                if not t.done():
                    t.cancel()
                    cancelled_senders += 1
            for g in sender.gates:
                g.set()
            await asyncio.sleep(0)
            if all(t.done() for t in tasks.values()) and first.done():
                break
        done, pending = await asyncio.wait({first, *tasks.values()}, timeout=HANG)
        assert not pending, f"{len(pending)} callers hang"
        await sender.open_all()
        return {k: (None if t.cancelled() else t.result()) for k, t in tasks.items()}, cancelled_senders

    got, cancelled_senders = asyncio.run(main())
    sent = _sent(sender)
    assert cancelled_senders >= 1
    assert len(sent) == len(set(sent)), "an entry went out twice"
    for k, v in got.items():
        if v is not None:
            assert v == f"ok:{k}" and k in sent


# ============================================================== model race
def test_two_stores_racing_to_record_different_models_exactly_one_wins(plain_server):
    """Two writers open an empty namespace at once with different models: exactly one
    records its model; the other gets the documented ConfigError (mismatch)."""
    url = plain_server.url
    for trial in range(30):
        ns = f"race{uuid.uuid4().hex[:8]}"
        stores = [ValkeyStore(Settings.from_url(url, namespace=ns, search_mode="exact")) for _ in range(2)]
        for s in stores:
            s.count()  # connected, layout checked: the race is the model check alone
        barrier = threading.Barrier(2)
        outcome: list = [None, None]

        def run(i: int) -> None:
            barrier.wait()
            try:
                outcome[i] = ("ok", stores[i].ensure_model(f"model-{i}"))
            except Exception as exc:  # noqa: BLE001
                outcome[i] = ("error", exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG)
        oks = [o for o in outcome if o and o[0] == "ok"]
        errs = [o for o in outcome if o and o[0] == "error"]
        assert len(oks) == 1 and len(errs) == 1, (trial, outcome)
        assert isinstance(errs[0][1], ConfigError), errs[0][1]
        raw = raw_client(plain_server)
        recorded = raw.hget(stores[0].keys.meta, "model")
        assert recorded is not None and recorded.decode() == oks[0][1]
        for s in stores:
            s.reset()
            s.close()


# ============================================================== glide async client
def _hold_script_load(monkeypatch):
    import glide

    made: list = []
    loading: list = []
    gate: dict = {}
    real_create = glide.GlideClient.create

    async def create(config):
        client = await real_create(config)
        made.append(client)
        real = client.custom_command

        async def custom_command(args):
            if list(args[:2]) == ["SCRIPT", "LOAD"] and not gate["event"].is_set():
                loading.append(client)
                await gate["event"].wait()
            return await real(args)

        client.custom_command = custom_command
        return client

    monkeypatch.setattr(glide.GlideClient, "create", staticmethod(create))
    return made, loading, gate


def test_aclose_while_the_first_call_loads_scripts_fails_that_call_cleanly(settings, monkeypatch):  # noqa: F811
    """``aclose()`` while the first async call loads the scripts (the client is now kept
    before they load, so aclose closes it). The first call may fail (its client was
    closed under it) but with memworker's error, not ``StoreError("Valkey error:
    'NoneType' object has no attribute 'exec'")`` (``client()`` returned ``None``);
    the next call works on a new client."""
    made, loading, gate = _hold_script_load(monkeypatch)
    store = ValkeyStore(settings)

    async def main():
        gate["event"] = asyncio.Event()
        first = asyncio.create_task(store.acount())
        for _ in range(2000):
            if loading:
                break
            await asyncio.sleep(0.01)
        assert loading, "the first call never loaded the scripts"
        await store.aclose()
        gate["event"].set()
        done, _ = await asyncio.wait({first}, timeout=HANG)
        assert done, "the first call hangs"
        exc = None if first.cancelled() else first.exception()
        after = await asyncio.wait_for(store.acount(), HANG)
        await store.aclose()
        return exc, after

    exc, after = asyncio.run(main())
    store.close()
    # a call in flight when aclose() closes its client is retried on a new one
    # (ClosingError: "recreate"); one whose client was closed while it loaded the
    # scripts must not fail on a None client reported as a server error
    assert exc is None or (isinstance(exc, MemworkerError) and "NoneType" not in str(exc)), repr(exc)
    assert after == 0


def test_a_second_caller_while_the_first_loads_scripts_shares_one_client(settings, monkeypatch):  # noqa: F811
    """A second concurrent first-call of a loop while the scripts load: both succeed,
    one client is made."""
    made, loading, gate = _hold_script_load(monkeypatch)
    store = ValkeyStore(settings)

    async def main():
        gate["event"] = asyncio.Event()
        first = asyncio.create_task(store.acount())
        for _ in range(2000):
            if loading:
                break
            await asyncio.sleep(0.01)
        assert loading
        second = asyncio.create_task(store.acount())
        await asyncio.sleep(0.05)
        gate["event"].set()
        results = await asyncio.wait_for(asyncio.gather(first, second), HANG)
        await store.aclose()
        return results

    assert asyncio.run(main()) == [0, 0]
    store.close()
    assert len(made) == 1


# ============================================================== TIME refusal
def test_server_time_is_none_only_for_a_refusal(plain_server, namespace):
    """An ACL user without TIME: ``None`` (host clock); the same user granted TIME: the
    server's clock (a number close to the host's)."""
    import time

    raw = raw_client(plain_server)
    user = f"u{uuid.uuid4().hex[:8]}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw-" + user, "~*", "&*", "+@all", "-time")
    try:
        url = plain_server.url.replace("://", f"://{user}:pw-{user}@", 1)
        s = ValkeyStore(Settings.from_url(url, namespace=namespace, search_mode="exact"))
        try:
            assert s._sync.run(s._server_time()) is None  # noqa: SLF001
            raw.execute_command("ACL", "SETUSER", user, "+time")
            got = s._sync.run(s._server_time())  # noqa: SLF001
            assert isinstance(got, int) and abs(got - time.time() * 1000) < 60_000
        finally:
            s.close()
    finally:
        raw.execute_command("ACL", "DELUSER", user)


# ============================================================== lancedb /langgraph spellings
@pytest.mark.parametrize("scope", ["langgraph", "/langgraph/", "langgraph/notes", "/langgraph/a/"])
def test_lancedb_import_refuses_every_spelling_of_a_langgraph_scope(plain_server, namespace, tmp_path, scope):
    """Scopes the store normalizes into ``/langgraph`` (no leading slash, a trailing
    one) are refused like ``/langgraph/...`` itself: nothing written."""
    pytest.importorskip("lancedb")
    from test_lancedb_import_hostile import _import, _row, _table

    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    path = _table(tmp_path / "lance", [_row(1, id="ok"), _row(2, id="lg-row", scope=scope)])
    store = ValkeyStore(settings)
    try:
        from memworker.errors import ValidationError

        with pytest.raises(ValidationError, match="lg-row"):
            _import(path, settings)
        assert store.count() == 0
    finally:
        store.reset()
        store.close()
