"""Private-record isolation (12) on the plain and module servers: no search with
include_private=False, viewer=X returns another source's private record, and X's own
visible records are not crowded out by others' private ones (filtering is in the query)."""

from __future__ import annotations

import numpy as np
from chaos_embedder import vector
from harness import record

SOURCES = 12
PER_SOURCE_PRIVATE = 25


def test_private_records_only_for_their_source(store):
    query = vector("the shared secret")
    recs = []
    for s in range(SOURCES):
        for k in range(PER_SOURCE_PRIVATE):
            # Others' private records sit right on the query: the crowding attack.
            noise = vector(f"n{s}-{k}") * 0.05
            v = query + noise
            recs.append({"id": f"priv-{s}-{k}", "content": f"private {s} {k}", "scope": f"/team/{s % 3}",
                         "source": f"src{s}", "private": True, "embedding": (v / np.linalg.norm(v)).tolist()})
        for k in range(3):
            v = query + vector(f"pub{s}-{k}") * 0.6
            recs.append({"id": f"pub-{s}-{k}", "content": f"public {s} {k}", "scope": f"/team/{s % 3}",
                         "source": f"src{s}", "private": False, "embedding": (v / np.linalg.norm(v)).tolist()})
    store.save(recs)
    leaks = crowded = searches = 0
    for s in range(SOURCES):
        viewer = f"src{s}"
        own_visible = PER_SOURCE_PRIVATE + 3 * SOURCES
        for kwargs in ({}, {"scope_prefix": f"/team/{s % 3}"}, {"source": viewer}):
            hits = store.search(query.tolist(), limit=own_visible, include_private=False,
                                viewer=viewer, **kwargs)
            searches += 1
            leaks += sum(1 for r, _ in hits if r.private and r.source != viewer)
            if not kwargs:
                # Exactly the viewer's private records and every public record.
                crowded += own_visible - len(hits)
        hits = store.search(query.tolist(), limit=50, include_private=False)
        searches += 1
        leaks += sum(1 for r, _ in hits if r.private)
    record("Private-record isolation", injections=searches, leaks=leaks, crowded_out=crowded,
           kind="module" if store.search_module else "plain")
    assert leaks == 0 and crowded == 0
