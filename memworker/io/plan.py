"""IO-free step types and the retry policy every driver shares.

An operation is written once, as a *plan*: a generator that yields steps
(:class:`Call`, :class:`Pipeline`, :class:`Script`) and receives each step's
reply. It holds every decision and all parsing, and does no I/O. Drivers
(:mod:`memworker.io.glide`, :mod:`memworker.io.redispy`) run plans.

Retries: a step that fails with a connection or timeout error is sent again (a
fresh command each attempt) with exponential backoff, at most :data:`MAX_ATTEMPTS`
times, then surfaces as a :class:`~memworker.errors.ConnectionLostError`.
Authentication and permission refusals are never retried. Other errors are thrown
into the plan, which may handle them (e.g. ``NOSCRIPT``, an unknown index) or let
them surface, wrapped in the driver's server error class.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from memworker.errors import (
    ConnectionLostError,
    MemworkerError,
    QueueConnectionLostError,
    QueueError,
    StoreError,
    ValidationError,
)

__all__ = [
    "AsyncRunner",
    "SyncRunner",
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "MAX_ATTEMPTS",
    "Call",
    "ErrorClasses",
    "Pipeline",
    "Plan",
    "Replicated",
    "Script",
    "Step",
    "QUEUE_ERRORS",
    "STORE_ERRORS",
    "backoff",
    "error_text",
    "is_noscript",
    "is_permanent",
    "one",
    "throw",
]

T = TypeVar("T")

#: Attempts per step before a transient error surfaces as ConnectionLostError.
MAX_ATTEMPTS = 6
#: First backoff delay, in seconds; doubles per attempt (with jitter).
BACKOFF_BASE_S = 0.05
#: Longest backoff delay, in seconds.
BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class Call:
    """One command."""

    args: list[Any]


@dataclass(frozen=True)
class Pipeline:
    """Several commands in one round trip; ``atomic`` makes it MULTI/EXEC."""

    commands: list[list[Any]]
    atomic: bool = False


@dataclass(frozen=True)
class Script:
    """A Lua script from ``memworker/lua`` run with EVALSHA (EVAL on NOSCRIPT)."""

    name: str
    args: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Replicated:
    """Wait until ``replicas`` replicas have every write made before this step: a
    ``SET key`` and ``WAIT replicas timeout_ms`` on one connection to the primary of
    ``key``'s slot (``WAIT`` counts a connection's own writes, and the replication
    stream is ordered, so it covers every earlier write of any client). The reply is
    the number of replicas that confirmed."""

    key: str
    replicas: int
    timeout_ms: int

    def commands(self) -> list[list[Any]]:
        """A write of :attr:`key` (the connection's own write to wait for), then WAIT."""
        return [
            ["SET", self.key, str(time.time_ns()), "PX", "60000"],
            ["WAIT", str(self.replicas), str(self.timeout_ms)],
        ]


Step = Call | Pipeline | Script | Replicated
Plan = Generator[Step, Any, T]


@dataclass(frozen=True)
class ErrorClasses:
    """What a driver raises: ``server`` for an error no plan handled, ``lost`` when
    the server did not answer after every retry (a subclass of
    :class:`~memworker.errors.ConnectionLostError`)."""

    server: type[MemworkerError]
    lost: type[ConnectionLostError]


#: The store's error classes (the glide faces' default).
STORE_ERRORS = ErrorClasses(server=StoreError, lost=ConnectionLostError)

#: The queue's error classes (its redis-py drivers).
QUEUE_ERRORS = ErrorClasses(server=QueueError, lost=QueueConnectionLostError)

#: Error texts that no retry can fix (authentication and ACL refusals).
_PERMANENT = (
    "permission",
    "noperm",
    "wrongpass",
    "noauth",
    "invalid username-password",
    "authentication failed",
)


def error_text(exc: BaseException) -> str:
    """The message of a server error, without the client's decoration."""
    return str(exc.args[0]) if exc.args else str(exc)


def server_error(errors: ErrorClasses, exc: BaseException) -> Exception:
    """The error a driver raises for ``exc``, a step's error that is not transient:
    ``errors.server``, or a ``ValidationError`` for an argument the client could not
    encode (a string with a lone surrogate that no check caught before)."""
    if isinstance(exc, UnicodeEncodeError):
        return ValidationError("an argument is not valid unicode text (a lone surrogate)")
    text = error_text(exc)
    if "cluster mode is not enabled" in text.lower():
        # redis-py's words for any error of CLUSTER SLOTS, an ACL refusal included
        text += " (or the user may not run CLUSTER SLOTS: grant it +cluster|slots)"
    return errors.server(f"Valkey error: {text}")


def is_permanent(exc: BaseException) -> bool:
    """True for an authentication or permission refusal: retrying cannot help."""
    text = error_text(exc).lower()
    return any(word in text for word in _PERMANENT)


def is_noscript(exc: BaseException) -> bool:
    """True when the server does not know a script's SHA (send it with EVAL)."""
    text = error_text(exc).lower()
    return "noscript" in text or "no matching script" in text


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential, jittered."""
    delay: float = min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2**attempt))  # int ** int is Any
    return delay * (0.5 + random.random() / 2)


def one(step: Step) -> Plan[Any]:
    """The plan of a single step: its reply is the result."""
    reply = yield step
    return reply


class _Runner:
    """What every driver shares around its ``execute``: the layout check of its
    namespace (:mod:`memworker.layout`), once per driver, before its first plan."""

    settings: Any  # memworker.settings.Settings (its namespace)
    errors: ErrorClasses = STORE_ERRORS
    _layout_ok: bool = False

    def _layout_plan(self) -> Plan[None] | None:
        """The check that the namespace holds no data of an older key layout,
        until it passed once."""
        if self._layout_ok:
            return None
        from memworker.layout import p_refuse_legacy  # memworker.layout imports memworker.io

        return p_refuse_legacy(self.settings.namespace)


class SyncRunner(_Runner):
    """Drives plans over a sync ``execute`` (the glide sync face, the redis-py driver)."""

    def execute(self, step: Step) -> Any:  # pragma: no cover - every driver has its own
        raise NotImplementedError

    def run(self, plan: Plan[T]) -> T:
        """Drive a plan to its result (after the layout check, once per driver)."""
        check = self._layout_plan()
        if check is not None:
            self._drive(check)
            self._layout_ok = True
        return self._drive(plan)

    def _drive(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                try:
                    reply = self.execute(step)
                except Exception as exc:  # the plan decides
                    step = throw(plan, exc, self.errors)
                else:
                    step = plan.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)


class AsyncRunner(_Runner):
    """:class:`SyncRunner` over an async ``execute``."""

    async def execute(self, step: Step) -> Any:  # pragma: no cover - every driver has its own
        raise NotImplementedError

    async def run(self, plan: Plan[T]) -> T:
        """Drive a plan to its result (after the layout check, once per driver)."""
        held = self.hold()
        try:
            check = self._layout_plan()
            if check is not None:
                await self._drive(check)
                self._layout_ok = True
            return await self._drive(plan)
        finally:
            await self.release(held)

    def hold(self) -> Any:
        """Mark the running loop's client in use until :meth:`release` (a driver
        closes a client made while its loop ends once nothing uses it any more)."""
        return None

    async def release(self, held: Any) -> None:
        """End a :meth:`hold`."""

    async def _drive(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                try:
                    reply = await self.execute(step)
                except Exception as exc:  # the plan decides
                    step = throw(plan, exc, self.errors)
                else:
                    step = plan.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)


def throw(plan: Plan[Any], exc: BaseException, errors: ErrorClasses = STORE_ERRORS) -> Step:
    """Throw a step's error into its plan; a server error it does not handle
    surfaces as ``errors.server`` (memworker's own errors pass unchanged).

    Args:
        plan: The plan whose step failed.
        exc: The step's error.
        errors: The driver's error classes.

    Returns:
        The plan's next step, when it handled the error.
    """
    try:
        return plan.throw(exc)
    except MemworkerError:
        raise
    except Exception as err:
        if err is exc:
            raise server_error(errors, exc) from exc
        raise
