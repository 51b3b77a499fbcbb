"""``QueuedMemory``'s ``tree``, ``info``, ``list_scopes`` and ``list_categories`` are
memworker's own since they leave the LangGraph store's items out (docs/crewai.md,
"Sharing a namespace with LangGraph"). On a namespace without such items they must
give exactly what CrewAI's own ``Memory`` methods give on the same storage: the same
text, depth, 20-child cap, ``root_scope`` and path resolution (review helper-95)."""

from __future__ import annotations

import pytest

pytest.importorskip("crewai")

from crewai.memory.unified_memory import Memory  # noqa: E402
from test_store import mk  # noqa: E402  # the store suite's record maker

from memworker.crewai import LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

PATHS = [None, "/", "", "/crew", "/crew/", "crew", "s00", "/s00/", "/nope", "/langgraphx"]


@pytest.fixture(scope="module")
def embedder():
    return LocalEmbedder()


@pytest.mark.parametrize("root", [None, "/crew", "/crew/", "crew"])
def test_the_counters_give_crewais_answers_without_langgraph_items(server, namespace, embedder, root):
    settings = Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )
    store = ValkeyStore(settings)
    records = [mk("r0", scope="/", categories=["r"])]
    records += [mk(f"c{i}", scope=f"/crew/s{i:02d}", categories=[f"k{i % 3}"]) for i in range(25)]
    records += [mk("d", scope="/crew/s00/deep/er/est"), mk("x", scope="/langgraphx/a"),
                mk("lg0", scope="/crew/langgraph")]  # fmt: skip
    store.save(records)
    memory = QueuedMemory(
        storage=ValkeyStore(settings), embedder=embedder, llm=StandInLLM(), drain_timeout=30,
        root_scope=root,
    )  # fmt: skip
    try:
        diffs = []
        for path in PATHS:
            for depth in (0, 1, 3, 5):
                ours, crewais = memory.tree(path, depth), Memory.tree(memory, path, depth)
                if ours != crewais:
                    diffs.append(("tree", path, depth, ours, crewais))
            for name in ("info", "list_scopes", "list_categories"):
                ours, crewais = getattr(memory, name)(path), getattr(Memory, name)(memory, path)
                if ours != crewais:
                    diffs.append((name, path, ours, crewais))
        assert diffs == []
        assert "crew (27 records)" in Memory.tree(memory, "/crew" if root is None else None)  # not vacuous
    finally:
        store.reset()
        memory.close()
        store.close()
