"""An instant, deterministic embedder for measuring the queue alone
(``MEMWORKER_EMBEDDER=_fake_embedder:make`` with benchmarks/ on PYTHONPATH)."""

from __future__ import annotations

import hashlib

import numpy as np


class FakeEmbedder:
    """Unit vectors from a hash of the text; no model, no cost."""

    dimension = 32
    model_id = "fake/hash-32"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dimension)
            out[i] = v / np.linalg.norm(v)
        return out


def make() -> FakeEmbedder:
    return FakeEmbedder()
