"""Hostile review of ``memworker.crewai.import_lancedb`` / ``memworker import-lancedb``
(helper-87), on real Valkey servers.

LanceDB tables are built two ways: with CrewAI's own ``LanceDBStorage`` (what a real
migration reads), and row by row with ``lancedb`` (columns CrewAI would never write:
hostile ids and scopes, broken JSON, odd timestamps, vectors of several dimensions in
a variable-length ``vector`` column). The import's docstring promises: every row
converted and validated before the first write; a bad row stops the import with a
``ValidationError`` naming the row's id and the column, nothing written; re-running is
idempotent; privacy, source and scopes are kept. After an import, what the store and
a ``QueuedMemory`` (CrewAI's API on the namespace) show is compared with what CrewAI's
own storage shows, and a private record must never reach another source's recall.

Tests that fail on the current code say in their docstring what is wrong.
Lone surrogates cannot be tested: Arrow refuses to store them (UnicodeEncodeError in
pyarrow), so no LanceDB table can hold one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("crewai")
lancedb = pytest.importorskip("lancedb")
pa = pytest.importorskip("pyarrow")

import memworker.crewai.lancedb as lance_mod  # noqa: E402
from memworker import ValkeyStore  # noqa: E402
from memworker.crewai import QueuedMemory  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import ConfigError, ValidationError  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from test_import_trace_hostile import _row  # noqa: E402  (a row as CrewAI's LanceDBStorage writes it)

MODEL_ID = "helper87-test-model"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false", CREWAI_TESTING="true")

#: CrewAI's memory table, but with a variable-length ``vector`` column (and every
#: column nullable): lets a test write vectors of several dimensions, or NULL ones.
SCHEMA = pa.schema([
    ("id", pa.string()), ("content", pa.string()), ("scope", pa.string()),
    ("categories_str", pa.string()), ("metadata_str", pa.string()), ("importance", pa.float64()),
    ("created_at", pa.string()), ("last_accessed", pa.string()), ("source", pa.string()),
    ("private", pa.bool_()), ("vector", pa.list_(pa.float32())),
])  # fmt: skip


def _table(path: Path, rows: list[dict[str, Any]], table: str = "memories") -> Path:
    """A LanceDB table of ``rows`` written with lancedb directly (schema :data:`SCHEMA`)."""
    tbl = lancedb.connect(str(path)).create_table(table, schema=SCHEMA, mode="overwrite")
    if rows:
        tbl.add(pa.Table.from_pylist(rows, schema=SCHEMA))
    return path


def _settings(server, namespace: str) -> Settings:
    return Settings.from_url(server.url, namespace=namespace, search_mode="module" if server.module else "exact")


@pytest.fixture
def target(plain_server, namespace):
    """``(settings, store)`` of a fresh namespace on the plain server; reset after."""
    settings = _settings(plain_server, namespace)
    store = ValkeyStore(settings)
    yield settings, store
    try:
        store.reset()
    finally:
        store.close()


@pytest.fixture
def any_target(server, namespace):
    """``target`` on each server kind (exact path and RediSearch)."""
    settings = _settings(server, namespace)
    store = ValkeyStore(settings)
    yield settings, store
    try:
        store.reset()
    finally:
        store.close()


def _import(path: Path, settings: Settings, **kw: Any) -> int:
    kw.setdefault("keep_vectors", True)
    kw.setdefault("model_id", MODEL_ID)
    return lance_mod.import_lancedb(path, settings, **kw)


def _ones(texts: list[str]) -> list[list[float]]:
    """A 4-dim embedder: every query near every stored test vector (all positive)."""
    return [[1.0, 1.0, 1.0, 1.0] for _ in texts]


def _memory(settings: Settings) -> QueuedMemory:
    """CrewAI's API on the imported namespace (no worker needed: nothing is enqueued)."""
    return QueuedMemory(storage=ValkeyStore(settings), embedder=_ones, model_id=MODEL_ID,
                        llm=StandInLLM(), drain_timeout=10)  # fmt: skip


def _refused(path: Path, settings: Settings, store: ValkeyStore, rid: str, column: str, **kw: Any) -> str:
    """Import ``path``: must raise a ``ValidationError`` naming ``rid`` and ``column``,
    with nothing written. Returns the message."""
    with pytest.raises(Exception) as info:
        _import(path, settings, **kw)
    message = str(info.value)
    assert isinstance(info.value, ValidationError), f"{type(info.value).__name__}: {message[:300]}"
    assert rid in message and column in message, message[:300]
    assert store.count() == 0, sorted(r.id for r in store.list_records(limit=20))
    return message


# ============================================================================ all or nothing
def test_a_zero_vector_of_another_dimension_on_a_later_page_leaves_nothing_written(target, tmp_path) -> None:
    """DEFECT: with ``keep_vectors``, the pre-check skips zero vectors when it compares
    dimensions (lancedb.py ``if vector and any(vector)``), but the store checks a zero
    vector's dimension like any other (codec.to_row: "a vector of zeros keeps its
    dimension"). A table whose last row is an 8-dim zero vector among 4-dim vectors
    passes the pre-check, page 1 (256 records) is written, and page 2 fails with
    CrewAI's ``EmbeddingDimensionMismatchError`` naming no row. Expected, per the
    docstring ("vectors of two dimensions ... nothing is written"): a ValidationError
    naming the row before the first write, or the zero vector imported as a record
    without an embedding (its dimension ignored) - never a half-written namespace."""
    settings, store = target
    rows = [_row(i) for i in range(lance_mod.PAGE + 40)] + [_row(9999, id="zero-8", vector=[0.0] * 8)]
    path = _table(tmp_path / "lance", rows)
    try:
        n = _import(path, settings)
    except ValidationError as exc:
        assert store.count() == 0, f"refused ({exc}) after {store.count()} records were written"
        assert "zero-8" in str(exc), str(exc)[:300]
        return
    assert n == len(rows) == store.count()
    assert store.get_record("zero-8") is not None


def test_a_zero_vector_of_another_dimension_on_one_page_names_the_row(target, tmp_path) -> None:
    """DEFECT: the same zero vector on the first page: nothing is written, but the
    error is the store's dimension error ("the current embedder produced a 8-dimensional
    vector"), which names no row or column. Expected: the row's id and ``vector``
    named, as for any bad row (or the row imported without an embedding)."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(1), _row(2, id="zero-8", vector=[0.0] * 8)])
    try:
        n = _import(path, settings)
    except ValidationError as exc:
        assert store.count() == 0
        assert "zero-8" in str(exc) and "vector" in str(exc), str(exc)[:300]
        return
    assert n == 2 == store.count()


def test_vectors_the_namespace_refuses_leave_nothing_written(target, tmp_path) -> None:
    """DEFECT: the pre-check never compares the kept vectors with the dimension the
    namespace already stores. Into a namespace holding 8-dim vectors, a table whose
    first page has no vectors (NULL) and whose last row has a 4-dim vector: page 1 is
    written (256 records added), then the store refuses page 2 with its dimension
    error. Expected (docstring: "anything the store refuses ... nothing is written"):
    refused before the first write; the namespace keeps only its own record."""
    settings, store = target
    store.save([{"id": "existing", "content": "already here", "scope": "/p", "embedding": [1.0] * 8}])
    rows = [_row(i, vector=None) for i in range(lance_mod.PAGE + 10)] + [_row(9999, id="dim-4")]
    path = _table(tmp_path / "lance", rows)
    with pytest.raises(ValidationError):
        _import(path, settings)
    assert store.count() == 1, f"{store.count() - 1} records of the refused import were written"


def test_big_table_with_only_its_last_row_bad_writes_nothing_then_imports_whole(target, tmp_path) -> None:
    """2,000+ rows over several pages, only the last one bad (NaN importance):
    refused naming it, nothing written, no progress reported. Once the row is removed
    from the table, everything is imported, progress ends at (n, n), and a re-run
    rewrites the same ids (count and scope counters unchanged)."""
    settings, store = target
    n_good = 2 * lance_mod.PAGE * 4 + 3  # 2051
    rows = [_row(i, id=f"big-{i}", scope=f"/big/{i % 7}") for i in range(n_good)]
    rows.append(_row(n_good, id="the-last-bad-row", importance=float("nan")))
    path = _table(tmp_path / "lance", rows)
    seen: list[tuple[int, int]] = []
    _refused(path, settings, store, "the-last-bad-row", "importance", progress=lambda d, t: seen.append((d, t)))
    assert seen == []
    lancedb.connect(str(path)).open_table("memories").delete("id = 'the-last-bad-row'")
    for _ in range(2):
        seen.clear()
        assert _import(path, settings, progress=lambda d, t: seen.append((d, t))) == n_good
        assert seen[-1] == (n_good, n_good)
        assert store.count() == n_good
        assert store.count("/big/3") == sum(1 for i in range(n_good) if i % 7 == 3)
    assert store.get_record("big-2050").scope == "/big/" + str(2050 % 7)


def test_an_empty_table_imports_nothing(target, tmp_path) -> None:
    settings, store = target
    seen: list[tuple[int, int]] = []
    assert _import(_table(tmp_path / "lance", []), settings, progress=lambda d, t: seen.append((d, t))) == 0
    assert store.count() == 0 and store.list_records(limit=5) == []


# ============================================================================ bad rows, named
DEEP = 3000  # deeper than the JSON decoder's recursion limit


@pytest.mark.parametrize("column,text", [
    ("metadata_str", '{"a":' * DEEP + "1" + "}" * DEEP),
    ("metadata_str", '{"a":' + "[" * DEEP + "]" * DEEP + "}"),
    ("categories_str", "[" * DEEP + "]" * DEEP),
])  # fmt: skip
def test_deeply_nested_json_is_a_validation_error_naming_the_row(target, tmp_path, column, text) -> None:
    """DEFECT: a JSON column nested deeper than Python's recursion limit makes
    ``json.loads`` raise ``RecursionError``, which ``_json`` (lancedb.py, ``except
    ValueError``) lets through: the import dies with a bare RecursionError, no row id,
    no column. Expected: ``ValidationError`` naming the row and the column (metadata
    deeper than 32 levels is refused anyway: MAX_METADATA_DEPTH), nothing written."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(1), _row(2, id="deep-json-row", **{column: text})])
    _refused(path, settings, store, "deep-json-row", column.removesuffix("_str"))


BAD_CELLS = {
    "id-newline": ("a\nb", {}, "id"),
    "id-too-long": ("x" * 257, {}, "id"),
    "id-empty": ("", {}, "id"),
    "scope-double-slash": ("s1", {"scope": "/a//b"}, "scope"),
    "scope-empty": ("s2", {"scope": ""}, "scope"),
    "scope-33-levels": ("s3", {"scope": "/l" * 33}, "scope"),
    "scope-control": ("s4", {"scope": "/a\x1b[2Jb"}, "scope"),
    "metadata-huge": ("m1", {"metadata_str": json.dumps({"k": "v" * 70_000})}, "metadata"),
    "metadata-list": ("m2", {"metadata_str": "[1, 2]"}, "metadata"),
    "metadata-number": ("m3", {"metadata_str": "7"}, "metadata"),
    "metadata-null": ("m4", {"metadata_str": "null"}, "metadata"),
    "metadata-nan": ("m5", {"metadata_str": '{"a": NaN}'}, "metadata"),
    "metadata-infinity": ("m6", {"metadata_str": '{"a": [Infinity]}'}, "metadata"),
    "metadata-33-levels": ("m7", {"metadata_str": '{"a":' * 33 + "1" + "}" * 33}, "metadata"),
    "metadata-range-key-huge-int": ("m8", {"metadata_str": '{"=n": ' + "9" * 400 + "}"}, "metadata"),
    "categories-object": ("c1", {"categories_str": '{"a": 1}'}, "categories"),
    "categories-string": ("c2", {"categories_str": '"a"'}, "categories"),
    "categories-null-entry": ("c3", {"categories_str": "[null]"}, "categories"),
    "categories-65": ("c4", {"categories_str": json.dumps([f"c{i}" for i in range(65)])}, "categories"),
    "importance-negative": ("i1", {"importance": -0.01}, "importance"),
    "importance-above-one": ("i2", {"importance": 1.5}, "importance"),
    "importance-nan": ("i3", {"importance": float("nan")}, "importance"),
    "created-aware-before-year-1": ("t1", {"created_at": "0001-01-01T00:00:00+05:00"}, "created_at"),
    "created-aware-after-9999": ("t2", {"created_at": "9999-12-31T23:59:59-05:00"}, "created_at"),
    "created-not-a-time": ("t3", {"created_at": "yesterday"}, "created_at"),
    "created-null": ("t4", {"created_at": None}, "created_at"),
    "accessed-not-a-time": ("t5", {"last_accessed": "2024-13-01"}, "last_accessed"),
    "content-null": ("n1", {"content": None}, "content"),
    "vector-nan": ("v1", {"vector": [0.1, float("nan"), 0.3, 0.4]}, "embedding"),
    "vector-8-dims": ("v2", {"vector": [0.1] * 8}, "vector"),
}


@pytest.mark.parametrize("case", list(BAD_CELLS))
def test_a_bad_row_is_refused_naming_it_and_nothing_is_written(target, tmp_path, case) -> None:
    """Each hostile cell (placed on the last row, after a good one) stops the import
    with a ValidationError naming the row's id and the column; nothing is written."""
    settings, store = target
    rid, changes, column = BAD_CELLS[case]
    path = _table(tmp_path / "lance", [_row(1, id="good-first"), _row(2, id=rid, **changes)])
    if not rid or "\n" in rid or len(rid) > 256:
        # an id the store refuses: named as shown (escaped, cut), and as "id"
        with pytest.raises(ValidationError) as info:
            _import(path, settings)
        assert "id" in str(info.value) and "\n" not in str(info.value), str(info.value)[:300]
        assert store.count() == 0
        return
    _refused(path, settings, store, rid, column)


def test_repeated_id_across_pages_is_refused(target, tmp_path) -> None:
    settings, store = target
    rows = [_row(i, id=f"d{i}") for i in range(lance_mod.PAGE + 5)] + [_row(0, id="d3", content="second d3")]
    _refused(_table(tmp_path / "lance", rows), settings, store, "d3", "")


# ============================================================================ hostile but valid
ODD_IDS = [
    "*", "a*b?", "[x]", "{hash}", "{", "}", "a\\b", "it's", 'say "hi"', "100%", "a b", "-", "@id:x",
    "é€😀", "\u202eRTL", "x" * 256, "a/b/../c", "ns:meta", "0",
]


def test_odd_ids_are_imported_and_each_reachable(any_target, tmp_path) -> None:
    """Ids with glob, brace, quote, escape and query characters, unicode, the
    longest accepted: every one imported, read back by its id, listed and found by a
    QueuedMemory recall; a re-run rewrites them."""
    settings, store = any_target
    rows = [_row(i, id=rid, content=f"odd id {i}", vector=[0.1 + i, 0.2, 0.3, 0.4]) for i, rid in enumerate(ODD_IDS)]
    path = _table(tmp_path / "lance", rows)
    for _ in range(2):
        assert _import(path, settings) == len(ODD_IDS)
        assert store.count() == len(ODD_IDS)
    for i, rid in enumerate(ODD_IDS):
        record = store.get_record(rid)
        assert record is not None and record.content == f"odd id {i}", rid
    assert sorted(r.id for r in store.list_records(limit=100)) == sorted(ODD_IDS)
    memory = _memory(settings)
    try:
        got = {m.record.id for m in memory.recall("odd id", depth="shallow", limit=100)}
        assert got == set(ODD_IDS), set(ODD_IDS) ^ got
    finally:
        memory.close()


ODD_SCOPES = {
    "no-slash": ("a/b", "/a/b"),
    "trailing-slash": ("/t/u/", "/t/u"),
    "dot-dot": ("/p/../q", "/p/../q"),
    "star": ("/g*", "/g*"),
    "question": ("/g?", "/g?"),
    "brackets": ("/[g]", "/[g]"),
    "braces": ("/{g}", "/{g}"),
    "percent": ("/g%", "/g%"),
    "space": ("/g h", "/g h"),
    "quote": ("/g'h", "/g'h"),
    "deep-32": ("/d" * 32, "/d" * 32),
    "unicode": ("/é/😀", "/é/😀"),
}


def test_odd_scopes_are_kept_and_listed_by_their_own_scope_only(any_target, tmp_path) -> None:
    """Scopes with glob characters, ``..``, no leading slash, 32 levels: imported in
    canonical form (as memworker's store and CrewAI's Memory write them), each listed
    by a ``list_records``/``info`` of its own scope - and a glob character is not a
    wildcard (``/g*`` does not list ``/gx``)."""
    settings, store = any_target
    rows = [_row(i, id=name, scope=raw) for i, (name, (raw, _)) in enumerate(ODD_SCOPES.items())]
    rows.append(_row(99, id="plain-gx", scope="/gx"))
    path = _table(tmp_path / "lance", rows)
    assert _import(path, settings) == len(rows)
    memory = _memory(settings)
    try:
        for name, (_, canonical) in ODD_SCOPES.items():
            assert store.get_record(name).scope == canonical, name
            listed = [r.id for r in memory.list_records(scope=canonical, limit=50)]
            assert listed == [name], (name, canonical, listed)
            assert memory.info(canonical).record_count == 1, (name, canonical)
    finally:
        memory.close()


# ============================================================================ fidelity, privacy
def _crewai_table(path: Path) -> list[Any]:
    """A table written by CrewAI's own LanceDBStorage; returns the records saved."""
    from crewai.memory.storage.lancedb_storage import LanceDBStorage
    from crewai.memory.types import MemoryRecord

    storage = LanceDBStorage(path=str(path), vector_dim=4, compact_every=0)
    t0 = dt.datetime(2020, 5, 17, 8, 30, 15, 123456)
    records = [
        MemoryRecord(id="alice-secret", content="alice private note", scope="/team/alice", categories=["k", "é"],
                     metadata={"n": {"deep": [1, 2.5, None, True]}, "=rank": 3}, importance=0.9,
                     created_at=t0, last_accessed=t0 + dt.timedelta(days=1), source="alice", private=True,
                     embedding=[1.0, 0.0, 0.0, 0.0]),
        MemoryRecord(id="bob-public", content="bob public note", scope="/team/bob", importance=0.0,
                     created_at=dt.datetime(2999, 1, 1), source="bob", embedding=[0.0, 1.0, 0.0, 0.0]),
        MemoryRecord(id="nobody-private", content="private without a source", scope="/team", private=True,
                     importance=1.0, created_at=dt.datetime(1, 1, 1, 0, 0), embedding=[0.0, 0.0, 1.0, 0.0]),
        MemoryRecord(id="no-embedding", content="saved without an embedding", scope="/", embedding=None,
                     created_at=t0),
        MemoryRecord(id="carol-public", content="carol note", scope="/team/carol", source="carol",
                     created_at=t0, embedding=[0.5, 0.5, 0.5, 0.5]),
    ]  # fmt: skip
    storage.save(records)
    return records


def _fields(record: Any) -> tuple[Any, ...]:
    return (record.id, record.content, record.scope, record.categories, record.metadata, record.importance,
            record.created_at.replace(tzinfo=None), record.last_accessed.replace(tzinfo=None), record.source,
            record.private)  # fmt: skip


def test_a_crewai_lancedb_memory_is_imported_field_for_field(target, tmp_path) -> None:
    """A table written by CrewAI's LanceDBStorage: every record as CrewAI's storage
    reads it back (ids, scopes, categories, metadata, importance, both timestamps,
    source, privacy), twice (idempotent); the zero-vector record listed and counted
    but never a search hit."""
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    settings, store = target
    path = tmp_path / "lance"
    _crewai_table(path)
    crewai_view = {r.id: _fields(r) for r in LanceDBStorage(path=str(path)).list_records(limit=100)}
    assert len(crewai_view) == 5
    for _ in range(2):
        assert _import(path, settings) == 5
    ours = {r.id: _fields(r) for r in store.list_records(limit=100)}
    assert ours == crewai_view
    assert store.count() == 5 and store.count("/team") == 4
    hits = store.search([1.0, 1.0, 1.0, 1.0], limit=10)
    assert "no-embedding" not in {r.id for r, _ in hits} and len(hits) == 4


def test_private_records_never_reach_another_sources_recall(server, namespace, tmp_path) -> None:
    """After importing CrewAI's table, a QueuedMemory recall as ``bob`` never returns
    alice's private record (nor the private record without a source); as ``alice`` it
    returns hers; without a source, no private record; ``include_private=True`` all.
    The same answers as CrewAI's own Memory on the LanceDB folder, on both search paths."""
    from crewai.memory.unified_memory import Memory

    settings = _settings(server, namespace)
    path = tmp_path / "lance"
    _crewai_table(path)
    crew = Memory(storage=str(path), embedder=_ones, llm=StandInLLM())
    asks: list[dict[str, Any]] = [{"source": "bob"}, {"source": "alice"}, {}, {"source": ""}, {"include_private": True}]
    # CrewAI's own answers (LanceDB also returns the zero-vector record: docs/crewai.md)
    theirs = [{m.record.id for m in crew.recall("note", depth="shallow", limit=50, **kw)} - {"no-embedding"}
              for kw in asks]  # fmt: skip
    crew.close()
    assert _import(path, settings) == 5
    memory = _memory(settings)
    try:
        def recall(**kw: Any) -> set[str]:
            return {m.record.id for m in memory.recall("note", depth="shallow", limit=50, **kw)}

        assert [recall(**kw) for kw in asks] == theirs
        public = {"bob-public", "carol-public"}
        assert recall(source="bob") == public
        assert recall(source="carol") == public
        assert recall(source="alice") == public | {"alice-secret"}
        assert recall() == public
        assert recall(source="") == public
        assert recall(include_private=True) == public | {"alice-secret", "nobody-private"}
        scoped = {m.record.id for m in memory.recall("note", scope="/team/alice", depth="shallow", source="bob")}
        assert scoped == set()
    finally:
        memory.reset_all()
        memory.close()


def test_timestamps_far_past_future_naive_and_aware(target, tmp_path) -> None:
    """Timestamps kept: year 1 and 2999 naive, ``Z`` and ``+05:30`` turned into the
    same instant in naive UTC (as the store keeps every time), a NULL
    ``last_accessed`` taken as ``created_at``; ``list_records`` newest first."""
    settings, store = target
    rows = [
        _row(1, id="year-1", created_at="0001-01-01T00:00:00", last_accessed="0001-01-01T00:00:00"),
        _row(2, id="year-2999", created_at="2999-12-31T23:59:59.999999", last_accessed="2999-12-31T23:59:59.999999"),
        _row(3, id="zulu", created_at="2024-06-01T12:00:00Z", last_accessed="2024-06-01T12:00:00Z"),
        _row(4, id="india", created_at="2024-06-01T17:30:00.5+05:30", last_accessed=None),
        _row(5, id="date-only", created_at="2024-06-02", last_accessed="2024-06-02"),
    ]  # fmt: skip
    assert _import(_table(tmp_path / "lance", rows), settings) == 5
    got = {r.id: r for r in store.list_records(limit=10)}
    naive = {k: (v.created_at.replace(tzinfo=None), v.last_accessed.replace(tzinfo=None)) for k, v in got.items()}
    assert naive["year-1"] == (dt.datetime(1, 1, 1), dt.datetime(1, 1, 1))
    assert naive["year-2999"][0] == dt.datetime(2999, 12, 31, 23, 59, 59, 999999)
    assert naive["zulu"] == (dt.datetime(2024, 6, 1, 12), dt.datetime(2024, 6, 1, 12))
    assert naive["india"] == (dt.datetime(2024, 6, 1, 12, 0, 0, 500000),) * 2
    assert naive["date-only"][0] == dt.datetime(2024, 6, 2)
    order = [r.id for r in store.list_records(limit=10)]
    assert order == ["year-2999", "date-only", "india", "zulu", "year-1"], order


def test_zero_and_null_vectors_kept_are_records_without_an_embedding(target, tmp_path) -> None:
    """``keep_vectors`` with zero and NULL vectors: records without an embedding,
    listed and counted, never a search hit; the others found."""
    settings, store = target
    rows = [_row(1, id="zero", vector=[0.0] * 4), _row(2, id="null", vector=None), _row(3, id="real")]
    assert _import(_table(tmp_path / "lance", rows), settings) == 3
    assert store.count() == 3
    assert {r.id for r, _ in store.search([0.1, 0.2, 0.3, 0.4], limit=10)} == {"real"}
    assert store.get_record("zero").embedding in (None, [])


def test_a_langgraph_scope_row_is_refused_or_visible_to_crewai(target, tmp_path) -> None:
    """DEFECT: a CrewAI record under ``/langgraph`` (an ordinary CrewAI scope) is
    imported silently into the subtree that memworker reserves for LangGraph's
    QueuedStore. QueuedMemory refuses every write there (docs/crewai.md, "Sharing a
    namespace with LangGraph") and leaves those records out of recall and
    list_records, and forget/reset never delete them: the migrated memory vanishes
    from CrewAI's view while counted by ``info``. Expected: the import refuses the row
    (ValidationError naming the row and the scope, as ``remember`` does) - or the
    record is visible to CrewAI's API after the import."""
    settings, store = target
    path = _table(tmp_path / "lance", [_row(1, id="ok"), _row(2, id="lg-row", scope="/langgraph/notes")])
    try:
        _import(path, settings)
    except ValidationError as exc:
        assert "lg-row" in str(exc) and "scope" in str(exc), str(exc)[:300]
        assert store.count() == 0
        return
    memory = _memory(settings)
    try:
        listed = {r.id for r in memory.list_records(limit=50)}
        recalled = {m.record.id for m in memory.recall("text", depth="shallow", limit=50)}
    finally:
        memory.close()
    assert "lg-row" in listed and "lg-row" in recalled, (listed, recalled)


# ============================================================================ the CLI
def test_cli_deep_json_is_one_line_without_a_traceback(plain_server, namespace, tmp_path) -> None:
    """DEFECT: ``memworker import-lancedb`` on a table whose ``metadata_str`` is nested
    3,000 levels deep dies with a Python traceback (RecursionError is neither a
    MemworkerError nor a client error: cli.py main() re-raises it). Expected: exit 1,
    one ``memworker import-lancedb: ...`` line naming the row and the column."""
    deep = '{"a":' * DEEP + "1" + "}" * DEEP
    path = _table(tmp_path / "lance", [_row(1), _row(2, id="cli-deep-row", metadata_str=deep)])
    proc = subprocess.run(
        [sys.executable, "-m", "memworker.cli", "--url", plain_server.url, "--namespace", namespace,
         "import-lancedb", str(path), "--keep-vectors", "--model-id", MODEL_ID],
        env=ENV, capture_output=True, timeout=120,
    )  # fmt: skip
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    try:
        assert "Traceback" not in out, out[-1500:]
        assert proc.returncode == 1, out[-1500:]
        assert "cli-deep-row" in out and "metadata" in out, out[-1500:]
    finally:
        with ValkeyStore(_settings(plain_server, namespace)) as store:
            count = store.count()
            store.reset()
    assert count == 0


def test_reembedded_import_keeps_privacy_and_refuses_another_model(target, plain_server, tmp_path) -> None:
    """The default path (vectors recomputed with the bundled model): CrewAI's table
    imported, the namespace records the local model, a QueuedMemory with the local
    embedder finds alice's private record for alice only. A namespace that records
    another model is refused before anything is written (ConfigError)."""
    from memworker.crewai import LocalEmbedder
    from memworker.errors import ConfigError

    settings, store = target
    path = tmp_path / "lance"
    _crewai_table(path)
    assert lance_mod.import_lancedb(path, settings) == 5
    assert store.count() == 5 and store.get_record("no-embedding").embedding
    memory = QueuedMemory(storage=ValkeyStore(settings), embedder=LocalEmbedder(), llm=StandInLLM(), drain_timeout=10)
    try:
        as_alice = [m.record.id for m in memory.recall("alice private note", depth="shallow", limit=10, source="alice")]
        as_bob = {m.record.id for m in memory.recall("alice private note", depth="shallow", limit=10, source="bob")}
    finally:
        memory.close()
    assert as_alice[0] == "alice-secret", as_alice
    assert "alice-secret" not in as_bob and "nobody-private" not in as_bob and "bob-public" in as_bob

    other = Settings.from_url(plain_server.url, namespace=settings.namespace + "-other", search_mode="exact")
    with ValkeyStore(other) as other_store:
        other_store.ensure_model("some-other-model")
        try:
            with pytest.raises(ConfigError):
                lance_mod.import_lancedb(path, other)
            assert other_store.count() == 0
        finally:
            other_store.reset()


def test_a_model_id_without_keep_vectors_is_refused_not_ignored(target, tmp_path) -> None:
    """``model_id`` names the model of kept vectors; given to a re-embedding import it
    was silently ignored (the CLI's ``--model-id`` without ``--keep-vectors`` too)."""
    settings, store = target
    path = _table(tmp_path / "db", [])
    with pytest.raises(ConfigError, match="keep_vectors"):
        lance_mod.import_lancedb(path, settings, keep_vectors=False, model_id=MODEL_ID)
    assert store.count() == 0
