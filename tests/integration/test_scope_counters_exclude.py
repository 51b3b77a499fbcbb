"""``exclude_scope`` on the store's scope counters (``get_scope_info``, ``list_scopes``,
``list_categories``, ``visible_summary``): what CrewAI's ``info``/``tree``/``list_*``
and its recall's LLM prompt read, without the LangGraph store's subtree of a shared
namespace. Every figure must equal what the same calls return on a store that never
held the left-out records."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from test_store import T0, mk  # the store suite's record maker

from memworker import ValidationError, ValkeyStore

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

CUT = "/langgraph"


def _crew() -> list:
    return [
        mk("root", scope="/", categories=["r"], created=T0 + timedelta(hours=1)),
        mk("a1", scope="/a", categories=["x"], created=T0 + timedelta(hours=2)),
        mk("a2", scope="/a/b", categories=["x", "y"], created=T0 + timedelta(hours=3)),
        # a CrewAI scope that shares the cut's first letters is not in it
        mk("lgx", scope="/langgraphx", categories=["shared"], created=T0 + timedelta(hours=4)),
    ]


def _left_out(n: int) -> list:
    """``n`` records under the cut: half older than every other record, half newer, so
    both ends of the root's zset start with a run of them longer than a page."""
    older = [mk(f"old{i}", scope=f"{CUT}/users/u{i % 3}", categories=["shared", "users"],
                created=T0 - timedelta(seconds=n - i)) for i in range(n // 2)]  # fmt: skip
    newer = [mk(f"new{i}", scope=f"{CUT}/users/u{i % 3}", categories=["users"],
                created=T0 + timedelta(days=1, seconds=i)) for i in range(n - n // 2)]  # fmt: skip
    return older + newer


@pytest.fixture
def pair(store_factory, namespace):
    """Two stores on two namespaces of the current server: ``alone`` (never holds the
    left-out records) and ``shared`` (holds them too)."""
    alone, shared = store_factory(namespace=namespace + "alone"), store_factory()
    yield alone, shared
    shared.reset()  # (the factory resets the first store's namespace)


def _figures(store: ValkeyStore, path: str, exclude: str | None) -> tuple:
    info = store.get_scope_info(path, exclude_scope=exclude)
    summary = store.visible_summary(path, viewer=None, exclude_scope=exclude)
    return (
        (info.path, info.record_count, info.categories, info.oldest_record, info.newest_record,
         info.child_scopes),
        store.list_scopes(path, exclude_scope=exclude),
        store.list_categories(path, exclude_scope=exclude),
        summary,
    )  # fmt: skip


@pytest.mark.parametrize("n", [0, 1, 300])
@pytest.mark.parametrize("path", ["/", "/a", "/langgraphx"])
def test_counters_without_the_cut_equal_a_store_that_never_held_it(pair, path, n):
    """300 left-out records put 150 at each end of the root's zset: the oldest and
    newest CrewAI record are found past several pages."""
    alone, shared = pair
    alone.save(_crew())
    shared.save(_crew() + _left_out(n))
    assert _figures(shared, path, CUT) == _figures(alone, path, None)
    assert shared.count() == len(_crew()) + n  # the records are there, only left out


def test_a_child_scope_that_leads_to_the_cut_stays_while_it_holds_other_records(store_factory):
    """A cut deeper than one level: ``/p`` holds the cut ``/p/q`` and a record of its
    own, so it stays a child of ``/``; once only the cut is left under it, it goes."""
    store = store_factory()
    store.save([mk("own", scope="/p", categories=["c"]), mk("in", scope="/p/q/r", categories=["d"])])
    assert store.list_scopes("/", exclude_scope="/p/q") == ["/p"]
    assert store.get_scope_info("/", exclude_scope="/p/q").child_scopes == ["/p"]
    assert store.list_categories("/", exclude_scope="/p/q") == {"c": 1}
    assert store.list_scopes("/p", exclude_scope="/p/q") == []
    store.delete(record_ids=["own"])
    assert store.list_scopes("/", exclude_scope="/p/q") == []
    assert store.get_scope_info("/", exclude_scope="/p/q").record_count == 0


@pytest.mark.parametrize("path", [CUT, f"{CUT}/users", f"{CUT}/users/u0/"])
def test_a_scope_inside_the_cut_is_empty(store_factory, path):
    store = store_factory()
    store.save(_crew() + _left_out(10))
    info = store.get_scope_info(path, exclude_scope=CUT)
    assert (info.record_count, info.categories, info.child_scopes) == (0, [], [])
    assert info.oldest_record is None and info.newest_record is None
    assert store.list_scopes(path, exclude_scope=CUT) == []
    assert store.list_categories(path, exclude_scope=CUT) == {}
    assert store.visible_summary(path, viewer=None, exclude_scope=CUT) == ({}, [])
    # without the cut, the same calls see them
    assert store.get_scope_info(path).record_count > 0


@pytest.mark.parametrize("exclude", ["/", "", "//x", "/a\x00b", 7])
def test_a_bad_exclude_scope_is_refused_naming_the_field(store, exclude):
    store.save(_crew())
    for call in (
        lambda: store.get_scope_info("/", exclude_scope=exclude),
        lambda: store.list_scopes("/", exclude_scope=exclude),
        lambda: store.list_categories("/", exclude_scope=exclude),
    ):
        with pytest.raises(ValidationError, match="exclude_scope"):
            call()


def test_the_async_faces_take_exclude_scope(pair):
    alone, shared = pair
    alone.save(_crew())
    shared.save(_crew() + _left_out(40))

    async def main() -> tuple:
        try:
            return (
                await shared.aget_scope_info("/", exclude_scope=CUT),
                await shared.alist_scopes("/", exclude_scope=CUT),
                await shared.alist_categories("/", exclude_scope=CUT),
            )
        finally:
            await shared.aclose()

    assert asyncio.run(main()) == (
        alone.get_scope_info("/"), alone.list_scopes("/"), alone.list_categories("/")
    )


# ---------------------------------------------------------------- cost and window (review helper-95)
def _steps(store: ValkeyStore) -> list:
    """Record the steps (round trips) of every plan the store's sync face runs."""
    steps: list = []
    run = store._sync.run

    def counted(plan):
        def spy(inner):
            reply = None
            while True:
                try:
                    step = inner.send(reply)
                except StopIteration as stop:
                    return stop.value
                steps.append(step)
                reply = yield step

        return run(spy(plan))

    store._sync.run = counted
    return steps


def _newer_items(n: int, start: int = 0) -> list:
    return [mk(f"lg{i}", scope=f"{CUT}/users/u{i % 3}", categories=["users"], embedding=None,
               created=T0 + timedelta(days=1, seconds=i)) for i in range(start, start + n)]  # fmt: skip


@pytest.mark.parametrize("crew", [False, True])
def test_the_oldest_and_newest_outside_the_cut_cost_no_round_trip_per_left_out_record(store_factory, crew):
    """5,000 left-out records newer than every crew record (or no crew record at all):
    the edge search read them all, a page of up to 4,096 per round trip; now it is one
    script call (O(log n) inside), none when nothing is left outside the cut."""
    store = store_factory()
    if crew:
        store.save(_crew())
    for start in range(0, 5_000, 1_000):
        store.save(_newer_items(1_000, start))
    steps = _steps(store)
    info = store.get_scope_info("/", exclude_scope=CUT)
    if crew:
        assert info.record_count == 4
        assert (info.oldest_record, info.newest_record) == (T0 + timedelta(hours=1), T0 + timedelta(hours=4))
    else:
        assert info.record_count == 0 and info.oldest_record is None and info.newest_record is None
    assert len(steps) <= (3 if crew else 2), steps


def test_the_recall_prompt_window_is_filled_with_records_outside_the_cut(pair, monkeypatch):
    """``visible_summary`` counts a scope's newest records (10,000; 20 here): with the
    cut's records newer than every crew record, the window held only left-out records,
    so the recall's and field inference's prompts showed no scope and no category. It
    is now the newest records outside the cut, however many of the cut's are newer."""
    from memworker.store.plans import read as read_mod

    monkeypatch.setattr(read_mod, "VISIBLE_CATEGORY_SCAN", 20)
    monkeypatch.setattr(read_mod, "_VISIBLE_PAGE", 3)
    alone, shared = pair
    crew = [mk(f"w{i:02d}", scope=f"/w/s{i % 4}", categories=[f"c{i}"], created=T0 + timedelta(minutes=i),
               private=i % 5 == 0, source="s" if i % 5 == 0 else None) for i in range(30)]  # fmt: skip
    left = _newer_items(200)  # newer than every crew record
    left += [mk(f"mid{i}", scope=f"{CUT}/m", categories=["users"], embedding=None,
                created=T0 + timedelta(minutes=i, seconds=30)) for i in range(30)]  # interleaved  # fmt: skip
    alone.save(crew)
    shared.save(crew + left)
    for viewer in (None, "s"):
        want = alone.visible_summary("/", viewer=viewer)
        assert len(want[0]) >= 14, want  # the 20 newest crew records, less the private ones
        assert shared.visible_summary("/", viewer=viewer, exclude_scope=CUT) == want
        assert shared.visible_summary("/w", viewer=viewer, exclude_scope=CUT) == alone.visible_summary(
            "/w", viewer=viewer
        )


def test_the_window_passes_over_the_cut_in_a_few_script_calls(store_factory):
    """5,000 of the cut's records newer than the crew's 4: one script call (it read
    every page of them before, 10,000 records at most)."""
    store = store_factory()
    store.save(_crew())
    for start in range(0, 5_000, 1_000):
        store.save(_newer_items(1_000, start))
    steps = _steps(store)
    assert store.visible_summary("/", viewer=None, exclude_scope=CUT) == (
        {"r": 1, "x": 2, "y": 1, "shared": 1}, ["/a", "/langgraphx"]
    )
    assert len(steps) == 1, steps


@pytest.mark.parametrize("n", [1, 2, 5, 33])
def test_ties_of_created_at_across_the_cut(pair, n):
    """Records of one created_at, ids interleaved inside and outside the cut (a zset
    orders ties by member): the search by rank still lands on a crew record."""
    alone, shared = pair
    crew = [mk(f"m{i:03d}b", scope="/a", created=T0) for i in range(n)]
    left = [mk(f"m{i:03d}{c}", scope=f"{CUT}/x", created=T0) for i in range(n) for c in "ac"]
    left += [mk("early", scope=f"{CUT}/x", created=T0 - timedelta(days=1)),
             mk("late", scope=f"{CUT}/x", created=T0 + timedelta(days=1))]  # fmt: skip
    alone.save(crew)
    shared.save(crew + left)
    got, want = shared.get_scope_info("/", exclude_scope=CUT), alone.get_scope_info("/")
    assert got == want and got.oldest_record == got.newest_record == T0


@pytest.mark.parametrize("seed", range(6))
def test_random_layouts_give_the_answers_of_a_namespace_without_the_cut(pair, monkeypatch, seed):
    """Random records inside and outside the cut, many sharing a created_at (ties are
    ordered by id), checked with a small window and page (7 and 3) so that every run
    length and page boundary occurs."""
    import random

    from memworker.store.plans import read as read_mod

    monkeypatch.setattr(read_mod, "VISIBLE_CATEGORY_SCAN", 7)
    monkeypatch.setattr(read_mod, "_VISIBLE_PAGE", 3)
    rng = random.Random(seed)
    alone, shared = pair
    crew, left = [], []
    for i in range(rng.randint(1, 60)):
        when = T0 + timedelta(seconds=rng.randint(0, 12))
        if rng.random() < rng.choice([0.2, 0.5, 0.9]):
            left.append(mk(f"{rng.randint(0, 99):02d}L{i}", scope=f"{CUT}/u{rng.randint(0, 2)}",
                           categories=["users"], embedding=None, created=when))  # fmt: skip
        else:
            crew.append(mk(f"{rng.randint(0, 99):02d}C{i}", scope=rng.choice(["/", "/a", "/a/b", "/z"]),
                           categories=[f"c{rng.randint(0, 9)}"], created=when))  # fmt: skip
    if crew:
        alone.save(crew)
    shared.save(crew + left)
    for path in ("/", "/a"):
        assert _figures(shared, path, CUT) == _figures(alone, path, None), (seed, path)


def test_a_long_run_of_the_cut_costs_the_server_a_few_steps(own_plain_server):
    """A crew record, then 25,000 of the cut's records, then older crew records: the
    read script skips the run by rank (galloping, then bisecting), a few dozen
    single-member reads, not one per record (counted on a server of this test alone)."""
    import valkey

    store = ValkeyStore(own_plain_server.url, namespace="runs", search_mode="exact")
    raw = valkey.Valkey(host="127.0.0.1", port=own_plain_server.port)
    try:
        crew = [mk("newest", scope="/a", created=T0 + timedelta(days=9))]
        crew += [mk(f"old{i}", scope="/z", categories=["o"], created=T0 - timedelta(days=1, seconds=i))
                 for i in range(5)]  # fmt: skip
        store.save(crew)
        for start in range(0, 25_000, 5_000):
            store.save(_newer_items(5_000, start))

        def reads() -> int:
            return int(raw.info("commandstats").get("cmdstat_zrevrange", {}).get("calls", 0))

        before = reads()
        assert store.visible_summary("/", viewer=None, exclude_scope=CUT) == ({"o": 5}, ["/a", "/z"])
        assert reads() - before < 500, reads() - before
    finally:
        store.reset()
        store.close()
        raw.close()
