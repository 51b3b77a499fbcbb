"""The worker process's configuration for CrewAI's EncodingFlow: its LLM and embedder.

Built lazily, once per process, on the first flow job (or when the worker builds its
embedder): ``MEMWORKER_MEMORY_FACTORY=module:function`` returning a
:class:`WorkerMemoryConfig` or a mapping with ``llm`` and optional ``embedder``; else
``MEMWORKER_LLM`` (a model name for ``crewai.LLM``) and ``MEMWORKER_MODEL`` (the
embedding model). Importing this module does not import crewai (only building the
LLM does).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memworker.errors import ConfigError, WorkerLLMMissingError  # re-exported
from memworker.errors import shown
from memworker.worker_settings import LLM_ENV, MEMORY_FACTORY_ENV, read_llm, read_memory_factory

if TYPE_CHECKING:
    from memworker.embedding.protocols import TextEncoder

__all__ = [
    "LLM_ENV",
    "MEMORY_FACTORY_ENV",
    "WorkerLLMMissingError",
    "WorkerMemoryConfig",
    "factory_embedder",
    "load_memory_config",
    "reset_worker_memory_config",
    "worker_llm",
    "worker_memory_config",
]




@dataclass
class WorkerMemoryConfig:
    """What a worker process uses for CrewAI's EncodingFlow.

    Attributes:
        llm: A ``crewai.llms.base_llm.BaseLLM`` or a model name for ``crewai.LLM``.
        embedder: An embedding model with ``encode(texts)``, ``dimension`` and
            ``model_id`` (e.g. :class:`memworker.embedding.Embedder`); ``None`` keeps the
            process default (``MEMWORKER_EMBEDDER``, ``MEMWORKER_MODEL``, the bundled model).
    """

    llm: Any = None  # CrewAI's, foreign
    embedder: TextEncoder | None = None


_lock = threading.Lock()
_config: WorkerMemoryConfig | None = None
_llm: Any = None


def load_memory_config(env: Mapping[str, str] | None = None) -> WorkerMemoryConfig:
    """Build the configuration from ``MEMWORKER_MEMORY_FACTORY``, else ``MEMWORKER_LLM``.

    Raises:
        ConfigError: A bad factory path, or a factory returning something else than a
            :class:`WorkerMemoryConfig` or a mapping with ``llm``/``embedder``.
    """
    spec = read_memory_factory(env)  # ConfigError unless 'module:function'
    if spec:
        module, _, name = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{MEMORY_FACTORY_ENV}={shown(spec)} cannot be loaded: {shown(str(exc), 300)}") from None
        made = factory()
        if isinstance(made, WorkerMemoryConfig):
            return made
        if isinstance(made, Mapping) and set(made) <= {"llm", "embedder"}:
            return WorkerMemoryConfig(llm=made.get("llm"), embedder=made.get("embedder"))
        raise ConfigError(
            f"{MEMORY_FACTORY_ENV}={shown(spec)} returned {type(made).__name__}; expected a "
            "WorkerMemoryConfig or a mapping with 'llm' and optional 'embedder'"
        )
    return WorkerMemoryConfig(llm=read_llm(env))


def worker_memory_config() -> WorkerMemoryConfig:
    """This process's configuration, built once."""
    global _config
    if _config is None:
        with _lock:
            if _config is None:
                _config = load_memory_config()
    return _config


def reset_worker_memory_config() -> None:
    """Forget the cached configuration and LLM (tests; after changing the environment)."""
    global _config, _llm
    with _lock:
        _config, _llm = None, None


def factory_embedder() -> TextEncoder | None:
    """The embedder named by ``MEMWORKER_MEMORY_FACTORY``, or ``None`` (no factory, or
    a factory that leaves the embedder to the process default)."""
    if not read_memory_factory(check=False):
        return None
    return worker_memory_config().embedder


def worker_llm() -> Any:
    """This process's LLM for the flow (built once), wrapped as CrewAI's Memory wraps it.

    Raises:
        WorkerLLMMissingError: No LLM configured.
    """
    global _llm
    if _llm is None:
        configured = worker_memory_config().llm
        with _lock:
            if _llm is None:
                llm = configured
                if llm is None:
                    raise WorkerLLMMissingError(
                        "this job needs LLM inference (scope, categories or importance not "
                        f"given, or consolidation on) and the worker has no LLM: set {LLM_ENV} "
                        f"(e.g. 'gpt-4o-mini') or {MEMORY_FACTORY_ENV}=module:function"
                    )
                if isinstance(llm, str):
                    from crewai.llm import LLM

                    llm = LLM(model=llm)
                from crewai.memory.unified_memory import _non_streaming_analysis_llm

                _llm = _non_streaming_analysis_llm(llm)
    return _llm
