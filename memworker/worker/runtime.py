"""The per-process worker state: the embedding model and its one batcher.

A leaf of the worker package (it imports no broker, actor or middleware module), so
the actors, the middleware and the CrewAI flow (:mod:`memworker.crewai.flow`) share the
process's :func:`get_batcher` without an import cycle. :mod:`memworker.worker.process`
sets the process options (:func:`configure_process`) before the first batch.
"""

from __future__ import annotations

import gc
import importlib
import threading
import time

from memworker.crewai.config import factory_embedder
from memworker.embedding import Embedder, EmbeddingBatcher, configure_threads
from memworker.embedding.protocols import Batcher, EmbedderFactory, TextEncoder
from memworker.worker.priority import Nice, lower_priority
from memworker.worker_settings import EMBEDDER_ENV, read_backend, read_embedder

__all__ = [
    "SearchableClock",
    "searchable",
    "EMBEDDER_ENV",
    "batcher_counts",
    "configure_process",
    "freeze_heap",
    "heap_counts",
    "get_batcher",
    "set_embedder_factory",
]

#: Environment variable naming an embedder factory, ``module:callable``.

_factory_lock = threading.Lock()
_embedder_factory: EmbedderFactory | None = None
_batcher: EmbeddingBatcher | None = None
_processes = 1
#: Objects frozen by :func:`freeze_heap` (0: it was not called).
_frozen = 0
#: CPU priority of the inference thread (run_worker's ``nice``), applied in that thread.
_nice: Nice = 0


def set_embedder_factory(factory: EmbedderFactory | None) -> None:
    """Use ``factory()`` (an object with ``encode(texts)`` and ``dimension``) as this
    process's embedding model; ``None`` restores the default (``MEMWORKER_EMBEDDER``
    or :class:`memworker.embedding.Embedder`). Resets the process's batcher."""
    global _embedder_factory, _batcher
    with _factory_lock:
        _embedder_factory = factory
        old, _batcher = _batcher, None
    if old is not None:
        old.close(timeout=5)


def _make_embedder(configure: bool = True) -> tuple[TextEncoder, int]:
    """The process's model and its inference threads: the bundled ``Embedder`` runs
    :func:`~memworker.embedding.configure_threads` batches side by side; an embedder
    from a factory runs one batch at a time (it may not be safe to share)."""
    if _embedder_factory is not None:
        return _embedder_factory(), 1
    spec = read_embedder()  # MEMWORKER_EMBEDDER, checked: ConfigError when malformed
    if spec:
        module, _, name = spec.partition(":")
        factory: EmbedderFactory = getattr(importlib.import_module(module), name)
        return factory(), 1
    configured = factory_embedder()  # MEMWORKER_MEMORY_FACTORY's embedder, if it names one
    if configured is not None:
        return configured, 1
    if not configure:  # an agent's query model: the process's thread settings stay
        return Embedder(backend=read_backend()), 1
    threads = configure_threads(_processes)
    # MEMWORKER_MODEL with MEMWORKER_BACKEND: single-threaded sessions side by side
    return Embedder(backend=read_backend()), threads


def make_embedder() -> TextEncoder:
    """A new instance of the model this process's workers embed with (the factory
    set with :func:`set_embedder_factory`, ``MEMWORKER_EMBEDDER``, the memory
    factory's embedder, or the bundled model): what an agent embeds queries with
    (memworker.langgraph)."""
    return _make_embedder(configure=False)[0]


def get_batcher() -> Batcher:
    """The process's one :class:`EmbeddingBatcher`, created on first use."""
    global _batcher
    batcher = _batcher
    if batcher is None:
        with _factory_lock:
            if _batcher is None:
                nice = _nice
                embedder, threads = _make_embedder()
                _batcher = EmbeddingBatcher(
                    embedder, threads=threads, on_start=lambda: lower_priority(nice)
                )
            batcher = _batcher
    return batcher


def batcher_counts() -> dict[str, int]:
    """The inference counters for the health record: ``embed_batches`` and
    ``embed_texts`` (their ratio is the mean batch), once the model has loaded."""
    batcher = _batcher
    if batcher is None:
        return {}
    stats = batcher.stats
    return {"embed_batches": stats.batches, "embed_texts": stats.texts}


def heap_counts() -> dict[str, int]:
    """The garbage collector's counters for the health record: ``gc_frozen``, the
    objects this process froze out of its sight (a ``memworker worker`` process
    freezes what it has loaded, :func:`freeze_heap`; an application's own process
    running :func:`~memworker.worker.process.running_worker` is left as it is), and
    ``gc_full``, the full collections so far."""
    return {"gc_frozen": _frozen, "gc_full": gc.get_stats()[2]["collections"]}


def freeze_heap() -> int:
    """Move every object this process has so far out of the garbage collector's sight
    (:func:`gc.freeze`, after a collection), and return how many are frozen.

    A worker process calls it once its model, broker and imports are loaded: objects
    that live as long as the process. Otherwise each full collection walks all of
    them while holding the GIL: ~470k objects and ~235 ms with the bundled model
    here, a stall of every thread of the worker, inference included (they need the
    GIL between batches). Frozen objects are still freed by reference counting; only
    a reference cycle among them would outlive its use. Not called in an
    application's own process (:func:`~memworker.worker.process.running_worker`): its
    heap is not ours. The count is taken here, once: :func:`gc.get_freeze_count`
    walks every frozen object (~37 ms here) with the GIL held.
    """
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = gc.get_freeze_count()
    return _frozen


class SearchableClock:
    """This process's running total of the time from each committed job's enqueue to
    its commit (the health record carries it; ``memworker status --watch`` shows the
    mean over each refresh)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total_ms = 0
        self.jobs = 0

    def add(self, enqueued_ms: float) -> None:
        if enqueued_ms <= 0:
            return
        waited = max(0, int(time.time() * 1000 - enqueued_ms))
        with self._lock:
            self.total_ms += waited
            self.jobs += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"searchable_ms_total": self.total_ms, "searchable_jobs": self.jobs}


#: The process's :class:`SearchableClock`.
searchable = SearchableClock()

def configure_process(processes: int, nice: Nice) -> None:
    """Set this worker process's options before its batcher is built: how many worker
    processes share the machine (the bundled model's inference threads) and the CPU
    priority of the inference thread (applied in that thread, see :func:`get_batcher`)."""
    global _processes, _nice
    _processes = processes
    _nice = nice
