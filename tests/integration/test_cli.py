"""The memworker command, run as a real process against a real Valkey."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memworker import MemoryQueue, ValkeyStore
from memworker.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main, make_argument_parser
from memworker.settings import Settings
from memworker.records import record_types
from valkey_servers import start_server, stop_server

MEMWORKER = str(Path(sys.executable).with_name("memworker"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VALKEY_URL", "REDIS_URL")}
    env.update(HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", **extra)
    return env


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEMWORKER, *args], capture_output=True, text=True, env=env or _env(), timeout=timeout, check=False
    )


def test_every_command_is_registered() -> None:
    parser = make_argument_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {
        "server", "worker", "status", "drain", "dead", "check", "demo", "import-lancedb", "migrate",
        "retention", "reshard",
    }


def test_worker_retry_and_poison_flags_with_env_fallbacks() -> None:
    from memworker.errors import ConfigError
    from memworker.worker.process import broker_options

    args = make_argument_parser().parse_args(
        ["worker", "--max-retries", "0", "--min-backoff-ms", "50", "--max-deliveries", "2",
         "--commit-step", "0"]
    )  # fmt: skip
    assert (args.max_retries, args.min_backoff_ms, args.max_deliveries, args.commit_step) == (0, 50, 2, 0)
    args = make_argument_parser().parse_args(
        ["worker", "--inflight-records", "0", "--inflight-bytes", "4096", "--commit-threads", "3"]
    )  # fmt: skip
    assert (args.inflight_records, args.inflight_bytes, args.commit_threads) == (0, 4096, 3)
    args = make_argument_parser().parse_args(["worker"])
    assert (args.max_retries, args.min_backoff_ms, args.max_deliveries, args.commit_step) == (None,) * 4
    assert (args.inflight_records, args.inflight_bytes, args.commit_threads) == (None, None, None)
    env = {"MEMWORKER_MAX_RETRIES": "1", "MEMWORKER_MIN_BACKOFF_MS": "20", "MEMWORKER_MAX_DELIVERIES": "4",
           "MEMWORKER_COMMIT_STEP": "16"}  # fmt: skip
    assert broker_options(env) == {
        "max_retries": 1, "min_backoff_ms": 20, "max_deliveries": 4, "commit_step": 16,
        "inflight_records": 256, "inflight_bytes": 16 * 1024 * 1024, "commit_threads": 2,
    }  # fmt: skip
    assert broker_options(env, max_retries=3)["max_retries"] == 3  # the flag wins
    assert broker_options({}) == {
        "max_retries": 5, "min_backoff_ms": 1000, "max_deliveries": 3, "commit_step": 8,
        "inflight_records": 256, "inflight_bytes": 16 * 1024 * 1024, "commit_threads": 2,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="MEMWORKER_MAX_DELIVERIES"):
        broker_options({"MEMWORKER_MAX_DELIVERIES": "zero"})


def test_worker_nice_accepts_an_increment_or_idle() -> None:
    from memworker.errors import ConfigError
    from memworker.worker.priority import check_nice

    parse = make_argument_parser().parse_args
    assert parse(["worker", "--nice", "idle"]).nice == "idle"
    assert parse(["worker", "--nice", "7"]).nice == 7
    assert parse(["worker"]).nice == 0
    for bad in ("20", "-1", "low"):
        with pytest.raises(SystemExit):
            parse(["worker", "--nice", bad])
    for bad in (20, -1, "low", True, 1.5):
        with pytest.raises(ConfigError, match="nice"):
            check_nice(bad)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_lower_priority_idle_sets_sched_idle_for_later_threads() -> None:
    code = (
        "import os, threading\n"
        "from memworker.worker.priority import lower_priority\n"
        "assert os.sched_getscheduler(0) != os.SCHED_IDLE\n"
        "lower_priority('idle')\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))\n"
        "t.start(); t.join()\n"
        "print(os.sched_getscheduler(0) == os.SCHED_IDLE, seen == [os.SCHED_IDLE])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_usage_errors_exit_2(plain_server) -> None:
    assert main(["--url", plain_server.url, "drain"]) == EXIT_USAGE  # neither --all nor --producer
    assert main(["--url", "ftp://nope", "status"]) == EXIT_USAGE  # ConfigError
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--processes", "x"])
    assert exc.value.code == 2


def test_check_fails_without_worker(queue_server, namespace) -> None:
    assert main(["--url", queue_server.url, "--namespace", namespace, "check", "--any"]) == EXIT_FAILURE


def test_check_names_a_server_it_cannot_use() -> None:
    """`check` fails (exit 1) on a refused password or a closed port, saying so: "no
    live worker" is only said when the server answered (a probe's log then tells a
    wrong secret from a stopped worker)."""
    secret = "check-Pa55"
    server = start_server("plain", "--requirepass", secret)
    try:
        bad = server.url.replace("://", f"://default:{secret}WRONG@", 1)
        good = server.url.replace("://", f"://default:{secret}@", 1)
        refused = _run("--url", bad, "--namespace", "chk", "check", "--any")
        answered = _run("--url", good, "--namespace", "chk", "check", "--any")
    finally:
        stop_server(server)
    closed = _run("--url", server.url, "--namespace", "chk", "check", "--any")
    assert answered.returncode == EXIT_FAILURE
    assert answered.stderr.strip() == "no live worker"
    for result in (refused, closed):
        assert result.returncode == EXIT_FAILURE, result.stderr
        assert "no live worker" not in result.stderr
        # (the client's retry warnings may come first: the verdict is the last line)
        assert result.stderr.strip().splitlines()[-1].startswith("memworker check: "), result.stderr
        assert "Traceback" not in result.stderr
        assert secret not in result.stderr + result.stdout
    assert re.search(r"(?i)auth|password|WRONGPASS", refused.stderr), refused.stderr


def test_worker_processes_commit_drain_status_check(queue_server, namespace, tmp_path) -> None:
    """Two worker processes with the real bundled model: jobs enqueued from here are
    committed, `drain` and `status` see them, `check` passes while workers live and
    fails after SIGTERM stops them cleanly."""
    url = queue_server.url
    worker = subprocess.Popen(
        [MEMWORKER, "--url", url, "--namespace", namespace, "worker", "--processes", "2", "--threads", "2"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        settings = Settings.from_url(url, namespace=namespace)
        with MemoryQueue(settings, producer_id="cli-test") as queue:
            ids = queue.enqueue_encode(
                [{"content": f"fact number {i} about valkey", "scope": "/cli", "categories": ["c"]} for i in range(20)]
            )
            drained = _run("--url", url, "--namespace", namespace, "drain", "--producer", "cli-test", "--timeout", "120")
            assert drained.returncode == EXIT_OK, drained.stderr
            assert "failed 0" in drained.stdout
        store = ValkeyStore(settings)
        assert store.count("/cli") == 20
        assert all(store.get_record(i) is not None for i in ids)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = json.loads(_run("--url", url, "--namespace", namespace, "status", "--json").stdout)
            if len(status["workers"]) == 2:
                break
            time.sleep(0.2)
        assert len(status["workers"]) == 2
        assert status["pending_total"] == 0 and status["dead"] == 0
        # each process froze what it loaded (the model, the broker, the imports: hundreds
        # of thousands of objects) out of the garbage collector's sight (freeze_heap)
        assert all(int(w["gc_frozen"]) > 100_000 for w in status["workers"]), status["workers"]
        assert _run("--url", url, "--namespace", namespace, "check").returncode == EXIT_OK
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert _run("--url", url, "--namespace", namespace, "check", "--any").returncode == EXIT_FAILURE
        store.reset()
        store.close()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


def test_dead_list_requeue_purge(queue_server, namespace, capsys) -> None:
    """A job that fails permanently (dimension mismatch) is dead-lettered; the dead
    commands list, requeue and purge it."""
    from memworker.worker.process import running_worker

    settings = Settings.from_url(queue_server.url, namespace=namespace)
    cls = record_types()[0]
    store = ValkeyStore(settings)
    store.save([cls(content="x", embedding=np.ones(4).tolist())])
    base = ["--url", queue_server.url, "--namespace", namespace]
    with MemoryQueue(settings, producer_id="p") as queue, running_worker(settings, threads=1):
        job = queue.enqueue_save([cls(content="y", embedding=np.ones(3).tolist())])
        report = queue.drain(timeout=60, job_ids=[job])
        assert [f.job_id for f in report.failed] == [job]
    capsys.readouterr()
    assert main([*base, "dead", "list", "--json"]) == EXIT_OK
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["job_id"] == job
    assert main([*base, "dead", "requeue"]) == EXIT_OK
    assert "requeued 1" in capsys.readouterr().out
    assert main([*base, "dead", "purge"]) == EXIT_OK  # requeued job is no longer dead
    assert "purged 0" in capsys.readouterr().out
    store.reset()
    store.close()


@pytest.mark.slow
def test_demo_runs_on_the_embedded_server(tmp_path) -> None:
    """The README's main job: `memworker demo` on a fresh MEMWORKER_HOME."""
    env = _env(MEMWORKER_HOME=str(tmp_path / "home"))
    try:
        done = _run("demo", "--records", "80", "--agents", "2", "--batch", "10", env=env, timeout=600)
        assert done.returncode == EXIT_OK, done.stderr[-2000:]
        out = done.stdout
        assert re.search(r"records enqueued / committed\s+80 / 80\n", out), out
        assert re.search(r"failed jobs\s+0\n", out), out
        assert re.search(r"own writes seen after drain\s+80 of 80\n", out), out
    finally:
        from memworker.embedded import stop_server

        stop_server(tmp_path / "home")


def test_url_and_namespace_are_accepted_after_the_command(plain_server, namespace, capsys) -> None:
    """`memworker worker --processes P --threads T --namespace NS` (the issue's form) and
    `memworker --namespace NS worker ...` mean the same."""
    parser = make_argument_parser()
    after = parser.parse_args(["worker", "--processes", "2", "--threads", "4", "--namespace", "ns1"])
    before = parser.parse_args(["--namespace", "ns1", "worker", "--processes", "2", "--threads", "4"])
    assert vars(after) == vars(before)
    assert main(["status", "--json", "--url", plain_server.url, "--namespace", namespace]) == EXIT_OK
    assert f'"namespace": "{namespace}"' in capsys.readouterr().out


def test_verbose_turns_on_debug_for_memworker_and_dramatiq_only() -> None:
    import logging

    from memworker.cli import main

    before = {n: logging.getLogger(n).level for n in ("memworker", "dramatiq", "")}
    try:
        assert main(["-v", "drain"]) != 0  # a usage error, after the logging set-up
        assert logging.getLogger("memworker").level == logging.DEBUG
        assert logging.getLogger("dramatiq").level == logging.DEBUG
        assert logging.getLogger().level != logging.DEBUG  # not every library's debug lines
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def test_status_watch_redraws_with_throughput(plain_server, namespace, capsys) -> None:
    """`status --watch` prints the table again every interval, with the jobs and records
    committed per second since the last refresh (stopped by --count here, Ctrl-C live)."""
    import redis

    from memworker.keys import QueueKeys

    client = redis.Redis(port=plain_server.port)
    keys = QueueKeys(namespace)
    stats = keys.stats
    client.hset(stats, mapping={"committed": 10, "records": 30})
    # a live worker's health record with its enqueue-to-commit clock
    client.zadd(keys.workers, {"w1": int(time.time() * 1000) + 60_000})
    client.hset(keys.worker("w1"), mapping={"processed": 10, "searchable_ms_total": 1000, "searchable_jobs": 10})
    import threading

    def bump_counters() -> None:
        client.hincrby(stats, "committed", 5)
        client.hset(keys.worker("w1"), mapping={"searchable_ms_total": 1000 + 5 * 40, "searchable_jobs": 15})

    bump = threading.Timer(0.3, bump_counters)
    bump.start()
    try:
        code = main(["--url", plain_server.url, "--namespace", namespace, "status", "--watch", "0.6", "--count", "2"])
    finally:
        bump.cancel()
        client.close()
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("memworker status") == 2 and out.count("queue depth") == 2
    assert "committed per second" in out and "committed per second  0.0" not in out
    assert "time to searchable (mean)  40 ms" in out  # (1200 - 1000) ms / (15 - 10) jobs
    assert "time to searchable 100 ms (mean of 10)" in out  # the worker's line, first refresh


@pytest.mark.parametrize(
    ("message_id", "producer"),
    [("msg-M", "p1"), ("job-J", "p1\nX"), ("job-J", "../p1"), ("job-J", "p" * 200)],
)
def test_requeue_restores_no_pending_mark_a_dead_letter_cannot_clear(
    queue_server, namespace, message_id, producer
) -> None:
    """A dead letter whose message id is not its job's id (or whose producer is no
    producer id) was requeued with a pending mark under those ids: the worker commits or
    fails the job under its job id, so the mark never cleared and p1's every drain
    timed out. It is requeued without one."""
    from memworker.queue.admin import dead_requeue
    from memworker.queue.jobs import QueueKeys
    from valkey_servers import raw_client

    settings = Settings.from_url(queue_server.url, namespace=namespace)
    keys = QueueKeys(namespace)
    raw = raw_client(queue_server)
    rid = "r-crafted"
    msg = {"queue_name": "default", "actor_name": "encode_records",
           "args": [{"v": 1, "job": "job-J", "producer": producer, "items": [{"id": "r1", "text": "x"}]}],
           "kwargs": {}, "options": {"redis_message_id": rid},
           "message_id": message_id, "message_timestamp": 1}  # fmt: skip
    raw.zadd(keys.dead(), {rid: 1})
    raw.hset(keys.dead_msgs(), rid, json.dumps(msg))
    try:
        assert dead_requeue(settings) == 1
        assert raw.lrange(keys.q(), 0, -1) == [rid.encode()]  # the message goes back
        with MemoryQueue(settings, producer_id="p1") as p1:
            assert p1.pending() == []
            assert p1.drain(timeout=1).committed == 0  # returns: nothing of p1's pending
    finally:
        raw.close()
