#!/usr/bin/env python3
"""Set up and run memworker from a checkout, with nothing installed but Python.

    python3 dev.py demo [demo options]     # the main job on the embedded Valkey
    python3 dev.py test [pytest options]   # the test suite

Each command creates ``.venv`` (once), installs what it needs into it (torch
pinned to a CPU build first, so that sentence-transformers does not pull a
multi-GB CUDA build), and runs. Re-runs skip the install while pyproject.toml
is unchanged. Environment:

    MEMWORKER_TORCH   the torch requirement installed first (default: torch==2.13.0)
    MEMWORKER_VENV    where the virtual environment lives (default: ./.venv)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MEMWORKER_VENV", ROOT / ".venv"))
TORCH = os.environ.get("MEMWORKER_TORCH", "torch==2.13.0")
EXTRAS = {"demo": "search,metrics", "test": "test,search,crewai,onnx,metrics,otel,langgraph"}


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def _run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, env=env)


def ensure_env(extras: str) -> None:
    """Create the venv and install memworker with ``extras`` unless already done."""
    stamp_text = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + f"{TORCH}|{extras}".encode()
    ).hexdigest()
    stamp = VENV / f".memworker-{extras.replace(',', '-')}.stamp"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    if not _bin("python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    python = _bin("python")
    _run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(python, "-m", "pip", "install", "--quiet", TORCH)
    # setuptools warns on every editable install of a flat layout ("be careful with
    # folders ... with the same name as your package"): nothing to act on here, and a
    # newcomer's first run should show no warning that is not theirs to fix.
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"}
    _run(python, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]", TORCH, env=quiet)
    stamp.write_text(stamp_text)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_env(EXTRAS[command])
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("CREWAI_TRACING_ENABLED", "false")
    if command == "demo":
        return subprocess.call([str(_bin("memworker")), "demo", *rest], cwd=ROOT, env=env)
    env.setdefault("CREWAI_TESTING", "true")
    return subprocess.call([str(_bin("python")), "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
