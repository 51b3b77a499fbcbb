"""CrewAI integration: :func:`install` (``valkey://`` storage specs) and
:class:`QueuedMemory` (CrewAI ``Memory`` with writes taken off the agent's path).

The public names below import crewai on first use (module ``__getattr__``); importing
this package alone does not. The worker-side modules :mod:`memworker.crewai.config`
(the worker's LLM and embedder), :mod:`memworker.crewai.locks` (consolidation locks)
and :mod:`memworker.crewai.flow` (CrewAI's EncodingFlow in the worker) import crewai
only when a flow runs, so a worker imports them without crewai installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memworker._lazy import lazy_names

__all__ = [
    # setup
    "install",
    "uninstall",
    "is_valkey_spec",
    # memory
    "QueuedMemory",
    "JobFailedError",
    # embedding
    "LocalEmbedder",
    "model_id_of",
    # migration
    "import_lancedb",
]

_LAZY = {
    "install": "memworker.crewai._install",
    "uninstall": "memworker.crewai._install",
    "is_valkey_spec": "memworker.crewai._install",
    "QueuedMemory": "memworker.crewai._memory",
    "JobFailedError": "memworker.crewai._memory",
    "LocalEmbedder": "memworker.crewai._embedder",
    "model_id_of": "memworker.crewai._embedder",
}

if TYPE_CHECKING:
    from memworker.crewai._embedder import LocalEmbedder, model_id_of
    from memworker.crewai._install import install, is_valkey_spec, uninstall
    from memworker.crewai._memory import JobFailedError, QueuedMemory


__getattr__, __dir__ = lazy_names(globals(), _LAZY)


def import_lancedb(*args: Any, **kwargs: Any) -> Any:
    """See :func:`memworker.crewai.lancedb.import_lancedb`."""
    from memworker.crewai.lancedb import import_lancedb as run

    return run(*args, **kwargs)
