"""Worker-side consolidation (CrewAI's real EncodingFlow in a real worker) and private
records (issue 17, point 1): the flow sees what the writing agent could recall, an
update never changes a record's ``source`` or ``private``, and another source's private
record is never shown to, merged, updated or deleted by someone else's consolidation.

The worker's LLM is :class:`memworker.crewai.testing.ScriptedConsolidationLLM`: it
records what each consolidation call was shown and updates (or deletes) the FIRST
record shown, i.e. the most similar one. Both server kinds (exact and FT.SEARCH paths).
"""

from __future__ import annotations

import pytest

pytest.importorskip("crewai")

from crewai.memory.types import MemoryRecord  # noqa: E402

from memworker.crewai import config as crewai_config  # noqa: E402
from memworker.crewai import flow as crewai_flow  # noqa: E402
from memworker import worker as worker_mod  # noqa: E402
from memworker.crewai import LocalEmbedder, QueuedMemory  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.store.store import ValkeyStore  # noqa: E402

ON_CLUSTER = True  # also on the test clusters (tests/conftest.py)

FACTORY = "memworker.crewai.testing:scripted_memory_config"
FIELDS = {"scope": "/team", "categories": ["pin"], "importance": 0.5}
ALICE_TEXT = "my card PIN is 4321"
BOB_TEXT = "my card PIN is 4322"
CAROL_TEXT = "the team card PIN is 1111"


@pytest.fixture(scope="module")
def embedder():
    return LocalEmbedder()


@pytest.fixture
def llm(monkeypatch):
    """The worker's scripted LLM (this process's workers build it from the factory)."""
    monkeypatch.setenv(crewai_config.MEMORY_FACTORY_ENV, FACTORY)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    yield crewai_config.worker_memory_config().llm
    crewai_config.reset_worker_memory_config()


@pytest.fixture
def env(server, namespace, llm, embedder):
    """A running worker on the current server kind, and a QueuedMemory factory."""
    settings = Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )
    made = []
    with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100, max_retries=0):

        def make(**kwargs):
            kwargs.setdefault("consolidation_threshold", 0.1)  # any similar record consolidates
            memory = QueuedMemory(
                storage=ValkeyStore(settings), embedder=embedder, llm=StandInLLM(),
                drain_timeout=60, **kwargs,
            )  # fmt: skip
            made.append(memory)
            return memory

        make.settings = settings
        yield make
        for memory in made:
            memory.reset_all()
            memory.close()


def _seed(env, text, source, private, **fields):
    """A record written through the fast path (no consolidation)."""
    return env(consolidation_threshold=1.0).remember(
        text, **{**FIELDS, **fields}, source=source, private=private
    )


def _shown_for(llm, text):
    """Ids shown to the consolidation calls of the item ``text``."""
    return [i for call in llm.shown if call["new"] == text for i in call["ids"]]


def _assert_untouched(store, record, content, source):
    got = store.get_record(record.id)
    assert got is not None, "the private record was deleted"
    assert (got.content, got.source, got.private) == (content, source, True)


def _visible_to(store, embedder, viewer, text):
    vector = list(map(float, embedder([text])[0]))
    return {r.id for r, _ in store.search(vector, limit=50, include_private=False, viewer=viewer)}


# ----------------------------------------------------------------------------- the leak
@pytest.mark.parametrize("plan", ["update", "delete"])
def test_another_sources_private_record_is_never_shown_changed_or_deleted(env, llm, embedder, plan):
    alice = _seed(env, ALICE_TEXT, "alice", True)
    carol = _seed(env, CAROL_TEXT, "carol", False)
    llm.plan = plan
    bob_memory = env()
    bob = bob_memory.remember(BOB_TEXT, **FIELDS, source="bob")
    store = bob_memory.store

    shown = _shown_for(llm, BOB_TEXT)
    # Alice's text, not her PIN's digits alone: a prompt also holds uuids and
    # microsecond timestamps, where "4321" turns up by chance (a red CI run).
    leaked = [c for c in llm.shown if ALICE_TEXT in c["prompt"]]
    assert alice.id not in shown and not leaked, (alice.id, carol.id, bob.id, leaked)
    assert shown == [carol.id]  # public records stay shared, as in CrewAI
    _assert_untouched(store, alice, ALICE_TEXT, "alice")
    assert alice.id not in _visible_to(store, embedder, "bob", BOB_TEXT)
    recalled = bob_memory.recall(ALICE_TEXT, source="bob", depth="shallow")
    assert all(m.record.id != alice.id for m in recalled)
    if plan == "update":
        # Carol's public record took Bob's text and kept its own source and privacy.
        got = store.get_record(carol.id)
        assert (got.content, got.source, got.private) == (BOB_TEXT, "carol", False)
        assert bob.id == carol.id
    else:
        assert store.get_record(carol.id) is None
        assert (bob.content, bob.source, bob.private) == (BOB_TEXT, "bob", False)
        assert store.get_record(bob.id) is not None


@pytest.mark.parametrize("target", ["alice", "no-such-record"])
def test_an_update_that_is_refused_or_names_no_shown_record_keeps_the_new_text(env, llm, target):
    """The LLM's plan "update record X, insert nothing" where X is another source's
    private record (refused) or an id it was not shown (CrewAI skips it): the new text
    was merged nowhere and inserted nowhere, and ``remember`` returned a record that
    does not hold it. It is inserted as a record of its own."""
    alice = _seed(env, ALICE_TEXT, "alice", True)
    carol = _seed(env, CAROL_TEXT, "carol", False)
    llm.plan, llm.target = "update", alice.id if target == "alice" else target
    memory = env()
    bob = memory.remember(BOB_TEXT, **FIELDS, source="bob")
    assert _shown_for(llm, BOB_TEXT) == [carol.id]
    assert bob is not None and (bob.content, bob.source, bob.private) == (BOB_TEXT, "bob", False)
    got = memory.store.get_record(bob.id)
    assert (got.content, got.source, got.scope, got.categories) == (BOB_TEXT, "bob", "/team", ["pin"])
    _assert_untouched(memory.store, alice, ALICE_TEXT, "alice")
    assert memory.store.get_record(carol.id).content == CAROL_TEXT
    assert memory.store.count() == 3


def test_own_private_records_consolidate_and_stay_private(env, llm):
    alice = _seed(env, ALICE_TEXT, "alice", True)
    llm.plan = "update"
    memory = env()
    # Alice's public write may merge into her own private record: it stays hers and private.
    merged = memory.remember(BOB_TEXT, **FIELDS, source="alice")
    assert _shown_for(llm, BOB_TEXT) == [alice.id]
    assert merged.id == alice.id
    got = memory.store.get_record(alice.id)
    assert (got.content, got.source, got.private) == (BOB_TEXT, "alice", True)


def test_a_writer_without_source_sees_public_records_only(env, llm):
    alice = _seed(env, ALICE_TEXT, "alice", True)
    nobody = _seed(env, "my card PIN is 4320", None, True)  # private to nobody
    carol = _seed(env, CAROL_TEXT, "carol", False)
    llm.plan = "update"
    memory = env()
    memory.remember(BOB_TEXT, **FIELDS)
    assert _shown_for(llm, BOB_TEXT) == [carol.id]
    _assert_untouched(memory.store, alice, ALICE_TEXT, "alice")
    _assert_untouched(memory.store, nobody, "my card PIN is 4320", None)


def test_a_private_write_never_merges_into_a_shared_record(env, llm, embedder):
    carol = _seed(env, CAROL_TEXT, "carol", False)
    alice_public = _seed(env, "my card PIN is 4320", "alice", False)  # Alice's own, but public
    llm.plan = "update"
    memory = env()
    mine = memory.remember(ALICE_TEXT, **FIELDS, source="alice", private=True)
    # Merging Alice's private text into a record others can read would publish it.
    assert _shown_for(llm, ALICE_TEXT) == []
    assert (mine.content, mine.source, mine.private) == (ALICE_TEXT, "alice", True)
    shared = ((carol, CAROL_TEXT, "carol"), (alice_public, "my card PIN is 4320", "alice"))
    for record, text, source in shared:
        got = memory.store.get_record(record.id)
        assert (got.content, got.source, got.private) == (text, source, False)
    assert mine.id not in _visible_to(memory.store, embedder, "bob", ALICE_TEXT)


def test_items_of_several_sources_in_one_job_consolidate_apart(env, llm):
    alice = _seed(env, ALICE_TEXT, "alice", True)
    llm.plan = "update"
    memory = env()
    # One job (as group commit builds from concurrent remember() calls) holding a
    # private item of Alice's and Bob's item with the same text.
    items = memory._items([ALICE_TEXT + " now"], "/team", ["pin"], None, 0.5, "alice", True, None)
    items += memory._items([ALICE_TEXT + " now"], "/team", ["pin"], None, 0.5, "bob", False, None)
    job_id, (alice_item, bob_item) = memory._queue.enqueue_encode_job(items)
    report = memory._queue.drain(timeout=60, job_ids=[job_id])
    assert report.committed == 1 and not report.failed, report.failed
    store = memory.store
    # Alice's item merged into her private record; Bob's saw nothing of hers and was
    # inserted (not dropped as a duplicate of her item).
    assert [c["ids"] for c in llm.shown] == [[alice.id]]
    got = store.get_record(alice.id)
    assert (got.content, got.source, got.private) == (ALICE_TEXT + " now", "alice", True)
    assert store.get_record(alice_item) is None
    bob = store.get_record(bob_item)
    assert bob is not None and (bob.source, bob.private) == ("bob", False)


# ----------------------------------------------------------------------------- the adapter
def _record(id, content, scope, source, private, vector):
    return MemoryRecord(id=id, content=content, scope=scope, categories=["pin"], importance=0.5,
                        source=source, private=private, embedding=vector)  # fmt: skip


@pytest.fixture
def bobs_storage(store):
    """The flow storage of a job of Bob's public items, over Alice's private record
    and two public records of Carol's (one outside the searched scope)."""
    store.save([
        _record("alice-1", ALICE_TEXT, "/team", "alice", True, VECTOR),
        _record("carol-1", CAROL_TEXT, "/team", "carol", False, [0.9, 0.1, 0.0, 0.0]),
        _record("carol-2", "elsewhere", "/other", "carol", False, [0.0, 1.0, 0.0, 0.0]),
    ])  # fmt: skip
    items = [{"id": "bob-1", "content": BOB_TEXT, "source": "bob", "private": False}]
    return crewai_flow._FlowStorage(store, items)


VECTOR = [1.0, 0.0, 0.0, 0.0]


def _search(storage):
    # As EncodingFlow.parallel_find_similar calls it.
    return storage.search(VECTOR, scope_prefix="/team", categories=None, limit=5, min_score=0.0)


def test_the_flow_storage_searches_as_the_items_source(bobs_storage):
    assert [r.id for r, _ in _search(bobs_storage)] == ["carol-1"]


def test_the_flow_storage_never_updates_another_sources_private_record(bobs_storage, store):
    _search(bobs_storage)
    # CrewAI rebuilds an updated record without source/private.
    bobs_storage.update(_record("alice-1", "hacked", "/team", None, False, VECTOR))
    _assert_untouched(store, MemoryRecord(id="alice-1", content=""), ALICE_TEXT, "alice")


def test_the_flow_storage_update_keeps_source_and_privacy(bobs_storage, store):
    _search(bobs_storage)
    bobs_storage.update(_record("carol-1", BOB_TEXT, "/team", None, False, VECTOR))
    carol = store.get_record("carol-1")
    assert (carol.content, carol.source, carol.private) == (BOB_TEXT, "carol", False)


def test_the_flow_storage_deletes_only_shown_records_it_may_see(bobs_storage, store):
    _search(bobs_storage)
    bobs_storage.delete(record_ids=["alice-1", "carol-2"])  # not Bob's to see; not shown to him
    _assert_untouched(store, MemoryRecord(id="alice-1", content=""), ALICE_TEXT, "alice")
    assert store.get_record("carol-2") is not None
    bobs_storage.delete(record_ids=["carol-1"])  # shown to Bob's search, public: shared
    assert store.get_record("carol-1") is None


# ----------------------------------------------------------------------------- redelivery
def test_a_duplicate_delivery_of_a_committed_flow_job_runs_no_consolidation(
    server, namespace, llm, embedder, raw
):
    """At-least-once delivery: a second delivery of a flow job that committed finds no
    pending mark and runs nothing, so its consolidation cannot revert a user's update
    made since (its updates are direct writes, not guarded by the commit)."""
    import json

    from memworker.keys import QueueKeys
    from memworker.queue.producer import MemoryQueue

    settings = Settings.from_url(
        server.url, namespace=namespace, search_mode="module" if server.module else "exact"
    )
    keys = QueueKeys(namespace)
    llm.plan = "update"
    with MemoryQueue(settings, producer_id="bob") as q, ValkeyStore(settings) as store:
        vector = list(map(float, embedder([CAROL_TEXT])[0]))
        carol = MemoryRecord(content=CAROL_TEXT, source="carol", embedding=vector, **FIELDS)
        store.save([carol])
        flow = {"consolidation_threshold": 0.1}
        job, _ = q.enqueue_encode_job([{"text": BOB_TEXT, **FIELDS, "source": "bob", "flow": flow}])
        (mid,) = raw.lrange(keys.q(), 0, -1)
        message = json.loads(raw.hget(keys.msgs(), mid))
        running = worker_mod.running_worker(
            settings, threads=2, worker_timeout_ms=100, max_retries=0
        )
        with running as (broker, _):
            assert q.drain(timeout=60, job_ids=[job]).committed == 1
            merged = store.get_record(carol.id)
            assert merged.content == BOB_TEXT  # the scripted LLM updated Carol's record
            merged.content = "the user's final word"
            store.update(merged)
            calls = len(llm.shown)
            again = message["options"]["redis_message_id"] = "00000000-0000-4000-8000-0000000002"
            with raw.pipeline(transaction=False) as pipe:  # (hset before rpush; a cluster has no MULTI here)
                pipe.hset(keys.msgs(), again, json.dumps(message))
                pipe.rpush(keys.q(), again)
                pipe.rpush(keys.wake(), "1")
                pipe.execute()
            broker.join("default", timeout=30_000)  # the duplicate was consumed (acked)
        assert store.get_record(carol.id).content == "the user's final word"
        assert len(llm.shown) == calls  # no consolidation call for the duplicate
        assert broker.context.duplicates == 1
