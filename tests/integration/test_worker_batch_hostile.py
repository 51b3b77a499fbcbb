"""Hostile review of the worker's batched job path (memworker.worker.batch, with the
process's embedding batcher it feeds): inputs a user, an LLM or a custom embedder
controls, against a real Valkey and real dramatiq worker threads.

Each test states the promise it checks (docs/guarantees.md, section 1): a job is
committed exactly once in effect or reported failed; a bad job of a fetch fails alone;
no drain hangs; no worker thread dies; nothing is retried forever; of two jobs of one
fetch writing one record id, the later enqueue wins.

Not repeated here: a model that raises on one single-text job and a save job of
another dimension (test_batched.py), crafted envelopes (test_crafted_messages.py),
crafted payload fields (test_hostile_input.py).
"""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from test_worker import DIM, _record, qsettings, rawq, vector, workers  # noqa: F401

from memworker import worker as worker_mod
from memworker.errors import DrainTimeout
from memworker.queue.jobs import QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.store.store import ValkeyStore


class HostileEmbedder:
    """Deterministic vectors (``vector(text)``), with per-text hostility:

    - a batch holding a text that starts with ``WIDE`` is answered in dimension 16;
    - a text starting with ``NAN`` / ``INF`` gets a NaN / inf component;
    - a batch holding a text starting with ``SHORT`` gets one vector too few;
    - ``fail_times[text]``: the model raises that many times on a batch holding it.
    """

    dimension = DIM

    def __init__(self) -> None:
        self.calls = 0
        self.texts_seen: list[str] = []
        self.fail_times: dict[str, int] = {}
        self.lock = threading.Lock()

    def encode(self, texts):
        with self.lock:
            self.calls += 1
            self.texts_seen += list(texts)
            for t in texts:
                if self.fail_times.get(t, 0) > 0:
                    self.fail_times[t] -= 1
                    raise OSError("transient model failure")
        wide = any(t.startswith("WIDE") for t in texts)
        out = []
        for t in texts:
            v = vector(t)
            if wide:
                v = np.concatenate([v, v]) / np.sqrt(2)
            if t.startswith("NAN"):
                v = v.copy()
                v[0] = np.nan
            if t.startswith("INF"):
                v = v.copy()
                v[1] = np.inf
            out.append(v)
        if any(t.startswith("SHORT") for t in texts):
            out = out[:-1]
        return np.stack(out) if out else np.empty((0, DIM), np.float32)


@pytest.fixture
def hostile():
    embedder = HostileEmbedder()
    worker_mod.set_embedder_factory(lambda: embedder)
    yield embedder
    worker_mod.set_embedder_factory(None)


def _unstick(broker, embedder) -> None:
    """Teardown help for a test that found a dead inference thread: give the process
    a new batcher (jobs handed back then run), and fail every future the old one left
    unresolved (the commit lanes' and the worker threads'), so the worker stops
    without waiting out its close and stop timeouts."""
    from memworker.worker import runtime

    old = runtime._batcher
    worker_mod.set_embedder_factory(lambda: embedder)
    futures = []
    if old is not None:
        with old._cond:
            futures += [segment[0].future for segment in old._queue]
    batches = broker.batches
    if batches is not None:
        with batches._lock:
            futures += [job.future for job in batches._held if job.future is not None]
    for future in futures:
        if not future.done():
            try:
                future.set_exception(RuntimeError("unstuck by the test's teardown"))
            except Exception:  # noqa: BLE001 - resolved meanwhile
                pass


def _embed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("memworker-embed")]


# --------------------------------------------------------------------- custom embedder
def test_an_embedder_changing_dimension_inside_one_request_fails_that_job_only(
    qsettings, hostile, workers, rawq  # noqa: F811
):
    """A custom embedder answers one batch in another dimension (here: every batch
    holding a text starting with "WIDE"). A job whose texts span two model batches
    (default settings: 64-text batches; here the 10th 7-text job of a fetch straddles
    the 64th text) then gets rows of two dimensions. Found: ``EmbeddingBatcher._fill`` (memworker/embedding/batcher.py)
    assigns the second part into the array sized by the first part, the ValueError
    escapes ``_process``/``_run`` (no except there) and kills the only inference
    thread; the straddling job's future is never resolved, so the commit lane blocks
    for ever in ``JobBatches._prepare`` (``future.result()`` without a timeout) and
    every later job of the process waits too: the drain times out with good jobs
    pending.

    Expected: the straddling job (and the WIDE job, whose dimension is wrong) fail,
    reported to the drain; the inference thread survives; every other job commits."""
    # 10 jobs of 7 texts: texts 0..63 make the first batch (64), so job 9 (texts
    # 63..69) straddles it; job 10 holds a WIDE text, in the second batch.
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        jobs = [q.enqueue_encode_job([f"j{k} t{i}" for i in range(7)])[0] for k in range(10)]
        wide = q.enqueue_encode_job(["WIDE one"])[0]
        broker, _ = workers(qsettings, max_retries=0)
        try:
            try:
                report = q.drain(timeout=20, job_ids=[*jobs, wide])
            except DrainTimeout as exc:
                alive = [t.name for t in _embed_threads() if t.is_alive()]
                pytest.fail(f"the drain hung ({exc}); inference threads alive: {alive}")
            assert _embed_threads() and all(t.is_alive() for t in _embed_threads())
            assert wide in {f.job_id for f in report.failed}
            assert report.committed + len(report.failed) == len(jobs) + 1
            assert report.committed >= len(jobs) - 1  # at most the straddling job fails
            assert store.count() == 7 * report.committed
        finally:
            _unstick(broker, hostile)


def test_nan_and_inf_vectors_from_the_embedder_fail_only_their_jobs_once(
    qsettings, hostile, workers, rawq  # noqa: F811
):
    """The model answers NaN for one text and inf for another, each in a job sharing a
    fetch (and an embedding batch) with good jobs: the good jobs commit, each bad job is
    failed, permanently (a ValidationError: not retried), and nothing of it is written."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        good = [q.enqueue_encode_job([f"good {i}", f"also {i}"])[0] for i in range(10)]
        nan_job, nan_ids = q.enqueue_encode_job(["fine text", "NAN text"])
        inf_job, inf_ids = q.enqueue_encode_job(["INF text"])
        good += [q.enqueue_encode_job([f"late {i}"])[0] for i in range(10)]
        # a retry would wait a minute: past the drain's timeout (it then raises)
        broker, _ = workers(qsettings, max_retries=3, min_backoff_ms=60_000, max_backoff_ms=60_000)
        report = q.drain(timeout=20, job_ids=[*good, nan_job, inf_job])
        assert report.committed == len(good)
        assert sorted(f.job_id for f in report.failed) == sorted([nan_job, inf_job])
        for rid in [*nan_ids, *inf_ids]:
            assert store.get_record(rid) is None
        assert store.count() == 30
        # permanent: one batched attempt and one per-message attempt each, no retries
        assert hostile.texts_seen.count("NAN text") <= 3
        assert hostile.texts_seen.count("INF text") <= 3
        assert int(rawq.hget(keys.stats, "failed")) == 2
        assert broker.batches.counts.committed == len(good)


def test_an_embedder_returning_too_few_vectors_fails_only_that_job_with_bounded_retries(
    qsettings, hostile, workers, rawq  # noqa: F811
):
    """The model returns one vector too few for any batch holding a "SHORT" text: the
    batcher isolates the job that holds it; the good jobs of the same batch commit, the
    bad one is failed after its retries (bounded), and no thread dies."""
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        good = [q.enqueue_encode_job([f"good {i}"])[0] for i in range(15)]
        short = q.enqueue_encode_job(["SHORT text", "other"])[0]
        good += [q.enqueue_encode_job([f"late {i}"])[0] for i in range(15)]
        broker, _ = workers(qsettings, max_retries=2)
        report = q.drain(timeout=30, job_ids=[*good, short])
        assert report.committed == len(good)
        assert [f.job_id for f in report.failed] == [short]
        assert store.count() == len(good)
        # 1 batched attempt (+ its isolated re-run) and 1 + 2 retries on the per-message path
        assert hostile.texts_seen.count("SHORT text") <= 6
        assert _embed_threads() and all(t.is_alive() for t in _embed_threads())


# ------------------------------------------------------------------------- ordering
def test_a_job_handed_back_does_not_overwrite_a_later_job_of_its_fetch(
    qsettings, hostile, workers, rawq  # noqa: F811
):
    """Two jobs of one fetch write record "X": A (enqueued first) and B (enqueued
    after). A's model call fails in the batched path (a transient error, twice: the
    batch and its isolated re-run), so A is handed back to the per-message path, while
    B commits in the batched path; A's retry then commits after B. Found: A's late
    commit overwrites B: the record holds the value enqueued FIRST. The ordering the
    batched path keeps for the ids of one fetch (``_route``/``after``) is dropped as
    soon as a job is handed back (``JobBatches._prepare`` -> ``_hand_back``), and a
    job's guarded commit writes no version a later commit of an earlier job would
    respect (lua/store.lua: only a direct write stamps ``upd``).

    Expected: B's value stays (the later enqueue wins), as it does when neither job
    fails."""
    hostile.fail_times["A value"] = 3  # batch, isolated re-run, first per-message try
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        a = q.enqueue_encode_job([{"text": "A value", "id": "X"}])[0]
        b = q.enqueue_encode_job([{"text": "B value", "id": "X"}])[0]
        broker, _ = workers(qsettings, min_backoff_ms=200, max_backoff_ms=300, max_retries=3)
        report = q.drain(timeout=30, job_ids=[a, b])
        assert report.committed == 2 and report.failed == []
        assert broker.batches.counts.handed_back >= 1  # A went the per-message way
        assert store.get_record("X").content == "B value"


# ------------------------------------------------------------------------ odd texts
def test_nul_controls_and_non_bmp_texts_round_trip_through_a_batched_commit(
    qsettings, hostile, workers  # noqa: F811
):
    """Texts with NUL and other control characters, non-BMP characters and a
    whitespace-heavy text share batched commits (one JSON array parsed by the script's
    cjson): each is stored byte for byte, one record each."""
    texts = [
        "nul \x00 inside",
        "\x00",
        "tab\tnewline\nreturn\r\x1b[31m escape",
        "emoji \U0001f600 and \U00010348",
        "quote \" backslash \\ slash / \\u0000 literal",
        "\u2028line separator\u2029",
        " " * 1000 + "x",
    ]
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        made = [q.enqueue_encode_job([t]) for t in texts]
        both = q.enqueue_encode_job(texts[:3])
        broker, _ = workers(qsettings)
        report = q.drain(timeout=30, job_ids=[j for j, _ in made] + [both[0]])
        assert report.committed == len(texts) + 1 and report.failed == []
        for (_, (rid,)), t in zip(made, texts):
            assert store.get_record(rid).content == t
        for rid, t in zip(both[1], texts[:3]):
            assert store.get_record(rid).content == t
        assert broker.batches.counts.committed == len(texts) + 1
        assert broker.batches.counts.handed_back == 0


def test_a_huge_text_job_beside_small_ones_commits_each_once(qsettings, hostile, workers):  # noqa: F811
    """Texts near the job size limit (max_job_bytes, 1 MiB), made of characters JSON
    escapes (6 bytes each for a control character) share a fetch with small jobs:
    every job commits once, byte for byte."""
    big = "\x01" * 100_000 + "z"
    big2 = "\U0001f600" * 20_000 + "\x00" * 10_000
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        small = [q.enqueue_encode_job([f"small {i}"]) for i in range(10)]
        huge = q.enqueue_encode_job([big, big2])
        small += [q.enqueue_encode_job([f"small late {i}"]) for i in range(10)]
        broker, _ = workers(qsettings)
        report = q.drain(timeout=60, job_ids=[j for j, _ in small] + [huge[0]])
        assert report.committed == 21 and report.failed == []
        assert store.get_record(huge[1][0]).content == big
        assert store.get_record(huge[1][1]).content == big2
        assert store.count() == 22


# ------------------------------------------------------------ producer-given vectors
def _rewrite_save_job(rawq, keys: QueueKeys, job_id: str, change) -> None:  # noqa: F811
    """Rewrite the queued message of save job ``job_id`` (as a buggy or hostile
    producer could have written it): ``change(items)`` edits its items in place."""
    for redis_id, body in rawq.hgetall(keys.msgs()).items():
        message = json.loads(body)
        job = message["args"][0]
        if job.get("job") == job_id:
            change(job["items"])
            rawq.hset(keys.msgs(), redis_id, json.dumps(message))
            return
    raise AssertionError(f"message of {job_id} not found")


def _b64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


@pytest.mark.parametrize(
    "vector_b64",
    [
        pytest.param(_b64([np.nan] + [0.1] * (DIM - 1)), id="nan"),
        pytest.param(_b64([np.inf] + [0.1] * (DIM - 1)), id="inf"),
        pytest.param(_b64([0.1] * (DIM + 1)), id="dimension"),
        pytest.param(base64.b64encode(b"\x00" * (4 * DIM - 2)).decode(), id="not-float32"),
        pytest.param("!!not base64!!", id="not-base64"),
        pytest.param(_b64([0.1] * 100_000), id="huge-dimension"),
    ],
)
def test_a_save_job_with_a_bad_producer_vector_fails_alone_in_its_fetch(
    qsettings, hostile, workers, rawq, vector_b64  # noqa: F811
):
    """A save job whose vector was crafted after the producer's checks (NaN, inf, another
    dimension, bytes that are not float32, not base64, a huge dimension) shares a fetch
    with good save jobs: the worker's own checks fail it, once and permanently (no
    retry), nothing of it is written, and the good jobs commit in the batched path."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        good = [q.enqueue_save([_record(i)]) for i in range(10)]
        bad = q.enqueue_save([_record(50), _record(51)])
        good += [q.enqueue_save([_record(i)]) for i in range(10, 20)]

        def change(items):
            items[1]["embedding_b64"] = vector_b64

        _rewrite_save_job(rawq, keys, bad, change)
        # a retry would wait a minute: past the drain's timeout (it then raises)
        broker, _ = workers(qsettings, max_retries=3, min_backoff_ms=60_000, max_backoff_ms=60_000)
        report = q.drain(timeout=20, job_ids=[*good, bad])
        assert report.committed == len(good)
        assert [f.job_id for f in report.failed] == [bad]
        assert store.get_record("rec50") is None and store.get_record("rec51") is None
        assert store.count() == len(good)
        assert int(rawq.hget(keys.stats, "failed")) == 1
        assert broker.batches.counts.committed == len(good)
        assert store.search(vector("saved 3").tolist(), limit=1)[0][0].id == "rec3"


def test_save_jobs_of_one_fetch_writing_one_id_keep_the_last_enqueued(
    qsettings, hostile, workers, rawq  # noqa: F811
):
    """Save jobs of one fetch writing the same id, some of them bad (a NaN vector crafted
    after the producer's checks) and handed back: the last GOOD job enqueued wins, the
    bad ones are failed, and nothing of theirs is written."""
    keys = QueueKeys(qsettings.namespace)
    with MemoryQueue(qsettings, producer_id="p") as q, ValkeyStore(qsettings) as store:
        jobs = [q.enqueue_save([_record(0, id="X", content=f"v{i}")]) for i in range(6)]
        last_bad = q.enqueue_save([_record(0, id="X", content="bad")])

        def change(items):
            items[0]["embedding_b64"] = _b64([np.nan] * DIM)

        _rewrite_save_job(rawq, keys, last_bad, change)
        broker, _ = workers(qsettings, max_retries=3)
        report = q.drain(timeout=30, job_ids=[*jobs, last_bad])
        assert report.committed == 6
        assert [f.job_id for f in report.failed] == [last_bad]
        assert store.get_record("X").content == "v5"
