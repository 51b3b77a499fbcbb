"""The documentation, run as written: the Python blocks of README.md and docs/*.md, the
CLI lines that need neither network nor Docker, and the behaviour the prose around
them claims, each against a real Valkey (only the URL is adapted).

tests/unit/test_docs_truth.py checks names, flags and defaults statically; this module
runs them. A failing test here is a place where the docs and the code disagree.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from memworker import (
    ConfigError,
    DrainTimeout,
    MemoryQueue,
    MemworkerError,
    Settings,
    ValidationError,
    ValkeyCache,
    ValkeyStore,
)
from memworker import worker as worker_mod
from memworker.errors import ConnectionLostError, QueueConnectionLostError, QueueError
from memworker.records import record_types
from memworker.worker.process import running_worker

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DIM = 8
MemoryRecord = record_types()[0]


def _vec(text: str, dim: int = DIM) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEmbedder:
    dimension = DIM

    def encode(self, texts):
        return np.stack([_vec(t) for t in texts])


@pytest.fixture
def fake_embedder():
    worker_mod.set_embedder_factory(lambda: FakeEmbedder())
    yield
    worker_mod.set_embedder_factory(None)


@contextmanager
def worker_on(url: str, namespace: str, **kw):
    settings = Settings.from_url(url, namespace=namespace)
    with running_worker(settings, threads=2, worker_timeout_ms=100, **kw):
        yield settings


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _cli(url: str, namespace: str, *args: str, timeout: float = 60, extra_env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(extra_env or {}))
    for name in ("VALKEY_URL", "REDIS_URL", "MEMWORKER_NAMESPACE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", namespace, *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# ============================================================ README: the queue block


def test_readme_queue_block_runs_as_written(plain_server, namespace, fake_embedder):
    """README.md "The write-behind queue": MemoryQueue(producer_id=...), enqueue_encode of a
    full item and a bare string, enqueue_save(records), drain(timeout=30) -> report with
    committed/failed, and the async twins."""
    block = next(b for b in _python_blocks(README) if "enqueue_encode" in b)
    assert 'MemoryQueue(producer_id="agent-7")' in block
    with worker_on(plain_server.url, namespace):
        queue = MemoryQueue(plain_server.url, namespace=namespace, producer_id="agent-7")
        ids = queue.enqueue_encode([
            {"text": "Acme wants a refund", "scope": "/crew/agent-7", "categories": ["billing"],
             "metadata": {"customer": "Acme"}, "importance": 0.7, "source": "agent-7"},
            "a bare string works too",
        ])  # fmt: skip
        assert len(ids) == 2 and all(isinstance(i, str) for i in ids)
        records = [MemoryRecord(content="carried", scope="/crew/agent-7", embedding=_vec("carried").tolist())]
        queue.enqueue_save(records)
        report = queue.drain(timeout=30)
        assert report.committed == 2 and report.failed == []

        async def twins():
            await queue.aenqueue_encode(["async text"])
            return await queue.adrain()

        assert asyncio.run(twins()).committed == 1
        store = ValkeyStore(plain_server.url, namespace=namespace)
        try:
            full = store.get_record(ids[0])
            assert (full.scope, full.categories, full.metadata, full.importance, full.source) == (
                "/crew/agent-7", ["billing"], {"customer": "Acme"}, 0.7, "agent-7")
            bare = store.get_record(ids[1])
            assert bare.scope == "/"  # README: absent scope is the root `/`
            assert store.count("/") == 4
        finally:
            store.reset()
            store.close()
        queue.close()


def test_readme_failed_entries_are_failedjob_triples(plain_server, namespace, fake_embedder):
    """README: `report.failed  # failed: [FailedJob(job_id, record_ids, error)]`; a
    dimension mismatch (permanent) is dead-lettered at once and reported."""
    with worker_on(plain_server.url, namespace):
        queue = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p-fail")
        queue.enqueue_save([MemoryRecord(content="a", scope="/x", embedding=[0.5] * DIM)])
        assert queue.drain(timeout=30).committed == 1
        job = queue.enqueue_save([MemoryRecord(id="wrongdim", content="b", scope="/x", embedding=[0.5] * (DIM + 1))])
        report = queue.drain(timeout=30)
        assert len(report.failed) == 1
        failed = report.failed[0]
        assert type(failed).__name__ == "FailedJob"
        assert failed.job_id == job and failed.record_ids == ["wrongdim"] and failed.error
        ValkeyStore(plain_server.url, namespace=namespace).reset()
        queue.close()


def test_item_optional_fields_none_means_default_and_falsy_is_refused(plain_server, namespace):
    """README: an item's `id`, `scope`, `created_at` absent or None are a uuid4, `/` and
    now; `""`, `0` or `False` are refused, never read as "not given"."""
    queue = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p-opt")
    try:
        (rid,) = queue.enqueue_encode([{"text": "t", "id": None, "scope": None, "created_at": None}])
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid)
        for field in ("id", "scope", "created_at"):
            for bad in ("", 0, False):
                with pytest.raises(ValidationError):
                    queue.enqueue_encode([{"text": "t", field: bad}])
    finally:
        ValkeyStore(plain_server.url, namespace=namespace).reset()
        queue.close()


def test_readme_enqueue_limits(plain_server, namespace):
    """README: more than `max_items` items (1,000), a job over `max_job_bytes` (1 MiB),
    metadata nested over 32 levels, empty text: a ValidationError naming the field and
    the limit, nothing enqueued."""
    queue = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p-lim")
    try:
        queue.enqueue_encode(["x"] * 1000)  # the limit itself is accepted
        with pytest.raises(ValidationError) as exc:
            queue.enqueue_encode(["x"] * 1001)
        assert "1000" in str(exc.value).replace(",", "")
        with pytest.raises(ValidationError):
            queue.enqueue_encode(["y" * (600 * 1024), "z" * (600 * 1024)])
        deep: dict = {}
        cur = deep
        for _ in range(33):
            cur["a"] = {}
            cur = cur["a"]
        with pytest.raises(ValidationError) as exc:
            queue.enqueue_encode([{"text": "t", "metadata": deep}])
        assert "32" in str(exc.value)
        with pytest.raises(ValidationError):
            queue.enqueue_encode([""])
        assert callable(queue.status)  # README: `status()` reads one key per producer
    finally:
        ValkeyStore(plain_server.url, namespace=namespace).reset()
        queue.close()


def test_drain_timeout_names_stuck_jobs_and_no_live_worker(plain_server, namespace):
    """README: drain raises `DrainTimeout` naming the stuck jobs and the likely cause (no live worker)."""
    queue = MemoryQueue(plain_server.url, namespace=namespace, producer_id="p-stuck")
    try:
        queue.enqueue_encode(["stuck"])
        with pytest.raises(DrainTimeout) as exc:
            queue.drain(timeout=0.3)
        assert isinstance(exc.value, MemworkerError) and not isinstance(exc.value, RuntimeError)
        text = str(exc.value)
        assert "no live worker" in text
        assert re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", text), text  # the job id
        assert hasattr(queue, "drain_all")
    finally:
        ValkeyStore(plain_server.url, namespace=namespace).reset()
        queue.close()


def test_queue_connection_loss_is_a_memworker_error():
    """README: every queue call retries a lost connection and raises
    `QueueConnectionLostError` (also a `ConnectionLostError`), never a client library's."""
    from memworker.testing import free_port

    assert issubclass(QueueConnectionLostError, QueueError)
    assert issubclass(QueueConnectionLostError, ConnectionLostError)
    url = f"valkey://127.0.0.1:{free_port()}/0?connect_timeout_ms=200&request_timeout_ms=200"
    queue = MemoryQueue(url, namespace="nobody", producer_id="p-lost")
    with pytest.raises(MemworkerError) as exc:
        queue.enqueue_encode(["x"])
    assert isinstance(exc.value, QueueConnectionLostError), type(exc.value).__mro__
    queue.close()


# ============================================================ README: API tour


@pytest.fixture(params=["plain_server", "module_server"])
def any_server(request):
    return request.getfixturevalue(request.param)


def test_readme_api_tour_runs_as_written(any_server, namespace):
    """README "API tour": every call of the block, with the URL and vectors filled in."""
    url = any_server.url
    store = ValkeyStore(url, namespace=namespace)
    v = _vec("acme")
    records = [
        MemoryRecord(id="r1", content="Acme wants a refund", scope="/crew/agent-1", categories=["billing"],
                     metadata={"customer": "Acme"}, importance=0.5, embedding=v.tolist(), source="agent-1"),
        MemoryRecord(id="r2", content="other", scope="/crew/agent-2", categories=["ops"],
                     metadata={"customer": "Beta"}, embedding=_vec("other").tolist()),
    ]  # fmt: skip
    try:
        store.save(records)
        hits = store.search(v.tolist(), scope_prefix="/crew/agent-1", categories=["billing"],
                            metadata_filter={"customer": "Acme"}, limit=5, min_score=0.2,
                            include_private=False, viewer="agent-1")  # fmt: skip
        assert [r.id for r, _ in hits] == ["r1"] and hits[0][1] == pytest.approx(1.0, abs=1e-3)
        assert [r.id for r in store.list_records("/crew", limit=50, offset=0)] == ["r2", "r1"]  # newest first
        assert store.count("/crew") == 2
        assert store.get_scope_info("/crew").record_count == 2
        assert sorted(store.list_scopes("/crew")) == ["/crew/agent-1", "/crew/agent-2"]
        assert store.list_categories("/crew") == {"billing": 1, "ops": 1}
        store.touch_records([r.id for r, _ in hits])
        rec = store.get_record("r1")
        rec.content = "Acme wants a refund now"
        store.update(rec)
        cutoff = datetime.now(timezone.utc) + timedelta(seconds=5)
        assert store.delete(scope_prefix="/crew/agent-1", older_than=cutoff) == 1
        store.reset("/crew/agent-1")
        store.reset()
        assert store.count() == 0

        async def twins():
            await store.asave(records)
            return await store.asearch(v.tolist(), limit=5)

        assert [r.id for r, _ in asyncio.run(twins())][0] == "r1"
    finally:
        store.reset()
        store.close()
    cache = ValkeyCache(url, namespace=namespace, default_ttl=300)
    cache.set("plan", {"step": 3})
    assert cache.get("plan") == {"step": 3}
    assert asyncio.run(cache.aget("plan")) == {"step": 3}
    cache.close()


def test_store_errors_are_memworker_errors_and_dimension_error_names_both(plain_server, namespace):
    """README: errors derive from MemworkerError (never RuntimeError); a wrong dimension
    raises CrewAI's EmbeddingDimensionMismatchError with both dimensions."""
    store = ValkeyStore(plain_server.url, namespace=namespace)
    try:
        store.save([MemoryRecord(content="a", embedding=[0.1] * DIM)])
        with pytest.raises(MemworkerError) as exc:
            store.save([MemoryRecord(content="b", embedding=[0.1] * (DIM + 3))])
        assert not isinstance(exc.value, RuntimeError)
        from crewai.memory.storage.backend import EmbeddingDimensionMismatchError

        assert isinstance(exc.value, EmbeddingDimensionMismatchError)
        assert str(DIM) in str(exc.value) and str(DIM + 3) in str(exc.value)
    finally:
        store.reset()
        store.close()


# ============================================================ README: semantics worth knowing


@pytest.fixture
def sem_store(any_server, namespace):
    store = ValkeyStore(any_server.url, namespace=namespace)
    yield store
    store.reset()
    store.close()


def test_scopes_are_paths_and_normalized(sem_store):
    v = _vec("q").tolist()
    sem_store.save([
        MemoryRecord(id="a", content="a", scope="/a", embedding=v),
        MemoryRecord(id="ab", content="ab", scope="/a/b", embedding=v),
        MemoryRecord(id="abx", content="abx", scope="/ab", embedding=v),
        MemoryRecord(id="norm", content="n", scope="c/d/", embedding=v),
    ])  # fmt: skip
    assert sorted(r.id for r, _ in sem_store.search(v, scope_prefix="/a", limit=10)) == ["a", "ab"]
    assert sem_store.get_record("norm").scope == "/c/d"
    for bad in ("/x//y", "/" + "/".join(["l"] * 33), "/" + "x" * 1024, "/a\x07b"):
        with pytest.raises(ValidationError):
            sem_store.save([MemoryRecord(content="bad", scope=bad, embedding=v)])
    sem_store.save([MemoryRecord(content="ok32", scope="/" + "/".join(["l"] * 32), embedding=v)])
    with pytest.raises(ValidationError):
        sem_store.save([MemoryRecord(id="i" * 257, content="x", embedding=v)])
    sem_store.save([MemoryRecord(id="i" * 256, content="x", embedding=v)])


def test_min_score_zero_keeps_negative_similarities(sem_store):
    v = _vec("neg")
    sem_store.save([MemoryRecord(id="opp", content="o", embedding=(-v).tolist())])
    hits = sem_store.search(v.tolist(), limit=5, min_score=0.0)
    assert [r.id for r, _ in hits] == ["opp"] and hits[0][1] < 0
    assert sem_store.search(v.tolist(), limit=5, min_score=0.2) == []


def test_metadata_filter_json_equality(sem_store):
    """README: `1 == 1.0`, `True != 1`, `None` matches only an explicit null."""
    v = _vec("m").tolist()
    sem_store.save([
        MemoryRecord(id="one", content="1", metadata={"k": 1}, embedding=v),
        MemoryRecord(id="true", content="t", metadata={"k": True}, embedding=v),
        MemoryRecord(id="null", content="n", metadata={"k": None}, embedding=v),
        MemoryRecord(id="none", content="-", metadata={}, embedding=v),
    ])  # fmt: skip
    ids = lambda f: sorted(r.id for r, _ in sem_store.search(v, metadata_filter=f, limit=10))  # noqa: E731
    assert ids({"k": 1.0}) == ["one"]
    assert ids({"k": True}) == ["true"]
    assert ids({"k": None}) == ["null"]


def test_privacy_filters(sem_store):
    """README: include_private=False hides private records except the viewer's; a private
    record with no source is visible only to include_private=True callers."""
    v = _vec("p").tolist()
    sem_store.save([
        MemoryRecord(id="pub", content="p", embedding=v),
        MemoryRecord(id="mine", content="m", private=True, source="me", embedding=v),
        MemoryRecord(id="theirs", content="t", private=True, source="them", embedding=v),
        MemoryRecord(id="orphan", content="o", private=True, embedding=v),
    ])  # fmt: skip
    ids = lambda **kw: sorted(r.id for r, _ in sem_store.search(v, limit=10, **kw))  # noqa: E731
    assert ids(include_private=False, viewer="me") == ["mine", "pub"]
    assert ids(include_private=False) == ["pub"]
    assert ids(include_private=True) == ["mine", "orphan", "pub", "theirs"]
    with pytest.raises(ValidationError):
        sem_store.search(v, include_private="false")
    with pytest.raises(ValidationError):
        sem_store.search(v, viewer="v" * 1025, include_private=False)


def test_idempotent_writes_and_embedding_none_semantics(sem_store):
    """README: saving an id again replaces it, counts stay exact; `update` keeps the
    stored embedding when None; records without embedding are stored, never searched;
    an update with `[]` removes the embedding."""
    v = _vec("e").tolist()
    rec = MemoryRecord(id="r", content="c", scope="/s", categories=["k"], embedding=v)
    sem_store.save([rec])
    sem_store.save([rec])
    assert sem_store.count("/s") == 1 and sem_store.list_categories("/s") == {"k": 1}
    upd = MemoryRecord(id="r", content="c2", scope="/s", categories=["k"], embedding=None)
    sem_store.update(upd)
    assert sem_store.get_record("r").embedding is not None
    assert [r.id for r, _ in sem_store.search(v, limit=5)] == ["r"]
    sem_store.save([MemoryRecord(id="noemb", content="x", scope="/s", embedding=None),
                    MemoryRecord(id="zeros", content="z", scope="/s", embedding=[0.0] * DIM)])  # fmt: skip
    assert sem_store.count("/s") == 3
    assert sem_store.get_record("noemb").embedding is None
    assert [r.id for r, _ in sem_store.search(v, limit=10)] == ["r"]
    sem_store.update(MemoryRecord(id="r", content="c3", scope="/s", categories=["k"], embedding=[]))
    assert sem_store.get_record("r").embedding is None
    assert sem_store.search(v, limit=10) == []


def test_bad_input_rejected_before_anything_is_written(sem_store):
    v = _vec("b").tolist()
    good = MemoryRecord(id="good", content="g", embedding=v)
    bads = [
        MemoryRecord(content="x", embedding=v).model_copy(update={"importance": 1.5}),
        MemoryRecord(content="x", embedding=v).model_copy(update={"importance": -0.1}),
        MemoryRecord(content="x", embedding=[float("nan")] + v[1:]),
    ]
    for bad in bads:
        with pytest.raises(ValidationError):
            sem_store.save([good, bad])
        assert sem_store.count() == 0
    for field, value in (("private", "false"), ("created_at", ""), ("created_at", 0), ("metadata", ""), ("metadata", 0)):
        rec = MemoryRecord(content="x", embedding=v).model_copy(update={field: value})
        with pytest.raises(ValidationError):
            sem_store.save([good, rec])
        assert sem_store.count() == 0
    with pytest.raises(ValidationError):
        sem_store.delete(record_ids="r1")
    for kw in ({"limit": "5"}, {"min_score": "0.1"}):
        with pytest.raises(ValidationError):
            sem_store.search(v, **kw)
    with pytest.raises(ValidationError):
        sem_store.list_records("/", offset="1")


# ============================================================ README: configuration


def test_bad_url_config_error_and_password_never_shown():
    secret = "s3cr3t-pw"
    for bad, part in (("ftp://h:1/0", "scheme"), ("valkey://h:1/x", "db"), ("valkey://h:1/0?cluster=maybe", "cluster"),
                      ("valkey://h:1/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs")):  # fmt: skip
        with pytest.raises(ConfigError) as exc:
            Settings.from_url(bad.replace("h:", f":{secret}@h:"))
        assert secret not in str(exc.value) and secret not in repr(exc.value)
    s = Settings.from_url(f"valkey://user:{secret}@cache.internal:6379/0?request_timeout_ms=250&connect_timeout_ms=100&cluster=no")
    assert secret not in repr(s) and secret not in s.redacted_url()
    assert "cache.internal:6379" in s.redacted_url()
    assert s.request_timeout_ms == 250 and s.connect_timeout_ms == 100
    s2 = Settings.from_url("valkey://h:6379/0?timeout=2&socket_connect_timeout=1.5")
    assert (s2.request_timeout_ms, s2.connect_timeout_ms) == (2000, 1500)


def test_readme_global_options_example_runs(plain_server, namespace):
    """README: `memworker --url valkey://... --namespace crew-a status`, and `status --json`."""
    proc = _cli(plain_server.url, namespace, "status")
    assert proc.returncode == 0, proc.stderr
    proc = _cli(plain_server.url, namespace, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)


# ============================================================ README: CLI table


def test_cli_drain_exits_1_on_timeout_and_0_when_done(plain_server, namespace):
    """README: `memworker drain --producer ID | --all [--timeout S]`: exit 1 on timeout."""
    queue = MemoryQueue(plain_server.url, namespace=namespace, producer_id="cli-p")
    try:
        assert _cli(plain_server.url, namespace, "drain", "--producer", "cli-p", "--timeout", "1").returncode == 0
        queue.enqueue_encode(["pending"])
        proc = _cli(plain_server.url, namespace, "drain", "--producer", "cli-p", "--timeout", "0.5")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        proc = _cli(plain_server.url, namespace, "drain", "--all", "--timeout", "0.5")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
    finally:
        ValkeyStore(plain_server.url, namespace=namespace).reset()
        queue.close()


def test_cli_dead_list_and_check(plain_server, namespace):
    """README: `memworker dead list [--limit N] [--json]`; `memworker check [--any]` exits 1
    without a live worker, saying which."""
    proc = _cli(plain_server.url, namespace, "dead", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) in ([], {}) or isinstance(json.loads(proc.stdout), (list, dict))
    assert _cli(plain_server.url, namespace, "dead", "list", "--limit", "5").returncode == 0
    for args in (("check",), ("check", "--any")):
        proc = _cli(plain_server.url, namespace, *args)
        assert proc.returncode == 1
        assert "worker" in (proc.stdout + proc.stderr).lower()
    assert _cli(plain_server.url, namespace, "dead", "requeue").returncode == 0
    assert _cli(plain_server.url, namespace, "dead", "purge").returncode == 0


def test_cli_retention_set_list_clear(plain_server, namespace):
    """README/langgraph.md: `memworker retention set SCOPE --days N | clear SCOPE | list`;
    days above 0 and at most 36,500; a policy on /langgraph is refused, exit 2."""
    assert _cli(plain_server.url, namespace, "retention", "set", "/crew/research", "--days", "30").returncode == 0
    proc = _cli(plain_server.url, namespace, "retention", "list")
    assert proc.returncode == 0 and "/crew/research" in proc.stdout and "30" in proc.stdout, proc.stdout
    assert _cli(plain_server.url, namespace, "retention", "set", "/x", "--days", "36500").returncode == 0
    for days in ("0", "36501", "-1"):
        assert _cli(plain_server.url, namespace, "retention", "set", "/y", "--days", days).returncode != 0, days
    proc = _cli(plain_server.url, namespace, "retention", "set", "/langgraph/users", "--days", "3")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert _cli(plain_server.url, namespace, "retention", "clear", "/crew/research").returncode == 0
    assert _cli(plain_server.url, namespace, "retention", "clear", "/x").returncode == 0
    proc = _cli(plain_server.url, namespace, "retention", "list")
    assert "/crew/research" not in proc.stdout


def test_cli_worker_ranges_refused_before_starting(plain_server, namespace):
    """README: worker P from 1 to 256, T from 1 to 1,024."""
    for args in (("-p", "0"), ("-p", "257"), ("-t", "0"), ("-t", "1025")):
        proc = _cli(plain_server.url, namespace, "worker", *args, timeout=60)
        assert proc.returncode != 0, args


def test_cli_migrate_dry_run_on_current_layout(plain_server, namespace):
    proc = _cli(plain_server.url, namespace, "migrate", "--dry-run")
    assert proc.returncode == 0, proc.stderr


# ============================================================ LangGraph


def test_langgraph_doc_block_runs_as_written(plain_server, namespace):
    """docs/langgraph.md's block (and README's): QueuedStore(url, index=..., ttl=...),
    put / get / search with a $gte filter / list_namespaces, workers on the bundled model."""
    pytest.importorskip("langgraph.store.base")
    from memworker.langgraph import QueuedStore

    worker_mod.set_embedder_factory(None)  # the bundled all-MiniLM-L6-v2, as the doc says
    with worker_on(plain_server.url, namespace):
        store = QueuedStore(
            plain_server.url,
            namespace=namespace,
            index={"dims": 384, "fields": ["text"]},
            ttl={"default_ttl": 60 * 24, "refresh_on_read": True, "sweep_interval_minutes": 5},
        )
        try:
            store.put(("users", "u1"), "pref-1", {"text": "likes green tea", "strength": 3})
            item = store.get(("users", "u1"), "pref-1")
            assert item is not None and item.value == {"text": "likes green tea", "strength": 3}
            hits = store.search(("users",), query="tea", filter={"strength": {"$gte": 2}}, limit=5)
            assert [h.key for h in hits] == ["pref-1"] and hits[0].score is not None
            assert store.search(("users",), query="tea", filter={"strength": {"$gte": 4}}, limit=5) == []
            assert store.list_namespaces(prefix=("users",)) == [("users", "u1")]
            raw = ValkeyStore(plain_server.url, namespace=namespace)
            rid = "lg" + hashlib.blake2b(json.dumps([["users", "u1"], "pref-1"]).encode(), digest_size=16).hexdigest()
            recs = raw.list_records("/langgraph/users/u1")
            assert [r.scope for r in recs] == ["/langgraph/users/u1"]
            assert recs[0].id.startswith("lg") and len(recs[0].id) == 2 + 32, (recs[0].id, rid)
            raw.reset()
            raw.close()
        finally:
            store.close()


def test_langgraph_documented_refusals(plain_server, namespace):
    """docs/langgraph.md: other `$` operators refused (ValidationError naming it);
    refresh_ttl "false" refused; TTL at most 525,600,000 minutes; drain_timeout bad is a
    ConfigError when the store is made; index dims not matching the model: ConfigError."""
    pytest.importorskip("langgraph.store.base")
    from memworker.langgraph import QueuedStore

    with pytest.raises(ConfigError):
        QueuedStore(plain_server.url, namespace=namespace, drain_timeout=-1)
    with pytest.raises(ConfigError):
        QueuedStore(plain_server.url, namespace=namespace, drain_timeout=float("inf"))
    store = QueuedStore(plain_server.url, namespace=namespace)
    try:
        with pytest.raises(ValidationError) as exc:
            store.search(("users",), filter={"a": {"$in": [1]}})
        assert "$in" in str(exc.value)
        with pytest.raises(ValidationError):
            store.search(("users",), filter={"a": {"b": {"$regex": "x"}}})
        with pytest.raises(ValidationError):
            store.get(("users",), "k", refresh_ttl="false")
        with pytest.raises(ValidationError):
            store.put(("users",), "k", {"v": 1}, ttl=525_600_001)
        with pytest.raises(ValidationError):
            store.put(("users",), "k", {"v": 1}, ttl=0)
        with pytest.raises(ValidationError):
            store.put(("users",), "k", {"v": 2**1100})
    finally:
        store.close()


def test_langgraph_index_dims_must_match_the_model(plain_server, namespace, fake_embedder):
    pytest.importorskip("langgraph.store.base")
    from memworker.langgraph import QueuedStore

    store = QueuedStore(plain_server.url, namespace=namespace, index={"dims": 384, "fields": ["text"]})
    try:
        with pytest.raises(ConfigError):
            store.search(("users",), query="tea")
    finally:
        store.close()


# ============================================================ CrewAI


def test_crewai_install_serves_valkey_specs_and_uninstall_restores(plain_server, namespace):
    """docs/crewai.md `install(url=None, **options)`: a plain crewai Memory(storage="valkey://...")
    then stores in Valkey; other specs go to the factory before; uninstall() restores."""
    pytest.importorskip("crewai")
    from crewai.memory.storage import factory as crewai_factory

    from memworker.crewai import install, uninstall

    before = crewai_factory._factory  # noqa: SLF001
    install(namespace=namespace)
    try:
        made = crewai_factory._factory(plain_server.url) if callable(crewai_factory._factory) else None  # noqa: SLF001
        if made is None:
            from crewai.memory.storage.factory import create_memory_storage  # type: ignore[attr-defined]

            made = create_memory_storage(plain_server.url)
        assert isinstance(made, ValkeyStore)
        assert made.settings.namespace == namespace
    finally:
        uninstall()
    assert crewai_factory._factory is before  # noqa: SLF001


def test_queued_memory_documented_defaults_and_refusals(plain_server, namespace, fake_embedder):
    """docs/crewai.md: QueuedMemory defaults (storage "valkey", drain_timeout 60,
    background_enqueue True); a scope under /langgraph refused with ValidationError naming
    it; retention under /langgraph refused; `True` or "30" days refused; a model id other
    than the namespace's is a ConfigError naming both."""
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory
    from memworker.crewai.testing import StandInLLM

    fields = QueuedMemory.model_fields
    assert fields["storage"].default == "valkey"
    assert fields["drain_timeout"].default == 60
    assert fields["background_enqueue"].default is True

    class Emb:
        model_id = "fake-model-a"

        def __call__(self, texts):
            return [_vec(t).tolist() for t in texts]

    mem = QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=Emb(), llm=StandInLLM(),
                       model_id="fake-model-a", consolidation_threshold=1.0)  # fmt: skip
    try:
        with pytest.raises(ValidationError) as exc:
            mem.remember("x", scope="/langgraph/users", categories=["c"], importance=0.5)
        assert "/langgraph" in str(exc.value)
        with worker_on(plain_server.url, namespace):
            rec = mem.remember("keep me", scope="/a", categories=["c"], importance=0.5)
            assert rec is not None and rec.scope == "/a"
        with pytest.raises(ConfigError) as exc:
            QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=Emb(), llm=StandInLLM(),
                         model_id="fake-model-b")  # fmt: skip
        assert "fake-model-a" in str(exc.value) and "fake-model-b" in str(exc.value)
    finally:
        mem.reset_all()
        mem.close()


def test_queued_memory_retention_refusals_raise_memworker_validation_error(plain_server, namespace):
    """docs/langgraph.md:141-158: QueuedMemory(retention=...) days a number above 0 and at
    most 36,500 (`True` or "30" refused); a policy on /langgraph or below is refused with a
    `ValidationError` naming the scope (memworker's, as everywhere else in the docs)."""
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory
    from memworker.crewai.testing import StandInLLM

    class Emb:
        model_id = "fake-model-a"

        def __call__(self, texts):
            return [_vec(t).tolist() for t in texts]

    raised = {}
    for bad in ({"/langgraph/x": 3}, {"/": True}, {"/": "30"}, {"/": 0}, {"/": 36_501}):
        try:
            mem = QueuedMemory(storage=plain_server.url, namespace=namespace, embedder=Emb(), llm=StandInLLM(),
                               model_id="fake-model-a", retention=bad)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the class is the finding
            raised[repr(bad)] = type(exc)
        else:
            mem.close()
            raised[repr(bad)] = None
    assert all(t is not None for t in raised.values()), raised
    wrong = {k: f"{t.__module__}.{t.__name__}" for k, t in raised.items() if not issubclass(t, ValidationError)}
    assert not wrong, f"refused, but not with memworker.ValidationError: {wrong}"


def test_eviction_policy_refusals(own_plain_server, namespace, fake_embedder):
    """deploy/README.md:174-183, README CLI table: on a server with a maxmemory limit and a
    policy other than noeviction, a worker refuses to start (exit 2, naming the policy),
    `memworker check` fails, `status` warns; a full noeviction server makes an enqueue raise
    a QueueError naming maxmemory."""
    import redis

    raw = redis.Redis(host="127.0.0.1", port=own_plain_server.port)
    url = own_plain_server.url
    with worker_on(url, namespace):  # a live heartbeat, started while the server never evicts
        raw.config_set("maxmemory", "100mb")
        raw.config_set("maxmemory-policy", "volatile-lru")
        proc = _cli(url, namespace, "check", "--any")
        assert proc.returncode == 1 and "evict" in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
        proc = _cli(url, namespace, "check", "--any", extra_env={"MEMWORKER_ALLOW_EVICTION": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _cli(url, namespace, "worker", "-p", "1", "-t", "1", timeout=120)
    assert proc.returncode == 2 and "volatile-lru" in proc.stderr, (proc.returncode, proc.stderr[-1500:])
    proc = _cli(url, namespace, "status")
    assert proc.returncode == 0 and "evict" in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    raw.config_set("maxmemory-policy", "noeviction")
    queue = MemoryQueue(url, namespace=namespace, producer_id="p-full")
    try:
        queue.enqueue_encode(["fits"])
        used = int(raw.info("memory")["used_memory"])
        raw.config_set("maxmemory", str(used + 1024))
        with pytest.raises(QueueError) as exc:
            queue.enqueue_encode(["x" * 200_000])
        assert "maxmemory" in str(exc.value)
    finally:
        raw.config_set("maxmemory", "0")
        queue.close()
        raw.close()


# ============================================================ examples/


@pytest.mark.slow
def test_examples_crew_offline_runs(plain_server, namespace):
    """examples/crew_offline.py, run as its docstring says, against VALKEY_URL."""
    pytest.importorskip("crewai")
    env = dict(os.environ, VALKEY_URL=plain_server.url, HF_HUB_OFFLINE="1", CREWAI_TRACING_ENABLED="false")
    env.pop("MEMWORKER_NAMESPACE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "crew_offline.py")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "crew output:" in proc.stdout
    assert "Acme" in proc.stdout
