"""Embedding: :class:`Embedder` (the model, :mod:`.model`; its torch/ONNX runners,
:mod:`.backends`), :class:`EmbeddingBatcher` (one inference pool per worker process,
:mod:`.batcher`) and :func:`configure_threads` (:mod:`.threads`)."""

from memworker.embedding.batcher import BatcherStats, EmbeddingBatcher
from memworker.embedding.model import BACKENDS, DEFAULT_MODEL_ID, Embedder, TextEncoder
from memworker.embedding.threads import configure_threads

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_ID",
    "BatcherStats",
    "Embedder",
    "EmbeddingBatcher",
    "TextEncoder",
    "configure_threads",
]
