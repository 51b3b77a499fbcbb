"""A search never returns a record that fails its filter, even when the record changes
between the step that finds it (FT.SEARCH, the exact cache, the bulk scan) and the
step that reads it.

Each test re-saves the record from another store at the moment the searching store
sends its record read: the record, as read, no longer passes the filter (it turned
private, moved scope, changed category, metadata, source or number). The search must
drop it, on every server kind and every search path.
"""

from __future__ import annotations

from typing import Any

import pytest

from memworker import ValkeyStore
from memworker.io import Script
from memworker.records import record_types

ON_CLUSTER = True

MemoryRecord = record_types()[0]

#: name -> (search keyword arguments, fields of the record found, fields it changes to)
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "turns private": (
        {"include_private": False, "viewer": "carol"},
        {"source": "bob", "private": False},
        {"source": "bob", "private": True},
    ),
    "turns private, no viewer": (
        {"include_private": False},
        {"source": "bob", "private": False},
        {"source": "bob", "private": True},
    ),
    "moves scope": ({"scope_prefix": "/a"}, {"scope": "/a/x"}, {"scope": "/b"}),
    "changes category": ({"categories": ["keep"]}, {"categories": ["keep"]}, {"categories": ["other"]}),
    "changes metadata": (
        {"metadata_filter": {"k": "v"}},
        {"metadata": {"k": "v"}},
        {"metadata": {"k": "w"}},
    ),
    "changes source": ({"source": "alice"}, {"source": "alice"}, {"source": "mallory"}),
    "leaves a range": (
        {"metadata_ranges": {"=n": (0, True, 10, True)}},
        {"metadata": {"=n": 5}},
        {"metadata": {"=n": 50}},
    ),
}


def _record(rid: str, **fields: Any) -> Any:
    base: dict[str, Any] = {
        "id": rid,
        "content": f"content of {rid}",
        "scope": "/a/x",
        "embedding": [1.0, 0.5, 0.25],
    }
    base.update(fields)
    return MemoryRecord(**base)


def _change_before_record_read(store: ValkeyStore, change: Any) -> list[int]:
    """Make ``store`` run ``change()`` just before it sends its next record read (the
    read script's ``records`` step). Returns a one-item list counting the reads seen."""
    conn = store._sync
    original = conn.execute
    seen = [0]

    def execute(step: Any) -> Any:
        if isinstance(step, Script) and step.name == "read" and step.args[:1] == ["records"]:
            seen[0] += 1
            if seen[0] == 1:
                change()
        return original(step)

    conn.execute = execute  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("path", ["default", "scan"])
@pytest.mark.parametrize("name", list(CHANGES))
def test_a_record_changed_after_it_was_found_is_checked_again(store_factory, name: str, path: str) -> None:
    kwargs, before, after = CHANGES[name]
    writer = store_factory()
    # "scan": the exact path's bulk read (namespaces above exact_cache_max_records);
    # with a search module both settings search with FT.SEARCH.
    reader = store_factory(exact_cache_max_records=0) if path == "scan" else store_factory()
    writer.save([_record("target", **before), _record("other", scope="/z", source="zed", private=True)])
    first = reader.search([1.0, 0.5, 0.25], limit=10, min_score=-2.0, **kwargs)
    assert [r.id for r, _ in first] == ["target"]  # found while it passes the filter

    reads = _change_before_record_read(reader, lambda: writer.save([_record("target", **after)]))
    hits = reader.search([1.0, 0.5, 0.25], limit=10, min_score=-2.0, **kwargs)
    assert reads[0] >= 1, "the search read no record: the race was not exercised"
    assert [r.id for r, _ in hits] == [], f"a record that {name} was returned: {hits}"
    # and the next search (no race) agrees
    assert reader.search([1.0, 0.5, 0.25], limit=10, min_score=-2.0, **kwargs) == []


@pytest.mark.parametrize("path", ["default", "scan"])
def test_records_that_still_pass_are_returned_whole(store_factory, path: str) -> None:
    # the re-check reads the filter fields with the record: unchanged records come back
    # exactly as a plain get returns them, private ones to their own viewer
    writer = store_factory()
    reader = store_factory(exact_cache_max_records=0) if path == "scan" else store_factory()
    writer.save(
        [
            _record("mine", source="bob", private=True, categories=["keep"], metadata={"=n": 3, "k": "v"}),
            _record("shared", source="alice", categories=["keep"], metadata={"=n": 4, "k": "v"}),
        ]
    )
    hits = reader.search(
        [1.0, 0.5, 0.25], limit=10, min_score=-2.0, scope_prefix="/a", categories=["keep"],
        metadata_filter={"k": "v"}, metadata_ranges={"=n": (0, True, 10, True)},
        include_private=False, viewer="bob",
    )  # fmt: skip
    assert sorted(r.id for r, _ in hits) == ["mine", "shared"]
    for record, _ in hits:
        assert record == writer.get_record(record.id)
