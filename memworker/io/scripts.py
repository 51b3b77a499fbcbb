"""The one loader of memworker's Lua scripts (``memworker/lua/*.lua``).

Used by the glide faces (store and read scripts), the redis-py driver (the same, and
the producer's ``queue.lua``) and the consolidation locks (``lock.lua``): each gets a
script's body and SHA1 here, runs it with ``EVALSHA`` and falls back to ``EVAL`` on
``NOSCRIPT``.

The store, read and queue scripts take their namespace's key prefix (or its keys) as
arguments and declare one key, :func:`script_key` (the namespace's ``{ns}:meta``):
every key they touch shares its hash slot, so on a Valkey Cluster the call is routed to the shard
that owns the namespace and runs there atomically.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from memworker.keys import Keys
from memworker.settings import Settings

__all__ = ["SCRIPTS", "script_key", "script_source"]

#: Scripts loaded (``SCRIPT LOAD``) when a glide client is created.
SCRIPTS = ("store", "read")


@lru_cache(maxsize=None)
def script_source(name: str) -> tuple[str, str]:
    """The body and SHA1 of ``memworker/lua/<name>.lua``.

    Args:
        name: Script name without the ``.lua`` suffix (``store``, ``read``, ``lock``).

    Returns:
        ``(body, sha1 hex)``, read once per process.
    """
    body = resources.files("memworker").joinpath("lua").joinpath(f"{name}.lua").read_text("utf-8")
    return body, hashlib.sha1(body.encode()).hexdigest()


def script_key(settings: Settings) -> str:
    """The key a store or read script call declares: the namespace's meta hash."""
    return _meta_key(settings.namespace)


@lru_cache(maxsize=256)
def _meta_key(namespace: str) -> str:
    return Keys(namespace).meta
