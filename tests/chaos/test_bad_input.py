"""Bad input at every entry point (14): API, CLI, hand-crafted and old-format job
payloads on the queue. A clear error, a dead letter with the reason, nothing written,
the worker keeps running."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from harness import audit, child_env, record

from memworker.errors import ValidationError
from memworker.queue.admin import dead_list
from memworker.queue.producer import MemoryQueue


BAD_ITEMS = [
    [], "not a list", [""], ["   "], [{"text": 5}], [{"text": "x", "scope": 7}],
    [{"text": "x", "bogus": 1}], [{"text": "x", "importance": "high"}],
    [{"text": "x", "metadata": "nope"}], [{"text": "x", "id": "a"}, {"text": "y", "id": "a"}],
    ["x" * (2 << 20)],
]


def test_api_rejects_bad_input_and_writes_nothing(chaos_server, ns):
    client = chaos_server.client()
    rejected = 0
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id="pa") as q:
        for items in BAD_ITEMS:
            with pytest.raises(ValidationError) as info:
                q.enqueue_encode(items)
            assert str(info.value)
            rejected += 1
        with pytest.raises(ValidationError):
            q.enqueue_save([{"id": "r", "content": "c", "embedding": ["a"]}])
        rejected += 1
    written = len(list(client.scan_iter(f"{{{ns}}}:*")))
    record("Bad input: API", injections=rejected, lost=0, written_keys=written)
    assert written == 0


def test_cli_rejects_bad_arguments(chaos_server, ns):
    cases = [(["drain", "--timeout", "abc"], "argument --timeout: must be a number of seconds"),
             (["worker", "--processes", "0"], "processes must be"),
             (["drain"], "--all or --producer")]
    for args, needle in cases:
        out = subprocess.run([sys.executable, "-m", "memworker.cli", "--url", chaos_server.url,
                              "--namespace", ns, *args], env=child_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0 and needle in out.stderr, (args, out.stderr[-500:])
    record("Bad input: CLI", injections=len(cases))


def _message(actor, job, *, raw=None):
    rid, mid = str(uuid.uuid4()), str(uuid.uuid4())
    msg = {"queue_name": "default", "actor_name": actor, "args": [job], "kwargs": {},
           "options": {"redis_message_id": rid}, "message_id": mid, "message_timestamp": 0}
    return rid, mid, (raw if raw is not None else json.dumps(msg).encode())


def test_crafted_payloads_dead_lettered_worker_keeps_running(chaos_server, ns, cli_workers):
    _crafted(chaos_server, ns, cli_workers, [], "Bad input: crafted job payloads")


def test_unknown_actor_job_is_reported_failed(chaos_server, ns, cli_workers):
    _crafted(chaos_server, ns, cli_workers,
             [("unknown actor", "no_such_actor", None)], "Bad input: unknown actor", only=True,
             drain_timeout=15)


def _crafted(chaos_server, ns, cli_workers, extra, fault, only=False, drain_timeout=60):
    client = chaos_server.client()
    producer = "pc"

    def job(mid, **over):
        j = {"v": 1, "job": mid, "producer": producer,
             "items": [{"id": f"bad-{mid[:8]}", "content": "bad"}]}
        j.update(over)
        return {k: v for k, v in j.items() if v is not ...}

    crafted = []
    for name, actor, make in [
        ("old format (no version)", "encode_records", lambda m: job(m, v=...)),
        ("schema v0", "encode_records", lambda m: job(m, v=0)),
        ("items not a list", "encode_records", lambda m: job(m, items="x")),
        ("content not a string", "encode_records",
         lambda m: job(m, items=[{"id": f"bad-{m[:8]}", "content": 12}])),
        ("bad base64 embedding", "save_records",
         lambda m: job(m, items=[{"id": f"bad-{m[:8]}", "content": "c", "embedding_b64": "!!"}])),
        ("bad importance", "encode_records",
         lambda m: job(m, items=[{"id": f"bad-{m[:8]}", "content": "c", "importance": "hi"}])),
    ][: 0 if only else None] + [(n, a, (lambda m: job(m)) if f is None else f) for n, a, f in extra]:
        rid, mid, _ = _message(actor, None)
        _, _, data = _message(actor, make(mid))
        msg = json.loads(data)
        msg["message_id"], msg["options"]["redis_message_id"] = mid, rid
        crafted.append((name, rid, mid, json.dumps(msg).encode()))
    if not only:
        rid, mid, data = _message("encode_records", None, raw=b'{"redis_message_id": "%s", oops')
        crafted.append(("not JSON", rid, None, data.replace(b"%s", rid.encode())))
    pipe = client.pipeline(transaction=True)
    for _, rid, mid, data in crafted:
        pipe.hset(f"{{{ns}}}:dq:default.msgs", rid, data)
        pipe.rpush(f"{{{ns}}}:dq:default", rid)
        pipe.rpush(f"{{{ns}}}:dq:default.wake", "1")
        if mid:
            pipe.zadd(f"{{{ns}}}:pending:{producer}", {mid: 1})
    pipe.execute()
    workers = cli_workers()
    proc = workers.start()
    with MemoryQueue(chaos_server.url, namespace=ns, producer_id=producer) as q:
        report = q.drain(timeout=drain_timeout)
        good = q.enqueue_encode(["a good job after the bad ones"])
        after = q.drain(timeout=30)
    a = audit(client, ns)
    errors = {f.job_id: f.error for f in report.failed}
    dead = {d["message_id"] for d in dead_list(workers_settings(chaos_server, ns), limit=100)}
    record(fault, injections=len(crafted),
           dead_lettered=len(dead), reported=len(errors), written=a.records - 1,
           worker_alive=proc.poll() is None)
    assert proc.poll() is None, "the worker died"
    assert after.committed == 1 and a.ids == set(good)
    for name, rid, mid, _ in crafted:
        assert rid in dead, f"{name}: not dead-lettered"
        if mid:
            assert mid in errors and errors[mid], f"{name}: not reported with a reason"


def workers_settings(server, ns):
    from memworker.settings import Settings

    return Settings.from_url(server.url, namespace=ns)
