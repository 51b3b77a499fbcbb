"""The queue's admin reads and writes: status, live workers, health, dead letters.

For ``memworker status``, ``memworker check`` and ``memworker dead``, and for
:meth:`MemoryQueue.status`. Each runs through a redis-py driver
(:mod:`memworker.io.redispy`): transient failures are retried with backoff, other
errors raised as :class:`~memworker.errors.QueueError`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from memworker.errors import shown
from memworker.io.plan import QUEUE_ERRORS, Call, Pipeline, Plan, Script
from memworker.io.redispy import RedisSyncDriver
from memworker.keys import DEFAULT_QUEUE, QueueKeys
from memworker.queue.jobs import MARKER_TTL_MS, cut_error, delivery_field
from memworker.queue.payload import parse_job, undecodable_identity
from memworker.settings import Settings
from memworker.store.validate import MAX_ID_LENGTH, check_ids

__all__ = [
    "ALLOW_EVICTION_ENV",
    "HEALTH_TTL_MS",
    "as_text",
    "check_health",
    "eviction_allowed",
    "eviction_plan",
    "eviction_risk",
    "dead_list",
    "dead_purge",
    "dead_requeue",
    "live_workers",
    "now_ms",
    "queue_status",
    "shown_text",
    "status_plan",
    "workers_read",
]

#: A worker whose health key is older than this is not live, in milliseconds.
HEALTH_TTL_MS = 5_000
#: How far back (ms, by the reader's clock) ``ns:workers`` is read for workers whose
#: health key still exists: a worker is live while its key lives (``HEALTH_TTL_MS``,
#: by the server's clock), whatever its own clock says of its beats; a day of skew
#: between hosts is tolerated. Most entries read: :data:`WORKERS_READ`.
WORKERS_WINDOW_MS = 86_400_000
WORKERS_READ = 1_000

#: ``1``/``true``/``yes``: a worker starts (and ``memworker check`` passes) on a server
#: that may evict keys, with a warning instead of a refusal.
ALLOW_EVICTION_ENV = "MEMWORKER_ALLOW_EVICTION"


def now_ms() -> int:
    """The wall clock in milliseconds (enqueue times, report tombstones, heartbeats)."""
    return int(time.time() * 1000)


def as_text(raw: Any) -> str:
    """A reply value as ``str`` (redis-py answers bytes)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def id_text(raw: Any) -> str | None:
    """An id read back from the keyspace (a producer, a job), or ``None`` for bytes
    that are not UTF-8: anything that can write the namespace's keys may put them
    there, and no id memworker makes is such (they are skipped, not waited for)."""
    if not isinstance(raw, bytes):
        return str(raw)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def shown_text(raw: Any) -> str:
    """A reply value read back for display (ids, names, fields of health records and
    dead letters): bytes that are not UTF-8 (anything may write them) are shown with
    backslash escapes, never a ``UnicodeDecodeError`` of the whole read."""
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def _counter(raw: Any) -> int | None:
    """A throughput counter (an integer written by HINCRBY); ``None`` for anything else."""
    try:
        return int(shown_text(raw))
    except ValueError:
        return None


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """HGETALL (or a WITHSCORES range) as pairs, whether the client gave a dict, a
    list of pairs or a flat list."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    if isinstance(reply[0], (list, tuple)):
        return [tuple(pair) for pair in reply]
    return list(zip(reply[::2], reply[1::2]))


def eviction_plan() -> Plan[str | None]:
    """What is wrong when the namespace's server may evict keys on its own (a
    ``maxmemory`` limit with a ``maxmemory-policy`` other than ``noeviction``: queued
    jobs, pending marks, reports and records would vanish unnoticed, even the
    ``volatile-*`` policies take the reports and markers that carry a TTL), as a
    sentence; ``None`` when it never evicts. Read from ``INFO memory`` in a script, so
    on a Valkey Cluster the namespace's own shard answers."""
    info = as_text((yield Script("queue", ["memory"])))
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    limit = fields.get("maxmemory", "").strip()
    policy = fields.get("maxmemory_policy", "").strip()
    if not limit.isdigit() or int(limit) == 0 or policy in ("", "noeviction"):
        return None
    return (
        f"the Valkey server may evict keys (maxmemory {int(limit)} bytes, maxmemory-policy "
        f"{shown(policy)}): queued saves, their reports and stored records would vanish "
        "unnoticed; set maxmemory-policy noeviction (or maxmemory 0)"
    )


def eviction_risk(settings: Settings, *, client: Any = None) -> str | None:
    """:func:`eviction_plan` against ``settings``' server (for the worker's start and
    ``memworker check``).

    Raises:
        QueueError: The server could not be read (unreachable, or ``INFO`` denied).
    """
    driver = _driver(settings, client)
    try:
        return driver.run(eviction_plan())
    finally:
        driver.close()


def eviction_allowed(env: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`ALLOW_EVICTION_ENV` says to run on a server that may evict keys."""
    return (os.environ if env is None else env).get(ALLOW_EVICTION_ENV, "").strip().lower() in ("1", "true", "yes")


def _driver(settings: Settings, client: Any = None) -> RedisSyncDriver:
    """A queue driver over ``client`` (left open) or a client of its own."""
    return RedisSyncDriver(settings, QUEUE_ERRORS, client=client)


def workers_read(keys: QueueKeys) -> list[str]:
    """The worker ids to look up (newest beats first): a worker is live if its health
    key exists (it expires by the server's clock), so the beats' scores, stamped by the
    workers' clocks, are read with a day's slack."""
    since = str(now_ms() - WORKERS_WINDOW_MS)
    return ["ZREVRANGEBYSCORE", keys.workers, "+inf", since, "LIMIT", "0", str(WORKERS_READ)]


def _workers_plan(namespace: str) -> Plan[list[dict[str, Any]]]:
    keys = QueueKeys(namespace)
    raw = yield Call(workers_read(keys))
    ids = [shown_text(i) for i in raw]
    rows = yield Pipeline([["HGETALL", keys.worker(i)] for i in ids])
    out = []
    for worker_id, row in zip(ids, rows):
        if row:
            info = {shown_text(k): shown_text(v) for k, v in _pairs(row)}
            info["id"] = worker_id
            out.append(info)
    return out


def live_workers(settings: Settings, *, client: Any = None) -> list[dict[str, Any]]:
    """Health records of the workers that refreshed their key in the last
    ``HEALTH_TTL_MS`` (by the server's clock: the key's TTL)."""
    driver = _driver(settings, client)
    try:
        return driver.run(_workers_plan(settings.namespace))
    finally:
        driver.close()


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


def status_plan(namespace: str) -> Generator[Pipeline, list[Any], dict[str, Any]]:
    """The status read as a plan (no I/O), shared by :func:`queue_status` and
    :meth:`MemoryQueue.astatus`.

    Args:
        namespace: The namespace whose queue is read.
    """
    keys = QueueKeys(namespace)
    producers_raw, worker_ids_raw = yield Pipeline(
        [
            ["SMEMBERS", keys.producers],
            workers_read(keys),
        ]
    )
    # Read back from Valkey, written by anything with access to it: an id that is not
    # UTF-8 is shown escaped (its keys, named after the escaped text, read as empty),
    # a counter that is not an integer is left out; the status never fails on them.
    producers = sorted({shown_text(p) for p in producers_raw})
    worker_ids = [shown_text(i) for i in worker_ids_raw]
    replies = yield Pipeline(
        [
            ["LLEN", keys.q()],
            ["HLEN", keys.msgs()],
            ["HLEN", keys.delayed_msgs()],
            ["ZCARD", keys.dead()],
            ["HGETALL", keys.stats],
            *[["ZCARD", keys.producer(p).pending] for p in producers],
            *[["HGETALL", keys.worker(i)] for i in worker_ids],
        ]
    )
    depth, stored, delayed, dead, stats = replies[:5]
    counts = replies[5 : 5 + len(producers)]
    rows = replies[5 + len(producers) :]
    pending = {p: int(n) for p, n in zip(producers, counts) if int(n)}
    workers = []
    for worker_id, row in zip(worker_ids, rows):
        if row:
            info = {shown_text(k): shown_text(v) for k, v in _pairs(row)}
            info["id"] = worker_id
            workers.append(info)
    counters = {shown_text(k): _counter(v) for k, v in _pairs(stats)}
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
        "counters": {k: v for k, v in counters.items() if v is not None},
    }


def queue_status(settings: Settings | None = None, *, client: Any = None) -> dict[str, Any]:
    """Numbers for ``memworker status``: queue depth, delayed (retries), dead letters,
    in flight, pending per producer, live workers and throughput counters.

    Args:
        settings: Where the queue is.
        client: A ``redis.Redis`` to read with (left open); default: one of its own.
    """
    settings = Settings.resolve(settings)
    driver = _driver(settings, client)
    try:
        return driver.run(status_plan(settings.namespace))
    finally:
        driver.close()


def _dead_row(mid: Any, score: Any, raw: Any) -> dict[str, Any]:
    """One ``dead list`` entry. The body is read defensively: a dead letter may be
    anything (forged, corrupted, an undecodable message dead-lettered as it came), so
    each field is taken only when it has its type, and a body that is not a JSON
    object is listed as undecodable. A message id that is not UTF-8 is shown escaped;
    a time (the zset score) that is not finite is ``None``."""
    when = float(score)
    row: dict[str, Any] = {
        "message_id": shown_text(mid),
        "dead_at_ms": int(when) if math.isfinite(when) else None,
    }
    if raw is None:
        return row
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        msg = None
    if not isinstance(msg, dict):
        # what the worker read of it to report it to its producer's drain (truncated
        # bytes, invalid UTF-8): the operator can match the two
        job_id, producer, record_ids = undecodable_identity(raw)
        row.update(error="undecodable message", job_id=job_id, producer=producer, record_ids=_shown_ids(record_ids))
        return row
    args, options = msg.get("args"), msg.get("options")
    job = args[0] if isinstance(args, list) and args and isinstance(args[0], dict) else {}
    items = job.get("items")
    row.update(
        job_id=_str_or_none(msg.get("message_id")),
        actor=_str_or_none(msg.get("actor_name")),
        producer=_str_or_none(job.get("producer")),
        record_ids=_shown_ids([
            i["id"] for i in (items if isinstance(items, list) else [])
            if isinstance(i, dict) and isinstance(i.get("id"), str)
        ]),  # fmt: skip
        # cut as a failure record's error is: an embedder's error may quote a whole text
        traceback=_cut_or_none(options.get("traceback") if isinstance(options, dict) else None),
    )
    return row


#: Record ids a dead-list row shows (the rest counted), each cut past MAX_ID_LENGTH.
MAX_SHOWN_IDS = 100


def _shown_ids(ids: list[str]) -> list[str]:
    """A dead letter's record ids as a row shows them: bounded whatever a forged
    message holds (a 1 MB id, a million ids)."""
    shown_ids = [i if len(i) <= MAX_ID_LENGTH else f"{i[:MAX_ID_LENGTH]}..." for i in ids[:MAX_SHOWN_IDS]]
    if len(ids) > MAX_SHOWN_IDS:
        shown_ids.append(f"... ({len(ids)} ids)")
    return shown_ids


def _str_or_none(value: Any) -> str | None:
    """A string field of a dead letter as a row shows it (cut past MAX_ID_LENGTH)."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= MAX_ID_LENGTH else f"{value[:MAX_ID_LENGTH]}..."


def _cut_or_none(value: Any) -> str | None:
    return cut_error(value) if isinstance(value, str) else None


def _dead_list_plan(keys: QueueKeys, limit: int) -> Plan[list[dict[str, Any]]]:
    if limit <= 0:  # ZRANGE 0 -1 would list them all, ZRANGE 0 0 one
        return []
    raw = yield Call(["ZRANGE", keys.dead(), "0", str(max(0, limit - 1)), "WITHSCORES"])
    entries = _pairs(raw)
    if not entries:
        return []
    raws = yield Call(["HMGET", keys.dead_msgs(), *[e[0] for e in entries]])
    return [_dead_row(mid, score, r) for (mid, score), r in zip(entries, raws)]


def dead_list(settings: Settings | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
    """Dead-lettered jobs, oldest first: message id, job id, actor, producer, record ids, time
    (at most ``limit``; none when ``limit`` is 0 or less)."""
    settings = Settings.resolve(settings)
    driver = _driver(settings)
    try:
        return driver.run(_dead_list_plan(QueueKeys(settings.namespace), limit))
    finally:
        driver.close()


def _requeue_args(keys: QueueKeys, mid: str, raw: Any) -> list[str]:
    """The ``requeue`` op of ``queue.lua`` that moves one dead letter back: the message
    and its wake-up token and, when the job can be read, its pending mark restored and
    its reports cleared."""
    job: list[str] = []
    try:
        msg = json.loads(raw)
        (msg.get("options") or {}).pop("retries", None)
        msg.setdefault("options", {}).pop("traceback", None)
        # A delay queue's dead letter goes back to the queue, due now (as it was
        # refused: the workers refuse a delay on the queue itself).
        msg["options"].pop("eta", None)
        if msg.get("queue_name") == keys.queue + ".DQ":
            msg["queue_name"] = keys.queue
        # The job's own ids, checked (key names): a mark restored under another id
        # than the one the worker commits or fails would never clear, and hold that
        # producer's every drain. A message that fails the check goes back without one.
        job_id, producer, _ = parse_job(msg["args"][0])
        if msg.get("message_id") != job_id:
            raise ValueError("the message's id is not its job's")
        # UTF-8, as build_message encodes a job (ASCII escapes took up to 6 bytes a
        # character: a job within max_job_bytes came back twice its size)
        data: Any = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        p = keys.producer(producer)
        job = [
            p.pending, keys.producers, p.failed, p.reported, p.committed, keys.deliveries,
            producer, job_id, str(now_ms()), delivery_field(job_id, 0), p.requeued, str(MARKER_TTL_MS),
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        data = raw  # JobPayloadError too; RecursionError: a body nested too deep to read
    return ["requeue", keys.dead(), keys.dead_msgs(), keys.msgs(), keys.q(), keys.wake(), mid, data, *job]


def _requeue_plan(keys: QueueKeys, message_ids: Sequence[str] | None) -> Plan[int]:
    if message_ids is not None:
        ids = check_ids(message_ids, "message_ids")
    else:
        ids = []
        for raw_id in (yield Call(["ZRANGE", keys.dead(), "0", "-1"])):
            try:
                ids.append(as_text(raw_id))
            except UnicodeDecodeError:
                continue  # no producer makes such an id: left a dead letter (purge removes it)
    moved = 0
    for mid in ids:
        raw = yield Call(["HGET", keys.dead_msgs(), mid])
        if raw is None:
            continue
        # Moved only if still a dead letter: of two requeues at once, one moves it.
        moved += int((yield Script("queue", _requeue_args(keys, mid, raw))))
    return moved


def dead_requeue(settings: Settings | None = None, message_ids: Sequence[str] | None = None) -> int:
    """Put dead-lettered jobs back on the queue (all when ``message_ids`` is None;
    else a list of message ids, as :func:`dead_list` gives them: a string is refused).

    Each job's pending mark is restored and its failure record removed in the same
    MULTI as the move, so its producer's next drain waits for it again. A dead letter
    without a body, or (requeueing all) whose message id is not UTF-8, is left where
    it is (:func:`dead_purge` removes it); a body that cannot be read goes back as it is.
    """
    settings = Settings.resolve(settings)
    driver = _driver(settings)
    try:
        return driver.run(_requeue_plan(QueueKeys(settings.namespace), message_ids))
    finally:
        driver.close()


def _purge_plan(keys: QueueKeys, message_ids: Sequence[str] | None) -> Plan[int]:
    if message_ids is None:
        n = yield Call(["ZCARD", keys.dead()])
        yield Call(["DEL", keys.dead(), keys.dead_msgs()])
        return int(n)
    ids = check_ids(message_ids, "message_ids")
    if not ids:
        return 0
    removed, _ = yield Pipeline(
        [["ZREM", keys.dead(), *ids], ["HDEL", keys.dead_msgs(), *ids]], atomic=True
    )
    return int(removed)


def dead_purge(settings: Settings | None = None, message_ids: Sequence[str] | None = None) -> int:
    """Delete dead-lettered jobs (all when ``message_ids`` is None; else a list of
    message ids: a string is refused); returns how many."""
    settings = Settings.resolve(settings)
    driver = _driver(settings)
    try:
        return driver.run(_purge_plan(QueueKeys(settings.namespace), message_ids))
    finally:
        driver.close()
