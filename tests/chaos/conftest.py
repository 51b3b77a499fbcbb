"""Chaos suite: real valkey-server and `memworker worker` processes, faults injected.

Every test here is marked ``chaos`` (registered below) and runs in the normal
``pytest`` run. Outcomes are appended to $MEMWORKER_CHAOS_LOG (default
/tmp/memworker-chaos.jsonl); scripts/reliability_report.py turns them into RELIABILITY.md.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import ChaosServer, Workers  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault-injection tests with real processes (tests/chaos)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="module")
def chaos_server():
    server = ChaosServer().start()
    yield server
    server.stop()


@pytest.fixture
def ns() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workdir():
    return Path(tempfile.mkdtemp(prefix="mw-chaos-run-"))


@pytest.fixture
def cli_workers(chaos_server, ns, workdir):
    """Start `memworker worker` subprocesses on the module's server; all killed at teardown."""
    made: list[Workers] = []

    def make(server=None, **env):
        w = Workers((server or chaos_server).url, ns, workdir, **env)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
