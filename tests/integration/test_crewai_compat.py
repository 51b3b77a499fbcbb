"""CrewAI's own unified-memory tests, run against ValkeyStore on both search paths.

The test cases below the ``from tests/memory/...`` lines are copied unchanged from
the crewai 1.15.30 sdist, files ``tests/memory/test_unified_memory.py`` and
``tests/memory/test_memory_root_scope.py`` (CrewAI, https://github.com/crewAIInc/crewAI,
MIT License, Copyright (c) crewAI, Inc.; see the notice at the end of this docstring).
The autouse fixture :func:`valkey_instead_of_lancedb` replaces ``LanceDBStorage`` with
a factory of :class:`~memworker.ValkeyStore` (one namespace per LanceDB path and
table), so every ``LanceDBStorage(...)`` and ``Memory(storage=PATH)`` of those cases
runs on Valkey, and the ``server`` fixture runs each case on a plain server (exact
search) and on one with RediSearch (FT.SEARCH).

Covered: every case of those two files that touches a storage backend (69 of their
124: 68 functions, one parametrized twice). Not copied: the 55 that never build a
storage (CrewAI's types, scope-path helpers, prompts, and flows or executors whose
memory or storage is a MagicMock); they test CrewAI alone. The four ``test_lancedb_*``
cases that save ``embedding=[0.0] * 4`` (or ``[0.0, 0.0]``) are the ones memworker
used to refuse: CrewAI's backends store a missing or empty embedding as a zero
vector, and memworker stores such records without an embedding (never returned by a
search). After them, memworker's own tests of such records through the queue and a
worker, and through ``import-lancedb``.

CrewAI's MIT notice: Permission is hereby granted, free of charge, to any person
obtaining a copy of this software and associated documentation files (the
"Software"), to deal in the Software without restriction, including without
limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,
and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions: The above copyright notice
and this permission notice shall be included in all copies or substantial portions
of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS
OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN
AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH
THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

# ruff: noqa
from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("crewai")

import crewai.memory.storage.lancedb_storage as _lancedb_storage  # noqa: E402

from memworker import ValkeyStore  # noqa: E402

_REAL_LANCEDB = _lancedb_storage.LanceDBStorage


@pytest.fixture(autouse=True)
def valkey_instead_of_lancedb(monkeypatch, server, namespace):
    """``LanceDBStorage(path, table_name, vector_dim, ...)`` -> a ValkeyStore on the
    current server, one namespace per (path, table); every one is reset afterwards."""
    from pathlib import Path

    made: dict[str, ValkeyStore] = {}
    stores: list[ValkeyStore] = []

    def storage(path=None, table_name="memories", vector_dim=None, compact_every=100):
        where = f"{Path(path).resolve() if path is not None else ''}\0{table_name}"
        ns = f"{namespace}x{hashlib.blake2b(where.encode(), digest_size=6).hexdigest()}"
        store = ValkeyStore(
            server.url, namespace=ns, vector_dim=vector_dim,
            search_mode="module" if server.module else "exact",
        )  # fmt: skip
        made.setdefault(ns, store)
        stores.append(store)
        return store

    monkeypatch.setattr(_lancedb_storage, "LanceDBStorage", storage)
    yield
    for store in made.values():
        store.reset()
    for store in stores:
        store.close()


@pytest.fixture
def real_lancedb(monkeypatch):
    """CrewAI's own LanceDBStorage (for memworker's import tests)."""
    monkeypatch.setattr(_lancedb_storage, "LanceDBStorage", _REAL_LANCEDB)
    return _REAL_LANCEDB


from datetime import datetime, timedelta
from pathlib import Path
import threading
from unittest.mock import MagicMock
import pytest
from crewai_core.printer import Printer
from crewai.memory.types import (
    MemoryConfig,
    MemoryMatch,
    MemoryRecord,
    ScopeInfo,
    compute_composite_score,
)
from unittest.mock import MagicMock, patch
from crewai.memory.types import MemoryRecord
from crewai.memory.utils import (
    join_scope_paths,
    normalize_scope_path,
    sanitize_scope_name,
)


# ====================================================================== from tests/memory/test_unified_memory.py


def test_memory_analysis_llm_is_isolated_from_streaming_agent_llm(
    tmp_path: Path,
) -> None:
    """Memory analysis should not share a mutable streaming LLM with the agent UI."""
    from crewai.llms.base_llm import BaseLLM
    from crewai.memory.unified_memory import Memory
    from crewai.utilities.types import LLMMessage

    class FakeStreamingLLM(BaseLLM):
        def call(
            self,
            messages: str | list[LLMMessage],
            tools: list[dict] | None = None,
            callbacks: list | None = None,
            available_functions: dict | None = None,
            from_task: object | None = None,
            from_agent: object | None = None,
            response_model: type | None = None,
        ) -> str:
            return ""

    agent_llm = FakeStreamingLLM(model="fake-model", stream=True)
    mem = Memory(
        storage=str(tmp_path / "db"),
        llm=agent_llm,
        embedder=lambda texts: [[0.1] for _ in texts],
    )

    assert mem._llm is not agent_llm
    assert mem._llm.stream is False

    agent_llm.stream = True
    assert mem._llm.stream is False

@pytest.fixture
def lancedb_path(tmp_path: Path) -> Path:
    return tmp_path / "mem"

def test_lancedb_save_search(lancedb_path: Path) -> None:
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    storage = LanceDBStorage(path=str(lancedb_path), vector_dim=4)
    r = MemoryRecord(
        content="test content",
        scope="/foo",
        categories=["cat1"],
        importance=0.8,
        embedding=[0.1, 0.2, 0.3, 0.4],
    )
    storage.save([r])
    results = storage.search(
        [0.1, 0.2, 0.3, 0.4],
        scope_prefix="/foo",
        limit=5,
    )
    assert len(results) == 1
    rec, score = results[0]
    assert rec.content == "test content"
    assert rec.scope == "/foo"
    assert score >= 0.0

def test_lancedb_delete_count(lancedb_path: Path) -> None:
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    storage = LanceDBStorage(path=str(lancedb_path), vector_dim=4)
    r = MemoryRecord(content="x", scope="/", embedding=[0.0] * 4)
    storage.save([r])
    assert storage.count() == 1
    n = storage.delete(scope_prefix="/")
    assert n >= 1
    assert storage.count() == 0

def test_lancedb_list_scopes_get_scope_info(lancedb_path: Path) -> None:
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    storage = LanceDBStorage(path=str(lancedb_path), vector_dim=4)
    storage.save([
        MemoryRecord(content="a", scope="/", embedding=[0.0] * 4),
        MemoryRecord(content="b", scope="/team", embedding=[0.0] * 4),
    ])
    scopes = storage.list_scopes("/")
    assert "/team" in scopes  # list_scopes returns children, not root itself
    info = storage.get_scope_info("/")
    assert info.record_count >= 1
    assert info.path == "/"

def test_lancedb_list_records_order_and_pagination(lancedb_path: Path) -> None:
    """Test that LanceDBStorage.list_records returns newest records first with correct pagination."""
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    storage = LanceDBStorage(path=str(lancedb_path), vector_dim=4)
    base_time = datetime(2025, 1, 1, 12, 0, 0)
    records = [
        MemoryRecord(
            id=f"rec_{i}",
            content=f"content {i}",
            scope="/test",
            created_at=base_time + timedelta(minutes=i),
            embedding=[0.0] * 4,
        )
        for i in range(10)
    ]
    # Make /other records strictly newer than /test records to discriminate scope filtering vs global listing
    other_records = [
        MemoryRecord(
            id=f"other_{i}",
            content=f"other content {i}",
            scope="/other",
            created_at=base_time + timedelta(minutes=10 + i),
            embedding=[0.0] * 4,
        )
        for i in range(5)
    ]
    storage.save(records + other_records)

    # 1. Page 1: limit=3, offset=0 returns 3 newest records (rec_9, rec_8, rec_7)
    page1 = storage.list_records(scope_prefix="/test", limit=3, offset=0)
    assert [r.id for r in page1] == ["rec_9", "rec_8", "rec_7"]
    assert page1[0].created_at > page1[1].created_at > page1[2].created_at

    # 2. Page 2: limit=3, offset=3 returns next 3 newest (rec_6, rec_5, rec_4)
    page2 = storage.list_records(scope_prefix="/test", limit=3, offset=3)
    assert [r.id for r in page2] == ["rec_6", "rec_5", "rec_4"]

    # 3. Page 3: limit=3, offset=6 returns next 3 newest (rec_3, rec_2, rec_1)
    page3 = storage.list_records(scope_prefix="/test", limit=3, offset=6)
    assert [r.id for r in page3] == ["rec_3", "rec_2", "rec_1"]

    # 4. Page 4: limit=3, offset=9 returns last 1 record (rec_0)
    page4 = storage.list_records(scope_prefix="/test", limit=3, offset=9)
    assert [r.id for r in page4] == ["rec_0"]

    # 5. Page 5: offset beyond total count returns empty list
    page5 = storage.list_records(scope_prefix="/test", limit=3, offset=10)
    assert page5 == []

    # 6. Global listing without scope_prefix returns newest across all scopes
    all_newest = storage.list_records(limit=4, offset=0)
    assert [r.id for r in all_newest] == [
        "other_4",
        "other_3",
        "other_2",
        "other_1",
    ]

    # 7. Negative offset returns empty list
    assert storage.list_records(scope_prefix="/test", limit=3, offset=-1) == []

    # 8. Root records (scope='/') are excluded from scoped listing
    root_record = MemoryRecord(
        id="root_rec",
        content="root content",
        scope="/",
        created_at=base_time + timedelta(hours=1),
        embedding=[0.0] * 4,
    )
    storage.save([root_record])
    scoped = storage.list_records(scope_prefix="/test", limit=5, offset=0)
    assert "root_rec" not in [r.id for r in scoped]

def test_lancedb_list_records_exceeding_scan_cap(tmp_path: Path) -> None:
    """Test that LanceDBStorage.list_records returns true newest records even when table exceeds 50k rows."""
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    storage = LanceDBStorage(path=str(tmp_path / "mem_large"), vector_dim=2)
    base_time = datetime(2025, 1, 1, 12, 0, 0)
    total_records = 52_000
    recs = [
        MemoryRecord(
            id=f"r_{i}",
            content=f"c_{i}",
            scope="/test",
            created_at=base_time + timedelta(seconds=i),
            embedding=[0.0, 0.0],
        )
        for i in range(total_records)
    ]
    storage.save(recs)

    results = storage.list_records(scope_prefix="/test", limit=3, offset=0)
    assert [r.id for r in results] == [
        f"r_{total_records - 1}",
        f"r_{total_records - 2}",
        f"r_{total_records - 3}",
    ]

@pytest.fixture
def mock_embedder() -> MagicMock:
    """Embedder mock that returns one embedding per input text (batch-aware)."""
    m = MagicMock()
    m.side_effect = lambda texts: [[0.1] * 1536 for _ in texts]
    return m

@pytest.fixture
def memory_with_storage(tmp_path: Path, mock_embedder: MagicMock) -> None:
    import os
    os.environ.pop("OPENAI_API_KEY", None)

def test_memory_remember_recall_shallow(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory

    m = Memory(
        storage=str(tmp_path / "db"),
        llm=MagicMock(),
        embedder=mock_embedder,
    )
    # Explicit scope/categories/importance so no LLM analysis
    r = m.remember(
        "We decided to use Python.",
        scope="/project",
        categories=["decision"],
        importance=0.7,
    )
    assert r.content == "We decided to use Python."
    assert r.scope == "/project"

    matches = m.recall("Python decision", scope="/project", limit=5, depth="shallow")
    assert len(matches) >= 1
    assert "Python" in matches[0].record.content or "python" in matches[0].record.content.lower()

def test_memory_forget(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory

    m = Memory(storage=str(tmp_path / "db2"), llm=MagicMock(), embedder=mock_embedder)
    m.remember("To forget", scope="/x", categories=[], importance=0.5, metadata={})
    assert m._storage.count("/x") >= 1
    n = m.forget(scope="/x")
    assert n >= 1
    assert m._storage.count("/x") == 0

def test_memory_scope_slice(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory

    mem = Memory(storage=str(tmp_path / "db3"), llm=MagicMock(), embedder=mock_embedder)
    sc = mem.scope("/agent/1")
    assert sc._root in ("/agent/1", "/agent/1/")
    sl = mem.slice(["/a", "/b"], read_only=True)
    assert sl.read_only is True
    assert "/a" in sl.scopes and "/b" in sl.scopes

def test_memory_list_scopes_info_tree(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory

    m = Memory(storage=str(tmp_path / "db4"), llm=MagicMock(), embedder=mock_embedder)
    m.remember("Root", scope="/", categories=[], importance=0.5, metadata={})
    m.remember("Team note", scope="/team", categories=[], importance=0.5, metadata={})
    scopes = m.list_scopes("/")
    assert "/team" in scopes  # list_scopes returns children, not root itself
    info = m.info("/")
    assert info.record_count >= 1
    tree = m.tree("/", max_depth=2)
    assert "/" in tree or "0 records" in tree or "1 records" in tree

def test_memory_scope_remember_recall(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory
    from crewai.memory.memory_scope import MemoryScope

    mem = Memory(storage=str(tmp_path / "db5"), llm=MagicMock(), embedder=mock_embedder)
    scope = MemoryScope(memory=mem, root_path="/crew/1")
    scope.remember("Scoped note", scope="/", categories=[], importance=0.5, metadata={})
    results = scope.recall("note", limit=5, depth="shallow")
    assert len(results) >= 1

def test_memory_slice_recall(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory
    from crewai.memory.memory_scope import MemorySlice

    mem = Memory(storage=str(tmp_path / "db6"), llm=MagicMock(), embedder=mock_embedder)
    mem.remember("In scope A", scope="/a", categories=[], importance=0.5, metadata={})
    sl = MemorySlice(memory=mem, scopes=["/a"], read_only=True)
    matches = sl.recall("scope", limit=5, depth="shallow")
    assert isinstance(matches, list)

def test_memory_slice_remember_is_noop_when_read_only(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.memory.unified_memory import Memory
    from crewai.memory.memory_scope import MemorySlice

    mem = Memory(storage=str(tmp_path / "db7"), llm=MagicMock(), embedder=mock_embedder)
    sl = MemorySlice(memory=mem, scopes=["/a"], read_only=True)
    result = sl.remember("x", scope="/a")
    assert result is None
    assert mem.list_records() == []

def test_update_is_noop_when_read_only(tmp_path: Path, mock_embedder: MagicMock) -> None:
    """A read-only Memory leaves stored records untouched when update() is called."""
    from crewai.memory.unified_memory import Memory

    mem = Memory(storage=str(tmp_path / "db8"), llm=MagicMock(), embedder=mock_embedder)
    record = mem.remember(
        "original", scope="/a", categories=[], importance=0.5, metadata={}
    )
    assert record is not None

    mem.read_only = True
    returned = mem.update(record.id, content="rewritten", importance=0.9)

    assert returned.content == "original"
    assert returned.importance == 0.5
    stored = mem.list_records()
    assert [(r.content, r.importance) for r in stored] == [("original", 0.5)]

def test_update_still_writes_when_not_read_only(
    tmp_path: Path, mock_embedder: MagicMock
) -> None:
    """The read-only guard does not change update() for a writable Memory."""
    from crewai.memory.unified_memory import Memory

    mem = Memory(storage=str(tmp_path / "db9"), llm=MagicMock(), embedder=mock_embedder)
    record = mem.remember(
        "original", scope="/a", categories=[], importance=0.5, metadata={}
    )
    assert record is not None

    returned = mem.update(record.id, content="rewritten", importance=0.9)

    assert returned.content == "rewritten"
    assert returned.importance == 0.9
    stored = mem.list_records()
    assert [(r.content, r.importance) for r in stored] == [("rewritten", 0.9)]

def test_recall_does_not_refresh_access_time_when_read_only(
    tmp_path: Path, mock_embedder: MagicMock
) -> None:
    """Recall against a read-only Memory leaves last_accessed untouched."""
    from crewai.memory.unified_memory import Memory

    mem = Memory(storage=str(tmp_path / "db10"), llm=MagicMock(), embedder=mock_embedder)
    mem.remember("alpha", scope="/a", categories=[], importance=0.5, metadata={})
    before = mem.list_records()[0].last_accessed

    mem.read_only = True
    assert mem.recall("alpha", scope="/a", limit=5, depth="shallow")
    assert mem.list_records()[0].last_accessed == before

    # Positive control: a writable Memory still refreshes the access time.
    mem.read_only = False
    assert mem.recall("alpha", scope="/a", limit=5, depth="shallow")
    assert mem.list_records()[0].last_accessed > before

def test_flow_has_default_memory() -> None:
    """Flow auto-creates a Memory instance when none is provided."""
    from crewai.flow.flow import Flow
    from crewai.memory.unified_memory import Memory

    class DefaultFlow(Flow):
        pass

    f = DefaultFlow()
    assert f.memory is not None
    assert isinstance(f.memory, Memory)

def test_flow_recall_remember_raise_when_memory_explicitly_none() -> None:
    """Flow raises ValueError when memory is explicitly set to None."""
    from crewai.flow.flow import Flow

    class NoMemoryFlow(Flow):
        memory = None

    f = NoMemoryFlow()
    # Explicitly set to None after __init__ auto-creates
    f.memory = None
    with pytest.raises(ValueError, match="No memory configured"):
        f.recall("query")
    with pytest.raises(ValueError, match="No memory configured"):
        f.remember("content")

def test_flow_recall_remember_with_memory(tmp_path: Path, mock_embedder: MagicMock) -> None:
    from crewai.flow.flow import Flow
    from crewai.memory.unified_memory import Memory

    mem = Memory(storage=str(tmp_path / "flow_db"), llm=MagicMock(), embedder=mock_embedder)

    class FlowWithMemory(Flow):
        memory = mem

    f = FlowWithMemory()
    f.remember("Flow remembered this", scope="/flow", categories=[], importance=0.6, metadata={})
    results = f.recall("remembered", limit=5, depth="shallow")
    assert len(results) >= 1

def test_memory_extract_memories_returns_list_from_llm(tmp_path: Path) -> None:
    """Memory.extract_memories() delegates to LLM and returns list of strings."""
    from crewai.memory.analyze import ExtractedMemories
    from crewai.memory.unified_memory import Memory

    mock_llm = MagicMock()
    mock_llm.supports_function_calling.return_value = True
    mock_llm.call.return_value = ExtractedMemories(
        memories=["We use Python for the backend.", "API rate limit is 100/min."]
    )

    mem = Memory(
        storage=str(tmp_path / "extract_db"),
        llm=mock_llm,
        embedder=MagicMock(return_value=[[0.1] * 1536]),
    )
    result = mem.extract_memories("Task: Build API. Result: We used Python and set rate limit 100/min.")
    assert result == ["We use Python for the backend.", "API rate limit is 100/min."]
    mock_llm.call.assert_called_once()
    call_kw = mock_llm.call.call_args[1]
    assert call_kw.get("response_model") == ExtractedMemories

def test_memory_extract_memories_empty_content_returns_empty_list(tmp_path: Path) -> None:
    """Memory.extract_memories() with empty/whitespace content returns [] without calling LLM."""
    from crewai.memory.unified_memory import Memory

    mock_llm = MagicMock()
    mem = Memory(storage=str(tmp_path / "empty_db"), llm=mock_llm, embedder=MagicMock())
    assert mem.extract_memories("") == []
    assert mem.extract_memories("   \n  ") == []
    mock_llm.call.assert_not_called()

def test_flow_extract_memories_raises_when_memory_explicitly_none() -> None:
    """Flow.extract_memories raises ValueError when memory is explicitly set to None."""
    from crewai.flow.flow import Flow

    f = Flow()
    f.memory = None
    with pytest.raises(ValueError, match="No memory configured"):
        f.extract_memories("some content")

def test_composite_score_reranks_results(
    tmp_path: Path, mock_embedder: MagicMock
) -> None:
    """Same semantic score: high-importance recent memory ranks first."""
    from crewai.memory.unified_memory import Memory

    # Use same dim as default LanceDB (3072) so storage does not overwrite embedding
    emb = [0.1] * 3072
    mem = Memory(
        storage=str(tmp_path / "rerank_db"),
        llm=MagicMock(),
        embedder=MagicMock(return_value=[emb]),
    )
    # to test composite scoring in isolation without consolidation merging them.
    record_high = MemoryRecord(
        content="Important decision",
        scope="/",
        categories=[],
        importance=1.0,
        embedding=emb,
    )
    mem._storage.save([record_high])
    old = datetime.utcnow() - timedelta(days=90)
    record_low = MemoryRecord(
        content="Old trivial note",
        scope="/",
        importance=0.1,
        created_at=old,
        embedding=emb,
    )
    mem._storage.save([record_low])

    matches = mem.recall("decision", scope="/", limit=5, depth="shallow")
    assert len(matches) >= 2
    # Top result should be the high-importance recent one (stored via remember)
    assert "Important" in matches[0].record.content or "important" in matches[0].record.content.lower()

def test_remember_survives_llm_failure(
    tmp_path: Path, mock_embedder: MagicMock
) -> None:
    """When the LLM raises during parallel_analyze, remember() still saves with defaults."""
    from crewai.memory.unified_memory import Memory

    llm = MagicMock()
    llm.call.side_effect = RuntimeError("LLM unavailable")
    mem = Memory(
        storage=str(tmp_path / "fallback_db"),
        llm=llm,
        embedder=mock_embedder,
    )
    record = mem.remember("We decided to use PostgreSQL.")
    assert record.content == "We decided to use PostgreSQL."
    assert record.scope == "/"
    assert record.categories == []
    assert record.importance == 0.5
    assert record.id is not None
    assert mem._storage.count() == 1

def test_agent_kickoff_memory_recall_and_save(tmp_path: Path, mock_embedder: MagicMock) -> None:
    """Agent.kickoff() with memory should recall before execution and save after."""
    from unittest.mock import Mock, patch

    from crewai.agent.core import Agent
    from crewai.llm import LLM
    from crewai.memory.unified_memory import Memory
    from crewai.types.usage_metrics import UsageMetrics

    mem = Memory(
        storage=str(tmp_path / "agent_kickoff_db"),
        llm=MagicMock(),
        embedder=mock_embedder,
    )

    # Pre-populate a memory record
    mem.remember("The team uses PostgreSQL.", scope="/", categories=["database"], importance=0.8)

    mock_llm = Mock(spec=LLM)
    mock_llm.call.return_value = "Final Answer: PostgreSQL is the database."
    mock_llm.is_context_window_overflowing_threshold.return_value = False
    mock_llm.stop = []
    mock_llm.supports_stop_words.return_value = False
    mock_llm.supports_function_calling.return_value = False
    mock_llm.get_token_usage_summary.return_value = UsageMetrics(
        total_tokens=10, prompt_tokens=5, completion_tokens=5,
        cached_prompt_tokens=0, successful_requests=1,
    )

    agent = Agent(
        role="Tester",
        goal="Test memory integration",
        backstory="You test things.",
        llm=mock_llm,
        memory=mem,
        verbose=False,
    )

    # Patch on the class to avoid Pydantic BaseModel __delattr__ restriction
    with patch.object(Memory, "recall", wraps=mem.recall) as recall_mock, \
         patch.object(Memory, "extract_memories", return_value=["PostgreSQL is used."]) as extract_mock, \
         patch.object(Memory, "remember_many", wraps=mem.remember_many) as remember_many_mock:
        result = agent.kickoff("What database do we use?")

    assert result is not None
    assert result.raw is not None

    recall_mock.assert_called_once()

    extract_mock.assert_called_once()
    raw_content = extract_mock.call_args.args[0]
    assert "Input:" in raw_content
    assert "Agent:" in raw_content
    assert "Result:" in raw_content

    # remember_many was called with the extracted memories
    remember_many_mock.assert_called_once()
    saved_contents = remember_many_mock.call_args.args[0]
    assert "PostgreSQL is used." in saved_contents

def test_batch_embed_single_call(tmp_path: Path) -> None:
    """remember_many with 3 items should call the embedder exactly once with all 3 texts."""
    from crewai.memory.unified_memory import Memory

    embedder = MagicMock()
    embedder.side_effect = lambda texts: [[0.1] * 1536 for _ in texts]

    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    mem.remember_many(
        ["Fact A.", "Fact B.", "Fact C."],
        scope="/test",
        categories=["test"],
        importance=0.5,
    )
    mem.drain_writes()
    embedder.assert_called_once()
    texts_arg = embedder.call_args.args[0]
    assert len(texts_arg) == 3
    assert texts_arg == ["Fact A.", "Fact B.", "Fact C."]

def test_intra_batch_dedup_drops_near_identical(tmp_path: Path) -> None:
    """remember_many with 3 identical strings should store only 1 record."""
    from crewai.memory.unified_memory import Memory

    embedder = MagicMock()
    embedder.side_effect = lambda texts: [[0.5] * 1536 for _ in texts]

    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    mem.remember_many(
        [
            "CrewAI ensures reliable operation.",
            "CrewAI ensures reliable operation.",
            "CrewAI ensures reliable operation.",
        ],
        scope="/test",
        categories=["reliability"],
        importance=0.7,
    )
    mem.drain_writes()
    assert mem._storage.count() == 1

def test_intra_batch_dedup_keeps_merely_similar(tmp_path: Path) -> None:
    """remember_many with distinct items should keep all of them."""
    from crewai.memory.unified_memory import Memory
    import math

    call_count = 0

    def varying_embedder(texts: list[str]) -> list[list[float]]:
        nonlocal call_count
        result = []
        for i, _ in enumerate(texts):
            emb = [0.0] * 1536
            idx = (call_count + i) % 1536
            emb[idx] = 1.0
            result.append(emb)
        call_count += len(texts)
        return result

    embedder = MagicMock(side_effect=varying_embedder)
    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    mem.remember_many(
        ["CrewAI handles complex tasks.", "Python is the best language."],
        scope="/test",
        categories=["tech"],
        importance=0.6,
    )
    mem.drain_writes()
    assert mem._storage.count() == 2

def test_batch_consolidation_deduplicates_against_storage(
    tmp_path: Path,
) -> None:
    """Pre-insert a record, then remember_many with same + new content."""
    from crewai.memory.unified_memory import Memory
    from crewai.memory.analyze import ConsolidationPlan

    emb = [0.1] * 1536
    embedder = MagicMock()
    embedder.side_effect = lambda texts: [emb for _ in texts]

    llm = MagicMock()
    llm.supports_function_calling.return_value = True
    # After intra-batch dedup (identical embeddings), only 1 item survives.
    llm.call.return_value = ConsolidationPlan(
        actions=[], insert_new=False, insert_reason="duplicate"
    )

    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    # Pre-insert
    from crewai.memory.types import MemoryRecord

    mem._storage.save([
        MemoryRecord(content="CrewAI is great.", scope="/test", importance=0.7, embedding=emb),
    ])
    assert mem._storage.count() == 1

    # remember_many with the same content + a new one (all identical embeddings)
    mem.remember_many(
        ["CrewAI is great.", "CrewAI is wonderful."],
        scope="/test",
        categories=["review"],
        importance=0.7,
    )
    mem.drain_writes()
    # Intra-batch dedup fires: same embedding = 1.0 >= 0.98, so item 1 is dropped.
    # LLM says don't insert -> no new records. Total stays at 1.
    assert mem._storage.count() == 1

def test_parallel_find_similar_runs_all_searches(tmp_path: Path) -> None:
    """remember_many with 3 distinct items should run 3 storage searches."""
    from unittest.mock import patch
    from crewai.memory.unified_memory import Memory

    call_count = 0

    def distinct_embedder(texts: list[str]) -> list[list[float]]:
        """Return unique embeddings per text so dedup doesn't drop them."""
        nonlocal call_count
        result = []
        for i, _ in enumerate(texts):
            emb = [0.0] * 1536
            emb[(call_count + i) % 1536] = 1.0
            result.append(emb)
        call_count += len(texts)
        return result

    embedder = MagicMock(side_effect=distinct_embedder)
    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    with patch.object(mem._storage, "search", wraps=mem._storage.search) as search_mock:
        mem.remember_many(
            ["Alpha fact.", "Beta fact.", "Gamma fact."],
            scope="/test",
            categories=["test"],
            importance=0.5,
        )
        mem.drain_writes()
        assert search_mock.call_count == 3

def test_single_remember_uses_batch_flow(tmp_path: Path, mock_embedder: MagicMock) -> None:
    """Single remember() should work through the batch flow (batch of 1)."""
    from crewai.memory.unified_memory import Memory

    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=mock_embedder)

    record = mem.remember(
        "Single fact.",
        scope="/project",
        categories=["decision"],
        importance=0.8,
    )
    assert record is not None
    assert record.content == "Single fact."
    assert record.scope == "/project"
    assert record.importance == 0.8
    assert mem._storage.count() == 1

def test_parallel_analyze_runs_concurrent_calls(tmp_path: Path) -> None:
    """remember_many with 3 items needing LLM should make 3 concurrent LLM calls."""
    from unittest.mock import call
    from crewai.memory.unified_memory import Memory
    from crewai.memory.analyze import MemoryAnalysis, ExtractedMetadata

    call_count = 0

    def distinct_embedder(texts: list[str]) -> list[list[float]]:
        """Return unique embeddings per text so dedup doesn't drop them."""
        nonlocal call_count
        result = []
        for i, _ in enumerate(texts):
            emb = [0.0] * 1536
            emb[(call_count + i) % 1536] = 1.0
            result.append(emb)
        call_count += len(texts)
        return result

    embedder = MagicMock(side_effect=distinct_embedder)
    llm = MagicMock()
    llm.supports_function_calling.return_value = True
    llm.call.return_value = MemoryAnalysis(
        suggested_scope="/inferred",
        categories=["auto"],
        importance=0.6,
        extracted_metadata=ExtractedMetadata(),
    )

    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    # No scope/categories/importance -> all 3 need field resolution (Group C)
    mem.remember_many(["Fact A.", "Fact B.", "Fact C."])
    mem.drain_writes()
    assert llm.call.call_count == 3
    assert mem._storage.count() == 3

def test_remember_many_returns_immediately(tmp_path: Path) -> None:
    """remember_many() should return an empty list immediately (non-blocking)."""
    from crewai.memory.unified_memory import Memory

    call_count = 0

    def distinct_embedder(texts: list[str]) -> list[list[float]]:
        nonlocal call_count
        result = []
        for i, _ in enumerate(texts):
            emb = [0.0] * 1536
            emb[(call_count + i) % 1536] = 1.0
            result.append(emb)
        call_count += len(texts)
        return result

    embedder = MagicMock(side_effect=distinct_embedder)
    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=embedder)

    result = mem.remember_many(
        ["Fact A.", "Fact B."],
        scope="/test",
        categories=["test"],
        importance=0.5,
    )
    assert result == []
    # After draining, records should exist
    mem.drain_writes()
    assert mem._storage.count() == 2

def test_reset_all_blocks_new_save_submission_until_reset_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save cannot be submitted between draining writes and resetting storage."""
    from crewai.memory.unified_memory import Memory

    mem = Memory(
        storage=str(tmp_path / "db"),
        llm=MagicMock(),
        embedder=lambda texts: [[0.1] * 4 for _ in texts],
    )
    reset_started = threading.Event()
    release_reset = threading.Event()
    submission_returned = threading.Event()
    order: list[str] = []
    original_reset = mem._storage.reset

    def blocking_reset(scope_prefix: str | None = None) -> None:
        order.append("reset-start")
        reset_started.set()
        assert release_reset.wait(timeout=30)
        original_reset(scope_prefix=scope_prefix)
        order.append("reset-end")

    def submit_save() -> None:
        mem._submit_save(lambda: order.append("save"))
        order.append("submit-returned")
        submission_returned.set()

    monkeypatch.setattr(mem._storage, "reset", blocking_reset)

    reset_thread = threading.Thread(target=mem.reset_all)
    reset_thread.start()
    assert reset_started.wait(timeout=30)

    submit_thread = threading.Thread(target=submit_save)
    submit_thread.start()
    assert not submission_returned.wait(timeout=0.1)

    release_reset.set()
    reset_thread.join(timeout=30)
    submit_thread.join(timeout=30)

    assert not reset_thread.is_alive()
    assert not submit_thread.is_alive()
    assert order.index("reset-end") < order.index("submit-returned")

def test_recall_drains_pending_writes(tmp_path: Path, mock_embedder: MagicMock) -> None:
    """recall() should automatically wait for pending background saves."""
    from crewai.memory.unified_memory import Memory

    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=mock_embedder)

    # Submit a background save
    mem.remember_many(
        ["Python is great."],
        scope="/test",
        categories=["lang"],
        importance=0.7,
    )
    # Recall should drain the pending save first, then find the record
    matches = mem.recall("Python", scope="/test", limit=5, depth="shallow")
    assert len(matches) >= 1
    assert "Python" in matches[0].record.content

def test_drain_writes_reports_background_save_failure_without_raising(
    tmp_path: Path, mock_embedder: MagicMock
) -> None:
    """Background memory failures should be reported without failing cleanup."""
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.memory_events import MemorySaveFailedEvent
    from crewai.memory.unified_memory import Memory

    failure_seen = threading.Event()
    failures: list[MemorySaveFailedEvent] = []
    mem = Memory(
        storage=str(tmp_path / "db"),
        llm=MagicMock(),
        embedder=mock_embedder,
    )

    def fail_save() -> None:
        raise ValueError("invalid model ID")

    with crewai_event_bus.scoped_handlers():

        @crewai_event_bus.on(MemorySaveFailedEvent)
        def on_memory_save_failed(_source, event):
            failures.append(event)
            failure_seen.set()

        mem._submit_save(fail_save)
        mem.drain_writes()

        assert failure_seen.wait(timeout=30)

    assert failures
    assert failures[0].value == "background save"
    assert failures[0].error == "invalid model ID"

def test_close_drains_and_shuts_down(tmp_path: Path, mock_embedder: MagicMock) -> None:
    """close() should drain pending saves and shut down the pool."""
    from crewai.memory.unified_memory import Memory

    llm = MagicMock()
    llm.supports_function_calling.return_value = False
    mem = Memory(storage=str(tmp_path / "db"), llm=llm, embedder=mock_embedder)

    mem.remember_many(
        ["Important fact."],
        scope="/test",
        categories=["test"],
        importance=0.9,
    )
    mem.close()
    # After close, records should be persisted
    assert mem._storage.count() == 1

def _memory_with_private_records(lancedb_path: Path):
    from crewai.memory.storage.lancedb_storage import LanceDBStorage
    from crewai.memory.unified_memory import Memory

    storage = LanceDBStorage(path=str(lancedb_path), vector_dim=2)
    storage.save(
        [
            MemoryRecord(
                content="secret api key sk-abc123",
                scope="/notes",
                embedding=[1.0, 0.0],
                private=True,
                source=None,
            ),
            MemoryRecord(
                content="team-wide note",
                scope="/notes",
                embedding=[1.0, 0.0],
            ),
        ]
    )
    mem = Memory(
        llm=MagicMock(),
        storage=storage,
        embedder=lambda texts: [[1.0, 0.0]] * len(texts),
    )
    return mem

@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_private_record_without_source_does_not_leak(lancedb_path: Path, depth: str) -> None:
    """A private record saved with source=None must not be visible to default
    (source=None, include_private=False) recalls.

    The filter used to be `not r.private or r.source == source`, and
    `None == None` passed — every default caller saw the "private" record.
    """
    mem = _memory_with_private_records(lancedb_path)

    results = mem.recall(
        "secret api key", scope="/notes", depth=depth, include_private=False
    )

    contents = [m.record.content for m in results]
    assert "secret api key sk-abc123" not in contents, (
        "private source=None record leaked to an unprivileged recall "
        f"({depth} path): {contents!r}"
    )
    assert "team-wide note" in contents, "public records must stay visible"

def test_private_record_still_visible_to_its_source_and_when_included(lancedb_path: Path) -> None:
    """The tightening must not hide private records from legitimate access."""
    from crewai.memory.storage.lancedb_storage import LanceDBStorage
    from crewai.memory.types import MemoryRecord as MR
    from crewai.memory.unified_memory import Memory

    storage = LanceDBStorage(path=str(lancedb_path), vector_dim=2)
    storage.save(
        [
            MR(
                content="private to worker-1",
                scope="/notes",
                embedding=[1.0, 0.0],
                private=True,
                source="worker-1",
            )
        ]
    )
    mem = Memory(
        llm=MagicMock(),
        storage=storage,
        embedder=lambda texts: [[1.0, 0.0]] * len(texts),
    )

    as_owner = mem.recall(
        "private to worker", scope="/notes", depth="shallow", source="worker-1"
    )
    assert [m.record.content for m in as_owner] == ["private to worker-1"], (
        "the owning source must still see its private record"
    )

    with_private = mem.recall(
        "private to worker", scope="/notes", depth="shallow", include_private=True
    )
    assert [m.record.content for m in with_private] == ["private to worker-1"], (
        "include_private=True must still see everything"
    )



# ====================================================================== from tests/memory/test_memory_root_scope.py


class TestMemoryRootScope:
    """Tests for Memory class root_scope field."""

    def test_memory_with_root_scope_prepends_to_explicit_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """When root_scope is set and explicit scope is provided, they combine."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/research-crew",
        )

        record = mem.remember(
            "Test content",
            scope="/market-trends",
            categories=["test"],
            importance=0.7,
        )

        assert record is not None
        assert record.scope == "/crew/research-crew/market-trends"

    def test_memory_without_root_scope_uses_explicit_scope_directly(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """When root_scope is None, explicit scope is used as-is (backward compat)."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        record = mem.remember(
            "Test content",
            scope="/explicit",
            categories=["test"],
            importance=0.7,
        )

        assert record is not None
        assert record.scope == "/explicit"

    def test_memory_root_scope_with_llm_inferred_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """When root_scope is set and scope is inferred by LLM, they combine."""
        from crewai.memory.analyze import ExtractedMetadata, MemoryAnalysis
        from crewai.memory.unified_memory import Memory

        llm = MagicMock()
        llm.supports_function_calling.return_value = True
        llm.call.return_value = MemoryAnalysis(
            suggested_scope="/quarterly-results",
            categories=["finance"],
            importance=0.8,
            extracted_metadata=ExtractedMetadata(),
        )

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=llm,
            embedder=mock_embedder,
            root_scope="/flow/mypipeline",
        )

        # Don't provide scope - let LLM infer it
        record = mem.remember("Q1 revenue was $1M")

        assert record is not None
        assert record.scope == "/flow/mypipeline/quarterly-results"

    def test_memory_root_scope_per_call_override(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """Per-call root_scope overrides instance-level root_scope."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/base",
        )

        record = mem.remember(
            "Test content",
            scope="/inner",
            categories=["test"],
            importance=0.7,
            root_scope="/override/path",
        )

        assert record is not None
        assert record.scope == "/override/path/inner"

    def test_remember_many_with_root_scope(
        self, tmp_path: Path,
    ) -> None:
        """remember_many respects root_scope for all items."""
        from crewai.memory.unified_memory import Memory

        # Use distinct embeddings to avoid intra-batch dedup
        call_count = 0

        def distinct_embedder(texts: list[str]) -> list[list[float]]:
            nonlocal call_count
            result = []
            for i, _ in enumerate(texts):
                emb = [0.0] * 1536
                emb[(call_count + i) % 1536] = 1.0
                result.append(emb)
            call_count += len(texts)
            return result

        mock_embedder = MagicMock(side_effect=distinct_embedder)

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/batch-crew",
        )

        mem.remember_many(
            ["Fact A", "Fact B"],
            scope="/decisions",
            categories=["test"],
            importance=0.7,
        )
        mem.drain_writes()

        records = mem.list_records()
        assert len(records) == 2
        for record in records:
            assert record.scope == "/crew/batch-crew/decisions"

    def test_remember_many_per_call_root_scope_override(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """remember_many accepts per-call root_scope override."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/default",
        )

        mem.remember_many(
            ["Fact A"],
            scope="/inner",
            categories=["test"],
            importance=0.7,
            root_scope="/agent/researcher",
        )
        mem.drain_writes()

        # Use a global memory view to see all records (not scoped to /default)
        mem_global = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )
        records = mem_global.list_records()
        assert len(records) == 1
        assert records[0].scope == "/agent/researcher/inner"

class TestRootScopePathNormalization:
    """Tests for proper path normalization with root_scope."""

    def test_no_double_slashes_in_result(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """Final scope should not have double slashes."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/test/",
        )

        record = mem.remember(
            "Test",
            scope="/inner/",
            categories=["test"],
            importance=0.5,
        )

        assert record is not None
        assert "//" not in record.scope
        assert record.scope == "/crew/test/inner"

    def test_leading_slash_always_present(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """Final scope should always have leading slash."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="crew/test",
        )

        record = mem.remember(
            "Test",
            scope="inner",
            categories=["test"],
            importance=0.5,
        )

        assert record is not None
        assert record.scope.startswith("/")

    def test_root_scope_with_root_inner_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """When inner scope is '/', result is just the root_scope."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/test",
        )

        record = mem.remember(
            "Test",
            scope="/",
            categories=["test"],
            importance=0.5,
        )

        assert record is not None
        assert record.scope == "/crew/test"

class TestCrewAutoScoping:
    """Tests for automatic root_scope assignment in Crew."""

    def test_crew_memory_true_sets_root_scope(self) -> None:
        """Creating Crew with memory=True auto-sets root_scope."""
        from crewai.agent import Agent
        from crewai.crew import Crew
        from crewai.task import Task

        agent = Agent(
            role="Researcher",
            goal="Research",
            backstory="Expert researcher",
            llm="gpt-4o-mini",
        )
        task = Task(
            description="Do research",
            expected_output="Report",
            agent=agent,
        )

        crew = Crew(
            name="Research Crew",
            agents=[agent],
            tasks=[task],
            memory=True,
        )

        assert crew._memory is not None
        assert hasattr(crew._memory, "root_scope")
        assert crew._memory.root_scope == "/crew/research-crew"
        assert crew._memory.llm is agent.llm

    def test_crew_memory_true_prefers_chat_llm(self) -> None:
        """Auto-created crew memory uses chat_llm when configured."""
        from crewai.agent import Agent
        from crewai.crew import Crew
        from crewai.task import Task

        agent = Agent(
            role="Researcher",
            goal="Research",
            backstory="Expert researcher",
            llm="openai/gpt-4o-mini",
        )
        task = Task(
            description="Do research",
            expected_output="Report",
            agent=agent,
        )

        crew = Crew(
            name="Research Crew",
            agents=[agent],
            tasks=[task],
            chat_llm="ollama/llama3",
            memory=True,
        )

        assert crew._memory is not None
        assert crew._memory.llm == "ollama/llama3"

    def test_crew_memory_instance_preserves_no_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """User-provided Memory instance is not modified — root_scope stays None."""
        from crewai.agent import Agent
        from crewai.crew import Crew
        from crewai.memory.unified_memory import Memory
        from crewai.task import Task

        # Memory without root_scope
        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )
        assert mem.root_scope is None

        agent = Agent(
            role="Tester",
            goal="Test",
            backstory="Tester",
            llm="gpt-4o-mini",
        )
        task = Task(
            description="Test",
            expected_output="Results",
            agent=agent,
        )

        crew = Crew(
            name="Test Crew",
            agents=[agent],
            tasks=[task],
            memory=mem,
        )

        assert crew._memory is mem
        # User-provided Memory is not auto-scoped — respect their config
        assert crew._memory.root_scope is None

    def test_crew_respects_existing_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """User-provided Memory with existing root_scope is not overwritten."""
        from crewai.agent import Agent
        from crewai.crew import Crew
        from crewai.memory.unified_memory import Memory
        from crewai.task import Task

        # Memory with explicit root_scope
        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/custom/path",
        )

        agent = Agent(
            role="Tester",
            goal="Test",
            backstory="Tester",
            llm="gpt-4o-mini",
        )
        task = Task(
            description="Test",
            expected_output="Results",
            agent=agent,
        )

        crew = Crew(
            name="Test Crew",
            agents=[agent],
            tasks=[task],
            memory=mem,
        )

        assert crew._memory.root_scope == "/custom/path"

    def test_crew_sanitizes_name_for_root_scope(self) -> None:
        """Crew name with special chars is sanitized for root_scope."""
        from crewai.agent import Agent
        from crewai.crew import Crew
        from crewai.task import Task

        agent = Agent(
            role="Agent",
            goal="Goal",
            backstory="Story",
            llm="gpt-4o-mini",
        )
        task = Task(
            description="Task",
            expected_output="Output",
            agent=agent,
        )

        crew = Crew(
            name="My Awesome Crew #1!",
            agents=[agent],
            tasks=[task],
            memory=True,
        )

        assert crew._memory.root_scope == "/crew/my-awesome-crew-1"

class TestFlowAutoScoping:
    """Tests for automatic root_scope assignment in Flow."""

    def test_flow_auto_memory_sets_root_scope(self) -> None:
        """Flow auto-creates memory with root_scope set to /flow/<class_name>."""
        from crewai.flow.flow import Flow
        from crewai.memory.unified_memory import Memory

        class MyPipelineFlow(Flow):
            pass

        flow = MyPipelineFlow()

        assert flow.memory is not None
        assert isinstance(flow.memory, Memory)
        assert flow.memory.root_scope == "/flow/mypipelineflow"

    def test_flow_with_name_uses_name_for_root_scope(self) -> None:
        """Flow with custom name uses that name for root_scope."""
        from crewai.flow.flow import Flow
        from crewai.memory.unified_memory import Memory

        class MyFlow(Flow):
            name = "Custom Pipeline"

        flow = MyFlow()

        assert flow.memory is not None
        assert isinstance(flow.memory, Memory)
        assert flow.memory.root_scope == "/flow/custom-pipeline"

    def test_flow_user_provided_memory_not_overwritten(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """User-provided memory on Flow is not modified."""
        from crewai.flow.flow import Flow
        from crewai.memory.unified_memory import Memory

        user_memory = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/custom/scope",
        )

        class MyFlow(Flow):
            memory = user_memory

        flow = MyFlow()

        assert flow.memory is user_memory
        assert flow.memory.root_scope == "/custom/scope"

class TestBackwardCompatibility:
    """Tests ensuring backward compatibility with existing behavior."""

    def test_memory_without_root_scope_works_normally(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """Memory without root_scope behaves exactly as before."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        assert mem.root_scope is None

        record = mem.remember(
            "Test content",
            scope="/explicit",
            categories=["test"],
            importance=0.7,
        )

        assert record.scope == "/explicit"

    def test_crew_without_name_uses_default(self) -> None:
        """Crew without name uses 'crew' as default for root_scope."""
        from crewai.agent import Agent
        from crewai.crew import Crew
        from crewai.task import Task

        agent = Agent(
            role="Agent",
            goal="Goal",
            backstory="Story",
            llm="gpt-4o-mini",
        )
        task = Task(
            description="Task",
            expected_output="Output",
            agent=agent,
        )

        # No name provided - uses default "crew"
        crew = Crew(
            agents=[agent],
            tasks=[task],
            memory=True,
        )

        assert crew._memory.root_scope == "/crew/crew"

    def test_old_memories_at_root_still_accessible(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """Old memories stored at '/' are still accessible."""
        from crewai.memory.unified_memory import Memory

        # Create memory and store at root (old behavior)
        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        record = mem.remember(
            "Old memory at root",
            scope="/",
            categories=["old"],
            importance=0.5,
        )
        assert record.scope == "/"

        # Recall from root should find it
        matches = mem.recall("Old memory", scope="/", depth="shallow")
        assert len(matches) >= 1

class TestEncodingFlowRootScope:
    """Tests for root_scope handling in EncodingFlow."""

    def test_encoding_flow_llm_path_with_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """Group C (LLM path) items properly prepend root_scope to inferred scope."""
        from crewai.memory.analyze import ExtractedMetadata, MemoryAnalysis
        from crewai.memory.unified_memory import Memory

        llm = MagicMock()
        llm.supports_function_calling.return_value = True
        llm.call.return_value = MemoryAnalysis(
            suggested_scope="/llm-inferred",
            categories=["auto"],
            importance=0.7,
            extracted_metadata=ExtractedMetadata(),
        )

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=llm,
            embedder=mock_embedder,
            root_scope="/flow/pipeline",
        )

        # No explicit scope/categories/importance -> goes through LLM
        record = mem.remember("Content for LLM analysis")

        assert record is not None
        assert record.scope == "/flow/pipeline/llm-inferred"

class TestMemoryScopeWithRootScope:
    """Tests for MemoryScope interaction with root_scope."""

    def test_memory_scope_remembers_within_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """MemoryScope with underlying Memory that has root_scope works correctly."""
        from crewai.memory.memory_scope import MemoryScope
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/test",
        )

        scope = MemoryScope(memory=mem, root_path="/agent/1")

        # Remember through the scope
        record = scope.remember(
            "Scoped content",
            scope="/task",  # Inner scope within MemoryScope
            categories=["test"],
            importance=0.5,
        )

        # MemoryScope.remember prepends /agent/1 to /task -> /agent/1/task
        # Final: /crew/test/agent/1/task
        assert record is not None
        # Note: MemoryScope builds the scope before calling memory.remember
        # So the scope it passes is /agent/1/task, which then gets root_scope prepended
        assert record.scope.startswith("/crew/test/agent/1")

class TestReadIsolation:
    """Tests for root_scope read isolation (recall, list, info, reset)."""

    def test_recall_with_root_scope_only_returns_scoped_records(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """recall() with root_scope returns only records within that scope."""
        from crewai.memory.unified_memory import Memory

        mem_global = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        mem_global.remember(
            "Global record",
            scope="/other/scope",
            categories=["global"],
            importance=0.5,
        )
        mem_global.remember(
            "Crew A record",
            scope="/crew/crew-a/inner",
            categories=["crew-a"],
            importance=0.5,
        )
        mem_global.remember(
            "Crew B record",
            scope="/crew/crew-b/inner",
            categories=["crew-b"],
            importance=0.5,
        )

        mem_scoped = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/crew-a",
        )

        # recall() should only find crew-a records
        results = mem_scoped.recall("record", depth="shallow")
        assert len(results) == 1
        assert results[0].record.scope == "/crew/crew-a/inner"

    def test_recall_with_root_scope_and_explicit_scope_nests(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """recall() with root_scope + explicit scope combines them."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/test",
        )

        mem.remember(
            "Nested record",
            scope="/inner/deep",
            categories=["test"],
            importance=0.5,
        )

        # recall with explicit scope should nest under root_scope
        results = mem.recall("record", scope="/inner", depth="shallow")
        assert len(results) == 1
        assert results[0].record.scope == "/crew/test/inner/deep"

    def test_recall_without_root_scope_works_globally(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """recall() without root_scope searches globally (backward compat)."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        mem.remember(
            "Record A",
            scope="/scope-a",
            categories=["test"],
            importance=0.5,
        )
        mem.remember(
            "Record B",
            scope="/scope-b",
            categories=["test"],
            importance=0.5,
        )

        # recall without scope should find all records
        results = mem.recall("record", depth="shallow")
        assert len(results) == 2

    def test_list_records_defaults_to_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """list_records() with root_scope defaults to that scope."""
        from crewai.memory.unified_memory import Memory

        mem_global = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        mem_global.remember("Global", scope="/other", categories=["x"], importance=0.5)
        mem_global.remember("Scoped", scope="/crew/a/inner", categories=["x"], importance=0.5)

        mem_scoped = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/a",
        )

        # list_records() without scope should only show /crew/a records
        records = mem_scoped.list_records()
        assert len(records) == 1
        assert records[0].scope == "/crew/a/inner"

    def test_list_scopes_defaults_to_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """list_scopes() with root_scope defaults to that scope."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        mem.remember("A", scope="/crew/a/child1", categories=["x"], importance=0.5)
        mem.remember("B", scope="/crew/a/child2", categories=["x"], importance=0.5)
        mem.remember("C", scope="/crew/b/other", categories=["x"], importance=0.5)

        mem_scoped = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/a",
        )

        # list_scopes() should only show children under /crew/a
        scopes = mem_scoped.list_scopes()
        assert "/crew/a/child1" in scopes or "child1" in str(scopes)
        assert "/crew/b" not in scopes

    def test_info_defaults_to_root_scope(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """info() with root_scope defaults to that scope."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        mem.remember("A", scope="/crew/a/inner", categories=["x"], importance=0.5)
        mem.remember("B", scope="/other/inner", categories=["x"], importance=0.5)

        mem_scoped = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/a",
        )

        # info() should only count records under /crew/a
        scope_info = mem_scoped.info()
        assert scope_info.record_count == 1

    def test_reset_with_root_scope_only_deletes_scoped_records(
        self, tmp_path: Path, mock_embedder: MagicMock
    ) -> None:
        """reset() with root_scope only deletes within that scope."""
        from crewai.memory.unified_memory import Memory

        mem = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )

        mem.remember("A", scope="/crew/a/inner", categories=["x"], importance=0.5)
        mem.remember("B", scope="/other/inner", categories=["x"], importance=0.5)

        mem_scoped = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
            root_scope="/crew/a",
        )

        mem_scoped.reset()

        # Check with a fresh global memory instance to avoid stale table references
        mem_fresh = Memory(
            storage=str(tmp_path / "db"),
            llm=MagicMock(),
            embedder=mock_embedder,
        )
        records = mem_fresh.list_records()
        assert len(records) == 1
        assert records[0].scope == "/other/inner"


# ============================================================================ memworker: records without an embedding
import numpy as np  # noqa: E402

from memworker import worker as _worker_mod  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402

_DIM = 4


class _UnitEmbedder:
    """The worker loads an embedder before it takes a job (save jobs do not use it)."""

    dimension = _DIM

    def encode(self, texts):
        return np.tile(np.eye(_DIM, dtype=np.float32)[0], (len(texts), 1))


def _settings(server, namespace):
    return Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )


def test_memworker_records_without_embedding_through_the_queue(server, namespace):
    """``enqueue_save`` of records with embedding None, [] and zeros: a worker stores them
    without one (counted, listed, read), and a search returns only the real one."""
    settings = _settings(server, namespace)
    records = [
        MemoryRecord(id="none", content="none", scope="/q", categories=["c"], embedding=None),
        MemoryRecord(id="empty", content="empty", scope="/q", categories=["c"], embedding=[]),
        MemoryRecord(id="zeros", content="zeros", scope="/q/z", embedding=[0.0] * _DIM),
        MemoryRecord(id="real", content="real", scope="/q", embedding=[0.0, 1.0, 0.0, 0.0]),
    ]
    _worker_mod.set_embedder_factory(_UnitEmbedder)
    try:
        with _worker_mod.running_worker(
            settings, threads=2, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=1
        ), MemoryQueue(settings, producer_id="p") as queue, ValkeyStore(settings) as store:
            job = queue.enqueue_save(records)
            report = queue.drain(timeout=60, job_ids=[job])
            assert report.committed == 1 and not report.failed
            assert store.count("/q") == 4 and store.count("/q/z") == 1
            assert store.list_categories("/q") == {"c": 2}
            assert sorted(r.id for r in store.list_records("/q")) == ["empty", "none", "real", "zeros"]
            for rid in ("none", "empty", "zeros"):
                got = store.get_record(rid)
                assert got.content == rid and got.embedding is None
            hits = store.search([0.0, 1.0, 0.0, 0.0], limit=10, min_score=-1.0)
            assert [r.id for r, _ in hits] == ["real"]
            # a later job updates one to a real embedding, and the real one to none
            job = queue.enqueue_save([
                records[0].model_copy(update={"embedding": [1.0, 0.0, 0.0, 0.0]}),
                records[3].model_copy(update={"embedding": None}),
            ])
            assert queue.drain(timeout=60, job_ids=[job]).committed == 1
            hits = store.search([0.0, 1.0, 0.0, 0.0], limit=10, min_score=-1.0)
            assert [r.id for r, _ in hits] == ["none"]
            assert store.get_record("real").embedding is None and store.count() == 4
    finally:
        _worker_mod.set_embedder_factory(None)


def test_memworker_import_lancedb_keeps_rows_with_zero_vectors(server, namespace, real_lancedb, tmp_path):
    """CrewAI's LanceDB stores a record saved without an embedding as a zero vector:
    ``import_lancedb(keep_vectors=True)`` imports it as a record without one."""
    from memworker.crewai import import_lancedb

    lance = real_lancedb(path=str(tmp_path / "lance"), vector_dim=_DIM)
    lance.save([
        MemoryRecord(id="a", content="no vector", scope="/old", categories=["k"], embedding=None),
        MemoryRecord(id="b", content="zeros", scope="/old", embedding=[0.0] * _DIM),
        MemoryRecord(id="c", content="real", scope="/old", embedding=[0.0, 0.0, 1.0, 0.0]),
    ])
    assert sorted(r.id for r in lance.list_records()) == ["a", "b", "c"]
    assert lance.get_record("a").embedding == [0.0] * _DIM  # how LanceDB keeps "none"
    settings = _settings(server, namespace)
    assert import_lancedb(tmp_path / "lance", settings, keep_vectors=True, model_id="test-model") == 3
    with ValkeyStore(settings) as store:
        try:
            assert store.count("/old") == 3 and store.list_categories() == {"k": 1}
            assert store.get_record("a").embedding is None and store.get_record("b").embedding is None
            assert store.get_record("a").content == "no vector"
            hits = store.search([0.0, 0.0, 1.0, 0.0], limit=10, min_score=-1.0)
            assert [r.id for r, _ in hits] == ["c"]
            # re-running the import rewrites the same ids
            assert import_lancedb(tmp_path / "lance", settings, keep_vectors=True, model_id="test-model") == 3
            assert store.count() == 3
        finally:
            store.reset()
