"""Move an existing CrewAI LanceDB memory into a memworker Valkey namespace.

Records keep their ids, scopes, categories, metadata, importance, timestamps,
source and privacy. Vectors are recomputed with the local embedding model (the one
memworker's workers and :class:`~memworker.crewai.LocalEmbedder` use) unless
``keep_vectors=True``: a LanceDB memory is often embedded by another model
(CrewAI's default is OpenAI's), and a namespace holds vectors of one model only.
LanceDB stores a record saved without an embedding as a zero vector; kept, such a row
becomes a record without an embedding (never returned by a search). Re-running the
import rewrites the same ids (idempotent).

The table is read in one scan (its vectors only with ``keep_vectors``), and every row
is converted and validated before the first write: a bad row (a NULL or missing
column, JSON that does not parse, a timestamp that is not one, an id that repeats,
vectors of two dimensions or of another than the namespace's, a scope under
``/langgraph``, anything the store refuses) stops the import with a
``ValidationError`` naming the row's id and the column, and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from memworker.crewai._calls import check_not_langgraph
from memworker.embedding.model import Embedder
from memworker.errors import ConfigError, ValidationError, shown
from memworker.store.codec import to_row
from memworker.store.store import ValkeyStore

__all__ = ["import_lancedb", "PAGE"]

#: Records embedded and written per step.
PAGE = 256
#: Columns every CrewAI memory table has (LanceDBStorage writes them all).
REQUIRED = ("id", "content", "scope", "created_at")
#: Columns read besides the vector (those the table has).
COLUMNS = (*REQUIRED, "categories_str", "metadata_str", "importance", "last_accessed", "source", "private")


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
        ConfigError: The folder has no LanceDB table of that name, the table lacks a
            column of CrewAI's memory table, the namespace records another
            embedding model, or ``model_id`` is given without ``keep_vectors``.
        ValidationError: A bad row (named by its id and the column); nothing written.
    """
    import lancedb

    if model_id is not None and not keep_vectors:
        raise ConfigError(
            "model_id goes with keep_vectors=True (re-embedded vectors are recorded as the "
            "embedding model's own; `--model-id` with `--keep-vectors`)"
        )
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"no LanceDB folder at {shown(str(path), 200)}")
    try:
        source = lancedb.connect(str(folder)).open_table(table)
    except (ValueError, OSError, RuntimeError) as exc:
        # lance raises RuntimeError (LanceError) for a name it cannot open as a folder
        # (too long for the file system): an error of the input, not a crash
        raise ConfigError(f"no LanceDB table {shown(table)} in {shown(str(path), 200)} ({shown(str(exc), 300)})") from None
    names = set(source.schema.names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ConfigError(
            f"table {shown(table)} in {shown(str(path), 200)} is not a CrewAI memory table: no column(s) {', '.join(missing)}"
        )
    columns = [c for c in COLUMNS if c in names]
    if keep_vectors and "vector" in names:
        columns.append("vector")
    rows = source.search().select(columns).limit(None).to_arrow()
    total = rows.num_rows
    dims = _check_rows(_pages(rows), keep_vectors)  # every row, before the first write
    with ValkeyStore(url, namespace=namespace) as store:
        stored = store.stored_dimension()
        if dims is not None and stored is not None and dims[0] != stored:
            raise ValidationError(
                f"row {shown(dims[1])}.vector has {dims[0]} dimensions; the namespace's "
                f"vectors have {stored}"
            )
        embedder = None
        if keep_vectors:
            if model_id:
                store.ensure_model(model_id)
        else:
            embedder = Embedder(model)
            store.ensure_model(embedder.model_id)
        done = 0
        for page in _pages(rows):
            records = [_record(row, done + i, keep_vectors) for i, row in enumerate(page)]
            if embedder is not None:
                vectors = embedder.encode([r["content"] for r in records])
                for record, vector in zip(records, vectors):
                    record["embedding"] = vector.tolist()
            store.save(records)
            done += len(records)
            if progress is not None:
                progress(done, total)
        return done


def _pages(rows: Any) -> Iterator[list[dict[str, Any]]]:
    """The table's rows as dicts, :data:`PAGE` at a time."""
    for batch in rows.to_batches(max_chunksize=PAGE):
        yield batch.to_pylist()


def _check_rows(pages: Iterator[list[dict[str, Any]]], keep_vectors: bool) -> tuple[int, str] | None:
    """Convert and validate every row: each as the store checks a record, ids
    distinct, not in LangGraph's scope, kept vectors of one dimension. Returns that
    dimension and the first row that has it (``None``: no vector kept)."""
    seen: set[str] = set()
    dims: tuple[int, str] | None = None
    n = 0
    for page in pages:
        for row in page:
            record = _record(row, n, keep_vectors)
            n += 1
            rid = record["id"]
            where = f"row {shown(rid)}"
            if rid in seen:
                raise ValidationError(f"{where}: the id appears more than once in the table")
            seen.add(rid)
            to_row(record, where=where, validate_only=True)
            check_not_langgraph_row(record["scope"], where)
            vector = record["embedding"]
            if vector is not None:
                if dims is None:
                    dims = (len(vector), rid)
                elif len(vector) != dims[0]:
                    raise ValidationError(
                        f"{where}.vector has {len(vector)} dimensions, row {shown(dims[1])}'s {dims[0]}"
                    )
    return dims


def check_not_langgraph_row(scope: str, where: str) -> None:
    """Refuse a row in LangGraph's scope (``/langgraph``): CrewAI's memory neither shows
    nor deletes records there (docs/crewai.md, "Sharing a namespace with LangGraph")."""
    try:
        check_not_langgraph(scope)
    except ValidationError as exc:
        raise ValidationError(f"{where}.scope: {exc}") from None


def _record(row: dict[str, Any], n: int, keep_vectors: bool) -> dict[str, Any]:
    """A store record from a row of CrewAI's LanceDB table (the ``n``-th read)."""
    rid = row.get("id")
    if not isinstance(rid, str):
        raise ValidationError(f"row #{n} of the table: id is {'NULL' if rid is None else type(rid).__name__}")
    where = f"row {shown(rid)}"
    for column in ("content", "scope"):
        if not isinstance(row.get(column), str):
            raise ValidationError(f"{where}.{column} must be text, got {'NULL' if row.get(column) is None else type(row.get(column)).__name__}")  # fmt: skip
    importance = row.get("importance")
    private = row.get("private")
    return {
        "id": rid,
        "content": row["content"],
        "scope": row["scope"],
        "categories": _json(row.get("categories_str"), list, [], f"{where}.categories_str"),
        "metadata": _json(row.get("metadata_str"), dict, {}, f"{where}.metadata_str"),
        "importance": 0.5 if importance is None else importance,
        "created_at": _time(row.get("created_at"), f"{where}.created_at", required=True),
        "last_accessed": _time(row.get("last_accessed"), f"{where}.last_accessed", required=False),
        "source": row.get("source") or None,  # CrewAI writes "" for none
        "private": False if private is None else private,
        "embedding": _vector(row.get("vector")) if keep_vectors else None,
    }


def _vector(raw: Any) -> Any:
    """A kept vector; LanceDB's zero vector (a record saved without one) is none, of
    whatever dimension."""
    if raw is None or (isinstance(raw, list) and not any(raw)):
        return None
    return raw


def _json(raw: Any, kind: type, empty: Any, where: str) -> Any:
    """A JSON column (``categories_str``, ``metadata_str``): NULL or "" is ``empty``."""
    if raw is None or raw == "":
        return empty
    if not isinstance(raw, str):
        raise ValidationError(f"{where} must be JSON text, got {type(raw).__name__}")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"{where} is not JSON ({exc})") from None
    except RecursionError:
        raise ValidationError(f"{where} is nested too deeply to read") from None
    if not isinstance(value, kind):
        raise ValidationError(f"{where} must be a JSON {'array' if kind is list else 'object'}, got {type(value).__name__}")  # fmt: skip
    return value


def _time(raw: Any, where: str, *, required: bool) -> datetime | None:
    """A timestamp column: a datetime, or ISO 8601 text (CrewAI writes ``isoformat()``).
    A NULL ``created_at`` is refused: the import would date the record now."""
    if raw is None or raw == "":
        if required:
            raise ValidationError(f"{where} is empty: the record's age would be lost")
        return None
    if isinstance(raw, datetime):
        return raw
    if not isinstance(raw, str):
        raise ValidationError(f"{where} must be an ISO 8601 time, got {type(raw).__name__}")
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{where} is not an ISO 8601 time: {shown(raw)}") from None
