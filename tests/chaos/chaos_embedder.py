"""Fake embedder for the chaos suite (loaded by worker subprocesses via MEMWORKER_EMBEDDER).

Deterministic unit vectors (dim 32) from a hash of the text, plus behaviours driven
by markers in the text:

- ``POISON``: raises (every time);
- ``KILLME``: SIGKILLs its own process;
- ``SLOW<ms>``: sleeps that long;
- ``FLAKY``: raises the first three times this process sees the text (a transient
  error: a batch's failure is re-run per request, and a job given up by the batched
  path runs again on a worker thread, so the job itself fails and is retried);
- ``GATE``: writes ``$MEMWORKER_CHAOS_GATE/started-<pid>`` then waits until
  ``$MEMWORKER_CHAOS_GATE/open`` exists (at most 60 s).

Every call appends ``pid start end text...`` to ``$MEMWORKER_CHAOS_CALLS`` when set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np

DIM = 32
_SLOW = re.compile(r"SLOW(\d+)")


def vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class PoisonError(RuntimeError):
    """The embedder refuses a POISON text."""


class FlakyError(OSError):
    """A transient failure the first times a FLAKY text is seen."""


#: How many times this process saw each FLAKY text.
_seen: dict[str, int] = {}
FLAKY_FAILURES = 3


class ChaosEmbedder:
    dimension = DIM

    def encode(self, texts):
        start = time.time()
        flaky = [t for t in texts if "FLAKY" in t]
        for t in flaky:
            _seen[t] = _seen.get(t, 0) + 1
        if any(_seen[t] <= FLAKY_FAILURES for t in flaky):
            raise FlakyError("a flaky text")
        for t in texts:
            if "KILLME" in t:
                os.kill(os.getpid(), signal.SIGKILL)
            if "POISON" in t:
                raise PoisonError(f"poison text {t[:40]!r}")
            m = _SLOW.search(t)
            if m:
                time.sleep(int(m.group(1)) / 1000)
            if "GATE" in t:
                gate = Path(os.environ.get("MEMWORKER_CHAOS_GATE", "/tmp/mw-chaos-gate"))
                (gate / f"started-{os.getpid()}").touch()
                deadline = time.monotonic() + 60
                while not (gate / "open").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        calls = os.environ.get("MEMWORKER_CHAOS_CALLS")
        if calls:
            with open(calls, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "start": start, "end": time.time(),
                                    "texts": list(texts)}) + "\n")
        return np.stack([vector(t) for t in texts])


def make() -> ChaosEmbedder:
    return ChaosEmbedder()
