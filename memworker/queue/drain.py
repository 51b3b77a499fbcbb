"""The drain barrier: the IO-free drain plan, its settling into a
:class:`~memworker.queue.jobs.DrainReport`, and its sync and async drivers.

``drain`` subscribes to the producer's ``done`` channel (``psubscribe`` to every
producer's for a namespace-wide drain), snapshots its pending job ids, and returns
when none of them is pending any more, re-checking at least every
:data:`DRAIN_POLL_MS` as a safety net. Jobs enqueued after the snapshot never delay
it. It then reads, in one MULTI, the snapshot ids' pending marks, commit markers
(``ns:committed:<producer>``, written by the commit script itself) and every failure
record of the producer, and reports: each id with a marker as committed, every
unreported failure (including jobs that failed between drains or during a drain that
timed out), and each id with none of the three as lost (the server lost its enqueue
or commit). What it reports of its owner's jobs it consumes and tombstones
(``ns:reported:<producer>``) in one script step that also claims each report, so a job
is reported once, also by two drains of one producer that read it at the same time.
A drain with no owner (``memworker drain --producer X``) observes: it reports and
consumes nothing. With ``MEMWORKER_COMMIT_REPLICAS=N`` it returns only once N
replicas have every commit made so far (:func:`p_replicated`, before it consumes
anything).

Every read and write runs through a redis-py driver (:mod:`memworker.io.redispy`):
transient failures are retried with backoff, other errors raised as
:class:`~memworker.errors.QueueError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from memworker.errors import DrainTimeout, ReplicationTimeout
from memworker.io.plan import Pipeline, Plan, Replicated, Script, Step, one
from memworker.io.redispy import RedisAsyncDriver, RedisSyncDriver, is_transient_redis
from memworker.keys import QueueKeys
from memworker.queue.admin import HEALTH_TTL_MS, id_text, now_ms, workers_read
from memworker.queue.jobs import (
    LOST_ERROR,
    MARKER_TTL_MS,
    DrainReport,
    FailedJob,
    check_timeout,
    failure_from_json,
)

__all__ = [
    "DRAIN_POLL_MS",
    "RECENT_JOBS",
    "RecentJobs",
    "Wait",
    "drain_async",
    "drain_plan",
    "drain_sync",
    "p_replicated",
    "replica_timeout_ms",
]

log = logging.getLogger("memworker.queue.drain")

#: Longest wait between two checks of the pending set during a drain (safety net
#: under the pub/sub wake-up), in milliseconds.
DRAIN_POLL_MS = 200


def p_replicated(keys: QueueKeys, replicas: int, timeout_ms: int, what: str) -> Plan[None]:
    """Wait until ``replicas`` replicas have every write made so far on the namespace's
    primary (``MEMWORKER_COMMIT_REPLICAS``); nothing when ``replicas`` is 0.

    Raises:
        ReplicationTimeout: Fewer confirmed within ``timeout_ms``, naming ``what``.
    """
    if replicas <= 0:
        return
    acked = int((yield Replicated(keys.synced, replicas, timeout_ms)))
    if acked < replicas:
        raise ReplicationTimeout(
            f"{what}: confirmed by {acked} of {replicas} replica(s) within {timeout_ms} ms "
            "(MEMWORKER_COMMIT_REPLICAS); it is on the primary, not yet safe from a failover"
        )


@dataclass(frozen=True)
class Wait:
    """A drain step: wait up to ``seconds`` for a wake-up on the subscribed channel
    (taking a burst at once); its reply is the job ids the wake-ups named (empty when
    the wait timed out)."""

    seconds: float


def _snapshot_commands(keys: QueueKeys, producers: list[str]) -> list[list[Any]]:
    """Each producer's pending ids, then each one's requeued ids (``memworker dead
    requeue``: reported like its own, also when they committed before this drain)."""
    since = f"({now_ms() - MARKER_TTL_MS}"
    return [["ZRANGE", keys.producer(p).pending, "0", "-1"] for p in producers] + [
        ["ZRANGEBYSCORE", keys.producer(p).requeued, since, "+inf"] for p in producers
    ]


def _ids(raws: Any) -> list[str]:
    """Ids read back, those that are not UTF-8 left out (:func:`id_text`)."""
    return [i for i in map(id_text, raws) if i is not None]


def _check_commands(keys: QueueKeys, snapshot: dict[str, list[str]]) -> list[list[Any]]:
    return [["ZMSCORE", keys.producer(p).pending, *ids] for p, ids in snapshot.items()]


def _still_pending(snapshot: dict[str, list[str]], replies: list[Any]) -> dict[str, list[str]]:
    out = {}
    for (producer, ids), scores in zip(snapshot.items(), replies):
        left = [i for i, s in zip(ids, scores) if s is not None]
        if left:
            out[producer] = left
    return out


def _final_commands(
    keys: QueueKeys, snapshot: dict[str, list[str]], producers: list[str]
) -> list[list[Any]]:
    """One MULTI read of everything a drain reports: every failure record of
    ``producers``, and for the snapshot ids their pending marks, commit markers and
    "already reported" tombstones. A commit (one script) and a failure (one MULTI)
    each move an id out of pending atomically, so this read sees each id in exactly
    one state."""
    commands: list[list[Any]] = [["HGETALL", keys.producer(p).failed] for p in producers]
    for p, ids in snapshot.items():
        commands += [
            ["ZMSCORE", keys.producer(p).pending, *ids],
            ["ZMSCORE", keys.producer(p).committed, *ids],
            ["ZMSCORE", keys.producer(p).reported, *ids],
        ]
    return commands


#: What a drain found of one job: (producer, job id, kind, failure), kind as the
#: ``claim`` op of ``queue.lua`` takes it ("f" failed, "c" committed, "l" lost, "m" a
#: marker of a job reported before: consumed, not reported).
Found = tuple[str, str, str, FailedJob | None]


def _settle(
    snapshot: dict[str, list[str]], producers: list[str], replies: list[Any]
) -> tuple[dict[str, list[str]], list[Found]]:
    """From :func:`_final_commands`' replies: the ids pending again (then nothing is
    reported yet), else what the drain found.

    Found: every failure record of ``producers`` (snapshot ids first); a snapshot id
    with a commit marker and no tombstone of an earlier report as committed; a snapshot
    id with neither, no pending mark and no tombstone as lost (and failed); a marker of
    an id with a tombstone, to consume."""
    n = len(producers)
    failures: dict[str, dict[str, Any]] = {
        p: {k: v for k, v in ((id_text(k), v) for k, v in (raw or {}).items()) if k is not None}
        for p, raw in zip(producers, replies[:n])
    }
    rest = replies[n:]
    left: dict[str, list[str]] = {}
    states = []
    for k, (p, ids) in enumerate(snapshot.items()):
        pending, markers, seen = rest[3 * k : 3 * k + 3]
        states.append((p, ids, markers, seen))
        again = [i for i, s in zip(ids, pending) if s is not None]
        if again:
            left[p] = again
    if left:
        return left, []
    found: list[Found] = []
    for p, ids, markers, seen in states:
        fails = failures.get(p, {})
        for i, marker, tomb in zip(ids, markers, seen):
            if i in fails:
                found.append((p, i, "f", failure_from_json(fails.pop(i), i)))
            elif tomb is not None:
                if marker is not None:  # reported by an earlier drain: consumed only
                    found.append((p, i, "m", None))
            elif marker is not None:
                found.append((p, i, "c", None))
            else:
                found.append((p, i, "l", FailedJob(job_id=i, record_ids=[], error=LOST_ERROR)))
    for p, fails in failures.items():  # failed while no drain waited for them
        found += [(p, i, "f", failure_from_json(fails[i], i)) for i in sorted(fails)]
    return {}, found


def _claim(
    keys: QueueKeys, found: list[Found], owner: str | None
) -> tuple[list[Found], list[Found], Script | None]:
    """Split ``found`` into what is reported without a claim (other producers' finds,
    every find of an observer: ``owner`` None), ``owner``'s finds, and the ``claim``
    step of ``queue.lua`` that consumes them and says which of them this drain reports."""
    mine = [f for f in found if f[0] == owner]
    if not mine:
        return [f for f in found if f[2] != "m"], [], None
    now = now_ms()
    k = keys.producer(mine[0][0])
    # its own key: a retry of the same claim (its reply lost) gets the same answer
    args = ["claim", str(now), str(now - MARKER_TTL_MS), str(MARKER_TTL_MS), k.claim(uuid.uuid4().hex)]
    args += [k.failed, k.committed, k.reported, k.requeued, str(len(mine))]
    args += [x for _, i, kind, _ in mine for x in (kind, i)]
    return [f for f in found if f[0] != owner and f[2] != "m"], mine, Script("queue", args)


def _report(found: list[Found]) -> DrainReport:
    committed, failed, lost = 0, [], []
    for _, i, kind, job in found:
        if kind == "c":
            committed += 1
        elif kind in ("f", "l") and job is not None:
            failed.append(job)
            if kind == "l":
                lost.append(i)
    return DrainReport(committed=committed, failed=failed, lost=lost)


def _cause(depth: int, live: int, messages: int) -> str:
    if messages == 0:
        # A pending job's message is in one of the two hashes until its commit (a
        # retry's copy is queued before the original is acked; a dead letter leaves
        # pending in the same step): none at all means the messages went behind
        # memworker's back
        return (
            "no message is queued, in flight or delayed: the jobs' messages are gone from "
            "the server (evicted under a maxmemory-policy other than noeviction, or deleted) "
            "and these jobs will never commit"
        )
    if live == 0:
        return (
            "no live worker (no worker health key refreshed in the last "
            f"{HEALTH_TTL_MS} ms, by the server's clock): start one with `memworker worker`"
        )
    return f"{live} live worker(s), {depth} message(s) queued ahead: the workers may be saturated"


def _timeout(keys: QueueKeys, left: dict[str, list[str]], timeout: Any) -> Plan[DrainTimeout]:
    """The error of a drain out of time, with its likely cause. A worker counts as live
    while its health key exists (it expires by the server's clock), as ``memworker
    check`` counts it: its beats' scores are stamped by its own host's clock."""
    depth, ids, queued, delayed = yield Pipeline(
        [["LLEN", keys.q()], workers_read(keys), ["HLEN", keys.msgs()], ["HLEN", keys.delayed_msgs()]]
    )
    names = [name for name in (id_text(i) for i in ids) if name is not None]
    live = 0
    if names:
        live = sum(int(n) for n in (yield Pipeline([["EXISTS", keys.worker(name)] for name in names])))
    left_ids = [i for ids in left.values() for i in ids]
    return DrainTimeout(left_ids, _cause(int(depth), live, int(queued) + int(delayed)), timeout)


def drain_plan(
    keys: QueueKeys,
    producers: list[str],
    timeout: float | None,
    given: dict[str, list[str]] | None,
    owner: str | None,
    replicas: int = 0,
    replica_timeout_ms: int = 5_000,
    also: dict[str, list[str]] | None = None,
) -> Generator[Step | Wait, Any, DrainReport]:
    """The drain barrier, IO-free: run by :func:`drain_sync` and :func:`drain_async`
    after they subscribed to the producers' done channel(s), so no wake-up can fall
    between the subscription and the snapshot.

    Args:
        keys: The namespace's queue keys.
        producers: Producers whose pending sets are snapshotted (and whose failures
            are reported).
        timeout: Seconds; ``None`` waits for ever.
        given: Job ids to wait for, per producer, instead of a snapshot.
        owner: The producer whose reports this drain consumes and claims; the other
            producers' are reported and left for them. ``None``: consume nothing.
        replicas: Report commits only once this many replicas have them.
        replica_timeout_ms: How long to wait for them.
        also: Job ids to wait for besides the snapshot, per producer (a queue's
            :class:`RecentJobs`: one found nowhere is reported lost).

    Yields:
        :class:`~memworker.io.plan.Pipeline` steps (plain reads, MULTI reads and
        writes) and :class:`Wait` steps.

    Raises:
        DrainTimeout: Naming the stuck jobs and the likely cause.
    """
    timeout = check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    if given is None:
        replies = yield Pipeline(_snapshot_commands(keys, producers))
        n = len(producers)
        snap = {p: [*pending, *requeued] for p, pending, requeued in zip(producers, replies[:n], replies[n:])}
        for p, ids in (also or {}).items():
            snap[p] = [*snap.get(p, []), *ids]
    else:
        snap = given
    # An id given twice is waited for, and reported, once.
    # (a member that is not UTF-8 is no job of memworker's: a forgery, not waited for)
    snapshot = {p: kept for p, ids in snap.items() if (kept := list(dict.fromkeys(_ids(ids))))}
    everyone = list(dict.fromkeys([*producers, *snapshot]))
    left = snapshot
    check, checked = True, 0.0
    while True:
        if left and check:
            checked = time.monotonic()
            left = _still_pending(left, (yield Pipeline(_check_commands(keys, left))))
        if not left:
            # The one read that decides, atomic, whatever told us the jobs were done.
            replies = yield Pipeline(_final_commands(keys, snapshot, everyone), atomic=True)
            left, found = _settle(snapshot, everyone, replies)
            if not left:
                break
        wait = DRAIN_POLL_MS / 1000
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise (yield from _timeout(keys, left, timeout))
            wait = min(wait, remaining)
        notified = yield Wait(wait)
        # A wake-up names the job that left its pending set: drop it without reading
        # every id still waited for (that made a drain of n jobs cost n^2 reads). A wait
        # that timed out reads them all, and so does any wait DRAIN_POLL_MS after the
        # last full read (a wake-up can be lost: a pub/sub reconnect). Nothing returns
        # before the final atomic read above.
        check = not notified or time.monotonic() - checked >= DRAIN_POLL_MS / 1000
        if notified:
            gone = set(notified)
            left = {p: kept for p, ids in left.items() if (kept := [i for i in ids if i not in gone])}
    # Also with nothing in the snapshot: jobs committed before the drain began count
    # as the producer's writes too.
    yield from p_replicated(keys, replicas, replica_timeout_ms, "drain")
    report, mine, claim = _claim(keys, found, owner)
    if claim is not None:
        # Consumed and claimed in one step: of two drains that read the same failure or
        # commit, only the first to get here reports it.
        flags = yield claim
        report += [f for f, flag in zip(mine, flags) if int(flag) == 1]
    return _report(report)


def _job_id(message: dict[str, Any]) -> str | None:
    data = message.get("data")
    return id_text(data) if isinstance(data, (bytes, str)) else None


def _wait_sync(pubsub: Any, seconds: float) -> list[str]:
    """Wait for a wake-up, then take the burst; the job ids they name."""
    ids: list[str] = []
    message = pubsub.get_message(timeout=seconds)
    while message is not None:
        job = _job_id(message)
        if job is not None:
            ids.append(job)
        message = pubsub.get_message(timeout=0)
    return ids


async def _wait_async(pubsub: Any, seconds: float) -> list[str]:
    """Async :func:`_wait_sync`."""
    ids: list[str] = []
    message = await pubsub.get_message(timeout=seconds)
    while message is not None:
        job = _job_id(message)
        if job is not None:
            ids.append(job)
        message = await pubsub.get_message(timeout=0)
    return ids


def _replication(driver: RedisSyncDriver | RedisAsyncDriver) -> tuple[int, int]:
    """``MEMWORKER_COMMIT_REPLICAS`` and the wait's timeout, from the driver's settings."""
    return driver.settings.commit_replicas, replica_timeout_ms(driver.settings.request_timeout_ms)


def replica_timeout_ms(request_timeout_ms: int) -> int:
    """How long a WAIT for replicas may block: within the client's request timeout."""
    return max(50, request_timeout_ms * 4 // 5)


class _Wakeups:
    """A drain's wake-ups: a pub/sub subscription to the producers' done channel(s),
    made before the snapshot. It only shortens the waits (the plan reads the pending
    set again at least every :data:`DRAIN_POLL_MS`), so a connection lost under it is
    not the drain's failure: after a failover redis-py's cluster pub/sub stays on the
    node it first chose (its slot map is refreshed by a command, not by a
    subscription), and every retry reached the dead primary until the drain gave up.
    Now a wait whose subscription is lost sleeps instead (a poll), and the next wait
    subscribes again, once, through the client's slot map as the drain's reads left
    it. Other errors (an ACL refusing pub/sub) fail the drain, wrapped, as before."""

    def __init__(self, driver: RedisSyncDriver | RedisAsyncDriver, keys: QueueKeys, producers: list[str]) -> None:
        self.driver = driver
        self.channel = keys.producer(producers[0]).done_channel if len(producers) == 1 else None
        self.pattern = keys.done_pattern
        self.pubsub: Any = None

    def failed(self, exc: Exception) -> None:
        """Drop the subscription after ``exc`` (raised wrapped unless transient)."""
        self.pubsub = None
        if not is_transient_redis(exc):
            raise self.driver.wrapped(exc) from exc
        log.info("drain: wake-up subscription lost (%s), polling until it is back", type(exc).__name__)

    def subscribe(self) -> None:
        pubsub = self.driver.client().pubsub(ignore_subscribe_messages=True)
        try:
            if self.channel is not None:
                pubsub.subscribe(self.channel)
            else:
                pubsub.psubscribe(self.pattern)
        except Exception as exc:
            _close_quietly(pubsub)
            self.failed(exc)
            return
        self.pubsub = pubsub

    def wait(self, seconds: float) -> list[str]:
        if self.pubsub is None:
            self.subscribe()
            if self.pubsub is None:
                time.sleep(seconds)
                return []
        try:
            return _wait_sync(self.pubsub, seconds)
        except Exception as exc:
            _close_quietly(self.pubsub)
            self.failed(exc)
            return []

    def close(self) -> None:
        if self.pubsub is not None:
            _close_quietly(self.pubsub)
            self.pubsub = None

    async def asubscribe(self) -> None:
        pubsub = self.driver.client().pubsub(ignore_subscribe_messages=True)
        try:
            if self.channel is not None:
                await pubsub.subscribe(self.channel)
            else:
                await pubsub.psubscribe(self.pattern)
        except Exception as exc:
            await _aclose_quietly(pubsub)
            self.failed(exc)
            return
        self.pubsub = pubsub

    async def await_(self, seconds: float) -> list[str]:
        if self.pubsub is None:
            await self.asubscribe()
            if self.pubsub is None:
                await asyncio.sleep(seconds)
                return []
        try:
            return await _wait_async(self.pubsub, seconds)
        except Exception as exc:
            await _aclose_quietly(self.pubsub)
            self.failed(exc)
            return []

    async def aclose(self) -> None:
        if self.pubsub is not None:
            await _aclose_quietly(self.pubsub)
            self.pubsub = None


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - its connection is already gone
        pass


async def _aclose_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # noqa: BLE001 - its connection is already gone
        pass


def drain_sync(
    driver: RedisSyncDriver,
    keys: QueueKeys,
    producers: list[str],
    timeout: float | None,
    *,
    owner: str | None = None,
    given: dict[str, list[str]] | None = None,
    also: dict[str, list[str]] | None = None,
) -> DrainReport:
    """Run :func:`drain_plan` on ``driver`` (each step with the driver's retries and
    error wrapping), its waits on a pub/sub subscription made before the snapshot
    (:class:`_Wakeups`)."""
    wakeups = _Wakeups(driver, keys, producers)
    try:
        wakeups.subscribe()
        plan = drain_plan(keys, producers, timeout, given, owner, *_replication(driver), also=also)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(step, Wait):
                reply = wakeups.wait(step.seconds)
            else:
                reply = driver.run(one(step))
    finally:
        wakeups.close()


async def drain_async(
    driver: RedisAsyncDriver,
    keys: QueueKeys,
    producers: list[str],
    timeout: float | None,
    *,
    owner: str | None = None,
    given: dict[str, list[str]] | None = None,
    late: LateClaims | None = None,
    also: dict[str, list[str]] | None = None,
) -> DrainReport:
    """Async :func:`drain_sync`. The final claim runs to its end even if the drain is
    cancelled meanwhile (``asyncio.wait_for``): what it consumed goes to ``late``, for
    the producer's next drain to report."""
    wakeups = _Wakeups(driver, keys, producers)
    held = driver.hold()  # the subscription's connection is the loop client's too
    try:
        await wakeups.asubscribe()
        plan = drain_plan(keys, producers, timeout, given, owner, *_replication(driver), also=also)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(step, Wait):
                reply = await wakeups.await_(step.seconds)
            elif late is not None and isinstance(step, Script) and step.args[:1] == ["claim"]:
                # Once sent, the claim consumes reports on the server: a cancelled
                # drain must not drop them with its reply.
                claim = asyncio.ensure_future(driver.run(one(step)))
                try:
                    reply = await asyncio.shield(claim)
                except asyncio.CancelledError:
                    late.track(plan, claim)
                    raise
            else:
                reply = await driver.run(one(step))
    finally:
        try:
            await wakeups.aclose()
        finally:
            await driver.release(held)


#: How many of its latest jobs a queue remembers for its next drain (:class:`RecentJobs`).
RECENT_JOBS = 10_000
#: ... and for how long: a commit's marker and a report's tombstone are kept
#: MARKER_TTL_MS; past that a job found nowhere may have been reported already.
RECENT_MS = MARKER_TTL_MS - 600_000


class RecentJobs:
    """The jobs a queue enqueued since its last drain (at most :data:`RECENT_JOBS`,
    each for :data:`RECENT_MS`), which that drain looks for besides the pending set:
    a job found nowhere (the server flushed, restarted without persistence, or evicted
    it between the enqueue and the drain) is reported lost instead of going unseen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, float] = {}

    def add(self, job_id: str) -> None:
        """Remember a job that is in Valkey (its enqueue returned)."""
        with self._lock:
            self._ids[job_id] = time.monotonic()
            if len(self._ids) > RECENT_JOBS:
                del self._ids[next(iter(self._ids))]

    def take(self) -> dict[str, float]:
        """Forget and return the jobs still young enough to look for."""
        oldest = time.monotonic() - RECENT_MS / 1000
        with self._lock:
            out = {i: t for i, t in self._ids.items() if t >= oldest}
            self._ids.clear()
        return out

    def put_back(self, taken: dict[str, float]) -> None:
        """Remember again what a drain took and did not report (it failed)."""
        with self._lock:
            self._ids = {**taken, **self._ids}
            while len(self._ids) > RECENT_JOBS:
                del self._ids[next(iter(self._ids))]

    def discard(self, job_ids: list[str]) -> None:
        """Forget jobs a drain waited for by id."""
        with self._lock:
            for i in job_ids:
                self._ids.pop(i, None)

    def clear(self) -> None:
        """Forget everything (a forked child: another producer's jobs)."""
        with self._lock:
            self._ids.clear()


class LateClaims:
    """The claims of a producer's drains cancelled while their claim ran: each runs
    to its end, and what it consumed is reported by the producer's next drain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: list[DrainReport] = []
        self._tasks: set[asyncio.Future[Any]] = set()

    def track(self, plan: Generator[Any, Any, DrainReport], claim: asyncio.Future[Any]) -> None:
        """Keep ``claim``'s report (the rest of ``plan``) once it ends."""
        self._tasks.add(claim)
        claim.add_done_callback(lambda done: self._ended(plan, done))

    def _ended(self, plan: Generator[Any, Any, DrainReport], claim: asyncio.Future[Any]) -> None:
        self._tasks.discard(claim)
        if claim.cancelled() or claim.exception() is not None:
            return  # not sent (nothing consumed), or its answer is unknown
        try:
            plan.send(claim.result())
        except StopIteration as stop:
            with self._lock:
                self._reports.append(stop.value)

    async def settle(self) -> None:
        """Wait for this event loop's claims still running."""
        loop = asyncio.get_running_loop()
        running = [t for t in self._tasks if t.get_loop() is loop]
        if running:
            await asyncio.wait(running)

    def take(self) -> list[DrainReport]:
        """The reports kept so far (each returned once)."""
        if not self._reports:
            return []
        with self._lock:
            out, self._reports = self._reports, []
        return out
