"""ValkeyCache against a real Valkey (both server kinds)."""

from __future__ import annotations

import asyncio
import time

import pytest

from memworker import ValidationError, ValkeyCache

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)


@pytest.fixture
def cache(server, namespace):
    c = ValkeyCache(server.url, namespace=namespace)
    yield c
    c.close()


def test_set_get_round_trips_json(cache):
    value = {"a": [1, 2.5, "é", None, True], "nested": {"k": "v"}}
    cache.set("k1", value)
    assert cache.get("k1") == value
    assert cache.exists("k1")
    assert cache.get("missing") is None
    assert cache.get("missing", default=7) == 7


def test_delete_reports_whether_it_existed(cache):
    cache.set("k", 1)
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert not cache.exists("k")


def test_ttl_expires_and_default_ttl_applies(server, namespace):
    c = ValkeyCache(server.url, namespace=namespace, default_ttl=0.05)
    c.set("short", "x")
    c.set("forever", "y", ttl=None)
    deadline = time.monotonic() + 5
    while c.exists("short") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not c.exists("short")
    assert c.get("forever") == "y"
    c.close()


def test_keys_live_under_namespace_and_prefix(server, namespace, raw):
    c = ValkeyCache(server.url, namespace=namespace, prefix="p1")
    c.set("k", 1)
    assert raw.exists(f"{{{namespace}}}:cache:p1:k")
    other = ValkeyCache(server.url, namespace=namespace, prefix="p2")
    assert other.get("k") is None
    c.close()
    other.close()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.set("k", {1, 2}), "JSON"),
        (lambda c: c.set("k", float("nan")), "JSON"),
        (lambda c: c.set("", 1), "key"),
        (lambda c: c.set("k", 1, ttl=-1), "ttl"),
        (lambda c: c.get("x" * 2000), "key"),
    ],
)
def test_bad_input_is_rejected_and_nothing_written(cache, raw, namespace, call, field):
    with pytest.raises(ValidationError, match=field):
        call(cache)
    assert list(raw.scan_iter(match=f"{{{namespace}}}:*")) == []


def test_async_face_matches_sync(cache):
    async def main():
        await cache.aset("a", {"x": 1}, ttl=60)
        assert await cache.aget("a") == {"x": 1}
        assert await cache.aexists("a")
        assert await cache.adelete("a") is True
        assert await cache.aget("a", "gone") == "gone"
        await cache.aclose()

    asyncio.run(main())
    cache.set("b", 2)
    assert cache.get("b") == 2
