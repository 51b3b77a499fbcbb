"""Connections and the plan driver shared by the sync and async faces.

An operation is written once, as a *plan*: a generator that yields steps
(:class:`Call`, :class:`Pipeline`, :class:`Script`) and receives each step's
reply. It holds every decision and all parsing, and does no I/O. Two thin faces
run plans: :class:`SyncConnection` on ``glide_sync`` and :class:`AsyncConnection`
on ``glide``. Each face creates its client lazily, once, and reuses it.

Retries: a step that fails with a connection or timeout error is sent again (a
fresh command each attempt) with exponential backoff; a ``ClosingError``
recreates the client first. Other errors are thrown into the plan, which may
handle them (e.g. ``NOSCRIPT``, an unknown index) or let them surface.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar

from memworker.embedded import ensure_embedded
from memworker.errors import ConnectionLostError, MemworkerError, StoreError
from memworker.settings import Settings

__all__ = [
    "Call",
    "Pipeline",
    "Script",
    "Plan",
    "SyncConnection",
    "AsyncConnection",
    "glide_config",
    "error_text",
]

log = logging.getLogger("memworker.client")

T = TypeVar("T")

#: Lua scripts in ``memworker/lua``, loaded when a client is created.
SCRIPTS = ("store", "read")
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


Step = Call | Pipeline | Script
Plan = Generator[Step, Any, T]


@lru_cache(maxsize=None)
def _script_source(name: str) -> tuple[str, str]:
    body = resources.files("memworker").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return body, hashlib.sha1(body.encode()).hexdigest()


def error_text(exc: BaseException) -> str:
    """The message of a server error, without the client's decoration."""
    return str(exc.args[0]) if exc.args else str(exc)


def glide_config(settings: Settings) -> Any:
    """The glide client configuration for ``settings`` (shared by both faces)."""
    from glide_shared.config import (
        AdvancedGlideClientConfiguration,
        BackoffStrategy,
        GlideClientConfiguration,
        NodeAddress,
        ProtocolVersion,
        ServerCredentials,
        TlsAdvancedConfiguration,
    )

    settings = ensure_embedded(settings)  # start or find the embedded server, if it is one
    host, port = settings.address()
    username, password = settings.credentials()  # the embedded server's, without a URL
    credentials = None
    if password is not None or username:
        credentials = ServerCredentials(password=password, username=username)
    tls_config = None
    if settings.tls and (settings.tls_ca_file or settings.tls_insecure):
        ca = None
        if settings.tls_ca_file:
            with open(settings.tls_ca_file, "rb") as fh:
                ca = fh.read()
        tls_config = TlsAdvancedConfiguration(
            use_insecure_tls=settings.tls_insecure or None, root_pem_cacerts=ca
        )
    return GlideClientConfiguration(
        [NodeAddress(host, port)],
        use_tls=settings.tls,
        credentials=credentials,
        request_timeout=settings.request_timeout_ms,
        reconnect_strategy=BackoffStrategy(num_of_retries=8, factor=50, exponent_base=2),
        database_id=settings.db or None,
        client_name=f"memworker:{settings.namespace}",
        # RediSearch 2.10 answers FT.SEARCH with a RESP3 map glide cannot convert.
        protocol=ProtocolVersion.RESP2,
        advanced_config=AdvancedGlideClientConfiguration(
            connection_timeout=settings.connect_timeout_ms, tls_config=tls_config
        ),
    )


def _errors() -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
    from glide_shared.exceptions import ClosingError, ConnectionError, TimeoutError

    return ClosingError, ConnectionError, TimeoutError


#: Error texts that no retry can fix (authentication and ACL refusals).
_PERMANENT = (
    "permission",
    "noperm",
    "wrongpass",
    "noauth",
    "invalid username-password",
    "authentication failed",
)


def _backoff(attempt: int) -> float:
    delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2**attempt))
    return delay * (0.5 + random.random() / 2)


def _batch(step: Pipeline) -> Any:
    from glide_shared.commands.batch import Batch

    batch = Batch(is_atomic=step.atomic)
    for command in step.commands:
        batch.custom_command(command)
    return batch


def _is_noscript(exc: BaseException) -> bool:
    text = error_text(exc).lower()
    return "noscript" in text or "no matching script" in text


class _Face:
    """What both faces share: settings, the transient-error classification."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _classify(self, exc: BaseException) -> str:
        text = error_text(exc).lower()
        if any(word in text for word in _PERMANENT):
            return "raise"  # wrong password or ACL: retrying cannot help
        closing, connection, timeout = _errors()
        if isinstance(exc, closing):
            return "recreate"
        if isinstance(exc, (connection, timeout)):
            return "retry"
        return "raise"

    def _give_up(self, exc: BaseException) -> ConnectionLostError:
        return ConnectionLostError(
            f"Valkey at {self.settings.redacted_url()} did not answer after "
            f"{MAX_ATTEMPTS} attempts: {type(exc).__name__}: {error_text(exc)}"
        )


class SyncConnection(_Face):
    """The sync face: one ``glide_sync`` client, created on first use, reused."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The client, created on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    from glide_sync import GlideClient

                    client = GlideClient.create(glide_config(self.settings))
                    for name in SCRIPTS:  # so the first EVALSHA does not miss
                        try:
                            client.custom_command(["SCRIPT", "LOAD", _script_source(name)[0]])
                        except Exception:  # noqa: BLE001 - EVAL after NOSCRIPT still works
                            pass
                    self._client = client
                client = self._client
        return client

    def _drop(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        try:
            client.close()
        except Exception:  # noqa: BLE001 - already unusable
            pass

    def _send(self, step: Step) -> Any:
        client = self.client()
        if isinstance(step, Call):
            return client.custom_command(step.args)
        if isinstance(step, Pipeline):
            if not step.commands:
                return []
            return client.exec(_batch(step), raise_on_error=True)
        body, sha = _script_source(step.name)
        try:
            return client.custom_command(["EVALSHA", sha, "0", *step.args])
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            return client.custom_command(["EVAL", body, "0", *step.args])

    def execute(self, step: Step) -> Any:
        """Run one step with retries; server errors are raised as they come."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return self._send(step)
            except Exception as exc:
                kind = self._classify(exc)
                if kind == "raise":
                    raise
                if attempt == MAX_ATTEMPTS - 1:
                    raise self._give_up(exc) from exc
                log.warning("transient Valkey error (%s), retrying: %s", type(exc).__name__, exc)
                if kind == "recreate" and self._client is not None:
                    self._drop(self._client)
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self, plan: Plan[T]) -> T:
        """Drive a plan to its result."""
        try:
            step = next(plan)
            while True:
                try:
                    reply = self.execute(step)
                except Exception as exc:  # the plan decides
                    step = _throw(plan, exc)
                else:
                    step = plan.send(reply)
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        """Close the client; the next call creates a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


class AsyncConnection(_Face):
    """The async face: one ``glide`` client per event loop, created on first use."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def client(self) -> Any:
        """The client of the running loop, created on first use.

        A glide async client belongs to the loop that created it; when called
        from another loop (e.g. a second ``asyncio.run``) a new one is made.
        """
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._loop = loop
            self._client = None
        async with self._lock:
            if self._client is None:
                from glide import GlideClient

                client = await GlideClient.create(glide_config(self.settings))
                for name in SCRIPTS:  # so the first EVALSHA does not miss
                    try:
                        await client.custom_command(["SCRIPT", "LOAD", _script_source(name)[0]])
                    except Exception:  # noqa: BLE001 - EVAL after NOSCRIPT still works
                        pass
                self._client = client
        return self._client

    async def _drop(self, client: Any) -> None:
        if self._client is client:
            self._client = None
        try:
            await client.close()
        except Exception:  # noqa: BLE001
            pass

    async def _send(self, step: Step) -> Any:
        client = await self.client()
        if isinstance(step, Call):
            return await client.custom_command(step.args)
        if isinstance(step, Pipeline):
            if not step.commands:
                return []
            return await client.exec(_batch(step), raise_on_error=True)
        body, sha = _script_source(step.name)
        try:
            return await client.custom_command(["EVALSHA", sha, "0", *step.args])
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            return await client.custom_command(["EVAL", body, "0", *step.args])

    async def execute(self, step: Step) -> Any:
        """Run one step with retries; server errors are raised as they come."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await self._send(step)
            except Exception as exc:
                kind = self._classify(exc)
                if kind == "raise":
                    raise
                if attempt == MAX_ATTEMPTS - 1:
                    raise self._give_up(exc) from exc
                log.warning("transient Valkey error (%s), retrying: %s", type(exc).__name__, exc)
                if kind == "recreate" and self._client is not None:
                    await self._drop(self._client)
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def run(self, plan: Plan[T]) -> T:
        """Drive a plan to its result."""
        try:
            step = next(plan)
            while True:
                try:
                    reply = await self.execute(step)
                except Exception as exc:
                    step = _throw(plan, exc)
                else:
                    step = plan.send(reply)
        except StopIteration as stop:
            return stop.value

    async def close(self) -> None:
        """Close the client; the next call creates a new one."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass


def _throw(plan: Plan[Any], exc: BaseException) -> Step:
    """Throw a step's error into its plan; a server error it does not handle
    surfaces as :class:`StoreError` (memworker's own errors pass unchanged)."""
    try:
        return plan.throw(exc)
    except MemworkerError:
        raise
    except Exception as err:
        if err is exc:
            raise StoreError(f"Valkey error: {error_text(exc)}") from exc
        raise
