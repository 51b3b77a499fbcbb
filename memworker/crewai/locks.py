"""Consolidation locks: hierarchical lease locks on scopes, across workers.

Consolidation is serialized across workers by these locks (:func:`scope_locks`). A
job locks the flow's search boundary (``root_scope`` joined with the explicit scope,
else ``root_scope``, else ``/``): consolidation in ``/a`` searches, updates and deletes
records under ``/a/b`` too, so a lock on a scope excludes locks on its ancestors and
descendants (``/a`` vs ``/a/b``), and not on siblings or on names that only share a
string prefix (``/a/b`` vs ``/a/c``, ``/a`` vs ``/ab``). One Lua script
(``memworker/lua/lock.lua``) checks and takes a lock atomically; see its header for
the keys. Importing this module does not import crewai.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from memworker.errors import ScopeBusyError, ValidationError  # ScopeBusyError re-exported
from memworker.io.scripts import script_source
from memworker.keys import lock_key, lock_under_key, tag  # lock_key, lock_under_key: re-exported

__all__ = [
    "LOCK_LEASE_MS",
    "LOCK_WAIT_MS",
    "ScopeBusyError",
    "lock_key",
    "lock_order",
    "lock_under_key",
    "scope_lock",
    "scope_locks",
]

log = logging.getLogger("memworker.encoding")

#: Lease of a consolidation lock (ms); renewed every third of it while held.
LOCK_LEASE_MS = 30_000
#: Longest wait for a consolidation lock before the job is retried (ms).
LOCK_WAIT_MS = 60_000



def _parts(scope: str | None) -> tuple[str, ...]:
    return tuple(p for p in (scope or "/").split("/") if p)


def _path(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def lock_order(scopes: Iterable[str | None]) -> list[str]:
    """The scopes a job locks, in the order it takes them.

    Each scope is made canonical (``a/b/`` -> ``/a/b``, ``None`` -> ``/``); a scope with
    an ancestor in the set is dropped (the ancestor's lock covers it, and a job must
    not wait for itself); the rest are sorted in tree pre-order, i.e. by path
    components (``/a``, ``/a/b``, ``/a-x``), not as plain strings (``/a``, ``/a-x``,
    ``/a/b``). Pre-order makes the per-job order deadlock-free even though a lock
    conflicts with its ancestors and descendants: with plain string order, a job
    holding ``/a-x`` and waiting for ``/a/b`` and a job holding ``/a`` and waiting
    for ``/a-x`` would wait for each other.
    """
    kept: list[tuple[str, ...]] = []
    for parts in sorted({_parts(s) for s in scopes}):
        if not any(parts[: len(k)] == k for k in kept):
            kept.append(parts)
    return [_path(p) for p in kept]


class _Lock:
    """The keys and token of one lock on one canonical scope."""

    __slots__ = ("keys", "scope", "token")

    def __init__(self, namespace: str, scope: str) -> None:
        parts = _parts(scope)
        chain = [_path(parts[:i]) for i in range(len(parts) + 1)]  # "/", ..., scope
        self.scope = chain[-1]
        self.keys = [lock_key(namespace, a) for a in chain] + [
            lock_under_key(namespace, a) for a in chain
        ]
        self.token = uuid.uuid4().hex

    def call(self, client: Any, op: str, lease_ms: int) -> Any:
        import redis

        # memworker/lua/lock.lua: one atomic step per acquire, renew or release; scopes
        # reach it only as key names and member strings. EVALSHA, EVAL after NOSCRIPT.
        body, sha = script_source("lock")
        args = [*self.keys, op, self.token, str(int(lease_ms)), self.scope]
        try:
            return client.evalsha(sha, len(self.keys), *args)
        except redis.exceptions.NoScriptError:
            return client.eval(body, len(self.keys), *args)


def _acquire(client: Any, lock: _Lock, lease_ms: int, wait_ms: int) -> None:
    deadline = time.monotonic() + wait_ms / 1000
    pause = 0.005
    while True:
        reply = lock.call(client, "acquire", lease_ms)
        if reply == 1:
            return
        if time.monotonic() >= deadline:
            blocker = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
            raise ScopeBusyError(
                f"consolidation lock on scope {lock.scope!r} still blocked by the lock on "
                f"{blocker!r} after {wait_ms} ms"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _renew(client: Any, held: list[_Lock], lease_ms: int, stop: threading.Event) -> None:
    """Extend every held lock's lease (and its entries' scores) every third of it."""
    lost: set[str] = set()
    while not stop.wait(lease_ms / 3000):
        for lock in list(held):
            if lock.token in lost:
                continue
            try:
                if lock.call(client, "renew", lease_ms) != 1:
                    lost.add(lock.token)
                    log.warning(
                        "consolidation lock on scope %r was lost (lease expired)", lock.scope
                    )
            except Exception:  # next attempt, or the lease runs out
                log.warning(
                    "could not renew the consolidation lock on %r", lock.scope, exc_info=True
                )


@contextmanager
def scope_locks(
    client: Any,
    namespace: str,
    scopes: Iterable[str | None],
    *,
    lease_ms: int = LOCK_LEASE_MS,
    wait_ms: int = LOCK_WAIT_MS,
) -> Iterator[list[str]]:
    """Hold the consolidation locks of ``scopes`` for the ``with`` block.

    A lock on a scope excludes locks on the same scope, its ancestors (``/``
    included) and its descendants, in any worker; siblings (``/a/b``, ``/a/c``) and
    scopes that only share a string prefix (``/a``, ``/ab``) do not exclude each
    other. The scopes are taken one at a time in :func:`lock_order` (covered scopes
    dropped, tree pre-order), each waiting up to ``wait_ms``; each lock is a lease of
    ``lease_ms`` renewed every third of it by one thread while held, and released
    (only if still this holder's) on exit.

    Args:
        client: A redis-py client (``EVALSHA``/``EVAL``).
        namespace: The store's namespace.
        scopes: Scopes to lock (``None`` is the root).
        lease_ms: Lease of each lock; a crashed holder's locks end with it.
        wait_ms: Longest wait for each lock.

    Yields:
        The scopes actually locked, in order.

    Raises:
        ScopeBusyError: A lock stayed blocked for ``wait_ms`` (those already taken
            are released).
    """
    held: list[_Lock] = []
    stop = threading.Event()
    renewer: threading.Thread | None = None
    try:
        for scope in lock_order(scopes):
            lock = _Lock(namespace, scope)
            _acquire(client, lock, lease_ms, wait_ms)
            held.append(lock)
            if renewer is None:
                renewer = threading.Thread(
                    target=_renew,
                    args=(client, held, lease_ms, stop),
                    name="memworker-lock-renew",
                    daemon=True,
                )
                renewer.start()
        yield [lock.scope for lock in held]
    finally:
        stop.set()
        if renewer is not None:
            renewer.join(1)
        for lock in reversed(held):
            try:
                lock.call(client, "release", lease_ms)
            except Exception:  # the lease expires on its own
                log.warning(
                    "could not release the consolidation lock on %r", lock.scope, exc_info=True
                )


@contextmanager
def scope_lock(
    client: Any,
    key: str,
    *,
    lease_ms: int = LOCK_LEASE_MS,
    wait_ms: int = LOCK_WAIT_MS,
) -> Iterator[str]:
    """Hold the consolidation lock ``key`` (``lock_key(namespace, scope)``) for the
    ``with`` block: :func:`scope_locks` of that one scope.

    Raises:
        ScopeBusyError: Not acquired within ``wait_ms``.
        ValidationError: ``key`` is not a :func:`lock_key`.
    """
    tagged, infix, scope = key.partition(":lock:consolidate:")
    namespace = tagged[1:-1]
    if not infix or tagged != tag(namespace) or not namespace or ":" in namespace:
        raise ValidationError(f"not a consolidation lock key: {key!r}")
    with scope_locks(client, namespace, [scope], lease_ms=lease_ms, wait_ms=wait_ms) as scopes:
        yield scopes[0]

