"""examples/langgraph_agent.py runs as a user would run it: a subprocess, offline, on
its own embedded server (a fresh home), with the bundled model; every user's question
recalls that user's own statement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langgraph.graph")  # the example's StateGraph (the langgraph package)

from memworker.embedded import stop_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
#: Seconds the example may take before the test fails (not a timing assertion).
PROC_TIMEOUT = 300


@pytest.mark.slow
def test_langgraph_agent_example_writes_from_threads_and_recalls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, MEMWORKER_HOME=str(home), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("VALKEY_URL", "REDIS_URL", "MEMWORKER_NAMESPACE"):
        env.pop(name, None)
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "examples" / "langgraph_agent.py")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=PROC_TIMEOUT,
        )  # fmt: skip
    finally:
        stop_server(home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = {line.split(":")[0]: nxt for line, nxt in zip(proc.stdout.splitlines(), proc.stdout.splitlines()[1:])
               if nxt.startswith("  -> ")}  # fmt: skip
    assert set(answers) == {"alice", "bob", "chen"}, proc.stdout
    # Each user's best match is the statement that answers the question (a semantic
    # search over that user's namespace only), even though it was put a moment before.
    assert answers["alice"].startswith("  -> From memory: I am allergic to peanuts.")
    assert answers["bob"].startswith("  -> From memory: Our team deploys on Thursdays.")
    assert answers["chen"].startswith("  -> From memory: I am training for a marathon in October.")
    assert "('users', 'alice', 'memories'), ('users', 'bob', 'memories'), ('users', 'chen', 'memories')" in proc.stdout
