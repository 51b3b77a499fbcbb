"""The store's plans, by concern: each class is a mixin of
:class:`~memworker.store.ValkeyStore` holding the ``_p_*`` plans of one concern.

- :mod:`~memworker.store.plans.server`: the server's facts (module, dimension, vector
  type, model) and the vector index;
- :mod:`~memworker.store.plans.write`: save, update, touch (``lua/store.lua``);
- :mod:`~memworker.store.plans.read`: records by id, pages, counts, scopes, categories;
- :mod:`~memworker.store.plans.delete`: delete by criteria, reset;
- :mod:`~memworker.store.plans.search`: vector search (module or exact path).
"""

from memworker.store.plans.delete import DELETE_CHUNK, DeletePlans
from memworker.store.plans.read import READ_CHUNK, ReadPlans
from memworker.store.plans.search import EXACT_CHUNK, SearchPlans
from memworker.store.plans.server import ServerPlans, StoreState
from memworker.store.plans.write import NotPending, WritePlans

__all__ = [
    # the mixins, by concern
    "DeletePlans",
    "ReadPlans",
    "SearchPlans",
    "ServerPlans",
    "WritePlans",
    # shared state and errors
    "NotPending",
    "StoreState",
    # chunk sizes
    "DELETE_CHUNK",
    "EXACT_CHUNK",
    "READ_CHUNK",
]
