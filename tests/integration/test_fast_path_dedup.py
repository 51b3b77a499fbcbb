"""Fast-path intra-batch dedup: CrewAI's rule applied by the worker to jobs that skip
the EncodingFlow (every field given, consolidation off), against a real Valkey and
real dramatiq worker threads."""

from __future__ import annotations

import numpy as np
import pytest

from memworker.crewai import config as crewai_config
from memworker.crewai import flow as crewai_flow
from memworker.queue import jobs as queue_jobs
from memworker.worker import dedup as worker_dedup
from memworker import worker as worker_mod
from memworker.errors import ValidationError
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

FAST = {"consolidation_threshold": 1.0, "batch_dedup_threshold": 0.98}


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


#: text -> vector; cos(alpha, alpha-near) ~ 0.990, cos(alpha, alpha-far) ~ 0.949,
#: cos(alpha-near, alpha-far) ~ 0.988.
VECTORS = {
    "alpha": _unit(1, 0, 0, 0),
    "alpha-near": _unit(1, 0.14, 0, 0),
    "alpha-far": _unit(1, 0.33, 0, 0),
    "beta": _unit(0, 1, 0, 0),
    "gamma": _unit(0, 0, 1, 0),
}


class TableEmbedder:
    """Vectors from :data:`VECTORS` (a worker embedder: ``encode`` and ``dimension``)."""

    dimension = 4

    def encode(self, texts):
        return np.stack([VECTORS[t] for t in texts])


@pytest.fixture
def table():
    worker_mod.set_embedder_factory(TableEmbedder)
    yield
    worker_mod.set_embedder_factory(None)


@pytest.fixture
def qsettings(plain_server, namespace) -> Settings:
    return Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")


@pytest.fixture
def rawq(plain_server):
    import redis

    client = redis.Redis(host="127.0.0.1", port=plain_server.port, decode_responses=True)
    yield client
    client.close()


# ----------------------------------------------------------------------------- the rule
def _crewai_dropped(vectors, threshold):
    """What CrewAI's own EncodingFlow.intra_batch_dedup drops."""
    from crewai.memory.encoding_flow import EncodingFlow, ItemState
    from crewai.memory.types import MemoryConfig

    flow = EncodingFlow(storage=None, llm=None, embedder=None, config=MemoryConfig())
    flow._config.batch_dedup_threshold = threshold
    flow.state.items = [
        ItemState(content=str(i), embedding=[float(x) for x in v]) for i, v in enumerate(vectors)
    ]
    flow.intra_batch_dedup()
    return [i for i, item in enumerate(flow.state.items) if item.dropped]


def test_batch_duplicates_matches_crewai_intra_batch_dedup():
    pytest.importorskip("crewai")
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((6, 16))
    for trial in range(6):
        noise = [0.02, 0.08, 0.2][trial % 3]
        picks = rng.integers(0, 6, size=60)
        vectors = centers[picks] + noise * rng.standard_normal((60, 16))
        vectors[10] = vectors[3]  # exact duplicates too
        vectors[11] = 0.0  # a zero vector: similarity 0 with anything
        for threshold in (0.0, 0.5, 0.9, 0.95, 0.98, 0.995):
            vectors32 = vectors.astype(np.float32)
            expected = _crewai_dropped(vectors32, threshold)
            assert worker_dedup.batch_duplicates(vectors32, threshold) == expected, (trial, threshold)


def test_batch_duplicates_compares_with_kept_items_only_and_can_be_disabled():
    a, near, far = VECTORS["alpha"], VECTORS["alpha-near"], VECTORS["alpha-far"]
    # near ~ alpha (dropped); far ~ near but not ~ alpha: near was dropped, so far stays.
    assert worker_dedup.batch_duplicates([a, near, far], 0.98) == [1]
    assert worker_dedup.batch_duplicates([near, a, far], 0.98) == [1, 2]
    assert worker_dedup.batch_duplicates([a, a, a], 0.98) == [1, 2]
    assert worker_dedup.batch_duplicates([a, a], 1.0000001) == []  # above 1: off
    assert worker_dedup.batch_duplicates([a, a], None) == []
    assert worker_dedup.batch_duplicates([a, a], float("nan")) == []
    assert worker_dedup.batch_duplicates([a], 0.0) == []
    assert worker_dedup.batch_duplicates([], 0.5) == []


def test_which_jobs_take_the_flow():
    assert not queue_jobs.needs_flow(None)
    assert not queue_jobs.needs_flow(FAST)
    assert not queue_jobs.needs_flow({"infer": [], "consolidation_threshold": 1.0})
    assert queue_jobs.needs_flow({"infer": ["scope"], "consolidation_threshold": 1.0})
    assert queue_jobs.needs_flow({"infer": [], "consolidation_threshold": 0.85})
    # No consolidation_threshold: CrewAI's default (0.85), consolidation on.
    assert queue_jobs.needs_flow({"batch_dedup_threshold": 0.98})
    assert worker_dedup.fast_path_dedup_threshold([{"flow": FAST}]) == 0.98
    assert worker_dedup.fast_path_dedup_threshold([{"content": "x"}]) is None
    with pytest.raises(ValidationError, match="batch_dedup_threshold"):
        worker_dedup.fast_path_dedup_threshold([{"flow": {"batch_dedup_threshold": "high"}}])


# ----------------------------------------------------------------------------- the worker
def _job_items(texts, flow=FAST):
    items = [{"text": t, "scope": "/d", "categories": ["c"], "importance": 0.5} for t in texts]
    if flow is not None:
        for item in items:
            item["flow"] = dict(flow)
    return items


def _run(qsettings, jobs):
    """Enqueue each job, run a worker until they are committed; -> [(job id, ids)]."""
    with MemoryQueue(qsettings, producer_id="p") as q:
        done = [q.enqueue_encode_job(items) for items in jobs]
        with worker_mod.running_worker(qsettings, threads=2, worker_timeout_ms=100, max_retries=0):
            report = q.drain(timeout=30, job_ids=[job_id for job_id, _ in done])
        assert report.committed == len(jobs) and report.failed == []
        assert q.pending() == []
    return done


def test_worker_fast_path_drops_near_duplicates_of_one_job(qsettings, table, rawq, monkeypatch):
    def no_flow(*args, **kwargs):
        raise AssertionError("these jobs must take the fast path")

    monkeypatch.setattr(crewai_flow, "run_flow_job", no_flow)
    texts = ["alpha", "alpha-near", "beta", "alpha", "alpha-far", "gamma"]
    (job, ids), (other, other_ids) = _run(qsettings, [_job_items(texts), _job_items(["alpha"])])
    with ValkeyStore(qsettings) as store:
        kept = {i: store.get_record(rid) for i, rid in enumerate(ids)}
        assert [i for i, rec in kept.items() if rec is None] == [1, 3]  # near and exact copies
        assert [kept[i].content for i in (0, 2, 4, 5)] == ["alpha", "beta", "alpha-far", "gamma"]
        assert kept[0].embedding == pytest.approx(VECTORS["alpha"].tolist())
        assert not rawq.hexists(f"{{{qsettings.namespace}}}:rec:{ids[0]}", "flow")
        # Dedup is per job: the same text in another job is stored again.
        assert store.get_record(other_ids[0]).content == "alpha"
        assert store.count("/d") == 5
    # What each item became, as the flow path reports it ("" = dropped as a duplicate).
    results = rawq.hgetall(queue_jobs.result_key(qsettings.namespace, job))
    assert results == {
        ids[0]: ids[0], ids[1]: "", ids[2]: ids[2], ids[3]: "", ids[4]: ids[4], ids[5]: ids[5]
    }  # fmt: skip
    assert 0 < rawq.pttl(queue_jobs.result_key(qsettings.namespace, job)) <= queue_jobs.RESULT_TTL_MS
    assert rawq.exists(queue_jobs.result_key(qsettings.namespace, other)) == 0  # nothing dropped
    assert rawq.hget(f"{{{qsettings.namespace}}}:stats", "records") == "5"


def test_worker_fast_path_threshold_comes_with_the_job(qsettings, table):
    texts = ["alpha", "alpha-near", "alpha"]
    (_, strict), (_, off), (_, plain) = _run(
        qsettings,
        [
            _job_items(texts, {**FAST, "batch_dedup_threshold": 0.995}),  # only exact copies
            _job_items(texts, {**FAST, "batch_dedup_threshold": 1.5}),  # > 1: off
            _job_items(texts, flow=None),  # a plain MemoryQueue job: no dedup
        ],
    )
    with ValkeyStore(qsettings) as store:
        assert [store.get_record(i) is not None for i in strict] == [True, True, False]
        assert all(store.get_record(i) is not None for i in off + plain)
        assert store.count() == 8


def test_single_item_jobs_are_never_deduplicated(qsettings, table, rawq):
    texts = ["alpha", "alpha", "alpha-near"]
    jobs = _run(qsettings, [_job_items([t]) for t in texts])
    with ValkeyStore(qsettings) as store:
        assert [store.get_record(ids[0]).content for _, ids in jobs] == texts
    assert not any(rawq.exists(queue_jobs.result_key(qsettings.namespace, j)) for j, _ in jobs)


# ----------------------------------------------------------------------------- QueuedMemory
@pytest.fixture
def memory(plain_server, namespace, monkeypatch):
    """A QueuedMemory (consolidation off) and an in-process worker with the bundled model;
    the worker has no LLM and the flow path is forbidden: everything takes the fast path."""
    pytest.importorskip("crewai")
    from memworker.crewai import LocalEmbedder, QueuedMemory
    from memworker.crewai.testing import StandInLLM

    def no_flow(*args, **kwargs):
        raise AssertionError("these jobs must take the fast path")

    monkeypatch.setattr(crewai_flow, "run_flow_job", no_flow)
    monkeypatch.delenv(crewai_config.MEMORY_FACTORY_ENV, raising=False)
    crewai_config.reset_worker_memory_config()
    worker_mod.set_embedder_factory(None)
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    with worker_mod.running_worker(settings, threads=2, worker_timeout_ms=100, max_retries=0):
        made = QueuedMemory(
            storage=plain_server.url, namespace=namespace, embedder=LocalEmbedder(),
            llm=StandInLLM(), consolidation_threshold=1.0, drain_timeout=60,
        )  # fmt: skip
        yield made
        made.reset_all()
        made.close()
    crewai_config.reset_worker_memory_config()


def test_remember_many_with_a_duplicate_stores_two_records_and_recall_sees_them(memory):
    texts = ["Bob is allergic to peanuts", "Carol works at Acme", "Bob is allergic to peanuts"]
    assert memory.remember_many(texts, scope="/people", categories=["people"], importance=0.5) == []
    found = memory.recall("who is allergic to peanuts", depth="shallow", limit=10)  # drains first
    assert sorted(m.record.content for m in found) == texts[:2]
    assert memory.info("/people").record_count == 2
    assert memory.list_categories() == {"people": 2}

    # remember() is a single-item job: the same text twice is two records, both returned.
    first = memory.remember("Dan leads the team", scope="/team", categories=["t"], importance=0.5)
    second = memory.remember("Dan leads the team", scope="/team", categories=["t"], importance=0.5)
    assert first is not None and second is not None and first.id != second.id
    assert memory.info("/team").record_count == 2


def test_queued_memory_sends_its_batch_dedup_threshold(memory):
    memory._config.batch_dedup_threshold = 1.5  # above 1: CrewAI's rule never drops
    memory.remember_many(["Eve likes chess"] * 3, scope="/games", categories=["g"], importance=0.5)
    memory.drain_writes()
    assert memory.info("/games").record_count == 3
