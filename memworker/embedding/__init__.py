"""Embedding: :class:`Embedder` (the model and its backends) and
:class:`EmbeddingBatcher` (one inference pool per worker process)."""

from memworker.embedding.model import (
    BACKENDS,
    DEFAULT_MODEL_ID,
    BatcherStats,
    Embedder,
    EmbeddingBatcher,
    TextEncoder,
    configure_threads,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_ID",
    "BatcherStats",
    "Embedder",
    "EmbeddingBatcher",
    "TextEncoder",
    "configure_threads",
]
