"""Number ranges in the query (``metadata_ranges``: range tokens under ``=`` keys), on
every server kind, against a plain Python evaluation."""

from __future__ import annotations

import random

import pytest

from memworker.errors import ValidationError

ON_CLUSTER = True

VALUES = [-1e300, -1e9, -7.5, -1, -0.0, 0, 1e-300, 0.5, 1, 2, 2.5, 3, 99, 100, 101, 1e9, 2**53, 1e300]


def _records():
    out = []
    for i, v in enumerate(VALUES):
        out.append({"id": f"n{i}", "content": str(v), "scope": "/r", "metadata": {"=n": v, "n": v},
                    "embedding": [1.0, float(i % 3), 0.5]})  # fmt: skip
    # values that are not numbers never match a range
    for i, v in enumerate([True, "5", None, [1], {"a": 1}]):
        out.append({"id": f"x{i}", "content": "x", "scope": "/r", "metadata": {"=n": v},
                    "embedding": [1.0, 0.0, 0.5]})  # fmt: skip
    return out


def _inside(v, low, low_in, high, high_in):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    v = float(v)
    if low is not None and (v < low or (v == low and not low_in)):
        return False
    if high is not None and (v > high or (v == high and not high_in)):
        return False
    return True


def _search(store, ranges, **kw):
    hits = store.search([1.0, 0.0, 0.5], scope_prefix="/r", limit=100, metadata_ranges=ranges, **kw)
    return {r.id for r, _ in hits}


@pytest.mark.parametrize(
    "bounds",
    [
        (1, True, None, True),
        (1, False, None, True),
        (None, True, 1, True),
        (None, True, 1, False),
        (2, True, 100, False),
        (-1, False, 0, True),
        (0, True, 0, True),
        (100, True, 99, True),  # empty
        (-1e301, True, 1e301, True),
        (2.5, True, 2.5, True),
    ],
)
def test_ranges_match_python(store, bounds):
    store.save(_records())
    expect = {f"n{i}" for i, v in enumerate(VALUES) if _inside(v, *bounds)}
    assert _search(store, {"=n": bounds}) == expect


def test_random_ranges_and_combined_filters(store):
    store.save(_records())
    rng = random.Random(7)
    for _ in range(25):
        a, b = sorted(rng.choice(VALUES + [rng.uniform(-200, 200)]) for _ in range(2))
        bounds = (a, rng.random() < 0.5, b, rng.random() < 0.5)
        expect = {f"n{i}" for i, v in enumerate(VALUES) if _inside(v, *bounds)}
        assert _search(store, {"=n": bounds}) == expect
    # with an equality filter too: both hold
    assert _search(store, {"=n": (0, True, 10, True)}, metadata_filter={"n": 2}) == {"n9"}


def test_keys_without_the_range_prefix_and_bad_bounds_are_refused(store):
    store.save(_records())
    with pytest.raises(ValidationError, match="metadata_ranges keys"):
        _search(store, {"n": (1, True, None, True)})
    with pytest.raises(ValidationError, match="low must be a number"):
        _search(store, {"=n": ("1", True, None, True)})
    with pytest.raises(ValidationError, match="high must be a number"):
        _search(store, {"=n": (None, True, float("nan"), True)})
    with pytest.raises(ValidationError, match=r"\(low, low_inclusive"):
        _search(store, {"=n": 5})
    # a hostile key is only ever a token: no match, no error
    assert _search(store, {"=n} | @vis:{pub": (None, True, None, True)}) == set()
