"""The glide faces: :class:`SyncConnection` (``glide_sync``) and
:class:`AsyncConnection` (``glide``), which run plans (:mod:`memworker.io.plan`)
for the store.

Each face creates its client lazily, once, and reuses it (the async client is
per event loop). On a Valkey Cluster (:func:`~memworker.io.redispy.is_cluster`) it is
glide's cluster client, and every step is routed to the primary that owns the
namespace's hash slot (all of a namespace's keys and its index live there; the FT
commands carry no key glide could route by). A step that fails with a connection or timeout error is retried
with backoff; a ``ClosingError`` recreates the client first. Errors a plan does
not handle surface as :class:`~memworker.errors.StoreError`, and a server that
never answered as :class:`~memworker.errors.ConnectionLostError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import Any

from memworker.embedded import ensure_embedded
from memworker.errors import ConnectionLostError
from memworker.io.loops import LoopEnd
from memworker.io.plan import (
    MAX_ATTEMPTS,
    AsyncRunner,
    Call,
    Pipeline,
    Replicated,
    Step,
    SyncRunner,
    backoff,
    error_text,
    is_noscript,
    is_permanent,
)
from memworker.io.redispy import is_cluster, is_transient_redis, known_nodes
from memworker.io.scripts import SCRIPTS, script_key, script_source
from memworker.settings import Settings

__all__ = ["AsyncConnection", "SyncConnection", "glide_config", "quiet_native_logs"]

#: Whether glide's own log lines are turned off before a client is made (the CLI's
#: processes: they went to stdout, coloured and unredacted, beside memworker's error).
_quiet = False
_quieted: set[str] = set()


def quiet_native_logs() -> None:
    """Turn glide's own console logging off for the clients this process makes from
    now on (``memworker`` commands: memworker reports Valkey errors itself). A library
    user's process keeps glide's configuration as the user set it."""
    global _quiet
    _quiet = True


def _native_logs(package: str) -> None:
    """Apply :func:`quiet_native_logs` to glide ``package`` (sync and async glide
    each have their own logger)."""
    if not _quiet or package in _quieted:
        return
    _quieted.add(package)
    try:
        import importlib

        glide = importlib.import_module(package)
        glide.Logger.set_logger_config(glide.LogLevel.OFF)
    except Exception:  # noqa: BLE001 - logging is not worth failing a command for
        log.debug("could not turn glide's logging off", exc_info=True)

log = logging.getLogger("memworker.client")


def _close_off_loop(client: Any) -> None:
    """Close a glide async client whose event loop has ended, from sync code (a store's
    ``close()``): on a loop of its own, unless this thread runs one (then the GC does)."""
    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(client.close())
    except Exception:  # noqa: BLE001 - its connections went with its loop
        pass
    finally:
        loop.close()


def glide_config(settings: Settings) -> Any:
    """The glide client configuration for ``settings`` (shared by both faces): a
    ``GlideClusterClientConfiguration`` when they name a cluster."""
    from glide_shared.config import (
        AdvancedGlideClientConfiguration,
        AdvancedGlideClusterClientConfiguration,
        BackoffStrategy,
        GlideClientConfiguration,
        GlideClusterClientConfiguration,
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
    common: dict[str, Any] = {
        "use_tls": settings.tls,
        "credentials": credentials,
        "request_timeout": settings.request_timeout_ms,
        "reconnect_strategy": BackoffStrategy(num_of_retries=8, factor=50, exponent_base=2),
        "client_name": f"memworker:{settings.namespace}",
        # RediSearch 2.10 answers FT.SEARCH with a RESP3 map glide cannot convert.
        "protocol": ProtocolVersion.RESP2,
    }
    if is_cluster(settings):
        seen = [NodeAddress(h, p) for h, p in known_nodes(settings) if (h, p) != (host, port)]
        return GlideClusterClientConfiguration(
            [NodeAddress(host, port), *seen],  # the nodes seen so far too: the URL's may be gone
            advanced_config=AdvancedGlideClusterClientConfiguration(
                connection_timeout=settings.connect_timeout_ms, tls_config=tls_config
            ),
            **common,
        )
    return GlideClientConfiguration(
        [NodeAddress(host, port)],
        database_id=settings.db or None,
        advanced_config=AdvancedGlideClientConfiguration(
            connection_timeout=settings.connect_timeout_ms, tls_config=tls_config
        ),
        **common,
    )


def _errors() -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
    from glide_shared.exceptions import ClosingError, ConnectionError, TimeoutError

    return ClosingError, ConnectionError, TimeoutError


class _Face:
    """What both faces share: settings, the cluster route, the transient-error
    classification."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The slot route of the namespace on a cluster (``None``: standalone); set
        #: when the client is created.
        self._route: Any = None

    def _create_args(self) -> tuple[Any, bool]:
        """The client configuration, and whether it is a cluster's (then every step
        is routed to the namespace's slot)."""
        config = glide_config(self.settings)
        cluster = is_cluster(self.settings)
        if cluster:
            from glide_shared.routes import SlotKeyRoute, SlotType

            self._route = SlotKeyRoute(SlotType.PRIMARY, script_key(self.settings))
        return config, cluster

    def _args(self, args: list[Any]) -> tuple[Any, ...]:
        """``custom_command`` arguments: the command, and the route on a cluster."""
        return (args,) if self._route is None else (args, self._route)

    def _exec_args(self, step: Pipeline) -> tuple[Any, ...]:
        """``exec`` arguments of a pipeline step (a cluster batch, routed, on a cluster)."""
        if self._route is None:
            from glide_shared.commands.batch import Batch

            batch: Any = Batch(is_atomic=step.atomic)
        else:
            from glide_shared.commands.batch import ClusterBatch

            batch = ClusterBatch(is_atomic=step.atomic)
        for command in step.commands:
            batch.custom_command(command)
        if self._route is None:
            return (batch, True)
        from glide_shared.commands.batch_options import ClusterBatchOptions

        return (batch, True, ClusterBatchOptions(route=self._route))

    def _script_args(self, name: str) -> tuple[list[Any], list[Any]]:
        """The EVALSHA and EVAL prefixes of a script call (one declared key)."""
        body, sha = script_source(name)
        key = script_key(self.settings)
        return ["EVALSHA", sha, "1", key], ["EVAL", body, "1", key]

    def _classify(self, exc: BaseException) -> str:
        if is_permanent(exc):
            return "raise"  # wrong password or ACL: retrying cannot help
        closing, connection, timeout = _errors()
        if isinstance(exc, closing):
            return "recreate"
        if isinstance(exc, (connection, timeout)) or is_transient_redis(exc):
            return "retry"  # (redis-py's: the topology question before the client exists)
        return "raise"

    def _give_up(self, exc: BaseException) -> ConnectionLostError:
        return ConnectionLostError(
            f"Valkey at {self.settings.redacted_url()} did not answer after "
            f"{MAX_ATTEMPTS} attempts: {type(exc).__name__}: {error_text(exc)}"
        )


class SyncConnection(_Face, SyncRunner):
    """The sync face: one ``glide_sync`` client, created on first use, reused.

    One thread at a time sends on it (``_call_lock``). glide_sync 2.6.0 aborted the
    process (SIGABRT in its FFI call, no Python exception) in one of two clean-clone
    test runs and once in ~40 local runs of ``tests/integration/test_crewai_compat.py``,
    each time while CrewAI's ``parallel_find_similar`` searched one store from several
    pool threads (valkey-glide issue #5458 reports its sync operations as not
    thread-safe). That a race between threads is the cause is likely, not proven: the
    abort could not be made to recur on demand. The lock serializes the calls of one
    store's threads (a store's sync client drives a single ``current_thread`` runtime)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()

    def client(self) -> Any:
        """The client, created on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    from glide_sync import GlideClient, GlideClusterClient

                    _native_logs("glide_sync")
                    config, cluster = self._create_args()
                    client = (GlideClusterClient if cluster else GlideClient).create(config)
                    for name in SCRIPTS:  # so the first EVALSHA does not miss
                        try:
                            client.custom_command(
                                *self._args(["SCRIPT", "LOAD", script_source(name)[0]])
                            )
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
            return client.custom_command(*self._args(step.args))
        if isinstance(step, Replicated):  # one multiplexed connection per node: WAIT sees the SET
            return [client.custom_command(*self._args(c)) for c in step.commands()][-1]
        if isinstance(step, Pipeline):
            if not step.commands:
                return []
            return client.exec(*self._exec_args(step))
        evalsha, eval_ = self._script_args(step.name)
        try:
            return client.custom_command(*self._args([*evalsha, *step.args]))
        except Exception as exc:
            if not is_noscript(exc):
                raise
            return client.custom_command(*self._args([*eval_, *step.args]))

    def execute(self, step: Step) -> Any:
        """Run one step with retries; server errors are raised as they come."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self._call_lock:
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

    def close(self) -> None:
        """Close the client; the next call creates a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


class AsyncConnection(_Face, AsyncRunner):
    """The async face: one ``glide`` client per event loop, created on first use.

    A client is closed on its loop as the loop ends (``asyncio.run``,
    ``asyncio.Runner``: :class:`~memworker.io.loops.LoopEnd`); one of a loop closed by
    hand is closed by the next loop's first call, or by :meth:`forget_closed_loop`.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        # id(client) -> (its loop, what closes it as that loop ends)
        self._ends: dict[int, tuple[asyncio.AbstractEventLoop, LoopEnd]] = {}
        self._users = 0  # plans in flight (hold/release)
        # a client to close once no plan uses it: made, or in use, as its loop ended
        self._late: tuple[asyncio.AbstractEventLoop, Any] | None = None

    async def client(self) -> Any:
        """The client of the running loop, created on first use.

        A glide async client belongs to the loop that created it; when called
        from another loop (e.g. a second ``asyncio.run``) a new one is made.
        """
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if self._lock is None or self._loop is not loop:
            old, old_loop = self._client, self._loop
            self._lock = asyncio.Lock()
            self._loop = loop
            self._client = None
            self._forget_ended()
            if old is not None and old_loop is not None and old_loop.is_closed():
                # the client of a loop that ended (asyncio.run per call): closed here, not
                # left to the GC (a ResourceWarning per loop); one of a live loop is its own
                try:
                    await old.close()
                except Exception:  # noqa: BLE001 - its connections went with its loop
                    pass
        async with self._lock:
            # (a loop: an aclose() while the scripts load drops the new client; make another)
            while (client := self._client) is None:
                from glide import GlideClient, GlideClusterClient

                _native_logs("glide")
                config, cluster = self._create_args()
                client = await (GlideClusterClient if cluster else GlideClient).create(config)
                # Kept before the scripts load: a caller cancelled while they load leaves
                # a client the next call uses (and close() closes), not one left to the GC.
                self._client = client
                end = LoopEnd(functools.partial(self._loop_ended, client))
                self._ends[id(client)] = (loop, end)
                if end.late:
                    self._late = (loop, client)
                for name in SCRIPTS:  # so the first EVALSHA does not miss
                    try:
                        await client.custom_command(
                            *self._args(["SCRIPT", "LOAD", script_source(name)[0]])
                        )
                    except Exception:  # noqa: BLE001 - EVAL after NOSCRIPT still works
                        pass
        return client

    def _forget_ended(self) -> None:
        """Disarm the loop-end closers of loops closed by hand (their clients are
        closed off their loop, or already were)."""
        for key, (loop, end) in list(self._ends.items()):
            if loop.is_closed():
                self._ends.pop(key, None)
                end.cancel()

    def _disarm(self, client: Any) -> None:
        found = self._ends.pop(id(client), None)
        if found is not None:
            found[1].cancel()

    def hold(self) -> None:
        self._users += 1

    async def release(self, held: Any) -> None:
        self._users -= 1
        late = self._late
        if self._users == 0 and late is not None and late[0] is asyncio.get_running_loop():
            self._late = None
            await self._drop(late[1])

    async def _loop_ended(self, client: Any) -> None:
        """Run on the client's loop as it ends: the client is closed there (by the
        last plan using it, if a user's async generator closed at the same time is
        calling the store)."""
        if self._users and self._client is client:
            self._late = (asyncio.get_running_loop(), client)
            return
        self._ends.pop(id(client), None)
        if self._client is client:
            self._client, self._loop, self._lock = None, None, None
        try:
            await client.close()
        except Exception:  # noqa: BLE001 - its connections go with its loop
            pass

    def forget_closed_loop(self) -> None:
        """Drop the client when its event loop is closed (see
        :meth:`RedisAsyncDriver.forget_closed_loops`)."""
        self._forget_ended()
        if self._loop is not None and self._loop.is_closed():
            client = self._client
            self._client, self._loop, self._lock = None, None, None
            if client is not None:
                _close_off_loop(client)

    async def _drop(self, client: Any) -> None:
        if self._client is client:
            self._client = None
        self._disarm(client)
        try:
            await client.close()
        except Exception:  # noqa: BLE001
            pass

    async def _send(self, step: Step) -> Any:
        client = await self.client()
        if isinstance(step, Call):
            return await client.custom_command(*self._args(step.args))
        if isinstance(step, Replicated):  # one multiplexed connection per node: WAIT sees the SET
            return [await client.custom_command(*self._args(c)) for c in step.commands()][-1]
        if isinstance(step, Pipeline):
            if not step.commands:
                return []
            return await client.exec(*self._exec_args(step))
        evalsha, eval_ = self._script_args(step.name)
        try:
            return await client.custom_command(*self._args([*evalsha, *step.args]))
        except Exception as exc:
            if not is_noscript(exc):
                raise
            return await client.custom_command(*self._args([*eval_, *step.args]))

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

    async def close(self) -> None:
        """Close the client; the next call creates a new one."""
        client, self._client = self._client, None
        if client is not None:
            self._disarm(client)
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass
