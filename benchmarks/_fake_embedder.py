"""An instant, deterministic embedder for measuring the queue alone
(``MEMWORKER_EMBEDDER=_fake_embedder:make`` with benchmarks/ on PYTHONPATH)."""

from __future__ import annotations

import hashlib

import numpy as np


class FakeEmbedder:
    """Random unit vectors (uniform on the sphere), each seeded by its text; no model.

    A batch costs one hash a text and a few array operations over the whole batch
    (~2 µs a text). Until 2026-12-04 each text seeded its own ``numpy`` generator
    (~30-57 µs a text): in the instant-embedder runs that was ~8% of the worker's CPU
    a job, charged to the queue and commit it is meant to leave alone."""

    dimension = 32
    model_id = "fake/hash-32"

    def encode(self, texts: list[str]) -> np.ndarray:
        n, dim = len(texts), self.dimension
        blob = b"".join([hashlib.shake_128(t.encode()).digest(4 * dim) for t in texts])
        u = (np.frombuffer(blob, dtype="<u4").reshape(n, dim) + 0.5) / 2.0**32  # in (0, 1)
        radius = np.sqrt(-2.0 * np.log(u[:, 0::2]))  # Box-Muller: normal pairs
        angle = 2.0 * np.pi * u[:, 1::2]
        v = np.empty((n, dim))
        v[:, 0::2] = radius * np.cos(angle)
        v[:, 1::2] = radius * np.sin(angle)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32)


def make() -> FakeEmbedder:
    return FakeEmbedder()
