"""The key layout's version: data of layout 1 is refused, and moved by one command.

Layout 2 (:mod:`memworker.keys`) starts every key of a namespace with ``{ns}:``, the
namespace's hash tag, so a namespace is one slot of a Valkey Cluster. Layout 1 wrote
the same keys as ``ns:...``. A store, queue, drain or worker that finds layout-1 keys of
its namespace refuses to run (:class:`LayoutError`, naming ``memworker migrate``): it
would otherwise see an empty namespace and leave the old records and jobs behind.
:func:`migrate` renames every layout-1 key of a namespace to its layout-2 name (a
standalone server only: layout 1 never ran on a cluster).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from memworker.errors import ConfigError
from memworker.io.plan import QUEUE_ERRORS, Call, Pipeline, Plan, is_permanent, one
from memworker.keys import LAYOUT_VERSION, Keys, tag
from memworker.settings import Settings

__all__ = [
    "LayoutError",
    "MigrateReport",
    "legacy_keys",
    "migrate",
    "p_refuse_legacy",
    "refuse_legacy",
]

#: Layout-1 keys whose presence shows that a namespace holds layout-1 data: its meta
#: hash (any stored record), its root tree, its producers and dramatiq's messages.
_PROBES = ("meta", "tree:/", "producers", "dq:default.msgs", "dq:default")

#: Keys renamed per round trip by :func:`migrate`.
_RENAME_CHUNK = 500


class LayoutError(ConfigError):
    """The namespace holds data in an older key layout; ``memworker migrate`` moves it."""

    def __init__(self, namespace: str) -> None:
        super().__init__(
            f"namespace {namespace!r} holds data in memworker's key layout 1 (keys "
            f"'{namespace}:...'); this version reads layout {LAYOUT_VERSION} (keys "
            f"'{tag(namespace)}:...'). Stop the workers and run `memworker migrate "
            f"--namespace {namespace}` once to move it"
        )
        self.namespace = namespace


def legacy_keys(namespace: str) -> list[str]:
    """The layout-1 keys that :func:`p_refuse_legacy` looks for."""
    return [f"{namespace}:{suffix}" for suffix in _PROBES]


def p_refuse_legacy(namespace: str) -> Plan[None]:
    """Raise :class:`LayoutError` when the namespace has layout-1 keys (one
    non-atomic pipeline of ``EXISTS``; each key is its own slot on a cluster)."""
    try:
        found = yield Pipeline([["EXISTS", key] for key in legacy_keys(namespace)])
    except Exception as exc:
        if is_permanent(exc):
            return  # an ACL user who may not read the older names cannot have used them
        raise
    if any(int(n) for n in found):
        raise LayoutError(namespace)
    # A layout-1 meta hash already renamed says layout 1 until a migration's last step:
    # a migration stopped half-way (by an older version, which moved these probes
    # first) is refused too, never served with half its keys.
    try:
        layout = yield Call(["HGET", Keys(namespace).meta, "layout"])
    except Exception as exc:
        if is_permanent(exc):
            return
        raise
    if layout in (b"1", "1"):
        raise LayoutError(namespace)


def refuse_legacy(settings: Settings, client: Any = None) -> None:
    """:func:`p_refuse_legacy` for ``settings``' namespace, now (the worker runs it at
    start, so a worker never serves an unmigrated namespace)."""
    from memworker.io.redispy import RedisSyncDriver  # memworker.io imports this module lazily

    RedisSyncDriver(settings, QUEUE_ERRORS, client=client).run(one(Call(["PING"])))


@dataclass(frozen=True)
class MigrateReport:
    """What :func:`migrate` did (or, with ``dry_run``, would do)."""

    namespace: str
    #: Layout-1 keys renamed to their layout-2 names.
    renamed: int
    #: The layout-1 vector index was dropped (its records stay; the store creates the
    #: layout-2 index on its next write or search).
    index_dropped: bool
    dry_run: bool


def migrate(client: Any, namespace: str, *, dry_run: bool = False, force: bool = False) -> MigrateReport:
    """Rename every layout-1 key of ``namespace`` (``ns:...``) to layout 2 (``{ns}:...``).

    Run it with the namespace's workers stopped: it refuses while a layout-1 worker
    sent a heartbeat in the last minute, unless ``force``. A key whose layout-2 name
    exists already is not overwritten: the migration stops there with an error (the
    namespace was written by both versions; move or delete one side by hand).

    Args:
        client: A ``redis.Redis`` on a standalone server.
        namespace: The namespace to move.
        dry_run: Count what would move, change nothing.
        force: Migrate even though layout-1 workers look alive.

    Raises:
        ConfigError: Live layout-1 workers, or a key in both layouts.
    """
    old = f"{namespace}:"
    new = tag(namespace) + ":"
    if not force:
        alive = client.zrangebyscore(old + "workers", int(time.time() * 1000) - 60_000, "+inf")
        if alive:
            raise ConfigError(
                f"{len(alive)} worker(s) of namespace {namespace!r} sent a heartbeat in the "
                "last minute: stop them before `memworker migrate` (or pass --force)"
            )
    index_dropped = False
    old_index = old + "idx"
    try:
        names = {n.decode() if isinstance(n, bytes) else str(n) for n in client.execute_command("FT._LIST")}
    except Exception:  # noqa: BLE001 - no search module: no index to drop
        names = set()
    if old_index in names:
        if not dry_run:
            client.execute_command("FT.DROPINDEX", old_index)  # the records stay
        index_dropped = True
    # The namespace has no glob characters (Settings allows letters, digits, _ - .).
    keys = [k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=old + "*", count=1000)]
    # The keys the layout check looks for go last: a migration stopped half-way (an
    # interrupt, a lost connection, a key in both layouts) still leaves the namespace
    # refused until a run completes, never served with half its keys.
    keys.sort(key=lambda k: k[len(old) :] in _PROBES)
    renamed = 0
    for start in range(0, len(keys), _RENAME_CHUNK):
        chunk = keys[start : start + _RENAME_CHUNK]
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                if dry_run:
                    pipe.exists(new + key[len(old) :])
                else:
                    pipe.renamenx(key, new + key[len(old) :])
            done = pipe.execute(raise_on_error=False)
        for key, ok in zip(chunk, done):
            if isinstance(ok, Exception) and "no such key" in str(ok).lower():
                continue  # moved meanwhile (another run), or gone: nothing to move
            if isinstance(ok, Exception):
                raise ConfigError(f"could not rename {key!r}: {ok}")
            if bool(ok) == dry_run:  # the layout-2 name exists (dry run) / was not free
                raise ConfigError(
                    f"{key!r} exists in both layouts ({new + key[len(old):]!r}): the "
                    "namespace was written by two memworker versions; move or delete "
                    "one of the two keys by hand, then run `memworker migrate` again"
                )
            renamed += 1
    if keys and not dry_run and client.exists(Keys(namespace).meta):
        client.hset(Keys(namespace).meta, "layout", LAYOUT_VERSION)
    return MigrateReport(namespace, renamed, index_dropped, dry_run)

