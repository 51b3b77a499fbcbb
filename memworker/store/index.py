"""The vector index's schema, declared as data: :func:`record_index` says which hash
fields the index covers and how, and :meth:`IndexSchema.create_command` builds the
``FT.CREATE`` arguments from it (the form valkey-search and RediSearch both accept).
No I/O.

The index covers the record hashes (prefix ``{ns}:rec:``, :class:`memworker.keys.Keys`):
the embedding as an HNSW vector with cosine distance, and the filter-token fields
(:mod:`memworker.store.tokens`) as comma-separated tags. It has no NUMERIC fields: no
query filters on them (dates and importance are read back from the hash), and each
costs index memory per record.
"""

from __future__ import annotations

from dataclasses import dataclass

from memworker.keys import Keys
from memworker.store.query import TOKEN_FIELDS

__all__ = ["IndexSchema", "TagField", "VectorField", "record_index"]


@dataclass(frozen=True)
class VectorField:
    """An HNSW vector field.

    Attributes:
        name: Hash field holding the vector bytes.
        dim: Vector dimension.
        vtype: ``"float32"`` or ``"float16"``.
        m: HNSW ``M``.
        ef_construction: HNSW ``EF_CONSTRUCTION``.
        ef_runtime: HNSW ``EF_RUNTIME``.
        metric: Distance metric.
    """

    name: str
    dim: int
    vtype: str = "float32"
    m: int = 16
    ef_construction: int = 128
    ef_runtime: int = 64
    metric: str = "COSINE"

    def args(self) -> list[str]:
        """The field's ``SCHEMA`` arguments."""
        attributes = [
            "TYPE", self.vtype.upper(), "DIM", str(self.dim), "DISTANCE_METRIC", self.metric,
            "M", str(self.m), "EF_CONSTRUCTION", str(self.ef_construction),
            "EF_RUNTIME", str(self.ef_runtime),
        ]  # fmt: skip
        return [self.name, "VECTOR", "HNSW", str(len(attributes)), *attributes]


@dataclass(frozen=True)
class TagField:
    """A TAG field of separated tokens.

    Attributes:
        name: Hash field holding the tags.
        separator: Tag separator.
    """

    name: str
    separator: str = ","

    def args(self) -> list[str]:
        """The field's ``SCHEMA`` arguments."""
        return [self.name, "TAG", "SEPARATOR", self.separator]


@dataclass(frozen=True)
class IndexSchema:
    """An index over hashes: its name, key prefix and fields.

    Attributes:
        name: Index name.
        prefix: Key prefix of the hashes it covers.
        fields: The fields, in ``SCHEMA`` order.
    """

    name: str
    prefix: str
    fields: tuple[VectorField | TagField, ...]

    def create_command(self) -> list[str]:
        """The ``FT.CREATE`` command creating this index."""
        command = ["FT.CREATE", self.name, "ON", "HASH", "PREFIX", "1", self.prefix, "SCHEMA"]
        for f in self.fields:
            command += f.args()
        return command


def record_index(
    keys: Keys,
    dim: int,
    vtype: str,
    m: int,
    ef_construction: int,
    ef_runtime: int,
) -> IndexSchema:
    """The schema of a namespace's vector index.

    Args:
        keys: The namespace's keys (index name and record prefix).
        dim: Vector dimension.
        vtype: How the namespace stores vectors (``"float32"`` or ``"float16"``).
        m: HNSW ``M``.
        ef_construction: HNSW ``EF_CONSTRUCTION``.
        ef_runtime: HNSW ``EF_RUNTIME``.
    """
    vector = VectorField("embedding", dim, vtype, m, ef_construction, ef_runtime)
    tags = tuple(TagField(name) for name in TOKEN_FIELDS)
    return IndexSchema(keys.index, keys.rec_prefix, (vector, *tags))
