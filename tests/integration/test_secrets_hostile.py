"""Hostile review: credentials (a URL's password, an ACL user's password) never leak
into errors (and their __cause__/__context__ chains), logs, reprs, CLI output, worker
command lines, metrics, spans or failure records. Real Valkey servers throughout.

What test_security.py / test_config_hostile.py / test_embedded*.py already cover is
not repeated here (a wrong password's status, the embedded files' modes, unencoded
'/', '?', '#' in a password).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

import pytest

from valkey_servers import ServerInfo, free_port, start_server, stop_server
from memworker import MemoryQueue, ValkeyStore
from memworker.errors import ConfigError
from memworker.settings import Settings

PW = "Zq8SecretPw7xK2m"  # the default user's password
UPW = "Uu3UserPw9vB4nQ1"  # an ACL user's password
USER = "agentuser"
SECRETS = (PW, UPW)
TESTS = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        todo += list(getattr(e, "exceptions", ()) or ())
    return seen


def _exc_texts(exc: BaseException) -> list[str]:
    out = ["".join(traceback.format_exception(exc))]
    for e in _chain(exc):
        out += [str(e), repr(e), repr(getattr(e, "args", ()))]
    return out


def _clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret leaked in: {text[:2000]!r}"


@pytest.fixture(scope="module")
def pw_server(tmp_path_factory) -> ServerInfo:
    path = tmp_path_factory.mktemp("secrets-acl") / "users.acl"
    path.write_text(
        f"user default on >{PW} ~* &* +@all\nuser {USER} on >{UPW} ~* &* +@all\n"
    )
    server = start_server("plain", "--aclfile", str(path))
    yield server
    stop_server(server)


def _url(server: ServerInfo, scheme: str = "valkey", user: bool = True, extra: str = "") -> str:
    auth = f"{USER}:{UPW}" if user else f"default:{PW}"
    return f"{scheme}://{auth}@127.0.0.1:{server.port}{extra}"


# --------------------------------------------------------------------- URL parsing
#: URLs the parser refuses; each carries a password.
BAD_URLS = {
    "nfkc-slash": f"valkey://{USER}:{UPW}\u2100x@127.0.0.1:6379",  # '℀' -> 'a/c' under NFKC
    "nfkc-hash": f"redis://{USER}:{UPW}\uff03x@127.0.0.1:6379",  # fullwidth '#'
    "no-host": f"valkey://{USER}:{UPW}",  # the password is read as the port
    "bad-ipv6": f"valkey://{USER}:{UPW}@[::1:6379",
    "password-param": f"valkey://127.0.0.1:6379?password={UPW}",
    "unix-socket": f"unix:///tmp/valkey.sock?password={UPW}",
    "unix-socket-userinfo": f"unix://{USER}:{UPW}@/tmp/valkey.sock",
    "bad-db": f"rediss://{USER}:{UPW}@127.0.0.1:6379/xx",
    "bad-param": f"valkeys://{USER}:{UPW}@127.0.0.1:6379?timeout=abc",
    "bad-port": f"valkey://{USER}:{UPW}@127.0.0.1:99999",
}


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_refused_url_message_never_shows_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_url(url)
    _clean(str(info.value), repr(info.value), "".join(traceback.format_exception(info.value)))
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"VALKEY_URL": url})
    _clean(str(info.value), repr(info.value))


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_refused_url_exception_chain_holds_no_password(url: str) -> None:
    """``raise ... from None`` hides the context from a printed traceback, but the
    original exception (quoting the netloc / port) stays on ``__context__``, where
    error reporters and ``logging`` handlers walking the chain find it."""
    for parse in (lambda: Settings.from_url(url), lambda: Settings.from_env({"REDIS_URL": url})):
        with pytest.raises(ConfigError) as info:
            parse()
        _clean(*_exc_texts(info.value))


def test_cli_configuration_error_never_prints_the_password(capsys) -> None:
    from memworker.cli import main

    for url in BAD_URLS.values():
        assert main(["--url", url, "status"]) != 0
        out = capsys.readouterr()
        _clean(out.out, out.err)


def test_console_script_with_a_bad_url_in_the_environment_prints_no_password(tmp_path) -> None:
    env = dict(os.environ, VALKEY_URL=BAD_URLS["nfkc-slash"], MEMWORKER_HOME=str(tmp_path / "h"))
    done = subprocess.run(
        [str(VENV_BIN / "memworker"), "status"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode != 0
    _clean(done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


# --------------------------------------------------------------------- reprs
def test_reprs_of_every_object_holding_a_url(pw_server, namespace) -> None:
    from memworker.langgraph import QueuedStore

    url = _url(pw_server, extra="?connect_timeout_ms=500")
    settings = Settings.from_url(url, namespace=namespace)
    texts = [repr(settings), str(settings), settings.redacted_url(), repr(settings.credentials()[0])]
    with ValkeyStore(url, namespace=namespace) as store:
        texts += [repr(store), str(store), repr(store.settings)]
    with MemoryQueue(url, namespace=namespace, producer_id="p") as queue:
        texts += [repr(queue), str(queue)]
    qs = QueuedStore(url, namespace=namespace)
    texts += [repr(qs), str(qs)]
    qs.close() if hasattr(qs, "close") else None
    for scheme in ("redis", "rediss", "valkeys"):
        s = Settings.from_url(_url(pw_server, scheme=scheme), namespace=namespace)
        texts += [repr(s), str(s), s.redacted_url(), s.url(scheme="redis")]
    _clean(*texts)


def test_queued_memory_repr_hides_the_password(pw_server, namespace) -> None:
    """CrewAI logs, prints and error-reports ``Memory`` objects: pydantic's repr shows
    every field, including ``storage``."""
    pytest.importorskip("crewai")
    sys.path.insert(0, str(TESTS / "chaos"))
    import chaos_embedder
    from memworker.crewai import QueuedMemory
    from memworker.crewai.testing import StandInLLM

    class Embedder:
        def __call__(self, texts):
            return [chaos_embedder.vector(t).tolist() for t in texts]

    memory = QueuedMemory(storage=_url(pw_server), namespace=namespace, embedder=Embedder(),
                          llm=StandInLLM(), model_id="chaos")  # fmt: skip
    try:
        _clean(repr(memory), str(memory))
    finally:
        memory.close()


def test_queued_memory_refusing_a_non_valkey_spec_does_not_echo_it(namespace) -> None:
    """A unix-socket (or any other) URL with a password, given as ``storage``."""
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory

    for spec in (f"unix:///tmp/v.sock?password={UPW}", f"memcached://{USER}:{UPW}@host"):
        with pytest.raises(Exception) as info:
            QueuedMemory(storage=spec, namespace=namespace)
        _clean(*_exc_texts(info.value))


# --------------------------------------------------------------------- errors from a server
def _failures(url: str, namespace: str) -> list[BaseException]:
    """Every operation's exception on a server that refuses us / is not there."""
    from memworker.langgraph import QueuedStore

    caught: list[BaseException] = []

    def attempt(fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            caught.append(exc)

    store = ValkeyStore(url, namespace=namespace, search_mode="exact")
    attempt(store.count)
    attempt(lambda: store.list_records("/x"))
    store.close()
    queue = MemoryQueue(url, namespace=namespace, producer_id="p")
    attempt(lambda: queue.enqueue_encode_job(["hello"]))
    attempt(lambda: queue.drain(timeout=0.5))
    queue.close()
    qs = QueuedStore(url, namespace=namespace)
    attempt(lambda: qs.put(("a",), "k", {"v": 1}))
    attempt(lambda: qs.get(("a",), "k"))
    with contextlib.suppress(Exception):
        qs.close()
    from memworker.queue.admin import dead_list, queue_status

    attempt(lambda: queue_status(Settings.from_url(url, namespace=namespace)))
    attempt(lambda: dead_list(Settings.from_url(url, namespace=namespace)))
    return caught


@pytest.mark.parametrize("case", ["wrong-password", "wrong-user-password", "unreachable", "tls-to-plain"])
def test_errors_logs_and_chains_hold_no_password(pw_server, namespace, caplog, case) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: memworker's, redis', glide's, dramatiq's
    q = "?connect_timeout_ms=300&request_timeout_ms=500"
    url = {
        "wrong-password": f"valkey://default:{PW}x@127.0.0.1:{pw_server.port}{q}",
        "wrong-user-password": f"redis://{USER}:{UPW}x@127.0.0.1:{pw_server.port}{q}",
        "unreachable": f"valkey://{USER}:{UPW}@127.0.0.1:{free_port()}{q}",
        "tls-to-plain": f"rediss://{USER}:{UPW}@127.0.0.1:{pw_server.port}{q}&ssl_cert_reqs=none",
    }[case]
    caught = _failures(url, namespace)
    assert len(caught) >= 6, caught  # the operations did fail
    texts = [caplog.text]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts += _exc_texts(record.exc_info[1])
    for exc in caught:
        texts += _exc_texts(exc)
    _clean(*texts)


# --------------------------------------------------------------------- the CLI
def _cli(argv: list[str], capsys) -> str:
    from memworker.cli import main

    try:
        main(argv)
    except SystemExit:
        pass
    except Exception as exc:  # noqa: BLE001 - an uncaught error: what a user's terminal shows
        out = capsys.readouterr()
        return out.out + out.err + "".join(traceback.format_exception(exc))
    out = capsys.readouterr()
    return out.out + out.err


SUBCOMMANDS = [
    ["status"], ["status", "--json"], ["drain", "--all", "--timeout", "0.5"],
    ["drain", "--producer", "p", "--timeout", "0.5"], ["dead", "list"], ["dead", "list", "--json"],
    ["dead", "requeue", "1-0"], ["dead", "purge", "1-0"], ["check", "--any"], ["check"],
    ["retention", "list"], ["retention", "set", "/x", "--days", "1"], ["retention", "clear", "/x"],
    ["migrate", "--dry-run"], ["reshard", "--to", "127.0.0.1:1"],
    ["import-lancedb", "/nonexistent-lancedb-folder"],
]  # fmt: skip


def test_every_subcommand_with_good_bad_and_unreachable_urls(pw_server, namespace, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    q = "?connect_timeout_ms=300&request_timeout_ms=500"
    urls = [
        _url(pw_server),
        f"valkey://default:{PW}@127.0.0.1:{pw_server.port}",
        f"valkey://{USER}:{UPW}x@127.0.0.1:{pw_server.port}{q}",
        f"valkey://{USER}:{UPW}@127.0.0.1:{free_port()}{q}",
    ]
    texts = []
    for url in urls:
        for cmd in SUBCOMMANDS:
            texts.append(_cli(["-v", "--url", url, "--namespace", namespace, *cmd], capsys))
            # after the command word (nested commands: see the test below)
            texts.append(_cli([cmd[0], "--url", url, "--namespace", namespace, *cmd[1:]], capsys))
    texts.append(caplog.text)
    _clean(*texts)


NESTED = [["dead", "list"], ["dead", "requeue", "1-0"], ["dead", "purge"], ["retention", "list"],
          ["retention", "clear", "/x"]]  # fmt: skip


def test_url_after_a_nested_subcommand_is_accepted_or_at_least_not_echoed(pw_server, namespace, capsys) -> None:
    """cli.py says "--url and --namespace are accepted before or after the command";
    after ``dead list`` / ``retention list`` (the nested parsers do not get the shared
    options) argparse refuses them and quotes them, password and all, on stderr."""
    url = _url(pw_server)
    for cmd in NESTED:
        _clean(_cli([*cmd, "--url", url, "--namespace", namespace], capsys))


def test_worker_subcommand_refused_by_the_server_prints_no_password(pw_server, namespace, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"valkey://{USER}:{UPW}x@127.0.0.1:{pw_server.port}?connect_timeout_ms=300"
    text = _cli(["-v", "--url", url, "--namespace", namespace, "worker", "--threads", "1"], capsys)
    _clean(text, caplog.text)


USAGE_ERRORS = [
    ["status", "--bogus"], ["drain"], ["dead", "list", "--limit", "0"], ["demo", "--namespace", "x"],
    ["status", "--watch", "-1"], ["nonsense"], [], ["worker", "--processes", "0"],
    ["worker", "--threads", "x"], ["retention", "set", "relative", "--days", "1"],
]  # fmt: skip


def test_usage_errors_never_print_the_url(pw_server, capsys) -> None:
    url = _url(pw_server)
    for argv in USAGE_ERRORS:
        _clean(_cli(["--url", url, *argv], capsys), _cli([*argv[:1], "--url", url, *argv[1:]], capsys))


def test_a_misplaced_url_argument_is_not_echoed_by_the_usage_error(pw_server, capsys) -> None:
    """``memworker status valkey://user:pw@host`` (the URL without ``--url``) or
    ``memworker --url`` then a typo'd command: argparse quotes the unrecognized
    argument, password and all, on stderr (which CI and supervisors keep)."""
    url = _url(pw_server)
    for argv in (["status", url], [url, "status"], ["dead", "list", url]):
        _clean(_cli(argv, capsys))


# --------------------------------------------------------------------- a real worker
def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                for c in children:
                    out.append(int(c))
                    todo.append(int(c))
    return out


def test_worker_from_the_environment_leaks_nothing(pw_server, namespace, tmp_path) -> None:
    """A worker (2 processes) whose URL (an ACL user's) comes from VALKEY_URL: its
    children's command lines, its debug log, its /metrics, its spans, a failed job's
    failure record and dead letter, and the CLI's report of them."""
    import redis

    from memworker.cli import main  # noqa: F401 - imported for the CLI runs below

    url = _url(pw_server)
    trace_file = tmp_path / "spans.jsonl"
    log = tmp_path / "worker.log"
    port = free_port()
    env = dict(
        os.environ, VALKEY_URL=url, MEMWORKER_NAMESPACE=namespace, HF_HUB_OFFLINE="1",
        MEMWORKER_EMBEDDER="chaos_embedder:make", MEMWORKER_OTEL_SETUP="otel_file:setup",
        MEMWORKER_TRACE_FILE=str(trace_file), MEMWORKER_SEARCH="exact",
        MEMWORKER_METRICS_ADDRESS="127.0.0.1",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS / "chaos"), os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [str(VENV_BIN / "memworker"), "-v", "worker", "--processes", "2", "--threads", "2",
         "--max-retries", "0", "--metrics-port", str(port)],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    texts: list[str] = []
    try:
        settings = Settings.from_url(url, namespace=namespace, search_mode="exact")
        with MemoryQueue(settings, producer_id="p") as queue:
            good, _ = queue.enqueue_encode_job(["a fine memory"])
            bad, _ = queue.enqueue_encode_job(["POISON memory"])
            report = queue.drain(timeout=120, job_ids=[good, bad])
            assert report.committed == 1 and len(report.failed) == 1, report
            texts += [repr(report), str(report.failed[0].error), repr(report.failed)]
        # the children are up (they took the jobs): read their command lines
        kids = _descendants(proc.pid)
        assert kids, "no worker child process"
        for pid in [proc.pid, *kids]:
            with contextlib.suppress(OSError):
                texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            metrics = reply.read().decode()
        assert "memworker_" in metrics
        texts.append(metrics)
        # failure records and dead letters, read raw from Valkey
        client = redis.Redis(port=pw_server.port, username=USER, password=UPW)
        dumped = 0
        for key in client.scan_iter(match=f"*{namespace}*", count=1000):
            kind = client.type(key).decode()
            value = {
                "string": lambda: client.get(key),
                "hash": lambda: client.hgetall(key),
                "list": lambda: client.lrange(key, 0, -1),
                "set": lambda: client.smembers(key),
                "zset": lambda: client.zrange(key, 0, -1, withscores=True),
                "stream": lambda: client.xrange(key),
            }.get(kind, lambda: b"")()
            texts.append(repr(key) + repr(value))
            dumped += 1
        client.close()
        assert dumped > 0
        joined = "".join(texts)
        assert "poison" in joined.lower()  # the failure record was read
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    texts.append(log.read_text(errors="replace"))
    if trace_file.exists():
        texts.append(trace_file.read_text())
    # the CLI's view of the failure
    run = dict(env)
    for argv in (["dead", "list"], ["dead", "list", "--json"], ["status"], ["drain", "--all", "--timeout", "1"]):
        done = subprocess.run([str(VENV_BIN / "memworker"), "-v", *argv], env=run,
                              capture_output=True, timeout=120)  # fmt: skip
        texts += [done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")]
    _clean(*texts)


def test_metrics_exposition_when_the_server_refuses(pw_server, namespace) -> None:
    """``/metrics`` of a worker whose server refuses the password: ``valkey_up 0``,
    nothing else, and no credential."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from memworker.metrics import QueueCollector

    for url in (f"valkey://{USER}:{UPW}x@127.0.0.1:{pw_server.port}?connect_timeout_ms=300",
                f"valkey://{USER}:{UPW}@127.0.0.1:{free_port()}?connect_timeout_ms=300"):  # fmt: skip
        registry = CollectorRegistry()
        collector = QueueCollector(Settings.from_url(url, namespace=namespace))
        registry.register(collector)
        text = generate_latest(registry).decode()
        collector.close()
        assert "memworker_valkey_up" in text
        _clean(text)


# --------------------------------------------------------------------- the embedded server
def test_embedded_state_and_settings_hold_no_password(tmp_path, capsys) -> None:
    from memworker.embedded import ensure_embedded, stop_server as stop_embedded

    home = tmp_path / "home"
    settings = ensure_embedded(Settings(home=home, search_module="none"))
    try:
        password = (home / "valkey.password").read_text().strip()
        assert password and settings.credentials()[1] == password
        texts = [repr(settings), str(settings), settings.redacted_url(), repr(settings.endpoint),
                 (home / "valkey.json").read_text()]  # fmt: skip
        store = ValkeyStore(settings, namespace="emb")
        texts += [repr(store)]
        store.close()
        for name in ("valkey.json", "valkey.log", "valkey.lock"):
            with contextlib.suppress(FileNotFoundError):
                texts.append((home / name).read_text(errors="replace"))
        for text in texts:
            assert password not in text
    finally:
        stop_embedded(home)
