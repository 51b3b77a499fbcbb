"""A seeded model-based fuzz of retention policies (CrewAI) and TTL (LangGraph), as the
workers' sweep applies them, on real servers with a real in-process worker.

A plain Python model holds the documented rules (README "memworker retention",
docs/crewai.md "Sharing a namespace with LangGraph", docs/langgraph.md "TTL"):

- a policy ``scope -> N days`` deletes, at a sweep, the records of the scope and below
  created more than N days before the sweep; where policies overlap the shortest one
  applies (each covers its whole subtree); ``update`` keeps ``created_at`` (CrewAI's
  ``Memory.update``), so a record moved to another scope keeps its age and falls under
  that scope's policies; private records are records like any other;
- no policy touches the LangGraph store's items (``/langgraph``), a policy there is
  refused, and a ``QueuedMemory`` with a ``root_scope`` sets its policies under it;
- a LangGraph item with a TTL is hidden by ``get``/``search`` as soon as it is due,
  ``list_namespaces`` counts it until it is swept, a read with ``refresh_ttl`` pushes
  the expiry of a live item to now + its TTL, a put with ``ttl=None`` never expires,
  and the sweep deletes due items with their side indexes.

Time is simulated: one virtual clock, ahead of the real one by an offset that the fuzz
advances in whole units of 10 minutes (monkeypatched: ``memworker.records.utcnow``,
which stamps a queued record's ``created_at``, and the ``time`` module of
``memworker.langgraph`` and ``memworker.store.store``, which put, read, refresh and
sweep with it). Every TTL and every policy is a whole number of units, so the real
seconds a run takes never decide an outcome. Sweeps are explicit ``store.sweep()``
calls or the in-process worker's own sweep (its ``Sweeper`` gated so it sweeps only
when the fuzz asks). After each sweep every read is compared with the model: CrewAI
``list_records``, ``count``, ``info``, ``list_categories``, ``recall`` (shallow, with
``source``/``include_private``), LangGraph ``get``, ``search``, ``list_namespaces``,
and the side indexes (``tree:<scope>``, ``cats:/``, ``children:/``, ``expiry``).
"""

from __future__ import annotations

import random
import threading
import time as _time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("crewai")
pytest.importorskip("langgraph.store.base")

from test_crewai_differential import DIM, WEIGHTS, HashEncoder, _embedder  # noqa: E402

import memworker.langgraph as lg_mod  # noqa: E402
import memworker.records as records_mod  # noqa: E402
import memworker.store.store as store_mod  # noqa: E402
from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import QueuedMemory  # noqa: E402
from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import ValidationError  # noqa: E402
from memworker.keys import in_langgraph  # noqa: E402
from memworker.langgraph import QueuedStore, record_id  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.testing import ThrowawayCluster  # noqa: E402
from memworker.worker.sweep import Sweeper  # noqa: E402

ON_CLUSTER = True

U_MS = 600_000  # one unit of virtual time: 10 minutes
DAY_U = 144
LG_ROOT = "/langgraph"
ROOT = "/ten{a}nt|@*:"  # the root scope of the second memory
SEGS = ["alpha", "\u03b2\u00fcn", "{x}|y", "@t*:", "\u65e5\u672c \u8a9e", "a b", "langgraphx"]
DEEP = "/" + "/".join(f"d{i}" for i in range(30))
CATS = ["c1", "c2", "\u00fcn\u00ef", "{t}|*"]
SOURCES = [None, "agent-1", "\u00e4gent 2"]
DAYS = [1 / 6, 0.25, 0.5, 1, 2]  # 24, 36, 72, 144, 288 units
ADVANCES = [1, 3, 6, 12, 24, 36, 72, 144]
NAMESPACES = [("users", "u1"), ("users", "\u00fc/2"), ("{x}|y",), ("a*", "b:c"), ("\u65e5\u672c",)]
WORDS = ["apple", "river", "stone", "cloud", "green", "ticket", "budget", "coffee", "agent"]
BIG = 500


class VClock:
    """The real clock plus ``off_u`` units; the rest of the ``time`` module as it is."""

    def __init__(self) -> None:
        self.off_u = 0

    def time(self) -> float:
        return _time.time() + self.off_u * U_MS / 1000

    def time_ns(self) -> int:
        return _time.time_ns() + self.off_u * U_MS * 1_000_000

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def ancestors(scope: str) -> list[str]:
    parts = [p for p in scope.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def child_of(scope: str, parent: str) -> str:
    rest = scope[len(parent):].lstrip("/") if parent != "/" else scope[1:]
    return ("" if parent == "/" else parent) + "/" + rest.split("/", 1)[0]


def lg_scope(ns: tuple[str, ...]) -> str:
    from urllib.parse import quote

    return LG_ROOT + "".join("/" + quote(label, safe="") for label in ns)


@dataclass
class Rec:
    id: str
    content: str
    scope: str
    cats: tuple[str, ...]
    private: bool
    source: str | None
    born_u: int


@dataclass
class Item:
    ns: tuple[str, ...]
    key: str
    value: dict
    ttl_u: int | None
    exp_u: int | None

    @property
    def rid(self) -> str:
        return record_id(self.ns, self.key)


class Model:
    def __init__(self, clock: VClock) -> None:
        self.clock = clock
        self.recs: dict[str, Rec] = {}
        self.items: dict[tuple[tuple[str, ...], str], Item] = {}
        self.policies: dict[str, float] = {}

    @property
    def now(self) -> int:
        return self.clock.off_u

    def live(self, it: Item) -> bool:
        return it.exp_u is None or it.exp_u > self.now

    def sweep(self) -> tuple[set[str], set[tuple]]:
        gone = set()
        for r in self.recs.values():
            for scope, days in self.policies.items():
                if under(r.scope, scope) and self.now - r.born_u >= round(days * DAY_U):
                    gone.add(r.id)
        expired = {k for k, it in self.items.items() if it.exp_u is not None and it.exp_u <= self.now}
        for rid in gone:
            del self.recs[rid]
        for k in expired:
            del self.items[k]
        return gone, expired

    def all_rows(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(id, scope, categories) of every stored record: CrewAI's and LangGraph's."""
        rows = [(r.id, r.scope, r.cats) for r in self.recs.values()]
        rows += [(it.rid, lg_scope(it.ns), ("/".join(lg_scope(it.ns).split("/")[2:]),)) for it in self.items.values()]
        return rows


def _t(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


# ---------------------------------------------------------------------------- checks
def check_crewai(memory: QueuedMemory, model: Model, rng: random.Random, where: str) -> None:
    rows = model.all_rows()
    scopes = {"/", DEEP, ROOT, *model.policies, *(r.scope for r in model.recs.values())}
    scopes |= {a for r in model.recs.values() for a in ancestors(r.scope)}
    for s in sorted(scopes):
        mine = [r for r in model.recs.values() if under(r.scope, s)]
        every = [row for row in rows if under(row[1], s)]
        got = memory.list_records(scope=s, limit=BIG)
        assert sorted(r.id for r in got) == sorted(r.id for r in mine), f"{where}: list_records({s!r})"
        assert memory.store.count(s) == len(every), f"{where}: count({s!r})"
        # CrewAI's counters leave the LangGraph store's items out (the store's count does not)
        crew = [row for row in every if not in_langgraph(row[1])]
        cats = dict(Counter(c for row in crew for c in row[2]))
        assert memory.list_categories(s) == cats, f"{where}: list_categories({s!r})"
        info = memory.info(s)
        assert info.record_count == len(crew), f"{where}: info({s!r}).record_count"
        children = sorted({child_of(row[1], s) for row in crew if row[1] != s})
        assert sorted(info.child_scopes) == children, f"{where}: info({s!r}).child_scopes"
        assert memory.list_scopes(s) == children, f"{where}: list_scopes({s!r})"
    for _ in range(3):
        s = rng.choice(sorted(scopes))
        src = rng.choice(SOURCES)
        priv = rng.random() < 0.4
        got = memory.recall(rng.choice(WORDS), scope=s, limit=BIG, depth="shallow", source=src, include_private=priv)
        want = {
            r.id for r in model.recs.values()
            if under(r.scope, s) and (not r.private or priv or (src is not None and r.source == src))
        }  # fmt: skip
        assert {m.record.id for m in got} == want, f"{where}: recall(scope={s!r}, source={src!r}, private={priv})"


def check_langgraph(lg: QueuedStore, model: Model, where: str) -> None:
    live = {k: it for k, it in model.items.items() if model.live(it)}
    got = lg.search((), limit=BIG, refresh_ttl=False)
    assert sorted((tuple(h.namespace), h.key) for h in got) == sorted(live), f"{where}: search(())"
    for h in got:
        assert h.value == live[(tuple(h.namespace), h.key)].value, f"{where}: value of {h.key!r}"
    for (ns, key), it in model.items.items():
        item = lg.get(ns, key, refresh_ttl=False)
        assert (item is not None) == model.live(it), f"{where}: get({ns!r}, {key!r}) exp={it.exp_u} now={model.now}"
    spaces = sorted({it.ns for it in model.items.values()})  # counted until swept
    assert sorted(lg.list_namespaces(limit=BIG)) == spaces, f"{where}: list_namespaces"


def check_raw(raw: Any, keys: Any, model: Model, where: str) -> None:
    rows = model.all_rows()
    have = {_t(m) for m in raw.zrange(keys.tree("/"), 0, -1)}
    want = {row[0]: row for row in rows}
    assert have == set(want), (f"{where}: tree:/", [want[i] for i in set(want) - have], have - set(want))
    for p in model.policies:
        have = {_t(m) for m in raw.zrange(keys.tree(p), 0, -1)}
        assert have == {row[0] for row in rows if under(row[1], p)}, f"{where}: tree:{p}"
    cats = {_t(k): int(v) for k, v in raw.hgetall(keys.cats("/")).items()}
    assert cats == dict(Counter(c for row in rows for c in row[2])), f"{where}: cats:/"
    children = {_t(k): int(v) for k, v in raw.hgetall(keys.children("/")).items()}
    assert children == dict(Counter(child_of(row[1], "/") for row in rows if row[1] != "/")), f"{where}: children:/"
    exp = {_t(m) for m in raw.zrange(keys.expiry, 0, -1)}
    assert exp == {it.rid for it in model.items.values() if it.exp_u is not None}, f"{where}: expiry index"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def world(server, namespace, monkeypatch, raw):
    """(clock, memory, rooted memory, LangGraph store, sweep request, raw, keys)."""
    monkeypatch.delenv(crewai_config.MEMORY_FACTORY_ENV, raising=False)
    crewai_config.reset_worker_memory_config()
    clock = VClock()
    real_utcnow = records_mod.utcnow
    monkeypatch.setattr(records_mod, "utcnow", lambda: real_utcnow() + timedelta(milliseconds=clock.off_u * U_MS))
    monkeypatch.setattr(lg_mod, "time", clock)
    monkeypatch.setattr(store_mod, "time", clock)
    # The virtual clock is every host's and the server's: sweeps and the store's
    # expiries go by it, not by the server's real clock.
    monkeypatch.setattr(store_mod, "SWEEP_AT_MOST_SERVER_TIME", False)
    monkeypatch.setattr(lg_mod, "_CLOCK_REFRESH_S", float("inf"))
    # The worker's sweeper sweeps only when the fuzz asks (then once).
    gate = threading.Event()
    results: list[dict] = []
    done = threading.Event()
    real_maybe = Sweeper.maybe_sweep

    def gated(self: Sweeper) -> Any:
        if not gate.is_set():
            return None
        got = real_maybe(self)
        if got is not None:
            gate.clear()
            results.append(got)
            done.set()
        return got

    monkeypatch.setattr(Sweeper, "maybe_sweep", gated)
    worker_mod.set_embedder_factory(HashEncoder)
    settings = Settings.from_url(server.url, namespace=namespace, search_mode="module" if server.module else "exact")
    try:
        with worker_mod.running_worker(
            settings, threads=3, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=1
        ):
            kw = dict(namespace=namespace, embedder=_embedder(), llm=StandInLLM(), drain_timeout=60, **WEIGHTS)
            memory = QueuedMemory(storage=server.url, **kw)
            rooted = QueuedMemory(storage=server.url, root_scope=ROOT, **kw)
            lg = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]}, ttl={"default_ttl": 30})
            lg._clock = (0.0, 0.0)  # no offset from the server's clock, never read again
            keys = memory.store.keys

            def worker_sweep() -> dict:
                done.clear()
                raw.delete(keys.sweep)  # the lock of the last sweep
                gate.set()
                assert done.wait(30), "the worker did not sweep"
                return results[-1]

            try:
                yield clock, memory, rooted, lg, worker_sweep, raw, keys
            finally:
                try:
                    memory.reset_all()
                finally:
                    lg.close()
                    rooted.close()
                    memory.close()
    finally:
        worker_mod.set_embedder_factory(None)
        crewai_config.reset_worker_memory_config()


# ---------------------------------------------------------------------------- the fuzz
def run_fuzz(world: Any, seed: int, steps: int) -> None:
    clock, memory, rooted, lg, worker_sweep, raw, keys = world
    rng = random.Random(seed)
    model = Model(clock)
    n = 0

    def content() -> str:
        nonlocal n
        n += 1
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) + f" note{n}"

    def scope() -> str:
        r = rng.random()
        if r < 0.08:
            return "/"
        if r < 0.16:
            return DEEP if rng.random() < 0.5 else DEEP[: DEEP.index("/d12")]
        return "/" + "/".join(rng.choice(SEGS) for _ in range(rng.randint(1, 3)))

    def policy_scope() -> str:
        r = rng.random()
        if r < 0.15:
            return "/"
        if r < 0.3 and model.recs:
            s = rng.choice(sorted(model.recs.values(), key=lambda x: x.id)).scope
            return rng.choice(ancestors(s))
        return scope()

    def remember(mem: QueuedMemory, prefix: str) -> None:
        s, cats = scope(), rng.sample(CATS, rng.randint(0, 2))
        src, priv = rng.choice(SOURCES), rng.random() < 0.3
        text = content()
        rec = mem.remember(text, scope=s, categories=cats, importance=0.5, source=src, private=priv)
        full = s if not prefix else (prefix if s == "/" else prefix + s)
        assert rec is not None and rec.scope == full, (rec, full)
        model.recs[rec.id] = Rec(rec.id, text, full, tuple(dict.fromkeys(cats)), priv, src, clock.off_u)

    def remember_many_with_a_policy() -> None:
        """A policy set while the memory's save thread writes (remember_many returns at once)."""
        s, cats = scope(), rng.sample(CATS, rng.randint(0, 2))
        texts = [content() for _ in range(rng.randint(2, 6))]
        memory.remember_many(texts, scope=s, categories=cats, importance=0.5)
        p, d = policy_scope(), rng.choice(DAYS)
        memory.set_retention(p, d)
        model.policies[p] = float(d)
        memory.drain_writes()
        found = {r.content: r for r in memory.list_records(scope=s, limit=BIG)}
        for t in texts:
            assert t in found, f"remember_many lost {t!r}"
            r = found[t]
            model.recs[r.id] = Rec(r.id, t, s, tuple(dict.fromkeys(cats)), False, None, clock.off_u)

    def lg_put() -> None:
        ns, key = rng.choice(NAMESPACES), f"k{rng.randint(0, 5)}"
        value = {"text": content(), "n": rng.randint(0, 9)}
        choice = rng.random()
        if choice < 0.3:
            lg.put(ns, key, value)  # default_ttl: 30 minutes
            ttl_u = 3
        elif choice < 0.55:
            lg.put(ns, key, value, ttl=None)
            ttl_u = None
        else:
            ttl_u = rng.choice([1, 6, 24, 144])
            lg.put(ns, key, value, ttl=ttl_u * 10)
        model.items[(ns, key)] = Item(ns, key, value, ttl_u, None if ttl_u is None else clock.off_u + ttl_u)

    def lg_read() -> None:
        if not model.items:
            return
        it = rng.choice(sorted(model.items.values(), key=lambda x: (x.ns, x.key)))
        refresh = rng.random() < 0.6
        if rng.random() < 0.5:
            got = lg.get(it.ns, it.key, refresh_ttl=refresh)
            assert (got is not None) == model.live(it), f"get({it.ns}, {it.key}) exp={it.exp_u} now={clock.off_u}"
            hits = [it] if got is not None else []
        else:
            prefix = it.ns[:1]
            got = lg.search(prefix, limit=BIG, refresh_ttl=refresh)
            want = {k for k, x in model.items.items() if x.ns[:1] == prefix and model.live(x)}
            assert {(tuple(h.namespace), h.key) for h in got} == want, f"search({prefix}) now={clock.off_u}"
            hits = [model.items[k] for k in want]
        if refresh:
            for x in hits:
                if x.ttl_u is not None:
                    x.exp_u = clock.off_u + x.ttl_u

    def sweep(where: str) -> None:
        lg.get(("drain",), "none")  # the store's own puts are committed before the sweep
        memory.drain_writes()
        gone, expired = model.sweep()
        if rng.random() < 0.3:
            got = worker_sweep()
            assert got["retained"] == len(gone) and got["expired"] == len(expired), (where, got, len(gone), len(expired))
        else:
            totals = Counter()
            for _ in range(50):
                got = store_mod.ValkeyStore.sweep(memory.store, limit=rng.choice([3, 50, 500]))
                totals.update(got)
                if got["expired"] + got["retained"] == 0 and got["scanned"] == 0:
                    break
            assert (totals["retained"], totals["expired"]) == (len(gone), len(expired)), (where, dict(totals))
        check_raw(raw, keys, model, where)
        check_langgraph(lg, model, where)
        check_crewai(memory, model, rng, where)

    # a policy inside /langgraph is refused, through either memory or the store
    for bad in (LG_ROOT, LG_ROOT + "/users", LG_ROOT + "/x/{y}"):
        with pytest.raises(ValidationError):
            memory.set_retention(bad, 1)
    assert memory.store.retention() == {}

    for step in range(steps):
        r = rng.random()
        where = f"seed {seed} step {step}"
        if r < 0.2:
            remember(memory, "")
        elif r < 0.27:
            remember(rooted, ROOT)
        elif r < 0.32:
            remember_many_with_a_policy()
        elif r < 0.4 and model.recs:
            rec = rng.choice(sorted(model.recs.values(), key=lambda x: x.id))
            if rng.random() < 0.5 and not rec.scope.startswith(ROOT):
                new = scope()
                memory.update(rec.id, scope=new)  # keeps created_at: the record keeps its age
                rec.scope = new
            else:
                cats = rng.sample(CATS, rng.randint(0, 2))
                memory.update(rec.id, categories=cats)
                rec.cats = tuple(dict.fromkeys(cats))
        elif r < 0.5:
            p, d = policy_scope(), rng.choice(DAYS)
            memory.set_retention(p, d)
            model.policies[p] = float(d)
        elif r < 0.55:
            d = rng.choice(DAYS)
            sub = rng.choice(["/", "/" + rng.choice(SEGS)])
            rooted.set_retention(sub, d)  # under its root scope
            model.policies[ROOT if sub == "/" else ROOT + sub] = float(d)
        elif r < 0.6 and model.policies:
            p = rng.choice(sorted(model.policies))
            memory.set_retention(p, None)
            del model.policies[p]
        elif r < 0.72:
            lg_put()
        elif r < 0.75 and model.items:
            k = rng.choice(sorted(model.items))
            lg.delete(*k)
            del model.items[k]
        elif r < 0.83:
            lg_read()
        elif r < 0.93:
            clock.off_u += rng.choice(ADVANCES)
        else:
            assert memory.store.retention() == model.policies, where
            sweep(where)
    memory.drain_writes()
    clock.off_u += rng.choice(ADVANCES)
    sweep(f"seed {seed} end")
    clock.off_u += 2 * DAY_U
    sweep(f"seed {seed} two days later")


@pytest.mark.parametrize("seed", [1, 2])
def test_retention_and_ttl_follow_the_model(server, world, seed) -> None:
    if isinstance(server, ThrowawayCluster) and seed != 1:
        pytest.skip("one seed on the clusters (time)")
    run_fuzz(world, seed * 104729, steps=90)
