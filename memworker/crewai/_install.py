"""``install()``: serve Valkey storage specs through CrewAI's storage factory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memworker.store.store import ValkeyStore

from memworker.store.store import ValkeyStore

__all__ = ["install", "uninstall", "is_valkey_spec", "store_for_spec"]

#: URL schemes served with a ValkeyStore.
SCHEMES = ("valkey://", "valkeys://", "redis://", "rediss://")
#: The bare spec meaning "the settings' server" (VALKEY_URL > REDIS_URL > embedded).
BARE_SPEC = "valkey"


def is_valkey_spec(spec: Any) -> bool:
    """Whether ``spec`` is a storage spec memworker serves."""
    return isinstance(spec, str) and (spec == BARE_SPEC or spec.lower().startswith(SCHEMES))


def store_for_spec(spec: str, *, url: str | None = None, **options: Any) -> ValkeyStore:
    """A :class:`~memworker.store.ValkeyStore` for a Valkey spec (``"valkey"`` -> ``url``,
    else the settings/embedded default)."""
    return ValkeyStore(url if spec == BARE_SPEC else spec, **options)


def install(url: str | None = None, **options: Any) -> None:
    """Register a CrewAI memory storage factory serving ``valkey://``, ``valkeys://``,
    ``redis://``, ``rediss://`` and ``"valkey"`` with a :class:`ValkeyStore`.

    Every other spec goes to the factory registered before (if any), else returns
    ``None``, so LanceDB and Qdrant keep working. Calling it again replaces memworker's
    factory (harmless); the earlier non-memworker factory stays chained.

    Args:
        url: Server for the bare spec ``"valkey"`` (default: ``VALKEY_URL`` >
            ``REDIS_URL`` > the embedded server).
        **options: :class:`ValkeyStore` options (``namespace``, ``search_mode``...).
    """
    from crewai.memory.storage import factory as crewai_factory

    # a foreign factory, or ours (a function carrying _memworker and _previous)
    previous: Any = crewai_factory._factory  # noqa: SLF001 - to chain a foreign factory
    while getattr(previous, "_memworker", False):
        previous = previous._previous

    def memworker_storage_factory(spec: str) -> Any:
        if is_valkey_spec(spec):
            return store_for_spec(spec, url=url, **options)
        return previous(spec) if previous is not None else None

    memworker_storage_factory._memworker = True  # type: ignore[attr-defined]
    memworker_storage_factory._previous = previous  # type: ignore[attr-defined]
    crewai_factory.set_memory_storage_factory(memworker_storage_factory)


def uninstall() -> None:
    """Restore the factory that was registered before :func:`install`."""
    from crewai.memory.storage import factory as crewai_factory

    current: Any = crewai_factory._factory  # noqa: SLF001
    if getattr(current, "_memworker", False):
        crewai_factory.set_memory_storage_factory(current._previous)
