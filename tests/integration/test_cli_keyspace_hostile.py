"""Hostile review: memworker's read-only operator commands (``status [--json]``,
``check [--any]``, ``drain --producer ID | --all``, ``retention list``, ``dead list``)
run as real processes against a namespace whose keys were forged or damaged by
anyone who can write them (an ``agent`` of README's "Minimal ACL rules" can).

What a user reading README.md and docs/guarantees.md expects: no traceback; either a
clear one-line error or an escaped output (no terminal escape or line of its own
from the keyspace); ``--json`` is valid JSON; documented exit codes; no hang; no
write (the namespace's keys are the same after each command); a password in the URL
never printed.

Tests that expose a defect are left failing on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from memworker.keys import Keys as StoreKeys, QueueKeys
from valkey_servers import raw_client, start_server, stop_server

HANG_GUARD = 120  # seconds: a command that outlives this hung

#: A producer / worker / counter / scope name with everything a terminal reacts to.
NASTY = ["red\x1b[31mALERT\x1b[0m", "two\nlines", "carriage\rreturn", "bell\x07", "tab\tname", "nul\x00byte",
         "del\x7f", "csi\x9b2J", "bidi\u202eevil", "line\u2028sep"]  # fmt: skip


# ------------------------------------------------------------------ helpers
def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("VALKEY_URL", "REDIS_URL") and not k.startswith("MEMWORKER_")}  # fmt: skip
    env.update(HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", CREWAI_TESTING="true",
               MEMWORKER_SEARCH_MODULE="none")  # fmt: skip
    return env


def _cli(url: str, namespace: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    ns = ["--namespace", namespace] if namespace is not None else []
    return subprocess.run(
        [sys.executable, "-m", "memworker.cli", "--url", url, *ns, *args], capture_output=True, text=True,
        errors="surrogateescape", env=_env(), timeout=HANG_GUARD, check=False,
    )  # fmt: skip


def _snapshot(raw: Any, namespace: str) -> dict[bytes, tuple[bytes, bytes | None]]:
    """Every key of ``namespace`` with its type and serialized value."""
    out = {}
    for key in raw.scan_iter(match=f"*{namespace}*", count=10_000):
        out[key] = (raw.type(key), raw.dump(key))
    return out


def _whole_snapshot(raw: Any) -> dict[bytes, tuple[bytes, bytes | None]]:
    out = {}
    for key in raw.scan_iter(count=10_000):
        out[key] = (raw.type(key), raw.dump(key))
    return out


def _assert_clean(result: subprocess.CompletedProcess[str], *, max_line: int | None = None) -> None:
    """No traceback, no control character from the keyspace on the terminal."""
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, stream[-3000:]
        for ch in stream:
            assert ch == "\n" or (ch.isprintable() and ch not in "\u2028\u2029"), (
                f"raw control character {ch!r} reached the terminal: {stream[:2000]!r}"
            )
        if max_line is not None:
            longest = max((len(line) for line in stream.splitlines()), default=0)
            assert longest <= max_line, f"a line of {longest} characters"


def _assert_one_line_error_or_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode in (0, 1), (result.returncode, result.stderr[-3000:])
    if result.returncode == 1:
        # valkey-glide's native library writes "Error executing command: <the server's
        # error>" to stderr itself, past its logger (which the CLI turns off): a known
        # limitation (the server's own text, which memworker's line repeats)
        lines = [
            line for line in result.stderr.splitlines()
            if line.strip() and not line.startswith("Error executing command: ")
        ]  # fmt: skip
        assert len(lines) == 1, result.stderr[-3000:]
        # check's own failures ("no live worker", "not healthy: ...") or "memworker CMD: ..."
        assert lines[0].startswith(("memworker ", "no live worker", "not healthy")), lines[0]


def _read_only_commands(producer: str = "nobody") -> list[list[str]]:
    return [
        ["status"],
        ["status", "--json"],
        ["check", "--any"],
        ["check"],
        ["dead", "list"],
        ["dead", "list", "--json"],
        ["retention", "list"],
        ["drain", "--producer", producer, "--timeout", "0"],
        ["drain", "--all", "--timeout", "0"],
    ]


@pytest.fixture
def rawq(plain_server):
    client = raw_client(plain_server)
    yield client
    client.close()


@pytest.fixture
def cleanup(rawq, namespace):
    yield
    keys = list(rawq.scan_iter(match=f"*{namespace}*", count=10_000))
    for i in range(0, len(keys), 5_000):
        rawq.delete(*keys[i : i + 5_000])


def _forge_names(rawq: Any, keys: QueueKeys, now: int) -> list[bytes]:
    """Producers, workers, counters and a scope named with control characters, a 10 KB
    name and bytes that are not UTF-8; each producer has one pending job."""
    names: list[bytes] = [n.encode() for n in NASTY] + [b"x" * 10_240, b"\xff\xfe\xc3(", b"ok-producer"]
    for name in names:
        rawq.sadd(keys.producers, name)
        rawq.zadd(keys.producer("").pending.encode() + name, {name + b"-job": now})  # "{ns}:pending:" + name
        rawq.zadd(keys.workers, {name: now + 3_600_000})
        rawq.hset(keys.worker("").encode() + name,
                  mapping={b"host": name, b"processed": name, b"embed_texts": b"9" * 5000, b"embed_batches": b"0",
                           name: name})  # fmt: skip
        rawq.hset(keys.stats, name, b"1073741824000")
    return names


# ------------------------------------------------------------------ forged names
def test_status_table_escapes_forged_names_and_bounds_its_lines(plain_server, rawq, namespace, cleanup) -> None:
    """Producer, worker and counter names with escapes, newlines, bidi overrides, a 10
    KB name and non-UTF-8 bytes: the table prints every row escaped, one line each."""
    import time

    keys = QueueKeys(namespace)
    _forge_names(rawq, keys, int(time.time() * 1000))
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "status")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_clean(result)
    assert "ALERT" in result.stdout  # the forged producer is shown, escaped
    assert _snapshot(rawq, namespace) == before


def test_status_lines_are_bounded_whatever_a_name_s_length(plain_server, rawq, namespace, cleanup) -> None:
    """A 10 KB producer / worker id (a real producer id is at most 128 ASCII
    characters: jobs.check_producer_id) must not print a 10 KB line; dead list cuts
    such ids at MAX_ID_LENGTH (admin._str_or_none)."""
    import time

    from memworker.store.validate import MAX_ID_LENGTH

    keys = QueueKeys(namespace)
    _forge_names(rawq, keys, int(time.time() * 1000))
    result = _cli(plain_server.url, namespace, "status")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_clean(result, max_line=4 * MAX_ID_LENGTH + 200)


def test_status_json_is_valid_json_with_forged_names(plain_server, rawq, namespace, cleanup) -> None:
    import time

    keys = QueueKeys(namespace)
    _forge_names(rawq, keys, int(time.time() * 1000))
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "status", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_clean(result)
    status = json.loads(result.stdout)
    assert status["pending"].get("two\nlines") == 1
    assert status["pending"].get("red\x1b[31mALERT\x1b[0m") == 1
    assert status["pending_total"] == sum(status["pending"].values())
    assert {w["id"] for w in status["workers"]} >= {"two\nlines", "x" * 10_240}
    assert status["counters"]["two\nlines"] == 1073741824000
    assert _snapshot(rawq, namespace) == before


def test_check_with_forged_worker_host_names_prints_one_clean_line(plain_server, rawq, namespace, cleanup) -> None:
    import time

    keys = QueueKeys(namespace)
    _forge_names(rawq, keys, int(time.time() * 1000))
    before = _snapshot(rawq, namespace)
    any_host = _cli(plain_server.url, namespace, "check", "--any")
    assert any_host.returncode == 0, any_host.stderr  # the forged workers are live: documented trust
    _assert_clean(any_host)
    this_host = _cli(plain_server.url, namespace, "check")
    assert this_host.returncode == 1 and this_host.stderr.strip() == "no live worker"
    assert _snapshot(rawq, namespace) == before


def test_drain_all_with_forged_pending_names_times_out_escaped_and_bounded(plain_server, rawq, namespace, cleanup) -> None:
    """Producers named with escapes and newlines, 20,000 pending job ids with a
    clear-screen sequence: the timeout is one escaped line on stderr, exit 1."""
    import time

    keys = QueueKeys(namespace)
    now = int(time.time() * 1000)
    for name in [*NASTY, "x" * 10_240, "ok-producer"]:
        rawq.sadd(keys.producers, name)
        rawq.zadd(keys.producer(name).pending, {f"{name}-job": now})
    rawq.zadd(keys.producer("ok-producer").pending, {f"job-{i}\x1b[2J": i for i in range(20_000)})
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "drain", "--all", "--timeout", "0")
    assert result.returncode == 1, (result.stdout, result.stderr[-3000:])
    _assert_clean(result, max_line=20_000)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr[-2000:]
    assert _snapshot(rawq, namespace) == before


def test_drain_all_with_a_producer_id_that_is_not_utf8(plain_server, rawq, namespace, cleanup) -> None:
    """A producer id of bytes that are not UTF-8 in the producers set (status and dead
    list show such ids escaped, guarantees.md: "a forged ... producer or worker id is
    ... printed escaped"): drain --all must not die with a UnicodeDecodeError."""
    keys = QueueKeys(namespace)
    rawq.sadd(keys.producers, b"\xff\xfe", b"fine")
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "drain", "--all", "--timeout", "0")
    _assert_clean(result)
    assert result.returncode == 0, result.stderr[-3000:]  # nothing pending anywhere
    assert _snapshot(rawq, namespace) == before


def test_drain_producer_with_forged_failures_is_clean_and_writes_nothing(plain_server, rawq, namespace, cleanup) -> None:
    keys = QueueKeys(namespace).producer("p1")
    rawq.sadd(QueueKeys(namespace).producers, "p1")
    rawq.hset(keys.failed, mapping={f"job{i}\x1b]0;title\x07": f"boom\n\x1b[31m{i}" for i in range(5)})
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "drain", "--producer", "p1", "--timeout", "0")
    _assert_clean(result)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert _snapshot(rawq, namespace) == before


@pytest.mark.parametrize("where", ["failed", "pending"])
def test_drain_producer_with_a_job_id_that_is_not_utf8(plain_server, rawq, namespace, cleanup, where: str) -> None:
    """A failure record (hash field) or pending mark (zset member) whose job id is not
    UTF-8: reported escaped, skipped or a one-line error, not a UnicodeDecodeError
    traceback."""
    keys = QueueKeys(namespace).producer("p1")
    rawq.sadd(QueueKeys(namespace).producers, "p1")
    if where == "failed":
        rawq.hset(keys.failed, b"\xff\xfe", b"\xc3(")
    else:
        rawq.zadd(keys.pending, {b"\xff\xfe": 1})
    before = _snapshot(rawq, namespace)
    for args in (["drain", "--producer", "p1", "--timeout", "0"], ["drain", "--all", "--timeout", "0"]):
        result = _cli(plain_server.url, namespace, *args)
        _assert_clean(result)
        _assert_one_line_error_or_ok(result)
        assert _snapshot(rawq, namespace) == before


def test_retention_list_with_garbage_policies(plain_server, rawq, namespace, cleanup) -> None:
    """A policy hash with control characters, non-UTF-8 scopes and days that are not
    numbers, not finite, negative or a 5,000-digit figure: listed escaped or skipped."""
    rk = StoreKeys(namespace).retention
    rawq.hset(rk, mapping={"/ok": "7.0", "/esc\x1b[2J": "3", "/nl\nx": "1", b"\xff\xfe": "2", "/nan": "nan",
                           "/inf": "inf", "/neg": "-5", "/big": "9" * 5000, "/word": "seven",
                           "/bytes": b"\xff", "x" * 10_240: "1"})  # fmt: skip
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "retention", "list")
    _assert_one_line_error_or_ok(result)
    _assert_clean(result)
    assert _snapshot(rawq, namespace) == before


def test_dead_list_json_with_non_utf8_and_forged_ids(plain_server, rawq, namespace, cleanup) -> None:
    keys = QueueKeys(namespace)
    for i, mid in enumerate([b"\xff\xfe", b"a\nb", b"\x1b[31m", b"z" * 10_240]):
        rawq.zadd(keys.dead(), {mid: float("inf") if i == 0 else i})
        rawq.hset(keys.dead_msgs(), mid, b"\xff" + mid)
    before = _snapshot(rawq, namespace)
    for args in (["dead", "list"], ["dead", "list", "--json"]):
        result = _cli(plain_server.url, namespace, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        _assert_clean(result)
        if "--json" in args:
            rows = json.loads(result.stdout)
            assert len(rows) == 4
    assert _snapshot(rawq, namespace) == before


# ------------------------------------------------------------------ wrong key types
def _wrong_types(keys: QueueKeys, store_keys: StoreKeys) -> list[tuple[str, str]]:
    """(key, what is put there instead of its own type)."""
    pk = keys.producer("victim")
    return [
        (keys.producers, "string"),
        (pk.pending, "string"),
        (pk.failed, "zset"),
        (keys.workers, "string"),
        (keys.worker("w1"), "string"),
        (keys.stats, "zset"),
        (keys.q(), "string"),
        (keys.msgs(), "list"),
        (keys.delayed_msgs(), "string"),
        (keys.dead(), "hash"),
        (keys.dead_msgs(), "string"),
        (store_keys.retention, "zset"),
    ]


def _put(rawq: Any, key: str, kind: str) -> None:
    rawq.delete(key)
    if kind == "string":
        rawq.set(key, "garbage\x1b[31m")
    elif kind == "zset":
        rawq.zadd(key, {"garbage": 1})
    elif kind == "list":
        rawq.rpush(key, "garbage")
    else:
        rawq.hset(key, "garbage", "1")


@pytest.mark.parametrize("index", range(12))
def test_read_only_commands_survive_a_key_of_the_wrong_type(plain_server, rawq, namespace, cleanup, index: int) -> None:
    """Every read-only command: exit 0, or exit 1 with one clean line naming memworker's
    command; never a traceback, a hang or a write."""
    import time

    keys, store_keys = QueueKeys(namespace), StoreKeys(namespace)
    now = int(time.time() * 1000)
    rawq.sadd(keys.producers, "victim")
    rawq.zadd(keys.workers, {"w1": now + 3_600_000})
    rawq.hset(keys.worker("w1"), mapping={"host": "h", "processed": "1"})
    key, kind = _wrong_types(keys, store_keys)[index]
    _put(rawq, key, kind)
    before = _snapshot(rawq, namespace)
    for args in _read_only_commands("victim"):
        result = _cli(plain_server.url, namespace, *args)
        _assert_clean(result)
        _assert_one_line_error_or_ok(result)
        if args == ["status", "--json"] and result.returncode == 0:
            json.loads(result.stdout)
        assert _snapshot(rawq, namespace) == before, args


# ------------------------------------------------------------------ huge counts, odd scores
def test_status_with_a_hundred_thousand_producers(plain_server, rawq, namespace, cleanup) -> None:
    keys = QueueKeys(namespace)
    pipe = rawq.pipeline(transaction=False)
    for i in range(100_000):
        pipe.sadd(keys.producers, f"p{i}")
        if i % 10 == 0:
            pipe.zadd(keys.producer(f"p{i}").pending, {"j": 1})
    pipe.execute()
    before = _snapshot(rawq, namespace)
    result = _cli(plain_server.url, namespace, "status", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout)
    assert status["pending_total"] == 10_000
    assert _snapshot(rawq, namespace) == before


def test_status_and_check_with_infinite_and_huge_scores(plain_server, rawq, namespace, cleanup) -> None:
    keys = QueueKeys(namespace)
    rawq.zadd(keys.workers, {"forever": float("inf"), "ancient": float("-inf"), "huge": 1e300})
    for w in ("forever", "ancient", "huge"):
        rawq.hset(keys.worker(w), mapping={"host": "elsewhere", "processed": "1e400", "gc_frozen": "nan",
                                           "gc_full": "inf", "searchable_ms_total": "-0",
                                           "searchable_jobs": "0"})  # fmt: skip
    rawq.hset(keys.stats, mapping={"committed": "9" * 5000, "records": "-1", "failed": "1.5"})
    rawq.zadd(keys.producer("p").pending, {"j": float("-inf")})
    rawq.sadd(keys.producers, "p")
    before = _snapshot(rawq, namespace)
    for args in (["status"], ["status", "--json"], ["check", "--any"], ["drain", "--all", "--timeout", "0"]):
        result = _cli(plain_server.url, namespace, *args)
        _assert_clean(result)
        _assert_one_line_error_or_ok(result)
        if args == ["status", "--json"]:
            status = json.loads(result.stdout)
            assert {w["id"] for w in status["workers"]} == {"forever", "huge"}
    assert _snapshot(rawq, namespace) == before


# ------------------------------------------------------------------ foreign servers, passwords
@pytest.mark.parametrize("kind", ["plain", "module"])
def test_status_and_check_on_another_application_s_server(kind: str) -> None:
    """A server of another application (its own keys, a search index on a module
    server): status shows an empty namespace, check fails with one line, nothing is
    written anywhere on the server."""
    server = start_server(kind)
    try:
        client = raw_client(server)
        client.set("session:1", "x")
        client.hset("user:1", mapping={"name": "bob"})
        client.zadd("leaderboard", {"a": 1})
        client.set("memworker", "another app's string")
        client.set("{memworker}:producers", "not a set")  # a name memworker's default namespace uses
        if kind == "module":
            client.execute_command("FT.CREATE", "users", "ON", "HASH", "PREFIX", "1", "user:", "SCHEMA", "name", "TEXT")
        before = _whole_snapshot(client)
        for ns in (None, "someapp"):
            for args in (["status"], ["status", "--json"], ["check", "--any"], ["check"], ["dead", "list"],
                         ["retention", "list"], ["drain", "--all", "--timeout", "0"]):  # fmt: skip
                result = _cli(server.url, ns, *args)
                _assert_clean(result)
                _assert_one_line_error_or_ok(result)
                if args[0] == "check":
                    assert result.returncode == 1
                if args == ["status", "--json"] and result.returncode == 0:
                    json.loads(result.stdout)
                assert _whole_snapshot(client) == before, (ns, args)
        client.close()
    finally:
        stop_server(server)


def test_password_in_the_url_is_never_printed() -> None:
    secret = "s3cr3t-Pa55word"
    server = start_server("plain", "--requirepass", secret)
    try:
        good = server.url.replace("://", f"://default:{secret}@", 1)
        bad = server.url.replace("://", f"://default:{secret}WRONG@", 1)
        for url in (good, bad):
            for args in (["status"], ["status", "--json"], ["check", "--any"], ["dead", "list"],
                         ["retention", "list"], ["drain", "--all", "--timeout", "0"]):  # fmt: skip
                result = _cli(url, "ns", *args)
                assert secret not in result.stdout + result.stderr, (url == good, args)
                assert result.returncode == (1 if url == bad or args[0] == "check" else 0), (args, result.stderr)
    finally:
        stop_server(server)


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["dead", "list"], ["retention", "list"],
                                  ["drain", "--all", "--timeout", "0"]])  # fmt: skip
def test_a_wrong_password_is_one_clean_error_line_and_nothing_on_stdout(args: list[str]) -> None:
    """A wrong password is a failure (exit 1) told in one line on stderr; stdout (what a
    script parses, ``--json`` or not) stays empty."""
    server = start_server("plain", "--requirepass", "right")
    try:
        result = _cli(server.url.replace("://", "://default:wrong@", 1), "ns", *args)
        assert result.returncode == 1, result.stderr
        assert result.stdout == "", result.stdout
        _assert_clean(result)
        _assert_one_line_error_or_ok(result)
    finally:
        stop_server(server)
