"""Hostile review (import-lancedb and tracing), on a real Valkey server.

1. ``import_lancedb`` / ``memworker import-lancedb`` fed a LanceDB table whose rows were
   written by hand (corrupt JSON columns, NULLs, garbage timestamps, missing columns,
   repeated ids, a bad row on a later page): each bad row should be refused with a
   memworker error naming the row (its id) and the field, nothing half-written, the CLI
   printing one clear line (no traceback, no terminal escape sequence).
2. A message whose ``trace`` option was crafted in Valkey: the job commits on the
   batched and the per-message path, with and without an OpenTelemetry SDK, and no
   raw control character of the option reaches the worker's log.

Tests that fail on the current code say in their docstring what is wrong.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("crewai")
lancedb = pytest.importorskip("lancedb")

import memworker.crewai.lancedb as lance_mod  # noqa: E402
from memworker import ValkeyStore  # noqa: E402
from memworker.errors import MemworkerError  # noqa: E402
from memworker.settings import Settings  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
MODEL_ID = "hostile-test-model"


def _row(i: int, **changes: Any) -> dict[str, Any]:
    """A LanceDB row as CrewAI's LanceDBStorage writes it (4-dim vector)."""
    row = {
        "id": f"r{i}", "content": f"text {i}", "scope": "/s", "categories_str": "[]",
        "metadata_str": "{}", "importance": 0.5, "created_at": f"2024-01-01T00:00:{i % 60:02d}",
        "last_accessed": "2024-01-01T00:00:00", "source": "", "private": False,
        "vector": [0.1, 0.2, 0.3, 0.4],
    }  # fmt: skip
    row.update(changes)
    return row


def _table(path: Path, rows: list[dict[str, Any]], table: str = "memories") -> Path:
    lancedb.connect(str(path)).create_table(table, rows)
    return path


def _settings(plain_server, namespace: str) -> Settings:
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def target(plain_server, namespace):
    """``(settings, store)`` of a fresh namespace; its keys deleted after the test."""
    settings = _settings(plain_server, namespace)
    store = ValkeyStore(settings)
    yield settings, store
    try:
        store.reset()
    finally:
        store.close()


def _import(path: Path, settings: Settings, **kw: Any) -> int:
    return lance_mod.import_lancedb(path, settings, keep_vectors=True, model_id=MODEL_ID, **kw)


# ----------------------------------------------------------------------------- all or nothing
def test_a_bad_row_on_a_later_page_leaves_nothing_written(target, tmp_path, monkeypatch) -> None:
    """DEFECT: the import validates and writes page by page (``PAGE`` records per
    ``store.save``), so a bad row on page 2 is refused after page 1 was written: the
    namespace is left half-imported. Expected: every row validated before the first
    write (or a documented resume), nothing written when the import is refused."""
    settings, store = target
    monkeypatch.setattr(lance_mod, "PAGE", 2)
    # newest first: r5..r2 on pages 1-2, the bad (oldest) row on page 3
    path = _table(tmp_path / "lance", [_row(5), _row(4), _row(3), _row(2), _row(1, scope="")])
    with pytest.raises(MemworkerError):
        _import(path, settings)
    assert store.count() == 0, [r.id for r in store.list_records(limit=10)]


def test_repeated_ids_are_refused_whatever_the_page(target, tmp_path, monkeypatch) -> None:
    """DEFECT: two rows with one id are refused when they fall on one page ("id 'same'
    appears more than once in one batch") but silently merged when they fall on two:
    the older row overwrites the newer, the import reports 3 records and 2 are stored.
    Expected: the same answer whatever the page size (refuse, naming the id, nothing
    written; or keep one documented winner and report the count actually stored)."""
    settings, store = target
    monkeypatch.setattr(lance_mod, "PAGE", 2)
    path = _table(tmp_path / "lance", [
        _row(3, id="same", content="newer"), _row(2), _row(1, id="same", content="older"),
    ])  # fmt: skip
    try:
        n = _import(path, settings)
    except MemworkerError as exc:
        assert "same" in str(exc)
        assert store.count() == 0
        return
    assert n == store.count(), f"reported {n} imported, {store.count()} stored"


def test_rows_with_one_created_at_are_all_imported_across_pages(target, tmp_path, monkeypatch) -> None:
    """Pages are read with OFFSET ordered by ``created_at``: rows sharing one timestamp
    must still each be imported exactly once, and a re-run changes nothing."""
    settings, store = target
    monkeypatch.setattr(lance_mod, "PAGE", 2)
    rows = [_row(i, created_at="2024-01-01T00:00:00") for i in range(9)]
    path = _table(tmp_path / "lance", rows)
    assert _import(path, settings) == 9
    assert sorted(r.id for r in store.list_records(limit=50)) == sorted(r["id"] for r in rows)
    assert _import(path, settings) == 9 and store.count() == 9


def test_private_records_keep_their_source_and_rerun_is_idempotent(target, tmp_path) -> None:
    """Privacy, source, scope, categories, metadata and created_at survive the import;
    a second import rewrites the same ids (no duplicates)."""
    settings, store = target
    path = _table(tmp_path / "lance", [
        _row(1, private=True, source="alice", categories_str='["k"]', metadata_str='{"a": {"b": [1, 2]}}'),
        _row(2, private=False, source="bob"),
        _row(3, private=True, source=""),
    ])  # fmt: skip
    for _ in range(2):
        assert _import(path, settings) == 3
    assert store.count() == 3
    got = {r.id: r for r in store.list_records(limit=10)}
    assert (got["r1"].private, got["r1"].source) == (True, "alice")
    assert got["r1"].categories == ["k"] and got["r1"].metadata == {"a": {"b": [1, 2]}}
    assert got["r1"].created_at.replace(tzinfo=None) == dt.datetime(2024, 1, 1, 0, 0, 1)
    assert (got["r2"].private, got["r2"].source) == (False, "bob")
    assert got["r3"].private is True
    # a viewer other than the owner does not see alice's private record
    hits = store.search([0.1, 0.2, 0.3, 0.4], limit=10, include_private=False, viewer="bob")
    assert "r1" not in {r.id for r, _ in hits} and "r2" in {r.id for r, _ in hits}


# ----------------------------------------------------------------------------- naming the bad row
def test_a_refused_row_is_named_by_its_id(target, tmp_path) -> None:
    """DEFECT: a row the store refuses is named ``records[0].scope`` — its index in
    the current page of rows read newest first, which the user cannot map back to
    a LanceDB row. Expected: the error names the row's id (and the field)."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(2), _row(1, id="row-with-bad-scope", scope="/a\nb")])
    with pytest.raises(MemworkerError) as info:
        _import(path, settings)
    assert "scope" in str(info.value)
    assert "row-with-bad-scope" in str(info.value), str(info.value)
    assert store.count() == 0


CORRUPT = {
    "categories-not-json": {"categories_str": "not json"},
    "categories-not-strings": {"categories_str": "[1, 2]"},
    "metadata-not-json": {"metadata_str": "{bad"},
    "metadata-a-list": {"metadata_str": "[1, 2]"},
    "created_at-garbage": {"created_at": "garbage"},
    "created_at-empty": {"created_at": ""},
    "importance-out-of-range": {"importance": 5.0},
}
FIELD = {"categories": "categories", "metadata": "metadata", "created_at": "created_at", "importance": "importance"}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_column_is_a_validation_error_naming_row_and_field(target, tmp_path, case) -> None:
    """DEFECT: corrupt JSON columns, a garbage ``created_at`` or an out-of-range
    importance escape as ``json.JSONDecodeError`` / ``ValueError`` / pydantic's
    ``ValidationError`` raised by CrewAI's ``LanceDBStorage._row_to_record`` inside
    ``list_records`` — not a memworker error, no row id, often no field name (the CLI
    then dies with a traceback). Expected: a memworker ``ValidationError`` naming the
    row id and the field; nothing written."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(2), _row(1, id="the-corrupt-row", **CORRUPT[case])])
    with pytest.raises(Exception) as info:
        _import(path, settings)
    field = FIELD[case.split("-")[0]]
    assert isinstance(info.value, MemworkerError), f"{type(info.value).__module__}.{type(info.value).__name__}: {info.value}"
    assert "the-corrupt-row" in str(info.value) and field in str(info.value), str(info.value)
    assert store.count() == 0


@pytest.mark.parametrize("column", ["id", "content", "scope"])
def test_a_null_column_is_not_imported_as_the_text_none(target, tmp_path, column) -> None:
    """DEFECT: a NULL ``id``, ``content`` or ``scope`` is turned into the string
    ``"None"`` by ``str(row[...])`` in CrewAI's ``_row_to_record``, and imported: a
    record with id ``None``, content ``"None"`` or scope ``/None``. Expected: the row
    refused (naming the row and the column), never a record made of the text "None"."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(2), _row(1, **{column: None})])
    try:
        _import(path, settings)
    except MemworkerError as exc:
        assert column in str(exc)
        return
    stored = store.list_records(limit=10)
    assert not [r for r in stored if "None" in (r.id, r.content, r.scope, r.scope.strip("/"))], [
        (r.id, r.content, r.scope) for r in stored
    ]


def test_a_null_created_at_is_not_replaced_by_the_import_time(target, tmp_path) -> None:
    """DEFECT: a NULL ``created_at`` becomes ``datetime.utcnow()`` (CrewAI's
    ``_parse_dt``): the record is imported as created now, its age (retention, recency
    ranking) silently reset, although the docs say records keep their timestamps.
    Expected: the row refused naming it and ``created_at`` (or a documented fallback)."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(2), _row(1, created_at=None)])
    try:
        _import(path, settings)
    except MemworkerError as exc:
        assert "created_at" in str(exc) and "r1" in str(exc)
        return
    r1 = store.get_record("r1")
    assert r1 is None or r1.created_at.year < 2025, f"r1 imported as created at {r1.created_at}"


@pytest.mark.parametrize("column", ["id", "content", "scope", "created_at"])
def test_a_table_without_a_required_column_is_a_clear_error(target, tmp_path, column) -> None:
    """DEFECT: a table without ``id``/``content``/``scope`` fails with a bare
    ``KeyError: 'id'`` and one without ``created_at`` with lancedb's ``ValueError``
    ("Column created_at not found") — neither a memworker error (the CLI prints a
    traceback). Expected: ConfigError/ValidationError saying the table is not a CrewAI
    memory table and naming the missing column."""
    settings, store = target
    row = _row(1)
    row.pop(column)
    path = _table(tmp_path / "lance", [row])
    with pytest.raises(Exception) as info:
        _import(path, settings)
    assert isinstance(info.value, MemworkerError), f"{type(info.value).__name__}: {info.value}"
    assert column in str(info.value)
    assert store.count() == 0


@pytest.mark.parametrize("where", ["empty-folder", "unknown-table"])
def test_no_lancedb_memory_is_a_config_error_not_zero_records(target, tmp_path, where) -> None:
    """DEFECT: ``import_lancedb`` documents ``ConfigError`` when "the folder has no
    LanceDB memory", but an empty folder, or a ``--table`` name that does not exist,
    imports 0 records and reports success (CrewAI's LanceDBStorage just leaves its
    table None; lancedb.py:66-67 never checks). A typo in the path or table name
    looks like a successful, empty migration. Expected: ConfigError naming the
    folder/table."""
    settings, store = target
    if where == "empty-folder":
        path, table = tmp_path / "empty", "memories"
        path.mkdir()
    else:
        path, table = _table(tmp_path / "lance", [_row(1)]), "no_such_table"
    with pytest.raises(MemworkerError):
        n = _import(path, settings, table=table)
        print(f"imported {n} record(s)")


# ----------------------------------------------------------------------------- the CLI
def test_cli_reports_a_corrupt_row_in_one_line_without_escapes(plain_server, namespace, tmp_path) -> None:
    """DEFECT: ``memworker import-lancedb`` on a table with a corrupt ``categories_str``
    dies with a Python traceback (``json.JSONDecodeError`` is neither a MemworkerError
    nor a Valkey client error, so cli.py main() re-raises it). Expected: exit code 1,
    one ``memworker import-lancedb: ...`` line naming the row id and the field, no
    traceback, and no raw terminal escape sequence from the data in the output."""
    path = _table(tmp_path / "lance", [
        _row(2), _row(1, id="cli-bad-row", categories_str="\x1b[2J\x1b]0;pwned\x07 not json"),
    ])  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", CREWAI_TESTING="true")
    proc = subprocess.run(
        [sys.executable, "-m", "memworker.cli", "--url", plain_server.url, "--namespace", namespace,
         "import-lancedb", str(path), "--keep-vectors", "--model-id", MODEL_ID],
        env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    try:
        assert b"\x1b" not in proc.stdout + proc.stderr and b"\x07" not in proc.stdout + proc.stderr
        assert proc.returncode == 1, out[-2000:]
        assert "Traceback" not in out, out[-2000:]
        assert "cli-bad-row" in out and "categories" in out, out[-2000:]
    finally:
        with ValkeyStore(_settings(plain_server, namespace)) as store:
            count = store.count()
            store.reset()
    assert count == 0


# ----------------------------------------------------------------------------- tracing
GOOD_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("carrier", [
    {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},  # forbidden version
    {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},  # invalid trace id
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"},  # invalid span id
    {"traceparent": GOOD_PARENT, "tracestate": ",".join(f"k{i}=v" for i in range(100))},  # > 32 members
    {"traceparent": GOOD_PARENT, "tracestate": None},
    {"traceparent": GOOD_PARENT, "tracestate": ["a=b"]},
    {"traceparent": GOOD_PARENT, "extra": {"deep": [[[1]]]}},
    {"traceparent": None},
    {"TRACEPARENT": GOOD_PARENT},
], ids=lambda c: repr(c)[:40])
def test_extract_never_raises_and_yields_no_valid_parent_from_bad_ids(carrier) -> None:
    """Crafted ``trace`` options the regex lets through (forbidden version, all-zero
    ids, oversized or non-string tracestate) never raise; all-zero ids or version ff
    give no valid parent."""
    from memworker.tracing import extract

    ctx = extract(carrier)
    if ctx is None:
        return
    from opentelemetry import trace

    sc = trace.get_current_span(ctx).get_span_context()
    bad_ids = "-0000000000000000-" in carrier.get("traceparent", "") or "0" * 32 in carrier.get("traceparent", "")
    if carrier.get("traceparent", "").startswith("ff-") or bad_ids:
        assert not sc.is_valid


def _worker(url: str, namespace: str, log: Path, sdk: bool, trace_file: Path, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", MEMWORKER_EMBEDDER="chaos_embedder:make",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS / "chaos"), os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip
    for name in ("MEMWORKER_OTEL_SETUP", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    if sdk:
        env.update(MEMWORKER_OTEL_SETUP="otel_file:setup", MEMWORKER_TRACE_FILE=str(trace_file))
    return subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", namespace, "worker",
         "--processes", "1", "--threads", "2", *args],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


CRAFTED_TRACES = {
    # a W3C traceparent with a tracestate of control characters (a forged log line)
    "forged-state": {"traceparent": GOOD_PARENT, "tracestate": "k=\x1b[2J\x1b[31m\nFORGED-LOG-LINE ERROR x=1"},
    "not-a-dict": ["traceparent", GOOD_PARENT],
    "huge-string": "\x1b[2J" + "t" * 100_000,
    "non-strings": {"traceparent": 12, "tracestate": {"a": [1, 2]}},
    "bad-traceparent": {"traceparent": "00-\x1b[2J-" + "f" * 200, "tracestate": "k=v"},
}


@pytest.mark.parametrize(("sdk", "path"), [(True, "batched"), (False, "per-message")], ids=["sdk-batched", "no-sdk-per-message"])
def test_crafted_trace_options_commit_and_never_reach_the_log_raw(plain_server, namespace, tmp_path, sdk, path) -> None:
    """A job per crafted ``trace`` option (not a dict, huge, non-string values, a
    malformed traceparent, a tracestate of control characters) commits once, on the
    batched and the per-message path, with and without an SDK.

    DEFECT: the tracestate of the first one (``k=\\x1b[2J...\\nFORGED-LOG-LINE``, under
    the 512-character cap) is passed by ``memworker.tracing.extract`` (tracing.py,
    the ``TraceContextTextMapPropagator().extract`` call) to OpenTelemetry, whose
    ``TraceState.from_header`` logs "Member doesn't match the w3c identifiers format"
    with the raw member: escape sequences and a forged log line reach the worker's
    log, SDK or not (extract runs for every message in middleware.py
    before_process_message). Expected: a tracestate not matching the W3C grammar is
    dropped by memworker before OpenTelemetry sees it (or the ``opentelemetry``
    loggers are filtered like dramatiq's)."""
    import redis

    from memworker.io.scripts import script_source
    from memworker.keys import QueueKeys
    from memworker.queue.jobs import ENCODE_ACTOR, build_message, embed_items
    from memworker.queue.producer import MemoryQueue, enqueue_step

    log = tmp_path / "worker.log"
    args = ("--inflight-records", "0") if path == "per-message" else ()
    worker = _worker(plain_server.url, namespace, log, sdk, tmp_path / "spans.jsonl", *args)
    keys = QueueKeys(namespace)
    jobs = []
    try:
        client = redis.Redis(port=plain_server.port)
        for name, trace in CRAFTED_TRACES.items():
            job = f"job-{name}"
            items = embed_items([f"a text with a crafted trace {name}"], 10)
            redis_id, data = build_message(ENCODE_ACTOR, job, "p", items, 1 << 20, trace=trace)
            step = enqueue_step(keys, "p", job, redis_id, data)
            client.eval(script_source(step.name)[0], 1, f"{{{namespace}}}:meta", *step.args)
            jobs.append(job)
        client.close()
        with MemoryQueue(plain_server.url, namespace=namespace, producer_id="p") as q:
            report = q.drain(timeout=60, job_ids=jobs)
            assert report.committed == len(jobs), report
    finally:
        worker.terminate()
        code = worker.wait(60)
        with ValkeyStore(_settings(plain_server, namespace)) as store:
            count = store.count()
            store.reset()
    text = log.read_bytes()
    assert code == 0, text[-3000:]
    assert count == len(jobs)
    assert b"Exception in thread" not in text and b"Traceback" not in text, text[-3000:]
    assert b"\x1b" not in text, [line for line in text.splitlines() if b"\x1b" in line][:3]
    assert not [line for line in text.splitlines() if line.startswith(b"FORGED-LOG-LINE")]
