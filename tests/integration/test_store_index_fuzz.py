"""A differential fuzz of ValkeyStore's side indexes (lua/store.lua) against a plain
Python model of the records, on every server kind (clusters too).

Seeded random operations (save, re-save moving scope and categories, update, the
worker's guarded many-job commit with repeated ids, delete by ids / scope / category /
metadata / age / kept scope, versioned deletes, reset, TTL'd records, expiry refreshes,
retention policies and small-limit sweeps) are applied to the store and to the model.
Every few operations the store's answers (count, list_scopes, list_categories,
get_scope_info, list_records, get_records) are compared with the model, and the raw
keys are checked: tree zsets, child and category counters, the expiry zset, the
tombstones and the change log, recomputed from the record hashes.

Times never race the clock: created_at values are years in the past or the future,
expiries are 1970 or 2096, versions start at the test's start in microseconds (the
sweep's tombstone trim, a week back, never reaches them).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest

from memworker.errors import ValidationError
from memworker.store import to_rows
from memworker.store.store import JobWrite, NotPending
from memworker.store.times import format_timestamp
from memworker.testing import ThrowawayCluster

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

DIM = 4
LG = "/langgraph"  # the sweep's kept scope (memworker.keys.LANGGRAPH_ROOT)
SCOPES = ["/", "/a", "/a/b", "/a/b/c", "/a/x", "/b", "/b/y", LG, LG + "/n1", LG + "/n1/k", LG + "/n2"]
POLICY_SCOPES = ["/", "/a", "/a/b", "/b", "/b/y"]
CATS = ["c1", "c2", "c3", "c4"]
IDS = [f"r{i:02d}" for i in range(48)]
PAST = [datetime(2001, 1, 1) + timedelta(days=37 * i, seconds=i) for i in range(10)]
FUTURE = [datetime(2081, 1, 1) + timedelta(days=37 * i, seconds=i) for i in range(10)]
PAST_EXP = [1_000_000 + 7 * i for i in range(6)]  # 1970: due
FUTURE_EXP = [4_000_000_000_000 + 7 * i for i in range(6)]  # 2096: not due
NOW_STAMP = 2  # an "upd" written by a direct write (the client's now, ms): between OLD and FAR
OLD_SINCE = 1  # a job enqueued before every direct write
FAR_SINCE = 8_000_000_000_000  # a job enqueued after every direct write


# ---------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Rec:
    id: str
    scope: str
    cats: tuple[str, ...]
    meta: dict
    created: datetime
    ver: int | None = None
    exp: int | None = None
    ttl: int | None = None
    upd: int | None = None  # NOW_STAMP (a direct write's), or a job's enqueue time

    @property
    def score(self) -> float:
        return float(format_timestamp(self.created))


def under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def ancestors(scope: str) -> list[str]:
    out = ["/"]
    if scope == "/":
        return out
    parts = scope.strip("/").split("/")
    for i in range(len(parts)):
        out.append("/" + "/".join(parts[: i + 1]))
    return out


def child_of(scope: str, parent: str) -> str:
    rest = scope[len(parent):].lstrip("/") if parent != "/" else scope[1:]
    head = rest.split("/", 1)[0]
    return ("" if parent == "/" else parent) + "/" + head


def due(exp: int | None, now_ms: int) -> bool:
    return exp is not None and exp <= now_ms


class Model:
    def __init__(self) -> None:
        self.recs: dict[str, Rec] = {}
        self.tomb: dict[str, int] = {}
        self.policies: dict[str, float] = {}

    def versioned_take(self, new: Rec, old: Rec | None, now_ms: int) -> Rec | None:
        """The version checks of a write; the row as written (created_at kept), or None."""
        if new.ver is None:
            return new
        if old is not None and old.ver is not None and old.ver > new.ver:
            return None
        if self.tomb.get(new.id, -1) > new.ver:
            return None
        if old is not None and not due(old.exp, now_ms):
            new = replace(new, created=old.created)
        return new

    def direct_write(self, rows: list[Rec], now_ms: int) -> None:
        for row in rows:
            old = self.recs.get(row.id)
            new = self.versioned_take(row, old, now_ms)
            if new is None:
                continue
            self.recs[row.id] = replace(new, upd=NOW_STAMP if old is not None else None)

    def jobs_write(self, groups: list[tuple[int | None, bool, list[Rec]]], now_ms: int) -> None:
        """A many-job commit: (since or None when not pending, stamped, rows) per job."""
        chosen: dict[str, Rec] = {}
        for since, stamped, rows in groups:
            for row in rows:
                old = self.recs.get(row.id)
                if since is None:
                    continue
                if old is not None and old.upd is not None and old.upd > since:
                    continue
                new = self.versioned_take(row, old, now_ms)
                if new is None:
                    continue
                upd = since if new.ver is None and (stamped or (old is not None and old.upd is not None)) else None
                new = replace(new, upd=upd)
                prev = chosen.get(row.id)
                if prev is None or not (prev.ver is not None and new.ver is not None and prev.ver > new.ver):
                    chosen[row.id] = new
        self.recs.update(chosen)

    def delete(self, ids) -> int:
        n = 0
        for i in dict.fromkeys(ids):
            if self.recs.pop(i, None) is not None:
                n += 1
        return n

    def tomb_at(self, rid: str, ver: int) -> None:
        self.tomb[rid] = max(self.tomb.get(rid, ver), ver)

    def retention_eligible(self, now_ms: int) -> set[str]:
        out = set()
        for scope, days in self.policies.items():
            cutoff = now_ms / 1000 - days * 86400
            for r in self.recs.values():
                if under(r.scope, scope) and not under(r.scope, LG) and r.score <= cutoff:
                    out.add(r.id)
        return out

    def due_order(self, now_ms: int) -> list[str]:
        return [r.id for r in sorted(self.recs.values(), key=lambda r: (r.exp or 0, r.id)) if due(r.exp, now_ms)]


# ---------------------------------------------------------------------------- random rows
def make_row(rng: random.Random, rid: str, base_us: int, p_ver: float = 0.35) -> tuple[dict, Rec]:
    scope = rng.choice(SCOPES)
    cats = rng.sample(CATS, rng.randint(0, 3))
    if cats and rng.random() < 0.15:
        cats.append(cats[0])  # a repeated category counts once
    meta = rng.choice([{}, {"k": "x"}, {"k": "y"}, {"k": 3}, {"k": "x", "j": "z"}])
    created = rng.choice(PAST if rng.random() < 0.5 else FUTURE)
    vec = rng.choice([None, [0.0] * DIM, [rng.random() + 0.1 for _ in range(DIM)]])
    record = {"id": rid, "content": f"{rid} {rng.random():.4f}", "scope": scope, "categories": cats,
              "metadata": meta or None, "created_at": created, "embedding": vec}  # fmt: skip
    ver = exp = ttl = None
    if rng.random() < p_ver:
        ver = base_us + rng.randint(0, 400)
        record["ver"] = ver
    if rng.random() < 0.3:
        exp = rng.choice(PAST_EXP if rng.random() < 0.5 else FUTURE_EXP)
        record["exp"] = exp
        if rng.random() < 0.5:
            ttl = rng.choice([10**12, 2 * 10**12])
            record["ttl"] = ttl
    return record, Rec(rid, scope, tuple(dict.fromkeys(cats)), meta, created, ver, exp, ttl)


# ---------------------------------------------------------------------------- checks
def _t(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def check_answers(store, model: Model) -> None:
    recs = list(model.recs.values())
    assert store.count() == len(recs)
    for s in SCOPES:
        mine = [r for r in recs if under(r.scope, s)]
        assert store.count(s) == len(mine), s
        children = sorted({child_of(r.scope, s) for r in mine if r.scope != s})
        assert store.list_scopes(s) == children, s
        cats = dict(Counter(c for r in mine for c in r.cats))
        assert store.list_categories(s) == cats, s
        info = store.get_scope_info(s)
        assert info.record_count == len(mine), s
        assert info.categories == sorted(cats), s
        assert info.child_scopes == children, s
        if mine:
            assert format_timestamp(info.oldest_record.replace(tzinfo=None)) == format_timestamp(
                min(mine, key=lambda r: r.score).created), s
            assert format_timestamp(info.newest_record.replace(tzinfo=None)) == format_timestamp(
                max(mine, key=lambda r: r.score).created), s
        else:
            assert info.oldest_record is None and info.newest_record is None, s
        listed = []
        while True:  # every page of 200
            page = store.list_records(s, limit=200, offset=len(listed))
            listed += page
            if len(page) < 200:
                break
        assert sorted(r.id for r in listed) == sorted(r.id for r in mine), s
        scores = [model.recs[r.id].score for r in listed]
        assert scores == sorted(scores, reverse=True), s  # newest first
        for r in listed:
            m = model.recs[r.id]
            assert (r.scope, tuple(dict.fromkeys(r.categories))) == (m.scope, m.cats), r.id
        if len(listed) > 3:
            assert [r.id for r in store.list_records(s, limit=2, offset=1)] == [r.id for r in listed[1:3]], s
    got = store.get_records(IDS)
    for rid, r in zip(IDS, got):
        assert (r is None) == (rid not in model.recs), rid


def check_raw(store, raw, model: Model) -> None:
    keys = store.keys
    prefix = keys.prefix
    names = {_t(k) for k in raw.scan_iter(match=prefix + ":*", count=1000)}
    rec_ids = {k[len(keys.rec_prefix):] for k in names if k.startswith(keys.rec_prefix)}
    assert rec_ids == set(model.recs), "record hashes differ from the model"
    trees = {k[len(prefix + ":tree:"):] for k in names if k.startswith(prefix + ":tree:")}
    child_keys = {k[len(prefix + ":children:"):] for k in names if k.startswith(prefix + ":children:")}
    cat_keys = {k[len(prefix + ":cats:"):] for k in names if k.startswith(prefix + ":cats:")}
    want_tree: dict[str, dict[str, float]] = defaultdict(dict)
    want_children: dict[str, Counter] = defaultdict(Counter)
    want_cats: dict[str, Counter] = defaultdict(Counter)
    want_expiry: dict[str, float] = {}
    for rid in rec_ids:
        scope, cats_json, created, exp, ver, upd = (
            _t(v) if v is not None else None
            for v in raw.hmget(keys.rec(rid), "scope", "categories", "created_at", "exp", "ver", "upd")
        )
        m = model.recs[rid]
        assert scope == m.scope, rid
        assert created == format_timestamp(m.created), rid
        assert (exp, ver) == (None if m.exp is None else str(m.exp), None if m.ver is None else str(m.ver)), rid
        assert (upd is not None) == (m.upd is not None), (rid, upd, m.upd)
        if m.upd is not None and m.upd != NOW_STAMP:
            assert int(upd) == m.upd, rid
        cats = list(dict.fromkeys(json.loads(cats_json))) if cats_json else []
        assert tuple(cats) == m.cats, rid
        anc = ancestors(scope)
        for i, a in enumerate(anc):
            want_tree[a][rid] = float(created)
            if i > 0:
                want_children[anc[i - 1]][a] += 1
            for c in cats:
                want_cats[a][c] += 1
        if exp is not None:
            want_expiry[rid] = float(exp)
    assert trees == set(want_tree), "tree zsets: stale or missing keys"
    for scope, members in want_tree.items():
        have = {_t(k): v for k, v in raw.zrange(keys.tree(scope), 0, -1, withscores=True)}
        assert have == members, f"tree {scope}"
    assert child_keys == set(want_children), "children hashes: stale or missing keys"
    for scope, counts in want_children.items():
        have = {_t(k): int(v) for k, v in raw.hgetall(keys.children(scope)).items()}
        assert have == dict(counts), f"children {scope}"
    assert cat_keys == set(want_cats), "category hashes: stale or missing keys"
    for scope, counts in want_cats.items():
        have = {_t(k): int(v) for k, v in raw.hgetall(keys.cats(scope)).items()}
        assert have == dict(counts), f"cats {scope}"
    have_exp = {_t(k): v for k, v in raw.zrange(keys.expiry, 0, -1, withscores=True)}
    assert have_exp == want_expiry, "expiry zset"
    have_tomb = {_t(k): int(v) for k, v in raw.zrange(keys.tomb, 0, -1, withscores=True)}
    assert have_tomb == model.tomb, "tombstones"
    if not rec_ids:
        assert keys.changes not in names, "an empty namespace keeps its change log"
        assert raw.hget(keys.meta, "log") is None
    else:
        assert keys.changes in names, "records without a change log"
    assert raw.zcard(prefix + ":pending:fuzz") == 0


# ---------------------------------------------------------------------------- the fuzz
def run_fuzz(store, raw, seed: int, ops: int, check_every: int) -> None:
    rng = random.Random(seed)
    model = Model()
    base_us = int(time.time() * 1_000_000)
    pending = store.keys.prefix + ":pending:fuzz"
    jobs_made = 0
    log: list[str] = []

    def rows(n: int):
        ids = rng.sample(IDS, n)
        made = [make_row(rng, rid, base_us) for rid in ids]
        return [m[0] for m in made], [m[1] for m in made]

    for step in range(ops):
        now_ms = int(time.time() * 1000)
        kind = rng.choices(
            ["save", "dupsave", "update", "jobs", "guarded", "del_ids", "del_filter", "vdelete", "reset",
             "reset_all", "expire", "refresh", "policy", "sweep", "touch"],
            weights=[26, 2, 8, 8, 3, 6, 8, 6, 3, 0.4, 3, 3, 4, 8, 1],
        )[0]  # fmt: skip
        log.append(kind)
        if kind == "save":
            records, model_rows = rows(rng.randint(1, 7))
            store.save(records)
            model.direct_write(model_rows, now_ms)
        elif kind == "dupsave":  # the same id twice in one batch: refused whole
            records, _ = rows(3)
            records.append(dict(records[0], scope="/b"))
            with pytest.raises(ValidationError):
                store.save(records)
        elif kind == "update":
            rid = rng.choice(IDS)
            record, row = make_row(rng, rid, base_us)
            record["embedding"] = None  # keep the stored one
            if rid in model.recs:
                store.update(record)
                model.direct_write([row], now_ms)
            else:
                with pytest.raises(ValidationError):
                    store.update(record)
        elif kind == "jobs":
            groups, jobs = [], []
            for _ in range(rng.randint(1, 3)):
                n = rng.randint(1, 4)
                ids = rng.sample(IDS[:8], n)  # few ids: repeats across the jobs of a call
                made = [make_row(rng, rid, base_us, p_ver=0.6) for rid in ids]
                jobs_made += 1
                jid = f"j{jobs_made}"
                since = rng.choice([OLD_SINCE, FAR_SINCE, None])
                if since is not None:
                    raw.zadd(pending, {jid: since})
                stamped = rng.random() < 0.3
                jobs.append(JobWrite(to_rows([m[0] for m in made]), pending, jid, [["ZREM", pending, jid]], stamped))
                groups.append((since, stamped, [m[1] for m in made]))
            store.write_jobs(jobs)
            model.jobs_write(groups, now_ms)
        elif kind == "guarded":  # one job's commit (write_encoded with a guard)
            records, model_rows = rows(rng.randint(1, 4))
            jobs_made += 1
            jid = f"j{jobs_made}"
            since = rng.choice([OLD_SINCE, FAR_SINCE, None])
            if since is not None:
                raw.zadd(pending, {jid: since})
                store.write_encoded(to_rows(records), [["ZREM", pending, jid]], guard=(pending, jid))
            else:
                with pytest.raises(NotPending):
                    store.write_encoded(to_rows(records), guard=(pending, jid))
            model.jobs_write([(since, False, model_rows)], now_ms)
        elif kind == "del_ids":
            ids = rng.sample(IDS, rng.randint(1, 6))
            ids += ids[:1]  # a repeat
            scope = rng.choice([None, None, *SCOPES])
            cutoff = rng.choice([None, None, rng.choice(PAST), rng.choice(FUTURE), datetime(2050, 1, 1)])
            want = [
                i for i in ids if i in model.recs and (scope is None or under(model.recs[i].scope, scope))
                and (cutoff is None or model.recs[i].score < float(format_timestamp(cutoff)))
            ]  # fmt: skip
            got = store.delete(scope_prefix=scope, record_ids=ids, older_than=cutoff)
            assert got == model.delete(want), (seed, step)
        elif kind == "del_filter":
            scope = rng.choice(SCOPES)
            cats = rng.choice([None, None, rng.sample(CATS, rng.randint(1, 2))])
            meta = rng.choice([None, None, {"k": "x"}, {"k": 3}, {"k": "x", "j": "z"}])
            cutoff = rng.choice([None, rng.choice(PAST), rng.choice(FUTURE), datetime(2050, 1, 1)])
            keep = rng.choice([None, None, LG, "/a/b", "/b"])
            if keep is not None and (keep == "/" or under(scope, keep)):
                want = []
            else:
                want = [
                    r.id for r in model.recs.values()
                    if under(r.scope, scope)
                    and (keep is None or not under(r.scope, keep))
                    and (cats is None or set(cats) & set(r.cats))
                    and (meta is None or all(k in r.meta and r.meta[k] == v and type(r.meta[k]) is type(v)
                                             for k, v in meta.items()))
                    and (cutoff is None or r.score < float(format_timestamp(cutoff)))
                ]  # fmt: skip
            got = store.delete(scope_prefix=scope, categories=cats, metadata_filter=meta,
                               older_than=cutoff, keep_scope=keep)  # fmt: skip
            assert got == model.delete(want), (seed, step, scope, cats, meta, cutoff, keep)
        elif kind == "vdelete":
            pairs = [(rng.choice(IDS), base_us + rng.randint(0, 400)) for _ in range(rng.randint(1, 4))]
            want = []
            for rid, ver in pairs:
                r = model.recs.get(rid)
                if r is not None and not (r.ver is not None and r.ver > ver) and rid not in want:
                    want.append(rid)
            for rid, ver in pairs:
                model.tomb_at(rid, ver)
            got = store.delete_versioned(pairs)
            assert got == model.delete(want), (seed, step)
        elif kind == "reset":
            scope = rng.choice(SCOPES[1:])
            store.reset(scope)
            model.delete([r.id for r in model.recs.values() if under(r.scope, scope)])
        elif kind == "reset_all":
            store.reset()
            model.recs.clear()
            model.tomb.clear()
        elif kind == "expire":
            pairs = [(rng.choice(IDS), rng.choice(PAST_EXP + FUTURE_EXP)) for _ in range(rng.randint(1, 4))]
            n = 0
            for rid, exp in pairs:
                r = model.recs.get(rid)
                if r is not None and r.exp is not None:
                    model.recs[rid] = replace(r, exp=exp)
                    n += 1
            assert store.set_expiries(pairs) == n
        elif kind == "refresh":
            pairs = [(rng.choice(IDS), rng.choice(PAST_EXP + FUTURE_EXP)) for _ in range(rng.randint(1, 4))]
            n = 0
            for rid, fallback in pairs:
                r = model.recs.get(rid)
                if r is not None and r.exp is not None and r.exp > now_ms:
                    model.recs[rid] = replace(r, exp=now_ms + r.ttl if r.ttl is not None else fallback)
                    n += 1
            assert store.refresh_expiries(pairs, now_ms=now_ms) == n
        elif kind == "policy":
            scope = rng.choice(POLICY_SCOPES)
            days = rng.choice([None, 1, 30, 365.5])
            store.set_retention(scope, days)
            if days is None:
                model.policies.pop(scope, None)
            else:
                model.policies[scope] = float(days)
        elif kind == "sweep":
            limit = rng.randint(1, 5)
            rounds = 1 if rng.random() < 0.7 else 40
            for _ in range(rounds):
                now_ms = int(time.time() * 1000)
                first_due = model.due_order(now_ms)[:limit]
                eligible = model.retention_eligible(now_ms)
                res = store.sweep(limit=limit, now_ms=now_ms)
                assert res["tombs"] == 0
                exists = store.get_records(list(model.recs))
                gone = {rid for rid, r in zip(list(model.recs), exists) if r is None}
                assert res["expired"] == len(first_due), (seed, step, res, first_due)
                assert set(first_due) <= gone, (seed, step)
                assert gone - set(first_due) <= eligible, (seed, step, gone, eligible)
                assert res["retained"] == len(gone - set(first_due)), (seed, step, res)
                for rid in gone:
                    if model.recs[rid].ver is not None:
                        model.tomb_at(rid, model.recs[rid].ver)
                model.delete(gone)
                if not model.due_order(now_ms) and not model.retention_eligible(now_ms):
                    break
            if rounds > 1:  # swept until done: nothing due or past its retention is left
                assert not model.due_order(now_ms), (seed, step)
                assert not model.retention_eligible(now_ms), (seed, step, model.policies)
        elif kind == "touch":
            store.touch_records(rng.sample(IDS, 3))
        if step % check_every == check_every - 1 or kind in ("reset_all", "jobs"):
            try:
                check_raw(store, raw, model)
                check_answers(store, model)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed} after op {step} ({kind}); last ops {log[-8:]}: {exc}") from exc
    check_raw(store, raw, model)
    check_answers(store, model)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_side_indexes_follow_random_operations(server, store_factory, raw, seed) -> None:
    cluster = isinstance(server, ThrowawayCluster)
    if cluster and seed != 1:
        pytest.skip("one seed on the clusters (time)")
    store = store_factory(batch_size=3)  # saves of several script calls
    run_fuzz(store, raw, seed * 7919, ops=300 if cluster else 450, check_every=6)


def test_big_batches_keep_every_index_exact(server, store_factory, raw) -> None:
    """Thousands of records in one script call (ZADD/ZREM chunked at 1000 arguments,
    several scopes feeding one ancestor's list), moved in one call, half deleted."""
    rng = random.Random(5)
    store = store_factory(batch_size=3000)
    model = Model()
    n = 2400
    made = []
    for i in range(n):
        rid = f"big{i:04d}"
        record, row = make_row(rng, rid, 0, p_ver=0.0)
        record["exp"] = row_exp = FUTURE_EXP[i % 3] if i % 5 == 0 else None
        made.append((record, replace(row, exp=row_exp, ttl=None)))
        record.pop("ttl", None)
    store.save([m[0] for m in made])
    model.direct_write([m[1] for m in made], 0)
    check_raw(store, raw, model)
    moved = []
    for record, row in made:
        record, row = dict(record), replace(row, scope=rng.choice(SCOPES), cats=tuple(rng.sample(CATS, 2)))
        record["scope"], record["categories"] = row.scope, list(row.cats)
        moved.append((record, row))
    store.save([m[0] for m in moved])
    model.direct_write([m[1] for m in moved], 0)
    check_raw(store, raw, model)
    check_answers(store, model)
    gone = [f"big{i:04d}" for i in range(0, n, 2)] + ["big0000", "nope"]
    assert store.delete(record_ids=gone) == model.delete(gone) == n // 2
    check_raw(store, raw, model)
    check_answers(store, model)


# ---------------------------------------------------------------------------- shrunk defects
def _stale_commit_after_an_update(store, raw, *, many: bool) -> None:
    """A record saved without a vector (the namespace has no dimension yet), then
    updated by the user; a job enqueued before that update commits its older value of
    the record, with a vector: the namespace's first vector write.

    Defect (search-module servers only): when the script reports that it set the
    namespace's dimension, memworker/store/plans/write.py writes the commit again,
    unguarded and unstamped (line 171 ``args[9:11] = ["", ""]``; line 238
    ``_p_write(again, unstamped=True)``), so the rows the guarded step left alone
    (``upd`` later than the job's enqueue time) are written the second time."""
    enqueued = int(time.time() * 1000) - 60_000
    store.save([{"id": "u", "content": "first", "scope": "/a", "categories": ["c1"], "embedding": None}])
    store.update({"id": "u", "content": "user's update", "scope": "/b", "categories": ["c2"], "embedding": None})
    pending = store.keys.prefix + ":pending:fuzz"
    raw.zadd(pending, {"j1": enqueued})
    stale = to_rows([{"id": "u", "content": "stale job", "scope": "/a/b", "categories": ["c3"],
                      "embedding": [1.0, 0.0, 0.0, 0.0]}])  # fmt: skip
    if many:
        store.write_jobs([JobWrite(stale, pending, "j1", [["ZREM", pending, "j1"]])])
    else:
        store.write_encoded(stale, [["ZREM", pending, "j1"]], guard=(pending, "j1"))
    assert raw.zcard(pending) == 0  # the job committed (its step ran)
    got = store.get_record("u")
    # guarantees.md section 1: "A commit leaves a record updated (update, or a re-save
    # through the store) after its job was enqueued as it is"
    assert (got.content, got.scope, got.categories) == ("user's update", "/b", ["c2"])
    assert store.list_scopes("/") == ["/b"]
    assert store.list_categories() == {"c2": 1}


def test_a_batched_commit_that_sets_the_dimension_leaves_a_later_update_as_it_is(server, store, raw) -> None:
    _stale_commit_after_an_update(store, raw, many=True)


def test_a_guarded_commit_that_sets_the_dimension_leaves_a_later_update_as_it_is(server, store, raw) -> None:
    _stale_commit_after_an_update(store, raw, many=False)
