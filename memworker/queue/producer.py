"""Producer side: :class:`MemoryQueue` (enqueue, drain), and the queue's admin reads.

Enqueue never embeds and never waits on a worker: input is validated whole, then
the dramatiq message (exactly what ``RedisBroker.enqueue`` writes: ``HSET
<q>.msgs id payload`` + ``RPUSH <q> id``), a wake-up token for idle consumers and
this producer's pending mark are written in ONE ``MULTI/EXEC``. There is no moment
at which a job is queued but not pending, or pending but not queued.

``drain`` is the read barrier: it subscribes to this producer's ``done`` channel,
snapshots its pending job ids, and returns when none of them is pending any more,
re-checking at least every :data:`DRAIN_POLL_MS` as a safety net. Jobs enqueued
after the snapshot never delay it. It then reads, in one MULTI, the snapshot ids'
pending marks, commit markers (``ns:committed:<producer>``, written by the commit
script itself) and every failure record of the producer, and reports: each id
with a marker as committed, every unreported failure (including jobs that failed
between drains or during a drain that timed out), and each id with none of the
three as lost (the server lost its enqueue or commit). What it reports it
consumes and tombstones (``ns:reported:<producer>``), so it is reported once.

Both faces use redis-py (the client dramatiq itself uses): ``redis.Redis`` for
the sync face and ``redis.asyncio.Redis`` for the async one, each created once on
first use; command lists are built once, IO-free, and shared by both faces.
Key layout: :mod:`memworker.jobs`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import Generator, Sequence
from typing import Any

from typing_extensions import Self

from memworker.embedded import ensure_embedded
from memworker.errors import ValidationError
from memworker.queue.jobs import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_JOB_BYTES,
    DEFAULT_QUEUE,
    ENCODE_ACTOR,
    LOST_ERROR,
    MARKER_TTL_MS,
    SAVE_ACTOR,
    DrainReport,
    DrainTimeout,
    FailedJob,
    QueueKeys,
    build_message,
    check_count,
    check_producer_id,
    delivery_field,
    encode_items,
    failure_from_json,
    save_items,
)
from memworker.settings import Settings

__all__ = [
    "DRAIN_POLL_MS",
    "HEALTH_TTL_MS",
    "DrainReport",
    "DrainTimeout",
    "FailedJob",
    "MemoryQueue",
    "check_health",
    "dead_list",
    "dead_purge",
    "dead_requeue",
    "queue_status",
    "redis_kwargs",
]

#: Longest wait between two checks of the pending set during a drain (safety net
#: under the pub/sub wake-up), in milliseconds.
DRAIN_POLL_MS = 200
#: A worker whose health key is older than this is not live, in milliseconds.
HEALTH_TTL_MS = 5_000


def redis_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py connection arguments for ``settings`` (every redis-py client of
    memworker is built with them: the queue, drain, the worker's broker, the encode
    results and CrewAI's settle thread).

    With TLS the certificate and its host name are always checked, whatever
    redis-py's default (no host name check before redis-py 6): ``ssl_check_hostname``
    is set explicitly, and only ``ssl_cert_reqs=none`` in the URL turns both off.
    """
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_ms / 1000,
        "health_check_interval": 30,
    }
    if settings.tls:
        if settings.tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.tls_ca_file
        kwargs["ssl_cert_reqs"] = "none" if settings.tls_insecure else "required"
        kwargs["ssl_check_hostname"] = not settings.tls_insecure
    return kwargs


def _sync_client(settings: Settings) -> Any:
    import redis

    settings = ensure_embedded(settings)  # start or find the embedded server, if it is one
    return redis.Redis.from_url(
        settings.url(redact=False, scheme="redis"), **redis_kwargs(settings)
    )


def _async_client(settings: Settings) -> Any:
    import redis.asyncio

    settings = ensure_embedded(settings)  # start or find the embedded server, if it is one
    return redis.asyncio.Redis.from_url(
        settings.url(redact=False, scheme="redis"), **redis_kwargs(settings)
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def default_producer_id() -> str:
    """``<host>-<pid>-<random>``, restricted to the characters a key part may hold."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- IO-free core
def enqueue_commands(
    keys: QueueKeys,
    producer: str,
    job_id: str,
    redis_id: str,
    data: bytes,
    queue: str = DEFAULT_QUEUE,
) -> list[list[Any]]:
    """The commands of one enqueue, run as one MULTI/EXEC."""
    return [
        ["HSET", keys.msgs(queue), redis_id, data],
        ["RPUSH", keys.q(queue), redis_id],
        ["RPUSH", keys.wake(queue), "1"],
        ["ZADD", keys.pending(producer), str(_now_ms()), job_id],
        ["SADD", keys.producers, producer],
    ]


def _cause(depth: int, live: int) -> str:
    if live == 0:
        return (
            "no live worker (no worker health key refreshed in the last "
            f"{HEALTH_TTL_MS} ms): start one with `memworker worker`"
        )
    return f"{live} live worker(s), {depth} message(s) queued ahead: the workers may be saturated"


class MemoryQueue:
    """Enqueue memory writes for workers, and wait for them (the drain barrier).

    Args:
        url: ``valkey://``/``redis://`` URL, a :class:`Settings`, or ``None`` for
            ``VALKEY_URL`` > ``REDIS_URL`` > the embedded server.
        namespace: Key prefix (default: the settings', else ``MEMWORKER_NAMESPACE``,
            else ``memworker``).
        producer_id: Identity of this producer (its pending set, failures and
            wake-up channel); default ``<host>-<pid>-<random>``.
        max_job_bytes: Largest encoded job accepted.
        max_items: Most records or texts in one job.

    Nothing connects until the first call; one client per face, reused.
    """

    def __init__(
        self,
        url: str | Settings | None = None,
        *,
        namespace: str | None = None,
        producer_id: str | None = None,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        self.settings = Settings.resolve(url, namespace=namespace)
        self.keys = QueueKeys(self.settings.namespace)
        self.producer_id = check_producer_id(producer_id or default_producer_id())
        if not isinstance(max_job_bytes, int) or max_job_bytes < 1024:
            raise ValidationError(
                f"max_job_bytes must be an integer >= 1024, got {max_job_bytes!r}"
            )
        if not isinstance(max_items, int) or max_items < 1:
            raise ValidationError(f"max_items must be an integer >= 1, got {max_items!r}")
        self.max_job_bytes = max_job_bytes
        self.max_items = max_items
        self._client: Any = None
        self._aclient: Any = None
        self._aloop: Any = None

    def __repr__(self) -> str:
        return (
            f"MemoryQueue({self.settings.redacted_url()!r}, namespace={self.keys.namespace!r}, "
            f"producer_id={self.producer_id!r})"
        )

    # ------------------------------------------------------------------ clients
    def _sync(self) -> Any:
        if self._client is None:
            self._client = _sync_client(self.settings)
        return self._client

    async def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            self._aclient = _async_client(self.settings)
            self._aloop = loop
        return self._aclient

    # ------------------------------------------------------------------ core
    def _prepare_save(self, records: Sequence[Any]) -> tuple[str, list[list[Any]]]:
        items = save_items(records, self.max_items)
        return self._prepare(SAVE_ACTOR, items)

    def _prepare_encode(self, items: Sequence[Any]) -> tuple[str, list[str], list[list[Any]]]:
        job_items = encode_items(items, self.max_items)
        job_id, commands = self._prepare(ENCODE_ACTOR, job_items)
        return job_id, [i["id"] for i in job_items], commands

    def _prepare(self, actor: str, items: list[dict[str, Any]]) -> tuple[str, list[list[Any]]]:
        job_id = str(uuid.uuid4())
        redis_id, data = build_message(actor, job_id, self.producer_id, items, self.max_job_bytes)
        return job_id, enqueue_commands(self.keys, self.producer_id, job_id, redis_id, data)

    # ------------------------------------------------------------------ sync face
    def enqueue_save(self, records: Sequence[Any]) -> str:
        """Enqueue records that already carry their embeddings (or none: ``None``,
        ``[]`` or a zero vector is stored without one and never searched, as
        ``ValkeyStore.save`` does); returns the job id.

        Raises:
            ValidationError: A bad record, too many records, or a job over
                ``max_job_bytes``; nothing is enqueued.
        """
        job_id, commands = self._prepare_save(records)
        _execute(self._sync(), commands)
        return job_id

    def enqueue_encode(self, items: Sequence[Any]) -> list[str]:
        """Enqueue texts for the workers to embed and save; returns their record ids.

        Args:
            items: ``str`` or mappings with ``text`` and optional ``scope``,
                ``categories``, ``metadata``, ``importance``, ``source``, ``private``.

        Raises:
            ValidationError: An empty text, a bad field, more than ``max_items``
                items, or a job over ``max_job_bytes``; nothing is enqueued.
        """
        return self.enqueue_encode_job(items)[1]

    def enqueue_encode_job(self, items: Sequence[Any]) -> tuple[str, list[str]]:
        """:meth:`enqueue_encode` that also returns the job id: ``(job_id, record_ids)``.

        The job id is what :meth:`drain` (``job_ids=``), ``DrainReport.failed`` and
        the producer's ``done`` channel speak of.
        """
        job_id, ids, commands = self._prepare_encode(items)
        _execute(self._sync(), commands)
        return job_id, ids

    def enqueue_encode_items(self, job_items: Sequence[dict[str, Any]]) -> str:
        """Enqueue items already validated by :func:`memworker.jobs.encode_items` (each
        carries its record id), e.g. gathered from several callers into one job;
        returns the job id.

        Raises:
            ValidationError: More than ``max_items`` items, or a job over
                ``max_job_bytes``; nothing is enqueued.
        """
        check_count(job_items, self.max_items, "items")
        job_id, commands = self._prepare(ENCODE_ACTOR, list(job_items))
        _execute(self._sync(), commands)
        return job_id

    def drain(
        self, timeout: float | None = None, *, job_ids: Sequence[str] | None = None
    ) -> DrainReport:
        """Wait until every job this producer has enqueued so far is committed or failed.

        Args:
            timeout: Seconds; ``None`` waits for ever.
            job_ids: Wait for these jobs of this producer instead of a snapshot of
                the pending set (e.g. ids from :meth:`enqueue_save` or :meth:`pending`);
                an id no longer pending counts as committed only if its commit
                marker exists (kept :data:`~memworker.jobs.MARKER_TTL_MS`, 1 h),
                as failed if a failure is recorded, is skipped if an earlier drain
                reported it, and is reported lost otherwise.

        Returns:
            Jobs committed (of those waited for); failed jobs: every unreported
            failure of this producer, including jobs that failed between drains, plus
            lost jobs (also listed in ``lost``). Each job is reported once.

        Raises:
            DrainTimeout: Naming the stuck jobs and the likely cause.
        """
        given = None if job_ids is None else {self.producer_id: [str(i) for i in job_ids]}
        return _drain_sync(self._sync(), self.keys, [self.producer_id], timeout, given=given)

    def drain_all(self, timeout: float | None = None) -> DrainReport:
        """Namespace-wide drain (every producer's jobs): for shutdown and reset.
        Failures of other producers are reported but left for them to consume."""
        producers = sorted(_s(p) for p in self._sync().smembers(self.keys.producers))
        return _drain_sync(self._sync(), self.keys, producers, timeout, owner=self.producer_id)

    def pending(self) -> list[str]:
        """Ids of this producer's jobs not yet committed or failed."""
        return [_s(i) for i in self._sync().zrange(self.keys.pending(self.producer_id), 0, -1)]

    def status(self) -> dict[str, Any]:
        """:func:`queue_status` plus this producer's pending count."""
        out = queue_status(self.settings, client=self._sync())
        out["producer"] = {
            "id": self.producer_id,
            "pending": out["pending"].get(self.producer_id, 0),
        }
        return out

    def close(self) -> None:
        """Close the sync client (the async one is closed by :meth:`aclose`)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async face
    async def aenqueue_save(self, records: Sequence[Any]) -> str:
        """Async :meth:`enqueue_save`."""
        job_id, commands = self._prepare_save(records)
        await _aexecute(await self._async(), commands)
        return job_id

    async def aenqueue_encode(self, items: Sequence[Any]) -> list[str]:
        """Async :meth:`enqueue_encode`."""
        return (await self.aenqueue_encode_job(items))[1]

    async def aenqueue_encode_job(self, items: Sequence[Any]) -> tuple[str, list[str]]:
        """Async :meth:`enqueue_encode_job`."""
        job_id, ids, commands = self._prepare_encode(items)
        await _aexecute(await self._async(), commands)
        return job_id, ids

    async def adrain(
        self, timeout: float | None = None, *, job_ids: Sequence[str] | None = None
    ) -> DrainReport:
        """Async :meth:`drain`."""
        given = None if job_ids is None else {self.producer_id: [str(i) for i in job_ids]}
        return await _drain_async(await self._async(), self.keys, [self.producer_id], timeout, given=given)

    async def adrain_all(self, timeout: float | None = None) -> DrainReport:
        """Async :meth:`drain_all`."""
        client = await self._async()
        producers = sorted(_s(p) for p in await client.smembers(self.keys.producers))
        return await _drain_async(client, self.keys, producers, timeout, owner=self.producer_id)

    async def astatus(self) -> dict[str, Any]:
        """Async :meth:`status`."""
        out = await _arun_plain(await self._async(), _p_status(self.settings.namespace))
        out["producer"] = {"id": self.producer_id, "pending": out["pending"].get(self.producer_id, 0)}
        return out

    async def apending(self) -> list[str]:
        """Async :meth:`pending`."""
        client = await self._async()
        return [_s(i) for i in await client.zrange(self.keys.pending(self.producer_id), 0, -1)]

    async def aclose(self) -> None:
        """Close the async client."""
        client, self._aclient = self._aclient, None
        if client is not None:
            await client.aclose()


def _execute(client: Any, commands: list[list[Any]]) -> list[Any]:
    with client.pipeline(transaction=True) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()


async def _aexecute(client: Any, commands: list[list[Any]]) -> list[Any]:
    async with client.pipeline(transaction=True) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()


# --------------------------------------------------------------------------- drain
def _snapshot_commands(keys: QueueKeys, producers: list[str]) -> list[list[Any]]:
    return [["ZRANGE", keys.pending(p), "0", "-1"] for p in producers]


def _check_commands(keys: QueueKeys, snapshot: dict[str, list[str]]) -> list[list[Any]]:
    return [["ZMSCORE", keys.pending(p), *ids] for p, ids in snapshot.items()]


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
    commands: list[list[Any]] = [["HGETALL", keys.failed(p)] for p in producers]
    for p, ids in snapshot.items():
        commands += [
            ["ZMSCORE", keys.pending(p), *ids],
            ["ZMSCORE", keys.committed(p), *ids],
            ["ZMSCORE", keys.reported(p), *ids],
        ]
    return commands


def _settle(
    keys: QueueKeys,
    snapshot: dict[str, list[str]],
    producers: list[str],
    replies: list[Any],
    owner: str | None,
) -> tuple[dict[str, list[str]], DrainReport, list[list[Any]]]:
    """From :func:`_final_commands`' replies: the ids pending again (then nothing is
    reported yet), else the report and the MULTI that consumes what it reports
    (only ``owner``'s, every producer's when ``owner`` is None).

    Reported: every failure record of ``producers`` (snapshot ids first); a snapshot id
    with a commit marker as committed; a snapshot id with neither, no pending mark and
    no tombstone of an earlier report as lost (and failed). Consumed: the failure
    records and markers reported, and a tombstone (``ns:reported``) for each reported
    id, so the next drain naming it does not report it again (nor as lost)."""
    n = len(producers)
    failures: dict[str, dict[str, Any]] = {
        p: {_s(k): v for k, v in (raw or {}).items()} for p, raw in zip(producers, replies[:n])
    }
    rest = replies[n:]
    left: dict[str, list[str]] = {}
    committed = 0
    failed: list[FailedJob] = []
    lost: list[str] = []
    done: dict[str, dict[str, list[str]]] = {
        p: {"failed": [], "marker": [], "reported": []} for p in producers
    }
    states = []
    for k, (p, ids) in enumerate(snapshot.items()):
        pending, markers, seen = rest[3 * k : 3 * k + 3]
        states.append((p, ids, pending, markers, seen))
        again = [i for i, s in zip(ids, pending) if s is not None]
        if again:
            left[p] = again
    if left:
        return left, DrainReport(), []
    for p, ids, _, markers, seen in states:
        mine = done.setdefault(p, {"failed": [], "marker": [], "reported": []})
        fails = failures.get(p, {})
        for i, marker, tomb in zip(ids, markers, seen):
            if marker is not None:
                mine["marker"].append(i)
            if i in fails:
                failed.append(failure_from_json(fails.pop(i)))
                mine["failed"].append(i)
            elif marker is not None and tomb is None:
                committed += 1
            elif marker is None and tomb is None:
                lost.append(i)
                failed.append(FailedJob(job_id=i, record_ids=[], error=LOST_ERROR))
            else:
                continue  # reported by an earlier drain (a marker found again is consumed)
            mine["reported"].append(i)
    for p, fails in failures.items():  # failed while no drain waited for them
        for i in sorted(fails):
            failed.append(failure_from_json(fails[i]))
            done[p]["failed"].append(i)
            done[p]["reported"].append(i)
    now = _now_ms()
    consume: list[list[Any]] = []
    for p, d in done.items():
        if owner is not None and p != owner:
            continue
        if d["failed"]:
            consume.append(["HDEL", keys.failed(p), *d["failed"]])
        if d["marker"]:
            consume.append(["ZREM", keys.committed(p), *d["marker"]])
        if d["reported"]:
            pairs = [x for i in d["reported"] for x in (str(now), i)]
            consume.append(["ZADD", keys.reported(p), *pairs])
            consume.append(["ZREMRANGEBYSCORE", keys.reported(p), "-inf", str(now - MARKER_TTL_MS)])
    return {}, DrainReport(committed=committed, failed=failed, lost=lost), consume


def _timeout(
    keys: QueueKeys, left: dict[str, list[str]], depth: int, live: int, timeout: Any
) -> DrainTimeout:
    return DrainTimeout([i for ids in left.values() for i in ids], _cause(depth, live), timeout)


#: What the drain plan asks its driver for: ``(op, arg)``. ``plain``: run commands
#: pipelined, reply their replies; ``tx``: the same in MULTI/EXEC; ``wait``: wait up to
#: ``arg`` seconds for a wake-up on the subscribed channel (swallowing a burst).
_DrainOp = tuple[str, Any]


def _p_drain(
    keys: QueueKeys,
    producers: list[str],
    timeout: float | None,
    given: dict[str, list[str]] | None,
    owner: str | None,
) -> Generator[_DrainOp, Any, DrainReport]:
    """The drain barrier, IO-free: run by :func:`_drain_sync` and :func:`_drain_async`
    after they subscribed to the producers' done channel(s), so no wake-up can fall
    between the subscription and the snapshot."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if given is None:
        snap = dict(zip(producers, (yield ("plain", _snapshot_commands(keys, producers)))))
    else:
        snap = given
    snapshot = {p: [_s(i) for i in ids] for p, ids in snap.items() if ids}
    everyone = list(dict.fromkeys([*producers, *snapshot]))
    left = snapshot
    while True:
        if left:
            left = _still_pending(left, (yield ("plain", _check_commands(keys, left))))
        if not left:
            replies = yield ("tx", _final_commands(keys, snapshot, everyone))
            left, report, found = _settle(keys, snapshot, everyone, replies, owner)
            if not left:
                break
        wait = DRAIN_POLL_MS / 1000
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                depth, live = yield ("plain", _depth_live_commands(keys))
                raise _timeout(keys, left, int(depth), int(live), timeout)
            wait = min(wait, remaining)
        yield ("wait", wait)
    if found:
        yield ("tx", found)
    return report


def _drain_sync(
    client: Any,
    keys: QueueKeys,
    producers: list[str],
    timeout: float | None,
    *,
    owner: str | None = None,
    given: dict[str, list[str]] | None = None,
) -> DrainReport:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        if len(producers) == 1:
            pubsub.subscribe(keys.done_channel(producers[0]))
        else:
            pubsub.psubscribe(keys.done_pattern)
        plan = _p_drain(keys, producers, timeout, given, owner)
        reply: Any = None
        while True:
            try:
                op, arg = plan.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if op == "wait":
                message = pubsub.get_message(timeout=arg)
                while message is not None:  # swallow a burst of wake-ups
                    message = pubsub.get_message(timeout=0)
                reply = None
            else:
                reply = (_execute if op == "tx" else _execute_plain)(client, arg)
    finally:
        pubsub.close()


async def _drain_async(
    client: Any,
    keys: QueueKeys,
    producers: list[str],
    timeout: float | None,
    *,
    owner: str | None = None,
    given: dict[str, list[str]] | None = None,
) -> DrainReport:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        if len(producers) == 1:
            await pubsub.subscribe(keys.done_channel(producers[0]))
        else:
            await pubsub.psubscribe(keys.done_pattern)
        plan = _p_drain(keys, producers, timeout, given, owner)
        reply: Any = None
        while True:
            try:
                op, arg = plan.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if op == "wait":
                message = await pubsub.get_message(timeout=arg)
                while message is not None:
                    message = await pubsub.get_message(timeout=0)
                reply = None
            else:
                reply = await (_aexecute if op == "tx" else _aexecute_plain)(client, arg)
    finally:
        await pubsub.aclose()


def _execute_plain(client: Any, commands: list[list[Any]]) -> list[Any]:
    if not commands:
        return []
    with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()


async def _aexecute_plain(client: Any, commands: list[list[Any]]) -> list[Any]:
    if not commands:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()


def _depth_live_commands(keys: QueueKeys) -> list[list[Any]]:
    return [["LLEN", keys.q()], ["ZCOUNT", keys.workers, str(_now_ms() - HEALTH_TTL_MS), "+inf"]]


# --------------------------------------------------------------------------- admin reads
def _admin_client(settings: Settings, client: Any) -> tuple[Any, bool]:
    if client is not None:
        return client, False
    return _sync_client(settings), True


def live_workers(settings: Settings, *, client: Any = None) -> list[dict[str, Any]]:
    """Health records of the workers that refreshed their key in the last ``HEALTH_TTL_MS``."""
    client, own = _admin_client(settings, client)
    try:
        keys = QueueKeys(settings.namespace)
        ids = [_s(i) for i in client.zrangebyscore(keys.workers, _now_ms() - HEALTH_TTL_MS, "+inf")]
        rows = _execute_plain(client, [["HGETALL", keys.worker(i)] for i in ids])
        out = []
        for worker_id, row in zip(ids, rows):
            if row:
                info = {_s(k): _s(v) for k, v in row.items()}
                info["id"] = worker_id
                out.append(info)
        return out
    finally:
        if own:
            client.close()


def check_health(settings: Settings | None = None, *, host: str | None = None) -> bool:
    """True when the server answers and a worker is live (for ``memworker check``).

    Args:
        settings: Where the broker is.
        host: Only count workers running on this host name (a liveness probe checks
            its own pod or machine, not its siblings); ``None`` counts any worker.
    """
    settings = Settings.resolve(settings)
    try:
        workers = live_workers(settings)
    except Exception:  # noqa: BLE001 - unreachable server: not healthy
        return False
    if host is not None:
        workers = [w for w in workers if w.get("host") == host]
    return bool(workers)


def _p_status(namespace: str) -> Generator[list[list[Any]], list[Any], dict[str, Any]]:
    """The status read as a plan: it yields command lists and receives their replies
    (no I/O), so :func:`queue_status` and :meth:`MemoryQueue.astatus` share it."""
    keys = QueueKeys(namespace)
    producers_raw, worker_ids_raw = yield [
        ["SMEMBERS", keys.producers],
        ["ZRANGEBYSCORE", keys.workers, str(_now_ms() - HEALTH_TTL_MS), "+inf"],
    ]
    producers = sorted(_s(p) for p in producers_raw)
    worker_ids = [_s(i) for i in worker_ids_raw]
    replies = yield [
        ["LLEN", keys.q()],
        ["HLEN", keys.msgs()],
        ["HLEN", keys.delayed_msgs()],
        ["ZCARD", keys.dead()],
        ["HGETALL", keys.stats],
        *[["ZCARD", keys.pending(p)] for p in producers],
        *[["HGETALL", keys.worker(i)] for i in worker_ids],
    ]
    depth, stored, delayed, dead, stats = replies[:5]
    counts = replies[5 : 5 + len(producers)]
    rows = replies[5 + len(producers) :]
    pending = {p: int(n) for p, n in zip(producers, counts) if int(n)}
    workers = []
    for worker_id, row in zip(worker_ids, rows):
        if row:
            info = {_s(k): _s(v) for k, v in _pairs(row)}
            info["id"] = worker_id
            workers.append(info)
    return {
        "namespace": namespace,
        "queue": DEFAULT_QUEUE,
        "depth": int(depth),
        "in_flight": max(0, int(stored) - int(depth)),
        "delayed": int(delayed),
        "dead": int(dead),
        "pending": pending,
        "pending_total": sum(pending.values()),
        "workers": workers,
        "counters": {_s(k): int(v) for k, v in _pairs(stats)},
    }


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """HGETALL as pairs, whether the client gave a dict or a flat list."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2]))


def _run_plain(client: Any, plan: Generator[list[list[Any]], list[Any], Any]) -> Any:
    try:
        commands = next(plan)
        while True:
            commands = plan.send(_execute_plain(client, commands))
    except StopIteration as stop:
        return stop.value


async def _arun_plain(client: Any, plan: Generator[list[list[Any]], list[Any], Any]) -> Any:
    try:
        commands = next(plan)
        while True:
            commands = plan.send(await _aexecute_plain(client, commands))
    except StopIteration as stop:
        return stop.value


def queue_status(settings: Settings | None = None, *, client: Any = None) -> dict[str, Any]:
    """Numbers for ``memworker status``: queue depth, delayed (retries), dead letters,
    in flight, pending per producer, live workers and throughput counters."""
    settings = Settings.resolve(settings)
    client, own = _admin_client(settings, client)
    try:
        return _run_plain(client, _p_status(settings.namespace))
    finally:
        if own:
            client.close()


def dead_list(settings: Settings | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
    """Dead-lettered jobs, oldest first: message id, job id, actor, producer, record ids, time."""
    settings = Settings.resolve(settings)
    client = _sync_client(settings)
    try:
        keys = QueueKeys(settings.namespace)
        entries = client.zrange(keys.dead(), 0, max(0, limit - 1), withscores=True)
        if not entries:
            return []
        raws = client.hmget(keys.dead_msgs(), [e[0] for e in entries])
        out = []
        for (mid, score), raw in zip(entries, raws):
            row: dict[str, Any] = {"message_id": _s(mid), "dead_at_ms": int(score)}
            if raw is not None:
                try:
                    msg = json.loads(raw)
                    job = (msg.get("args") or [{}])[0]
                    row.update(
                        job_id=msg.get("message_id"),
                        actor=msg.get("actor_name"),
                        producer=job.get("producer") if isinstance(job, dict) else None,
                        record_ids=[i.get("id") for i in job.get("items", [])]
                        if isinstance(job, dict)
                        else [],
                        traceback=(msg.get("options") or {}).get("traceback"),
                    )
                except (ValueError, AttributeError):
                    row["error"] = "undecodable message"
            out.append(row)
        return out
    finally:
        client.close()


def dead_requeue(settings: Settings | None = None, message_ids: Sequence[str] | None = None) -> int:
    """Put dead-lettered jobs back on the queue (all when ``message_ids`` is None).

    Each job's pending mark is restored and its failure record removed in the same
    MULTI as the move, so its producer's next drain waits for it again.
    """
    settings = Settings.resolve(settings)
    client = _sync_client(settings)
    try:
        keys = QueueKeys(settings.namespace)
        ids = (
            list(message_ids)
            if message_ids is not None
            else [_s(i) for i in client.zrange(keys.dead(), 0, -1)]
        )
        moved = 0
        for mid in ids:
            raw = client.hget(keys.dead_msgs(), mid)
            if raw is None:
                continue
            commands: list[list[Any]] = []
            try:
                msg = json.loads(raw)
                (msg.get("options") or {}).pop("retries", None)
                msg.setdefault("options", {}).pop("traceback", None)
                job = msg["args"][0]
                producer, job_id = job["producer"], msg["message_id"]
                data = json.dumps(msg, separators=(",", ":")).encode()
                commands = [
                    ["ZADD", keys.pending(producer), str(_now_ms()), job_id],
                    ["HDEL", keys.failed(producer), job_id],
                    ["ZREM", keys.reported(producer), job_id],
                    ["ZREM", keys.committed(producer), job_id],
                    ["HDEL", keys.deliveries, delivery_field(job_id, 0)],
                ]
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                data = raw
            commands = [
                ["ZREM", keys.dead(), mid],
                ["HDEL", keys.dead_msgs(), mid],
                ["HSET", keys.msgs(), mid, data],
                ["RPUSH", keys.q(), mid],
                ["RPUSH", keys.wake(), "1"],
                *commands,
            ]
            _execute(client, commands)
            moved += 1
        return moved
    finally:
        client.close()


def dead_purge(settings: Settings | None = None, message_ids: Sequence[str] | None = None) -> int:
    """Delete dead-lettered jobs (all when ``message_ids`` is None); returns how many."""
    settings = Settings.resolve(settings)
    client = _sync_client(settings)
    try:
        keys = QueueKeys(settings.namespace)
        if message_ids is None:
            n = int(client.zcard(keys.dead()))
            client.delete(keys.dead(), keys.dead_msgs())
            return n
        ids = list(message_ids)
        if not ids:
            return 0
        removed, _ = _execute(
            client, [["ZREM", keys.dead(), *ids], ["HDEL", keys.dead_msgs(), *ids]]
        )
        return int(removed)
    finally:
        client.close()
