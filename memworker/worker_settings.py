"""Worker settings: the one reader of the ``MEMWORKER_*`` variables of a worker process.

:class:`WorkerSettings` (frozen) holds what a worker and the CLI take from the
environment: the commit step, retries, backoff and deliveries of the broker, the
embedder factory, model, home and inference threads of the embedding model, the LLM
and memory factory of the encoding flow, and the embedded server's ``appendfsync``.
:meth:`WorkerSettings.from_env` validates every variable at once; the ``read_*``
functions read one variable each, for the code that needs only that one (so a bad
variable it does not use never breaks it). The connection variables
(``VALKEY_URL``, ``MEMWORKER_NAMESPACE``, ...) are :class:`memworker.settings.Settings`'.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from memworker.errors import ConfigError, shown

__all__ = [
    "WorkerSettings",
    "BROKER_ENV",
    "read_backend",
    "read_broker_options",
    "read_embedder",
    "read_model",
    "read_home",
    "read_inference_threads",
    "read_llm",
    "read_memory_factory",
    "read_appendfsync",
    "read_metrics_port",
    "read_sweep_interval",
]

#: Deliveries of one attempt of a job before the poison guard dead-letters it.
DEFAULT_MAX_DELIVERIES = 3
#: Retries of a transiently failing job.
DEFAULT_MAX_RETRIES = 5
#: First retry backoff (ms); doubles per retry.
DEFAULT_MIN_BACKOFF_MS = 1_000
#: Default records per commit step (0: one step for the whole job).
DEFAULT_COMMIT_STEP = 8
#: Records a worker process holds in its batched path at once (fetched, not yet
#: committed); 0 turns the batched path off (every job through a worker thread).
DEFAULT_INFLIGHT_RECORDS = 256
#: Bytes of fetched messages the batched path holds at once.
DEFAULT_INFLIGHT_BYTES = 16 * 1024 * 1024
#: Threads that commit the batched path's jobs side by side, each on its own connection.
DEFAULT_COMMIT_THREADS = 2
#: Home folder used when ``MEMWORKER_HOME`` is unset.
DEFAULT_HOME = Path(".memworker")

COMMIT_STEP_ENV = "MEMWORKER_COMMIT_STEP"
MAX_RETRIES_ENV = "MEMWORKER_MAX_RETRIES"
MIN_BACKOFF_MS_ENV = "MEMWORKER_MIN_BACKOFF_MS"
MAX_DELIVERIES_ENV = "MEMWORKER_MAX_DELIVERIES"
INFLIGHT_RECORDS_ENV = "MEMWORKER_INFLIGHT_RECORDS"
INFLIGHT_BYTES_ENV = "MEMWORKER_INFLIGHT_BYTES"
COMMIT_THREADS_ENV = "MEMWORKER_COMMIT_THREADS"
#: An embedder factory, ``module:callable``.
EMBEDDER_ENV = "MEMWORKER_EMBEDDER"
#: The embedding model (hub name or local path).
MODEL_ENV = "MEMWORKER_MODEL"
#: The workers' inference backend for that model.
BACKEND_ENV = "MEMWORKER_BACKEND"
#: Values of ``MEMWORKER_BACKEND`` (memworker.embedding.backends.BACKENDS).
BACKEND_VALUES = ("torch", "onnx", "onnx-int8")
#: memworker's home folder (embedded server data, ONNX exports).
HOME_ENV = "MEMWORKER_HOME"
#: A worker process's inference threads.
THREADS_ENV = "MEMWORKER_INFERENCE_THREADS"
#: A model name for ``crewai.LLM``.
LLM_ENV = "MEMWORKER_LLM"
#: A worker memory factory, ``module:function``.
MEMORY_FACTORY_ENV = "MEMWORKER_MEMORY_FACTORY"
#: The embedded server's AOF fsync policy.
APPENDFSYNC_ENV = "MEMWORKER_APPENDFSYNC"
#: Seconds between the workers' sweeps of a namespace.
SWEEP_INTERVAL_ENV = "MEMWORKER_SWEEP_INTERVAL"
#: Values of ``appendfsync`` Valkey accepts.
APPENDFSYNC_VALUES = ("always", "everysec", "no")

#: The broker options: option -> (variable, default, minimum, maximum). The maxima are
#: far above any useful value; they stop a typo from starting 100,000 commit threads.
BROKER_ENV: dict[str, tuple[str, int, int, int]] = {
    "max_retries": (MAX_RETRIES_ENV, DEFAULT_MAX_RETRIES, 0, 1000),
    "min_backoff_ms": (MIN_BACKOFF_MS_ENV, DEFAULT_MIN_BACKOFF_MS, 0, 3_600_000),
    "max_deliveries": (MAX_DELIVERIES_ENV, DEFAULT_MAX_DELIVERIES, 1, 1000),
    "commit_step": (COMMIT_STEP_ENV, DEFAULT_COMMIT_STEP, 0, 1_000_000),
    "inflight_records": (INFLIGHT_RECORDS_ENV, DEFAULT_INFLIGHT_RECORDS, 0, 1_000_000),
    "inflight_bytes": (INFLIGHT_BYTES_ENV, DEFAULT_INFLIGHT_BYTES, 1024, 64 * 1024**3),
    "commit_threads": (COMMIT_THREADS_ENV, DEFAULT_COMMIT_THREADS, 1, 64),
}
#: Most inference threads (``MEMWORKER_INFERENCE_THREADS``).
MAX_INFERENCE_THREADS = 256


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _get(env: Mapping[str, str] | None, name: str) -> str | None:
    """The variable's value, ``None`` when unset or empty."""
    return _env(env).get(name) or None


def read_broker_options(
    env: Mapping[str, str] | None = None, **given: int | None
) -> dict[str, int]:
    """``max_retries``, ``min_backoff_ms``, ``max_deliveries``, ``commit_step``,
    ``inflight_records``, ``inflight_bytes``, ``commit_threads``: each the given value,
    else its environment variable (:data:`BROKER_ENV`), else the default.

    Args:
        env: Mapping to read instead of ``os.environ``.
        **given: Explicit values; ``None`` falls back to the environment.

    Also checks ``MEMWORKER_SWEEP_INTERVAL`` (:func:`read_sweep_interval`): every
    worker reads these before it starts, and its sweeps and heartbeat need that one.

    Raises:
        ConfigError: A value that is not an integer at or above its minimum (naming
            the variable or the option, and the minimum), or a bad
            ``MEMWORKER_SWEEP_INTERVAL``.
    """
    source = _env(env)
    if source.get(SWEEP_INTERVAL_ENV):
        read_sweep_interval(source)
    out: dict[str, int] = {}
    for name, (var, default, low, high) in BROKER_ENV.items():
        value: object = given.get(name)
        where = name
        if value is None and source.get(var, "").strip():
            raw, where = source[var].strip(), var
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {shown(raw)}") from None
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{where} must be an integer >= {low} and <= {high}, got {shown(value, 40)}")
        out[name] = value
    return out


def read_sweep_interval(env: Mapping[str, str] | None = None) -> int:
    """``MEMWORKER_SWEEP_INTERVAL`` (seconds, more than 0 and at most 86400) in ms, else
    the default (:func:`memworker.worker.sweep.sweep_interval_ms`).

    Raises:
        ConfigError: Naming the variable, when it is not such a number.
    """
    from memworker.worker.sweep import sweep_interval_ms

    return sweep_interval_ms(_env(env).get(SWEEP_INTERVAL_ENV) or "")


def _check_spec(var: str, spec: str | None, what: str) -> str | None:
    if spec:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise ConfigError(f"{var} must be 'module:{what}', got {shown(spec)}")
    return spec


def read_embedder(env: Mapping[str, str] | None = None, *, check: bool = True) -> str | None:
    """``MEMWORKER_EMBEDDER`` (``module:callable``), or ``None``.

    Raises:
        ConfigError: When ``check`` and the value is not ``module:callable``.
    """
    spec = _get(env, EMBEDDER_ENV)
    return _check_spec(EMBEDDER_ENV, spec, "callable") if check else spec


def read_model(env: Mapping[str, str] | None = None) -> str | None:
    """``MEMWORKER_MODEL``, or ``None`` (the bundled model)."""
    return _get(env, MODEL_ENV)


def read_backend(env: Mapping[str, str] | None = None) -> str:
    """``MEMWORKER_BACKEND``, else ``"torch"``.

    Raises:
        ConfigError: Not one of :data:`BACKEND_VALUES`.
    """
    raw = _get(env, BACKEND_ENV)
    if raw is None:
        return "torch"
    if raw not in BACKEND_VALUES:
        raise ConfigError(f"{BACKEND_ENV} must be one of {', '.join(BACKEND_VALUES)}, got {shown(raw)}")
    return raw


def read_metrics_port(given: int | None = None, env: Mapping[str, str] | None = None) -> int | None:
    """The worker's Prometheus port: ``given`` (``--metrics-port``), else
    ``MEMWORKER_METRICS_PORT``, else ``None`` (no metrics served).

    Raises:
        ConfigError: Not a port number (1-65535).
    """
    raw: object = given if given is not None else _get(env, "MEMWORKER_METRICS_PORT")
    if raw is None:
        return None
    try:
        port = int(str(raw))
    except ValueError:
        port = -1
    if not 1 <= port <= 65_535:
        raise ConfigError(f"the metrics port (MEMWORKER_METRICS_PORT, --metrics-port) must be 1-65535, got {shown(raw)}")
    return port


def read_home(env: Mapping[str, str] | None = None) -> Path:
    """``MEMWORKER_HOME``, else ``./.memworker``."""
    raw = _get(env, HOME_ENV)
    return Path(raw) if raw else DEFAULT_HOME


def read_inference_threads(env: Mapping[str, str] | None = None) -> int | None:
    """``MEMWORKER_INFERENCE_THREADS``, or ``None`` (cores divided by processes).

    Raises:
        ConfigError: The value is not an integer >= 1.
    """
    raw = _env(env).get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        wanted = int(raw)
    except ValueError:
        wanted = 0
    if not 1 <= wanted <= MAX_INFERENCE_THREADS:
        raise ConfigError(
            f"{THREADS_ENV} must be an integer >= 1 and <= {MAX_INFERENCE_THREADS}, got {shown(raw, 40)}"
        )
    return wanted


def read_llm(env: Mapping[str, str] | None = None) -> str | None:
    """``MEMWORKER_LLM`` (a model name for ``crewai.LLM``), or ``None``."""
    return _get(env, LLM_ENV)


def read_memory_factory(
    env: Mapping[str, str] | None = None, *, check: bool = True
) -> str | None:
    """``MEMWORKER_MEMORY_FACTORY`` (``module:function``), or ``None``.

    Raises:
        ConfigError: When ``check`` and the value is not ``module:function``.
    """
    spec = _get(env, MEMORY_FACTORY_ENV)
    return _check_spec(MEMORY_FACTORY_ENV, spec, "function") if check else spec


def read_appendfsync(env: Mapping[str, str] | None = None, *, check: bool = True) -> str | None:
    """``MEMWORKER_APPENDFSYNC``, or ``None`` (the embedded server's default).

    Raises:
        ConfigError: When ``check`` and the value is not one of
            :data:`APPENDFSYNC_VALUES`.
    """
    value = _get(env, APPENDFSYNC_ENV)
    if check and value is not None and value not in APPENDFSYNC_VALUES:
        raise ConfigError(
            f"{APPENDFSYNC_ENV} must be one of {', '.join(APPENDFSYNC_VALUES)}, got {shown(value)}"
        )
    return value


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process reads from ``MEMWORKER_*`` variables.

    Attributes:
        max_retries: Retries of a transiently failing job (``MEMWORKER_MAX_RETRIES``).
        min_backoff_ms: First retry backoff, doubled per retry
            (``MEMWORKER_MIN_BACKOFF_MS``).
        max_deliveries: Deliveries of one attempt before the poison guard
            (``MEMWORKER_MAX_DELIVERIES``).
        commit_step: Records per atomic commit step, 0 for one step
            (``MEMWORKER_COMMIT_STEP``); the batched path puts whole jobs of up to
            this many records together in one step.
        inflight_records: Records the batched path holds at once, 0 to turn it off
            (``MEMWORKER_INFLIGHT_RECORDS``).
        inflight_bytes: Message bytes the batched path holds at once
            (``MEMWORKER_INFLIGHT_BYTES``).
        commit_threads: Threads committing the batched path's jobs side by side, each
            on its own connection (``MEMWORKER_COMMIT_THREADS``).
        embedder: Embedder factory ``module:callable`` (``MEMWORKER_EMBEDDER``).
        model: Embedding model, ``None`` for the bundled one (``MEMWORKER_MODEL``).
        backend: Inference backend of that model: ``torch``, ``onnx`` or ``onnx-int8``
            (``MEMWORKER_BACKEND``; onnx needs the ``onnx`` extra).
        home: memworker's home folder (``MEMWORKER_HOME``).
        inference_threads: Inference threads, ``None`` for cores divided by processes
            (``MEMWORKER_INFERENCE_THREADS``).
        llm: LLM model name (``MEMWORKER_LLM``).
        memory_factory: Worker memory factory ``module:function``
            (``MEMWORKER_MEMORY_FACTORY``).
        appendfsync: Embedded server's fsync policy, ``None`` for its default
            (``MEMWORKER_APPENDFSYNC``).
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    commit_step: int = DEFAULT_COMMIT_STEP
    inflight_records: int = DEFAULT_INFLIGHT_RECORDS
    inflight_bytes: int = DEFAULT_INFLIGHT_BYTES
    commit_threads: int = DEFAULT_COMMIT_THREADS
    embedder: str | None = None
    model: str | None = None
    backend: str = "torch"
    home: Path = field(default_factory=lambda: DEFAULT_HOME)
    inference_threads: int | None = None
    llm: str | None = None
    memory_factory: str | None = None
    appendfsync: str | None = None

    def __post_init__(self) -> None:
        read_broker_options({}, **self.broker_options())
        if self.inference_threads is not None and (
            isinstance(self.inference_threads, bool)
            or not isinstance(self.inference_threads, int)
            or not 1 <= self.inference_threads <= MAX_INFERENCE_THREADS
        ):
            raise ConfigError(
                f"inference_threads must be an integer >= 1 and <= {MAX_INFERENCE_THREADS}, "
                f"got {shown(self.inference_threads, 40)}"
            )
        if self.backend not in BACKEND_VALUES:
            raise ConfigError(
                f"backend must be one of {', '.join(BACKEND_VALUES)}, got {shown(self.backend)}"
            )
        _check_spec("embedder", self.embedder, "callable")
        _check_spec("memory_factory", self.memory_factory, "function")
        if self.appendfsync is not None and self.appendfsync not in APPENDFSYNC_VALUES:
            raise ConfigError(
                f"appendfsync must be one of {', '.join(APPENDFSYNC_VALUES)}, "
                f"got {shown(self.appendfsync)}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read and validate every worker variable; empty variables count as unset.

        Args:
            env: Mapping to read instead of ``os.environ``.

        Raises:
            ConfigError: Naming the first invalid variable and its limit.
        """
        return cls(
            **read_broker_options(env),
            embedder=read_embedder(env),
            model=read_model(env),
            backend=read_backend(env),
            home=read_home(env),
            inference_threads=read_inference_threads(env),
            llm=read_llm(env),
            memory_factory=read_memory_factory(env),
            appendfsync=read_appendfsync(env),
        )

    def broker_options(self, **given: int | None) -> dict[str, int]:
        """The broker options (``max_retries``, ``min_backoff_ms``, ``max_deliveries``,
        ``commit_step``): each the given value unless ``None``, else this object's.

        Raises:
            ConfigError: A given value that is not an integer at or above its minimum.
        """
        mine = {
            "max_retries": self.max_retries,
            "min_backoff_ms": self.min_backoff_ms,
            "max_deliveries": self.max_deliveries,
            "commit_step": self.commit_step,
            "inflight_records": self.inflight_records,
            "inflight_bytes": self.inflight_bytes,
            "commit_threads": self.commit_threads,
        }
        mine.update({k: v for k, v in given.items() if v is not None})
        return read_broker_options({}, **mine)
