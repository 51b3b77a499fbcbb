"""CrewAI integration against the real crewai package, a real Valkey and real workers.

The embedder is the bundled all-MiniLM-L6-v2 (producer and worker share the loaded
model in this process); the LLM is memworker's deterministic StandInLLM.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("crewai")

from crewai.events.event_bus import crewai_event_bus  # noqa: E402
from crewai.events.types.memory_events import (  # noqa: E402
    MemorySaveCompletedEvent,
    MemorySaveFailedEvent,
    MemorySaveStartedEvent,
)

from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai import flow as crewai_flow  # noqa: E402
from memworker.crewai import locks as crewai_locks  # noqa: E402
from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import JobFailedError, LocalEmbedder, QueuedMemory, install, uninstall  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.errors import ConfigError  # noqa: E402
from memworker.queue.producer import MemoryQueue  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

FACTORY = "memworker.crewai.testing:standin_memory_config"


@pytest.fixture(scope="session")
def embedder():
    return LocalEmbedder()


@pytest.fixture
def worker_llm(monkeypatch):
    """Workers in this process use the StandInLLM from the memory factory."""
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, FACTORY)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    yield crewai_config.worker_memory_config().llm
    crewai_config.reset_worker_memory_config()


@pytest.fixture
def env(queue_server, namespace, worker_llm, embedder):
    """A running in-process worker and a QueuedMemory factory on a fresh namespace."""
    settings = Settings.from_url(queue_server.url, namespace=namespace, search_mode="exact")
    made = []
    with worker_mod.running_worker(
        settings, threads=4, worker_timeout_ms=100, min_backoff_ms=10, max_backoff_ms=50, max_retries=2
    ):

        def make(**kwargs):
            kwargs.setdefault("storage", queue_server.url)
            kwargs.setdefault("namespace", namespace)
            kwargs.setdefault("embedder", embedder)
            kwargs.setdefault("llm", StandInLLM())
            kwargs.setdefault("consolidation_threshold", 1.0)
            kwargs.setdefault("drain_timeout", 30)
            memory = QueuedMemory(**kwargs)
            made.append(memory)
            return memory

        make.settings = settings
        make.url = queue_server.url
        yield make
        for memory in made:
            try:
                memory.reset_all()
                memory.close()
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def events():
    seen = []
    with crewai_event_bus.scoped_handlers():
        for kind in (MemorySaveStartedEvent, MemorySaveCompletedEvent, MemorySaveFailedEvent):

            @crewai_event_bus.on(kind)
            def _(source, event, kind=kind):
                seen.append(event)

        yield seen


def _names(seen):
    return [type(e).__name__ for e in seen]


def _wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------- install
def test_install_serves_valkey_specs_and_leaves_other_specs_alone(plain_server, tmp_path, embedder):
    from crewai.memory.storage import factory
    from crewai.memory.storage.lancedb_storage import LanceDBStorage
    from crewai.memory.unified_memory import Memory

    calls = []

    def foreign(spec):
        calls.append(spec)
        return None

    factory.set_memory_storage_factory(foreign)
    try:
        install()
        install(namespace="twice")  # harmless: replaces memworker's, keeps the foreign one chained
        for spec in ("valkey://h:1/0", "valkeys://h:1", "redis://h:1/2", "rediss://h:1", "valkey"):
            assert isinstance(factory.resolve_memory_storage(spec), ValkeyStore), spec
        for spec in ("lancedb", "qdrant-edge", str(tmp_path / "lance")):
            assert factory.resolve_memory_storage(spec) is None
        assert calls == ["lancedb", "qdrant-edge", str(tmp_path / "lance")]
        lance = Memory(storage=str(tmp_path / "lance"), embedder=embedder, llm=StandInLLM())
        assert isinstance(lance._storage, LanceDBStorage)
        valkey = Memory(storage=plain_server.url, embedder=embedder, llm=StandInLLM())
        assert isinstance(valkey._storage, ValkeyStore)
        assert valkey._storage.keys.namespace == "twice"
        uninstall()
        assert factory._factory is foreign
    finally:
        factory.set_memory_storage_factory(None)


# ----------------------------------------------------------------------------- the Memory API
def test_every_memory_method_through_queued_memory(env, events):
    memory = env()
    record = memory.remember("Alice prefers green tea", scope="/prefs", categories=["food"], importance=0.7)
    assert record is not None and record.scope == "/prefs" and record.categories == ["food"]
    assert memory.store.get_record(record.id).content == "Alice prefers green tea"

    assert memory.remember_many(
        ["Bob is allergic to peanuts", "Carol works at Acme"],
        scope="/people", categories=["people"], importance=0.5,
    ) == []  # fmt: skip
    shallow = memory.recall("who is allergic to peanuts", depth="shallow", limit=2)
    assert shallow[0].record.content == "Bob is allergic to peanuts"
    deep = memory.recall("peanut allergy", depth="deep", limit=3)
    assert any(m.record.content == "Bob is allergic to peanuts" for m in deep)

    assert memory.list_scopes() == ["/people", "/prefs"]
    assert [r.content for r in memory.list_records("/people")] != []
    assert memory.info("/people").record_count == 2
    assert "/people (2 records)" in memory.tree()
    assert memory.list_categories() == {"food": 1, "people": 2}

    updated = memory.update(record.id, content="Alice prefers black coffee", importance=0.9)
    assert memory.store.get_record(record.id).content == "Alice prefers black coffee"
    assert updated.importance == 0.9

    view = memory.scope("/team")
    view.remember("Dan leads the team", categories=["people"], importance=0.5)
    assert memory.info("/team").record_count == 1
    assert [m.record.content for m in view.recall("team lead", depth="shallow")] == ["Dan leads the team"]
    sliced = memory.slice(["/team", "/prefs"])
    assert {m.record.scope for m in sliced.recall("preferences and lead", depth="shallow")} <= {"/team", "/prefs"}

    async def twins():
        r = await memory.aremember("Eve likes chess", scope="/games", categories=["games"], importance=0.4)
        await memory.aremember_many(["Frank likes go"], scope="/games", categories=["games"], importance=0.4)
        return r, await memory.arecall("board games", depth="shallow")

    r, matches = asyncio.run(twins())
    assert r.scope == "/games" and {m.record.content for m in matches} >= {"Eve likes chess", "Frank likes go"}

    assert memory.forget(scope="/games") == 2
    memory.reset("/team")
    assert memory.info("/team").record_count == 0
    memory.reset_all()
    assert memory.info().record_count == 0

    from crewai.events.event_bus import crewai_event_bus

    crewai_event_bus.flush()  # sync handlers run on the bus's pool: the last may be pending
    names = _names(events)
    assert names.count("MemorySaveStartedEvent") == names.count("MemorySaveCompletedEvent") >= 5
    assert "MemorySaveFailedEvent" not in names
    memory.close()


def test_remember_is_one_trace_from_the_agent_to_the_commit(env):
    """OpenTelemetry (memworker.tracing): with the SDK set up in the agent, a
    ``QueuedMemory.remember`` inside the agent's span makes one trace: the enqueue span
    under the agent's, the worker's embed and commit spans under the enqueue's."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from otel_file import memory_exporter

    exporter = memory_exporter()
    exporter.clear()
    memory = env()
    with trace.get_tracer("agent").start_as_current_span("agent.turn") as turn:
        record = memory.remember("Grace keeps the release notes", scope="/docs", categories=["docs"], importance=0.5)
    memory.drain_writes()
    trace_id = turn.get_span_context().trace_id

    def commit_ended():  # the worker ends its span after the commit the drain saw
        return any(s.name == "memworker.commit" and s.context.trace_id == trace_id
                   for s in exporter.get_finished_spans())  # fmt: skip

    assert _wait_for(commit_ended)
    spans = exporter.get_finished_spans()
    enqueues = [s for s in spans if s.name == "memworker.enqueue" and s.context.trace_id == trace_id]
    assert len(enqueues) == 1 and enqueues[0].parent.span_id == turn.get_span_context().span_id
    job_id = enqueues[0].attributes["memworker.job_id"]
    worker = {s.name: s for s in spans if s.attributes.get("memworker.job_id") == job_id and s.name != "memworker.enqueue"}
    assert {"memworker.embed", "memworker.commit"} <= set(worker), [s.name for s in spans]
    for s in worker.values():
        assert s.context.trace_id == trace_id and s.parent.span_id == enqueues[0].context.span_id
    assert worker["memworker.commit"].attributes["memworker.outcome"] == "committed"
    assert memory.store.get_record(record.id) is not None
    assert "Grace" not in repr([dict(s.attributes or {}) for s in spans])
    memory.close()


def test_concurrent_remember_calls_share_jobs_and_each_gets_its_own_record(env):
    """Group commit: calls made while an enqueue is in flight go in one job; each call
    still returns its own record, equal texts stay separate records (no dedup across
    calls), and a bad item fails only its own call."""
    from memworker.errors import ValidationError

    memory = env()
    queue = memory.queue
    real = queue.enqueue_encode_items
    sizes: list[int] = []

    def held_first(job_items, **kwargs):
        sizes.append(len(job_items))
        if len(sizes) == 1:  # hold the first send until the others have queued up
            assert _wait_for(lambda: len(memory._group._waiting) == 8)
        return real(job_items, **kwargs)

    queue.enqueue_encode_items = held_first
    texts = ["first"] + [f"note {i}" for i in range(7)] + ["same text", "same text"]
    got: dict[int, object] = {}

    def one(i: int) -> None:
        metadata = {"bad": object()} if i == 5 else {"i": i}
        try:
            got[i] = memory.remember(texts[i], scope="/g", categories=["c"], importance=0.5, metadata=metadata)
        except Exception as exc:  # noqa: BLE001
            got[i] = exc

    threads = [threading.Thread(target=one, args=(0,))]
    threads[0].start()
    _wait_for(lambda: sizes)
    threads += [threading.Thread(target=one, args=(i,)) for i in range(1, len(texts))]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(30)
    assert sizes == [1, 8]  # one job for the eight valid calls that queued behind the first
    assert isinstance(got[5], ValidationError) and "metadata" in str(got[5])
    for i, text in enumerate(texts):
        if i != 5:
            assert got[i].content == text and got[i].metadata == {"i": i}
            assert memory.store.get_record(got[i].id).content == text
    assert got[8].id != got[9].id
    assert memory.info("/g").record_count == 9


def test_read_only_memory_stores_nothing(env):
    writer = env()
    record = writer.remember("kept as is", scope="/a", categories=[], importance=0.5)
    reader = env(read_only=True)
    assert reader.remember("x", scope="/a", categories=[], importance=0.5) is None
    assert reader.remember_many(["y"]) == []
    assert reader.update(record.id, content="changed").content == "kept as is"
    assert reader.recall("kept", depth="shallow")[0].record.id == record.id
    assert writer.info().record_count == 1


def test_root_scope_nesting(env):
    memory = env(root_scope="/crew/research")
    rec = memory.remember("Market grew 5%", scope="/market", categories=["m"], importance=0.5)
    assert rec.scope == "/crew/research/market"
    other = memory.remember("Elsewhere", scope="/x", categories=[], importance=0.5, root_scope="/crew/other")
    assert other.scope == "/crew/other/x"
    inferred = memory.remember("Dave prefers window seats")  # LLM path: inferred scope nested too
    assert inferred.scope == "/crew/research/dave" and inferred.categories == ["dave"]
    memory.remember_many(["Trend A", "Trend B"], scope="market", categories=["m"], importance=0.5)
    assert memory.list_scopes() == ["/crew/research/dave", "/crew/research/market"]
    assert memory.info("/market").record_count == 3
    assert {m.record.scope for m in memory.recall("market", depth="shallow")} <= {
        "/crew/research/market", "/crew/research/dave"
    }  # fmt: skip
    assert memory.forget(scope="/market") == 3
    assert memory.store.count("/crew/other") == 1


def test_private_records_of_other_sources_never_crowd_out_results(server, namespace, worker_llm, embedder):
    settings = Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )
    with worker_mod.running_worker(settings, threads=4, worker_timeout_ms=100):
        memory = QueuedMemory(
            storage=ValkeyStore(settings), embedder=embedder, llm=StandInLLM(), consolidation_threshold=1.0
        )
        try:
            memory.remember_many(
                [f"the launch code is {i}" for i in range(30)],
                scope="/s", categories=["c"], importance=0.5, source="alice", private=True,
            )  # fmt: skip
            memory.remember_many(
                ["weather is sunny", "lunch is at noon", "the parking lot is full"],
                scope="/s", categories=["c"], importance=0.5, source="bob",
            )  # fmt: skip
            for depth in ("shallow", "deep"):
                got = memory.recall("what is the launch code", limit=3, depth=depth, source="bob")
                assert len(got) == 3 and all(not m.record.private for m in got), depth
            own = memory.recall("what is the launch code", limit=3, depth="shallow", source="alice")
            assert all(m.record.private and m.record.source == "alice" for m in own) and len(own) == 3
            anyone = memory.recall("launch code", limit=3, depth="shallow", include_private=True)
            assert len(anyone) == 3
        finally:
            memory.reset_all()
            memory.close()


def test_recall_right_after_remember_many_sees_every_item(env):
    memory = env()
    texts = [f"fact number {i} about topic {i % 7}" for i in range(300)]
    for i in range(0, 300, 50):
        memory.remember_many(texts[i : i + 50], scope="/f", categories=["f"], importance=0.5)
    got = memory.recall("fact number", limit=300, depth="shallow")
    assert len(got) == 300
    memory.remember_many(["one more fact"], scope="/f", categories=["f"], importance=0.5)
    assert memory.info("/f").record_count == 301  # every read drains first


# ----------------------------------------------------------------------------- the hand-off
def test_remember_many_returns_before_its_job_reaches_valkey(env, events, monkeypatch):
    """The agent waits on neither the model nor the network: remember_many hands its
    items to the memory's save thread, and drain_writes (so recall) waits for that
    hand-off before it waits for the job."""
    memory = env()
    real = memory.queue.enqueue_encode_jobs
    sending, release = threading.Event(), threading.Event()

    def held(chunks, *callbacks):
        sending.set()
        assert release.wait(30)
        return real(chunks, *callbacks)

    monkeypatch.setattr(memory.queue, "enqueue_encode_jobs", held)
    memory.remember_many(["Gina sails", "Hugo rows"], scope="/boats", categories=["b"], importance=0.5)
    assert sending.wait(10)  # the save thread is in the send; the caller has returned
    assert memory.queue.pending() == [] and memory.store.count() == 0
    threading.Timer(0.3, release.set).start()
    got = memory.recall("boats", depth="shallow")
    assert {m.record.content for m in got} == {"Gina sails", "Hugo rows"}
    assert _wait_for(lambda: _names(events).count("MemorySaveCompletedEvent") == 1)


def test_background_enqueue_off_enqueues_in_the_callers_thread(env, events, monkeypatch):
    """background_enqueue=False: remember_many returns once its job is in Valkey."""
    threads, enqueued = [], []
    for background in (True, False):
        memory = env(background_enqueue=background)
        real = memory.queue.enqueue_encode_jobs

        def spy(chunks, *callbacks, real=real):
            threads.append(threading.current_thread())
            result = real(chunks, *callbacks)
            enqueued.extend(job for job, _ in result)
            return result

        monkeypatch.setattr(memory.queue, "enqueue_encode_jobs", spy)
        memory.remember_many(["Ida skis"], scope="/s", categories=["s"], importance=0.5)
        if not background:  # the job was in Valkey before the call returned
            assert threads[-1] is threading.current_thread() and len(enqueued) == 2
        memory.drain_writes()
    assert threads[0] is not threading.current_thread() and threads[0].name.startswith("memory-save")
    assert env().info("/s").record_count == 2 and "MemorySaveFailedEvent" not in _names(events)


def test_remember_many_bad_input_is_a_failed_event_naming_the_field(env, events):
    memory = env()
    fields = {"scope": "/x", "importance": 0.5}
    assert memory.remember_many(["fine", " "], categories=["c"], **fields) == []
    memory.remember_many(["fine"], categories=["c"], metadata={"bad": object()}, **fields)
    memory.remember_many(["fine"], categories="c", **fields)  # a str is not a list of categories
    memory.remember_many(["fine"], categories=[""], **fields)
    memory.remember_many(["fine"], categories=["c"], private="false", **fields)  # never coerced
    memory.drain_writes()  # reported, never raised
    # the bus hands events to its handler threads: they arrive a moment later, in any order
    assert _wait_for(lambda: _names(events).count("MemorySaveFailedEvent") == 5), _names(events)
    assert _wait_for(lambda: _names(events).count("MemorySaveStartedEvent") == 5), _names(events)
    failed = [e.error for e in events if isinstance(e, MemorySaveFailedEvent)]
    for want in (
        "items[1].text must not be empty",
        "items[0].metadata is not JSON-serializable",
        "items[0].categories must be a list of strings",
        "items[0].categories[0] must be a non-empty string",
        "items[0].private must be a boolean",
    ):
        assert sum(want in got for got in failed) == 1, (want, failed)
    assert memory.info().record_count == 0 and memory.queue.pending() == []


def test_a_normal_exit_right_after_remember_many_still_enqueues_the_job(plain_server, namespace):
    """No drain, no close: the interpreter's exit finishes the save thread's hand-off."""
    script = (
        "import sys\n"
        "from memworker.crewai import LocalEmbedder, QueuedMemory\n"
        "from memworker.crewai.testing import StandInLLM\n"
        "memory = QueuedMemory(storage=sys.argv[1], namespace=sys.argv[2], embedder=LocalEmbedder(),\n"
        "                      llm=StandInLLM(), consolidation_threshold=1.0)\n"
        "memory.remember_many(['said just before exit', 'and this too'], scope='/exit', categories=['e'],\n"
        "                     importance=0.5)\n"
        "print(memory.producer_id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, plain_server.url, namespace], capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    producer = out.stdout.split()[-1]
    status = MemoryQueue(Settings.from_url(plain_server.url, namespace=namespace)).status()
    assert status["pending"].get(producer) == 1 and status["depth"] == 1, status


# ----------------------------------------------------------------------------- the LLM path
def test_llm_path_infers_fields_and_consolidates_in_the_worker(env, worker_llm):
    producer_llm = StandInLLM()
    memory = env(llm=producer_llm, consolidation_threshold=0.6)
    first = memory.remember("The office wifi password is alpha", scope="/office", categories=["it"], importance=0.5)
    second = memory.remember("The office wifi password is bravo", scope="/office", categories=["it"], importance=0.5)
    # The stand-in supersedes a record with the same first four words: updated, not inserted.
    assert second.id == first.id and second.content == "The office wifi password is bravo"
    assert memory.info("/office").record_count == 1
    inferred = memory.remember("Gina manages the budget")
    assert (inferred.scope, inferred.categories, inferred.importance) == ("/gina", ["gina"], 0.6)
    assert inferred.metadata["entities"] == ["Gina"]
    # intra-batch dedup (CrewAI's) on the flow path
    memory.remember_many(["Hank owns a boat", "Hank owns a boat"])
    assert memory.info("/hank").record_count == 1
    assert worker_llm.calls.get("consolidation", 0) >= 1 and worker_llm.calls.get("save", 0) >= 2
    assert producer_llm.calls.get("save", 0) == producer_llm.calls.get("consolidation", 0) == 0


def test_consolidation_lock_is_exclusive_across_holders(plain_server, namespace):
    import redis

    client = redis.Redis(host="127.0.0.1", port=plain_server.port)
    key = crewai_locks.lock_key(namespace, "/s")
    order = []
    with crewai_locks.scope_lock(client, key, lease_ms=1000):

        def second():
            with crewai_locks.scope_lock(client, key, lease_ms=1000):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.8)  # longer than a third of the lease: renewal keeps it held
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]
    with crewai_locks.scope_lock(client, key):
        with pytest.raises(crewai_locks.ScopeBusyError):
            with crewai_locks.scope_lock(client, key, wait_ms=100):
                pass
    assert client.exists(key) == 0
    client.close()


def test_failed_jobs_are_events_from_drain_and_errors_from_remember(env, monkeypatch, events):
    monkeypatch.delenv(crewai_config.MEMORY_FACTORY_ENV)
    monkeypatch.delenv(crewai_config.LLM_ENV, raising=False)
    crewai_config.reset_worker_memory_config()  # the worker now has no LLM
    memory = env()
    memory.remember_many(["needs inference"])  # fields missing: the flow needs an LLM
    memory.drain_writes()  # reported, not raised
    assert _wait_for(lambda: "MemorySaveFailedEvent" in _names(events))
    failed = [e for e in events if isinstance(e, MemorySaveFailedEvent)]
    assert "no LLM" in failed[0].error
    with pytest.raises(JobFailedError, match="no LLM"):
        memory.remember("also needs inference")


def test_embedding_model_mismatch_is_a_clear_error(env, plain_server, namespace):
    memory = env()  # records the bundled model's id
    with pytest.raises(ConfigError, match="embedding model mismatch"):
        env(model_id="some/other-model")

    class Other:
        model_id = "some/other-model"
        dimension = 8

        def encode(self, texts):
            raise AssertionError

    worker_mod.set_embedder_factory(lambda: Other())
    try:
        with pytest.raises(ConfigError, match="embedding model mismatch"):
            crewai_flow.check_worker_model(memory.store)
    finally:
        worker_mod.set_embedder_factory(None)


# ----------------------------------------------------------------------------- a crew
def test_crew_kickoff_with_queued_memory_completes(env, worker_llm, events):
    from crewai import Agent, Crew, Task

    llm = StandInLLM()
    memory = env(llm=llm, root_scope="/crew/test")
    agent = Agent(role="Researcher", goal="Summarize facts", backstory="Careful.", llm=llm)
    task = Task(description="Summarize what we know about peanuts.", expected_output="A sentence.", agent=agent)
    crew = Crew(agents=[agent], tasks=[task], memory=memory)
    out = crew.kickoff()
    assert "Stand-in answer" in out.raw
    memory.drain_writes()
    assert memory.info().record_count >= 1
    # the bus hands events to its handler threads: they arrive a moment later
    assert _wait_for(lambda: "MemorySaveCompletedEvent" in _names(events)), _names(events)


def test_deepcopy_returns_the_memory_itself(env):
    import copy

    memory = env()
    state = {"memory": memory, "notes": ["a"]}
    copied = copy.deepcopy(state)
    assert copied["memory"] is memory and copied["notes"] is not state["notes"]
    copied["memory"].remember("Copied memories write through one queue.", scope="/copied")
    assert [r.content for r in memory.list_records("/copied")] == ["Copied memories write through one queue."]


def test_crew_copies_share_the_queued_memory(env, worker_llm):
    """CrewAI's ``Crew.copy()`` (``kickoff_for_each``, ``train``, ``test``) hands the
    crew's memory object to each copy: every run writes through the one QueuedMemory
    (its queue and its drain), not through a Memory rebuilt from its fields."""
    from crewai import Agent, Crew, Task

    llm = StandInLLM()
    memory = env(llm=llm, root_scope="/crew/each")
    agent = Agent(role="Researcher", goal="Summarize facts", backstory="Careful.", llm=llm)
    task = Task(description="Summarize what we know about {topic}.", expected_output="A sentence.", agent=agent)
    crew = Crew(agents=[agent], tasks=[task], memory=memory)
    assert crew.copy()._memory is memory
    outs = crew.kickoff_for_each(inputs=[{"topic": "peanuts"}, {"topic": "almonds"}])
    assert len(outs) == 2 and all("Stand-in answer" in out.raw for out in outs)
    memory.drain_writes()
    contents = " ".join(record.content for record in memory.list_records())
    assert "peanuts" in contents and "almonds" in contents, contents


# ----------------------------------------------------------------------------- a real worker process
def test_real_worker_subprocess_and_lancedb_import(plain_server, namespace, embedder, tmp_path):
    from crewai.memory.unified_memory import Memory

    from memworker.crewai import import_lancedb

    env_vars = dict(os.environ, MEMWORKER_MEMORY_FACTORY=FACTORY, MEMWORKER_SEARCH="exact")
    proc = subprocess.Popen(
        [sys.executable, "-m", "memworker.cli", "--url", plain_server.url, "--namespace", namespace,
         "worker", "--threads", "4"],
        env=env_vars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    memory = QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=embedder,
                          llm=StandInLLM(), drain_timeout=60)  # fmt: skip
    try:
        record = memory.remember("Ivy runs the night shift")  # inference + consolidation on
        assert record.scope == "/ivy"
        memory.remember_many([f"shift note {i}" for i in range(20)], scope="/n", categories=["n"], importance=0.5)
        assert memory.info("/n").record_count == 20

        lance = Memory(storage=str(tmp_path / "lance"), embedder=embedder, llm=StandInLLM())
        for i in range(5):
            lance.remember(f"old memory {i}", scope="/old", categories=["old"], importance=0.3)
        lance.drain_writes()
        seen = []
        n = import_lancedb(tmp_path / "lance", plain_server.url, namespace=namespace,
                           progress=lambda d, t: seen.append((d, t)))  # fmt: skip
        assert n == 5 and seen[-1] == (5, 5)
        assert memory.info("/old").record_count == 5
        assert memory.recall("old memory 3", depth="shallow", limit=1)[0].record.content == "old memory 3"
    finally:
        memory.reset_all()
        memory.close()
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
