"""A CrewAI embedder callable over memworker's local :class:`~memworker.embedding.Embedder`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from memworker.embedding.protocols import TextEncoder

from memworker.embedding.model import Embedder

__all__ = ["LocalEmbedder", "model_id_of"]


class LocalEmbedder:
    """CrewAI embedder (``embedder(texts) -> vectors``) on the bundled, offline
    all-MiniLM-L6-v2 (or ``MEMWORKER_MODEL``), the same model workers use by default.

    Args:
        model: Hub name or local folder; ``None`` reads ``MEMWORKER_MODEL``, else the
            bundled model.
        backend: ``"torch"``, ``"onnx"`` or ``"onnx-int8"``.
        embedder: An already built embedder (anything with ``encode``, ``dimension``
            and ``model_id``); overrides ``model``/``backend``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str = "torch",
        embedder: TextEncoder | None = None,
    ) -> None:
        if embedder is None:
            embedder = Embedder(model, backend=backend)
        self.embedder = embedder

    @property
    def model_id(self) -> str | None:
        """The model's identity (compared with the store's and the workers')."""
        return getattr(self.embedder, "model_id", None)

    @property
    def dimension(self) -> int:
        return int(self.embedder.dimension)

    def __call__(self, input: list[str]) -> list[list[float]]:  # noqa: A002 - CrewAI's name
        if not input:
            return []
        return cast("list[list[float]]", self.embedder.encode(list(input)).tolist())

    def __repr__(self) -> str:
        return f"LocalEmbedder({self.embedder!r})"


def model_id_of(embedder: Any) -> str | None:
    """Best-effort model identity of a CrewAI embedder: its ``model_id`` attribute, or
    the model named in a provider spec dict; ``None`` when unknown."""
    if embedder is None:
        return None
    found = getattr(embedder, "model_id", None)
    if isinstance(found, str) and found:
        return found
    if isinstance(embedder, Mapping):
        config = embedder.get("config") or {}
        for key in ("model_name", "model", "model_id"):
            value = config.get(key) if isinstance(config, Mapping) else None
            if isinstance(value, str) and value:
                return value
    return None
