"""Move an existing CrewAI LanceDB memory into a memworker Valkey namespace.

Records keep their ids, scopes, categories, metadata, importance, timestamps,
source and privacy. Vectors are recomputed with the local embedding model (the one
memworker's workers and :class:`~memworker.crewai.LocalEmbedder` use) unless
``keep_vectors=True``: a LanceDB memory is often embedded by another model
(CrewAI's default is OpenAI's), and a namespace holds vectors of one model only.
LanceDB stores a record saved without an embedding as a zero vector; kept, such a row
becomes a record without an embedding (never returned by a search). Re-running the
import rewrites the same ids (idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from memworker.embedding.model import Embedder
from memworker.errors import ConfigError
from memworker.store.store import ValkeyStore

__all__ = ["import_lancedb", "PAGE"]

#: Records read from LanceDB, embedded and written per step.
PAGE = 256


def import_lancedb(
    path: str | Path,
    url: Any = None,
    *,
    namespace: str | None = None,
    table: str = "memories",
    keep_vectors: bool = False,
    model: str | None = None,
    model_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy every record of the LanceDB memory at ``path`` into a :class:`ValkeyStore`.

    Args:
        path: The LanceDB folder (what ``Memory(storage=PATH)`` used).
        url: Valkey URL or :class:`Settings` (default: ``VALKEY_URL`` > ``REDIS_URL`` >
            embedded).
        namespace: memworker namespace.
        table: LanceDB table name (CrewAI's default ``memories``).
        keep_vectors: Keep the stored vectors instead of re-embedding (then give
            ``model_id``: the model that produced them).
        model: Embedding model for re-embedding (default: ``MEMWORKER_MODEL`` or bundled).
        model_id: Identity recorded in the namespace with ``keep_vectors``.
        progress: Called as ``progress(done, total)`` after each page.

    Returns:
        Number of records imported.

    Raises:
        ConfigError: The folder has no LanceDB memory, or the namespace records
            another embedding model.
    """
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"no LanceDB folder at {str(folder)!r}")
    source = LanceDBStorage(path=folder, table_name=table, compact_every=0)
    total = source.count()
    store = ValkeyStore(url, namespace=namespace)
    embedder = None
    try:
        if keep_vectors:
            if model_id:
                store.ensure_model(model_id)
        else:
            embedder = Embedder(model)
            store.ensure_model(embedder.model_id)
        done = 0
        offset = 0
        while True:
            page = source.list_records(limit=PAGE, offset=offset)
            if not page:
                break
            offset += len(page)
            if embedder is not None:
                vectors = embedder.encode([r.content for r in page])
                page = [r.model_copy(update={"embedding": v.tolist()}) for r, v in zip(page, vectors)]
            store.save(page)
            done += len(page)
            if progress is not None:
                progress(done, total)
        return done
    finally:
        store.close()
        close = getattr(source, "close", None)
        if callable(close):
            close()
