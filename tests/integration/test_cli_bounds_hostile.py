"""Hostile review: every ``memworker`` CLI flag and ``MEMWORKER_*`` variable at and
beyond its bounds.

The project's rule: bad input gets a clear error naming the flag/variable and its
limit (a flag: an argparse usage error, exit 2; a variable: a configuration error
naming it, exit 2), never a traceback, never a hang, never a partial action (no
embedded server started, no home created, no worker or demo work begun).

Tests that expose a defect are left failing on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memworker.cli import main
from memworker.embedded import stop_server
from memworker.queue.jobs import QueueKeys
from valkey_servers import free_port, raw_client

HANG_GUARD = 90  # seconds: a subprocess that outlives this hung


# ------------------------------------------------------------------ helpers
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VALKEY_URL", "REDIS_URL") and not k.startswith("MEMWORKER_")}  # fmt: skip
    env.update(HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", CREWAI_TESTING="true",
               MEMWORKER_SEARCH_MODULE="none")  # fmt: skip
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = HANG_GUARD) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "memworker.cli", *args], capture_output=True, text=True,
        env=env or _env(), cwd=cwd, timeout=timeout, check=False,
    )  # fmt: skip


def _servers_under(folder: Path) -> list[int]:
    """Pids of valkey-server processes whose working directory is under ``folder``."""
    root = str(folder.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            exe = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if "valkey-server" in exe and (cwd == root or cwd.startswith(root + "/")):
            pids.append(int(entry.name))
    return pids


def _cleanup_servers(*homes: Path) -> None:
    for home in homes:
        try:
            stop_server(home)
        except Exception:  # noqa: BLE001 - best effort
            pass


def _code(argv: list[str]) -> int:
    """``main(argv)``'s exit code, a usage error's SystemExit included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 1


def _usage_error(result: subprocess.CompletedProcess[str], flag: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert flag in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------ worker
WORKER_BAD_FLAGS = [
    (["-p", "0"], "processes"), (["-p", "-1"], "processes"), (["-p", str(10**12)], "processes"),
    (["-t", "0"], "threads"), (["-t", "1025"], "threads"), (["-t", str(10**12)], "threads"),
    (["-p", "nan"], "--processes"), (["-p", "0x10"], "--processes"), (["-p", ""], "--processes"),
    (["-p", "1e3"], "--processes"),
    (["--nice", "20"], "--nice"), (["--nice", "-1"], "--nice"), (["--nice", "nan"], "--nice"),
    (["--nice", ""], "--nice"), (["--nice", "IDLE"], "--nice"),
    (["--metrics-port", "0"], "metrics port"), (["--metrics-port", "65536"], "metrics port"),
    (["--metrics-port", "70000"], "metrics port"), (["--metrics-port", "-1"], "metrics port"),
    (["--metrics-port", "inf"], "--metrics-port"),
    (["--max-retries", "-1"], "max_retries"), (["--max-retries", "1001"], "max_retries"),
    (["--min-backoff-ms", "-1"], "min_backoff_ms"), (["--min-backoff-ms", str(10**12)], "min_backoff_ms"),
    (["--max-deliveries", "0"], "max_deliveries"), (["--max-deliveries", str(10**12)], "max_deliveries"),
    (["--commit-step", "-1"], "commit_step"), (["--commit-step", str(10**12)], "commit_step"),
    (["--inflight-records", "-1"], "inflight_records"),
    (["--inflight-records", str(10**12)], "inflight_records"),
    (["--inflight-bytes", "1023"], "inflight_bytes"), (["--inflight-bytes", str(10**12)], "inflight_bytes"),
    (["--commit-threads", "0"], "commit_threads"), (["--commit-threads", "65"], "commit_threads"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "named"), WORKER_BAD_FLAGS, ids=[" ".join(f) for f, _ in WORKER_BAD_FLAGS])
def test_worker_flag_out_of_range_is_refused_before_any_work(
    plain_server, namespace, monkeypatch, capsys, flags: list[str], named: str
) -> None:
    """Refused with exit 2 naming the option; the worker's processes never start."""
    import memworker.worker.process as process

    def started(*args: Any, **kwargs: Any) -> int:
        raise AssertionError(f"worker started with {flags}")

    monkeypatch.setattr(process, "_run", started)
    for var in [k for k in os.environ if k.startswith("MEMWORKER_")]:
        monkeypatch.delenv(var)
    code = _code(["--url", plain_server.url, "--namespace", namespace, "worker", *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err, err


WORKER_BAD_ENV = [
    ("MEMWORKER_METRICS_PORT", "abc"), ("MEMWORKER_METRICS_PORT", "0"), ("MEMWORKER_METRICS_PORT", "65536"),
    ("MEMWORKER_METRICS_PORT", "1e3"),
    ("MEMWORKER_MAX_RETRIES", "nan"), ("MEMWORKER_MAX_RETRIES", "-1"),
    ("MEMWORKER_MIN_BACKOFF_MS", str(10**12)), ("MEMWORKER_MAX_DELIVERIES", "0"),
    ("MEMWORKER_COMMIT_STEP", "0x10"), ("MEMWORKER_INFLIGHT_RECORDS", "1e3"),
    ("MEMWORKER_INFLIGHT_BYTES", "inf"), ("MEMWORKER_COMMIT_THREADS", "65"),
    ("MEMWORKER_SWEEP_INTERVAL", "nan"), ("MEMWORKER_SWEEP_INTERVAL", "inf"),
    ("MEMWORKER_SWEEP_INTERVAL", "0"), ("MEMWORKER_SWEEP_INTERVAL", "-1"),
    ("MEMWORKER_SWEEP_INTERVAL", "86401"),
]  # fmt: skip


@pytest.mark.parametrize(("var", "value"), WORKER_BAD_ENV, ids=[f"{k}={v}" for k, v in WORKER_BAD_ENV])
def test_worker_env_out_of_range_names_the_variable(
    plain_server, namespace, monkeypatch, capsys, var: str, value: str
) -> None:
    import memworker.worker.process as process

    def started(*args: Any, **kwargs: Any) -> int:
        raise AssertionError(f"worker started with {var}={value!r}")

    monkeypatch.setattr(process, "_run", started)
    for other in [k for k in os.environ if k.startswith("MEMWORKER_")]:
        monkeypatch.delenv(other)
    monkeypatch.setenv(var, value)
    code = _code(["--url", plain_server.url, "--namespace", namespace, "worker"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert var in err and "configuration error" in err, err


@pytest.mark.parametrize(
    ("var", "value"),
    [("MEMWORKER_INFERENCE_THREADS", "0"), ("MEMWORKER_INFERENCE_THREADS", str(10**12)),
     ("MEMWORKER_INFERENCE_THREADS", "nan"), ("MEMWORKER_BACKEND", "bogus"),
     ("MEMWORKER_EMBEDDER", "nocolon"), ("MEMWORKER_MEMORY_FACTORY", "x:"),
     ("MEMWORKER_OTEL_SETUP", "no_such_module_xyz:f")],
)  # fmt: skip
def test_worker_process_env_out_of_range_names_the_variable(plain_server, namespace, var: str, value: str) -> None:
    """Variables read inside the worker process: still a configuration error naming
    them, exit 2, and no hang (a real subprocess, with a hang guard)."""
    result = _cli("--url", plain_server.url, "--namespace", namespace, "worker", env=_env(**{var: value}))
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert var in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("address", ["no such host!", "999.1.1.1", "a" * 10_240])
def test_worker_bad_metrics_address_names_the_variable(plain_server, namespace, address: str) -> None:
    result = _cli(
        "--url", plain_server.url, "--namespace", namespace, "worker", "--metrics-port", str(free_port()),
        env=_env(MEMWORKER_METRICS_ADDRESS=address),
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "MEMWORKER_METRICS_ADDRESS" in result.stderr


@pytest.mark.parametrize(
    ("flags", "extra_env"),
    [(["--metrics-port", "0"], {}), (["--metrics-port", "70000"], {}),
     ([], {"MEMWORKER_METRICS_PORT": "abc"}), ([], {"MEMWORKER_INFERENCE_THREADS": "0"}),
     ([], {"MEMWORKER_BACKEND": "bogus"})],
    ids=["--metrics-port 0", "--metrics-port 70000", "METRICS_PORT=abc", "INFERENCE_THREADS=0", "BACKEND=bogus"],
)  # fmt: skip
def test_worker_refused_for_bad_input_leaves_no_embedded_server(
    tmp_path: Path, flags: list[str], extra_env: dict[str, str]
) -> None:
    """A worker refused for a bad flag or variable must not have started (and left
    running, detached) the embedded valkey-server of its home."""
    home = tmp_path / "home"
    try:
        result = _cli("worker", *flags, env=_env(MEMWORKER_HOME=str(home), **extra_env), cwd=tmp_path)
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.returncode == 2, result.stderr[-2000:]
        leaked = _servers_under(tmp_path)
        assert not leaked, (
            f"`memworker worker {' '.join(flags)}` {extra_env} was refused (exit 2) but left "
            f"valkey-server pid(s) {leaked} running in {home}"
        )
    finally:
        _cleanup_servers(home)
    assert not _servers_under(tmp_path)


# ------------------------------------------------------------------ server
@pytest.mark.parametrize("port", ["0", "65536", "70000", "-1", str(10**12)])
def test_server_port_out_of_range_is_refused_and_creates_nothing(tmp_path: Path, port: str) -> None:
    home = tmp_path / "home"
    try:
        result = _cli("server", "--home", str(home), "--port", port, cwd=tmp_path)
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.returncode == 2, result.stderr[-2000:]
        assert "port" in result.stderr and "65535" in result.stderr
        assert not home.exists(), "a refused server created its home"
        assert not _servers_under(tmp_path)
    finally:
        _cleanup_servers(home)


@pytest.mark.parametrize("flags", [["--port", "nan"], ["--port", "1e3"], ["--port", "0x10"], ["--port", ""],
                                   ["--appendfsync", "bogus"], ["--appendfsync", ""]])  # fmt: skip
def test_server_unparsable_flag_is_a_usage_error(tmp_path: Path, flags: list[str]) -> None:
    home = tmp_path / "home"
    try:
        result = _cli("server", "--home", str(home), *flags, cwd=tmp_path)
        _usage_error(result, flags[0])
        assert not home.exists() and not _servers_under(tmp_path)
    finally:
        _cleanup_servers(home)


@pytest.mark.parametrize(
    ("flags", "extra_env", "named"),
    [([], {"MEMWORKER_APPENDFSYNC": "bogus"}, "MEMWORKER_APPENDFSYNC"),
     (["--search-module", "/nonexistent/dir/mod.so"], {}, "/nonexistent/dir/mod.so")],
    ids=["MEMWORKER_APPENDFSYNC=bogus", "--search-module missing"],
)  # fmt: skip
def test_server_refused_for_bad_config_creates_no_home(
    tmp_path: Path, flags: list[str], extra_env: dict[str, str], named: str
) -> None:
    """A configuration that is checked without touching the disk is checked before
    the home (and its data/ folder) is created: no partial action."""
    home = tmp_path / "home"
    try:
        result = _cli("server", "--home", str(home), *flags, env=_env(**extra_env), cwd=tmp_path)
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.returncode in (1, 2), result.stderr[-2000:]
        assert named in result.stderr
        assert not _servers_under(tmp_path)
        assert not home.exists(), f"the refused server created {sorted(p.name for p in home.iterdir())} in {home}"
    finally:
        _cleanup_servers(home)


def test_server_home_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = _cli("server", "--home", str(afile), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (1, 2)
    assert str(afile) in result.stderr
    assert not _servers_under(tmp_path)


@pytest.mark.parametrize("below", ["", "sub"])
def test_server_home_in_a_symlink_loop_is_a_clear_error(tmp_path: Path, below: str) -> None:
    (tmp_path / "loopa").symlink_to(tmp_path / "loopb")
    (tmp_path / "loopb").symlink_to(tmp_path / "loopa")
    home = tmp_path / "loopa" / below if below else tmp_path / "loopa"
    result = _cli("server", "--home", str(home), cwd=tmp_path)
    assert not _servers_under(tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (1, 2)
    assert "loopa" in result.stderr


def test_server_home_with_a_newline_is_not_a_traceback(tmp_path: Path) -> None:
    """A newline in --home is a legal path; whatever happens, no traceback and no
    server left behind once stopped."""
    home = tmp_path / "a\nb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "server", "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    try:
        try:
            out, err = proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:  # running in the foreground, as it should
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup_servers(home)
    assert not _servers_under(tmp_path)


def test_server_empty_home_flag_is_refused_not_read_as_the_default(tmp_path: Path) -> None:
    """``--home ''`` is an explicit, empty path: it must be refused, not silently
    replaced by ./.memworker (a server started in another folder than asked)."""
    default_home = tmp_path / ".memworker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "server", "--home", ""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    try:
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"`memworker server --home ''` started a server in {default_home}: {out[-500:]}")
        assert "Traceback" not in err, err[-3000:]
        assert proc.returncode == 2 and "--home" in err, (proc.returncode, err[-2000:])
        assert not default_home.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup_servers(default_home)
    assert not _servers_under(tmp_path)


# ------------------------------------------------------------------ status
@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "-inf", "0x10", "", "1e12", "0.05", "86401"])
def test_status_watch_out_of_range_is_a_usage_error(plain_server, namespace, capsys, seconds: str) -> None:
    # --watch=VALUE: "--watch -inf" is read by argparse as an unknown option, not a value
    code = _code(["--url", plain_server.url, "--namespace", namespace, "status", f"--watch={seconds}", "--count", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--watch" in err and "0.1" in err and "86400" in err, err


@pytest.mark.parametrize("seconds", ["0.1", " 5 ", "1e3", "86400"])
def test_status_watch_in_range_runs(plain_server, namespace, capsys, monkeypatch, seconds: str) -> None:
    import time

    monkeypatch.setattr(time, "sleep", lambda s: None)
    code = _code(["--url", plain_server.url, "--namespace", namespace, "status", "--watch", seconds, "--count", "2"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("memworker status") == 2


# ------------------------------------------------------------------ drain
@pytest.mark.parametrize("timeout", ["nan", "-1", "inf", "-inf", "1e309", "-0.001"])
def test_drain_timeout_out_of_range_is_a_usage_error(plain_server, namespace, capsys, timeout: str) -> None:
    """An out-of-range --timeout is bad input to a flag: an argparse usage error
    naming --timeout (exit 2), not a failure of the command (exit 1)."""
    code = _code(["--url", plain_server.url, "--namespace", namespace, "drain", "--producer", "p",
                  "--timeout", timeout])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 2, f"drain --timeout {timeout}: exit {code}: {err.strip()}"
    assert "--timeout" in err, err


@pytest.mark.parametrize("timeout", ["0x10", "", "five"])
def test_drain_unparsable_timeout_is_a_usage_error(plain_server, namespace, capsys, timeout: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "drain", "--all", "--timeout", timeout])
    err = capsys.readouterr().err
    assert code == 2 and "--timeout" in err, err


@pytest.mark.parametrize("timeout", ["0", " 5 ", "1e3"])
def test_drain_timeout_in_range_with_nothing_pending_returns(plain_server, namespace, capsys, timeout: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "drain", "--producer", "p",
                  "--timeout", timeout])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "committed 0 jobs, failed 0" in captured.out


def test_drain_without_producer_or_all_is_a_usage_error(plain_server, namespace, capsys) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "drain"])
    assert code == 2 and "--producer" in capsys.readouterr().err


# ------------------------------------------------------------------ dead
@pytest.mark.parametrize("limit", ["0", "-1", "", "1e3", "nan", "0x10"])
def test_dead_list_limit_below_one_or_unparsable_is_a_usage_error(plain_server, namespace, capsys, limit: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "dead", "list", "--limit", limit])
    err = capsys.readouterr().err
    assert code == 2 and "--limit" in err, err


@pytest.mark.parametrize("limit", [str(2**63), str(10**22)])
def test_dead_list_huge_limit_is_a_usage_error_or_lists(plain_server, namespace, capsys, limit: str) -> None:
    """A --limit the server cannot take as an integer is bad input: a usage error
    naming --limit, or the whole list (it is at most everything); never a server
    error reported as a failure of the command."""
    code = _code(["--url", plain_server.url, "--namespace", namespace, "dead", "list", "--limit", limit])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 0 or (code == 2 and "--limit" in err), f"dead list --limit {limit}: exit {code}: {err.strip()}"


def _dead_letter(raw: Any, keys: QueueKeys, mid: str) -> None:
    msg = {"queue_name": "default", "actor_name": "encode_items", "message_id": mid,
           "args": [{"v": 1, "job": mid, "producer": "p", "items": [{"id": "r1", "content": "x"}]}],
           "kwargs": {}, "options": {}, "message_timestamp": 1}  # fmt: skip
    raw.hset(keys.dead_msgs(), mid, json.dumps(msg))
    raw.zadd(keys.dead(), {mid: 1})


@pytest.mark.parametrize("action", ["requeue", "purge"])
@pytest.mark.parametrize("ids", [["*"], ["?"], ["["], ["j*"], ["j?"], ["[j]1"], [""], ["\\*"]],
                         ids=lambda v: repr(v))  # fmt: skip
def test_dead_ids_with_glob_characters_match_only_themselves(plain_server, namespace, capsys, action, ids) -> None:
    raw = raw_client(plain_server)
    keys = QueueKeys(namespace)
    _dead_letter(raw, keys, "j1")
    try:
        code = _code(["--url", plain_server.url, "--namespace", namespace, "dead", action, *ids])
        out = capsys.readouterr().out
        assert code == 0 and " 0 jobs" in out, out
        assert raw.zrange(keys.dead(), 0, -1) == [b"j1"] and raw.hexists(keys.dead_msgs(), "j1")
    finally:
        raw.delete(keys.dead(), keys.dead_msgs(), keys.q())
        raw.close()


@pytest.mark.parametrize("action", ["requeue", "purge"])
def test_dead_ten_thousand_ids_and_a_one_megabyte_id(plain_server, namespace, capsys, action: str) -> None:
    raw = raw_client(plain_server)
    keys = QueueKeys(namespace)
    _dead_letter(raw, keys, "j1")
    try:
        many = [f"x{i}" for i in range(10_000)] + ["j1"]
        code = _code(["--url", plain_server.url, "--namespace", namespace, "dead", action, *many])
        out = capsys.readouterr().out
        assert code == 0 and " 1 jobs" in out, out
        assert raw.zcard(keys.dead()) == 0
        code = _code(["--url", plain_server.url, "--namespace", namespace, "dead", action, "x" * 1_000_000])
        assert code == 0 and " 0 jobs" in capsys.readouterr().out
    finally:
        raw.delete(keys.dead(), keys.dead_msgs(), keys.q(), keys.msgs())
        raw.close()


# ------------------------------------------------------------------ demo
class _WorkStarted(Exception):
    pass


DEMO_BAD = [
    (["--agents", "0"], "--agents"), (["--records", "0"], "--records"), (["--batch", "0"], "--batch"),
    (["--processes", "0"], "--processes"), (["--threads", "0"], "--threads"),
    (["--records", "-1"], "--records"), (["--agents", "-1"], "--agents"),
    (["--think-ms", "-1"], "--think-ms"), (["--think-ms", "nan"], "--think-ms"),
    (["--think-ms", "inf"], "--think-ms"), (["--think-ms", "60001"], "--think-ms"),
    (["--records", "nan"], "--records"), (["--records", "1e3"], "--records"), (["--records", ""], "--records"),
    (["--batch", "1001", "--records", "1001"], "--batch"),  # 1,001 items in one enqueue: over max_items (1,000)
    (["--processes", "257"], "--processes"),  # the worker takes at most 256
    (["--threads", "1025"], "--threads"),  # the worker takes at most 1,024
    (["--records", str(10**12)], "--records"),  # cannot be built in memory, let alone finished
]  # fmt: skip


@pytest.mark.parametrize(("flags", "named"), DEMO_BAD, ids=[" ".join(f) for f, _ in DEMO_BAD])
def test_demo_refuses_what_it_cannot_finish_before_starting(
    plain_server, monkeypatch, capsys, flags: list[str], named: str
) -> None:
    """The demo validates every option before it touches the server (it resets its
    namespace), builds its memories or starts worker processes."""
    import memworker.demo as demo

    def started(*args: Any, **kwargs: Any) -> Any:
        raise _WorkStarted(f"demo started work with {flags}")

    monkeypatch.setattr(demo, "ensure_embedded", started)
    monkeypatch.setattr(demo, "_start_workers", started)
    monkeypatch.setattr(demo, "synthetic_memories", started)
    try:
        code = _code(["--url", plain_server.url, "demo", "--records", "3", "--agents", "1", *flags])
    except _WorkStarted as exc:
        pytest.fail(f"`memworker demo {' '.join(flags)}` is not refused up front: {exc} (it would reset "
                    "its namespace, start workers, then fail or never finish)")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err, err


def test_demo_refuses_a_namespace(plain_server, monkeypatch, capsys) -> None:
    import memworker.demo as demo

    monkeypatch.setattr(demo, "ensure_embedded", lambda *a, **k: (_ for _ in ()).throw(_WorkStarted()))
    code = _code(["--url", plain_server.url, "--namespace", "mine", "demo", "--records", "3"])
    assert code == 2 and "--namespace" in capsys.readouterr().err


# ------------------------------------------------------------------ retention
@pytest.mark.parametrize("days", ["0", "-1", "nan", "inf", "1e12", "36501", "0x10", ""])
def test_retention_days_out_of_range_is_a_usage_error(plain_server, namespace, capsys, days: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "retention", "set", "/a", "--days", days])
    err = capsys.readouterr().err
    assert code == 2 and "--days" in err and "36500" in err, err


@pytest.mark.parametrize("scope", ["", "x" * 100_000])
def test_retention_bad_scope_is_a_usage_error(plain_server, namespace, capsys, scope: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "retention", "clear", scope])
    err = capsys.readouterr().err
    assert code == 2 and "scope" in err and len(err) < 5_000, err[:500]


# ------------------------------------------------------------------ reshard
@pytest.mark.parametrize("pause", ["0", "-1", str(10**12), "3600001"])
def test_reshard_pause_out_of_range_is_refused(plain_server, namespace, capsys, pause: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace, "reshard", "--to", "x:1", "--pause-ms", pause])
    err = capsys.readouterr().err
    assert code == 2 and "pause" in err and "3600000" in err, err


@pytest.mark.parametrize("to", ["", ":", "host:", ":0", "127.0.0.1:70000", "127.0.0.1:-1", "[::1]:x",
                                "127.0.0.1 : 7000", "*", "a" * 10_000])  # fmt: skip
def test_reshard_bad_target_is_a_clear_error(cluster_plain_server, namespace, capsys, to: str) -> None:
    code = _code(["--url", f"valkey://127.0.0.1:{cluster_plain_server.port}", "--namespace", namespace,
                  "reshard", "--to", to])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 2 and "--to" in err and "primaries" in err, err[:2000]


# ------------------------------------------------------------------ import-lancedb
def test_import_lancedb_bad_paths_are_clear_errors(plain_server, namespace, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "loopa").symlink_to(tmp_path / "loopb")
    (tmp_path / "loopb").symlink_to(tmp_path / "loopa")
    for path in ["/nonexistent/x", str(tmp_path / "afile"), str(tmp_path / "loopa"),
                 str(tmp_path / "loopa" / "sub"), str(tmp_path / "a\nb")]:  # fmt: skip
        result = _cli("--url", plain_server.url, "--namespace", namespace, "import-lancedb", path, cwd=tmp_path)
        assert "Traceback" not in result.stderr, (path, result.stderr[-3000:])
        assert result.returncode == 2, (path, result.stderr[-2000:])
        assert "no LanceDB folder" in result.stderr


@pytest.mark.parametrize("table", ["", "../../etc", "t" * 300, "t" * 10_000])
def test_import_lancedb_bad_table_is_a_clear_error(plain_server, namespace, tmp_path: Path, table: str) -> None:
    (tmp_path / "db").mkdir()
    result = _cli("--url", plain_server.url, "--namespace", namespace, "import-lancedb", str(tmp_path / "db"),
                  "--table", table, cwd=tmp_path)  # fmt: skip
    assert "Traceback" not in result.stderr, f"--table of {len(table)} chars: {result.stderr[-1500:]}"
    assert result.returncode == 2, result.stderr[-2000:]
    assert "table" in result.stderr


# ------------------------------------------------------------------ connection variables
CONNECTION_BAD = [
    ("MEMWORKER_NAMESPACE", "{x}"), ("MEMWORKER_NAMESPACE", "a}"), ("MEMWORKER_NAMESPACE", "a*"),
    ("MEMWORKER_NAMESPACE", "a:b"), ("MEMWORKER_NAMESPACE", "a b"), ("MEMWORKER_NAMESPACE", " "),
    ("MEMWORKER_NAMESPACE", "n" * 10_240), ("MEMWORKER_NAMESPACE", "é"),
    ("MEMWORKER_COMMIT_REPLICAS", "-1"), ("MEMWORKER_COMMIT_REPLICAS", "17"),
    ("MEMWORKER_COMMIT_REPLICAS", str(10**12)), ("MEMWORKER_COMMIT_REPLICAS", "nan"),
    ("MEMWORKER_COMMIT_REPLICAS", "0x10"), ("MEMWORKER_COMMIT_REPLICAS", "\u0663"),
    ("MEMWORKER_COMMIT_REPLICAS", "1e3"),
    ("MEMWORKER_HNSW_EF_CONSTRUCTION", "0"), ("MEMWORKER_HNSW_EF_CONSTRUCTION", "4097"),
    ("MEMWORKER_HNSW_EF_CONSTRUCTION", str(10**12)), ("MEMWORKER_HNSW_EF_CONSTRUCTION", "1e3"),
    ("MEMWORKER_HNSW_EF_CONSTRUCTION", "-5"), ("MEMWORKER_HNSW_EF_CONSTRUCTION", "inf"),
    ("MEMWORKER_SEARCH", "bogus"), ("MEMWORKER_SEARCH", " auto"), ("MEMWORKER_SEARCH", "MODULE"),
    ("MEMWORKER_VECTOR_TYPE", "float64"), ("MEMWORKER_VECTOR_TYPE", "FLOAT32"), ("MEMWORKER_VECTOR_TYPE", "x" * 10_240),
]  # fmt: skip


@pytest.mark.parametrize(("var", "value"), CONNECTION_BAD, ids=[f"{k}={v[:12]!r}" for k, v in CONNECTION_BAD])
def test_connection_env_out_of_range_names_the_variable(plain_server, monkeypatch, capsys, var: str, value: str) -> None:
    for other in [k for k in os.environ if k.startswith("MEMWORKER_")]:
        monkeypatch.delenv(other)
    monkeypatch.setenv(var, value)
    code = _code(["--url", plain_server.url, "status"])
    err = capsys.readouterr().err
    assert code == 2 and var in err and "configuration error" in err, err[:2000]


@pytest.mark.parametrize("namespace_flag", ["{x}", "a*", "a:b", "a b", "n" * 10_240, ""])
def test_namespace_flag_out_of_range_is_refused(plain_server, capsys, namespace_flag: str) -> None:
    code = _code(["--url", plain_server.url, "--namespace", namespace_flag, "status"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if namespace_flag == "":  # empty: the default namespace (argparse gives "")
        assert code in (0, 2), err
    else:
        assert code == 2 and "namespace" in err, err[:2000]


def test_env_with_a_url_ignores_home_and_search_module(plain_server, namespace, monkeypatch, capsys, tmp_path) -> None:
    """With --url, MEMWORKER_HOME / MEMWORKER_SEARCH_MODULE pointing nowhere change
    nothing and create nothing."""
    monkeypatch.setenv("MEMWORKER_HOME", str(tmp_path / "nowhere" / "home"))
    monkeypatch.setenv("MEMWORKER_SEARCH_MODULE", "/nonexistent.so")
    code = _code(["--url", plain_server.url, "--namespace", namespace, "status"])
    assert code == 0, capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
