"""The workers' sweep: expired records (TTL) and records past their scope's
retention are deleted, with their side indexes, by whichever worker takes the
namespace's sweep lock (``{ns}:sweep``, ``SET NX PX <interval>``): at most one sweep
per interval across every worker process and host.

Never a scan of the keyspace: due expiries come from ``{ns}:expiry`` (id -> expiry
ms) and old records from the scope's ``{ns}:tree:<scope>`` (id -> created_at), each
step one atomic script call of at most :data:`SWEEP_STEP` records
(``lua/store.lua sweep``). Reads never wait for it: memworker.langgraph hides an
expired item at once.

The same sweep forgets producers (``{ns}:producers``) with nothing pending and no
unreported failure, :data:`PRUNE_STEP` a step (``SSCAN``, then ``lua/queue.lua prune``,
atomic with enqueues): every process has a producer id of its own, and status,
drain_all and each metrics scrape read one key per producer in the set. A forgotten
producer's next enqueue adds it back.

The interval: ``{ns}:meta`` field ``sweep_ms`` when a store set one
(``QueuedStore(ttl={"sweep_interval_minutes": N})``), else ``MEMWORKER_SWEEP_INTERVAL``
seconds (default :data:`DEFAULT_SWEEP_INTERVAL_S`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from memworker.errors import ConfigError, shown
from memworker.io.scripts import script_source
from memworker.keys import Keys, QueueKeys
from memworker.store.validate import MAX_SWEEP_MS

__all__ = ["DEFAULT_SWEEP_INTERVAL_S", "PRUNE_STEP", "SWEEP_STEP", "Sweeper", "sweep_interval_ms"]

log = logging.getLogger("memworker.worker")

#: Seconds between sweeps of a namespace when no store asked for another interval.
DEFAULT_SWEEP_INTERVAL_S = 60.0
#: Records deleted per sweep step (one atomic script call).
SWEEP_STEP = 500
#: Steps per sweep at most (a backlog of due records is taken over several sweeps).
MAX_STEPS = 20
#: Producers examined per step of the producers' sweep (``SSCAN ... COUNT``).
PRUNE_STEP = 500


def sweep_interval_ms(raw: str | None = None) -> int:
    """``MEMWORKER_SWEEP_INTERVAL`` (seconds, > 0) in ms.

    Raises:
        ConfigError: Not a positive number.
    """
    raw = os.environ.get("MEMWORKER_SWEEP_INTERVAL") if raw is None else raw
    if raw is None or raw == "":
        return int(DEFAULT_SWEEP_INTERVAL_S * 1000)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86_400:
        raise ConfigError(
            f"MEMWORKER_SWEEP_INTERVAL must be a number of seconds from 0 to 86400, got {shown(raw)}"
        )
    return max(1, int(seconds * 1000))


class Sweeper:
    """Runs the sweep of one namespace when its lock is free (called every health beat).

    Args:
        store: The worker's :class:`~memworker.store.ValkeyStore`.
        client: A redis-py client of the same server or cluster (the lock).
        owner: This worker's id (the lock's value).
    """

    def __init__(self, store: Any, client: Any, namespace: str, owner: str) -> None:
        self.store = store
        self.client = client
        self.keys = Keys(namespace)
        self.queue_keys = QueueKeys(namespace)
        self.owner = owner
        #: Where the producers' sweep goes on (``SSCAN`` cursor; 0: a new pass).
        self.cursor = 0
        self._prune = client.register_script(script_source("queue")[0])
        self.default_ms = sweep_interval_ms()
        #: Records deleted by this process's sweeps: expired, past retention.
        self.expired = 0
        self.retained = 0

    def interval_ms(self) -> int:
        raw = self.client.hget(self.keys.meta, "sweep_ms")
        try:
            asked = int(raw) if raw is not None else 0
        except ValueError:
            asked = 0
        # a value the store's setter would refuse (written by hand): the default
        return asked if 0 < asked <= MAX_SWEEP_MS else self.default_ms

    def maybe_sweep(self) -> dict[str, int] | None:
        """Sweep if no other worker swept within the interval; the counts, or ``None``."""
        if not self.client.set(self.keys.sweep, self.owner, nx=True, px=self.interval_ms()):
            return None
        totals = {"expired": 0, "retained": 0, "tombs": 0, "scanned": 0}
        for _ in range(MAX_STEPS):
            got = self.store.sweep(limit=SWEEP_STEP)
            for name, n in got.items():
                totals[name] += n
            # a step that read fewer entries than its limit found all there was (stale
            # entries count: they are removed as read, and may hide due ones behind)
            if max(got["scanned"], got["tombs"], got["expired"] + got["retained"]) < SWEEP_STEP:
                break
        totals["producers"] = self.prune_producers()
        self.expired += totals["expired"]
        self.retained += totals["retained"]
        if totals["expired"] or totals["retained"]:
            log.info(
                "sweep deleted %d expired record(s) and %d past retention",
                totals["expired"], totals["retained"],
            )  # fmt: skip
        return totals

    def prune_producers(self) -> int:
        """Forget the producers with nothing pending and no unreported failure, at most
        :data:`MAX_STEPS` steps of :data:`PRUNE_STEP` (a larger set is taken over several
        sweeps, from where this one stopped); the number forgotten."""
        k = self.queue_keys
        removed = 0
        for _ in range(MAX_STEPS):
            self.cursor, raw = self.client.sscan(k.producers, self.cursor, count=PRUNE_STEP)
            args: list[str] = ["prune", k.producers]
            for member in raw:
                p = member.decode() if isinstance(member, bytes) else str(member)
                pk = k.producer(p)
                args += [p, pk.pending, pk.failed]
            if len(args) > 2:
                removed += int(self._prune(keys=[self.keys.meta], args=args))
            if int(self.cursor) == 0:
                break
        return removed
