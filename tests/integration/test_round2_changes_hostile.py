"""Hostile review of the round-2 changes (25b99de..HEAD):

1. the first vector write after a reset has the module index its records through the
   script's ``reindex`` op (no second write of the commit);
2. QueuedStore filters: a list holding a dict is matched element by element;
3. CLI bounds (drain --timeout, dead list --limit, --home, demo, worker, server,
   embedded home_path);
4. settings.redact_url and the CLI's token redaction of usage errors.

Real servers only (tests/conftest.py); the store tests run on the standalone and the
cluster server with the search module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memworker import ValidationError, ValkeyStore
from memworker.store.codec import to_rows
from memworker.store.store import JobWrite
from memworker.testing import ThrowawayCluster
from valkey_servers import store_maker  # tests/ is on sys.path

DIM = 4


# ============================================================== 1. reindex after reset
@pytest.fixture(params=["module_server", "cluster_module_server"], ids=["module", "cluster_module"])
def mod_server(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


@pytest.fixture
def mk(mod_server):
    yield from store_maker(mod_server.url, f"t{uuid.uuid4().hex[:12]}", "module")


@pytest.fixture
def rawc(mod_server):
    import valkey  # its FT.SEARCH reply is the plain list (redis-py parses it into a dict)

    if isinstance(mod_server, ThrowawayCluster):
        c = valkey.ValkeyCluster(host="127.0.0.1", port=mod_server.port)
    else:
        c = valkey.Valkey(host="127.0.0.1", port=mod_server.port)
    yield c
    c.close()


def _vec(seed: int, dim: int = DIM) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).tolist()


def _recs(ids: list[str], content: str = "v1", scope: str = "/r", seed0: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "content": f"{content} {i}", "scope": scope, "categories": ["c"], "embedding": _vec(seed0 + n)}
        for n, i in enumerate(ids)
    ]


def _ft_ids(rawc, store: ValkeyStore) -> set[str]:
    """The ids FT.SEARCH finds in the namespace's index right now (no waiting)."""
    cmd = ["FT.SEARCH", store.keys.index, "*", "NOCONTENT", "LIMIT", "0", "100000", "DIALECT", "2"]
    if hasattr(rawc, "get_node_from_key"):
        reply = rawc.execute_command(*cmd, target_nodes=rawc.get_node_from_key(store.keys.meta))
    else:
        reply = rawc.execute_command(*cmd)
    prefix = store.keys.rec_prefix
    keys = reply[1:] if isinstance(reply, list) else list(reply)
    out = set()
    for k in keys:
        k = k.decode() if isinstance(k, bytes) else str(k)
        out.add(k[len(prefix):] if k.startswith(prefix) else k)
    return out


@pytest.mark.parametrize("vtype", ["float32", "float16"])
def test_save_after_a_foreign_reset_is_in_the_index_at_once(mk, rawc, vtype) -> None:
    writer, other = mk(vector_type=vtype), mk(vector_type=vtype)
    writer.save(_recs(["seed"]))
    assert _ft_ids(rawc, writer) == {"seed"}
    other.reset()  # drops the index: writer still believes it is ready
    ids = [f"r{i}" for i in range(1500)]
    writer.save(_recs(ids, seed0=10))
    assert writer.vector_type == vtype
    assert _ft_ids(rawc, writer) == set(ids)
    hits = writer.search(_vec(10 + 7), limit=3)
    assert hits and hits[0][0].id == "r7"
    hits = other.search(_vec(10 + 9), limit=3)
    assert hits and hits[0][0].id == "r9"


def test_many_chunks_after_a_reset_are_all_indexed(mk, rawc) -> None:
    writer, other = mk(batch_size=7), mk()
    writer.save(_recs(["seed"]))
    other.reset()
    ids = [f"r{i}" for i in range(40)]
    writer.save(_recs(ids, seed0=100))
    assert _ft_ids(rawc, writer) == set(ids)
    assert writer.count() == 40


def test_update_as_the_first_write_after_a_reset_is_indexed(mk, rawc) -> None:
    writer, other = mk(), mk()
    writer.save(_recs(["a"]))
    rec = writer.get_record("a")
    other.reset()
    rec.content = "recreated by update"
    writer.update(rec)  # carries its embedding: written again
    assert _ft_ids(rawc, writer) == {"a"}
    assert writer.get_record("a").content == "recreated by update"
    assert writer.search(_vec(0), limit=1)[0][0].id == "a"


def _job(ns: str, job_id: str, ids: list[str], content: str, seed0: int = 0) -> JobWrite:
    return JobWrite(
        to_rows(_recs(ids, content=content, seed0=seed0)),
        f"{{{ns}}}:test-pending",
        job_id,
        [["SADD", f"{{{ns}}}:test-done", job_id]],
    )


def test_write_jobs_after_reset_indexes_committed_jobs_only_and_keeps_a_later_update(mk, rawc) -> None:
    writer, other = mk(), mk()
    ns = writer.keys.namespace
    writer.save(_recs(["seed"]))
    other.reset()
    # an embedding-less record updated by a user (stamped upd) before any vector write
    other.save([{"id": "x", "content": "first", "scope": "/r"}])
    rec = other.get_record("x")
    rec.content = "updated by the user"
    other.update(rec)
    upd = int(rawc.hget(writer.keys.rec("x"), "upd"))
    rawc.zadd(f"{{{ns}}}:test-pending", {"old": upd - 10_000, "a": upd + 10_000})  # "b" not pending
    jobs = [
        _job(ns, "old", ["x"], "old job", 50),
        _job(ns, "a", ["a1", "a2"], "A", 60),
        _job(ns, "b", ["b1"], "B", 70),
    ]
    inserted, skipped = writer.write_jobs(jobs)
    assert skipped == [2]
    assert writer.get_record("x").content == "updated by the user"
    assert rawc.hget(writer.keys.rec("x"), "embedding") is None
    assert writer.get_record("b1") is None
    assert _ft_ids(rawc, writer) == {"a1", "a2", "x"}  # the index also covers unembedded records
    assert {r.id for r, _ in writer.search(_vec(60), limit=10)} == {"a1", "a2"}


def test_write_encoded_with_guard_after_reset_is_indexed(mk, rawc) -> None:
    writer, other = mk(), mk()
    ns = writer.keys.namespace
    writer.save(_recs(["seed"]))
    other.reset()
    pending = f"{{{ns}}}:test-pending"
    rawc.zadd(pending, {"j": 1})
    writer.write_encoded(to_rows(_recs(["g1", "g2"], seed0=5)), [["ZREM", pending, "j"]], guard=(pending, "j"))
    assert _ft_ids(rawc, writer) == {"g1", "g2"}
    assert rawc.zcard(pending) == 0


def test_a_record_deleted_or_updated_between_the_write_and_the_reindex_stays_so(mk, rawc) -> None:
    """A write by another store lands between the commit and the reindex call."""
    writer, other = mk(), mk()
    writer.save(_recs(["seed"]))
    other.reset()
    original = writer._p_reindex

    def racing(ids):
        other.delete(record_ids=["r0"])
        rec = other.get_record("r1")
        rec.content = "updated in between"
        rec.embedding = _vec(999)
        other.update(rec)
        return (yield from original(ids))

    writer._p_reindex = racing  # an instance attribute: only this store's plans see it
    writer.save(_recs(["r0", "r1", "r2"], seed0=20))
    assert writer.get_record("r0") is None and other.get_record("r0") is None
    assert writer.count() == 2
    assert writer.get_record("r1").content == "updated in between"
    assert _ft_ids(rawc, writer) == {"r1", "r2"}
    assert writer.search(_vec(999), limit=1)[0][0].id == "r1"
    assert "r0" not in {r.id for r, _ in writer.search(_vec(20), limit=5)}


def test_a_record_scoped_elsewhere_keeps_its_scope_when_reindexed(mk, rawc) -> None:
    """The reindex writes only the field's own value: scope side indexes stay right."""
    writer, other = mk(), mk()
    writer.save(_recs(["seed"]))
    other.reset()
    writer.save(_recs(["p"], scope="/a/b") + _recs(["q"], scope="/c", seed0=3))
    assert writer.list_scopes("/") and writer.count("/a") == 1 and writer.count("/c") == 1
    assert _ft_ids(rawc, writer) == {"p", "q"}
    assert [r.id for r, _ in writer.search(_vec(3), scope_prefix="/c", limit=5)] == ["q"]


# ============================================================== 2. langgraph filters
pytest.importorskip("langgraph.store.base")

from langgraph.store.memory import _compare_values  # noqa: E402
from test_langgraph import DIM as LG_DIM, embedder, make_store, settings, worker  # noqa: E402,F401

ITEMS: dict[str, dict[str, Any]] = {
    "k1": {"text": "apple pie", "tags": [{"x": 1, "y": 2}], "nest": {"inner": [{"a": 1, "b": 2}, 3]}},
    "k2": {"text": "apple tart", "tags": [{"x": 2}], "nest": {"inner": [{"a": 2}, 3]}},
    "k3": {"text": "banana", "tags": [{"x": 1}], "nest": {"inner": [{"a": 1}, 4]}},
    "k4": {"text": "apple cherry", "tags": [[{"x": 1}]], "nest": {"inner": "a"}},
    "k5": {"text": "cherry", "tags": [{"x": 1}, "s"], "nest": {}},
    "k6": {"text": "apple dog", "tags": [{"x": 3, "z": [1, {"w": 1}]}]},
}

FILTERS: list[dict[str, Any]] = [
    {"tags": [{"x": 1}]},
    {"tags": [{"x": {"$ne": 2}}]},
    {"tags": [{"$ne": {"x": 2}}]},
    {"tags": [{"x": {"$gte": 2}}]},
    {"tags": [[{"x": 1}]]},
    {"tags": [{"x": 1}, "s"]},
    {"tags": ({"x": 1},)},
    {"nest": {"inner": [{"a": 1}, 3]}},
    {"nest": {"inner": [{"a": {"$lt": 2}}, {"$gt": 2}]}},
    {"tags": [{"z": [1, {"w": 1}]}]},
    {"tags": [{"z": [1, {"w": {"$ne": 5}}]}]},
]


def _expected(flt: dict[str, Any], keys=None) -> set[str]:
    return {
        k for k, v in ITEMS.items()
        if (keys is None or k in keys) and all(_compare_values(v.get(f), c) for f, c in flt.items())
    }  # fmt: skip


@pytest.fixture
def lgs(make_store):
    s = make_store()
    for k, v in ITEMS.items():
        s.put(("f",), k, v)
    assert {i.key for i in s.search(("f",), limit=50)} == set(ITEMS)  # read-your-writes
    return s


@pytest.mark.parametrize("i", range(len(FILTERS)))
def test_list_filters_with_dicts_match_element_by_element_on_both_paths(lgs, i) -> None:
    flt = FILTERS[i]
    want = _expected(flt)
    got = {it.key for it in lgs.search(("f",), filter=flt, limit=50)}
    assert got == want, (flt, got, want)
    embedded = {k for k, v in ITEMS.items() if "text" in v}
    got_q = {it.key for it in lgs.search(("f",), query="apple", filter=flt, limit=50)}
    assert got_q == want & embedded, (flt, got_q)


def test_a_10000_element_list_filter_holding_a_dict(lgs) -> None:
    big = list(range(9_999)) + [{"x": 1}]
    lgs.put(("f",), "big", {"text": "apple big", "tags": list(range(9_999)) + [{"x": 1, "y": 5}]})
    assert {i.key for i in lgs.search(("f",), filter={"tags": big}, limit=50)} == {"big"}
    assert {i.key for i in lgs.search(("f",), query="apple", filter={"tags": big}, limit=50)} == {"big"}
    bad = list(range(9_999)) + [{"$regex": "a"}]
    with pytest.raises(ValidationError, match=r"tags.*\[9999\].*\$regex"):
        lgs.search(("f",), filter={"tags": bad})


@pytest.mark.parametrize(
    "flt, where",
    [
        ({"tags": [{"$in": [1]}]}, r"tags'\]\[0\]"),
        ({"tags": [1, [{"x": {"$exists": True}}]]}, r"tags'\]\[1\]\[0\]\['x'\]"),
        ({"nest": {"inner": [{"$regex": "a"}]}}, r"nest'\]\['inner'\]\[0\]"),
        ({"tags": ({"$nin": [1]},)}, r"tags'\]\[0\]"),
    ],
)
def test_unknown_operators_inside_lists_are_refused_naming_the_place(lgs, flt, where) -> None:
    with pytest.raises(ValidationError, match=where):
        lgs.search(("f",), filter=flt)
    with pytest.raises(ValidationError, match=where):
        lgs.search(("f",), query="apple", filter=flt)


def _deep(depth: int) -> Any:
    v: Any = [{"x": 1}]
    for _ in range(depth):
        v = [v]
    return v


def test_a_deeply_nested_list_filter_is_a_validation_error_not_recursion(lgs) -> None:
    for flt in ({"tags": _deep(5_000)}, {"nest": {"inner": _deep(5_000)}}):
        with pytest.raises(ValidationError):
            lgs.search(("f",), filter=flt)
        with pytest.raises(ValidationError):
            lgs.search(("f",), query="apple", filter=flt)


def test_a_deeply_nested_list_filter_error_names_its_field(lgs) -> None:
    with pytest.raises(ValidationError) as err:
        lgs.search(("f",), filter={"tags": _deep(5_000)})
    assert "tags" in str(err.value), str(err.value)


# ============================================================== 3./4. CLI and redaction
def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # our own child: let it stop what it started
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"memworker {' '.join(args)} did not exit (it ran): {err[-800:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


SECRET = "Sx" * 40  # 80 characters: past shown()'s 64-character cut


@pytest.mark.parametrize(
    "args",
    [
        ["drain", "--all", "--timeout", f"valkey://user:{SECRET}@host:6379"],
        ["dead", "list", "--limit", f"valkey://user:{SECRET}@host:6379"],
        ["retention", "set", "/", "--days", f"valkey://user:{SECRET}@host:6379"],
    ],
)
def test_a_url_given_as_a_typed_option_value_never_prints_its_password(args) -> None:
    r = _cli(*args)
    assert r.returncode == 2
    assert "SxSx" not in r.stderr + r.stdout, r.stderr


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "-inf", "31536001", "1e400", "", "x"])
def test_drain_timeout_out_of_bounds_is_a_usage_error(value, plain_server) -> None:
    r = _cli("--url", plain_server.url, "--namespace", f"t{uuid.uuid4().hex[:8]}", "drain", "--all", "--timeout", value)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["0", "31536000"])
def test_drain_timeout_bounds_are_accepted(value, plain_server) -> None:
    r = _cli("--url", plain_server.url, "--namespace", f"t{uuid.uuid4().hex[:8]}", "drain", "--all", "--timeout", value)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", [str(2**63 - 1), str(2**63), "9" * 400])
def test_dead_list_with_a_huge_limit_lists_all(value, plain_server) -> None:
    r = _cli("--url", plain_server.url, "--namespace", f"t{uuid.uuid4().hex[:8]}", "dead", "list", "--limit", value, "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_server_refuses_bad_config_before_making_its_home(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    r = _cli("server", "--home", str(home), "--search-module", str(tmp_path / "no-such-module.so"), timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert not home.exists()
    r = _cli("server", "--home", str(home), "--appendfsync", "sometimes", timeout=60)
    assert r.returncode == 2 and not home.exists()
    r = _cli("server", "--home", "", timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_worker_refuses_bad_env_before_starting_the_embedded_server(tmp_path: Path) -> None:
    home = tmp_path / "wh"
    env = {"MEMWORKER_HOME": str(home), "MEMWORKER_BACKEND": "no-such-backend"}
    for k in ("VALKEY_URL", "REDIS_URL", "MEMWORKER_URL"):
        env[k] = ""
    r = _cli("worker", env=env, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert not (home / "valkey.password").exists() and not (home / "server.json").exists(), list(home.rglob("*"))


@pytest.mark.parametrize(
    "args",
    [
        ["--records", "1000001"],
        ["--agents", "5000"],
        ["--batch", "1000000"],
        ["--processes", "100000"],
        ["--threads", "0"],
    ],
)
def test_demo_bounds_are_checked_before_it_resets_its_namespace(args, plain_server) -> None:
    keeper = ValkeyStore(plain_server.url, namespace="memworker-demo", search_mode="exact")
    try:
        keeper.save([{"id": "keep-me", "content": "x", "scope": "/", "embedding": _vec(1)}])
        r = _cli("--url", plain_server.url, "demo", *args, timeout=60)
        assert r.returncode == 2, r.stderr
        assert keeper.get_record("keep-me") is not None
    finally:
        keeper.reset()
        keeper.close()


def test_home_path_in_a_symlink_loop_is_an_embedded_server_error(tmp_path: Path) -> None:
    from memworker.embedded.server import find_server, stop_server
    from memworker.errors import EmbeddedServerError

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for call in (find_server, stop_server):
        with pytest.raises(EmbeddedServerError):
            call(tmp_path / "a" / "home")
    with pytest.raises(EmbeddedServerError):
        find_server("")
    with pytest.raises(EmbeddedServerError):
        find_server("x\0y")


@pytest.mark.parametrize(
    "url, secret",
    [
        ("valkey://user:p@ss@host:6379/0", "p@ss"),
        ("valkey://:top secret@host", "top secret"),
        ("valkey://u:pw@host:6379/0?password=other&x=1", "other"),
        ("rediss://u:se:cret@host", "se:cret"),
        ("valkey://u:PASSWORD@h/0?client_name=a@b", "PASSWORD"),
    ],
)
def test_redact_url_hides_every_password(url, secret) -> None:
    from memworker.settings import redact_url

    out = redact_url(url)
    assert secret not in out, out
    assert "***" in out
