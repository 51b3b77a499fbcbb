"""Every key name of a namespace, in one place. No I/O.

Layout (``ns`` is the namespace, default ``memworker``)::

    ns:rec:<id>          hash    one record (fields: memworker.store.codec.WRITE_FIELDS
                                 and ``embedding``)
    ns:tree:<scope>      zset    id -> created_at, for the record's scope and each ancestor
    ns:children:<scope>  hash    immediate child scope -> records under that child
    ns:cats:<scope>      hash    category -> records under the scope carrying it
    ns:meta              hash    dim, vtype, model, layout, log (the change log's incarnation)
    ns:changes           stream  change log, read by the exact-search caches
                                 (memworker.store.vectors): one entry {i = the ids, one a
                                 line} per script call that saved or deleted records, in the
                                 same atomic step; MAXLEN ~ CHANGES_CAP; deleted when the
                                 namespace becomes empty
    ns:idx                       the vector index over the prefix ns:rec:
    ns:cache:<key>       string  ValkeyCache values

The queue's keys (:class:`QueueKeys`; dramatiq's own live under ``ns:dq``)::

    ns:pending:<producer>   zset    job id -> enqueue time (ms); removed at commit or failure
    ns:failed:<producer>    hash    job id -> JSON {job_id, record_ids, error}; consumed by drain
    ns:committed:<producer> zset    job id -> commit time (ms); added by the commit itself,
                                    consumed by the drain that reports it, trimmed after 1 h
    ns:reported:<producer>  zset    job id -> time (ms) a drain reported it (committed, failed or
                                    lost): a later drain skips it; trimmed after 1 h
    ns:done:<producer>      channel a job id is published when it leaves the pending set
    ns:producers            set     producer ids that ever enqueued (for drain_all / status)
    ns:deliveries           hash    "<job id>:<attempt>" -> deliveries of that attempt (poison guard)
    ns:workers              zset    worker id -> last heartbeat (ms)
    ns:workers:<worker id>  hash    pid, host, started, processed, failed (TTL: HEALTH_TTL_MS)
    ns:stats                hash    committed, failed, records (throughput counters)
    ns:dq:<queue>           list    dramatiq: message ids (redis_message_id)
    ns:dq:<queue>.msgs      hash    dramatiq: message id -> message JSON
    ns:dq:<queue>.wake      list    wake-up tokens for idle consumers (one per enqueue)
    ns:dq:<queue>.DQ[...]   dramatiq's delay queue (retries); ns:dq:<queue>.XQ dead letters

The Lua scripts (``memworker/lua``) and the docs point here rather than restate the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CHANGES_CAP",
    "DEFAULT_QUEUE",
    "LAYOUT_VERSION",
    "Keys",
    "QueueKeys",
    "lock_key",
    "lock_under_key",
    "result_key",
]

#: Queue the actors consume.
DEFAULT_QUEUE = "default"
#: Version of the record layout, written into ``ns:meta``.
LAYOUT_VERSION = "1"
#: Entries (script calls) kept in the change log ``ns:changes`` (``XADD MAXLEN ~``),
#: passed to ``lua/store.lua`` with every call; an exact-search cache further behind
#: reloads in full.
CHANGES_CAP = 10_000


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace."""

    namespace: str

    @property
    def rec_prefix(self) -> str:
        """Prefix of record hashes (the vector index covers it)."""
        return f"{self.namespace}:rec:"

    def rec(self, record_id: str) -> str:
        """The hash of one record."""
        return f"{self.namespace}:rec:{record_id}"

    def tree(self, scope: str) -> str:
        """Sorted set of the ids under ``scope`` (the scope and its descendants)."""
        return f"{self.namespace}:tree:{scope}"

    def children(self, scope: str) -> str:
        """Hash of the immediate child scopes of ``scope`` with their record counts."""
        return f"{self.namespace}:children:{scope}"

    def cats(self, scope: str) -> str:
        """Hash of category counts under ``scope``."""
        return f"{self.namespace}:cats:{scope}"

    @property
    def meta(self) -> str:
        """Hash of namespace facts: vector dimension, embedder model id, layout version."""
        return f"{self.namespace}:meta"

    @property
    def changes(self) -> str:
        """The change log: ids saved or deleted, one entry per store script call (see the
        layout above)."""
        return f"{self.namespace}:changes"

    @property
    def index(self) -> str:
        """Name of the vector index."""
        return f"{self.namespace}:idx"

    def cache(self, key: str) -> str:
        """A ValkeyCache entry."""
        return f"{self.namespace}:cache:{key}"


@dataclass(frozen=True)
class QueueKeys:
    """Key names of the queue side of a namespace."""

    namespace: str
    queue: str = DEFAULT_QUEUE

    @property
    def dq_namespace(self) -> str:
        """dramatiq's RedisBroker namespace."""
        return f"{self.namespace}:dq"

    def pending(self, producer: str) -> str:
        """Sorted set of the producer's pending job ids (score: enqueue time, ms)."""
        return f"{self.namespace}:pending:{producer}"

    def failed(self, producer: str) -> str:
        """Hash of the producer's unreported failures (job id -> failure JSON)."""
        return f"{self.namespace}:failed:{producer}"

    def committed(self, producer: str) -> str:
        """Sorted set of the producer's commit markers (written by the commit itself)."""
        return f"{self.namespace}:committed:{producer}"

    def reported(self, producer: str) -> str:
        """Sorted set of the producer's jobs a drain has reported (tombstones)."""
        return f"{self.namespace}:reported:{producer}"

    def done_channel(self, producer: str) -> str:
        """Channel on which a job id is published when it leaves the pending set."""
        return f"{self.namespace}:done:{producer}"

    @property
    def done_pattern(self) -> str:
        """Pattern of every producer's done channel."""
        return f"{self.namespace}:done:*"

    @property
    def producers(self) -> str:
        """Set of the producer ids that ever enqueued."""
        return f"{self.namespace}:producers"

    @property
    def deliveries(self) -> str:
        """Hash of the poison guard's delivery counters (``<job>:<attempt>``)."""
        return f"{self.namespace}:deliveries"

    @property
    def workers(self) -> str:
        """Sorted set of live workers (score: last heartbeat, ms)."""
        return f"{self.namespace}:workers"

    def worker(self, worker_id: str) -> str:
        """Hash of one worker's health record (TTL: the health TTL)."""
        return f"{self.namespace}:workers:{worker_id}"

    @property
    def stats(self) -> str:
        """Hash of the throughput counters (committed, failed, records)."""
        return f"{self.namespace}:stats"

    def q(self, queue: str | None = None) -> str:
        """dramatiq's list of message ids of a queue."""
        return f"{self.dq_namespace}:{queue or self.queue}"

    def msgs(self, queue: str | None = None) -> str:
        """dramatiq's hash of a queue's messages (message id -> encoded message)."""
        return f"{self.q(queue)}.msgs"

    def wake(self, queue: str | None = None) -> str:
        """List of wake-up tokens for a queue's idle consumers."""
        return f"{self.q(queue)}.wake"

    def delayed_msgs(self, queue: str | None = None) -> str:
        """dramatiq's delay queue messages (retries waiting for their eta)."""
        return f"{self.q(queue)}.DQ.msgs"

    def dead(self, queue: str | None = None) -> str:
        """dramatiq's dead-letter sorted set of a queue."""
        return f"{self.q(queue)}.XQ"

    def dead_msgs(self, queue: str | None = None) -> str:
        """dramatiq's hash of a queue's dead-lettered messages."""
        return f"{self.q(queue)}.XQ.msgs"

    @property
    def heartbeats(self) -> str:
        """dramatiq's sorted set of broker heartbeats."""
        return f"{self.dq_namespace}:__heartbeats__"


def lock_key(namespace: str, scope: str) -> str:
    """``ns:lock:consolidate:<scope>``: the token of the holder of the consolidation
    lock on ``scope`` (memworker.crewai.locks)."""
    return f"{namespace}:lock:consolidate:{scope}"


def lock_under_key(namespace: str, scope: str) -> str:
    """``ns:lock:under:<scope>``: the locks held on strict descendants of ``scope``
    (sorted set, member ``<token><scope>``, score = lease expiry in server ms)."""
    return f"{namespace}:lock:under:{scope}"


def result_key(namespace: str, job_id: str) -> str:
    """``ns:results:<job>``: item id -> id of the record it became (``""``: dropped)."""
    return f"{namespace}:results:{job_id}"
