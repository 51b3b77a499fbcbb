"""A hostile review of the drain barrier and producer identity (2026-12-05).

Not covered by test_drain.py, test_queue.py, test_settle.py and the others:

- the report a drain claims is never lost: not when the reply of its claim step is
  lost and the driver retries it, not when an ``adrain`` is cancelled while its claim
  is on the server;
- a queue made before a ``fork()`` with the default producer id does not share that
  id (and so its reports) with the child;
- ``memworker drain --all --producer X`` observes X like ``--producer X`` alone does;
- timeouts 0 and huge, ``job_ids`` of another producer, a huge ``job_ids`` list;
  odd but valid producer ids; a cancelled ``adrain`` mid-wait consumes nothing;
- a Valkey restart (AOF) between the enqueue and the drain, and during a drain.

Failures are made by the worker's own failure step (:data:`FAIL_SCRIPT` with
:func:`failure_args`, what a dead-lettering worker runs) on the real server, so no
worker process is needed where only the report matters. Faults "the reply of a call
was lost after the server ran it" are injected by wrapping the driver's script call:
the real server runs the call, then the client sees the connection drop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import pytest
import redis.exceptions as rex
from test_worker import _record, fake, qsettings, rawq, workers  # noqa: F401

from memworker.errors import ValidationError
from memworker.io.redispy import RedisAsyncDriver, RedisSyncDriver
from memworker.queue.jobs import DrainTimeout, QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.worker.middleware import FAIL_SCRIPT, failure_args


def _fail(rawq, settings, producer: str, job: str, error: str = "boom") -> None:  # noqa: F811
    """Fail ``job`` of ``producer`` as a worker dead-lettering it does (one script:
    pending mark removed, failure recorded, wake-up published)."""
    keys = QueueKeys(settings.namespace)
    args = failure_args(keys, None, job, producer, [], error)
    assert rawq.eval(FAIL_SCRIPT, *args) == 1


def _commit(rawq, settings, producer: str, job: str) -> None:  # noqa: F811
    """Commit ``job`` of ``producer`` as a worker's commit step does (pending mark
    removed, commit marker added, wake-up), without its records."""
    from memworker.worker.batch import commit_commands

    keys = QueueKeys(settings.namespace)
    with rawq.pipeline(transaction=True) as pipe:
        for command in commit_commands(keys, producer, job, 0, int(time.time() * 1000)):
            pipe.execute_command(*command)
        pipe.execute()


def _is_claim(args) -> bool:
    # EVALSHA sha 1 key op ... : the op of queue.lua is the 5th argument
    return len(args) > 4 and args[4] in ("claim", b"claim")


def _lose_first_claim_reply():
    """A stand-in for ``RedisSyncDriver._script_call`` that runs every call on the real
    server and, the first time, drops the claim's reply (a connection reset after the
    server ran it); and the list the dropped reply lands in."""
    real = RedisSyncDriver._script_call
    dropped = []

    def lossy(self, client, *args):
        reply = real(self, client, *args)
        if _is_claim(args) and not dropped:
            dropped.append(reply)
            raise rex.ConnectionError("connection reset after the server ran the claim")
        return reply

    return dropped, lossy


# ----------------------------------------------------------------------------- claims
def test_a_claim_whose_reply_is_lost_still_reports_the_job(qsettings, rawq, monkeypatch):  # noqa: F811
    """The claim step (queue.lua ``claim``: HDEL the failure, tombstone the job) is not
    idempotent, yet the driver retries it on a connection error like any other step.
    When the server ran the claim and the reply was lost, the retry finds everything
    already claimed (HDEL -> 0, ZADD NX -> 0): the drain returns an empty report and the
    failure is consumed, so NO drain ever reports the job (reported never).
    Expected: the failure is reported by this drain (or, failing that, the next one)."""
    dropped, lossy = _lose_first_claim_reply()
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        _fail(rawq, qsettings, "p", job)
        monkeypatch.setattr(RedisSyncDriver, "_script_call", lossy)
        first = q.drain(timeout=10)
        monkeypatch.undo()
        second = q.drain(timeout=10, job_ids=[job])
    assert dropped, "the claim ran"
    assert [f.job_id for f in first.failed + second.failed] == [job]


def test_a_lost_claim_reply_does_not_drop_a_commit(qsettings, rawq, monkeypatch):  # noqa: F811
    """Same as above for a commit: the first claim tombstones the job, its reply is
    lost, the retry's ZADD NX returns 0, and the drain that waited for the job reports
    ``committed == 0`` although the job committed (and the next drain skips it: it was
    "reported"). A drain that waited for one committed job must count it."""
    dropped, lossy = _lose_first_claim_reply()
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        _commit(rawq, qsettings, "p", job)
        monkeypatch.setattr(RedisSyncDriver, "_script_call", lossy)
        report = q.drain(timeout=10, job_ids=[job])
        monkeypatch.undo()
        again = q.drain(timeout=10, job_ids=[job])
    assert dropped
    assert report.committed + again.committed == 1 and report.lost == [] and again.lost == []


def test_an_adrain_cancelled_while_its_claim_runs_loses_no_report(qsettings, rawq, monkeypatch):  # noqa: F811
    """``asyncio.wait_for(q.adrain(), t)`` (or any cancellation) that lands while the
    claim script is on the server: the server consumes the failure and tombstones it,
    and the drain is cancelled before it reads the reply. Found: the failure was gone,
    the next drain reported nothing. Expected: the claim runs to its end and the
    queue's next drain reports what it consumed."""
    real = RedisAsyncDriver._script_call
    on_server = []

    async def slow_reply(self, client, *args):
        reply = await real(self, client, *args)
        if _is_claim(args) and not on_server:
            on_server.append(reply)
            await asyncio.sleep(0.3)  # the reply on its way back: the drain is cancelled now
        return reply

    async def main(q):
        monkeypatch.setattr(RedisAsyncDriver, "_script_call", slow_reply)
        task = asyncio.ensure_future(q.adrain(timeout=10))
        while not on_server:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        report = await q.adrain(timeout=10)
        again = await q.adrain(timeout=10)
        await q.aclose()
        return report, again

    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        _fail(rawq, qsettings, "p", job)
        report, again = asyncio.run(main(q))
        assert on_server
        assert [f.job_id for f in report.failed] == [job]
        assert again.failed == []


def test_an_adrain_cancelled_mid_wait_consumes_nothing(qsettings, rawq):  # noqa: F811
    """A drain cancelled while it waits (the job still pending) consumes nothing: the
    job's failure, recorded after the cancellation, is reported by the next drain."""

    async def main(q):
        task = asyncio.ensure_future(q.adrain(timeout=30))
        await asyncio.sleep(0.3)  # the drain is waiting on the pending job
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await q.aclose()

    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        asyncio.run(main(q))
        assert q.pending() == [job]
        _fail(rawq, qsettings, "p", job)
        report = q.drain(timeout=10, job_ids=[job])
    assert [f.job_id for f in report.failed] == [job] and report.lost == []


# ----------------------------------------------------------------------------- identity
def test_a_forked_child_does_not_share_the_default_producer_id(plain_server, namespace):
    """``MemoryQueue()`` without ``producer_id`` is ``<host>-<pid>-<random>``, chosen
    once in ``__init__``. A queue made before ``fork()`` (gunicorn/celery prefork,
    multiprocessing 'fork') keeps the parent's id in the child: the child's drain waits
    for the parent's jobs and consumes the parent's failures (the driver already gives
    the child its own connections: forking a queue is meant to work). Expected: a
    default id is per process (e.g. re-made when ``os.getpid()`` changed, or
    ``os.register_at_fork``), so the child's drain reports nothing of the parent's and
    the parent's own drain still reports its failure."""
    settings = Settings.from_url(plain_server.url, namespace=namespace)
    import redis

    raw = redis.Redis(host="127.0.0.1", port=plain_server.port)
    with MemoryQueue(settings) as q:
        job = q.enqueue_encode_job(["parent's job"])[0]
        _fail(raw, settings, q.producer_id, job)
        parent_id = q.producer_id
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                signal.alarm(30)
                os.close(r)
                report = q.drain(timeout=5)
                os.write(w, f"{q.producer_id} {len(report.failed)}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        child_id, child_failed = os.read(r, 1000).decode().split()
        os.close(r)
        assert os.waitstatus_to_exitcode(status) == 0
        own = q.drain(timeout=5)
    raw.close()
    assert child_id != parent_id, "the forked child drains as the parent"
    assert child_failed == "0", "the child's drain consumed the parent's failure"
    assert [f.job_id for f in own.failed] == [job]


def test_cli_drain_all_with_a_producer_observes_it(qsettings, rawq, monkeypatch, capsys):  # noqa: F811
    """``memworker drain --all --producer p`` builds ``MemoryQueue(producer_id="p")``
    and runs ``drain_all`` with owner ``p`` (memworker/cli.py _cmd_drain): it CONSUMES
    p's failures and commits, while ``--producer p`` alone observes (the help says it
    "reports without consuming"). p's own drain then never reports its failure.
    Expected: the CLI never consumes (drain_all with no owner), or refuses the pair."""
    from memworker.cli import main

    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        _fail(rawq, qsettings, "p", job)
        code = main(["drain", "--all", "--producer", "p", "--timeout", "5"])
        out = capsys.readouterr().out
        own = q.drain(timeout=5, job_ids=[job])
    assert code == 0 and f"failed {job}" in out
    assert [f.job_id for f in own.failed] == [job], "the CLI consumed p's failure"


@pytest.mark.parametrize("odd", ["x" * 128, "-", ".", "..", "_", "pending", "done", "a.b-c_d"])
def test_odd_valid_producer_ids_keep_their_own_reports(qsettings, rawq, odd):  # noqa: F811
    """Producer ids that look like key parts ("pending", "..") or are a prefix of
    another ("a" / "a.b-c_d") keep their pending sets, failures and channels apart."""
    with MemoryQueue(qsettings, producer_id=odd) as q, MemoryQueue(qsettings, producer_id="a") as a:
        mine = q.enqueue_encode_job(["mine"])[0]
        theirs = a.enqueue_encode_job(["theirs"])[0]
        _fail(rawq, qsettings, odd, mine)
        report = q.drain(timeout=5)
        assert [f.job_id for f in report.failed] == [mine] and report.lost == []
        assert a.pending() == [theirs]
        with pytest.raises(DrainTimeout):
            a.drain(timeout=0.2)
    with pytest.raises(ValidationError):
        MemoryQueue(qsettings, producer_id="x" * 129)


# ----------------------------------------------------------------------------- arguments
def test_timeout_zero_and_huge(qsettings, rawq):  # noqa: F811
    """timeout=0: a check, then DrainTimeout naming the pending job, nothing consumed;
    with everything settled it returns the report. A huge finite timeout is a wait
    that returns as soon as the job is settled."""
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        with pytest.raises(DrainTimeout) as info:
            q.drain(timeout=0)
        assert info.value.job_ids == [job] and q.pending() == [job]
        threading.Timer(0.2, lambda: _commit(rawq, qsettings, "p", job)).start()
        assert q.drain(timeout=1e300).committed == 1
        job2 = q.enqueue_encode_job(["y"])[0]
        _fail(rawq, qsettings, "p", job2)
        assert [f.job_id for f in q.drain(timeout=0).failed] == [job2]


def test_job_ids_of_another_producer_never_touch_its_reports(qsettings, rawq):  # noqa: F811
    """``drain(job_ids=[b's job])`` by producer a: a never waits on b's pending set,
    and b's own drain still reports b's failure."""
    with MemoryQueue(qsettings, producer_id="a") as a, MemoryQueue(qsettings, producer_id="b") as b:
        theirs = b.enqueue_encode_job(["b's"])[0]
        _fail(rawq, qsettings, "b", theirs)
        a.drain(timeout=5, job_ids=[theirs])
        assert [f.job_id for f in b.drain(timeout=5).failed] == [theirs]


def test_a_huge_job_ids_list_is_settled_once(qsettings, rawq):  # noqa: F811
    """20,000 ids (one real committed job among unknown ones) in one drain: one claim
    call, each id reported once; the next drain with the same ids reports nothing."""
    with MemoryQueue(qsettings, producer_id="p") as q:
        job = q.enqueue_encode_job(["x"])[0]
        _commit(rawq, qsettings, "p", job)
        ids = [job] + [f"unknown-{i}" for i in range(20_000)]
        report = q.drain(timeout=30, job_ids=ids)
        assert report.committed == 1 and len(report.lost) == 20_000 and job not in report.lost
        again = q.drain(timeout=30, job_ids=ids)
        assert again.committed == 0 and again.failed == [] and again.lost == []


# ----------------------------------------------------------------------------- restarts
def _aof_server():
    from valkey_servers import start_server

    return start_server("plain", "--appendonly", "yes", "--appendfsync", "always")


def _restart(server) -> None:
    """Stop the server (SIGTERM: the AOF is flushed) and start it again on its port
    and directory."""
    from valkey_servers import valkey_binary

    server.process.terminate()
    server.process.wait(15)
    args = [
        valkey_binary(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
        "--appendfsync", "always", "--dir", str(server.workdir), "--daemonize", "no",
        "--port", str(server.port),
    ]  # fmt: skip
    log = open(server.workdir / "valkey-2.log", "wb")  # noqa: SIM115
    server.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    import redis

    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis(host="127.0.0.1", port=server.port).ping()
            return
        except rex.ConnectionError:
            assert time.monotonic() < deadline, "server did not come back"
            time.sleep(0.05)


def test_a_restart_between_enqueue_and_drain_and_during_a_drain(namespace, fake, workers):  # noqa: F811
    """AOF with fsync always: jobs enqueued before a restart are still pending after
    it; a drain that was waiting across the restart (its pub/sub connection dropped)
    still returns once they commit, counting each once; a snapshot drain started
    after the restart waits for the jobs enqueued before it."""
    server = _aof_server()
    try:
        settings = Settings.from_url(server.url, namespace=namespace, search_mode="exact")
        with MemoryQueue(settings, producer_id="p") as q:
            before = [q.enqueue_save([_record(i)]) for i in range(3)]
            result: dict = {}

            def drain():
                try:
                    result["report"] = q.drain(timeout=60, job_ids=before)
                except BaseException as exc:  # noqa: BLE001
                    result["error"] = exc

            t = threading.Thread(target=drain)
            t.start()
            time.sleep(0.3)
            _restart(server)
            assert sorted(q.pending()) == sorted(before)
            after = q.enqueue_save([_record(9)])
            # a snapshot drain started now must wait for `after` too: no worker yet
            with pytest.raises(DrainTimeout) as info:
                q.drain(timeout=0.3)
            assert sorted(info.value.job_ids) == sorted([*before, after])
            workers(settings, threads=2)
            t.join(60)
            assert "error" not in result, result.get("error")
            assert result["report"].committed == 3 and result["report"].failed == []
            final = q.drain(timeout=30, job_ids=[*before, after])
            assert final.committed == 1 and final.failed == [] and final.lost == []
    finally:
        workers.stop_all()
        server.stop()
