"""CrewAI integration: :func:`install` (``valkey://`` storage specs) and
:class:`QueuedMemory` (CrewAI ``Memory`` with writes taken off the agent's path).

Importing this package imports crewai; nothing else in memworker imports it.
"""

from __future__ import annotations

from memworker.crewai._embedder import LocalEmbedder, model_id_of
from memworker.crewai._install import install, is_valkey_spec, uninstall
from memworker.crewai._memory import JobFailedError, QueuedMemory

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


def import_lancedb(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`memworker.crewai.lancedb.import_lancedb`."""
    from memworker.crewai.lancedb import import_lancedb as run

    return run(*args, **kwargs)
