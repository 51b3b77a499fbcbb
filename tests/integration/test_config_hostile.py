"""Hostile configuration: URLs, environment variables and CLI arguments that must be
refused at once with a clear error (naming what is wrong, never echoing a password)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memworker import ValidationError, ValkeyCache
from memworker.cli import EXIT_USAGE, make_argument_parser
from memworker.errors import ConfigError, MemworkerError
from memworker.settings import Settings

MEMWORKER = str(Path(sys.executable).with_name("memworker"))
SECRET = "Zq9SuperSecretPw"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VALKEY_URL", "REDIS_URL")}
    env.update(HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", **extra)
    return env


# ------------------------------------------------------------------ 1. URL password
@pytest.mark.parametrize(
    "url",
    [
        f"valkey://default:/{SECRET}@prod.example:6379",
        f"valkey://default:8080/{SECRET}@prod.example:6379",
        f"valkey://default:?{SECRET}@prod.example:6379",
        f"valkey://default:#{SECRET}@prod.example:6379",
        f"valkey://default:{SECRET}@prod.example:6379/0#frag",
        f"valkey://user:ab/{SECRET}@h/0",
    ],
)
def test_unencoded_password_is_refused_without_echo(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_url(url)
    message = str(info.value)
    assert "percent-encode" in message
    assert SECRET not in message
    assert "prod.example" not in message and "@h" not in message


def test_encoded_password_still_parses() -> None:
    s = Settings.from_url("valkey://default:%2F%3F%23%40pw@h:6380/2?ssl_ca_certs=%40ca.pem")
    assert (s.host, s.port, s.db, s.password, s.tls_ca_file) == ("h", 6380, 2, "/?#@pw", "@ca.pem")


# ------------------------------------------------------------------ 2. URL timeouts
@pytest.mark.parametrize(
    "query, name",
    [
        ("connect_timeout_ms=0.5", "connect_timeout_ms"),
        ("socket_connect_timeout=0.0001", "socket_connect_timeout"),
        ("request_timeout_ms=0.9", "request_timeout_ms"),
        ("timeout=0.0009", "timeout"),
    ],
)
def test_sub_millisecond_timeouts_are_refused(query: str, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name}.*1 ms"):
        Settings.from_url("valkey://h?" + query)


def test_one_millisecond_timeout_is_accepted() -> None:
    s = Settings.from_url("valkey://h?connect_timeout_ms=1&socket_timeout=0.001")
    assert (s.connect_timeout_ms, s.request_timeout_ms) == (1, 1)


# ------------------------------------------------------------------ 3. sweep interval
@pytest.mark.parametrize("raw", ["nan", "-5", "abc", "inf", "0"])
def test_bad_sweep_interval_refused_when_worker_settings_are_read(raw: str) -> None:
    from memworker.worker_settings import WorkerSettings, read_broker_options

    env = {"MEMWORKER_SWEEP_INTERVAL": raw}
    with pytest.raises(ConfigError, match="MEMWORKER_SWEEP_INTERVAL"):
        WorkerSettings.from_env(env)
    with pytest.raises(ConfigError, match="MEMWORKER_SWEEP_INTERVAL"):
        read_broker_options(env)  # what `memworker worker` reads before it starts
    assert read_broker_options({"MEMWORKER_SWEEP_INTERVAL": "30"})["max_retries"] >= 0


@pytest.mark.parametrize(
    "var,value", [("MEMWORKER_SWEEP_INTERVAL", "nan"), ("MEMWORKER_OTEL_SETUP", "os:nothing_here")]
)
def test_worker_refuses_to_start_with_a_bad_variable(plain_server, var: str, value: str) -> None:
    """A bad sweep interval left the worker running with no heartbeat; a bad tracing
    hook gave a raw traceback: both a usage error naming the variable, at start."""
    r = subprocess.run(
        [MEMWORKER, "worker", "-t", "1"],
        capture_output=True, text=True, timeout=300, check=False,
        env=_env(VALKEY_URL=plain_server.url, **{var: value}),
    )  # fmt: skip
    assert r.returncode == EXIT_USAGE, r.stderr[-2000:]
    assert var in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ 4. MEMWORKER_OTEL_SETUP
@pytest.mark.parametrize("hook", ["nope_no_such_module_xyz", "os:nothing_here", ":setup", "os:sep"])
def test_bad_otel_setup_is_a_config_error(hook: str) -> None:
    from memworker.tracing import setup_worker_tracing

    with pytest.raises(ConfigError) as info:
        setup_worker_tracing({"MEMWORKER_OTEL_SETUP": hook})
    assert "MEMWORKER_OTEL_SETUP" in str(info.value)
    assert "module:function" in str(info.value)


# ------------------------------------------------------------------ 5. CLI ranges
def _usage_error(*argv: str) -> None:
    with pytest.raises(SystemExit) as info:
        make_argument_parser().parse_args(list(argv))
    assert info.value.code == EXIT_USAGE


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-1", "0", "0.05", "86401", "abc"])
def test_status_watch_refuses_values_out_of_range(value: str) -> None:
    _usage_error("status", "--watch", value)


def test_status_watch_accepts_its_range() -> None:
    parse = make_argument_parser().parse_args
    assert parse(["status", "--watch"]).watch == 2.0
    assert parse(["status", "--watch", "0.1"]).watch == 0.1
    assert parse(["status", "--watch", "86400"]).watch == 86400.0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "60001", "1e400", "x"])
def test_demo_think_ms_refuses_values_out_of_range(value: str) -> None:
    _usage_error("demo", "--think-ms", value)


def test_demo_think_ms_accepts_its_range() -> None:
    parse = make_argument_parser().parse_args
    assert parse(["demo", "--think-ms", "0"]).think_ms == 0.0
    assert parse(["demo", "--think-ms", "60000"]).think_ms == 60000.0


@pytest.mark.parametrize("argv", [["--namespace", "prod", "demo"], ["demo", "--namespace", "prod"]])
def test_demo_refuses_a_namespace_it_would_not_use(argv, monkeypatch, capsys) -> None:
    """`memworker --namespace prod demo` ran in the demo's own namespace (it deletes
    that namespace's records first), silently ignoring the one asked for: refused,
    before anything runs."""
    from memworker import cli, demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--namespace" in err and "memworker-demo" in err


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "x"])
def test_dead_list_limit_refuses_values_below_one(value: str) -> None:
    _usage_error("dead", "list", "--limit", value)


def test_dead_list_plan_lists_nothing_for_a_limit_below_one() -> None:
    from memworker.keys import QueueKeys
    from memworker.queue.admin import _dead_list_plan

    for limit in (0, -5):
        plan = _dead_list_plan(QueueKeys("ns"), limit)
        with pytest.raises(StopIteration) as stop:
            next(plan)  # no ZRANGE 0 0
        assert stop.value.value == []
    assert make_argument_parser().parse_args(["dead", "list", "--limit", "1"]).limit == 1


# ------------------------------------------------------------------ 6. env errors name the variable
@pytest.mark.parametrize(
    "var, value",
    [
        ("MEMWORKER_SEARCH", "bogus"),
        ("MEMWORKER_VECTOR_TYPE", "float64"),
        ("MEMWORKER_NAMESPACE", "my ns"),
        ("MEMWORKER_NAMESPACE", "x" * 65),
    ],
)
def test_env_errors_name_the_variable(var: str, value: str) -> None:
    for env in ({"VALKEY_URL": "valkey://h", var: value}, {var: value}):
        with pytest.raises(ConfigError, match=var):
            Settings.from_env(env)


def test_env_override_still_wins_over_a_bad_variable() -> None:
    s = Settings.from_env({"MEMWORKER_NAMESPACE": "my ns"}, namespace="good")
    assert s.namespace == "good"


# ------------------------------------------------------------------ 7. cache prefixes
@pytest.mark.parametrize("prefix", ["sessions:alice", ":", "a:", ":a"])
def test_cache_prefix_with_a_colon_is_refused(plain_server, namespace, prefix: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        ValkeyCache(plain_server.url, namespace=namespace, prefix=prefix)


def test_cache_prefixes_keep_their_layout_and_stay_apart(plain_server, namespace) -> None:
    sessions = ValkeyCache(plain_server.url, namespace=namespace, prefix="sessions")
    users = ValkeyCache(plain_server.url, namespace=namespace, prefix="sessions-alice")
    plain = ValkeyCache(plain_server.url, namespace=namespace)
    try:
        sessions.set("alice:token", {"secret": 1})
        assert users.get("token") is None and users.get("alice:token") is None
        users.set("alice:token", 2)
        assert sessions.get("alice:token") == {"secret": 1}
        # existing keys stay where they were (readable after the upgrade)
        assert plain._sync.run(_raw_get(plain.keys.cache("sessions:alice:token"))) is not None
        plain.set("k", 3)
        assert plain._sync.run(_raw_get(plain.keys.cache("k"))) == "3"
    finally:
        sessions.delete("alice:token"), users.delete("alice:token"), plain.delete("k")
        for c in (sessions, users, plain):
            c.close()


def _raw_get(key: str):
    from memworker.io import Call

    value = yield Call(["GET", key])
    return value.decode() if isinstance(value, bytes) else value


def test_errors_are_memworker_errors() -> None:
    assert issubclass(ConfigError, MemworkerError) and not issubclass(ConfigError, RuntimeError)
