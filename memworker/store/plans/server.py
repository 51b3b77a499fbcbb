"""What a store learns about its server, and the plans every other plan builds on:
whether a search module answers (and indexes float16), the namespace's vector
dimension and type, its embedding model, and the vector index
(:mod:`~memworker.store.index`).

A plan is a generator that yields steps (:class:`~memworker.io.plan.Call`,
:class:`~memworker.io.plan.Pipeline`, :class:`~memworker.io.plan.Script`) and parses
their replies, without I/O; the faces of :class:`~memworker.store.ValkeyStore` run them.
The plan classes are mixins of ``ValkeyStore``: they share its :class:`StoreState`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memworker.errors import ConfigError, MemworkerError
from memworker.io import Call, Plan, error_text
from memworker.io.plan import is_permanent
from memworker.keys import Keys
from memworker.records import dimension_mismatch
from memworker.settings import Settings
from memworker.store.index import record_index
from memworker.store.vectors import VectorCache

__all__ = ["ServerPlans", "StoreState", "as_text", "optional_text"]


def as_text(raw: Any) -> str:
    """A reply value as text (bytes decoded as UTF-8, lone surrogates kept)."""
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


def optional_text(raw: Any) -> str | None:
    """:func:`as_text`, with ``None`` kept."""
    return None if raw is None else as_text(raw)


@dataclass
class StoreState:
    """What a store learned about its server; shared by both faces (and its plans)."""

    dim: int | None = None
    vtype: str | None = None  # "float32" or "float16": how the namespace stores vectors
    module: bool | None = None
    module_float16: bool = False  # the module indexes FLOAT16 vectors (RediSearch >= 2.10)
    index_ready: bool = False
    # The index is still scanning the records it was created over (a namespace moved to
    # another shard, migrated, or indexed after its records): searches use the exact
    # path until it is done.
    index_building: bool = False
    # {ns}:meta's idxgen when this store last checked the index (FT.INFO): a store that
    # creates the index increments it first, so a search that reads another value
    # searched an index made since (after a shard move), which may still be scanning
    index_gen: bytes | None = None
    # list_records reads pages with SORT_RO ... GET until the server refuses it
    # (an ACL user without access to every key, a server before SORT_RO).
    sort_page: bool = True


class ServerPlans:
    """Plans on the server's facts (module, dimension, vector type, index, model).

    Attributes (set by :class:`~memworker.store.ValkeyStore`):
        settings: The resolved settings.
        keys: The namespace's key names.
        batch_size: Records per atomic write.
    """

    settings: Settings
    keys: Keys
    batch_size: int
    _expected_dim: int | None
    _hnsw: tuple[int, int, int]
    _state: StoreState
    _vectors: VectorCache

    def _p_probe(self) -> Plan[bool]:
        """Learn once whether a search module answers FT commands."""
        if self._state.module is not None:
            return self._state.module
        mode = self.settings.search_mode
        found = False
        if mode != "exact":
            try:
                modules = yield Call(["MODULE", "LIST"])
                names = {_module_name(m): _module_version(m) for m in modules or []}
                found = bool(set(names) & {"search", "ft", "valkey-search"})
                # RediSearch ("search", version 21000 = 2.10.0) indexes FLOAT16 from 2.10;
                # valkey-search (version 1.x) only FLOAT32.
                self._state.module_float16 = names.get("search", 0) >= 21000
            except Exception:  # noqa: BLE001 - MODULE LIST may be denied (managed services)
                try:
                    yield Call(["FT._LIST"])
                    found = True
                except Exception:  # noqa: BLE001
                    found = False
            if mode == "module" and not found:
                raise ConfigError(
                    "search mode 'module' needs a search module (valkey-search or RediSearch) "
                    f"on {self.settings.redacted_url()}, and none answered"
                )
        self._state.module = found
        return found

    def _p_stored_dim(self, *, refresh: bool = False) -> Plan[int | None]:
        if self._state.dim is None or refresh:
            raw, vtype = yield Call(["HMGET", self.keys.meta, "dim", "vtype"])
            self._state.dim = int(raw) if raw is not None else None
            self._state.vtype = (
                (as_text(vtype) if vtype is not None else "float32") if raw is not None else None
            )
        if self._state.dim is None and self._expected_dim is not None:
            return None
        if (
            self._expected_dim is not None
            and self._state.dim is not None
            and self._state.dim != self._expected_dim
        ):
            raise dimension_mismatch(self._state.dim, self._expected_dim)
        return self._state.dim

    def _p_check_dim(self, dim: int) -> Plan[None]:
        """Raise the dimension error when ``dim`` is not the stored dimension."""
        stored = yield from self._p_stored_dim()
        if stored is not None and stored != dim:
            stored = yield from self._p_stored_dim(refresh=True)  # a reset may have cleared it
        if stored is not None and stored != dim:
            raise dimension_mismatch(stored, dim)
        if stored is None and self._expected_dim is not None and self._expected_dim != dim:
            raise dimension_mismatch(self._expected_dim, dim)

    def _p_ensure_index(self, dim: int) -> Plan[None]:
        """Create the vector index once (idempotent across processes)."""
        module = yield from self._p_probe()
        if not module or self._state.index_ready:
            return
        k = self.keys
        schema = record_index(k, dim, self._state.vtype or "float32", *self._hnsw)
        if not (yield from self._p_index_exists()):
            # first the generation, then the index: a store that reads the new
            # generation re-checks FT.INFO before it trusts FT.SEARCH (search.py)
            yield Call(["HINCRBY", k.meta, "idxgen", "1"])
            try:
                yield Call(schema.create_command())
            except Exception as exc:  # noqa: BLE001
                if "exists" not in error_text(exc).lower():
                    raise
        self._state.index_gen = yield Call(["HGET", k.meta, "idxgen"])
        self._state.index_building = not (yield from self._p_index_done())
        self._state.index_ready = True

    def _p_index_exists(self) -> Plan[bool]:
        """Whether the namespace's index is on the server (FT._LIST: asking first
        keeps a refused FT.INFO or FT.DROPINDEX out of glide's log)."""
        listed = yield Call(["FT._LIST"])
        names = {e if isinstance(e, bytes) else str(e).encode() for e in listed or []}
        return self.keys.index.encode() in names

    def _p_index_done(self) -> Plan[bool]:
        """Whether the module indexed every record its index covers (FT.INFO:
        RediSearch's ``indexing``, valkey-search's ``backfill_in_progress``; a module
        that says neither counts as done)."""
        try:
            info = yield Call(["FT.INFO", self.keys.index])
        except Exception as exc:  # noqa: BLE001
            text = error_text(exc).lower()
            if "unknown" in text or "no such index" in text or "not found" in text:
                self._state.index_ready = False  # gone meanwhile (a reset, a shard move)
                return False
            raise
        items = list(info.items()) if isinstance(info, Mapping) else list(zip(info[::2], info[1::2]))
        fields = {as_text(k): v for k, v in items}
        busy = fields.get("indexing", fields.get("backfill_in_progress", 0))
        return as_text(busy) in ("0", "0.0")

    def _p_index_built(self) -> Plan[bool | None]:
        """Create the namespace's index if a module answers and the namespace has a
        dimension; ``True`` once the module indexed every record it holds (FT.INFO
        ``indexing`` 0), ``False`` while it still scans, ``None``: no index to build."""
        module = yield from self._p_probe()
        dim = yield from self._p_stored_dim(refresh=True)
        if not module or dim is None:
            return None
        yield from self._p_ensure_index(dim)
        done = yield from self._p_index_done()
        self._state.index_building = not done
        return done

    def _p_vector_type(self) -> Plan[str]:
        """How this namespace stores vectors: its stored type, or for a new namespace
        the ``vector_type`` setting (``auto``: float16 when the module indexes it)."""
        yield from self._p_stored_dim()
        if self._state.vtype is not None:
            return self._state.vtype
        setting = self.settings.vector_type
        if setting == "auto":
            module = yield from self._p_probe()
            setting = "float16" if module and self._state.module_float16 else "float32"
        self._state.vtype = setting
        return setting

    def _p_ensure_model(self, model_id: str) -> Plan[str]:
        if not isinstance(model_id, str) or not model_id:
            raise ConfigError(f"model_id must be a non-empty string, got {model_id!r}")
        # Read first: a read-only user (the README's reader) may compare, not record.
        found = yield Call(["HGET", self.keys.meta, "model"])
        if found is None:
            try:
                yield Call(["HSETNX", self.keys.meta, "model", model_id])
            except Exception as exc:
                if isinstance(exc, MemworkerError) or not is_permanent(exc):
                    raise
                return model_id  # nothing recorded to compare with; a writer records it
            found = yield Call(["HGET", self.keys.meta, "model"])
        stored = as_text(found or model_id)
        if stored != model_id:
            raise ConfigError(
                f"embedding model mismatch in namespace {self.keys.namespace!r}: the store was "
                f"written with {stored!r}, this process embeds with {model_id!r}; queries and "
                "stored vectors must come from the same model (set MEMWORKER_MODEL or the "
                "embedder to the store's model, or use another namespace)"
            )
        return stored


def _module_version(entry: Any) -> int:
    """The version in one MODULE LIST entry (0 when absent)."""
    if isinstance(entry, Mapping):
        raw = entry.get(b"ver", entry.get("ver", 0))
    else:
        items = list(entry)
        raw = next(
            (items[i + 1] for i in range(0, len(items) - 1, 2) if as_text(items[i]) == "ver"), 0
        )
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _module_name(entry: Any) -> str:
    """The name in one MODULE LIST entry (a flat RESP2 list or a map)."""
    if isinstance(entry, Mapping):
        return as_text(entry.get(b"name", entry.get("name", ""))).lower()
    items = list(entry)
    for i in range(0, len(items) - 1, 2):
        if as_text(items[i]) == "name":
            return as_text(items[i + 1]).lower()
    return ""
