"""Model backends: a loaded sentence-transformers model run by torch or by ONNX Runtime.

:class:`TorchRunner` runs the model's whole pipeline with torch; :class:`OnnxRunner`
runs an ONNX export of it (``onnx`` or ``onnx-int8``, made once by :func:`export_onnx`).
:data:`RUNNERS` caches the runners this process has loaded. torch, onnx and onnxruntime
are imported only when a model is run or exported.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np

from memworker.embedding.threads import configured_threads

__all__ = [
    "CHUNK_TOKENS",
    "ENCODE_CHUNK",
    "OnnxRunner",
    "RUNNERS",
    "RUNNERS_LOCK",
    "Runner",
    "TorchRunner",
    "export_onnx",
    "model_dimension",
]

#: Largest number of texts sent to the model in one forward pass by :meth:`Embedder.encode`.
ENCODE_CHUNK = 64
#: Token budget of one forward pass of a single-threaded ONNX session (a worker's): its
#: texts times their padded length. Such a session costs less CPU a text in small
#: passes (their activations stay in the core's cache): with the bundled int8 model on
#: this project's 2-core machine, ~22-token texts cost 1.36-1.39 ms a text in passes of
#: 8 and 1.55-1.59 in passes of 64; ~110-token texts 8.1-8.2 ms in passes of 1-4 and
#: 11.1 in passes of 64 (benchmarks/README.md). torch shows no such curve.
CHUNK_TOKENS = 256


class Runner:
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
        if configured_threads() is None:
            with self._call_lock:
                return self._encode(texts)
        return self._encode(texts)

    #: Token budget of one forward pass (:data:`CHUNK_TOKENS`) when set and the process
    #: runs single-threaded batches; else passes of :data:`ENCODE_CHUNK` texts.
    chunk_tokens: int | None = None

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # less padding
        budget = self.chunk_tokens if configured_threads() is not None else None
        for start in range(0, len(order), ENCODE_CHUNK):
            rows = order[start : start + ENCODE_CHUNK]
            with self._tokenize_lock:
                features = _preprocess(self.model, [texts[i] for i in rows])
            if budget is None or not _right_padded(features["attention_mask"]):
                out[rows] = self._run(features)
                continue
            for first, stop, width in token_chunks(features["attention_mask"], budget):
                part = {k: _cut(v, first, stop, width) for k, v in features.items()}
                out[rows[first:stop]] = self._run(part)
        return out

    def _run(self, features: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError


def token_chunks(mask: Any, budget: int) -> list[tuple[int, int, int]]:
    """Split a tokenized batch (its attention mask, rows longest first) into forward
    passes of at most ``budget`` tokens with padding (one row at least): ``(first row,
    stop row, columns)``, each pass cut to its longest row (right padding)."""
    lengths = [int(n) for n in np.asarray(mask).sum(axis=1)]
    out: list[tuple[int, int, int]] = []
    first = 0
    while first < len(lengths):
        width = max(1, lengths[first])
        stop = first + 1
        while stop < len(lengths) and (stop - first + 1) * max(width, lengths[stop]) <= budget:
            width = max(width, lengths[stop])
            stop += 1
        out.append((first, stop, width))
        first = stop
    return out


def _right_padded(mask: Any) -> bool:
    """Whether every row's tokens come first and its padding after (what :func:`_cut`
    assumes)."""
    m = np.asarray(mask) != 0
    return bool((np.cumprod(m, axis=1).sum(axis=1) == m.sum(axis=1)).all())


def _cut(value: Any, first: int, stop: int, width: int) -> Any:
    """Rows ``first:stop`` and the first ``width`` columns of a (batch, sequence)
    tensor; anything else unchanged."""
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2:
        return value
    return value[first:stop, :width]


class TorchRunner(Runner):
    """A sentence-transformers model run by torch: its whole pipeline (transformer,
    pooling, normalization), as ``SentenceTransformer.encode`` runs it."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, model_dimension(model))

    def _run(self, features: dict[str, Any]) -> np.ndarray:
        import torch

        device = self.model.device
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with torch.inference_mode():
            vectors = self.model(features)["sentence_embedding"]
        return cast("np.ndarray", vectors.float().cpu().numpy())


class OnnxRunner(Runner):
    """The model's tokenizer plus an ONNX Runtime session of the whole pipeline."""

    chunk_tokens = CHUNK_TOKENS

    def __init__(self, model: Any, session: Any, dimension: int) -> None:
        super().__init__(model, dimension)
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]

    def _run(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: features[name].numpy() for name in self.inputs}
        return cast("np.ndarray", self.session.run(None, feed)[0])


def model_dimension(model: Any) -> int:
    # sentence-transformers >= 6 renamed get_sentence_embedding_dimension.
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def _preprocess(model: Any, texts: list[str]) -> dict[str, Any]:
    # sentence-transformers >= 6 names it `preprocess`; older versions `tokenize`.
    return cast("dict[str, Any]", (getattr(model, "preprocess", None) or model.tokenize)(texts))


def export_onnx(model: Any, path: Path, quantize: bool) -> None:
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
            features = {**constants, **dict(zip(names, tensors))}
            out: torch.Tensor = self.model(features)["sentence_embedding"]  # no call: traced
            return out

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
RUNNERS: dict[tuple[str, str, str, str], Runner] = {}
RUNNERS_LOCK = threading.Lock()

