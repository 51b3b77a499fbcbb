"""Dead letters and their requeue, attacked (a review of 2026-12-05, helper-71).

``memworker dead requeue`` (``memworker.queue.admin.dead_requeue``) moves a dead letter
back on its namespace's queue with its pending mark restored (docs/design.md: "a job
requeued from the dead letters gets a new pending mark, so it runs as if enqueued
then"). What a user reading README.md, docs/guarantees.md, docs/langgraph.md and
docs/design.md expects of it:

1. LangGraph's store: the later put wins and deletes stay (guarantees 4b) also when a
   put that failed earlier is requeued after a later put or a delete of its key.
2. The drain barrier: the producer's next drain waits for a requeued job and reports
   it once (committed, not also failed); another producer's drain neither waits for
   it nor reports it.
3. A requeued job commits the same text exactly (CJK, emoji, exotic code points, NUL,
   ~900 KB) and its message stays within the limits its enqueue was checked against
   (max_job_bytes counts text as UTF-8, "not a 6-byte escape", README).
4. Hostile dead letters: ``dead list`` shows at most the documented 4,000 characters
   of an error that quotes the job's text (guarantees 5); a crafted dead letter naming
   another namespace's queue, producer and job is requeued into its own namespace only.
5. Two requeues of one dead letter at once queue it once and it commits once.

Each runs on a standalone server and on a cluster (``queue_server``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from test_langgraph import DIM, WordEmbedder
from test_worker import qsettings, rawq  # noqa: F401

from memworker import worker as worker_mod
from memworker.cli import main
from memworker.errors import JobFailedError
from memworker.queue.admin import dead_list, dead_requeue, queue_status
from memworker.queue.jobs import DrainTimeout, QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

pytest.importorskip("langgraph.store.base")

from memworker.langgraph import QueuedStore  # noqa: E402

#: Texts containing one of these make the embedder raise (while the set holds it).
FAIL: set[str] = set()
#: When set, the embedder's error quotes the whole text (as a model's error may).
QUOTE = threading.Event()


class FlakyEmbedder(WordEmbedder):
    def encode(self, texts):
        for t in texts:
            if any(marker in t for marker in FAIL):
                if QUOTE.is_set():
                    raise RuntimeError(f"cannot embed {t!r}")
                raise RuntimeError("embedder down")
        return super().encode(texts)


@pytest.fixture
def flaky():
    FAIL.clear()
    QUOTE.clear()
    worker_mod.set_embedder_factory(FlakyEmbedder)
    yield FAIL
    FAIL.clear()
    QUOTE.clear()
    worker_mod.set_embedder_factory(None)


@pytest.fixture
def workers():
    """``start(settings)``: in-process workers with quick retries; ``stop_all()``."""
    running: list[Any] = []

    def start(settings: Settings, threads: int = 2) -> None:
        ctx = worker_mod.running_worker(
            settings, threads=threads, min_backoff_ms=10, max_backoff_ms=50, max_retries=2,
            worker_timeout_ms=100,
        )  # fmt: skip
        ctx.__enter__()
        running.append(ctx)

    def stop_all() -> None:
        while running:
            running.pop().__exit__(None, None, None)

    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start
    stop_all()


def _dead_by_job(settings: Settings) -> dict[str, dict[str, Any]]:
    return {e.get("job_id"): e for e in dead_list(settings, limit=1000)}


def _index(settings: Settings) -> dict[str, Any]:
    return {"dims": DIM, "fields": ["text"]}


def queue_pending(settings: Settings) -> dict[str, int]:
    return queue_status(settings)["pending"]


def _wait_dead(settings: Settings, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        entries = dead_list(settings, limit=1000)
        if len(entries) >= n or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


# ------------------------------------------------------------------ 1. versions
def test_a_requeued_dead_put_does_not_override_a_later_put_of_its_key(qsettings, flaky, workers):  # noqa: F811
    """guarantees 4b: of two puts of one key, the later one is what every read returns
    once both committed, whatever order they commit in; a requeued put is the earlier."""
    workers(qsettings)
    with QueuedStore(qsettings, index=_index(qsettings)) as lg:
        flaky.add("poison")
        lg.put(("n",), "k", {"text": "poison early"})
        with pytest.raises(JobFailedError):
            lg.get(("n",), "k")
        assert len(_wait_dead(qsettings, 1)) == 1
        lg.put(("n",), "k", {"text": "apple late"})
        assert lg.get(("n",), "k").value == {"text": "apple late"}
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        # the store's read drains its producer: it waits for the requeued put (committed)
        item = lg.get(("n",), "k")
        assert dead_list(qsettings) == []
        assert item is not None and item.value == {"text": "apple late"}
        hits = lg.search(("n",), query="apple")
        assert [h.value for h in hits] == [{"text": "apple late"}]
        assert lg.store.count("/langgraph") == 1
        lg.store.reset()


def test_a_requeued_dead_put_does_not_resurrect_a_deleted_key(qsettings, flaky, workers):  # noqa: F811
    """guarantees 4b: a delete applies at once and no put enqueued before it brings the
    item back; the failed put was enqueued before the delete."""
    workers(qsettings)
    with QueuedStore(qsettings, index=_index(qsettings)) as lg:
        lg.put(("n",), "k", {"text": "apple first"})
        assert lg.get(("n",), "k").value == {"text": "apple first"}
        flaky.add("poison")
        lg.put(("n",), "k", {"text": "poison second"})
        with pytest.raises(JobFailedError):
            lg.get(("n",), "k")
        lg.delete(("n",), "k")
        assert lg.get(("n",), "k") is None
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        assert lg.get(("n",), "other") is None  # drains: the requeued put ran
        assert _wait_dead(qsettings, 0, timeout=0) == []
        assert lg.get(("n",), "k") is None
        assert lg.search(("n",)) == []
        lg.store.reset()


# ------------------------------------------------------------------ 2. drain barrier
def test_the_producers_drain_waits_for_a_requeued_job_and_never_reports_it_failed_again(qsettings, flaky, workers):  # noqa: F811
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="owner") as queue:
        job_id, (rid,) = queue.enqueue_encode_job(["poison apple"])
        report = queue.drain(timeout=30)
        assert [f.job_id for f in report.failed] == [job_id] and report.committed == 0
        assert list(_dead_by_job(qsettings)) == [job_id]
        workers.stop_all()
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        # no worker: the producer's drain waits for it again and names it
        with pytest.raises(DrainTimeout) as err:
            queue.drain(timeout=0.5)
        assert job_id in str(err.value)
        workers(qsettings)
        report = queue.drain(timeout=30)  # its commit count: see the test below
        assert report.failed == [] and report.lost == []
        assert queue.pending() == []
        again = queue.drain(timeout=5)
        assert again.committed == 0 and again.failed == []
    with ValkeyStore(qsettings) as store:
        assert store.get_record(rid).content == "poison apple"


def test_the_next_drain_reports_a_requeued_job_that_committed_before_it(qsettings, rawq, flaky, workers):  # noqa: F811
    """dead_requeue: "its producer's next drain waits for it again"; a failure of the
    requeued job is reported by the next drain whenever it happens, and a commit is
    reported when the drain started before it. A commit that happened before the drain
    began must be reported too (a job enqueued normally and committed before the drain
    is: the queue's own list of recent jobs), or the producer, told the job failed,
    never learns it is committed."""
    keys = QueueKeys(qsettings.namespace)
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="owner") as queue:
        job_id, (rid,) = queue.enqueue_encode_job(["poison guitar"])
        assert [f.job_id for f in queue.drain(timeout=30).failed] == [job_id]
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        deadline = time.monotonic() + 30
        while rawq.zscore(keys.producer("owner").pending, job_id) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        with ValkeyStore(qsettings) as store:
            assert store.get_record(rid).content == "poison guitar"  # committed
        report = queue.drain(timeout=30)
        assert report.failed == [] and report.lost == []
        assert report.committed == 1, "the requeued job's commit was never reported"


def test_a_requeue_before_the_failure_was_reported_reports_the_job_once_as_committed(qsettings, flaky, workers):  # noqa: F811
    """The failure was never drained; the requeue clears it: the next drain reports the
    job committed, not failed too (each job reported once)."""
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="owner") as queue:
        job_id, _ = queue.enqueue_encode_job(["poison banana"])
        entries = _wait_dead(qsettings, 1)
        assert [e["job_id"] for e in entries] == [job_id]
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        report = queue.drain(timeout=30)
        assert report.failed == [] and report.lost == []
        assert report.committed == 1


def test_a_requeue_of_one_producers_job_neither_blocks_nor_feeds_anothers_drain(qsettings, flaky, workers):  # noqa: F811
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="alice") as alice, MemoryQueue(qsettings, producer_id="bob") as bob:
        dead_job, _ = alice.enqueue_encode_job(["poison cherry"])
        assert [f.job_id for f in alice.drain(timeout=30).failed] == [dead_job]
        workers.stop_all()  # the requeued job waits in the queue
        flaky.clear()
        bob_job, _ = bob.enqueue_encode_job(["dog"])
        assert dead_requeue(qsettings) == 1
        workers(qsettings)
        # bob's drain: his own job only; alice's requeued job is not his to report
        report = bob.drain(timeout=30)
        assert report.committed == 1 and report.failed == [] and report.lost == []
        report = alice.drain(timeout=30)
        assert report.failed == [] and report.lost == []
        assert bob.drain_all(timeout=10, consume=False).failed == []
        assert bob.drain(timeout=5).committed == 0  # nothing of alice's reaches bob later
        assert queue_pending(qsettings) == {}


# ------------------------------------------------------------------ 3. encoding
TEXTS = {
    "cjk-900k": "記憶" * 150_000,  # 300,000 CJK characters, 900,000 bytes of UTF-8
    "emoji": "🧠💾👩🏽‍💻🏳️‍🌈" * 20_000,
    "exotic": "a\x00b\u202e\ufeff\u200d\U000e0041\U0010fffd\u0301e\u2028\u2029\x7f\x85 z" * 5_000,
}


def _one_message(rawq, keys: QueueKeys) -> tuple[str, bytes]:  # noqa: F811
    (rid,) = [r.decode() for r in rawq.lrange(keys.q(), 0, -1)]
    return rid, rawq.hget(keys.msgs(), rid)


@pytest.mark.parametrize("name", list(TEXTS))
def test_a_requeued_job_commits_its_text_exactly(qsettings, rawq, flaky, workers, name):  # noqa: F811
    text = TEXTS[name]
    flaky.add("\x00" if name == "exotic" else text[:2])
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="enc") as queue:
        job_id, (rid,) = queue.enqueue_encode_job([{"text": text, "metadata": {"t": text[:300]}}])
        assert [f.job_id for f in queue.drain(timeout=60).failed] == [job_id]
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        report = queue.drain(timeout=60)
        assert report.committed == 1 and report.failed == []
    with ValkeyStore(qsettings) as store:
        rec = store.get_record(rid)
        assert rec.content == text
        assert rec.metadata == {"t": text[:300]}


@pytest.mark.parametrize("name", list(TEXTS))
def test_a_requeued_message_is_no_larger_than_the_one_enqueued(qsettings, rawq, flaky, workers, name):  # noqa: F811
    """README: a job's size limit (max_job_bytes, 1 MiB) counts its text as UTF-8, "a
    CJK character takes 3 bytes, not a 6-byte escape". A requeue drops the retry count
    and the traceback; it should not re-encode the text as \\u escapes (up to 3x the
    bytes: a 900 KB job accepted under the limit comes back at ~1.8 MB)."""
    text = TEXTS[name]
    keys = QueueKeys(qsettings.namespace)
    flaky.add("\x00" if name == "exotic" else text[:2])
    with MemoryQueue(qsettings, producer_id="enc") as queue:
        job_id, _ = queue.enqueue_encode_job([text])
        _, original = _one_message(rawq, keys)
        assert len(original) <= queue.max_job_bytes
        workers(qsettings)
        assert [f.job_id for f in queue.drain(timeout=60).failed] == [job_id]
        workers.stop_all()
        flaky.clear()
        assert dead_requeue(qsettings) == 1
        _, requeued = _one_message(rawq, keys)  # a retry gave it a new redis id
        assert json.loads(requeued)["args"] == json.loads(original)["args"]
        assert len(requeued) <= len(original) + 64, (len(original), len(requeued))
        workers(qsettings)
        report = queue.drain(timeout=60)
        assert report.committed == 1 and report.failed == []


# ------------------------------------------------------------------ 4. hostile dead letters
def test_dead_list_shows_at_most_the_documented_characters_of_an_error_quoting_the_text(
    qsettings, flaky, workers, monkeypatch, capsys  # noqa: F811
):
    """guarantees 5: failure records keep the error the embedder raised, which may
    quote the job's text; "memworker dead list shows it to the operator; its first
    4,000 characters". An error quoting a 200,000-character text must not come back
    whole in each listing (the traceback dramatiq keeps in the message's options)."""
    monkeypatch.setattr("memworker.cli._settings", lambda _args: qsettings)
    flaky.add("poison")
    QUOTE.set()
    text = "poison " + "secret " * 30_000
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="quoted") as queue:
        job_id, _ = queue.enqueue_encode_job([text])
        (failed,) = queue.drain(timeout=30).failed
        assert failed.job_id == job_id and len(failed.error) < 4_100  # the failure record: cut
    (entry,) = dead_list(qsettings)
    assert entry["job_id"] == job_id
    assert main(["dead", "list"]) == 0
    out = capsys.readouterr().out
    assert len(out) < 20_000, f"dead list printed {len(out)} characters for one entry"
    assert main(["dead", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out) < 20_000, f"dead list --json printed {len(out)} characters for one entry"


def test_a_crafted_dead_letter_naming_another_namespace_is_requeued_into_its_own(
    queue_server, qsettings, rawq, flaky  # noqa: F811
):
    """A dead letter in namespace A that copies a pending job of namespace B (its
    message, queue name, producer, job id, redis id): the requeue moves it into A's
    queue only; B's queue, message, pending mark and failure records are untouched."""
    other = Settings.from_url(queue_server.url, namespace=qsettings.namespace + "b", search_mode="exact")
    a, b = QueueKeys(qsettings.namespace), QueueKeys(other.namespace)
    with MemoryQueue(other, producer_id="victim") as victim:
        job_id, _ = victim.enqueue_encode_job(["victim text"])
        (redis_id,) = [r.decode() for r in rawq.lrange(b.q(), 0, -1)]
        body = rawq.hget(b.msgs(), redis_id)
        pending_before = rawq.zrange(b.producer("victim").pending, 0, -1, withscores=True)
        msg = json.loads(body)
        msg["queue_name"] = b.q()  # the other namespace's queue key as its queue name
        rawq.hset(a.dead_msgs(), redis_id, json.dumps(msg))
        rawq.zadd(a.dead(), {redis_id: 1})
        assert dead_requeue(qsettings, [redis_id]) == 1
        assert [r.decode() for r in rawq.lrange(a.q(), 0, -1)] == [redis_id]
        assert [r.decode() for r in rawq.lrange(b.q(), 0, -1)] == [redis_id]
        assert rawq.hget(b.msgs(), redis_id) == body
        assert rawq.zrange(b.producer("victim").pending, 0, -1, withscores=True) == pending_before
        assert rawq.hlen(b.producer("victim").failed) == 0
        assert rawq.zcard(b.dead()) == 0
        # A's own bookkeeping got the job's pending mark (A's keys), B's drain is B's
        assert rawq.zscore(a.producer("victim").pending, job_id) is not None
        with pytest.raises(DrainTimeout):
            victim.drain(timeout=0.3)  # still waits for its own job, in B, no worker


# ------------------------------------------------------------------ 5. concurrent requeues
def test_two_requeues_of_one_dead_job_at_once_queue_and_commit_it_once(qsettings, rawq, flaky, workers):  # noqa: F811
    keys = QueueKeys(qsettings.namespace)
    flaky.add("poison")
    workers(qsettings)
    with MemoryQueue(qsettings, producer_id="twice") as queue:
        job_id, (rid,) = queue.enqueue_encode_job(["poison engine"])
        assert [f.job_id for f in queue.drain(timeout=30).failed] == [job_id]
        workers.stop_all()
        flaky.clear()
        (entry,) = dead_list(qsettings)
        mid = entry["message_id"]
        committed_before = int(rawq.hget(keys.stats, "committed") or 0)
        start = threading.Barrier(6)
        moved: list[int] = []

        def requeue(i: int) -> None:
            start.wait()
            moved.append(dead_requeue(qsettings, [mid]) if i % 2 else dead_requeue(qsettings))

        threads = [threading.Thread(target=requeue, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(moved) == 1, moved
        assert [r.decode() for r in rawq.lrange(keys.q(), 0, -1)] == [mid]
        workers(qsettings)
        report = queue.drain(timeout=30)
        assert report.failed == [] and report.lost == []
        # a late duplicate would count again: give the queue time to run anything left
        time.sleep(0.5)
        assert rawq.llen(keys.q()) == 0
        assert int(rawq.hget(keys.stats, "committed") or 0) == committed_before + 1
        assert dead_list(qsettings) == []
    with ValkeyStore(qsettings) as store:
        assert store.get_record(rid).content == "poison engine"
