"""The glide faces: :class:`SyncConnection` (``glide_sync``) and
:class:`AsyncConnection` (``glide``), which run plans (:mod:`memworker.io.plan`)
for the store.

Each face creates its client lazily, once, and reuses it (the async client is
per event loop). A step that fails with a connection or timeout error is retried
with backoff; a ``ClosingError`` recreates the client first. Errors a plan does
not handle surface as :class:`~memworker.errors.StoreError`, and a server that
never answered as :class:`~memworker.errors.ConnectionLostError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, TypeVar, cast

from memworker.embedded import ensure_embedded
from memworker.errors import ConnectionLostError
from memworker.io.plan import (
    MAX_ATTEMPTS,
    Call,
    Pipeline,
    Plan,
    Step,
    backoff,
    error_text,
    is_noscript,
    is_permanent,
    throw,
)
from memworker.io.scripts import SCRIPTS, script_source
from memworker.settings import Settings

__all__ = ["AsyncConnection", "SyncConnection", "glide_config"]

log = logging.getLogger("memworker.client")

T = TypeVar("T")


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


def _batch(step: Pipeline) -> Any:
    from glide_shared.commands.batch import Batch

    batch = Batch(is_atomic=step.atomic)
    for command in step.commands:
        batch.custom_command(command)
    return batch


class _Face:
    """What both faces share: settings, the transient-error classification."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _classify(self, exc: BaseException) -> str:
        if is_permanent(exc):
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
                            client.custom_command(["SCRIPT", "LOAD", script_source(name)[0]])
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
        body, sha = script_source(step.name)
        try:
            return client.custom_command(["EVALSHA", sha, "0", *step.args])
        except Exception as exc:
            if not is_noscript(exc):
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
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self, plan: Plan[T]) -> T:
        """Drive a plan to its result."""
        try:
            step = next(plan)
            while True:
                try:
                    reply = self.execute(step)
                except Exception as exc:  # the plan decides
                    step = throw(plan, exc)
                else:
                    step = plan.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)

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
                        await client.custom_command(["SCRIPT", "LOAD", script_source(name)[0]])
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
        body, sha = script_source(step.name)
        try:
            return await client.custom_command(["EVALSHA", sha, "0", *step.args])
        except Exception as exc:
            if not is_noscript(exc):
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
                await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def run(self, plan: Plan[T]) -> T:
        """Drive a plan to its result."""
        try:
            step = next(plan)
            while True:
                try:
                    reply = await self.execute(step)
                except Exception as exc:
                    step = throw(plan, exc)
                else:
                    step = plan.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)

    async def close(self) -> None:
        """Close the client; the next call creates a new one."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass
