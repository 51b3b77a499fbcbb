"""The indexed Valkey store: :class:`ValkeyStore` (records, side indexes, vector
search with pre-filters) and :class:`ValkeyCache` (JSON values with a TTL).

Modules: ``store`` (the faces), ``plans`` (the operations, by concern), ``index``
(the vector index's schema), ``codec`` (records -> hash rows) and ``decode`` (rows ->
records), ``validate`` (input checks and limits), ``tokens`` (filter tokens),
``embeddings`` (vector bytes), ``times`` (timestamps), ``jsontext`` (the JSON
encoder), ``query`` (filters -> FT query), ``vectors`` (the exact path's cache),
``cache`` (:class:`ValkeyCache`). The key layout is :mod:`memworker.keys`.
"""

from memworker.store.cache import ValkeyCache
from memworker.store.codec import WRITE_FIELDS, Row, to_row, to_rows
from memworker.store.decode import RECORD_FIELDS, decode_record, decode_rows
from memworker.store.index import IndexSchema, TagField, VectorField, record_index
from memworker.store.query import MAX_LIMIT, TOKEN_FIELDS, SearchFilter
from memworker.store.store import DEFAULT_BATCH_SIZE, NotPending, ValkeyStore
from memworker.store.validate import (
    FLOW_FIELDS,
    MAX_CATEGORIES,
    MAX_CATEGORY_LENGTH,
    MAX_CONTENT_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_SCOPE_DEPTH,
    MAX_SCOPE_LENGTH,
    check_flow,
    check_metadata,
    normalize_scope,
    normalize_scope_prefix,
)

__all__ = [
    # the store and the cache
    "DEFAULT_BATCH_SIZE",
    "NotPending",
    "ValkeyCache",
    "ValkeyStore",
    # records <-> hash rows
    "RECORD_FIELDS",
    "WRITE_FIELDS",
    "Row",
    "decode_record",
    "decode_rows",
    "to_row",
    "to_rows",
    # validation and limits
    "FLOW_FIELDS",
    "MAX_CATEGORIES",
    "MAX_CATEGORY_LENGTH",
    "MAX_CONTENT_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_SCOPE_DEPTH",
    "MAX_SCOPE_LENGTH",
    "check_flow",
    "check_metadata",
    "normalize_scope",
    "normalize_scope_prefix",
    # search filters and the index schema
    "MAX_LIMIT",
    "TOKEN_FIELDS",
    "IndexSchema",
    "SearchFilter",
    "TagField",
    "VectorField",
    "record_index",
]
