"""Embedding: :class:`Embedder` (the model, :mod:`.model`; its torch/ONNX runners,
:mod:`.backends`), :class:`EmbeddingBatcher` (one inference pool per worker process,
:mod:`.batcher`) and :func:`configure_threads` (:mod:`.threads`); the structural types
of its seams (:class:`TextEncoder`, :class:`Batcher`) in :mod:`.protocols`."""

from memworker.embedding.batcher import BatcherStats, EmbeddingBatcher
from memworker.embedding.model import BACKENDS, DEFAULT_MODEL_ID, Embedder
from memworker.embedding.protocols import Batcher, EmbedderFactory, TextEncoder
from memworker.embedding.threads import configure_threads

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_ID",
    "Batcher",
    "BatcherStats",
    "Embedder",
    "EmbedderFactory",
    "EmbeddingBatcher",
    "TextEncoder",
    "configure_threads",
]
