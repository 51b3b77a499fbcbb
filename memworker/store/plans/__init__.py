"""The store's plans, by concern: each class is a mixin of
:class:`~memworker.store.ValkeyStore` holding the ``_p_*`` plans of one concern.

- :mod:`~memworker.store.plans.server`: the server's facts (module, dimension, vector
  type, model) and the vector index;
- :mod:`~memworker.store.plans.write`: save, update, touch (``lua/store.lua``);
- :mod:`~memworker.store.plans.read`: records by id, pages, counts, scopes, categories;
- :mod:`~memworker.store.plans.delete`: delete by criteria, reset;
- :mod:`~memworker.store.plans.search`: vector search (module or exact path).
"""
