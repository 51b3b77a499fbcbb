"""Delete plans: delete by criteria, and reset (a scope, or the whole namespace with
its index and dimension)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from memworker.io import Call, Pipeline, Plan, Script, error_text
from memworker.keys import CHANGES_CAP, LANGGRAPH_ROOT, in_langgraph
from memworker.store.plans.read import READ_CHUNK, ReadPlans
from memworker.store.plans.server import as_text
from memworker.store.query import TOKEN_FIELDS, SearchFilter
from memworker.store.times import format_timestamp, to_utc_naive
from memworker.errors import ValidationError, shown
from memworker.store.codec import MAX_STAMP
from memworker.store.validate import (
    MAX_SWEEP_MS,
    check_id,
    check_ids,
    check_retention_days,
    normalize_scope,
    normalize_scope_prefix,
)

__all__ = ["DELETE_CHUNK", "DeletePlans"]


def _version(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STAMP:
        raise ValidationError(f"{where} must be an integer from 0 to {MAX_STAMP}")
    return str(value)

#: Ids per delete script call.
DELETE_CHUNK = 500
#: Most records one sweep step deletes (one atomic script call).
MAX_SWEEP_LIMIT = 10_000



def check_policy_scope(path: str) -> None:
    """Refuse a retention policy on the normalized scope ``path`` inside
    :data:`LANGGRAPH_ROOT` (the LangGraph store's items: their TTL governs them)."""
    if in_langgraph(path):
        raise ValidationError(
            f"scope {shown(path)} is under {LANGGRAPH_ROOT}, the LangGraph store's items: "
            "a retention policy does not apply there (their TTL does: memworker.langgraph)"
        )

class DeletePlans(ReadPlans):
    """Plans that delete records."""

    def _p_delete_ids(self, ids: Sequence[str]) -> Plan[int]:
        deleted = 0
        for i in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[i : i + DELETE_CHUNK]
            args = ["delete", self.keys.prefix, str(CHANGES_CAP), *chunk]
            deleted += int((yield Script("store", args)))
        return deleted

    def _p_delete_versioned(self, versions: Sequence[tuple[str, int]]) -> Plan[int]:
        """Delete ids unless a later version is stored, leaving tombstones (``vdelete``)."""
        return (yield from self._p_id_pairs("vdelete", versions, "versions"))

    def _p_expire(self, expiries: Sequence[tuple[str, int]]) -> Plan[int]:
        """Give records that have an expiry a new one (ms); returns how many had one."""
        return (yield from self._p_id_pairs("expire", expiries, "expiries"))

    def _p_refresh_expiries(self, now: int, fallbacks: Sequence[tuple[str, int]]) -> Plan[int]:
        """Expiries from the stored records' own TTLs (``refresh``), see
        :meth:`ValkeyStore.refresh_expiries`."""
        head = [_version(now, "now_ms")]
        return (yield from self._p_id_pairs("refresh", fallbacks, "fallbacks", head))

    def _p_id_pairs(
        self, op: str, pairs: Sequence[tuple[str, int]], field: str, head: Sequence[str] = ()
    ) -> Plan[int]:
        """Run a store script op over ``(id, integer)`` pairs, validated whole first,
        :data:`DELETE_CHUNK` pairs per call (each after the op's ``head`` arguments);
        returns the sum of the replies."""
        if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Sequence):
            # a string was iterated as pairs of its characters
            raise ValidationError(f"{field} must be a list of (id, integer) pairs")
        checked: list[tuple[str, str]] = []
        for n, pair in enumerate(pairs):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValidationError(f"{field}[{n}] must be an (id, integer) pair")
            where = f"{field}[{n}]"
            checked.append((check_id(pair[0], where, strict=False), _version(pair[1], where)))
        total = 0
        for start in range(0, len(checked), DELETE_CHUNK):
            args = [op, self.keys.prefix, str(CHANGES_CAP), *head]
            for rid, stamp in checked[start : start + DELETE_CHUNK]:
                args += [rid, stamp]
            total += int((yield Script("store", args)))
        return total

    def _p_set_retention(self, scope: str, days: float | None) -> Plan[None]:
        """Keep records under ``scope`` for ``days`` (``None``: no policy for it). No
        policy applies to the LangGraph store's items (:data:`LANGGRAPH_ROOT`; their TTL
        governs them): one inside it is refused, one above it passes over them."""
        path = normalize_scope(scope, field="scope")
        if days is not None:
            check_policy_scope(path)
        if days is None:
            yield Call(["HDEL", self.keys.retention, path])
            return
        yield Call(["HSET", self.keys.retention, path, repr(check_retention_days(days))])

    def _p_retention(self) -> Plan[dict[str, float]]:
        reply = yield Call(["HGETALL", self.keys.retention])
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2])
        out: dict[str, float] = {}
        for k, v in pairs:
            try:
                out[as_text(k)] = float(as_text(v))
            except ValueError:
                continue  # not a number (written by hand): the sweep skips it too
        return out

    def _p_set_sweep_interval(self, interval_ms: int) -> Plan[None]:
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or not 1 <= interval_ms <= MAX_SWEEP_MS:
            # at most a day, as MEMWORKER_SWEEP_INTERVAL: the workers hold the sweep
            # lock that long, and a longer one would stop every sweep of the namespace
            raise ValidationError(f"sweep interval must be from 1 to {MAX_SWEEP_MS} ms (a day)")
        yield Call(["HSET", self.keys.meta, "sweep_ms", str(interval_ms)])

    def _p_sweep(self, now_ms: int, limit: int, tomb_keep_ms: int, clamp: bool = False) -> Plan[dict[str, int]]:
        """One sweep step: expired records, records past their scope's retention (never
        the LangGraph store's items), old tombstones (``sweep``). ``clamp``: ``now_ms``
        is this host's clock, used only where it is not ahead of the server's."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SWEEP_LIMIT:
            # one atomic step: a huge limit would hold the server that long
            raise ValidationError(f"limit must be an integer from 1 to {MAX_SWEEP_LIMIT}")
        _version(now_ms, "now_ms")
        tomb_before = (now_ms - tomb_keep_ms) * 1000
        reply = yield Script(
            "store",
            ["sweep", self.keys.prefix, str(CHANGES_CAP), str(now_ms), str(limit), str(tomb_before), LANGGRAPH_ROOT,
             "1" if clamp else "0"],  # fmt: skip
        )
        expired, retained, tombs, scanned = (int(x) for x in reply)
        return {"expired": expired, "retained": retained, "tombs": tombs, "scanned": scanned}

    def _p_delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
        keep_scope: str | None = None,
    ) -> Plan[int]:
        flt = SearchFilter.build(
            scope_prefix=scope_prefix, categories=categories, metadata_filter=metadata_filter
        )
        keep = None if keep_scope is None else normalize_scope_prefix(keep_scope, field="keep_scope")
        if keep is not None and (keep == "/" or flt.scope == keep or flt.scope.startswith(keep + "/")):
            return 0  # everything it could match is kept
        if keep is not None and not (flt.scope == "/" or keep.startswith(flt.scope + "/")):
            keep = None  # nothing it could match is under the kept scope
        wanted = None if record_ids is None else check_ids(record_ids)
        cutoff = None
        if older_than is not None:
            cutoff = "(" + format_timestamp(to_utc_naive(older_than, "older_than"))
        tree = self.keys.tree(flt.scope)
        if wanted is not None:
            ids = list(dict.fromkeys(wanted))
            if not ids:
                return 0
            if flt.scope != "/" or cutoff is not None:
                scores = yield Pipeline([["ZSCORE", tree, i] for i in ids])
                limit = float(cutoff[1:]) if cutoff else None
                ids = [
                    i
                    for i, s in zip(ids, scores)
                    if s is not None and (limit is None or float(s) < limit)
                ]
        elif cutoff is not None:
            ids = [as_text(i) for i in (yield Call(["ZRANGEBYSCORE", tree, "-inf", cutoff]))]
        else:
            ids = [as_text(i) for i in (yield Call(["ZRANGE", tree, "0", "-1"]))]
        if keep is not None and ids:
            kept_tree = self.keys.tree(keep)
            spared: set[str] = set()
            for start in range(0, len(ids), READ_CHUNK):
                part = ids[start : start + READ_CHUNK]
                scores = yield Pipeline([["ZSCORE", kept_tree, i] for i in part])
                spared.update(i for i, sc in zip(part, scores) if sc is not None)
            ids = [i for i in ids if i not in spared]
        if flt.needs_tokens and ids:
            kept: list[str] = []
            for start in range(0, len(ids), READ_CHUNK):
                part = ids[start : start + READ_CHUNK]
                rows = yield Pipeline([["HMGET", self.keys.rec(i), *TOKEN_FIELDS] for i in part])
                kept += [i for i, row in zip(part, rows) if flt.matches(row)]
            ids = kept
        return (yield from self._p_delete_ids(ids))

    def _p_reset(self, scope_prefix: str | None) -> Plan[None]:
        scope = normalize_scope_prefix(scope_prefix)
        if scope != "/":
            yield from self._p_delete(scope_prefix=scope)
            return
        module = yield from self._p_probe()
        if module and (yield from self._p_index_exists()):
            try:
                yield Call(["FT.DROPINDEX", self.keys.index])
            except Exception as exc:  # noqa: BLE001
                if (
                    "unknown" not in error_text(exc).lower()
                    and "not found" not in error_text(exc).lower()
                ):
                    raise
        self._state.index_ready = False
        tree = self.keys.tree("/")
        orphans = False
        while True:
            ids = [as_text(i) for i in (yield Call(["ZRANGE", tree, "0", str(DELETE_CHUNK - 1)]))]
            if not ids:
                break
            if not (yield from self._p_delete_ids(ids)):
                # Index entries whose record hash is gone (evicted under a maxmemory
                # policy, or deleted by hand): the delete script cannot unindex them.
                orphans = True
                yield Call(["ZREM", tree, *ids])
        if orphans:  # every side index left, scope by scope from the root
            scopes, seen = ["/"], {"/"}
            while scopes:
                scope = scopes.pop()
                for child in (yield Call(["HKEYS", self.keys.children(scope)])):
                    if as_text(child) not in seen:
                        seen.add(as_text(child))
                        scopes.append(as_text(child))
                yield Call(
                    ["DEL", self.keys.tree(scope), self.keys.children(scope), self.keys.cats(scope)]
                )
            yield Call(
                ["DEL", self.keys.changes]
            )  # the delete script keeps it while the root is not empty
        yield Call(["DEL", self.keys.meta, self.keys.expiry, self.keys.tomb])
        self._state.dim = None
        self._state.vtype = None
