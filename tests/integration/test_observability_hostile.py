"""Hostile review of the observability and operator surfaces (metrics, traces, error
texts, the memworker command) against strings a user, an LLM or an operator controls,
on real Valkey servers.

- Prometheus: after jobs whose scopes, categories, metadata, sources, ids and error
  texts carry exposition syntax (quotes, backslashes, ``}``, ``#``, line breaks), a
  real worker's ``/metrics`` parses strictly, with only the documented labels.
- Traces: no span, span event or span status carries a memory's text or a user's
  field name (OpenTelemetry records an exception that leaves a span as an event with
  its message, and its status description with it).
- Error texts: a refused item names its field printably and briefly (a ValidationError
  is logged by callers such as QueuedMemory.remember_many and recorded on spans).
- The command: a namespace with glob, hash-tag or control characters is refused as a
  usage error naming ``namespace``, touching no key (of ``ab`` for ``a*``); a hostile
  scope given to ``retention set`` is a usage error naming the field, nothing written.

Defects proven (each failed before its fix, session 31): an embedder's error quoting
the memory's text, and a refused item's error quoting the user's field, were recorded
on spans (OpenTelemetry's exception event and status description); a refused item's
unknown field or range key was quoted raw (escape sequences) and whole (100,000
characters); ``retention set`` with a bad scope exited 1, not the usage error 2; a
failure record kept a 60,000-character error text whole.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_maintenance_hostile import _snapshot
from test_worker import fake, workers  # noqa: F401
from valkey_servers import free_port, raw_client

from memworker.cli import EXIT_USAGE, main
from memworker.errors import ValidationError
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

TESTS = Path(__file__).resolve().parents[1]
CHAOS = TESTS / "chaos"
SECRET = "the vault code is 4711-SECRET"
#: Exposition syntax: a label value or a line of its own if it reached the text raw.
FORGE = 'x"} 1\n# TYPE forged_total counter\nforged_total{ns="y\\"} 9'
ESC = "\x1b[2J\x1b]0;owned\x07\r\nFAKE: ok\x9b31m"


def _hostile_item(i: int) -> dict[str, Any]:
    return {
        "text": f"{SECRET} {i}",
        "id": f'id-{i}"}}{{#\\',  # ids refuse control characters, not quotes or braces
        "scope": f'/t"}}\\{i}/#{{x}}',
        "categories": [FORGE, ESC, "{" * 50],
        "metadata": {FORGE: FORGE, ESC: ESC, "n": i},
        "source": 'src"}\\#',
    }


# --------------------------------------------------------------------------- metrics
def _scrape(port: int) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_metrics_parse_strictly_after_hostile_jobs(plain_server, namespace, tmp_path) -> None:
    """Every string of a job (committed or dead-lettered with its text in the error)
    stays out of the exposition: it parses strictly, each sample line is one
    ``name{labels} value``, the labels are the documented ones, and no hostile marker
    appears anywhere."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(CHAOS), os.environ.get("PYTHONPATH", "")]),
               MEMWORKER_EMBEDDER="chaos_embedder:make", MEMWORKER_METRICS_ADDRESS="127.0.0.1")  # fmt: skip
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "--url", plain_server.url, "--namespace", namespace,
         "worker", "--processes", "1", "--threads", "2", "--metrics-port", str(port),
         "--max-retries", "0", "--min-backoff-ms", "10"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
        with MemoryQueue(settings, producer_id="p-x.y") as q:
            good = [q.enqueue_encode_job([_hostile_item(i)])[0] for i in range(5)]
            bad = q.enqueue_encode_job([{**_hostile_item(99), "text": f"POISON {FORGE} {ESC}"}])[0]
            report = q.drain(timeout=120, job_ids=[*good, bad])
        assert report.committed == 5 and [f.job_id for f in report.failed] == [bad]
        deadline = time.monotonic() + 30
        while True:
            text = _scrape(port)
            families = list(text_string_to_metric_families(text))
            samples = [s for f in families for s in f.samples]
            jobs = {s.labels.get("outcome"): s.value for s in samples if s.name == "memworker_jobs_total"}
            if jobs.get("committed", 0) >= 5 and jobs.get("failed", 0) >= 1:
                break
            assert time.monotonic() < deadline, f"the jobs never showed on /metrics: {jobs}"
            time.sleep(0.2)
        allowed = {"namespace", "outcome", "model", "backend", "le"}
        for s in samples:
            assert set(s.labels) <= allowed, s
            if "namespace" in s.labels:
                assert s.labels["namespace"] == namespace, s
            if "outcome" in s.labels:
                assert s.labels["outcome"] in {"committed", "retried", "failed", "poisoned"}, s
        names = {f.name for f in families}
        assert all(n.startswith("memworker_") for n in names), names
        sample_line = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? \S+$')
        for line in text.splitlines():
            assert line.startswith("# ") or sample_line.match(line), repr(line)
        for marker in ("forged", "FAKE", "owned", "\x1b", "vault code", "SECRET", "src", "POISON", "{{{{"):
            assert marker not in text, marker
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()


# --------------------------------------------------------------------------- traces
@pytest.fixture
def exporter():
    pytest.importorskip("opentelemetry.sdk.trace")
    from otel_file import memory_exporter

    exp = memory_exporter()
    exp.clear()
    yield exp
    exp.clear()


def _span_dump(spans: list[Any]) -> str:
    """Everything a span exporter sends of each span: name, attributes, events (with
    their attributes: an exception's message and stack trace) and status."""
    parts = []
    for s in spans:
        parts.append(s.name)
        parts.append(repr(dict(s.attributes or {})))
        for e in s.events:
            parts.append(e.name + repr(dict(e.attributes or {})))
        parts.append(repr(s.status.description))
    return "\n".join(parts)


def _quoting_workers(server, namespace, fake, workers, monkeypatch) -> Settings:  # noqa: F811
    """In-process workers (no retries) whose model fails a text holding SECRET with an
    error quoting it, as API clients' errors do; their settings."""
    encode = fake.encode

    def quoting(texts):
        for t in texts:
            if SECRET in t:
                raise ValueError(f"cannot embed: {t}")
        return encode(texts)

    monkeypatch.setattr(fake, "encode", quoting)
    settings = Settings.from_url(server.url, namespace=namespace, search_mode="exact")
    workers(settings, max_retries=0)
    return settings


def test_no_span_carries_the_text_an_embedder_error_quotes(plain_server, namespace, fake, workers, exporter, monkeypatch):  # noqa: F811
    """The model's error quotes the text it was given (as API clients' errors do); the
    job's ``memworker.embed`` span ends with it. The module docstring of
    memworker.tracing: "No span or attribute carries memory text". OpenTelemetry's
    ``start_as_current_span`` records an exception leaving the span as an event
    (``exception.message``, ``exception.stacktrace``) and as the status description."""
    settings = _quoting_workers(plain_server, namespace, fake, workers, monkeypatch)
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_encode_job([f"{SECRET} {ESC}"])[0]
        report = q.drain(timeout=60, job_ids=[job])
    assert [f.job_id for f in report.failed] == [job]
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("memworker.")]
    assert any(s.name == "memworker.embed" for s in spans), [s.name for s in spans]
    dump = _span_dump(spans)
    assert "vault code" not in dump and "4711" not in dump, dump[:2000]
    assert "\x1b" not in dump


def test_a_failure_record_keeps_a_bounded_error_text(plain_server, namespace, fake, workers, monkeypatch):  # noqa: F811
    """An embedder's error quoting a whole 60,000-character text was kept whole in the
    failure record (and reported whole) until a drain consumed it: the record keeps its
    first MAX_ERROR_CHARS characters and says how long it was."""
    from memworker.worker.middleware import MAX_ERROR_CHARS

    settings = _quoting_workers(plain_server, namespace, fake, workers, monkeypatch)
    with MemoryQueue(settings, producer_id="p") as q:
        job = q.enqueue_encode_job([SECRET + " x" * 30_000])[0]
        report = q.drain(timeout=60, job_ids=[job])
    [failed] = report.failed
    assert failed.error.startswith("ValueError: cannot embed: " + SECRET)
    assert len(failed.error) <= MAX_ERROR_CHARS + 40, len(failed.error)
    assert failed.error.endswith(" characters)")


def test_a_refused_enqueue_leaves_no_user_string_on_its_span(plain_server, namespace, exporter) -> None:
    """An enqueue refused by validation ends its ``memworker.enqueue`` span with the
    ValidationError: a field name or value of the user's must not ride along on it
    (events or status), control characters least of all."""
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    key = f"{SECRET} {ESC}"
    with MemoryQueue(settings, producer_id="p") as q:
        with pytest.raises(ValidationError):
            q.enqueue_encode([{"text": "fine", key: 1}])
        with pytest.raises(ValidationError):
            q.enqueue_encode([{"text": "fine", "metadata": {"=" + key: 10**400}}])
        with pytest.raises(ValidationError):
            q.enqueue_encode([{"text": "fine", "id": "x" * 5000 + SECRET}])
    spans = [s for s in exporter.get_finished_spans() if s.name == "memworker.enqueue"]
    assert len(spans) == 3
    dump = _span_dump(spans)
    assert "vault code" not in dump and "\x1b" not in dump, dump[:2000]


# --------------------------------------------------------------------------- error texts
@pytest.mark.parametrize(
    "item",
    [
        pytest.param({"text": "fine", f"{SECRET}{ESC}": 1}, id="unknown-field-escapes"),
        pytest.param({"text": "fine", "k" * 100_000: 1}, id="unknown-field-huge"),
        pytest.param({"text": "fine", "flow": {f"{SECRET}{ESC}": 1}}, id="unknown-flow-field"),
        pytest.param({"text": "fine", "metadata": {"=" + "k" * 20_000 + ESC: 10**400}}, id="range-key-huge"),
    ],
)
def test_a_refused_item_is_named_printably_and_briefly(plain_server, namespace, item) -> None:
    """The ValidationError of a refused item quotes what the user gave at most as
    ``shown`` does (a cut repr): callers log it (QueuedMemory.remember_many's warning,
    in the agent's process, has no redacting filter) and OpenTelemetry records it on
    the enqueue span. Nothing is enqueued."""
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    with MemoryQueue(settings, producer_id="p") as q:
        with pytest.raises(ValidationError) as err:
            q.enqueue_encode([item])
        assert q.pending() == []
    text = str(err.value)
    assert text.isprintable(), repr(text[:300])
    assert len(text) <= 500, f"{len(text)} characters: {text[:200]!r}..."


# --------------------------------------------------------------------------- the command
HOSTILE_NAMESPACES = ["a*", "a?", "a[b]", "{a}", "a}b", "a\nb", "a\x1b[31mb", "a" * 5000, "a b", "a:b"]


@pytest.mark.parametrize("ns", HOSTILE_NAMESPACES, ids=lambda n: repr(n[:12]))
def test_the_command_refuses_a_hostile_namespace_and_touches_nothing(plain_server, ns, capsys) -> None:
    """``--namespace 'a*'`` must not become a pattern over ``ab``'s keys (or any other
    namespace's): every command refuses it as a usage error naming the namespace, its
    output printable, and the server's keys are the same after."""
    raw = raw_client(plain_server)
    victim = "a" + os.urandom(4).hex()
    try:
        with ValkeyStore(Settings.from_url(plain_server.url, namespace=victim, search_mode="exact")) as store:
            store.set_retention("/kept", 3)
        with MemoryQueue(plain_server.url, namespace=victim, producer_id="p") as q:
            q.enqueue_encode(["a victim's memory"])
        before = _snapshot(raw)  # keys due to expire soon (other tests') left out
        commands = [
            ["status"], ["status", "--json"], ["check", "--any"], ["dead", "list"], ["dead", "purge"],
            ["dead", "requeue"], ["drain", "--all", "--timeout", "0.1"], ["retention", "list"],
            ["retention", "set", "/x", "--days", "1"], ["retention", "clear", "/kept"], ["migrate"],
            ["migrate", "--dry-run"],
        ]
        for argv in commands:
            code = main(["--url", plain_server.url, "--namespace", ns, *argv])
            out = capsys.readouterr()
            assert code == EXIT_USAGE, (argv, code, out)
            assert "namespace" in out.err, (argv, out.err)
            for line in (out.out + out.err).splitlines():
                assert line.isprintable(), (argv, repr(line[:200]))
            assert len(out.err) < 1000, (argv, len(out.err))
        assert _snapshot(raw) == before
        with ValkeyStore(Settings.from_url(plain_server.url, namespace=victim, search_mode="exact")) as store:
            assert store.retention() == {"/kept": 3}
            store.reset()
    finally:
        raw.close()


def test_reshard_refuses_a_hostile_namespace_before_touching_the_cluster(cluster_plain_server, capsys) -> None:
    """``reshard --namespace 'a*'`` (or a hash tag of another namespace's slot) is a
    usage error: no slot is computed from it and nothing moves."""
    target = f"127.0.0.1:{cluster_plain_server.port}"
    for ns in ("a*", "{a}", "a}b{c", "a\n"):
        code = main(["--url", cluster_plain_server.url, "--namespace", ns, "reshard", "--to", target])
        out = capsys.readouterr()
        assert code == EXIT_USAGE, (ns, code, out)
        assert "namespace" in out.err and "\x1b" not in out.err


@pytest.mark.parametrize(
    "scope",
    ["/a\n\x1b[2Jb", "/" + "x" * 100_000],
    ids=["newline-escape", "huge"],
)
def test_retention_set_refuses_a_hostile_scope_as_a_usage_error(plain_server, namespace, scope, capsys) -> None:
    """A bad argument is a usage error (cli.EXIT_USAGE: "Bad arguments or
    configuration"), its message names the field, prints on one short printable line,
    and nothing is written."""
    try:
        code = main(["--url", plain_server.url, "--namespace", namespace, "retention", "set", scope, "--days", "2"])
    except SystemExit as exc:  # refused by the argument parser
        code = exc.code
    out = capsys.readouterr()
    assert "scope" in out.err, out.err[:300]
    for line in (out.out + out.err).splitlines():
        assert line.isprintable(), repr(line[:200])
    assert len(out.err) < 1000, len(out.err)
    with ValkeyStore(Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")) as store:
        assert store.retention() == {}
    assert code == EXIT_USAGE, (code, out.err[:300])


def test_the_metrics_server_bounds_the_connections_a_silent_peer_holds(plain_server, namespace, monkeypatch, tmp_path) -> None:
    """``/metrics`` listens on every interface by default (for Prometheus in another
    container). prometheus_client's server started a thread per connection and never
    dropped a silent one: 200 half-sent requests held 200 threads for good (review
    helper-97), and enough of them stop a worker process from starting any thread.
    Now at most ``METRICS_CONNECTIONS`` are served at once (the others are closed at
    once), each is dropped after ``METRICS_IDLE_S``, and scrapes work again."""
    import socket
    import threading

    from memworker import metrics

    monkeypatch.setattr(metrics, "METRICS_IDLE_S", 1.0)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    port = free_port()
    before = threading.active_count()
    server = metrics.serve_metrics(settings, port, "127.0.0.1")
    peers = []
    try:
        for _ in range(200):
            peer = socket.create_connection(("127.0.0.1", port), timeout=5)
            peer.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            peers.append(peer)
        time.sleep(0.5)
        held = threading.active_count() - before
        # a handler and its deadline per connection served, and the serving thread
        assert held <= 2 * metrics.METRICS_CONNECTIONS + 1, held
        deadline = time.monotonic() + 30
        while threading.active_count() - before > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert threading.active_count() - before <= 1  # the silent ones were dropped
        assert "memworker_valkey_up" in _scrape(port)
    finally:
        for peer in peers:
            peer.close()
        server.shutdown()
        server.server_close()


def test_peers_that_trickle_bytes_do_not_hold_the_metrics_server(plain_server, namespace, monkeypatch, tmp_path) -> None:
    """A peer that sends one header byte now and then never goes silent for
    ``METRICS_IDLE_S``: 16 of them held every connection slot for as long as they
    trickled, and every scrape was refused (review helper-98). A connection gets
    ``METRICS_IDLE_S`` in all, so a scrape gets through once theirs are up."""
    import socket
    import threading

    from memworker import metrics

    monkeypatch.setattr(metrics, "METRICS_IDLE_S", 3.0)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    port = free_port()
    server = metrics.serve_metrics(settings, port, "127.0.0.1")
    stop = threading.Event()
    peers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(metrics.METRICS_CONNECTIONS)]

    def trickle() -> None:
        while not stop.wait(0.05):  # far under the 3 s a silent peer gets
            for peer in peers:
                try:
                    peer.send(b"X")
                except OSError:
                    pass

    for peer in peers:
        peer.send(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 15
        text = None
        while text is None and time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        assert text is not None and "memworker_valkey_up" in text, "no scrape got through in 15 s"
    finally:
        stop.set()
        feeder.join(5)
        for peer in peers:
            peer.close()
        server.shutdown()
        server.server_close()
