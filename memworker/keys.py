"""Every key name of a namespace, in one place. No I/O.

Layout 2 (``ns`` is the namespace, default ``memworker``). Every key of a namespace
starts with ``{ns}:``: the braces make the namespace the key's hash tag, so on a Valkey
Cluster all of a namespace's keys share one slot (each script and MULTI stays atomic
on one shard) and different namespaces spread over the shards. Standalone servers use
the same names. Layout 1 (``ns:`` without braces) is refused with an error naming
``memworker migrate`` (:mod:`memworker.layout`)::

    {ns}:rec:<id>          hash    one record (fields: memworker.store.codec.WRITE_FIELDS
                                 and ``embedding``)
    {ns}:tree:<scope>      zset    id -> created_at, for the record's scope and each ancestor
    {ns}:children:<scope>  hash    immediate child scope -> records under that child
    {ns}:cats:<scope>      hash    category -> records under the scope carrying it
    {ns}:meta              hash    dim, vtype, model, layout, log (the change log's incarnation),
                                 idxgen (vector indexes made so far: a store re-checks FT.INFO
                                 when it moved), sweep_ms, retskip:<scope> (the sweep's place
                                 among the LangGraph store's old items under a retention
                                 policy above them: memworker/lua/store.lua)
    {ns}:changes           stream  change log, read by the exact-search caches
                                 (memworker.store.vectors): one entry {i = the ids, one a
                                 line} per script call that saved or deleted records, in the
                                 same atomic step; MAXLEN ~ CHANGES_CAP; deleted when the
                                 namespace becomes empty
    {ns}:expiry            zset    id -> expiry time (ms) of each record written with ``exp``
                                 (TTL); the workers' sweep deletes what is due
    {ns}:tomb              zset    id -> version (us) of a versioned delete (tombstone): an
                                 older versioned write of that id is not committed; trimmed
                                 by the sweep after TOMB_KEEP_MS
    {ns}:retention         hash    scope -> days: the workers delete records created longer
                                 ago than that in the scope and below
    {ns}:sweep             string  lock of the sweep (one worker at a time)
    {ns}:idx                       the vector index over the prefix {ns}:rec:
    {ns}:cache:<key>       string  ValkeyCache values
    {ns}:lock:consolidate:<scope>  string  a consolidation lock: the holder's token, PX = lease
    {ns}:lock:under:<scope>        zset    "<token><locked scope>" -> lease expiry (ms), one
                                         entry per lock held on a strict descendant
    {ns}:results:<job>     hash    item id -> record id it became ("" dropped as a
                                 duplicate): an encode job's result, TTL 1 h

The queue's keys (:class:`QueueKeys`; dramatiq's own live under ``{ns}:dq``)::

    {ns}:pending:<producer>   zset    job id -> enqueue time (ms); removed at commit or failure
    {ns}:failed:<producer>    hash    job id -> JSON {job_id, record_ids, error}; consumed by drain
    {ns}:committed:<producer> zset    job id -> commit time (ms); added by the commit itself,
                                    consumed by the drain that reports it, trimmed after 1 h
                                    (the set expires 1 h after its last commit)
    {ns}:reported:<producer>  zset    job id -> time (ms) a drain reported it (committed, failed or
                                    lost): a later drain skips it; trimmed after 1 h
                                    (the set expires 1 h after its last write)
    {ns}:requeued:<producer>  zset    job id -> time (ms) ``memworker dead requeue`` put it
                                    back: the producer's next drain reports it; trimmed after 1 h
    {ns}:done:<producer>      channel a job id is published when it leaves the pending set
    {ns}:claim:<producer>:<t> string  what a drain's claim (token t) consumed, for its retry
                                    after a lost reply: the same answer (TTL 60 s)
    {ns}:producers            set     producer ids with work pending or unreported (drain_all,
                                    status): added by each enqueue, removed by the sweep
    {ns}:deliveries           hash    "<job id>:<attempt>" -> deliveries of that attempt (poison guard)
    {ns}:workers              zset    worker id -> last heartbeat (ms)
    {ns}:workers:<worker id>  hash    pid, host, started, processed, failed (TTL: HEALTH_TTL_MS)
    {ns}:stats                hash    committed, failed, records (throughput counters)
    {ns}:synced               string  written before each WAIT (MEMWORKER_COMMIT_REPLICAS)
    {ns}:dq:<queue>           list    dramatiq: message ids (redis_message_id)
    {ns}:dq:<queue>.msgs      hash    dramatiq: message id -> message JSON
    {ns}:dq:<queue>.wake      list    wake-up tokens for idle consumers (one per enqueue)
    {ns}:dq:<queue>.DQ[...]   dramatiq's delay queue (retries); {ns}:dq:<queue>.XQ dead letters

The Lua scripts (``memworker/lua``) and the docs point here rather than restate the layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

__all__ = [
    "CHANGES_CAP",
    "DEFAULT_QUEUE",
    "LANGGRAPH_ROOT",
    "LAYOUT_VERSION",
    "Keys",
    "ProducerKeys",
    "QueueKeys",
    "in_langgraph",
    "lock_key",
    "lock_under_key",
    "result_key",
    "tag",
]

#: Queue the actors consume.
DEFAULT_QUEUE = "default"
#: Version of the key layout, written into ``{ns}:meta`` (2: the ``{ns}`` hash tag).
LAYOUT_VERSION = "2"
#: Entries (script calls) kept in the change log ``{ns}:changes`` (``XADD MAXLEN ~``),
#: passed to ``lua/store.lua`` with every call; an exact-search cache further behind
#: reloads in full.
CHANGES_CAP = 10_000


#: The scope under which :class:`memworker.langgraph.QueuedStore` keeps its items.
#: CrewAI's memory (``memworker.crewai``) writes nothing there and reads nothing from
#: there: the two frameworks may share a namespace (the default) without seeing,
#: forging or deleting each other's data through their APIs.
LANGGRAPH_ROOT = "/langgraph"


def in_langgraph(scope: object) -> bool:
    """Whether the normalized ``scope`` is :data:`LANGGRAPH_ROOT` or below it."""
    return isinstance(scope, str) and (scope == LANGGRAPH_ROOT or scope.startswith(LANGGRAPH_ROOT + "/"))


def tag(namespace: str) -> str:
    """``{ns}``: the prefix of every key of a namespace, and its hash tag (one slot)."""
    return "{" + namespace + "}"


def _fill(obj: object, **names: str) -> None:
    """Set computed key names on a frozen dataclass (once, at construction)."""
    for name, value in names.items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace (see the layout above)."""

    namespace: str
    #: ``{ns}``: the prefix of every key (and the namespace's hash tag); the Lua
    #: scripts take it as their ``ns`` argument.
    prefix: str = field(init=False, repr=False)
    #: Prefix of record hashes (the vector index covers it).
    rec_prefix: str = field(init=False, repr=False)
    #: Hash of namespace facts: vector dimension, embedder model id, layout version.
    meta: str = field(init=False, repr=False)
    #: The change log: ids saved or deleted, one entry per store script call.
    changes: str = field(init=False, repr=False)
    #: Name of the vector index.
    index: str = field(init=False, repr=False)
    #: Sorted set: record id -> expiry time (ms).
    expiry: str = field(init=False, repr=False)
    #: Sorted set: record id -> version of its delete (tombstones).
    tomb: str = field(init=False, repr=False)
    #: Hash: scope -> retention in days.
    retention: str = field(init=False, repr=False)
    #: The sweep's lock.
    sweep: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ns = tag(self.namespace)
        _fill(self, prefix=ns, rec_prefix=f"{ns}:rec:", meta=f"{ns}:meta", changes=f"{ns}:changes",
              index=f"{ns}:idx", expiry=f"{ns}:expiry", tomb=f"{ns}:tomb",
              retention=f"{ns}:retention", sweep=f"{ns}:sweep")  # fmt: skip

    def rec(self, record_id: str) -> str:
        """The hash of one record."""
        return self.rec_prefix + record_id

    def tree(self, scope: str) -> str:
        """Sorted set of the ids under ``scope`` (the scope and its descendants)."""
        return f"{self.prefix}:tree:{scope}"

    def children(self, scope: str) -> str:
        """Hash of the immediate child scopes of ``scope`` with their record counts."""
        return f"{self.prefix}:children:{scope}"

    def cats(self, scope: str) -> str:
        """Hash of category counts under ``scope``."""
        return f"{self.prefix}:cats:{scope}"

    def cache(self, key: str) -> str:
        """A ValkeyCache entry."""
        return f"{self.prefix}:cache:{key}"


@dataclass(frozen=True)
class ProducerKeys:
    """The keys one producer's jobs are tracked by (:meth:`QueueKeys.producer`)."""

    namespace: str
    producer: str
    #: Sorted set of the producer's pending job ids (score: enqueue time, ms).
    pending: str = field(init=False, repr=False)
    #: Hash of the producer's unreported failures (job id -> failure JSON).
    failed: str = field(init=False, repr=False)
    #: Sorted set of the producer's commit markers (written by the commit itself).
    committed: str = field(init=False, repr=False)
    #: Sorted set of the producer's jobs a drain has reported (tombstones).
    reported: str = field(init=False, repr=False)
    #: Sorted set of the producer's jobs ``memworker dead requeue`` put back (score:
    #: requeue time, ms): its drains wait for and report them, as jobs it enqueued.
    requeued: str = field(init=False, repr=False)
    #: Channel on which a job id is published when it leaves the pending set.
    done_channel: str = field(init=False, repr=False)

    def claim(self, token: str) -> str:
        """What the drain claim ``token`` consumed (``queue.lua``'s ``claim``)."""
        return f"{tag(self.namespace)}:claim:{self.producer}:{token}"

    def __post_init__(self) -> None:
        ns, p = tag(self.namespace), self.producer
        _fill(self, pending=f"{ns}:pending:{p}", failed=f"{ns}:failed:{p}",
              committed=f"{ns}:committed:{p}", reported=f"{ns}:reported:{p}",
              requeued=f"{ns}:requeued:{p}", done_channel=f"{ns}:done:{p}")  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _producer_keys(namespace: str, producer: str) -> ProducerKeys:
    return ProducerKeys(namespace, producer)


@dataclass(frozen=True)
class QueueKeys:
    """Key names of the queue side of a namespace (see the layout above)."""

    namespace: str
    queue: str = DEFAULT_QUEUE
    #: dramatiq's RedisBroker namespace.
    dq_namespace: str = field(init=False, repr=False)
    #: Pattern of every producer's done channel.
    done_pattern: str = field(init=False, repr=False)
    #: Set of the producer ids that ever enqueued.
    producers: str = field(init=False, repr=False)
    #: Hash of the poison guard's delivery counters (``<job>:<attempt>``).
    deliveries: str = field(init=False, repr=False)
    #: Sorted set of live workers (score: last heartbeat, ms).
    workers: str = field(init=False, repr=False)
    #: Hash of the throughput counters (committed, failed, records).
    stats: str = field(init=False, repr=False)
    #: dramatiq's sorted set of broker heartbeats.
    heartbeats: str = field(init=False, repr=False)
    #: Written right before a ``WAIT`` (``MEMWORKER_COMMIT_REPLICAS``).
    synced: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ns = tag(self.namespace)
        _fill(self, dq_namespace=f"{ns}:dq", done_pattern=f"{ns}:done:*",
              producers=f"{ns}:producers", deliveries=f"{ns}:deliveries",
              workers=f"{ns}:workers", stats=f"{ns}:stats",
              heartbeats=f"{ns}:dq:__heartbeats__", synced=f"{ns}:synced")  # fmt: skip

    def producer(self, producer: str) -> ProducerKeys:
        """The keys of one producer's jobs (the last few thousand pairs are kept: a
        worker asks for them for every job it commits)."""
        return _producer_keys(self.namespace, producer)

    def worker(self, worker_id: str) -> str:
        """Hash of one worker's health record (TTL: the health TTL)."""
        return f"{self.workers}:{worker_id}"

    def q(self, queue: str | None = None) -> str:
        """dramatiq's list of message ids of a queue."""
        return f"{self.dq_namespace}:{queue or self.queue}"

    def msgs(self, queue: str | None = None) -> str:
        """dramatiq's hash of a queue's messages (message id -> encoded message)."""
        return self.q(queue) + ".msgs"

    def wake(self, queue: str | None = None) -> str:
        """List of wake-up tokens for a queue's idle consumers."""
        return self.q(queue) + ".wake"

    def delayed_msgs(self, queue: str | None = None) -> str:
        """dramatiq's delay queue messages (retries waiting for their eta)."""
        return self.q(queue) + ".DQ.msgs"

    def dead(self, queue: str | None = None) -> str:
        """dramatiq's dead-letter sorted set of a queue."""
        return self.q(queue) + ".XQ"

    def dead_msgs(self, queue: str | None = None) -> str:
        """dramatiq's hash of a queue's dead-lettered messages."""
        return self.q(queue) + ".XQ.msgs"


def lock_key(namespace: str, scope: str) -> str:
    """``{ns}:lock:consolidate:<scope>``: the token of the holder of the consolidation
    lock on ``scope`` (memworker.crewai.locks)."""
    return f"{tag(namespace)}:lock:consolidate:{scope}"


def lock_under_key(namespace: str, scope: str) -> str:
    """``{ns}:lock:under:<scope>``: the locks held on strict descendants of ``scope``
    (sorted set, member ``<token><scope>``, score = lease expiry in server ms)."""
    return f"{tag(namespace)}:lock:under:{scope}"


def result_key(namespace: str, job_id: str) -> str:
    """``{ns}:results:<job>``: item id -> id of the record it became (``""``: dropped)."""
    return f"{tag(namespace)}:results:{job_id}"
