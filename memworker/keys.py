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

The queue's keys (pending marks, failures, commit markers, heartbeats, dramatiq's
own under ns:dq) are in :class:`memworker.queue.jobs.QueueKeys`. The Lua scripts
(``memworker/lua``) and the docs point here rather than restate the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHANGES_CAP", "Keys", "LAYOUT_VERSION"]

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
