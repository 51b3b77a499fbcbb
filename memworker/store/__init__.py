"""The indexed Valkey store: :class:`ValkeyStore` (records, side indexes, vector
search with pre-filters) and :class:`ValkeyCache` (JSON values with a TTL)."""

from memworker.store.cache import ValkeyCache
from memworker.store.store import DEFAULT_BATCH_SIZE, ValkeyStore

__all__ = ["DEFAULT_BATCH_SIZE", "ValkeyCache", "ValkeyStore"]
