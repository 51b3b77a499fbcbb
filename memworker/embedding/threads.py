"""Inference threads of a worker process: :func:`configure_threads` sets them once.

A worker runs ``MEMWORKER_INFERENCE_THREADS`` batches side by side (default: its cores
divided by the worker processes on the host), each on one core;
:func:`configured_threads` tells the model backends whether that was done.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from memworker.errors import ConfigError, shown
from memworker.worker_settings import THREADS_ENV, read_inference_threads

__all__ = ["THREADS_ENV", "configure_threads", "configured_threads"]

_threads: int | None = None
_threads_lock = threading.Lock()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(processes: int = 1, env: Mapping[str, str] | None = None) -> int:
    """Set this process up for throughput inference (a worker): it runs
    ``MEMWORKER_INFERENCE_THREADS`` batches side by side when set, else
    ``max(1, cores // processes)``, each on one core. Torch's intra-op threads are set
    to 1, and ONNX sessions created afterwards use one intra-op thread: a small model
    costs less CPU a text on one thread than split over two, so single-threaded
    batches side by side embed more texts a second (figures: benchmarks/README.md).
    The caller runs that many inference threads (``EmbeddingBatcher(threads=...)``).

    The first call wins: later calls change nothing and return the number already set.

    Args:
        processes: Number of worker processes sharing the machine's cores.

    Returns:
        The number of threads in force.
    """
    global _threads
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"processes must be an integer >= 1, got {shown(processes)}")
    with _threads_lock:
        if _threads is None:
            import torch

            wanted = read_inference_threads(env) or max(1, _cores() // processes)
            torch.set_num_threads(1)
            _threads = wanted
        return _threads



def configured_threads() -> int | None:
    """The inference threads set by :func:`configure_threads`, or ``None`` (not a worker)."""
    return _threads
