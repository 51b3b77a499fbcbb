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

from memworker.errors import MemworkerError, ValidationError
from memworker.io import Call, Pipeline, Plan, Script, error_text
from memworker.records import record_types
from memworker.store.decode import RECORD_FIELDS, decode_rows
from memworker.store.plans.server import ServerPlans, as_text
from memworker.store.query import TOKEN_FIELDS, SearchFilter, within_scope
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

    def _p_scope_info(self, scope: str, exclude: str | None = None) -> Plan[Any]:
        path = normalize_scope_prefix(scope, field="scope")
        cut = _excluded(path, exclude)
        info = record_types()[1]
        if cut == path:  # the left-out subtree itself: nothing of the caller's
            return info(path=path, record_count=0, categories=[], oldest_record=None,
                        newest_record=None, child_scopes=[])  # fmt: skip
        tree = self.keys.tree(path)
        reads: list[list[str]] = [
            ["ZCARD", tree],
            ["ZRANGE", tree, "0", "0", "WITHSCORES"],
            ["ZRANGE", tree, "-1", "-1", "WITHSCORES"],
            ["HGETALL", self.keys.cats(path)],
            ["HKEYS", self.keys.children(path)],
        ]
        if cut is not None:
            reads += [["ZCARD", self.keys.tree(cut)], ["HGETALL", self.keys.cats(cut)]]
        replies = yield Pipeline(reads)
        count, oldest, newest, cats, children = replies[:5]
        categories = _counts(cats)
        child_scopes = sorted(as_text(c) for c in children)
        oldest_at, newest_at = _score(oldest), _score(newest)
        if cut is not None and int(replies[5]):
            count = int(count) - int(replies[5])
            for name, n in _counts(replies[6]).items():
                categories[name] = categories.get(name, 0) - n
            child_scopes = yield from self._p_children_outside(path, child_scopes, cut)
            oldest_at = newest_at = None  # (nothing outside the cut: nothing to look for)
            if int(count) > 0:  # one atomic script call, O(log n) inside (read.lua)
                edges = yield Script("read", ["edges", self.keys.prefix, path, cut])
                oldest_at, newest_at = (None if e is None else float(as_text(e)) for e in edges)

        def when(score: float | None) -> datetime | None:
            return None if score is None else parse_timestamp(score)

        return info(
            path=path,
            record_count=max(int(count), 0),
            categories=sorted(name for name, n in categories.items() if n > 0),
            oldest_record=when(oldest_at),
            newest_record=when(newest_at),
            child_scopes=child_scopes,
        )

    def _p_list_scopes(self, parent: str, exclude: str | None = None) -> Plan[list[str]]:
        path = normalize_scope_prefix(parent, field="parent")
        cut = _excluded(path, exclude)
        if cut == path:
            return []
        children = yield Call(["HKEYS", self.keys.children(path)])
        scopes = sorted(as_text(c) for c in children)
        if cut is None:
            return scopes
        return (yield from self._p_children_outside(path, scopes, cut))

    def _p_children_outside(self, path: str, children: list[str], cut: str) -> Plan[list[str]]:
        """``path``'s child scopes ``children`` without the one holding only records
        of the left-out subtree ``cut`` (a scope below ``path``)."""
        via = path.rstrip("/") + "/" + cut[len(path.rstrip("/")) + 1 :].split("/", 1)[0]
        if via not in children:
            return children
        if via != cut:  # the child is an ancestor of the cut: kept if it holds more
            both = yield Pipeline([["ZCARD", self.keys.tree(via)], ["ZCARD", self.keys.tree(cut)]])
            if int(both[0]) > int(both[1]):
                return children
        return [c for c in children if c != via]

    def _p_visible(
        self, scope_prefix: str | None, viewer: str | None, exclude: str | None = None
    ) -> Plan[tuple[dict[str, int], list[str]]]:
        """Among the newest :data:`VISIBLE_CATEGORY_SCAN` records of a scope (and below)
        that ``viewer`` may see (public ones and its own private ones; ``None``: public
        ones only): category -> records carrying it, and the scope's child scopes that
        hold one. Read from the records (``categories``, ``vis`` and ``scope``, a page
        per call), not from the counters, which count every source's private records.
        Records of the scope ``exclude`` and below are passed over."""
        check_source(viewer, "viewer")
        path = normalize_scope_prefix(scope_prefix)
        cut = _excluded(path, exclude)
        if cut == path:
            return {}, []
        visible = {PUBLIC_TOKEN} if viewer is None else {PUBLIC_TOKEN, visibility_token(viewer)}
        counts: dict[str, int] = {}
        children: set[str] = set()
        under = "/" if path == "/" else path + "/"
        # the window a namespace without the cut has: its newest records outside the
        # cut (the read script passes over runs of the cut's records by rank)
        seen, start, k = 0, 0, 0
        while seen < VISIBLE_CATEGORY_SCAN and start >= 0:
            size = min(_VISIBLE_PAGE, VISIBLE_CATEGORY_SCAN - seen)
            if cut is None:
                flat = yield Script(
                    "read",
                    ["page", self.keys.prefix, path, str(start), str(start + size - 1),
                     "3", "categories", "vis", "scope"],
                )  # fmt: skip
                rows = list(flat)[1:]  # after the namespace's dimension
                start = start + size if len(rows) == 3 * size else -1
            else:
                flat = yield Script(
                    "read",
                    ["outside", self.keys.prefix, path, cut, str(start), str(k), str(size),
                     "3", "categories", "vis", "scope"],
                )  # fmt: skip
                start, k, rows = int(flat[1]), int(flat[2]), list(flat)[3:]
                if not rows and start >= 0:  # (no progress within the script's probes)
                    break
            seen += len(rows) // 3
            for raw, vis, scope in zip(rows[::3], rows[1::3], rows[2::3]):
                if raw is None or vis is None or as_text(vis) not in visible:
                    continue
                for category in dict.fromkeys(json.loads(as_text(raw)) or []):
                    counts[category] = counts.get(category, 0) + 1
                text = as_text(scope) if scope is not None else path
                if text.startswith(under) and len(text) > len(under):
                    children.add(under + text[len(under) :].split("/", 1)[0])
        return counts, sorted(children)

    def _p_list_categories(
        self, scope_prefix: str | None, exclude: str | None = None
    ) -> Plan[dict[str, int]]:
        path = normalize_scope_prefix(scope_prefix)
        cut = _excluded(path, exclude)
        if cut == path:
            return {}
        if cut is None:
            counts = _counts((yield Call(["HGETALL", self.keys.cats(path)])))
        else:
            whole, left_out = yield Pipeline(
                [["HGETALL", self.keys.cats(path)], ["HGETALL", self.keys.cats(cut)]]
            )
            counts = _counts(whole)
            for name, n in _counts(left_out).items():
                counts[name] = counts.get(name, 0) - n
        return {name: n for name, n in counts.items() if n > 0}


def _excluded(path: str, exclude: str | None) -> str | None:
    """The normalized ``exclude`` scope when it is ``path`` or below it (a counter of
    ``path`` then counts it), else ``None``; ``path`` itself when ``path`` is inside it."""
    if exclude is None:
        return None
    cut = normalize_scope_prefix(exclude, field="exclude_scope")
    if cut == "/":
        raise ValidationError("exclude_scope must be a scope below the root, got '/'")
    if within_scope(path, cut):
        return path
    return cut if within_scope(cut, path) else None


def _counts(raw: Any) -> dict[str, int]:
    """A counter hash's reply (a mapping or a flat list) as text -> int."""
    items = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2])
    return {as_text(k): int(v) for k, v in items}


def _score(pair: Any) -> float | None:
    """The score of a one-member ``ZRANGE ... WITHSCORES`` reply, or ``None``."""
    if not pair:
        return None
    score = next(iter(pair.values())) if isinstance(pair, Mapping) else pair[1]
    return float(as_text(score)) if isinstance(score, bytes) else float(score)


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
