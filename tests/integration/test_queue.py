"""Producer side: validation before enqueue, and the atomic enqueue step."""

from __future__ import annotations

import asyncio
import json

import pytest

from memworker.errors import ValidationError
from memworker.queue.jobs import ENCODE_ACTOR, JOB_SCHEMA, SAVE_ACTOR, QueueKeys
from memworker.queue.producer import MemoryQueue
from memworker.settings import Settings


@pytest.fixture
def settings(queue_server, namespace) -> Settings:
    return Settings.from_url(queue_server.url, namespace=namespace)


@pytest.fixture
def queue(settings):
    q = MemoryQueue(settings, producer_id="p1", max_items=5, max_job_bytes=8192)
    yield q
    q.close()


@pytest.fixture
def rawq(queue_server):
    from valkey_servers import raw_client

    client = raw_client(queue_server)
    yield client
    client.close()


def _state(rawq, keys: QueueKeys) -> tuple[int, int, int]:
    return rawq.llen(keys.q()), rawq.hlen(keys.msgs()), rawq.zcard(keys.producer("p1").pending)


def _record(i: int, dim: int = 4, **over):
    rec = {
        "id": f"r{i}",
        "content": f"text {i}",
        "scope": "/a",
        "embedding": [1.0] + [0.0] * (dim - 1),
    }
    rec.update(over)
    return rec


BAD_ENCODE = [
    ([""], "items[0].text"),
    (["   "], "items[0].text"),
    ([{"text": "x", "importance": 2}], "importance"),
    ([{"text": "x", "scope": "a//b"}], "scope"),
    ([{"text": "x", "categories": "notalist"}], "categories"),
    ([{"text": "x", "metadata": {"k": object()}}], "metadata"),
    ([{"text": "x", "colour": "red"}], "unknown"),
    (["a"] * 6, "limit per job is 5"),
    ([], "must not be empty"),
    (["x" * 9000], "max_job_bytes"),
    ([{"text": "a", "id": "same"}, {"text": "b", "id": "same"}], "more than once"),
]


@pytest.mark.parametrize("items, needle", BAD_ENCODE)
def test_enqueue_encode_rejects_bad_input_and_enqueues_nothing(queue, rawq, items, needle):
    before = _state(rawq, queue.keys)
    with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        queue.enqueue_encode(items)
    assert _state(rawq, queue.keys) == before == (0, 0, 0)


@pytest.mark.parametrize(
    "records, needle",
    [
        ([_record(0, embedding=[1.0, float("nan"), 0.0, 0.0])], "embedding"),
        ([_record(0), _record(1, dim=5)], "dimension"),
        ([_record(0), _record(1, embedding=[0.0] * 5)], "dimension"),
        ([_record(0, content=None)], "content"),
        ([_record(i) for i in range(6)], "limit per job is 5"),
        ([_record(0, dim=2000)], "max_job_bytes"),
    ],
)
def test_enqueue_save_rejects_bad_records(queue, rawq, records, needle):
    with pytest.raises(ValidationError, match=needle):
        queue.enqueue_save(records)
    assert _state(rawq, queue.keys) == (0, 0, 0)


def test_enqueue_is_queued_and_pending_at_once(queue, rawq):
    ids = queue.enqueue_encode(["alpha", {"text": "beta", "scope": "/s", "categories": ["c"]}])
    assert len(ids) == 2 and len(set(ids)) == 2
    keys = queue.keys
    assert _state(rawq, keys) == (1, 1, 1)
    (redis_id,) = rawq.lrange(keys.q(), 0, -1)
    message = json.loads(rawq.hget(keys.msgs(), redis_id))
    job_id = rawq.zrange(keys.producer("p1").pending, 0, -1)[0].decode()
    assert message["message_id"] == job_id
    assert message["actor_name"] == ENCODE_ACTOR and message["queue_name"] == "default"
    assert message["options"]["redis_message_id"] == redis_id.decode()
    job = message["args"][0]
    assert job["v"] == JOB_SCHEMA and job["job"] == job_id and job["producer"] == "p1"
    assert [i["id"] for i in job["items"]] == ids
    assert rawq.llen(keys.wake()) == 1
    assert queue.pending() == [job_id]
    save_job = queue.enqueue_save([_record(0)])
    assert _state(rawq, keys) == (2, 2, 2)
    assert json.loads(rawq.hget(keys.msgs(), rawq.lindex(keys.q(), 1)))["actor_name"] == SAVE_ACTOR
    assert save_job in queue.pending()


def test_enqueue_never_exposes_a_half_written_job(queue, rawq):
    """Readers (in MULTI) never see a queued job without its pending mark or the reverse."""
    import threading

    keys = queue.keys
    stop = threading.Event()

    def produce():
        with MemoryQueue(queue.settings, producer_id="p1") as q:
            while not stop.is_set():
                q.enqueue_encode(["x"])

    threads = [threading.Thread(target=produce) for _ in range(3)]
    for t in threads:
        t.start()
    seen = set()
    try:
        for _ in range(300):
            with rawq.pipeline(transaction=True) as pipe:
                depth, stored, pending = (
                    pipe.llen(keys.q()).hlen(keys.msgs()).zcard(keys.producer("p1").pending).execute()
                )
            assert depth == stored == pending
            seen.add(depth)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 1  # enqueues really ran concurrently with the reads


def test_async_enqueue(queue, rawq):
    async def main():
        ids = await queue.aenqueue_encode(["one", "two"])
        job = await queue.aenqueue_save([_record(0)])
        pending = await queue.apending()
        await queue.aclose()
        return ids, job, pending

    ids, job, pending = asyncio.run(main())
    assert len(ids) == 2 and job in pending and len(pending) == 2
    assert _state(rawq, queue.keys) == (2, 2, 2)


def test_enqueue_after_the_server_forgot_its_scripts(queue, rawq):
    """The enqueue is a script (lua/queue.lua): after the server's script cache is
    flushed (a restart, SCRIPT FLUSH) the next enqueue sends it again, sync and async."""
    queue.enqueue_encode(["before the flush"])
    rawq.script_flush()
    queue.enqueue_encode(["after the flush"])
    rawq.script_flush()

    async def main():
        await queue.aenqueue_encode(["async, after another flush"])
        await queue.aclose()

    asyncio.run(main())
    assert _state(rawq, queue.keys) == (3, 3, 3)
    assert rawq.llen(queue.keys.wake()) == 3


def test_an_enqueue_the_server_refuses_writes_nothing(plain_server, namespace):
    """A server out of memory refuses the enqueue's script at its first write: a
    QueueError that says so, and no message, wake-up token or pending mark is left."""
    from valkey_servers import raw_client

    from memworker.errors import QueueError

    raw = raw_client(plain_server)
    old = raw.config_get("maxmemory")["maxmemory"]
    q = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p1")
    try:
        q.enqueue_encode(["fits"])
        raw.config_set("maxmemory", 1)
        with pytest.raises(QueueError, match="maxmemory"):
            q.enqueue_encode(["refused"])
        raw.config_set("maxmemory", old)
        keys = q.keys
        assert _state(raw, keys) == (1, 1, 1)
        assert raw.llen(keys.wake()) == 1
    finally:
        raw.config_set("maxmemory", old)
        q.close()
        raw.close()


def test_status_counts(queue, settings):
    queue.enqueue_encode(["a"])
    queue.enqueue_encode(["b"])
    status = queue.status()
    assert status["depth"] == 2 and status["pending"] == {"p1": 2} and status["workers"] == []
    assert status["producer"] == {"id": "p1", "pending": 2}
    assert status["dead"] == 0 and status["delayed"] == 0


def test_bad_producer_id(settings):
    with pytest.raises(ValidationError, match="producer_id"):
        MemoryQueue(settings, producer_id="a b")


def test_job_items_get_distinct_version_4_ids_and_one_copy_of_a_shared_flow() -> None:
    import uuid

    from memworker.queue.jobs import embed_items

    flow = {"consolidation_threshold": 1.0, "batch_dedup_threshold": 0.98}
    items = [{"text": f"t{i}", "flow": flow} for i in range(300)]
    out = embed_items(items, 1000)
    ids = [e["id"] for e in out]
    assert len(set(ids)) == 300
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # one copy for the job, equal to the flow and not the caller's object
    assert all(e["flow"] is out[0]["flow"] for e in out)
    assert out[0]["flow"] == flow and out[0]["flow"] is not flow
    flow["batch_dedup_threshold"] = 0.5  # the caller changing it later changes nothing
    assert out[0]["flow"]["batch_dedup_threshold"] == 0.98
    # equal flows given as different objects share one copy too; a bad one is named
    twins = embed_items([{"text": "a", "flow": dict(flow)}, {"text": "b", "flow": dict(flow)}], 10)
    assert twins[0]["flow"] is twins[1]["flow"]
    with pytest.raises(ValidationError, match=r"items\[1\]\.flow must be a mapping"):
        embed_items([{"text": "a", "flow": flow}, {"text": "b", "flow": ["x"]}], 10)
    with pytest.raises(ValidationError, match="items\\[0\\].*colour"):
        embed_items([{"text": "a", "colour": "red"}], 10)


def _script_calls(raw) -> int:
    stats = raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


@pytest.fixture
def one_job(own_plain_server, namespace):
    """``(raw client, MemoryQueue)`` on a server of the test's own, after one enqueue
    (which loaded the script)."""
    import redis

    raw = redis.Redis(port=own_plain_server.port)
    # a long request timeout: a test holds calls with CLIENT PAUSE while its threads queue
    q = MemoryQueue(f"{own_plain_server.url}?request_timeout_ms=60000", namespace=namespace, producer_id="p1")
    try:
        q.enqueue_encode(["loads the script"])
        yield raw, q
    finally:
        raw.execute_command("CLIENT", "UNPAUSE")
        q.close()
        raw.close()


def test_concurrent_enqueues_of_one_queue_share_a_script_call_and_stay_separate_jobs(one_job):
    """Eight threads enqueue through one MemoryQueue while its first call is held up by
    the server (CLIENT PAUSE WRITE): the other seven go out together in ONE script
    call, each its own job (message, id on the queue, wake-up token, pending mark), and
    each caller gets its own job id back."""
    import threading
    import time

    raw, q = one_job
    before = _script_calls(raw)
    raw.execute_command("CLIENT", "PAUSE", 40_000, "WRITE")  # under the fixture's 60 s request timeout
    got: dict[int, tuple[str, list[str]]] = {}

    def put(k: int) -> None:
        got[k] = q.enqueue_encode_job([f"text {k}"])

    threads = [threading.Thread(target=put, args=(0,))]
    threads[0].start()
    deadline = time.monotonic() + 30  # within the pause: the callers queue before it ends
    group = q._sends  # its state, to know when every caller is where the test needs it
    while not (group._busy and not group._waiting):  # the leader's call is out, held
        assert time.monotonic() < deadline
        time.sleep(0.005)
    threads += [threading.Thread(target=put, args=(k,)) for k in range(1, 8)]
    for t in threads[1:]:
        t.start()
    while len(group._waiting) < 7:  # the seven queued behind it
        assert time.monotonic() < deadline
        time.sleep(0.005)
    raw.execute_command("CLIENT", "UNPAUSE")
    for t in threads:
        t.join(30)
    assert _script_calls(raw) - before == 2
    _assert_separate_jobs(raw, q, list(got.values()))


def _assert_separate_jobs(raw, q: MemoryQueue, got: list[tuple[str, list[str]]]) -> None:
    """Each ``(job id, record ids)`` in ``got`` is its own job on the queue (message, id
    on the queue, wake-up token, pending mark) holding its own items; one more job (the
    test's first enqueue) is there too."""
    jobs = {job for job, _ in got}
    assert len(jobs) == len(got)
    keys = q.keys
    assert jobs < set(q.pending())  # and the first job's
    assert raw.llen(keys.q()) == raw.hlen(keys.msgs()) == raw.llen(keys.wake()) == len(got) + 1
    messages = [json.loads(m) for m in raw.hvals(keys.msgs())]
    by_job = {m["message_id"]: m["args"][0]["items"] for m in messages}
    for job, ids in got:
        assert [i["id"] for i in by_job[job]] == ids


def test_concurrent_async_enqueues_share_a_script_call_and_stay_separate_jobs(one_job):
    """Eight tasks of one event loop enqueue at once (``asyncio.gather``) through one
    MemoryQueue: the first enqueue goes at once, the seven made during it go out
    together in ONE script call, each its own job, and each caller gets its own job id
    back."""
    raw, q = one_job
    before = _script_calls(raw)

    async def main():
        got = await asyncio.gather(*(q.aenqueue_encode_job([f"text {k}"]) for k in range(8)))
        await q.aclose()
        return got

    got = asyncio.run(main())
    assert _script_calls(raw) - before == 2
    _assert_separate_jobs(raw, q, list(got))


#: A script that writes (so CLIENT PAUSE WRITE holds it) and returns its argument.
_ECHO = "redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]"


def test_an_async_script_call_cancelled_before_its_reply_never_hands_the_reply_on(own_plain_server):
    """The async driver's script path keeps connections of its own between calls. A
    task cancelled while its call waits for the reply (the server holds it: CLIENT
    PAUSE WRITE) must not put its connection back: the reply still on the way would be
    read by the next call. The next call reads its own reply; close() empties the list."""
    import redis

    from memworker.io.redispy import RedisAsyncDriver

    raw = redis.Redis(port=own_plain_server.port)
    driver = RedisAsyncDriver(Settings.from_url(own_plain_server.url))

    async def held() -> None:
        for _ in range(1000):  # until the server holds the call (at most ~10 s)
            if int(raw.info("clients")["blocked_clients"]) >= 1:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the call never reached the server")

    async def main() -> None:
        client = driver.client()
        call = driver._script_call

        def free() -> list:  # the running loop's free connections (none once closed)
            state = driver._states.get(asyncio.get_running_loop())
            return state.free if state is not None else []

        assert await call(client, "EVAL", _ECHO, 1, "k", "warm") == b"warm"
        assert len(free()) == 1  # kept for the next call
        raw.execute_command("CLIENT", "PAUSE", 5_000, "WRITE")
        try:
            task = asyncio.create_task(call(client, "EVAL", _ECHO, 1, "k", "cancelled"))
            await held()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert free() == []  # dropped, not kept
        finally:
            raw.execute_command("CLIENT", "UNPAUSE")
        for mine in (b"first", b"second"):
            assert await call(client, "EVAL", _ECHO, 1, "k", mine) == mine
        assert len(free()) == 1
        with pytest.raises(redis.exceptions.ResponseError):  # an error reply, read whole
            await call(client, "EVAL", "return redis.error_reply('no')", 0)
        assert len(free()) == 1
        assert await call(client, "EVAL", _ECHO, 1, "k", "after") == b"after"
        await driver.close()
        assert free() == []

    try:
        asyncio.run(main())
    finally:
        raw.close()


# ----------------------------------------------------------------------------- a review's findings (2026-12-04)
@pytest.mark.parametrize("job_ids", ["JOB", b"JOB", 5, [None], [b"x"], ["a\nb"], [""], {"JOB": 1}])
def test_drain_refuses_job_ids_that_are_not_a_list_of_job_ids(queue, job_ids):
    """A bare string was iterated: the drain waited for its characters, reported them
    lost at once and returned while the job was still pending (no worker here)."""
    job = queue.enqueue_encode_job(["x"])[0]
    ids = [job if j == "JOB" else j for j in job_ids] if isinstance(job_ids, list) else job_ids
    if ids == "JOB":
        ids = job
    with pytest.raises(ValidationError, match=r"job_ids"):
        queue.drain(timeout=0.1, job_ids=ids)
    with pytest.raises(ValidationError, match=r"job_ids"):
        asyncio.run(queue.adrain(timeout=0.1, job_ids=ids))
    assert queue.pending() == [job]


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, "5", True, 10**400])
def test_drain_refuses_a_timeout_that_is_not_a_finite_number(queue, timeout):
    """NaN never timed out (a drain with no worker waited for ever); an integer beyond
    float64 raised a raw OverflowError."""
    queue.enqueue_encode_job(["x"])
    with pytest.raises(ValidationError, match="timeout must be None or a finite number"):
        queue.drain(timeout=timeout)
    with pytest.raises(ValidationError, match="timeout must be None or a finite number"):
        queue.drain_all(timeout=timeout)


def test_enqueue_items_that_are_not_json_is_a_validation_error(queue):
    from decimal import Decimal

    with pytest.raises(ValidationError, match="not JSON-serializable: .*Decimal"):
        queue.enqueue_encode_items([{"id": "r1", "text": "x", "metadata": {"k": Decimal(1)}}])
    assert queue.pending() == []


def test_aclose_on_another_event_loop_is_not_a_runtime_error(settings):
    """The async face used in one ``asyncio.run`` and closed in another (a shutdown
    hook on its own loop) raised RuntimeError("Event loop is closed") from redis-py:
    CrewAI drops what raises RuntimeError. It drops that loop's client instead."""
    queue = MemoryQueue(settings, producer_id="p")
    asyncio.run(queue.aenqueue_encode(["x"]))
    asyncio.run(queue.aclose())
    again = MemoryQueue(settings, producer_id="p")
    try:
        assert len(again.pending()) == 1
    finally:
        again.close()
