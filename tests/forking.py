"""Forking in tests: a fork copies every thread's locks as they are, so a test that
forks runs again in a fresh interpreter (threads that earlier tests of the session
left, clients' pools, CrewAI's event bus, workers, made children hang in CI), and the
parent waits for its child within a bound instead of for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

_INNER = "MEMWORKER_FORK_TEST_INNER"


def isolated(request: pytest.FixtureRequest) -> bool:
    """Run this test again in a fresh interpreter and check it passed there (True: the
    caller returns); False inside that interpreter (the caller runs the test)."""
    if os.environ.get(_INNER) == "1":
        return False
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        cwd=request.config.rootpath, env={**os.environ, _INNER: "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout, run.stdout[-2000:]
    return True


def fork_and_wait(child: Callable[[], Any], bound: float = 60.0, after_fork: Callable[[], Any] | None = None) -> int | None:
    """Run ``child()`` in a forked child and return its exit status: the int it
    returned, 0/1 for a truthy/falsy other value, 99 if it raised, ``None`` if it did
    not finish within ``bound`` seconds (then it is killed). ``after_fork()`` runs in
    the parent once the child exists."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            result = child()
            code = result if isinstance(result, int) and not isinstance(result, bool) else (0 if result else 1)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        os._exit(code)
    if after_fork is not None:
        after_fork()
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None
