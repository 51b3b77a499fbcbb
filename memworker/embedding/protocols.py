"""The embedding seams, as structural types (:class:`typing.Protocol`).

Any object with the right methods fits; nothing needs to subclass these.

- :class:`TextEncoder`: a model, what :class:`~memworker.embedding.EmbeddingBatcher`
  runs and what ``MEMWORKER_EMBEDDER`` or ``set_embedder_factory`` may supply
  (:class:`~memworker.embedding.Embedder` is one; so is a test fake).
- :class:`Batcher`: what a worker's actors and its CrewAI flow submit texts to
  (:class:`~memworker.embedding.EmbeddingBatcher` is one).
- :data:`EmbedderFactory`: builds a worker process's model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

import numpy as np

__all__ = ["Batcher", "EmbedderFactory", "TextEncoder"]


class TextEncoder(Protocol):
    """What :class:`EmbeddingBatcher` needs from a model: :class:`Embedder` or a fake.

    A model may also have a ``model_id`` (``str``: its identity, compared with the
    store's to detect a worker whose model differs from the producers'); it is read
    with ``getattr``, so it is not part of the protocol.
    """

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return one row per text."""
        ...


class Batcher(Protocol):
    """Where a worker thread gets vectors: texts in, a future of their rows out."""

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Queue ``texts``; the future holds one float32 row per text, in order."""
        ...


#: Builds a worker process's model (``set_embedder_factory``, ``MEMWORKER_EMBEDDER``).
EmbedderFactory = Callable[[], TextEncoder]
