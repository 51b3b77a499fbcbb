"""redis-py: the one client factory, and the drivers that run plans over it.

Every redis-py client of memworker (the queue and its drain, the admin reads, the
worker's broker, the encode results and locks, CrewAI's settle thread, the demo) is
built by :func:`redis_client` or :func:`async_redis_client` with
:func:`redis_kwargs`. :class:`RedisSyncDriver` and :class:`RedisAsyncDriver` run the
same plans (:mod:`memworker.io.plan`) as the glide faces, with the same policy: a
step that fails with a connection or timeout error is sent again with exponential
backoff (authentication, permission and certificate refusals are not retried), a server that
never answers raises the driver's ``lost`` error (a
:class:`~memworker.errors.ConnectionLostError`), and an error no plan handles is
wrapped in the driver's ``server`` error class. No redis-py exception leaves a
driver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from memworker.embedded import ensure_embedded
from memworker.errors import MemworkerError
from memworker.io.plan import (
    MAX_ATTEMPTS,
    AsyncRunner,
    STORE_ERRORS,
    Call,
    ErrorClasses,
    Pipeline,
    Replicated,
    Step,
    SyncRunner,
    backoff,
    error_text,
    is_permanent,
    server_error,
)
from memworker.io.loops import LoopEnd
from memworker.io.scripts import script_key, script_source
from memworker.settings import Settings

__all__ = [
    "RedisAsyncDriver",
    "RedisSyncDriver",
    "async_redis_client",
    "forget_address",
    "is_cluster",
    "known_nodes",
    "is_transient_redis",
    "redis_client",
    "redis_kwargs",
]

log = logging.getLogger("memworker.client")

T = TypeVar("T")


def redis_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py connection arguments for ``settings`` (every redis-py client of
    memworker is built with them: the queue, drain, the worker's broker, the encode
    results and CrewAI's settle thread).

    With TLS the certificate and its host name are always checked, whatever
    redis-py's default (no host name check before redis-py 6): ``ssl_check_hostname``
    is set explicitly, and only ``ssl_cert_reqs=none`` in the URL turns both off.
    """
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_ms / 1000,
        "health_check_interval": 30,
    }
    if settings.tls:
        if settings.tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.tls_ca_file
        kwargs["ssl_cert_reqs"] = "none" if settings.tls_insecure else "required"
        kwargs["ssl_check_hostname"] = not settings.tls_insecure
    return kwargs


#: What :func:`is_cluster` learned, by address.
_topology: dict[tuple[object, ...], bool] = {}
_topology_lock = threading.Lock()


def is_cluster(settings: Settings) -> bool:
    """True when ``settings`` name a Valkey Cluster: the URL's ``cluster`` parameter
    (:attr:`Settings.cluster`), else the server's answer to ``INFO cluster``, asked
    once per address and process (the embedded server is standalone)."""
    if settings.cluster is not None:
        return settings.cluster
    if settings.embedded:
        return False
    key = (settings.host, settings.port, settings.tls, settings.username)
    with _topology_lock:
        known = _topology.get(key)
    if known is None:
        answer = _ask_topology(settings)
        if answer is None:
            return False
        with _topology_lock:
            _topology[key] = known = answer
    return known


#: Cluster nodes a client of this process has seen, by the URL's address: the next
#: client also starts from them, so one made after the URL's node died (a failover)
#: still finds the cluster.
_nodes: dict[tuple[object, ...], list[tuple[str, int]]] = {}


def known_nodes(settings: Settings) -> list[tuple[str, int]]:
    """The cluster nodes this process has seen for ``settings``' address."""
    with _topology_lock:
        return list(_nodes.get((settings.host, settings.port, settings.tls, settings.username), []))


def _learn_nodes(settings: Settings, nodes: list[tuple[str, int]]) -> None:
    if nodes:
        with _topology_lock:
            _nodes[(settings.host, settings.port, settings.tls, settings.username)] = nodes


def forget_address(host: str, port: int) -> None:
    """Drop what this process learned about ``host:port`` (its topology, its cluster
    nodes): a new server listens there, perhaps in the other mode. Test harnesses that
    reuse ports call it when they start a server (:func:`memworker.testing.start_server`);
    a long-lived process otherwise keeps its answer, as :func:`is_cluster` says."""
    with _topology_lock:
        for cache in (_topology, _nodes):
            for key in [k for k in cache if k[0] == host and k[1] == port]:
                del cache[key]


def _ask_topology(settings: Settings) -> bool | None:
    """``INFO cluster`` on the URL's node; ``None`` when it refused for a reason no
    retry fixes (a certificate, a password, an ACL without INFO): the client made next
    reports that refusal in its own terms, and the question is asked again next time.
    A lost connection or a timeout is raised as redis-py's error, which every caller's
    retry policy retries."""
    import redis

    client = redis.Redis.from_url(
        settings.url(redact=False, scheme="redis"), **redis_kwargs(settings)
    )
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except Exception as exc:
        if is_transient_redis(exc):
            raise
        return None
    finally:
        client.close()


def redis_client(settings: Settings) -> Any:
    """A ``redis.Redis`` for ``settings``, or a ``redis.cluster.RedisCluster`` when
    they name a cluster (nothing connects until the first command; a cluster's
    topology is read then)."""
    import redis

    settings = ensure_embedded(settings)  # start or find the embedded server, if it is one
    url = settings.url(redact=False, scheme="redis")
    if is_cluster(settings):
        from redis.cluster import ClusterNode, RedisCluster

        from redis.exceptions import RedisClusterException

        nodes = [ClusterNode(host, port) for host, port in known_nodes(settings)]  # type: ignore[no-untyped-call]
        try:
            client = RedisCluster.from_url(url, startup_nodes=nodes, **redis_kwargs(settings))
        except RedisClusterException:
            _refused_slot_map(settings)
            raise
        _learn_nodes(settings, [(n.host, int(n.port)) for n in client.get_nodes()])  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(url, **redis_kwargs(settings))


def _refused_slot_map(settings: Settings) -> None:
    """redis-py's cluster client reports any error of ``CLUSTER SLOTS`` as "Cluster mode
    is not enabled on this node", an ACL refusal included (a node memworker found in
    cluster mode): ask the node once more, and raise its refusal (naming the command)."""
    import redis

    client = redis.Redis.from_url(settings.url(redact=False, scheme="redis"), **redis_kwargs(settings))
    try:
        client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    except Exception as exc:
        if is_permanent(exc):
            raise
    finally:
        client.close()


def async_redis_client(settings: Settings) -> Any:
    """A ``redis.asyncio.Redis`` (or ``redis.asyncio.cluster.RedisCluster``) for
    ``settings``, bound to the loop of its first use."""
    import redis.asyncio

    settings = ensure_embedded(settings)  # start or find the embedded server, if it is one
    url = settings.url(redact=False, scheme="redis")
    if is_cluster(settings):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(host, port) for host, port in known_nodes(settings)]
        return RedisCluster.from_url(url, startup_nodes=nodes, **redis_kwargs(settings))
    return redis.asyncio.Redis.from_url(url, **redis_kwargs(settings))


def is_transient_redis(exc: BaseException) -> bool:
    """True for an error a retry may fix: a lost connection or a timeout (not an
    authentication, permission or certificate refusal)."""
    import redis.exceptions as rex

    if is_permanent(exc) or isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError)):
        return False
    if "certificate verify failed" in error_text(exc).lower():
        return False  # a certificate refused (wrong CA or host name) stays refused
    return isinstance(exc, (rex.ConnectionError, rex.TimeoutError, ConnectionError, TimeoutError))


def _is_noscript(exc: BaseException) -> bool:
    import redis.exceptions as rex

    return isinstance(exc, rex.NoScriptError)


class _Driver:
    """What both drivers share: settings, error classes, the give-up error."""

    def __init__(self, settings: Settings, errors: ErrorClasses = STORE_ERRORS) -> None:
        self.settings = settings
        self.errors = errors

    def _give_up(self, exc: BaseException) -> Exception:
        return self.errors.lost(
            f"Valkey at {self.settings.redacted_url()} did not answer after "
            f"{MAX_ATTEMPTS} attempts: {type(exc).__name__}: {error_text(exc)}"
        )

    def _wrap(self, exc: BaseException) -> Exception:
        return server_error(self.errors, exc)

    def wrapped(self, exc: BaseException) -> Exception:
        """The error :meth:`guarded` raises for ``exc`` when it is not transient."""
        return self._wrap(exc)


class RedisSyncDriver(_Driver, SyncRunner):
    """Runs plans over one ``redis.Redis``, created on first use and reused.

    Args:
        settings: Where the server is.
        errors: The error classes raised (the queue passes its own).
        client: A ``redis.Redis`` to use instead of creating one (then
            :meth:`close` leaves it open: its owner closes it).
    """

    def __init__(
        self, settings: Settings, errors: ErrorClasses = STORE_ERRORS, *, client: Any = None
    ) -> None:
        super().__init__(settings, errors)
        self._client: Any = client
        self._owned = client is None
        self._lock = threading.Lock()
        #: Connections of the script path (:meth:`_script_call`), this process's.
        self._free: list[Any] = []
        self._free_pid = os.getpid()

    def client(self) -> Any:
        """The ``redis.Redis`` client, created on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis_client(self.settings)
        return self._client

    def _send(self, step: Step) -> Any:
        client = self.client()
        if isinstance(step, Call):
            return client.execute_command(*step.args)
        if isinstance(step, Replicated):
            node = client
            if hasattr(client, "get_node_from_key"):  # a RedisCluster: the key's primary
                node = client.get_redis_connection(client.get_node_from_key(step.key))
            with node.pipeline(transaction=False) as pipe:
                for command in step.commands():
                    pipe.execute_command(*command)
                return pipe.execute()[-1]
        if isinstance(step, Pipeline):
            if not step.commands:
                return []
            with client.pipeline(transaction=step.atomic) as pipe:
                for command in step.commands:
                    pipe.execute_command(*command)
                return pipe.execute()
        body, sha = script_source(step.name)
        key = script_key(self.settings)
        try:
            return self._script_call(client, "EVALSHA", sha, 1, key, *step.args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            return self._script_call(client, "EVAL", body, 1, key, *step.args)

    def _script_call(self, client: Any, *args: Any) -> Any:
        """One script call: on a standalone server, straight on a connection of the
        driver's own free list (made by the client's pool, kept between calls).

        A producer's enqueue is one script call, and ``execute_command`` spent about
        half of its client-side CPU around the socket (the pool's lock and its
        readiness poll of the socket, observability hooks): ~80 µs a call against
        ~38 here (``benchmarks/README.md``). A connection goes back to the list only
        after its reply was read whole (a value or the server's error reply); any
        other failure disconnects it and leaves it out, so a later call never reads
        a stale reply. A cluster client routes by key: it takes its own path.
        """
        import redis.exceptions as rex

        if hasattr(client, "get_node_from_key"):
            return client.execute_command(*args)
        free = self._free
        if self._free_pid != os.getpid():  # a forked child: the parent's sockets are not ours
            self._free = free = []
            self._free_pid = os.getpid()
        try:
            conn = free.pop()
        except IndexError:
            conn = client.connection_pool.make_connection()
        try:
            conn.send_command(*args)
            reply = conn.read_response()
        except rex.ResponseError:
            free.append(conn)  # the server's error reply, read whole: the connection is clean
            raise
        except BaseException:
            conn.disconnect()
            raise
        if free is self._free:
            free.append(conn)
        else:  # the driver was closed during the call
            conn.disconnect()
        return reply

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` with the retry policy; errors are raised unwrapped
        unless transient (then ``errors.lost`` after the last attempt)."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return fn(self.client())
            except Exception as exc:
                if not is_transient_redis(exc):
                    raise
                if attempt == MAX_ATTEMPTS - 1:
                    raise self._give_up(exc) from exc
                log.warning("transient Valkey error (%s), retrying: %s", type(exc).__name__, exc)
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def guarded(self, fn: Callable[[Any], T]) -> T:
        """:meth:`call`, with any other error wrapped in ``errors.server``."""
        try:
            return self.call(fn)
        except MemworkerError:
            raise
        except Exception as exc:
            raise self._wrap(exc) from exc

    def execute(self, step: Step) -> Any:
        """Run one step with retries; server errors are raised as they come."""
        return self.call(lambda _client: self._send(step))

    def close(self) -> None:
        """Close the client (when the driver made it) and the script path's
        connections; the next call connects again."""
        with self._lock:
            free, self._free = self._free, []
            client = None
            if self._owned:
                client, self._client = self._client, None
        for conn in free:
            conn.disconnect()
        if client is not None:
            client.close()


class _LoopState:
    """What the async driver keeps for one event loop: its client, its cluster-node
    clients and the script path's free connections (all bound to that loop)."""

    __slots__ = ("client", "nodes", "free", "end", "users", "late")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.nodes: dict[tuple[str, int], Any] = {}
        self.free: list[Any] = []
        self.end: LoopEnd | None = None
        self.users = 0  # calls in flight (hold/release), all on the state's loop
        self.late = False  # its loop is ending: closed once users is back to 0

    async def aclose(self) -> None:
        """Close every connection (on the state's own loop). Never raises: it runs as a
        loop ends or after a plan's result (the last user's ``release``), which a
        socket's failure to close must not replace; what is left goes with the loop."""
        free, self.free = self.free, []
        for conn in free:
            await _drop(conn)
        for client in [*self.nodes.values(), self.client]:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - the others are still closed
                log.debug("closing a loop's client failed", exc_info=True)

    def disarm(self) -> None:
        """Its loop will not close it as it ends (closed already, or left to the GC
        because the loop is closed and nothing can await its sockets)."""
        if self.end is not None:
            self.end.cancel()


class RedisAsyncDriver(_Driver, AsyncRunner):
    """Runs plans over one ``redis.asyncio.Redis`` per event loop, created on first use.

    Loops of several threads may use one driver at once: each has its own client and
    connections (a connection awaited from another loop fails after its command was
    sent). A loop's are closed on it as it ends (``asyncio.run``, ``asyncio.Runner``:
    see :class:`~memworker.io.loops.LoopEnd`); those of a loop closed by hand, without
    ``shutdown_asyncgens()``, are dropped when the next loop starts using the driver.

    Args:
        settings: Where the server is.
        errors: The error classes raised (the queue passes its own).
    """

    def __init__(self, settings: Settings, errors: ErrorClasses = STORE_ERRORS) -> None:
        super().__init__(settings, errors)
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        # states close() took from loops still running (in other threads): each is
        # closed by its own loop when it ends
        self._ending: dict[_LoopState, asyncio.AbstractEventLoop] = {}
        self._states_lock = threading.Lock()

    def _state(self) -> _LoopState:
        """The running loop's state, created on first use."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            with self._states_lock:
                state = self._states.get(loop)
                if state is None:
                    self._forget_closed()
                    state = self._states[loop] = _LoopState(async_redis_client(self.settings))
                    state.end = LoopEnd(lambda: self._loop_ended(loop, state))
                    state.late = state.end.late
        return state

    def hold(self) -> _LoopState:
        state = self._state()
        state.users += 1
        return state

    async def release(self, held: _LoopState) -> None:
        held.users -= 1
        if held.late and held.users == 0:
            loop = asyncio.get_running_loop()
            with self._states_lock:
                if self._states.get(loop) is held:
                    del self._states[loop]
                self._ending.pop(held, None)
            await held.aclose()

    def _forget_closed(self) -> None:
        """Drop the states of loops closed without closing them (by hand, no
        ``shutdown_asyncgens()``): their connections cannot be awaited any more and go
        with their sockets when collected. Under ``_states_lock``."""
        for old in [other for other in self._states if other.is_closed()]:
            self._states.pop(old).disarm()
        for gone in [state for state, loop in self._ending.items() if loop.is_closed()]:
            del self._ending[gone]
            gone.disarm()

    async def _loop_ended(self, loop: asyncio.AbstractEventLoop, state: _LoopState) -> None:
        """Run on ``loop`` as it ends: its state is closed there, not left open. In use
        (a user's async generator closed at the same time calls memworker), it is
        closed by its last user instead."""
        if state.users:
            state.late = True
            return
        with self._states_lock:
            if self._states.get(loop) is state:
                del self._states[loop]
            self._ending.pop(state, None)
        await state.aclose()

    def _node_client(self, node: Any) -> Any:
        """A plain ``redis.asyncio.Redis`` on one cluster node (for WAIT, which needs
        one connection), made once per node and event loop."""
        import redis.asyncio

        nodes = self._state().nodes
        address = (node.host, int(node.port))
        found = nodes.get(address)
        if found is None:
            username, password = self.settings.credentials()
            kwargs = redis_kwargs(self.settings)
            found = redis.asyncio.Redis(
                host=address[0], port=address[1], username=username, password=password,
                ssl=self.settings.tls, **kwargs,
            )  # fmt: skip
            nodes[address] = found
        return found

    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client of the running loop, created on first use."""
        return self._state().client

    def forget_closed_loops(self) -> None:
        """Drop the clients of event loops closed by hand (``asyncio.run`` closes its
        own as it ends): nothing can await their connections any more, and
        unreferenced they go with their sockets. For a sync ``close()`` (no loop to
        close them on)."""
        with self._states_lock:
            self._forget_closed()

    async def _send(self, step: Step) -> Any:
        client = self.client()
        if isinstance(step, Call):
            return await client.execute_command(*step.args)
        if isinstance(step, Replicated):
            node = client
            if hasattr(client, "get_node_from_key"):  # a RedisCluster: the key's primary
                node = self._node_client(client.get_node_from_key(step.key))
            async with node.pipeline(transaction=False) as pipe:
                for command in step.commands():
                    pipe.execute_command(*command)
                return (await pipe.execute())[-1]
        if isinstance(step, Pipeline):
            if not step.commands:
                return []
            async with client.pipeline(transaction=step.atomic) as pipe:
                for command in step.commands:
                    pipe.execute_command(*command)
                return await pipe.execute()
        body, sha = script_source(step.name)
        key = script_key(self.settings)
        try:
            return await self._script_call(client, "EVALSHA", sha, 1, key, *step.args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            return await self._script_call(client, "EVAL", body, 1, key, *step.args)

    async def _script_call(self, client: Any, *args: Any) -> Any:
        """One script call: on a standalone server, straight on a connection of the
        driver's own free list (made by the client's pool, kept between calls), as
        :meth:`RedisSyncDriver._script_call` does.

        ``execute_command`` of ``redis.asyncio`` takes its pool's asyncio lock and runs
        its retry and observability wrappers per call: ~210-260 µs of CPU for an
        enqueue's script call here, against ~165-177 on a held connection. A
        connection goes back to the list only after its reply was read whole (a value
        or the server's error reply); anything else, a task cancelled while it waits
        for the reply included, disconnects it and leaves it out, so a later call never
        reads another call's reply. The list belongs to the client's event loop.
        """
        import redis.exceptions as rex

        if hasattr(client, "get_node_from_key"):
            return await client.execute_command(*args)
        state = self._state()
        free = state.free
        try:
            conn = free.pop()
        except IndexError:
            conn = client.connection_pool.make_connection()
        try:
            await conn.send_command(*args)
            reply = await conn.read_response()
        except rex.ResponseError:
            free.append(conn)  # the server's error reply, read whole: the connection is clean
            raise
        except BaseException:
            await _drop(conn)
            raise
        if self._states.get(asyncio.get_running_loop()) is state:
            free.append(conn)
        else:  # the driver was closed during the call
            await _drop(conn)
        return reply

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Await ``fn(client)`` with the retry policy (see :meth:`RedisSyncDriver.call`)."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await fn(self.client())
            except Exception as exc:
                if not is_transient_redis(exc):
                    raise
                if attempt == MAX_ATTEMPTS - 1:
                    raise self._give_up(exc) from exc
                log.warning("transient Valkey error (%s), retrying: %s", type(exc).__name__, exc)
                await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def guarded(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """:meth:`call`, with any other error wrapped in ``errors.server``."""
        try:
            return await self.call(fn)
        except MemworkerError:
            raise
        except Exception as exc:
            raise self._wrap(exc) from exc

    async def execute(self, step: Step) -> Any:
        """Run one step with retries; server errors are raised as they come."""
        return await self.call(lambda _client: self._send(step))

    async def close(self) -> None:
        """Close the client of the running loop and the script path's connections;
        the next call creates a new one."""
        running = asyncio.get_running_loop()
        with self._states_lock:
            states, self._states = self._states, {}
            # Other event loops' connections cannot be awaited here ("Event loop is
            # closed", a RuntimeError, or another loop's futures): a loop still running
            # (another thread) closes its own as it ends; a closed one's are dropped.
            for loop, other in states.items():
                if loop is running:
                    continue
                if loop.is_closed() or other.end is None or not other.end.armed:
                    other.disarm()
                else:
                    self._ending[other] = loop
        state = states.get(running)
        if state is None:
            return
        state.disarm()
        await state.aclose()


async def _drop(conn: Any) -> None:
    """Disconnect a connection of the async script path without waiting for the
    socket to close (safe in a task being cancelled); never raises."""
    try:
        try:
            await conn.disconnect(nowait=True)
        except TypeError:  # a redis-py before 4.5: no ``nowait``
            await conn.disconnect()
    except Exception:  # noqa: BLE001 - a connection already broken is dropped anyway
        log.debug("closing a dropped connection failed", exc_info=True)
