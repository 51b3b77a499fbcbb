"""Private-record isolation (12) on the plain and module servers: no search with
include_private=False, viewer=X returns another source's private record, and X's own
visible records are not crowded out by others' private ones (filtering is in the query);
and worker-side consolidation (CrewAI's EncodingFlow in a `memworker worker` process)
never shows, changes or deletes another source's private record."""

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


# ----------------------------------------------------------------------------- consolidation
WRITERS = ("src0", "src1", "src2", None)


def _unit(v):
    return (v / np.linalg.norm(v)).tolist()


def test_private_records_through_consolidation(server, store, namespace, workdir):
    """A real ``memworker worker`` process runs CrewAI's EncodingFlow with a scripted
    LLM that updates (or, for texts with DELETE, deletes) the FIRST candidate it is
    shown. Every write has other sources' private records right on its vector (the
    first candidates of an unfiltered search), one shared record a bit further, and
    its writer's own private record. No consolidation may show, change or delete
    another source's private record, nor change a record's source or privacy."""
    import json

    from harness import Workers

    from memworker.crewai.config import MEMORY_FACTORY_ENV
    from memworker.queue.producer import MemoryQueue

    flow = {"infer": [], "consolidation_threshold": 0.5, "consolidation_limit": 5,
            "batch_dedup_threshold": 0.98, "default_importance": 0.5}  # fmt: skip
    seeds, items, writer_of = [], [], {}
    for n, (writer, private, mode) in enumerate(
        (w, p, m) for w in WRITERS for p in (False, True) for m in ("UPDATE", "DELETE")
    ):
        scope, text = f"/c/{n}", f"{mode} attack {n} by {writer}"
        on_it = vector(text)
        for other in WRITERS:
            if other != writer:  # others' private records, on the write's own vector
                seeds.append({"id": f"priv-{n}-{other}", "content": f"secret of {other} #{n}",
                              "scope": scope, "source": other, "private": True,
                              "embedding": _unit(on_it)})  # fmt: skip
        if writer is not None:
            seeds.append({"id": f"own-{n}", "content": f"own secret #{n}", "scope": scope,
                          "source": writer, "private": True,
                          "embedding": _unit(on_it + vector(f"own{n}") * 0.3)})  # fmt: skip
        seeds.append({"id": f"pub-{n}", "content": f"shared note #{n}", "scope": scope,
                      "source": "owner", "private": False,
                      "embedding": _unit(on_it + vector(f"pub{n}") * 0.5)})  # fmt: skip
        items.append({"text": text, "scope": scope, "categories": ["c"], "importance": 0.5,
                      "source": writer, "private": private,
                      "flow": {**flow, "scope": scope}})  # fmt: skip
        writer_of[text] = (writer, private)
    store.save(seeds)
    before = {s["id"]: s for s in seeds}

    shown_log = workdir / "shown.jsonl"
    workers = Workers(server.url, namespace, workdir, **{
        MEMORY_FACTORY_ENV: "memworker.crewai.testing:scripted_memory_config",
        "MEMWORKER_SCRIPTED_PLAN": "auto", "MEMWORKER_SCRIPTED_LOG": str(shown_log),
    })  # fmt: skip
    queue = MemoryQueue(server.url, namespace=namespace)
    try:
        workers.start(threads=2)
        # Jobs mixing writers, as group commit makes them.
        job_ids = [queue.enqueue_encode_job(items[i : i + 4])[0] for i in range(0, len(items), 4)]
        report = queue.drain(timeout=180, job_ids=job_ids)
    finally:
        workers.close()
        queue.close()
    assert not report.failed, (report.failed, workers.logs())

    shown = [json.loads(line) for line in shown_log.read_text().splitlines()]
    leaks = modified = 0
    for call in shown:
        writer, _ = writer_of[call["new"]]
        for rid in call["ids"]:
            seed = before.get(rid)
            if seed is not None and seed["private"] and seed["source"] != writer:
                leaks += 1  # shown to someone else's consolidation
    for rid, seed in before.items():
        got = store.get_record(rid)
        # A writer's own private record and a shared one may be merged into or deleted.
        theirs = seed["private"] and not rid.startswith("own-")
        if got is None:
            modified += theirs  # another source's private record deleted
        elif (got.source, got.private) != (seed["source"], seed["private"]):
            modified += 1  # an update changed the owner or the privacy
        elif theirs and got.content != seed["content"]:
            modified += 1  # another source's private record rewritten
    for text, (writer, _) in writer_of.items():
        hits = store.search(vector(text).tolist(), limit=50, include_private=False, viewer=writer)
        leaks += sum(1 for r, _ in hits if r.private and r.source != writer)
    record("Private records through consolidation", injections=len(items), leaks=leaks,
           modified=modified, consolidations=len(shown),
           kind="module" if store.search_module else "plain")  # fmt: skip
    assert shown, "no consolidation ran: the test proves nothing"
    assert leaks == 0 and modified == 0
