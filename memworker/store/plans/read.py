"""Read plans: records by id, pages of a scope, counts, scope info, scopes and
categories. Reads use the side indexes (O(log N + page)), never a scan.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from memworker.errors import MemworkerError
from memworker.io import Call, Pipeline, Plan, Script, error_text
from memworker.records import record_types
from memworker.store.decode import RECORD_FIELDS, decode_rows
from memworker.store.plans.server import ServerPlans, as_text
from memworker.store.query import TOKEN_FIELDS, SearchFilter
from memworker.store.times import parse_timestamp
from memworker.store.tokens import PUBLIC_TOKEN, visibility_token
from memworker.store.validate import MAX_PAGE, check_page, check_source, check_unicode, normalize_scope_prefix

#: Records (newest first) whose categories :meth:`ReadPlans._p_visible_categories` counts,
#: read this many per script call.
VISIBLE_CATEGORY_SCAN = 10_000
_VISIBLE_PAGE = 1_000

__all__ = ["READ_CHUNK", "ReadPlans", "decode_reply"]

log = logging.getLogger("memworker.store")

#: Commands per pipeline round trip on the exact search path and in bulk reads.
READ_CHUNK = 2_000


class ReadPlans(ServerPlans):
    """Plans that read records and the side indexes."""

    def _p_get(self, record_id: str) -> Plan[Any]:
        return (yield from self._p_fetch([check_unicode(str(record_id), "record_id")]))[0]

    def _p_expiries(self, ids: Sequence[str]) -> Plan[list[int | None]]:
        """Each id's expiry time (ms; ``None``: none), from the expiry index."""
        if not ids:
            return []
        reply = yield Call(["ZMSCORE", self.keys.expiry, *ids])
        return [None if s is None else int(float(s)) for s in reply]

    def _p_fetch(self, ids: Sequence[str], passing: SearchFilter | None = None) -> Plan[list[Any]]:
        """Records by id (``None`` where missing), one script call per READ_CHUNK ids:
        the client pays per command and per argument, so one call beats a pipeline.

        ``passing``: also ``None`` for each record that does not pass this filter, read
        in the same script step as the record (one ``HMGET``: atomic with it). A search
        chose its hits from the index, the vector cache or a bulk read one round trip
        earlier; a record re-saved since (turned private, moved scope, new categories,
        metadata or source) must not come back on the strength of its old fields."""
        if passing is not None and passing.scope == "/" and not passing.needs_tokens:
            passing = None  # the identity filter: nothing to check
        fields = RECORD_FIELDS if passing is None else (*RECORD_FIELDS, *_CHECKED)
        out: list[Any] = []
        for start in range(0, len(ids), READ_CHUNK):
            part = list(ids[start : start + READ_CHUNK])
            flat = yield Script("read", ["records", self.keys.prefix, str(len(fields)), *fields, *part])
            if passing is not None:
                flat = _passing_rows(flat, fields, passing)
            out += decode_reply(flat)
        return out

    def _p_list(self, scope_prefix: str | None, limit: int, offset: int) -> Plan[list[Any]]:
        limit, offset = check_page(limit, offset)
        scope = normalize_scope_prefix(scope_prefix)
        if limit <= 0 or offset < 0:
            return []
        if self._state.sort_page:
            # One round trip, no script: SORT_RO reads the page's fields natively (a
            # zset "BY nosort" keeps its order, DESC = newest first, and LIMIT takes the
            # range by rank), about half the server time of the read script's HMGET
            # per record. The dimension (float16 or float32 bytes) comes alongside; it
            # changes only when the namespace is emptied.
            try:
                dim, flat = yield Pipeline(
                    [["HGET", self.keys.meta, "dim"],
                     ["SORT_RO", self.keys.tree(scope), "BY", "nosort", "DESC",
                      "LIMIT", str(offset), str(limit), *_page_gets(self.keys.prefix)]]
                )  # fmt: skip
            except Exception as exc:
                if not _sort_refused(exc):
                    raise
                log.info(
                    "list_records: SORT_RO refused (%s); reading pages with the read script", exc
                )
                self._state.sort_page = False
            else:
                return [r for r in decode_reply([dim, *flat]) if r is not None]
        flat = yield Script(
            "read",
            ["page", self.keys.prefix, scope, str(offset), str(min(offset + limit - 1, MAX_PAGE)),
             str(len(RECORD_FIELDS)), *RECORD_FIELDS],
        )  # fmt: skip
        return [r for r in decode_reply(flat) if r is not None]

    def _p_count(self, scope_prefix: str | None) -> Plan[int]:
        scope = normalize_scope_prefix(scope_prefix)
        return int((yield Call(["ZCARD", self.keys.tree(scope)])))

    def _p_scope_info(self, scope: str) -> Plan[Any]:
        path = normalize_scope_prefix(scope, field="scope")
        tree = self.keys.tree(path)
        count, oldest, newest, cats, children = yield Pipeline(
            [
                ["ZCARD", tree],
                ["ZRANGE", tree, "0", "0", "WITHSCORES"],
                ["ZRANGE", tree, "-1", "-1", "WITHSCORES"],
                ["HKEYS", self.keys.cats(path)],
                ["HKEYS", self.keys.children(path)],
            ]
        )

        def when(pair: Any) -> datetime | None:
            if not pair:
                return None
            score = next(iter(pair.values())) if isinstance(pair, Mapping) else pair[1]
            return parse_timestamp(float(score))

        return record_types()[1](
            path=path,
            record_count=int(count),
            categories=sorted(as_text(c) for c in cats),
            oldest_record=when(oldest),
            newest_record=when(newest),
            child_scopes=sorted(as_text(c) for c in children),
        )

    def _p_list_scopes(self, parent: str) -> Plan[list[str]]:
        path = normalize_scope_prefix(parent, field="parent")
        children = yield Call(["HKEYS", self.keys.children(path)])
        return sorted(as_text(c) for c in children)

    def _p_visible(
        self, scope_prefix: str | None, viewer: str | None
    ) -> Plan[tuple[dict[str, int], list[str]]]:
        """Among the newest :data:`VISIBLE_CATEGORY_SCAN` records of a scope (and below)
        that ``viewer`` may see (public ones and its own private ones; ``None``: public
        ones only): category -> records carrying it, and the scope's child scopes that
        hold one. Read from the records (``categories``, ``vis`` and ``scope``, a page
        per call), not from the counters, which count every source's private records."""
        check_source(viewer, "viewer")
        path = normalize_scope_prefix(scope_prefix)
        visible = {PUBLIC_TOKEN} if viewer is None else {PUBLIC_TOKEN, visibility_token(viewer)}
        counts: dict[str, int] = {}
        children: set[str] = set()
        under = "/" if path == "/" else path + "/"
        for start in range(0, VISIBLE_CATEGORY_SCAN, _VISIBLE_PAGE):
            flat = yield Script(
                "read",
                ["page", self.keys.prefix, path, str(start), str(start + _VISIBLE_PAGE - 1),
                 "3", "categories", "vis", "scope"],
            )  # fmt: skip
            rows = list(flat)[1:]  # after the namespace's dimension
            for raw, vis, scope in zip(rows[::3], rows[1::3], rows[2::3]):
                if raw is None or vis is None or as_text(vis) not in visible:
                    continue
                for category in dict.fromkeys(json.loads(as_text(raw)) or []):
                    counts[category] = counts.get(category, 0) + 1
                text = as_text(scope) if scope is not None else path
                if text.startswith(under) and len(text) > len(under):
                    children.add(under + text[len(under) :].split("/", 1)[0])
            if len(rows) < 3 * _VISIBLE_PAGE:
                break
        return counts, sorted(children)

    def _p_list_categories(self, scope_prefix: str | None) -> Plan[dict[str, int]]:
        path = normalize_scope_prefix(scope_prefix)
        raw = yield Call(["HGETALL", self.keys.cats(path)])
        items = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2])
        return {as_text(k): int(v) for k, v in items if int(v) > 0}


def _sort_refused(exc: BaseException) -> bool:
    """The server refused SORT_RO: its ACL (no access to every key, which SORT's GET
    needs, or the command not allowed) or a server without the command."""
    if isinstance(exc, MemworkerError):  # our own, e.g. the connection lost for good
        return False
    text = error_text(exc).lower()
    return "sort" in text and (
        "denied" in text or "permission" in text or "unknown command" in text
    )


@lru_cache(maxsize=64)
def _page_gets(prefix: str) -> tuple[str, ...]:
    """SORT's GET patterns for RECORD_FIELDS of ``namespace``'s records (``#``: the
    id itself). SORT substitutes the first ``*`` with the id verbatim, and a namespace
    has no ``*`` (Settings checks it)."""
    out: list[str] = []
    for name in RECORD_FIELDS:
        out += ["GET", "#" if name == "id" else f"{prefix}:rec:*->{name}"]
    return tuple(out)


#: The filter fields :meth:`ReadPlans._p_fetch` reads with each record to check it
#: again (``vis`` is a record field already).
_CHECKED: tuple[str, ...] = tuple(f for f in TOKEN_FIELDS if f not in RECORD_FIELDS)


def _passing_rows(flat: Sequence[Any], fields: Sequence[str], passing: SearchFilter) -> list[Any]:
    """A ``records`` reply read with :data:`_CHECKED` as a plain one (the dimension,
    then RECORD_FIELDS-long rows), each row that fails ``passing`` emptied (missing)."""
    width, step = len(RECORD_FIELDS), len(fields)
    out: list[Any] = [flat[0]]
    for i in range(1, len(flat), step):
        row = flat[i : i + step]
        named = dict(zip(fields, row))
        tokens = [named[f] for f in TOKEN_FIELDS]
        out += row[:width] if passing.matches(tokens, scope=True) else [None] * width
    return out


def decode_reply(reply: Sequence[Any]) -> list[Any]:
    """Records from a ``read.lua records/page`` reply: the namespace's dimension, then
    RECORD_FIELDS-long rows, flattened (``None`` = missing)."""
    if not reply:
        return []
    width = len(RECORD_FIELDS)
    rows = (reply[i : i + width] for i in range(1, len(reply), width))
    return decode_rows(rows, record_types()[0], int(reply[0]) if reply[0] else None)
