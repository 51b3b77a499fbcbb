"""Hostile user data in the queue's bookkeeping (issue 17, point 2): a metadata value
(or key, or text) that looks like dramatiq's message id must not become the id a
worker tracks the message by, and a duplicate delivery of a job that committed must
not revert an update made after the drain returned. Real `memworker worker`
processes, the chaos embedder's SLOW texts (longer than the worker's 5 s reconcile)."""

from __future__ import annotations

import json

from harness import audit, record, wait_for

from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings
from memworker.store.store import ValkeyStore

FAKE_ID = "00000000-0000-4000-8000-00000000dead"


def _stats(client, ns):
    return {k.decode(): int(v) for k, v in client.hgetall(f"{{{ns}}}:stats").items()}


def _runs(calls):
    runs: dict[str, int] = {}
    if calls.exists():
        for line in calls.read_text().splitlines():
            for t in json.loads(line)["texts"]:
                if t != "warm up":  # the worker's own batch before its first job
                    runs[t] = runs.get(t, 0) + 1
    return runs


def test_hostile_metadata_keys_in_message_tracking(chaos_server, ns, workdir, cli_workers):
    calls = workdir / "calls.jsonl"
    workers = cli_workers(MEMWORKER_CHAOS_CALLS=str(calls))
    client = chaos_server.client()
    settings = Settings.from_url(chaos_server.url, namespace=ns, search_mode="exact")
    hostile = [
        {"text": "SLOW6000 hostile value", "metadata": {"redis_message_id": FAKE_ID}},
        {"text": "hostile key", "metadata": {f'"redis_message_id": "{FAKE_ID}"': 1}},
        {"text": f'hostile text "redis_message_id": "{FAKE_ID}"'},
    ]
    with MemoryQueue(settings, producer_id="ph") as q, ValkeyStore(settings) as store:
        jobs = [q.enqueue_encode_job([item]) for item in hostile]
        target_job, (target,) = jobs[0]
        # The slow job's message as enqueued, for a duplicate delivery later.
        (data,) = [d for d in client.hgetall(f"{{{ns}}}:dq:default.msgs").values()
                   if target_job.encode() in d]
        workers.start(threads=2)
        report = q.drain(timeout=90, job_ids=[j for j, _ in jobs])
        first_runs = _runs(calls)
        stats_first = _stats(client, ns)
        # A user updates the record after the drain returned; then the job is
        # delivered again (e.g. requeued by a peer that thought it orphaned).
        rec = store.get_record(target)
        rec.content, rec.metadata = "updated after the drain", {"v": 2}
        store.update(rec)
        dup = "00000000-0000-4000-8000-000000000d0b"
        msg = json.loads(data)
        msg["options"]["redis_message_id"] = dup
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{{{ns}}}:dq:default.msgs", dup, json.dumps(msg))
            pipe.rpush(f"{{{ns}}}:dq:default", dup)
            pipe.rpush(f"{{{ns}}}:dq:default.wake", "1")
            pipe.execute()
        wait_for(lambda: _runs(calls).get(hostile[0]["text"], 0) > first_runs[hostile[0]["text"]],
                 30, "the duplicate delivery's embedding")
        wait_for(lambda: not client.hexists(f"{{{ns}}}:dq:default.msgs", dup), 30,
                 "the duplicate's ack")
        after = store.get_record(target)
        again = q.drain(timeout=30, job_ids=[target_job])
        a = audit(client, ns)
    stats = _stats(client, ns)
    extra_runs = sum(n - 1 for n in first_runs.values())
    reverted = int(after.content != "updated after the drain")
    record("Hostile metadata keys in message tracking", injections=len(hostile) + 1,
           duplicates=extra_runs + (stats["committed"] - len(jobs)) + again.committed,
           lost=reverted, extra_embeddings=extra_runs, commits_counted=stats["committed"],
           update_reverted=bool(reverted))
    assert report.committed == len(jobs) and not report.failed
    assert first_runs == {item["text"]: 1 for item in hostile}
    assert stats_first["committed"] == len(jobs) and stats_first["records"] == len(jobs)
    assert not reverted and after.metadata == {"v": 2}
    assert stats["committed"] == len(jobs) and again.committed == 0 and not again.failed
    assert a.records == len(jobs)
