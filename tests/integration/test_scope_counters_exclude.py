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
    now passes over them (reading at most VISIBLE_READ_MAX records)."""
    from memworker.store.plans import read as read_mod

    monkeypatch.setattr(read_mod, "VISIBLE_CATEGORY_SCAN", 20)
    monkeypatch.setattr(read_mod, "_VISIBLE_PAGE", 10)
    monkeypatch.setattr(read_mod, "VISIBLE_READ_MAX", 100)
    alone, shared = pair
    alone.save(_crew())
    shared.save(_crew() + _newer_items(30))
    want = alone.visible_summary("/", viewer=None)
    assert want == ({"r": 1, "x": 2, "y": 1, "shared": 1}, ["/a", "/langgraphx"])
    assert shared.visible_summary("/", viewer=None, exclude_scope=CUT) == want
    # past VISIBLE_READ_MAX records of the cut, the window ends there (documented)
    shared.save(_newer_items(100, start=30))
    assert shared.visible_summary("/", viewer=None, exclude_scope=CUT) == ({}, [])


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
